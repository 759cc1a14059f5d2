"""The scripted demo: the whole loop against the sandbox, in simulated days, in about a minute.

Owns what ``seftpilot demo`` does, step by step, and the summary it ends with:

1. start the sandbox (IMAP, SMTP, three SFTP servers, the NHS England simulator) under a
   directory, on a fake clock set to a Monday morning;
2. write a synthetic study export (999-range NHS numbers, some values messy the way
   spreadsheets make them) and build + validate the NHS cohort file from it, as
   ``seftpilot cohort build`` does;
3. plan the pool's move to that export and record it as a campaign (``seftpilot plan
   --apply``);
4. run the real service (``service.assemble``'s timers and mail intake) and the simulator
   on the shared clock until the upload has its verdict, NHS's returned files have been
   forwarded to the partner (archive uploaded, passphrase mailed) and a digest has gone
   out after that;
5. open the partner's archive with the passphrase the partner's contacts received and
   check it holds exactly the files NHS placed.

Also owns ``apply_plan`` (the plan + campaign recording of ``seftpilot plan --apply``,
with the injected clock) for the demo and the end-to-end tests.

Must not write outside its directory or talk to anything but loopback.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.cohort_files import build_cohort, validate_file
from seftpilot.adapters.delivery_store import DeliveryStore
from seftpilot.config import Agreement
from seftpilot.core.calendar import nhs_day
from seftpilot.core.ledger import plan
from seftpilot.core.synthetic import EXPORT_HEADER, export_rows
from seftpilot.errors import SeftpilotError
from seftpilot.sandbox.driver import Driver, Report
from seftpilot.sandbox.simulator import SimulatorConfig
from seftpilot.sandbox.world import DEFAULT_NIC, WATCHED, Sandbox
from seftpilot.service.runtime import Runtime
from seftpilot.service.submit import profile_for

# A Monday in January (London = UTC), no bank holiday near: the upload window opens at 09:00.
DEMO_START = datetime(2026, 1, 5, 8, 30, tzinfo=UTC)
DEMO_ROWS = 40
DEMO_FILES = 5
DEMO_LIMIT = timedelta(days=6)
FINISHED_DELIVERY = frozenset({"announced", "cleaned"})

Echo = Callable[[str, str], None]
"""``echo(kind, text)``: kind is ``step`` (a heading), ``event``, ``result``, or for a line
of the simulated timeline who acted: ``nhs``, ``service``, ``mail`` or ``fault``."""


def write_study_export(path: Path, rows: int, *, seed: int = 7) -> Path:
    """A synthetic study export (0600): what a study database would hand the operator."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_HEADER)
    writer.writerows(export_rows(rows, seed=seed, messy=0.1))
    path.touch(mode=0o600)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def apply_plan(
    runtime: Runtime,
    agreement: Agreement,
    target: Path,
    strategy: Literal["diff", "replace"] = "diff",
) -> int:
    """``seftpilot plan TARGET --strategy S --apply`` on the runtime's clock; the campaign id."""
    from seftpilot.cli.plan import read_target_refs, stream_target_rows

    ledger = runtime.ledger
    refs, sha256 = read_target_refs(target, agreement)
    pool = ledger.pool(agreement.nic)
    steps = plan(pool, refs, strategy)
    campaign = ledger.create_campaign(
        agreement.nic,
        strategy,
        steps,
        at=runtime.clock.now(),
        pool=pool,
        add_rows=stream_target_rows(target, agreement, sha256),
        target_sha256=sha256,
    )
    return campaign.id


@dataclass
class DemoResult:
    ok: bool
    directory: Path
    summary: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _finished(runtime: Runtime, since: datetime) -> bool:
    subs = runtime.ledger.list_submissions()
    if not subs or any(s.verdict is None for s in subs):
        return False
    store = DeliveryStore(runtime.store)
    done = [d for d in store.list_deliveries() if d.state in FINISHED_DELIVERY]
    if not done:
        return False
    after = max(d.updated_at for d in done)
    rows = runtime.store.query("SELECT sent_at FROM digests WHERE sent_at IS NOT NULL")
    return any(datetime.fromisoformat(r["sent_at"]) > max(after, since) for r in rows)


