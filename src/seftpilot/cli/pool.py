"""CLI: ``seftpilot pool show`` and ``seftpilot pool export``.

Owns rendering the believed pool (counts, last change, stuck references) and writing it
out as CSV for people: the ``--stuck`` list is what the operator sends NHS staff, with the
evidence, when an accepted DELETE did not take. Must not derive the pool itself
(``core.ledger.derive_pool`` via ``LedgerStore.pool``) or change the ledger.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from seftpilot.adapters.ledger_store import LedgerStore, RefRow
from seftpilot.adapters.store import Store
from seftpilot.cli.common import ConfigOpt, JsonOpt, console, emit_json, settings
from seftpilot.config import Agreement
from seftpilot.core.ledger import IN_FLIGHT, Pool
from seftpilot.errors import InputError

NicOpt = Annotated[
    str | None,
    typer.Option("--nic", help="The agreement (NIC number); needed when several are configured."),
]

POOL_COLUMNS = ["UNIQUE_REFERENCE", "NHS_NO", "DATE_OF_BIRTH", "ADDED_AT", "ADD_SUBMISSION"]
STUCK_COLUMNS = [
    "UNIQUE_REFERENCE",
    "NHS_NO",
    "DATE_OF_BIRTH",
    "DELETE_SUBMISSION",
    "DELETE_FILE",
    "DELETE_UPLOADED_AT",
    "STUCK_SINCE",
    "EVIDENCE",
]


@contextmanager
def open_ledger(config: Path | None, nic: str | None) -> Iterator[tuple[Agreement, LedgerStore]]:
    """The agreement (``--nic``, or the only one) and the configured state directory's ledger."""
    cfg = settings(config, required=True)
    agreement = cfg.agreement_for(nic)
    with Store(cfg.state_dir) as store:
        yield agreement, LedgerStore(store)


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def field(data: Mapping[str, str] | None, name: str) -> str:
    """A field of a recorded row, whatever case or separator its key was stored with."""
    if not data:
        return ""
    if name in data:
        return data[name]
    want = name.replace("_", "").upper()
    for key, value in data.items():
        if key.replace("_", "").replace(" ", "").upper() == want:
            return value
    return ""


def pool_summary(agreement: str, ledger: LedgerStore, pool: Pool) -> dict[str, Any]:
    pending = ledger.list_submissions(agreement, states=IN_FLIGHT)
    last = ledger.get_submission(pool.last_submission_id) if pool.last_submission_id else None
    return {
        "agreement": agreement,
        "count": len(pool),
        "stuck_count": len(pool.stuck),
        "last_change": (
            {
                "submission_id": last.id,
                "action": last.action,
                "uploaded_at": _when(last.uploaded_at),
                "verdict": last.verdict,
                "verdict_at": _when(last.verdict_at),
            }
            if last
            else None
        ),
        "awaiting_verdict": [{"submission_id": s.id, "state": s.state} for s in pending],
        "campaigns": [
            {"campaign_id": c.id, "state": c.state, "strategy": c.strategy}
            for c in ledger.list_campaigns(agreement, active=True)
        ],
    }


def write_csv_atomically(path: Path, header: list[str], rows: Iterable[list[str]]) -> int:
    """Write a CSV holding identifiers: mode 0600, complete or not at all."""
    folder = path.parent if str(path.parent) else Path()
    if not folder.is_dir():
        raise InputError(
            f"cannot write {path}: folder {folder} does not exist",
            hint="create the folder first, or choose another --out",
        )
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    count = 0
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerow(header)
            for row in rows:
                writer.writerow(row)
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="check the folder is writable and the disk is not full",
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def _pool_rows(ledger: LedgerStore, pool: Pool) -> Iterator[list[str]]:
    for ref, row in ledger.pool_rows(pool):
        entry = pool.members[ref]
        data = row.data if row else None
        yield [
            ref,
            (row.nhs_number or "") if row else "",
            field(data, "DATE_OF_BIRTH"),
            entry.added_at.isoformat(),
            str(entry.submission_id),
        ]


