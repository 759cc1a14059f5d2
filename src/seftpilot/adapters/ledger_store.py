"""The ledger's repository: submissions, their rows, campaigns, stuck references, the pool,
and which submission each NHS notice was attributed to (``record_correlation``).

Owns the SQL for those tables (on ``adapters/store.py``'s ``Store``) and the rules of
recording: every change is a conditional UPDATE (``WHERE id=? AND state=? AND version=?``;
anything but one row changed is ``ClaimLost``), the next state always comes from
``core.ledger``'s tables, and every change appends its event in the same transaction, so a
crash leaves either all of it or none of it. The database's own unique index refuses a
second upload for an agreement on one NHS day (``DailyLimitReached``).

Must not decide anything (what is due, what a verdict is, what the pool is: ``core``
does) and must not read the clock: callers pass ``at``. Rows are identifying; they live in
the 0600 database only and never go into events, which hold counts.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import islice
from typing import Any, TypeVar

from seftpilot.adapters.store import Store, _state_error, utcnow_iso
from seftpilot.core.ledger import (
    ACCEPTED,
    CAMPAIGN_ACTIVE,
    REJECTED,
    Action,
    CampaignEvent,
    CampaignState,
    HistoryEntry,
    PlannedStep,
    Pool,
    StepView,
    StuckMark,
    SubmissionEvent,
    SubmissionState,
    campaign_event,
    derive_pool,
    due_steps,
    next_state,
)
from seftpilot.errors import (
    ClaimLost,
    DailyLimitReached,
    InputError,
    LedgerError,
)

BATCH = 5_000  # rows per executemany: bounded memory for a 1,000,000-row submission
PAGE = 20_000  # rows per page when reading a submission's references back

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RefRow:
    """One row of a submission: the study's reference, the NHS number, and the normalised
    row as it was (or will be) sent: ``data`` maps profile field -> value."""

    unique_reference: str
    nhs_number: str | None = None
    data: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Submission:
    id: int
    agreement: str
    action: Action
    state: str
    version: int
    attempt: int
    row_count: int
    created_at: datetime
    campaign_id: int | None = None
    campaign_step: int | None = None
    day_offset: int | None = None
    retry_of: int | None = None
    file_name: str | None = None
    file_sha256: str | None = None
    due_on: date | None = None
    nhs_day: date | None = None
    uploaded_at: datetime | None = None
    evidence_deadline: datetime | None = None
    verdict: str | None = None
    verdict_at: datetime | None = None
    verdict_detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, date | datetime) else value
        return out


@dataclass(frozen=True)
class Campaign:
    id: int
    agreement: str
    strategy: str
    state: str
    version: int
    created_at: datetime
    updated_at: datetime | None = None
    target_sha256: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True)
class Notice:
    """A recorded mail as verdict evidence: its classification and which submission it
    was correlated to (``correlated`` False: never attributed; ``ambiguous``: several)."""

    mail_id: int
    received_at: datetime
    from_addr: str | None
    subject: str | None
    message_id: str | None
    rule: str | None
    class_: str | None
    action: str | None
    captures: dict[str, Any]
    submission_id: int | None
    ambiguous: bool
    correlated: bool
    state: str


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _day(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None


def _submission(row: sqlite3.Row) -> Submission:
    created = _dt(row["created_at"])
    assert created is not None
    return Submission(
        id=row["id"],
        agreement=row["agreement"],
        action=row["action"],
        state=row["state"],
        version=row["version"],
        attempt=row["attempt"],
        row_count=row["row_count"],
        created_at=created,
        campaign_id=row["campaign_id"],
        campaign_step=row["campaign_step"],
        day_offset=row["day_offset"],
        retry_of=row["retry_of"],
        file_name=row["file_name"],
        file_sha256=row["file_sha256"],
        due_on=_day(row["due_on"]),
        nhs_day=_day(row["nhs_day"]),
        uploaded_at=_dt(row["uploaded_at"]),
        evidence_deadline=_dt(row["evidence_deadline"]),
        verdict=row["verdict"],
        verdict_at=_dt(row["verdict_at"]),
        verdict_detail=json.loads(row["verdict_detail"] or "{}"),
    )


def _campaign(row: sqlite3.Row) -> Campaign:
    created = _dt(row["created_at"])
    assert created is not None
    return Campaign(
        id=row["id"],
        agreement=row["agreement"],
        strategy=row["strategy"],
        state=row["state"],
        version=row["version"],
        created_at=created,
        updated_at=_dt(row["updated_at"]),
        target_sha256=row["target_sha256"],
        detail=json.loads(row["detail"] or "{}"),
    )


def _batched(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _row_data(row: RefRow) -> str | None:
    if not row.data:
        return None
    # Empty fields are left out: most of the 24 columns are empty on most rows.
    return json.dumps({k: v for k, v in row.data.items() if v}, separators=(",", ":"))


# Columns a transition may set besides state and version (never user-chosen names in SQL).
_SETTABLE = frozenset(
    {
        "due_on",
        "nhs_day",
        "uploaded_at",
        "file_name",
        "file_sha256",
        "evidence_deadline",
        "verdict",
        "verdict_at",
        "verdict_detail",
    }
)

_VERDICT_EVENTS: dict[str, SubmissionEvent] = {
    SubmissionState.CONFIRMED_SUCCESS: SubmissionEvent.VERDICT_CONFIRMED,
    SubmissionState.PRESUMED_SUCCESS: SubmissionEvent.VERDICT_PRESUMED,
    SubmissionState.FAILED: SubmissionEvent.VERDICT_FAILED,
    SubmissionState.UNKNOWN: SubmissionEvent.VERDICT_UNKNOWN,
}


class LedgerStore:
    """Submissions, campaigns and the believed pool, recorded in one ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- plumbing ------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A transaction whose SQLite errors arrive as ledger errors (and roll back)."""
        try:
            with self.store.transaction() as conn:
                yield conn
        except sqlite3.Error as exc:
            raise _state_error(self.store.path, exc) from None

    # -- submissions: creating -----------------------------------------------------------
    def create_submission(
        self,
        agreement: str,
        action: Action,
        rows: Iterable[RefRow],
        *,
        at: datetime,
        state: str = SubmissionState.PLANNED,
        campaign_id: int | None = None,
        campaign_step: int | None = None,
        day_offset: int | None = None,
        file_name: str | None = None,
        due_on: date | None = None,
    ) -> Submission:
        """Record a submission and its rows, streamed in batches, in one transaction."""
        if state not in (SubmissionState.PLANNED, SubmissionState.DUE):
            raise ValueError("a new submission starts planned or due")
        with self._tx() as conn:
            sub_id = self._insert_submission(
                conn,
                agreement,
                action,
                at=at,
                state=state,
                campaign_id=campaign_id,
                campaign_step=campaign_step,
                day_offset=day_offset,
                file_name=file_name,
                due_on=due_on,
            )
            count = self._insert_rows(conn, sub_id, rows)
            conn.execute("UPDATE submissions SET row_count=? WHERE id=?", (count, sub_id))
            Store.append_event(
                conn,
                "submission.created",
                at=at,
                subject_type="submission",
                subject_id=sub_id,
                detail={"action": action, "rows": count, "state": state},
            )
            return self._get(conn, sub_id)

    def _insert_submission(
        self,
        conn: sqlite3.Connection,
        agreement: str,
        action: Action,
        *,
        at: datetime,
        state: str,
        campaign_id: int | None = None,
        campaign_step: int | None = None,
        day_offset: int | None = None,
        file_name: str | None = None,
        due_on: date | None = None,
        attempt: int = 1,
        retry_of: int | None = None,
    ) -> int:
        if action not in ("ADD", "DELETE"):
            raise ValueError(f"action must be ADD or DELETE, not {action!r}")
        cur = conn.execute(
            "INSERT INTO submissions(agreement, action, state, campaign_id, campaign_step,"
            " day_offset, attempt, retry_of, file_name, created_at, due_on)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                agreement,
                action,
                str(state),
                campaign_id,
                campaign_step,
                day_offset,
                attempt,
                retry_of,
                file_name,
                utcnow_iso(at),
                due_on.isoformat() if due_on else None,
            ),
        )
        return int(cur.lastrowid or 0)

    def _insert_rows(
        self, conn: sqlite3.Connection, sub_id: int, rows: Iterable[RefRow], start: int = 0
    ) -> int:
        count = start
        for batch in _batched(rows, BATCH):
            params: list[tuple[int, str, str | None, int, str | None]] = []
            for row in batch:
                ref = row.unique_reference
                if not ref or not ref.strip():
                    raise InputError(
                        f"row {count + len(params) + 1} has an empty unique reference",
                        hint="every row needs its study ID (UNIQUE_REFERENCE)",
                    )
                params.append(
                    (sub_id, ref, row.nhs_number, count + len(params) + 1, _row_data(row))
                )
            try:
                conn.executemany(
                    "INSERT INTO submission_refs(submission_id, unique_reference, nhs_number,"
                    " row_no, row_data) VALUES (?,?,?,?,?)",
                    params,
                )
            except sqlite3.IntegrityError:
                raise self._duplicate(conn, sub_id, [p[1] for p in params]) from None
            count += len(params)
        return count

    @staticmethod
    def _duplicate(conn: sqlite3.Connection, sub_id: int, refs: list[str]) -> InputError:
        seen: set[str] = set()
        dup: str | None = None
        for ref in refs:
            if ref in seen:
                dup = ref
                break
            seen.add(ref)
        if dup is None:
            for ref in refs:
                found = conn.execute(
                    "SELECT 1 FROM submission_refs WHERE submission_id=? AND unique_reference=?",
                    (sub_id, ref),
                ).fetchone()
                if found:
                    dup = ref
                    break
        return InputError(
            f"unique reference {dup!r} appears twice in one submission; nothing was recorded",
            hint="each participant may appear once per file; remove the duplicate and plan again",
        )

    # -- submissions: reading ------------------------------------------------------------
    def _get(self, conn: sqlite3.Connection, sub_id: int) -> Submission:
        row = conn.execute("SELECT * FROM submissions WHERE id=?", (sub_id,)).fetchone()
        if row is None:
            raise LedgerError(
                f"no submission #{sub_id}", hint="`seftpilot status` lists the submissions"
            )
        return _submission(row)

    def get_submission(self, sub_id: int) -> Submission:
        rows = self.store.query("SELECT * FROM submissions WHERE id=?", (sub_id,))
        if not rows:
            raise LedgerError(
                f"no submission #{sub_id}", hint="`seftpilot status` lists the submissions"
            )
        return _submission(rows[0])

    def list_submissions(
        self,
        agreement: str | None = None,
        *,
        states: Iterable[str] | None = None,
        campaign_id: int | None = None,
    ) -> list[Submission]:
        """Submissions in the order they were recorded, optionally filtered."""
        where: list[str] = []
        params: list[Any] = []
        if agreement is not None:
            where.append("agreement=?")
            params.append(agreement)
        if states is not None:
            wanted = [str(s) for s in states]
            where.append(f"state IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if campaign_id is not None:
            where.append("campaign_id=?")
            params.append(campaign_id)
        sql = "SELECT * FROM submissions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_submission(r) for r in self.store.query(sql + " ORDER BY id", tuple(params))]

    def rows(self, sub_id: int) -> Iterator[RefRow]:
        """A submission's rows in file order, read in pages (for rendering the file)."""
        last = 0
        while True:
            page = self.store.query(
                "SELECT row_no, unique_reference, nhs_number, row_data FROM submission_refs"
                " WHERE submission_id=? AND row_no > ? ORDER BY row_no LIMIT ?",
                (sub_id, last, PAGE),
            )
            if not page:
                return
            for r in page:
                data = json.loads(r["row_data"]) if r["row_data"] else None
                yield RefRow(r["unique_reference"], r["nhs_number"], data)
            last = page[-1]["row_no"]

    def _outcomes(self, sub_id: int) -> Iterator[tuple[str, str | None]]:
        last = ""
        while True:
            page = self.store.query(
                "SELECT unique_reference, outcome FROM submission_refs"
                " WHERE submission_id=? AND unique_reference > ?"
                " ORDER BY unique_reference LIMIT ?",
                (sub_id, last, PAGE),
            )
            if not page:
                return
            for r in page:
                yield r[0], r[1]
            last = page[-1][0]

    def refs_of(self, sub_id: int, refs: Iterable[str]) -> dict[str, RefRow]:
        """The recorded rows of ``refs`` in one submission (those it holds)."""
        out: dict[str, RefRow] = {}
        for batch in _batched(refs, 500):
            marks = ",".join("?" * len(batch))
            sql = (
                "SELECT unique_reference, nhs_number, row_data FROM submission_refs"  # noqa: S608
                f" WHERE submission_id=? AND unique_reference IN ({marks})"
            )
            for r in self.store.query(sql, (sub_id, *batch)):
                data = json.loads(r["row_data"]) if r["row_data"] else None
                out[r[0]] = RefRow(r[0], r[1], data)
        return out

    # -- submissions: transitions --------------------------------------------------------
    def _transition(
        self,
        conn: sqlite3.Connection,
        sub: Submission,
        event: SubmissionEvent,
        *,
        at: datetime,
        detail: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Submission:
        new = next_state("submission", sub.state, event)  # refuses before touching anything
        unknown = set(fields) - _SETTABLE
        if unknown:
            raise ValueError(f"not a settable submission column: {sorted(unknown)}")
        columns = ["state=?", *(f"{name}=?" for name in fields), "version=version+1"]
        values = [str(new), *fields.values()]
        try:
            cur = conn.execute(
                f"UPDATE submissions SET {', '.join(columns)}"  # noqa: S608 (names whitelisted)
                " WHERE id=? AND state=? AND version=?",
                (*values, sub.id, str(sub.state), sub.version),
            )
        except sqlite3.IntegrityError as exc:
            if "nhs_day" in str(exc):
                raise self._daily_limit(conn, sub, fields.get("nhs_day")) from None
            raise
        if cur.rowcount != 1:
            current = conn.execute(
                "SELECT state, version FROM submissions WHERE id=?", (sub.id,)
            ).fetchone()
            now = f"{current[0]} (version {current[1]})" if current else "gone"
            raise ClaimLost(
                f"submission #{sub.id} changed under us: expected {sub.state} (version "
                f"{sub.version}), found {now}; nothing was changed",
                hint="another worker handled it; read it again before acting",
            )
        Store.append_event(
            conn,
            f"submission.{event}",
            at=at,
            subject_type="submission",
            subject_id=sub.id,
            detail={"from": str(sub.state), "to": str(new), **(detail or {})},
        )
        return self._get(conn, sub.id)

    @staticmethod
    def _daily_limit(
        conn: sqlite3.Connection, sub: Submission, nhs_day: str | None
    ) -> DailyLimitReached:
        other = conn.execute(
            "SELECT id FROM submissions WHERE agreement=? AND nhs_day=? AND id<>?",
            (sub.agreement, nhs_day, sub.id),
        ).fetchone()
        which = f" (submission #{other[0]})" if other else ""
        return DailyLimitReached(
            f"{sub.agreement} already has an upload on NHS day {nhs_day}{which}; "
            f"submission #{sub.id} was not claimed",
            hint="NHS England takes one file a day; it will go on the next NHS day",
        )

    def transition(
        self,
        sub: Submission,
        event: SubmissionEvent,
        *,
        at: datetime,
        detail: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Submission:
        """Apply ``event`` to the submission as read (``sub``); ClaimLost if it changed."""
        with self._tx() as conn:
            return self._transition(conn, sub, event, at=at, detail=detail, **fields)

    def make_due(self, sub: Submission, *, at: datetime, due_on: date | None = None) -> Submission:
        fields: dict[str, Any] = {"due_on": due_on.isoformat()} if due_on else {}
        return self.transition(sub, SubmissionEvent.MAKE_DUE, at=at, **fields)

    def cancel(self, sub: Submission, *, at: datetime, reason: str = "") -> Submission:
        return self.transition(sub, SubmissionEvent.CANCEL, at=at, detail={"reason": reason})

    def claim_upload(
        self,
        sub: Submission,
        *,
        at: datetime,
        nhs_day: date,
        file_name: str | None = None,
        file_sha256: str | None = None,
        size: int | None = None,
        transport: str | None = None,
    ) -> Submission:
        """Claim a due submission for upload on ``nhs_day`` before any byte moves.

        The NHS day is recorded with the claim, so the database refuses a second
        agreement upload that day (DailyLimitReached) before the side effect, not after.
        The file's name, SHA-256 and size (in the event) are recorded with the claim, so a
        restart can tell by listing the remote folder whether the file arrived.
        """
        fields: dict[str, Any] = {"nhs_day": nhs_day.isoformat()}
        if file_name is not None:
            fields["file_name"] = file_name
        if file_sha256 is not None:
            fields["file_sha256"] = file_sha256
        detail: dict[str, Any] = {"nhs_day": nhs_day.isoformat()}
        if size is not None:
            detail["size"] = size
        if transport is not None:
            detail["transport"] = transport
        return self.transition(sub, SubmissionEvent.CLAIM, at=at, detail=detail, **fields)

    def record_upload(
        self,
        sub: Submission,
        *,
        at: datetime,
        file_name: str | None = None,
        file_sha256: str | None = None,
        evidence_deadline: datetime | None = None,
        nhs_day: date | None = None,
        found_remote: bool = False,
    ) -> Submission:
        """The file is on NHS's side (``found_remote``: proved by listing after a loss).

        ``at`` is the upload time; ``nhs_day`` overrides the claimed day when the upload
        actually happened on another (a manual upload confirmed later).
        """
        fields: dict[str, Any] = {"uploaded_at": utcnow_iso(at)}
        if file_name is not None:
            fields["file_name"] = file_name
        if file_sha256 is not None:
            fields["file_sha256"] = file_sha256
        if evidence_deadline is not None:
            fields["evidence_deadline"] = utcnow_iso(evidence_deadline)
        if nhs_day is not None:
            fields["nhs_day"] = nhs_day.isoformat()
        event = SubmissionEvent.REMOTE_FOUND if found_remote else SubmissionEvent.UPLOAD_DONE
        detail = {"file_name": file_name, "sha256": file_sha256}
        return self.transition(sub, event, at=at, detail=detail, **fields)

    def record_upload_lost(self, sub: Submission, *, at: datetime, reason: str = "") -> Submission:
        """A crash or a dropped connection mid-transfer: the remote must be listed next."""
        return self.transition(sub, SubmissionEvent.UPLOAD_LOST, at=at, detail={"reason": reason})

    def record_not_sent(
        self, sub: Submission, *, at: datetime, reason: str = "", proved_absent: bool = False
    ) -> Submission:
        """Back to due: refused before any byte moved, or a listing proved it absent.

        The day's NHS date stays on the submission: no other file of the agreement goes
        that day, while this one may try again (nothing of it reached NHS).
        """
        event = SubmissionEvent.REMOTE_ABSENT if proved_absent else SubmissionEvent.UPLOAD_NOT_SENT
        return self.transition(sub, event, at=at, detail={"reason": reason})

    def record_verdict(
        self,
        sub: Submission,
        verdict: str,
        *,
        at: datetime,
        detail: Mapping[str, Any] | None = None,
    ) -> Submission:
        """Close the evidence window with ``verdict`` and its evidence (``detail``)."""
        try:
            event = _VERDICT_EVENTS[verdict]
        except KeyError:
            raise ValueError(
                f"{verdict!r} is not a verdict ({', '.join(_VERDICT_EVENTS)})"
            ) from None
        return self.transition(
            sub,
            event,
            at=at,
            detail={"verdict": verdict},
            verdict=str(verdict),
            verdict_at=utcnow_iso(at),
            verdict_detail=json.dumps(dict(detail or {}), default=str),
        )

    def resolve(
        self, sub: Submission, *, success: bool, at: datetime, note: str, late: bool = False
    ) -> Submission:
        """Settle a verdict: the operator on ``unknown``, or (``late``) a notice that
        arrived after a presumed success. The earlier evidence is kept beside the new."""
        if late:
            event = SubmissionEvent.LATE_CONFIRMATION if success else SubmissionEvent.LATE_FAILURE
        else:
            event = SubmissionEvent.RESOLVE_SUCCESS if success else SubmissionEvent.RESOLVE_FAILED
        verdict = SubmissionState.CONFIRMED_SUCCESS if success else SubmissionState.FAILED
        detail = {"note": note, "previous": {"verdict": sub.verdict, **sub.verdict_detail}}
        return self.transition(
            sub,
            event,
            at=at,
            detail={"verdict": str(verdict), "note": note},
            verdict=str(verdict),
            verdict_at=utcnow_iso(at),
            verdict_detail=json.dumps(detail, default=str),
        )

    def retry(self, sub: Submission, *, at: datetime, include_rejected: bool = False) -> Submission:
        """Mark a failed submission retried and record its next attempt (planned).

        The new submission carries the same rows (without those NHS rejected one by one,
        unless ``include_rejected``), ``attempt + 1`` and ``retry_of``; it keeps the
        campaign step. Both happen in one transaction.
        """
        with self._tx() as conn:
            self._transition(conn, sub, SubmissionEvent.RETRY, at=at)
            new_id = self._insert_submission(
                conn,
                sub.agreement,
                sub.action,
                at=at,
                state=SubmissionState.PLANNED,
                campaign_id=sub.campaign_id,
                campaign_step=sub.campaign_step,
                day_offset=sub.day_offset,
                attempt=sub.attempt + 1,
                retry_of=sub.id,
            )
            keep = "" if include_rejected else " AND (outcome IS NULL OR outcome <> 'rejected')"
            sql = (
                "INSERT INTO submission_refs(submission_id, unique_reference, nhs_number,"  # noqa: S608
                " row_no, row_data) SELECT ?, unique_reference, nhs_number, row_no, row_data"
                f" FROM submission_refs WHERE submission_id=?{keep}"
            )
            conn.execute(sql, (new_id, sub.id))
            count = conn.execute(
                "SELECT count(*) FROM submission_refs WHERE submission_id=?", (new_id,)
            ).fetchone()[0]
            conn.execute("UPDATE submissions SET row_count=? WHERE id=?", (count, new_id))
            Store.append_event(
                conn,
                "submission.created",
                at=at,
                subject_type="submission",
                subject_id=new_id,
                detail={
                    "action": sub.action,
                    "rows": count,
                    "retry_of": sub.id,
                    "attempt": sub.attempt + 1,
                    "left_out": sub.row_count - count,
                },
            )
            return self._get(conn, new_id)

    def reject_rows(
        self,
        sub_id: int,
        refs: Iterable[str],
        *,
        at: datetime,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """Record rows NHS refused one by one (they stay out of the pool). All or nothing:
        a reference the submission does not hold is an error and nothing is recorded."""
        with self._tx() as conn:
            self._get(conn, sub_id)
            total = 0
            missing: list[str] = []
            for batch in _batched(refs, BATCH):
                for ref in batch:
                    cur = conn.execute(
                        "UPDATE submission_refs SET outcome=? WHERE submission_id=?"
                        " AND unique_reference=?",
                        (REJECTED, sub_id, ref),
                    )
                    if cur.rowcount:
                        total += 1
                    elif len(missing) < 5:
                        missing.append(ref)
            if missing:
                raise LedgerError(
                    f"submission #{sub_id} holds no row {', '.join(map(repr, missing))}; "
                    "no rejection was recorded",
                    hint="check the error report belongs to this submission",
                )
            Store.append_event(
                conn,
                "submission.rows_rejected",
                at=at,
                subject_type="submission",
                subject_id=sub_id,
                detail={"rows": total, **(detail or {})},
            )
            return total

    # -- notices: mail correlated to submissions ------------------------------------------
    def record_correlation(
        self,
        mail_id: int,
        submission_id: int | None,
        *,
        ambiguous: bool,
        reason: str,
        at: datetime,
    ) -> bool:
        """Record which submission a notice concerns (or that it is ambiguous / concerns
        none) on its mail record. Idempotent: returns False when that exact attribution
        was already recorded, and appends no second event."""
        doc = json.dumps(
            {"submission_id": submission_id, "ambiguous": ambiguous, "reason": reason},
            sort_keys=True,
        )
        with self._tx() as conn:
            row = conn.execute(
                "SELECT correlation FROM mail_messages WHERE id=?", (mail_id,)
            ).fetchone()
            if row is None:
                raise LedgerError(f"no mail record #{mail_id}")
            if row[0] == doc:
                return False
            conn.execute(
                "UPDATE mail_messages SET submission_id=?, correlation=? WHERE id=?",
                (submission_id, doc, mail_id),
            )
            Store.append_event(
                conn,
                "mail.correlated",
                at=at,
                subject_type="mail",
                subject_id=mail_id,
                detail={"submission_id": submission_id, "ambiguous": ambiguous, "reason": reason},
            )
            return True

    def notices_between(self, start: datetime, end: datetime) -> list[Notice]:
        """Every recorded mail received in ``[start, end]``, oldest first, with its
        classification and correlation (verdict evidence; never a body)."""
        rows = self.store.query(
            "SELECT id, received_at, from_addr, subject, message_id, rule, class, action,"
            " captures, submission_id, correlation, state FROM mail_messages"
            " WHERE received_at>=? AND received_at<=? ORDER BY received_at, id",
            (utcnow_iso(start), utcnow_iso(end)),
        )
        out = []
        for r in rows:
            received = _dt(r["received_at"])
            assert received is not None
            correlation = json.loads(r["correlation"]) if r["correlation"] else None
            out.append(
                Notice(
                    mail_id=r["id"],
                    received_at=received,
                    from_addr=r["from_addr"],
                    subject=r["subject"],
                    message_id=r["message_id"],
                    rule=r["rule"],
                    class_=r["class"],
                    action=r["action"],
                    captures=json.loads(r["captures"] or "{}"),
                    submission_id=r["submission_id"],
                    ambiguous=bool(correlation and correlation.get("ambiguous")),
                    correlated=correlation is not None,
                    state=r["state"],
                )
            )
        return out

    # -- the pool ------------------------------------------------------------------------
    def history(self, agreement: str) -> list[HistoryEntry]:
        """The agreement's uploaded submissions with a verdict; refs are read lazily."""
        rows = self.store.query(
            "SELECT id, action, verdict, uploaded_at FROM submissions"
            " WHERE agreement=? AND uploaded_at IS NOT NULL AND verdict IS NOT NULL"
            " ORDER BY uploaded_at, id",
            (agreement,),
        )
        return [
            HistoryEntry(
                r["id"],
                r["action"],
                r["verdict"],
                _dt(r["uploaded_at"]),
                # Only accepted submissions are ever read (derive_pool skips the rest).
                self._outcomes(r["id"]) if r["verdict"] in ACCEPTED else (),
            )
            for r in rows
        ]

    def stuck_marks(self, agreement: str) -> list[StuckMark]:
        return [
            StuckMark(
                r["unique_reference"],
                datetime.fromisoformat(r["since"]),
                r["evidence"],
                r["resolved_at"] is not None,
            )
            for r in self.store.query(
                "SELECT * FROM stuck_refs WHERE agreement=? ORDER BY since, unique_reference",
                (agreement,),
            )
        ]

    def pool(self, agreement: str) -> Pool:
        """What NHS England is believed to hold for ``agreement`` (see core.derive_pool)."""
        return derive_pool(self.history(agreement), self.stuck_marks(agreement))

    def pool_rows(self, pool: Pool) -> Iterator[tuple[str, RefRow | None]]:
        """Each pool member with the row it was added with, grouped by the adding upload."""
        by_sub: dict[int, list[str]] = {}
        for entry in pool.members.values():
            by_sub.setdefault(entry.submission_id, []).append(entry.ref)
        for sub_id, refs in by_sub.items():
            for batch in _batched(refs, PAGE):
                found = self.refs_of(sub_id, batch)
                for ref in batch:
                    yield ref, found.get(ref)

    def mark_stuck(
        self, agreement: str, refs: Iterable[str], evidence: str, *, at: datetime
    ) -> int:
        """Record that NHS still holds ``refs`` although it accepted their DELETE."""
        wanted = list(dict.fromkeys(refs))
        if not evidence.strip():
            raise InputError(
                "say what shows NHS still holds them (evidence)",
                hint="e.g. the returned file and row that still lists them",
            )
        pool = self.pool(agreement)
        members = [r for r in wanted if r in pool.members]
        if members:
            raise LedgerError(
                f"{len(members)} reference(s) are still in the believed pool, e.g. "
                f"{members[0]!r}; only a reference whose DELETE was accepted can be stuck",
                hint="plan a DELETE for them first (`seftpilot plan`)",
            )
        deleted = self._accepted_deletes(agreement, wanted)
        never = [r for r in wanted if r not in deleted]
        if never:
            raise LedgerError(
                f"{len(never)} reference(s) never had an accepted DELETE, e.g. {never[0]!r}",
                hint="check the reference, or that its DELETE reached a successful verdict",
            )
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO stuck_refs(agreement, unique_reference, since, evidence)"
                " VALUES (?,?,?,?) ON CONFLICT(agreement, unique_reference) DO UPDATE SET"
                " since=excluded.since, evidence=excluded.evidence, resolved_at=NULL",
                [(agreement, r, utcnow_iso(at), evidence) for r in wanted],
            )
            Store.append_event(
                conn,
                "pool.stuck_marked",
                at=at,
                subject_type="agreement",
                detail={"agreement": agreement, "refs": len(wanted), "evidence": evidence},
            )
        return len(wanted)

    def resolve_stuck(self, agreement: str, refs: Iterable[str], *, at: datetime, note: str) -> int:
        """NHS staff removed them (or they are wanted again): they stop being stuck."""
        with self._tx() as conn:
            total = 0
            for batch in _batched(refs, BATCH):
                cur = conn.executemany(
                    "UPDATE stuck_refs SET resolved_at=? WHERE agreement=? AND"
                    " unique_reference=? AND resolved_at IS NULL",
                    [(utcnow_iso(at), agreement, r) for r in batch],
                )
                total += cur.rowcount
            Store.append_event(
                conn,
                "pool.stuck_resolved",
                at=at,
                subject_type="agreement",
                detail={"agreement": agreement, "refs": total, "note": note},
            )
            return total

    def _accepted_deletes(self, agreement: str, refs: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        accepted = sorted(ACCEPTED)
        for batch in _batched(refs, 500):
            marks = ",".join("?" * len(batch))
            sql = (
                "SELECT r.unique_reference, max(s.id) FROM submission_refs r"  # noqa: S608
                " JOIN submissions s ON s.id = r.submission_id"
                " WHERE s.agreement=? AND s.action='DELETE' AND s.verdict IN (?,?)"
                " AND (r.outcome IS NULL OR r.outcome <> 'rejected')"
                f" AND r.unique_reference IN ({marks}) GROUP BY r.unique_reference"
            )
            for r in self.store.query(sql, (agreement, *accepted, *batch)):
                out[r[0]] = r[1]
        return out

    # -- campaigns -----------------------------------------------------------------------
    def get_campaign(self, campaign_id: int) -> Campaign:
        rows = self.store.query("SELECT * FROM campaigns WHERE id=?", (campaign_id,))
        if not rows:
            raise LedgerError(f"no campaign #{campaign_id}")
        return _campaign(rows[0])

    def list_campaigns(
        self, agreement: str | None = None, *, active: bool = False
    ) -> list[Campaign]:
        sql, params = "SELECT * FROM campaigns", []
        where = []
        if agreement is not None:
            where.append("agreement=?")
            params.append(agreement)
        if active:
            states = sorted(CAMPAIGN_ACTIVE)
            where.append(f"state IN ({','.join('?' * len(states))})")
            params.extend(states)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_campaign(r) for r in self.store.query(sql + " ORDER BY id", tuple(params))]

    def create_campaign(
        self,
        agreement: str,
        strategy: str,
        steps: Sequence[PlannedStep],
        *,
        at: datetime,
        pool: Pool,
        add_rows: Iterable[RefRow] = (),
        target_sha256: str | None = None,
    ) -> Campaign:
        """Record a plan: the campaign and one planned submission per step, with rows.

        DELETE rows are copied from the accepted ADD that put each reference in the pool
        (so a participant who left the study export can still be deleted); ADD rows come
        from ``add_rows``, the target streamed in the order it was planned from. All in
        one transaction: a target that no longer matches the plan records nothing.
        """
        if not steps:
            raise LedgerError("the plan has no steps: nothing to do")
        active = self.list_campaigns(agreement, active=True)
        if active:
            raise LedgerError(
                f"campaign #{active[0].id} for {agreement} is still {active[0].state}",
                hint="let it finish, or cancel it, before recording another plan",
            )
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO campaigns(agreement, strategy, state, created_at, updated_at,"
                " target_sha256, detail) VALUES (?,?,?,?,?,?,?)",
                (
                    agreement,
                    strategy,
                    str(CampaignState.PLANNED),
                    utcnow_iso(at),
                    utcnow_iso(at),
                    target_sha256,
                    json.dumps({"steps": len(steps)}),
                ),
            )
            campaign_id = int(cur.lastrowid or 0)
            add_ids: list[tuple[int, PlannedStep]] = []
            for step in steps:
                sub_id = self._insert_submission(
                    conn,
                    agreement,
                    step.action,
                    at=at,
                    state=SubmissionState.PLANNED,
                    campaign_id=campaign_id,
                    campaign_step=step.order,
                    day_offset=step.day_offset,
                )
                if step.action == "DELETE":
                    self._copy_pool_rows(conn, sub_id, step, pool)
                else:
                    add_ids.append((sub_id, step))
            self._insert_add_rows(conn, add_ids, add_rows)
            for step in steps:
                conn.execute(
                    "UPDATE submissions SET row_count=? WHERE campaign_id=? AND campaign_step=?",
                    (step.count, campaign_id, step.order),
                )
            Store.append_event(
                conn,
                "campaign.created",
                at=at,
                subject_type="campaign",
                subject_id=campaign_id,
                detail={
                    "agreement": agreement,
                    "strategy": strategy,
                    "steps": [
                        {
                            "order": s.order,
                            "action": s.action,
                            "rows": s.count,
                            "day_offset": s.day_offset,
                        }
                        for s in steps
                    ],
                },
            )
            row = conn.execute("SELECT * FROM campaigns WHERE id=?", (campaign_id,)).fetchone()
            return _campaign(row)

    @staticmethod
    def _copy_pool_rows(
        conn: sqlite3.Connection, sub_id: int, step: PlannedStep, pool: Pool
    ) -> None:
        params = []
        for row_no, ref in enumerate(step.refs, start=1):
            entry = pool.members.get(ref)
            if entry is None:
                raise LedgerError(
                    f"step {step.order} deletes {ref!r}, which is not in the believed pool",
                    hint="plan again from the current pool",
                )
            params.append((sub_id, row_no, entry.submission_id, ref))
        copied = 0
        for batch in _batched(params, BATCH):
            cur = conn.executemany(
                "INSERT INTO submission_refs(submission_id, unique_reference, nhs_number,"
                " row_no, row_data) SELECT ?, unique_reference, nhs_number, ?, row_data"
                " FROM submission_refs WHERE submission_id=? AND unique_reference=?",
                batch,
            )
            copied += cur.rowcount
        if copied != step.count:
            raise LedgerError(
                f"step {step.order}: {step.count - copied} pool reference(s) have no recorded "
                "row to delete with; nothing was recorded",
                hint="the ledger is inconsistent; keep a copy of it and report this",
            )

    def _insert_add_rows(
        self,
        conn: sqlite3.Connection,
        add_steps: list[tuple[int, PlannedStep]],
        add_rows: Iterable[RefRow],
    ) -> None:
        if not add_steps:
            return
        # The ADD refs are the target's order, minus the rows that need no ADD: match
        # them as a subsequence of the streamed target, so no giant lookup is built.
        plan_iter = iter(add_steps)
        sub_id, step = next(plan_iter)
        pos = 0
        pending: list[tuple[int, str, str | None, int, str | None]] = []
        done = False
        # The whole stream is read even after the last match, so a reader that checks
        # its source at the end (e.g. the file's hash) gets to run inside the transaction.
        for row in add_rows:
            if done or row.unique_reference != step.refs[pos]:
                continue
            pending.append((sub_id, row.unique_reference, row.nhs_number, pos + 1, _row_data(row)))
            pos += 1
            if pos == step.count:
                nxt = next(plan_iter, None)
                if nxt is None:
                    done = True
                else:
                    sub_id, step = nxt
                    pos = 0
            if len(pending) >= BATCH:
                self._flush(conn, pending)
        self._flush(conn, pending)
        if not done:
            raise InputError(
                f"the target no longer matches the plan: step {step.order} misses "
                f"{step.count - pos} row(s) from {step.refs[pos]!r} on; nothing was recorded",
                hint="the target file changed since it was read; run `seftpilot plan` again",
            )

    @staticmethod
    def _flush(
        conn: sqlite3.Connection, pending: list[tuple[int, str, str | None, int, str | None]]
    ) -> None:
        if pending:
            conn.executemany(
                "INSERT INTO submission_refs(submission_id, unique_reference, nhs_number,"
                " row_no, row_data) VALUES (?,?,?,?,?)",
                pending,
            )
            pending.clear()

    def campaign_steps(self, campaign_id: int) -> list[StepView]:
        """Each step's newest attempt (a retry replaces the attempt it retried)."""
        views: dict[int, StepView] = {}
        for r in self.store.query(
            "SELECT id, campaign_step, action, state FROM submissions WHERE campaign_id=?"
            " ORDER BY campaign_step, attempt",
            (campaign_id,),
        ):
            views[r["campaign_step"]] = StepView(
                r["campaign_step"], r["action"], r["state"], r["id"]
            )
        return [views[k] for k in sorted(views)]

    def _campaign_transition(
        self,
        conn: sqlite3.Connection,
        campaign: Campaign,
        event: CampaignEvent,
        *,
        at: datetime,
        detail: Mapping[str, Any] | None = None,
    ) -> Campaign:
        new = next_state("campaign", campaign.state, event)
        cur = conn.execute(
            "UPDATE campaigns SET state=?, updated_at=?, version=version+1"
            " WHERE id=? AND state=? AND version=?",
            (str(new), utcnow_iso(at), campaign.id, str(campaign.state), campaign.version),
        )
        if cur.rowcount != 1:
            raise ClaimLost(
                f"campaign #{campaign.id} changed under us (expected {campaign.state}, "
                f"version {campaign.version}); nothing was changed",
                hint="another worker handled it; read it again before acting",
            )
        Store.append_event(
            conn,
            f"campaign.{event}",
            at=at,
            subject_type="campaign",
            subject_id=campaign.id,
            detail={"from": str(campaign.state), "to": str(new), **(detail or {})},
        )
        return _campaign(
            conn.execute("SELECT * FROM campaigns WHERE id=?", (campaign.id,)).fetchone()
        )

    def transition_campaign(
        self,
        campaign: Campaign,
        event: CampaignEvent,
        *,
        at: datetime,
        detail: Mapping[str, Any] | None = None,
    ) -> Campaign:
        with self._tx() as conn:
            return self._campaign_transition(conn, campaign, event, at=at, detail=detail)

    def cancel_campaign(self, campaign: Campaign, *, at: datetime, reason: str = "") -> Campaign:
        """Cancel the campaign and its steps that have not gone yet."""
        with self._tx() as conn:
            out = self._campaign_transition(
                conn, campaign, CampaignEvent.CANCEL, at=at, detail={"reason": reason}
            )
            for r in conn.execute(
                "SELECT * FROM submissions WHERE campaign_id=? AND state IN (?,?)",
                (campaign.id, str(SubmissionState.PLANNED), str(SubmissionState.DUE)),
            ).fetchall():
                self._transition(
                    conn,
                    _submission(r),
                    SubmissionEvent.CANCEL,
                    at=at,
                    detail={"reason": f"campaign #{campaign.id} cancelled"},
                )
            return out

    def advance_campaign(
        self, campaign_id: int, *, at: datetime, due_on: date | None = None
    ) -> tuple[Campaign, list[Submission]]:
        """Move a campaign on as far as its steps allow, in one transaction.

        Starts a planned campaign, completes, blocks or unblocks it as core.ledger says,
        and makes the next step due (``due_on``: the NHS day the scheduler has in mind).
        Returns the campaign and the submissions made due.
        """
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM campaigns WHERE id=?", (campaign_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no campaign #{campaign_id}")
            campaign = _campaign(row)
            if campaign.state == CampaignState.PLANNED:
                campaign = self._campaign_transition(conn, campaign, CampaignEvent.START, at=at)
            steps = self.campaign_steps(campaign_id)
            event = campaign_event(campaign.state, steps)
            if event is not None:
                campaign = self._campaign_transition(conn, campaign, event, at=at)
            made_due = []
            for view in due_steps(campaign.state, steps):
                sub = self._get(conn, view.submission_id)
                fields: dict[str, Any] = {"due_on": due_on.isoformat()} if due_on else {}
                made_due.append(
                    self._transition(
                        conn,
                        sub,
                        SubmissionEvent.MAKE_DUE,
                        at=at,
                        detail={"campaign_id": campaign_id},
                        **fields,
                    )
                )
            return campaign, made_due