def _archive_files(archive: Path, passphrase: str) -> dict[str, str]:
    """Name -> SHA-256 of every file in the partner's archive, opened with ``passphrase``
    the way the partner would (extracted to a private temporary folder, then removed)."""
    import tempfile

    import py7zr

    found: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=archive.parent.parent.parent) as tmp:
        with py7zr.SevenZipFile(archive, mode="r", password=passphrase) as z:
            z.extractall(path=tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_demo(
    directory: Path,
    *,
    echo: Echo,
    rows: int = DEMO_ROWS,
    returned_files: int = DEMO_FILES,
    report: Report | None = None,
) -> DemoResult:
    """Run the demo under ``directory`` (module docstring); never raises SeftpilotError:
    a step that goes wrong ends the demo with its reason in ``problems``."""
    started = time.monotonic()
    clock = FakeClock(DEMO_START)
    result = DemoResult(ok=False, directory=directory)
    sim = SimulatorConfig(
        nic=DEFAULT_NIC,
        to=WATCHED,
        returned_files=returned_files,
        release_dates=[nhs_day(DEMO_START) + timedelta(days=6)],
    )
    echo("step", f"Starting the sandbox in {directory}")
    with Sandbox(directory / "sandbox", clock=clock, simulator=sim) as sandbox:
        echo(
            "event",
            f"IMAP 127.0.0.1:{sandbox.imap.port}, SMTP 127.0.0.1:{sandbox.smtp.port}, SFTP "
            f"SEFT upload :{sandbox.seft_upload.port}, SEFT download "
            f":{sandbox.seft_download.port}, partner :{sandbox.partner.port} (host keys pinned)",
        )
        settings = sandbox.settings(state_dir=directory / "state")
        agreement = settings.agreement_for(None)
        with Runtime(settings, clock=clock) as runtime:
            try:
                _run(
                    runtime=runtime,
                    sandbox=sandbox,
                    agreement=agreement,
                    directory=directory,
                    echo=echo,
                    report=report,
                    rows=rows,
                    result=result,
                )
            except SeftpilotError as exc:
                result.problems.append(f"{exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
            result.summary["real_seconds"] = round(time.monotonic() - started, 1)
            result.summary["simulated"] = {
                "from": DEMO_START.isoformat(),
                "to": clock.now().isoformat(),
            }
    result.ok = not result.problems
    result.summary["ok"] = result.ok
    result.summary["problems"] = result.problems
    return result


def _run(
    *,
    runtime: Runtime,
    sandbox: Sandbox,
    agreement: Agreement,
    directory: Path,
    echo: Echo,
    report: Report | None,
    rows: int,
    result: DemoResult,
) -> None:
    clock = runtime.clock
    assert isinstance(clock, FakeClock)

    echo("step", "Building the cohort file from a synthetic study export")
    export = write_study_export(directory / "study-export.csv", rows)
    profile = profile_for(runtime, agreement)
    out_dir = directory / "cohort"
    out_dir.mkdir(mode=0o700, exist_ok=True)
    built = build_cohort(export, action="ADD", profile=profile, nic=agreement.nic, out_dir=out_dir)
    if built.path is None:
        result.problems.append(f"the synthetic export did not build: {built.problem_counts}")
        return
    report_ = validate_file(built.path, profile, agreement.nic)
    echo(
        "event",
        f"{export.name}: {built.rows} participants (999-range NHS numbers) -> {built.path}: "
        f"{'valid' if report_.valid else 'INVALID'} (24 columns, CRLF, named after the NIC)",
    )

    echo("step", "Planning the pool's move to the export and recording it as a campaign")
    campaign_id = apply_plan(runtime, agreement, export)
    steps = [
        runtime.ledger.get_submission(s.submission_id)
        for s in runtime.ledger.campaign_steps(campaign_id)
    ]
    echo(
        "event",
        f"campaign #{campaign_id}: "
        + ", ".join(f"{s.action} {s.row_count} rows" for s in steps)
        + " (NHS England holds nothing yet)",
    )

    echo("step", "Running the service and NHS England on one clock (15-minute steps)")

    def show(at: datetime, who: str, line: str) -> None:
        echo(who, f"{at:%a %d %b %H:%M}  {line}")

    with Driver(sandbox, runtime, report=report or show) as driver:
        driver.tick()
        since = clock.now()
        reached = driver.run_until(lambda: _finished(runtime, since), within=DEMO_LIMIT)
    if not reached:
        result.problems.append(
            f"the loop did not finish within {DEMO_LIMIT.days} simulated days "
            "(see `seftpilot status` with the settings under the demo directory)"
        )

    echo("step", "Checking what the partner received")
    result.summary.update(summarise(runtime, sandbox, result.problems))
    for d in result.summary["deliveries"]:
        if d.get("matches_nhs_files"):
            echo(
                "result",
                f"{Path(d['archive']).name} opens with the mailed passphrase and holds the "
                f"{d['files']} files NHS England placed, byte for byte",
            )


def summarise(runtime: Runtime, sandbox: Sandbox, problems: list[str]) -> dict[str, Any]:
    """The demo's summary (``--json``), checked against what the partner actually has."""
    ledger = runtime.ledger
    submissions = [
        {
            "id": s.id,
            "action": s.action,
            "rows": s.row_count,
            "state": str(s.state),
            "verdict": s.verdict,
            "file_name": s.file_name,
        }
        for s in ledger.list_submissions()
    ]
    placed = sandbox.simulator.files_placed()
    passphrases = sandbox.passphrases()
    deliveries = []
    for d in DeliveryStore(runtime.store).list_deliveries():
        archive = sandbox.partner.root / d.remote_name if d.remote_name else None
        entry: dict[str, Any] = {
            "id": d.id,
            "state": d.state,
            "archive": str(archive) if archive else None,
            "passphrase": passphrases.get(d.id),
            "files": d.file_count,
        }
        if archive is not None and archive.exists() and entry["passphrase"]:
            try:
                inside = _archive_files(archive, entry["passphrase"])
            except Exception as exc:  # what the partner would hit: report, don't crash
                problems.append(f"delivery #{d.id}: the archive does not open: {exc}")
            else:
                entry["matches_nhs_files"] = inside == {
                    n: h for n, h in placed.items() if n in inside
                } and len(inside) == (d.file_count or 0)
                if not entry["matches_nhs_files"]:
                    problems.append(f"delivery #{d.id}: the archive's files differ from NHS's")
        deliveries.append(entry)
    digests = runtime.store.query("SELECT count(*) AS n FROM digests WHERE sent_at IS NOT NULL")
    alerts = sandbox.mail("Operator")
    return {
        "agreement": runtime.settings.agreement_for(None).nic,
        "submissions": submissions,
        "deliveries": deliveries,
        "digests_sent": int(digests[0]["n"]),
        "operator_mails": [f.subject for f in alerts],
        "nhs": {
            "mode": sandbox.sim_config.mode,
            "pool": len(sandbox.simulator.pool),
            "files_received": [
                {"file": r.file_name, "outcome": r.outcome, "rows": r.rows}
                for r in sandbox.simulator.received
            ],
            "mails_sent": [m.subject for m in sandbox.simulator.sent if m.delivered],
            "files_placed": len(placed),
            "returned_files": placed,
        },
        "partner_drop": str(sandbox.partner.root),
        "believed_pool": len(ledger.pool(runtime.settings.agreement_for(None).nic)),
    }
