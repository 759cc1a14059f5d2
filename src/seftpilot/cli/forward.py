"""CLI: ``seftpilot forward`` and ``seftpilot delivery list|show|retry|resolve|clean``.

Owns argument parsing and rendering for deliveries to the partner. Each command calls one
function of ``service.forward``; none holds workflow logic. In a terminal ``forward`` shows
progress bars (download, archive, upload) on stderr; otherwise it writes plain log lines.
Exit 0 on success, 1 when a delivery failed or waits for the operator, 2 on a usage or
configuration error. Nothing here ever prints a passphrase.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from seftpilot.adapters.clock import Clock, SystemClock
from seftpilot.cli.common import ConfigOpt, JsonOpt, console, emit_json, err_console, settings
from seftpilot.service.runtime import Runtime

# Tests swap this for a FakeClock factory; the CLI itself always runs on the real clock.
clock_factory: Callable[[], Clock] = SystemClock

log = logging.getLogger("seftpilot.cli.forward")

NicOpt = Annotated[
    str | None,
    typer.Option("--nic", help="The agreement (NIC number); needed when several are configured."),
]
IdArg = Annotated[int, typer.Argument(help="The delivery's number (see `delivery list`).")]


@contextmanager
def open_runtime(config: Path | None) -> Iterator[Runtime]:
    runtime = Runtime(settings(config, required=True), clock_factory())
    try:
        yield runtime
    finally:
        runtime.close()


class _Bars:
    """Rich progress bars on stderr, one per phase."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total or None)
        self.progress.update(self.tasks[phase], completed=done, total=total or None)


