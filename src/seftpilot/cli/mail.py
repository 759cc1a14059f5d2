"""CLI: the ``rules`` command group (check, schema, test).

Owns how rules are found for a command (``--rules`` paths, else the settings' ``rules``
read relative to the settings file, else ./rules, else the packaged defaults, said out
loud) and how classifications are shown. Must not hold classification logic
(``core.rules``) or read mail from a server itself: ``rules test --mailbox`` (the live
mailbox, no side effects) calls ``service.intake.preview_mailbox`` and only renders.

Exit codes: 0 fine; 1 a rules file is broken (the message names file:line and rule) or
``rules check`` found lint problems; 2 usage or settings errors.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from seftpilot.adapters.mailparse import parse_message
from seftpilot.adapters.rules_files import (
    check_rules,
    configured_rules_paths,
    default_rules_path,
    load_rules,
)
from seftpilot.cli.common import ConfigOpt, JsonOpt, console, emit_json, err_console, settings
from seftpilot.config import config_path
from seftpilot.core.message import Message
from seftpilot.core.rules import Classification, RuleSet, classify
from seftpilot.core.rules_model import json_schema
from seftpilot.errors import RulesError

if TYPE_CHECKING:
    from seftpilot.service.intake import PreviewItem

RulesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--rules",
        "-r",
        help="Rules file or directory (repeatable, in order); overrides the settings.",
        show_default=False,
    ),
]

# `rules test --mailbox` shows the newest messages by default: a live mailbox may hold
# thousands, and an operator trying a rule wants the recent ones first.
DEFAULT_MAILBOX_LIMIT = 50

rules_app = typer.Typer(
    name="rules",
    help="Check, describe and try the mail classification rules.",
    no_args_is_help=True,
)


def resolve_rules_paths(config: Path | None, rules: list[Path] | None) -> tuple[list[Path], str]:
    """The rules to use and a sentence saying where they came from."""
    if rules:
        return list(rules), "rules from --rules"
    cfg = settings(config)
    paths = configured_rules_paths(cfg)
    if config_path(config).exists():
        return paths, f"rules from {config_path(config)}"
    if all(p.exists() for p in paths):
        return paths, "rules from ./" + ", ./".join(str(p) for p in cfg.rules)
    packaged = default_rules_path()
    return [packaged], (
        f"no settings file and no ./rules: using the packaged default rules ({packaged}); "
        "`seftpilot init` copies them into rules/ for editing"
    )


def _note(text: str) -> None:
    err_console.print(f"[dim]{escape(text)}[/]", markup=True)


def _error_dict(exc: RulesError) -> dict[str, Any]:
    return {"file": exc.file, "line": exc.line, "rule": exc.rule, "message": exc.message}


def _explain_dict(result: Classification) -> dict[str, Any]:
    return {
        "explanation": list(result.explanation),
        "matched": list(result.matched),
        "params": dict(result.params),
        "near_misses": [
            {"rule": m.rule, "held": list(m.held), "failed": list(m.failed)}
            for m in result.near_misses
        ],
    }


def _render(file: str, result: Classification, defects: tuple[str, ...], explain: bool) -> None:
    console.print(
        f"[bold]{escape(file)}[/]: rule [cyan]{escape(result.rule)}[/] -> class {result.class_}, "
        f"action {result.action}" + (escape(f" {dict(result.params)}") if result.params else ""),
        markup=True,
    )
    if result.captures:
        shown = ", ".join(f"{k}={v!r}" for k, v in result.captures.items())
        console.print(f"    captures: {shown}", markup=False)
    if explain:
        if len(result.matched) > 1:
            console.print(f"    matched (in order): {', '.join(result.matched)}", markup=False)
        console.print("    because:", markup=False)
        for reason in result.explanation:
            console.print(f"      - {reason}", markup=False)
        if result.near_misses:
            console.print("    closest rules that did not match:", markup=False)
            for miss in result.near_misses:
                console.print(
                    f"      {miss.rule}: {len(miss.held)} of "
                    f"{len(miss.held) + len(miss.failed)} conditions held",
                    markup=False,
                )
                for text in miss.failed:
                    console.print(f"        did not hold: {text}", markup=False)
    if defects:
        console.print(f"    parse defects: {'; '.join(defects)}", markup=False)


def _classify_files(
    files: list[Path], ruleset: RuleSet, explain: bool
) -> list[tuple[Path, Message, Classification]]:
    out = []
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise RulesError(f"cannot read message: {exc.strerror}", file=str(path)) from None
        message = parse_message(raw)
        out.append((path, message, classify(message, ruleset, explain=explain)))
    return out


def _result_dict(
    file: str, message: Message, result: Classification, explain: bool
) -> dict[str, Any]:
    """DESIGN.md's contract: file, rule, class, action, captures (more with --explain)."""
    item: dict[str, Any] = {
        "file": file,
        "rule": result.rule,
        "class": result.class_,
        "action": result.action,
        "captures": dict(result.captures),
    }
    if explain:
        item.update(_explain_dict(result))
        item["defects"] = list(message.defects)
    return item


