"""The deliveries repository: deliveries, their manifest rows, remote files seen, triggers.

Owns the SQL for migration 6's tables and the rules of recording, in the ledger's style
(``adapters/ledger_store.py``): every change is a conditional UPDATE on ``id`` and
``version`` (anything but one row changed is ``ClaimLost``), a step is *claimed*
(``claim``: ``step`` set while it is NULL and the state still allows that step) before its
side effect and *recorded* after (``record``: the next state always comes from
``core.delivery``'s table, which refuses any other pair), and every change appends its
event in the same transaction.

Must not decide anything (``core.delivery`` does), read the clock (callers pass ``at``) or
hold a secret: no passphrase ever reaches this module, only its fingerprint.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from seftpilot.adapters.manifest import Manifest, ManifestEntry
from seftpilot.adapters.store import Store, utcnow_iso
from seftpilot.core.delivery import ACTIVE, SeenFile, next_state, step_for
from seftpilot.errors import ClaimLost, LedgerError

SUBJECT = "delivery"

# Columns a caller may set with a claim, a record or ``update``; nothing else is writable.
_WRITABLE = frozenset(
    {
        "keep",
        "observed",
        "quiet_since",
        "file_count",
        "total_bytes",
        "manifest",
        "archive_name",
        "archive_parts",
        "passphrase_fingerprint",
        "remote_name",
        "staged_at",
        "uploaded_at",
        "passphrase_message_id",
        "passphrase_sent_at",
        "announce_message_id",
        "clean_after",
        "cleaned_at",
        "held_from",
        "attempts",
        "retry_at",
        "last_error",
        "source",
        "source_path",
    }
)


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Delivery:
    """One row of ``deliveries``."""

    id: int
    agreement: str
    state: str
    step: str | None
    step_at: datetime | None
    source: str
    source_path: str | None
    origin: str
    nhs_day: date
    work_dir: str
    keep: bool
    version: int
    created_at: datetime
    updated_at: datetime
    attempts: int = 0
    observed: list[SeenFile] | None = None
    quiet_since: datetime | None = None
    file_count: int | None = None
    total_bytes: int | None = None
    manifest: Manifest | None = None
    archive_name: str | None = None
    archive_parts: list[dict[str, Any]] = field(default_factory=list)
    passphrase_fingerprint: str | None = None
    remote_name: str | None = None
    staged_at: datetime | None = None
    uploaded_at: datetime | None = None
    passphrase_message_id: str | None = None
    passphrase_sent_at: datetime | None = None
    announce_message_id: str | None = None
    clean_after: datetime | None = None
    cleaned_at: datetime | None = None
    held_from: str | None = None
    retry_at: datetime | None = None
    last_error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (no secret: the passphrase is never here)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, date | datetime):
                out[key] = value.isoformat()
            elif isinstance(value, Manifest):
                out[key] = [
                    {"name": f.name, "size": f.size, "sha256": f.sha256} for f in value.files
                ]
            elif key == "observed":
                continue  # internal bookkeeping of the drop folder
            else:
                out[key] = value
        out["next_step"] = step_for(self.state)
        return out


def _delivery(row: sqlite3.Row) -> Delivery:
    created, updated = _dt(row["created_at"]), _dt(row["updated_at"])
    assert created is not None and updated is not None
    observed = (
        [SeenFile(str(n), int(s), int(m)) for n, s, m in json.loads(row["observed"])]
        if row["observed"]
        else None
    )
    return Delivery(
        id=int(row["id"]),
        agreement=row["agreement"],
        state=row["state"],
        step=row["step"],
        step_at=_dt(row["step_at"]),
        source=row["source"],
        source_path=row["source_path"],
        origin=row["origin"],
        nhs_day=date.fromisoformat(row["nhs_day"]),
        work_dir=row["work_dir"],
        keep=bool(row["keep"]),
        version=int(row["version"]),
        created_at=created,
        updated_at=updated,
        attempts=int(row["attempts"]),
        observed=observed,
        quiet_since=_dt(row["quiet_since"]),
        file_count=row["file_count"],
        total_bytes=row["total_bytes"],
        manifest=Manifest.from_json(row["manifest"]) if row["manifest"] else None,
        archive_name=row["archive_name"],
        archive_parts=json.loads(row["archive_parts"] or "[]"),
        passphrase_fingerprint=row["passphrase_fingerprint"],
        remote_name=row["remote_name"],
        staged_at=_dt(row["staged_at"]),
        uploaded_at=_dt(row["uploaded_at"]),
        passphrase_message_id=row["passphrase_message_id"],
        passphrase_sent_at=_dt(row["passphrase_sent_at"]),
        announce_message_id=row["announce_message_id"],
        clean_after=_dt(row["clean_after"]),
        cleaned_at=_dt(row["cleaned_at"]),
        held_from=row["held_from"],
        retry_at=_dt(row["retry_at"]),
        last_error=row["last_error"],
    )


def _encode(key: str, value: Any) -> Any:
    if key not in _WRITABLE:
        raise ValueError(f"deliveries.{key} is not writable")
    if isinstance(value, datetime):
        return utcnow_iso(value)
    if isinstance(value, Manifest):
        return value.to_json()
    if key == "observed" and value is not None:
        return json.dumps([[f.name, f.size, f.mtime] for f in value])
    if key == "archive_parts":
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


@dataclass(frozen=True)
class DeliveryFile:
    delivery_id: int
    name: str
    size: int
    sha256: str
    source: str
    remote_mtime: int | None
    deleted_at: datetime | None


class DeliveryStore:
    """Deliveries on ``Store`` (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- reading -------------------------------------------------------------------------
    def get(self, delivery_id: int) -> Delivery:
        rows = self.store.query("SELECT * FROM deliveries WHERE id=?", (delivery_id,))
        if not rows:
            raise LedgerError(
                f"no delivery #{delivery_id}",
                hint="`seftpilot delivery list` shows the deliveries",
            )
        return _delivery(rows[0])

    def list_deliveries(
        self, agreement: str | None = None, states: Sequence[str] | None = None
    ) -> list[Delivery]:
        sql, params = "SELECT * FROM deliveries WHERE 1=1", []
        if agreement is not None:
            sql += " AND agreement=?"
            params.append(agreement)
        if states is not None:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params.extend(states)
        return [_delivery(r) for r in self.store.query(sql + " ORDER BY id", tuple(params))]

    def waiting(self, agreement: str) -> Delivery | None:
        found = self.list_deliveries(agreement, ["waiting"])
        return found[0] if found else None

    def files(self, delivery_id: int) -> list[DeliveryFile]:
        rows = self.store.query(
            "SELECT * FROM delivery_files WHERE delivery_id=? ORDER BY name", (delivery_id,)
        )
        return [
            DeliveryFile(
                r["delivery_id"],
                r["name"],
                r["size"],
                r["sha256"],
                r["source"],
                r["remote_mtime"],
                _dt(r["deleted_at"]),
            )
            for r in rows
        ]

    def seen(self, agreement: str) -> list[SeenFile]:
        """Every remote file collected for ``agreement`` (name, size, mtime)."""
        rows = self.store.query(
            "SELECT name, size, mtime FROM remote_files_seen WHERE agreement=?", (agreement,)
        )
        return [SeenFile(r["name"], int(r["size"]), int(r["mtime"])) for r in rows]

    def trigger_for(self, mail_id: int) -> int | None:
        rows = self.store.query(
            "SELECT delivery_id FROM delivery_triggers WHERE mail_id=?", (mail_id,)
        )
        return int(rows[0][0]) if rows else None

    # -- creating ------------------------------------------------------------------------
    def create(
        self,
        agreement: str,
        *,
        source: str,
        origin: str,
        nhs_day: date,
        work_root: str,
        at: datetime,
        keep: bool = False,
        source_path: str | None = None,
        mail_id: int | None = None,
    ) -> Delivery:
        """A new ``waiting`` delivery (work dir ``work_root/delivery-<id>``). At most one
        waits per agreement (a unique index): LedgerError if one already does."""
        try:
            with self.store.transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO deliveries(agreement, state, source, source_path, origin,"
                    " nhs_day, work_dir, keep, created_at, updated_at)"
                    " VALUES (?, 'waiting', ?, ?, ?, ?, '', ?, ?, ?)",
                    (
                        agreement,
                        source,
                        source_path,
                        origin,
                        nhs_day.isoformat(),
                        int(keep),
                        utcnow_iso(at),
                        utcnow_iso(at),
                    ),
                )
                new_id = int(cur.lastrowid or 0)
                conn.execute(
                    "UPDATE deliveries SET work_dir=? WHERE id=?",
                    (f"{work_root}/delivery-{new_id}", new_id),
                )
                if mail_id is not None:
                    conn.execute(
                        "INSERT INTO delivery_triggers(mail_id, delivery_id, at) VALUES (?,?,?)",
                        (mail_id, new_id, utcnow_iso(at)),
                    )
                Store.append_event(
                    conn,
                    "delivery.created",
                    at=at,
                    subject_type=SUBJECT,
                    subject_id=new_id,
                    detail={
                        "agreement": agreement,
                        "source": source,
                        "origin": origin,
                        "mail_id": mail_id,
                        "keep": keep,
                    },
                )
        except sqlite3.IntegrityError as exc:
            raise LedgerError(
                f"{agreement} already has a delivery waiting for its files ({exc})",
                hint="that delivery collects the files; `seftpilot delivery list` shows it",
            ) from None
        return self.get(new_id)

    def link_trigger(self, mail_id: int, delivery_id: int, at: datetime) -> bool:
        """Attribute the new-data mail ``mail_id`` to a delivery; False if it already was."""
        with self.store.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO delivery_triggers(mail_id, delivery_id, at) VALUES (?,?,?)",
                (mail_id, delivery_id, utcnow_iso(at)),
            )
            if cur.rowcount != 1:
                return False
            Store.append_event(
                conn,
                "delivery.mail_linked",
                at=at,
                subject_type=SUBJECT,
                subject_id=delivery_id,
                detail={"mail_id": mail_id},
            )
        return True

    # -- changing ------------------------------------------------------------------------
    def _update(
        self,
        conn: sqlite3.Connection,
        d: Delivery,
        at: datetime,
        sets: dict[str, Any],
        *,
        extra_where: str = "",
        extra_params: tuple[Any, ...] = (),
    ) -> None:
        columns = {
            k: _encode(k, v) if k not in ("state", "step", "step_at") else v
            for k, v in sets.items()
        }
        assignments = ", ".join(f"{k}=?" for k in columns)
        cur = conn.execute(
            f"UPDATE deliveries SET {assignments}, updated_at=?, version=version+1"  # noqa: S608
            f" WHERE id=? AND version=?{extra_where}",
            (*columns.values(), utcnow_iso(at), d.id, d.version, *extra_params),
        )
        if cur.rowcount != 1:
            raise ClaimLost(
                f"delivery #{d.id} changed under us (expected version {d.version})",
                hint="another seftpilot process is working on it; run again later",
            )

    def claim(self, d: Delivery, step: str, at: datetime, **fields: Any) -> Delivery:
        """Claim ``step`` before its side effect. The state must still be one whose next
        step is ``step`` and no other step may be in hand."""
        if step_for(d.state) != step:
            raise LedgerError(f"delivery #{d.id} is {d.state}: its next step is not {step}")
        with self.store.transaction() as conn:
            self._update(
                conn,
                d,
                at,
                {"step": step, "step_at": utcnow_iso(at), **fields},
                extra_where=" AND state=? AND step IS NULL",
                extra_params=(d.state,),
            )
            Store.append_event(
                conn,
                f"delivery.claim.{step}",
                at=at,
                subject_type=SUBJECT,
                subject_id=d.id,
                detail={"state": d.state},
            )
        return self.get(d.id)

    def record(
        self,
        d: Delivery,
        event: str,
        at: datetime,
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Delivery:
        """Apply ``event`` (state from the table), release the claim, set ``fields``."""
        new = next_state(d.state, event)
        sets: dict[str, Any] = {"state": new, "step": None, "step_at": None, **fields}
        with self.store.transaction() as conn:
            self._update(conn, d, at, sets)
            Store.append_event(
                conn,
                f"delivery.{event}",
                at=at,
                subject_type=SUBJECT,
                subject_id=d.id,
                detail={"from": d.state, "to": new, **(detail or {})},
            )
        return self.get(d.id)

    def release(
        self,
        d: Delivery,
        at: datetime,
        kind: str,
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Delivery:
        """Let go of the claimed step without a transition (a crash to redo, a transient
        failure to retry later); ``kind`` names the event appended."""
        with self.store.transaction() as conn:
            self._update(conn, d, at, {"step": None, "step_at": None, **fields})
            Store.append_event(
                conn, kind, at=at, subject_type=SUBJECT, subject_id=d.id, detail=detail or {}
            )
        return self.get(d.id)

    def update(
        self,
        d: Delivery,
        at: datetime,
        kind: str | None = None,
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Delivery:
        """Set ``fields`` (no transition, the claim unchanged), with an optional event."""
        with self.store.transaction() as conn:
            self._update(conn, d, at, fields)
            if kind is not None:
                Store.append_event(
                    conn, kind, at=at, subject_type=SUBJECT, subject_id=d.id, detail=detail or {}
                )
        return self.get(d.id)

    def note(self, d: Delivery, kind: str, at: datetime, **detail: Any) -> None:
        with self.store.transaction() as conn:
            Store.append_event(
                conn, kind, at=at, subject_type=SUBJECT, subject_id=d.id, detail=detail
            )

    def record_collected(
        self,
        d: Delivery,
        manifest: Manifest,
        sources: Mapping[str, tuple[str, int | None]],
        seen: Iterable[SeenFile],
        at: datetime,
    ) -> Delivery:
        """``collect_done``: the manifest rows and the remote files seen, in one transaction
        with the transition, so a crash records all of it or none."""
        new = next_state(d.state, "collect_done")
        with self.store.transaction() as conn:
            self._update(
                conn,
                d,
                at,
                {
                    "state": new,
                    "step": None,
                    "step_at": None,
                    "manifest": manifest,
                    "file_count": len(manifest.files),
                    "total_bytes": manifest.total_size,
                    "observed": None,
                    "attempts": 0,
                    "retry_at": None,
                    "last_error": None,
                },
            )
            conn.execute("DELETE FROM delivery_files WHERE delivery_id=?", (d.id,))
            conn.executemany(
                "INSERT INTO delivery_files(delivery_id, name, size, sha256, source, remote_mtime)"
                " VALUES (?,?,?,?,?,?)",
                [
                    (d.id, e.name, e.size, e.sha256, *sources.get(e.name, (manifest.source, None)))
                    for e in manifest.files
                ],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO remote_files_seen(agreement, name, size, mtime,"
                " delivery_id, seen_at) VALUES (?,?,?,?,?,?)",
                [(d.agreement, f.name, f.size, f.mtime, d.id, utcnow_iso(at)) for f in seen],
            )
            Store.append_event(
                conn,
                "delivery.collect_done",
                at=at,
                subject_type=SUBJECT,
                subject_id=d.id,
                detail={
                    "from": d.state,
                    "to": new,
                    "files": len(manifest.files),
                    "bytes": manifest.total_size,
                    "source": manifest.source,
                },
            )
        return self.get(d.id)

    def mark_deleted(self, delivery_id: int, names: Iterable[str], at: datetime) -> None:
        with self.store.transaction() as conn:
            conn.executemany(
                "UPDATE delivery_files SET deleted_at=? WHERE delivery_id=? AND name=?",
                [(utcnow_iso(at), delivery_id, n) for n in names],
            )


def manifest_entries(files: Sequence[DeliveryFile]) -> tuple[ManifestEntry, ...]:
    return tuple(ManifestEntry(f.name, f.size, f.sha256) for f in files)
