"""CLI: ``seftpilot submit`` and ``seftpilot submission list|show|confirm|resolve``.

Owns argument parsing and rendering for the submission lifecycle. Each command calls one
function of ``service.submit`` or ``service.verdicts``; none holds workflow logic. Exit 0
on success, 1 when the work found a problem (a refused pre-flight, an upload in doubt, a
failed transport), 2 on a usage or configuration error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from seftpilot.adapters.clock import Clock, SystemClock
from seftpilot.cli.common import ConfigOpt, JsonOpt, console, emit_json, settings
from seftpilot.core.calendar import LONDON
from seftpilot.service.runtime import Runtime

# Tests swap this for a FakeClock factory; the CLI itself always runs on the real clock.
clock_factory: Callable[[], Clock] = SystemClock

NicOpt = Annotated[
    str | None,
    typer.Option("--nic", help="The agreement (NIC number); default: every configured one."),
]
IdArg = Annotated[int, typer.Argument(help="The submission's number (see `submission list`).")]


@contextmanager
def open_runtime(config: Path | None) -> Iterator[Runtime]:
    runtime = Runtime(settings(config, required=True), clock_factory())
    try:
        yield runtime
    finally:
        runtime.close()


def parse_when(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is read as Europe/London (the operator's)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        # A malformed option is a usage error (exit 2), like --outcome with a wrong word.
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time: e.g. --at 2026-03-02T10:15 (London time) "
            "or 2026-03-02T10:15:00+00:00",
            param_hint="--at",
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=LONDON)


def _short(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(LONDON).strftime("%a %d %b %Y %H:%M")


def _row(sub: dict[str, Any], note: str = "") -> dict[str, Any]:
    keys = (
        "id",
        "agreement",
        "action",
        "state",
        "attempt",
        "row_count",
        "campaign_id",
        "campaign_step",
        "retry_of",
        "file_name",
        "due_on",
        "nhs_day",
        "uploaded_at",
        "evidence_deadline",
        "verdict",
        "verdict_at",
    )
    out = {k: sub.get(k) for k in keys}
    out["note"] = note
    return out


def _london_message(doc: dict[str, Any]) -> str:
    """The outcome's message with its instants on the operator's clock. The service words
    them as ISO UTC (``2026-01-06T12:00+00:00``), right for logs and --json; a person
    reads ``12:00 on Tue 6 Jan (London)``, as the digest says it."""
    from seftpilot.service.render import london_when

    message = str(doc["message"])
    for key in ("evidence_deadline", "next_opportunity"):
        if doc.get(key):
            when = datetime.fromisoformat(doc[key])
            message = message.replace(when.isoformat(timespec="minutes"), london_when(when))
    return message


def _render_outcome(doc: dict[str, Any]) -> None:
    mark = "ok" if doc["ok"] else "PROBLEM"
    console.print(
        f"{doc['agreement']}: [{mark}] {doc['status']}: {_london_message(doc)}", markup=False
    )
    for rec in doc["reconciled"]:
        console.print(f"  reconciled #{rec['submission_id']}: {rec.get('result') or rec}")
    for problem in doc["problems"][:50]:
        where = ", ".join(
            p
            for p in (
                f"row {problem['row']}" if problem["row"] is not None else "",
                f"column {problem['column']}" if problem["column"] else "",
            )
            if p
        )
        console.print(f"  {problem['code']}{f' ({where})' if where else ''}: {problem['message']}")
    if len(doc["problems"]) > 50:
        console.print(f"  ... and {len(doc['problems']) - 50} more (--json lists them)")


def register(app: typer.Typer) -> None:
    """Add ``submit`` and the ``submission`` command group to ``app``."""

    @app.command("submit")
    def submit_cmd(
        config: ConfigOpt = None,
        nic: NicOpt = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Say what would happen; change nothing.")
        ] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Upload the next due file if today allows it (after settling any upload in doubt)."""
        from seftpilot.service.submit import submit_next

        with open_runtime(config) as runtime:
            cfg = runtime.settings
            agreements = [cfg.agreement_for(nic)] if nic or len(cfg.agreement) <= 1 else None
            chosen = agreements if agreements is not None else list(cfg.agreement)
            if not chosen:
                cfg.agreement_for(None)  # raises the "no agreement configured" ConfigError
            outcomes = [submit_next(runtime, a, dry_run=dry_run).to_dict() for a in chosen]
        if json_out:
            emit_json({"dry_run": dry_run, "outcomes": outcomes})
        else:
            for doc in outcomes:
                _render_outcome(doc)
        if not all(doc["ok"] for doc in outcomes):
            raise typer.Exit(1)

    sub_app = typer.Typer(
        help="Submissions: list them, show one's evidence, confirm a manual upload, resolve "
        "an unknown verdict.",
        no_args_is_help=True,
    )
    app.add_typer(sub_app, name="submission")

    @sub_app.command("list")
    def list_cmd(config: ConfigOpt = None, nic: NicOpt = None, json_out: JsonOpt = False) -> None:
        """Every submission with its state, NHS day and verdict, oldest first."""
        from seftpilot.service.submit import awaiting_operator

        with open_runtime(config) as runtime:
            agreement = runtime.settings.agreement_for(nic).nic if nic else None
            rows = []
            for sub in runtime.ledger.list_submissions(agreement):
                note = ""
                if sub.state == "uploading" and awaiting_operator(runtime, sub):
                    note = f"awaiting the operator: `seftpilot submission confirm {sub.id}`"
                elif sub.state == "unknown":
                    note = f"needs the operator: `seftpilot submission show {sub.id}`"
                rows.append(_row(sub.to_dict(), note))
        if json_out:
            emit_json({"submissions": rows})
            return
        if not rows:
            console.print("no submissions yet (`seftpilot plan TARGET --apply` records some)")
            return
        for r in rows:
            campaign = (
                f" campaign #{r['campaign_id']} step {r['campaign_step']}"
                if r["campaign_id"]
                else ""
            )
            console.print(
                f"#{r['id']} {r['agreement']} {r['action']} {r['row_count']} rows "
                f"attempt {r['attempt']}{campaign}: {r['state']}"
                + (f" (uploaded {_short(r['uploaded_at'])})" if r["uploaded_at"] else "")
                + (f" {r['note']}" if r["note"] else ""),
                markup=False,
            )

    @sub_app.command("show")
    def show_cmd(submission_id: IdArg, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """State, verdict and reasons, the evidence window (polls, gaps, mails) and events."""
        from seftpilot.service.verdicts import timeline

        with open_runtime(config) as runtime:
            doc = timeline(runtime, runtime.ledger.get_submission(submission_id))
        if json_out:
            emit_json(doc)
            return
        p = console.print
        p(
            f"submission #{doc['id']} {doc['agreement']} {doc['action']} {doc['row_count']} rows, "
            f"attempt {doc['attempt']}: {doc['state']}",
            markup=False,
        )
        if doc["file_name"]:
            p(f"  file: {doc['file_name']} sha256 {doc['file_sha256'] or '-'}", markup=False)
        p(f"  uploaded: {_short(doc['uploaded_at'])} (NHS day {doc['nhs_day'] or '-'})")
        if doc["verdict"]:
            p(f"  verdict: {doc['verdict']} at {_short(doc['verdict_at'])}")
        for reason in doc["reasons"]:
            p(f"    - {reason}", markup=False)
        for captures in doc["captures"]:
            for key, value in captures.items():
                p(f"    {key}: {value}", markup=False)
        ev = doc["evidence"]
        if ev:
            w, lis = ev["window"], ev["listening"]
            p(f"  window: {_short(w['start'])} to {_short(w['end'])} (London)")
            p(
                f"  listening: {lis['cycles']} cycles, largest gap {lis['largest_gap_minutes']} "
                f"min (limit {lis['max_gap_minutes']})"
            )
            for gap in lis["gaps"]:
                p(f"    gap {_short(gap['start'])} to {_short(gap['end'])}: {gap['minutes']} min")
            can = ev["canaries"]
            if can["required"]:
                p(f"  canaries: {can['sent']} sent, {can['arrived']} arrived")
            for mail in ev["mails"]:
                to = mail["correlated_to"]
                attributed = (
                    "ambiguous" if mail["ambiguous"] else (f"-> #{to}" if to else "not attributed")
                )
                p(
                    f"  mail {_short(mail['received_at'])} {mail['class']} ({mail['rule']}) "
                    f"{attributed}: {mail['subject']}",
                    markup=False,
                )
        p("  events:")
        for event in doc["events"]:
            p(f"    {_short(event['at'])} {event['kind']}", markup=False)

    @sub_app.command("confirm")
    def confirm_cmd(
        submission_id: IdArg,
        at: Annotated[
            str | None,
            typer.Option("--at", help="When you uploaded it (ISO 8601; London time if no zone)."),
        ] = None,
        not_sent: Annotated[
            bool,
            typer.Option(
                "--not-sent",
                help="An upload in doubt did not reach NHS England: make it due again.",
            ),
        ] = False,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Record when you uploaded a manual submission, or the fate of an upload in doubt.

        A manual submission waits for this after you upload its file in SEFT's web UI; an
        upload seftpilot was interrupted in waits for you to say whether NHS England
        received it (--at) or not (--not-sent)."""
        from seftpilot.service.submit import confirm_upload

        if not_sent and at:
            raise typer.BadParameter("--at says when it arrived; leave it out", param_hint="--at")
        when = parse_when(at) if at else None
        with open_runtime(config) as runtime:
            sub = confirm_upload(runtime, submission_id, at=when, sent=not not_sent)
        if json_out:
            emit_json(_row(sub.to_dict()))
            return
        if not_sent:
            console.print(f"submission #{sub.id} is due again: it will be uploaded anew")
            return
        from seftpilot.service.render import london_when

        console.print(
            f"submission #{sub.id} recorded as uploaded at {_short(sub.uploaded_at.isoformat())}"
            if sub.uploaded_at
            else f"submission #{sub.id} recorded",
        )
        if sub.evidence_deadline is not None:
            console.print(f"  its evidence window closes {london_when(sub.evidence_deadline)}")

    @sub_app.command("resolve")
    def resolve_cmd(  # noqa: PLR0917 - typer maps parameters to options
        submission_id: IdArg,
        outcome: Annotated[
            str,
            typer.Option("--outcome", help="What NHS England did with it: success or failed."),
        ],
        note: Annotated[str, typer.Option("--note", help="Why: kept beside the evidence.")],
        retry: Annotated[
            bool, typer.Option("--retry", help="With --outcome failed: upload it again.")
        ] = False,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Settle an unknown verdict (the campaign's next step waits for it)."""
        from seftpilot.service.verdicts import resolve_submission

        chosen: Literal["success", "failed"]
        if outcome == "success":
            chosen = "success"
        elif outcome == "failed":
            chosen = "failed"
        else:
            raise typer.BadParameter("use success or failed", param_hint="--outcome")
        if retry and chosen == "success":
            raise typer.BadParameter("--retry goes with --outcome failed", param_hint="--retry")
        with open_runtime(config) as runtime:
            result = resolve_submission(
                runtime, submission_id, success=chosen == "success", note=note, retry=retry
            )
        if json_out:
            emit_json(result.to_dict())
            return
        console.print(f"submission #{result.submission_id}: {result.verdict}", markup=False)
        if result.next_step:
            console.print(f"  next: {result.next_step}", markup=False)