class _Lines:
    """Plain log lines: each phase at its start, every quarter, and its end."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        quarter = 4 * done // total if total else 4
        if self.last.get(phase) != quarter:
            self.last[phase] = quarter
            log.info("%s: %d of %d bytes (%d%%)", phase, done, total, 25 * quarter)


def _render(doc: dict[str, Any]) -> None:
    for earlier in doc.get("earlier", []):
        _render(earlier)
    mark = "ok" if doc["ok"] else "PROBLEM"
    console.print(f"[{mark}] {doc['status']}: {doc['message']}", markup=False)
    d = doc.get("delivery")
    if d and d.get("remote_name") and doc["status"] in ("delivered", "cleaned"):
        for part in d.get("archive_parts") or []:
            console.print(
                f"  {part['name']}: {part['size']} bytes, sha256 {part['sha256']}", markup=False
            )


def register(app: typer.Typer) -> None:
    """Add ``forward`` and the ``delivery`` command group to ``app``."""

    @app.command("forward")
    def forward_cmd(
        from_dir: Annotated[
            Path | None,
            typer.Option(
                "--from",
                help="Use the files in this folder as the delivery (copied; the folder "
                "is left as it is) instead of SEFT's download area or the drop folder.",
                show_default=False,
            ),
        ] = None,
        nic: NicOpt = None,
        keep: Annotated[
            bool,
            typer.Option(
                "--keep", help="Keep the clear-text files and the local archive after delivery."
            ),
        ] = False,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Package and deliver returned files to the partner, encrypted.

        Collects them, archives them (AES-256 7z), verifies the archive, uploads it to the
        partner, sends the passphrase by its own mail and announces the delivery."""
        from seftpilot.logs import configure_logging
        from seftpilot.service.forward import forward_now

        # A missing or empty --from is refused by forward_now before anything is recorded.
        cfg = settings(config, required=True)
        configure_logging(cfg.log_level)
        bars = _Bars() if err_console.is_terminal and not json_out else None
        progress = bars if bars is not None else _Lines()
        with Runtime(cfg, clock_factory()) as runtime:
            if bars is not None:
                with bars.progress:
                    outcome = forward_now(
                        runtime, nic, from_dir=from_dir, keep=keep, progress=progress
                    )
            else:
                outcome = forward_now(runtime, nic, from_dir=from_dir, keep=keep, progress=progress)
            doc = outcome.to_dict()
        if json_out:
            emit_json(doc)
        else:
            _render(doc)
        if not outcome.ok:
            raise typer.Exit(1)

    delivery_app = typer.Typer(
        help="Deliveries to the partner: list, show one, retry a failed one, answer a blocked "
        "one, clean one now.",
        no_args_is_help=True,
    )
    app.add_typer(delivery_app, name="delivery")

    @delivery_app.command("list")
    def list_cmd(config: ConfigOpt = None, nic: NicOpt = None, json_out: JsonOpt = False) -> None:
        """Every delivery with its state, oldest first."""
        from seftpilot.service.forward import deliveries

        with open_runtime(config) as runtime:
            agreement = runtime.settings.agreement_for(nic).nic if nic else None
            rows = [d.to_dict() for d in deliveries(runtime).list_deliveries(agreement)]
        if json_out:
            emit_json({"deliveries": rows})
            return
        if not rows:
            console.print("no deliveries yet (`seftpilot forward` starts one)")
            return
        for r in rows:
            extra = f" as {r['remote_name']}" if r["uploaded_at"] else ""
            why = f" ({r['last_error']})" if r["last_error"] else ""
            console.print(
                f"#{r['id']} {r['agreement']} {r['file_count'] or 0} file(s): {r['state']}"
                f"{extra}{why}",
                markup=False,
            )

    @delivery_app.command("show")
    def show_cmd(delivery_id: IdArg, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """A delivery's record, its manifest and its events."""
        from seftpilot.service.forward import deliveries

        with open_runtime(config) as runtime:
            doc = deliveries(runtime).get(delivery_id).to_dict()
            doc["events"] = [
                {"at": e["at"], "kind": e["kind"], "detail": e["detail"]}
                for e in runtime.store.events("delivery", delivery_id)
            ]
        if json_out:
            emit_json(doc)
            return
        p = console.print
        p(f"delivery #{doc['id']} {doc['agreement']}: {doc['state']}", markup=False)
        for key in (
            "source",
            "source_path",
            "remote_name",
            "passphrase_fingerprint",
            "uploaded_at",
            "clean_after",
            "cleaned_at",
            "keep",
            "last_error",
        ):
            if doc.get(key) not in (None, "", False):
                p(f"  {key.replace('_', ' ')}: {doc[key]}", markup=False)
        for f in doc.get("manifest") or []:
            p(f"  file {f['name']}: {f['size']} bytes, sha256 {f['sha256']}", markup=False)
        for e in doc["events"]:
            p(f"  {e['at']} {e['kind']}", markup=False)

    @delivery_app.command("retry")
    def retry_cmd(delivery_id: IdArg, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """Send a failed delivery back to the step it failed at (the service resumes it)."""
        from seftpilot.service.forward import retry_delivery

        with open_runtime(config) as runtime:
            doc = retry_delivery(runtime, delivery_id).to_dict()
        if json_out:
            emit_json(doc)
        else:
            console.print(f"delivery #{doc['id']}: {doc['state']} (next: {doc['next_step']})")

    @delivery_app.command("resolve")
    def resolve_cmd(  # noqa: PLR0917 - one flag per answer, as typer wants them
        delivery_id: IdArg,
        passphrase_arrived: Annotated[
            bool, typer.Option("--passphrase-arrived", help="The recipients have it.")
        ] = False,
        resend_passphrase: Annotated[
            bool, typer.Option("--resend-passphrase", help="It never arrived: send it again.")
        ] = False,
        partner_has_it: Annotated[
            bool, typer.Option("--partner-has-it", help="The partner received the archive.")
        ] = False,
        upload_again: Annotated[
            bool, typer.Option("--upload-again", help="The partner lacks it: upload again.")
        ] = False,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Answer a blocked delivery with what you found out (exactly one option)."""
        from seftpilot.service.forward import resolve_delivery

        chosen = [
            name
            for name, flag in (
                ("passphrase-arrived", passphrase_arrived),
                ("resend-passphrase", resend_passphrase),
                ("partner-has-it", partner_has_it),
                ("upload-again", upload_again),
            )
            if flag
        ]
        if len(chosen) != 1:
            # A usage error like any other: the usage line, the message, exit 2.
            raise typer.BadParameter(
                "give exactly one of --passphrase-arrived, --resend-passphrase, "
                "--partner-has-it, --upload-again (`seftpilot delivery show "
                f"{delivery_id}` says what the delivery is waiting for)",
                param_hint="the answer",
            )
        with open_runtime(config) as runtime:
            doc = resolve_delivery(runtime, delivery_id, chosen[0]).to_dict()
        if json_out:
            emit_json(doc)
        else:
            console.print(f"delivery #{doc['id']}: {doc['state']} (next: {doc['next_step']})")

    @delivery_app.command("clean")
    def clean_cmd(delivery_id: IdArg, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """Delete a delivered delivery's clear text and local archive now (even --keep)."""
        from seftpilot.service.forward import clean_now

        with open_runtime(config) as runtime:
            doc = clean_now(runtime, delivery_id).to_dict()
        if json_out:
            emit_json(doc)
        else:
            console.print(f"delivery #{doc['id']}: {doc['state']}")
