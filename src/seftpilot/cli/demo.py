"""CLI: ``seftpilot demo`` — the whole loop against a local sandbox, in about a minute.

Owns the terminal side of ``sandbox.demo.run_demo``: the live lines (rich styling on a
terminal, plain lines otherwise; on stderr with ``--json`` so stdout holds one JSON
document), the closing summary, the exit status (0 when the loop completed and the
partner's archive matched NHS's files, 1 otherwise) and the demo directory's lifetime
(a temporary one is removed unless ``--keep``). Needs no settings file.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from seftpilot.cli.common import JsonOpt, emit_json
from seftpilot.errors import ConfigError

STYLES = {"step": "bold cyan", "event": "", "result": "bold green"}
WHO = {"nhs": "magenta", "service": "green", "mail": "blue", "fault": "red"}


def _demo_dir(directory: Path | None) -> tuple[Path, bool]:
    """(where the demo writes, whether it is a temporary directory of our own)."""
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="seftpilot-demo-")), True
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(
            f"{directory} is not empty",
            hint="give a new or empty directory, or leave out --dir for a temporary one",
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory.resolve(), False


def _render_summary(out: Console, summary: dict[str, Any], directory: Path, kept: bool) -> None:
    out.print()
    out.print("[bold]Summary[/]")
    for s in summary.get("submissions", []):
        out.print(f"  submission #{s['id']}: {s['action']} {s['rows']} rows -> {s['verdict']}")
    for d in summary.get("deliveries", []):
        name = Path(d["archive"]).name if d.get("archive") else "(no archive)"
        out.print(
            f"  delivery #{d['id']}: {d['files']} files -> {escape(name)} in the partner's "
            f"drop ({d['state']}); passphrase (sandbox only) {d.get('passphrase') or '-'}"
        )
    out.print(f"  digests sent: {summary.get('digests_sent', 0)}")
    sim = summary.get("simulated", {})
    out.print(
        f"  simulated {sim.get('from', '?')[:16]} -> {sim.get('to', '?')[:16]} in "
        f"{summary.get('real_seconds', '?')} s of real time"
    )
    for problem in summary.get("problems", []):
        out.print(f"  [bold red]problem:[/] {escape(problem)}")
    if kept:
        out.print(
            f"  everything is under {escape(str(directory))} (service log: "
            f"{escape(str(directory / 'service.log'))})"
        )


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""

    @app.command("demo")
    def demo_cmd(
        directory: Annotated[
            Path | None,
            typer.Option(
                "--dir",
                help="Write everything here (new or empty); kept afterwards. Default: a "
                "temporary directory, removed at the end unless --keep.",
                show_default=False,
            ),
        ] = None,
        keep: Annotated[
            bool, typer.Option("--keep", help="Keep the temporary directory afterwards.")
        ] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """The whole loop against a local sandbox, in about a minute; needs no settings.

        Builds a cohort from synthetic study data, submits it to a simulated SEFT, reaches
        a verdict, receives NHS England's new data, forwards it to the partner (encrypted
        archive + passphrase mail) and sends a digest: days of simulated time, shown live.
        """
        from seftpilot.logs import configure_logging
        from seftpilot.sandbox.demo import run_demo

        base, temporary = _demo_dir(directory)
        out = Console(stderr=json_out, highlight=False, soft_wrap=True)

        def echo(kind: str, text: str) -> None:
            style = STYLES.get(kind, "")
            if kind == "step":
                out.print(f"[{style}]== {escape(text)}[/]")
            elif kind == "result":
                out.print(f"[{style}]   {escape(text)}[/]")
            elif kind in WHO:
                when, _, line = text.partition("  ")
                out.print(f"   {when}  [{WHO[kind]}]{kind:<7}[/] {escape(line)}")
            else:
                out.print(f"   {escape(text)}")

        log_file = (base / "service.log").open("a", encoding="utf-8")
        try:
            # The service's own log goes to a file: the terminal shows the story.
            configure_logging("INFO", stream=log_file)
            result = run_demo(base, echo=echo)
        finally:
            log_file.close()
        kept = keep or not temporary
        if json_out:
            emit_json({**result.summary, "directory": str(base) if kept else None})
        else:
            _render_summary(out, result.summary, base, kept)
        if not kept:
            shutil.rmtree(base, ignore_errors=True)
        if not result.ok:
            raise typer.Exit(1)
