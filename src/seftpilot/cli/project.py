"""CLI: ``seftpilot init`` and ``seftpilot check``."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from seftpilot.cli.common import ConfigOpt, JsonOpt, console, emit_json, settings
from seftpilot.errors import ConfigError


def _write_new(path: Path, text: str, *, force: bool, mode: int = 0o644) -> str:
    if path.exists() and not force:
        return "kept"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    tmp.replace(path)
    return "written"


def init_project(directory: Path, *, force: bool = False) -> dict[str, str]:
    """Write the example settings, the default rules and .env.example into ``directory``."""
    templates = resources.files("seftpilot.templates")
    results: dict[str, str] = {}
    results["seftpilot.toml"] = _write_new(
        directory / "seftpilot.toml",
        templates.joinpath("seftpilot.example.toml").read_text(encoding="utf-8"),
        force=force,
    )
    results[".env.example"] = _write_new(
        directory / ".env.example",
        templates.joinpath("env.example").read_text(encoding="utf-8"),
        force=force,
        mode=0o600,
    )
    rules = resources.files("seftpilot.default_rules")
    for item in sorted(rules.iterdir(), key=lambda t: t.name):
        if item.name.endswith((".yaml", ".yml")):
            results[f"rules/{item.name}"] = _write_new(
                directory / "rules" / item.name, item.read_text(encoding="utf-8"), force=force
            )
    return results


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init_cmd(
        directory: Annotated[Path, typer.Argument(help="Where to write the files.")] = Path(),
        force: Annotated[bool, typer.Option(help="Overwrite files that exist.")] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Write a commented seftpilot.toml, the default rules/ and .env.example."""
        results = init_project(directory, force=force)
        if json_out:
            emit_json({"directory": str(directory), "files": results})
            return
        for name, what in results.items():
            note = "" if what == "written" else "  (exists; --force to overwrite)"
            console.print(f"{what:>8}  {directory / name}{note}")
        # .env is read beside the settings file, so no `cd` is needed: --config says which
        # site, from wherever the operator (or systemd) runs it.
        here = directory.resolve() == Path.cwd().resolve()
        where = "" if here else f" --config {directory / 'seftpilot.toml'}"
        console.print(
            f"\nNext: edit {directory / 'seftpilot.toml'}, copy {directory / '.env.example'} "
            f"to {directory / '.env'} (beside seftpilot.toml, where it is read from) and fill "
            f"in the passwords, then run `seftpilot check --connect{where}`."
        )

    @app.command("check")
    def check_cmd(
        config: ConfigOpt = None,
        connect: Annotated[
            bool, typer.Option("--connect", help="Also log in to IMAP, SMTP and SFTP servers.")
        ] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Validate the settings, secrets and rules; --connect probes the servers too.

        Exits 2 when a failed check is a configuration mistake (a missing secret, a bad
        key), 1 when the rest is wrong (a rules file, a refused login)."""
        from seftpilot.service.checks import run_checks

        cfg = settings(config, required=True)
        report = run_checks(cfg, connect=connect)
        if json_out:
            emit_json(report)
        else:
            for item in report["checks"]:
                # Pad before styling: the markup's length would skew the column.
                mark = "[green]  ok[/]" if item["ok"] else "[red]FAIL[/]"
                console.print(
                    f"{mark}  {escape(item['name'])}: {escape(item['detail'])}", markup=True
                )
        if not report["ok"]:
            # 2 when a failure is a configuration mistake (a missing secret...), else 1.
            raise typer.Exit(report["exit_code"])


__all__ = ["ConfigError", "init_project", "register"]