def _stuck_rows(ledger: LedgerStore, pool: Pool) -> Iterator[list[str]]:
    by_delete: dict[int | None, list[str]] = {}
    for ref, entry in pool.stuck.items():
        by_delete.setdefault(entry.deleted_by, []).append(ref)
    for sub_id, refs in by_delete.items():
        found: dict[str, RefRow] = ledger.refs_of(sub_id, refs) if sub_id else {}
        sub = ledger.get_submission(sub_id) if sub_id else None
        for ref in refs:
            entry = pool.stuck[ref]
            row = found.get(ref)
            yield [
                ref,
                (row.nhs_number or "") if row else "",
                field(row.data if row else None, "DATE_OF_BIRTH"),
                str(sub_id or ""),
                (sub.file_name or "") if sub else "",
                _when(entry.deleted_at) or "",
                entry.since.isoformat(),
                entry.evidence,
            ]


def register(app: typer.Typer) -> None:
    """Add the ``pool`` command group to ``app``."""
    pool_app = typer.Typer(
        help="What NHS England is believed to hold (derived from accepted submissions).",
        no_args_is_help=True,
    )
    app.add_typer(pool_app, name="pool")

    @pool_app.command("show")
    def show_cmd(config: ConfigOpt = None, nic: NicOpt = None, json_out: JsonOpt = False) -> None:
        """Counts, the last change and stuck references; --json also lists the references."""
        with open_ledger(config, nic) as (chosen, ledger):
            agreement = chosen.nic
            pool = ledger.pool(agreement)
            summary = pool_summary(agreement, ledger, pool)
        if json_out:
            summary["refs"] = [
                {"ref": e.ref, "added_at": _when(e.added_at), "submission_id": e.submission_id}
                for e in pool.members.values()
            ]
            summary["stuck"] = [
                {
                    "ref": s.ref,
                    "since": _when(s.since),
                    "evidence": s.evidence,
                    "deleted_by": s.deleted_by,
                    "deleted_at": _when(s.deleted_at),
                }
                for s in pool.stuck.values()
            ]
            emit_json(summary)
            return
        console.print(
            f"{agreement}: {summary['count']:,} reference(s) believed held by NHS England"
        )
        last = summary["last_change"]
        if last:
            console.print(
                f"  last change: {last['uploaded_at']} ({last['action']}, submission "
                f"#{last['submission_id']}, {last['verdict']})"
            )
        else:
            console.print("  last change: never (no submission has been accepted yet)")
        if pool.stuck:
            console.print(
                f"  stuck: {len(pool.stuck):,} reference(s) NHS still holds after an accepted "
                "DELETE; send NHS staff `seftpilot pool export --stuck --out FILE`"
            )
        else:
            console.print("  stuck: none")
        if summary["awaiting_verdict"]:
            ids = ", ".join(f"#{p['submission_id']}" for p in summary["awaiting_verdict"])
            console.print(f"  not counted until their verdict: {ids}")
        for camp in summary["campaigns"]:
            console.print(
                f"  campaign #{camp['campaign_id']} ({camp['strategy']}) is {camp['state']}"
            )

    @pool_app.command("export")
    def export_cmd(
        out: Annotated[
            Path, typer.Option("--out", "-o", help="CSV file to write (mode 0600, atomically).")
        ],
        stuck: Annotated[
            bool,
            typer.Option(
                "--stuck", help="Only the stuck references, with evidence, for NHS staff."
            ),
        ] = False,
        config: ConfigOpt = None,
        nic: NicOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Write the believed pool (or with --stuck, the stuck references) as CSV."""
        with open_ledger(config, nic) as (chosen, ledger):
            agreement = chosen.nic
            pool = ledger.pool(agreement)
            if stuck:
                count = write_csv_atomically(out, STUCK_COLUMNS, _stuck_rows(ledger, pool))
            else:
                count = write_csv_atomically(out, POOL_COLUMNS, _pool_rows(ledger, pool))
        kind = "stuck" if stuck else "pool"
        if json_out:
            emit_json({"agreement": agreement, "kind": kind, "out": str(out), "rows": count})
            return
        what = "stuck reference(s)" if stuck else "reference(s) in the believed pool"
        console.print(f"wrote {count:,} {what} to {out} (mode 0600; it holds identifiers)")