@rules_app.command("check")
def check_cmd(config: ConfigOpt = None, rules: RulesOpt = None, json_out: JsonOpt = False) -> None:
    """Load the rules, validate them and report rules that can never match."""
    paths, source = resolve_rules_paths(config, rules)
    report = check_rules(paths)
    if json_out:
        emit_json(
            {
                "ok": report.ok,
                "source": source,
                "files": [str(f) for f in report.files],
                "rules": len(report.ruleset) if report.ruleset else 0,
                "errors": [_error_dict(e) for e in report.errors],
                "lint": [p.as_dict() for p in report.lint],
            }
        )
    else:
        _note(source)
        for error in report.errors:
            err_console.print(
                f"[bold red]error:[/] {escape(error.message)}", markup=True, highlight=False
            )
            if error.hint:
                err_console.print(f"  hint: {error.hint}", markup=False)
        for problem in report.lint:
            where = f"{problem.origin}: " if problem.origin else ""
            console.print(
                f"[yellow]warning:[/] {escape(f'{where}rule {problem.rule!r}: {problem.message}')}",
                markup=True,
            )
        if report.ok and report.ruleset is not None:
            console.print(
                f"ok: {len(report.ruleset)} rules from {len(report.files)} files, "
                "ending with 'default'"
            )
    if not report.ok:
        raise typer.Exit(1)


@rules_app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of a rules file (for editors; yaml-language-server etc.)."""
    emit_json(json_schema())


@rules_app.command("test")
def test_cmd(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Messages to classify (.eml, raw RFC 5322).",
            exists=True,
            dir_okay=False,
            readable=True,
            show_default=False,
        ),
    ] = None,
    *,
    mailbox: Annotated[
        bool,
        typer.Option(
            "--mailbox",
            help="Classify the live configured mailbox instead of files, changing nothing "
            "(read-only EXAMINE, BODY.PEEK, no ledger writes, no flags or moves).",
        ),
    ] = False,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            min=0,
            help="With --mailbox: the newest N messages (0 = all).",
        ),
    ] = DEFAULT_MAILBOX_LIMIT,
    since: Annotated[
        datetime | None,
        typer.Option(
            "--since",
            formats=["%Y-%m-%d"],
            help="With --mailbox: only messages the server received on or after this day.",
            show_default=False,
        ),
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show the conditions that held and near misses.")
    ] = False,
    config: ConfigOpt = None,
    rules: RulesOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Classify message files, or the live mailbox read-only: rule, class, action, captures."""
    if mailbox and files:
        raise typer.BadParameter("give message files or --mailbox, not both", param_hint="FILES")
    if not mailbox and not files:
        raise typer.BadParameter(
            "give message files to classify, or --mailbox for the live mailbox",
            param_hint="FILES",
        )
    if not mailbox and since is not None:
        raise typer.BadParameter("--since goes with --mailbox", param_hint="--since")
    paths, source = resolve_rules_paths(config, rules)
    _note(source)
    ruleset = load_rules(paths)
    if mailbox:
        _test_mailbox(
            config,
            ruleset=ruleset,
            limit=limit,
            since=since.date() if since else None,
            explain=explain,
            json_out=json_out,
        )
        return
    assert files is not None
    results = _classify_files(files, ruleset, explain)
    if json_out:
        emit_json([_result_dict(str(p), m, r, explain) for p, m, r in results])
        return
    for path, message, result in results:
        _render(str(path), result, message.defects, explain)


def _test_mailbox(
    config: Path | None,
    *,
    ruleset: RuleSet,
    limit: int,
    since: date | None,
    explain: bool,
    json_out: bool,
) -> None:
    """``rules test --mailbox``: the live folder, read-only (service.intake.preview_mailbox)."""
    # Imported here: the IMAP stack is not needed by `rules check` / offline `rules test`.
    from seftpilot.service.intake import preview_mailbox

    cfg = settings(config)
    preview = preview_mailbox(cfg, ruleset, limit=limit or None, since=since, explain=explain)
    imap = cfg.imap
    shown = len(preview.items)
    _note(
        f"{imap.username or 'anonymous'}@{imap.host}:{imap.port} {preview.folder} "
        f"(read-only): {shown} of {preview.total} message(s)"
        + (f" received since {since.isoformat()}" if since else "")
        + (f"; the newest {shown} shown, use --limit 0 for all" if shown < preview.total else "")
    )
    if json_out:
        emit_json([_mailbox_dict(item, explain) for item in preview.items])
        return
    for item in preview.items:
        m = item.message
        sender = f"{m.from_name} <{m.from_addr}>" if m.from_name else m.from_addr
        console.print(
            f"[dim]uid {item.uid}[/] from {escape(sender or '(no sender)')}: "
            f"{escape(repr(m.subject))}",
            markup=True,
        )
        _render(item.ref, item.classification, m.defects, explain)


def _mailbox_dict(item: PreviewItem, explain: bool) -> dict[str, Any]:
    """The files contract (``file`` = ``imap:<folder>/<uid>``) plus uid, from, subject."""
    out = _result_dict(item.ref, item.message, item.classification, explain)
    out.update(uid=item.uid, **{"from": item.message.from_addr}, subject=item.message.subject)
    return out


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(rules_app, name="rules")


__all__ = ["register", "resolve_rules_paths", "rules_app"]
