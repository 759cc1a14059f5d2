"""The mail intake's records in the ledger: checkpoints, messages, listening coverage.

Owns the SQL over ``mail_checkpoints``, ``mail_messages`` and ``listening`` (schema in
``adapters/store.py``, migrations 1, 3 and 7):

- a checkpoint per (account, folder, UIDVALIDITY): the highest UID dealt with;
- a row per message seen, with a second key (``dedupe_key``: the Message-ID, else a hash of
  Date+From+Subject+size) so a message renumbered by a UIDVALIDITY change is recognised;
- each message's state: ``received`` -> ``handled`` | ``failed`` (with ``attempts``);
- whether a handled message was tidied on the server (``tidied_at``: flagged or moved, or
  nothing to do), so a tidy-up cut short by a crash or a drop is done on the next pass;
- listening coverage: a timestamp per successful poll, IDLE cycle or catch-up, and
  ``coverage()`` that reports the largest gap in a window (verdicts depend on it).

Must not talk to the mail server, parse mail or decide what a message means.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from seftpilot.adapters.store import Store, utcnow_iso

ListeningKind = Literal["poll", "idle", "catchup"]
MailState = Literal["received", "handled", "failed"]


def dedupe_key(
    message_id: str | None,
    *,
    date: datetime | str | None,
    from_addr: str | None,
    subject: str | None,
    size: int | None,
) -> str:
    """The message's second key: its Message-ID, or a hash when it has none."""
    mid = (message_id or "").strip()
    if mid:
        return f"mid:{mid}"
    when = date.isoformat() if isinstance(date, datetime) else (date or "")
    blob = "\x1f".join([when, (from_addr or "").lower(), subject or "", str(size or 0)])
    return "hash:" + hashlib.sha256(blob.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class MailRecord:
    """One row of ``mail_messages``."""

    id: int
    account: str
    folder: str
    uidvalidity: int
    uid: int
    message_id: str | None
    dedupe_key: str | None
    state: MailState
    attempts: int
    rule: str | None
    class_: str | None
    action: str | None
    captures: Mapping[str, Any]
    received_at: datetime
    last_error: str | None
    tidied_at: datetime | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> MailRecord:
        return cls(
            id=int(row["id"]),
            account=row["account"],
            folder=row["folder"],
            uidvalidity=int(row["uidvalidity"]),
            uid=int(row["uid"]),
            message_id=row["message_id"],
            dedupe_key=row["dedupe_key"],
            state=row["state"],
            attempts=int(row["attempts"]),
            rule=row["rule"],
            class_=row["class"],
            action=row["action"],
            captures=json.loads(row["captures"] or "{}"),
            received_at=_parse(row["received_at"]),
            last_error=row["last_error"],
            tidied_at=_parse(row["tidied_at"]) if row["tidied_at"] else None,
        )


_INSERT_RECEIVED = (
    "INSERT INTO mail_messages(account, folder, uidvalidity, uid, message_id, dedupe_key, "
    "received_at, sent_at, from_addr, subject, size, rule, class, action, captures, defects, "
    "state, attempts, fetched_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'received',0,?) "
    "ON CONFLICT(account, folder, uidvalidity, uid) DO NOTHING"
)


@dataclass(frozen=True)
class NewMail:
    """A message about to be recorded as ``received``: where it is and what it was
    classified as."""

    account: str
    folder: str
    uidvalidity: int
    uid: int
    key: str
    message_id: str | None
    received_at: datetime
    sent_at: datetime | None
    from_addr: str | None
    subject: str | None
    size: int | None
    rule: str | None
    class_: str | None
    action: str | None
    captures: Mapping[str, Any]
    defects: Sequence[str]

    def row(self) -> tuple[Any, ...]:
        return (
            self.account,
            self.folder,
            self.uidvalidity,
            self.uid,
            self.message_id or None,
            self.key,
            utcnow_iso(self.received_at),
            utcnow_iso(self.sent_at) if self.sent_at else None,
            self.from_addr,
            self.subject,
            self.size,
            self.rule,
            self.class_,
            self.action,
            json.dumps(dict(self.captures), default=str) if self.captures else "{}",
            json.dumps(list(self.defects)) if self.defects else "[]",
        )

    def record(self, record_id: int) -> MailRecord:
        return MailRecord(
            id=record_id,
            account=self.account,
            folder=self.folder,
            uidvalidity=self.uidvalidity,
            uid=self.uid,
            message_id=self.message_id or None,
            dedupe_key=self.key,
            state="received",
            attempts=0,
            rule=self.rule,
            class_=self.class_,
            action=self.action,
            captures=dict(self.captures),
            received_at=self.received_at,
            last_error=None,
        )


@dataclass(frozen=True)
class Coverage:
    """Proof of listening over [start, end]: the cycle timestamps and the largest gap
    (counting from ``start`` to the first cycle and from the last one to ``end``)."""

    start: datetime
    end: datetime
    timestamps: tuple[datetime, ...]
    largest_gap: timedelta
    gap_start: datetime
    gap_end: datetime

    def covered(self, max_gap: timedelta) -> bool:
        return self.largest_gap <= max_gap


class MailStore:
    """Repository over ``Store`` for the mail tables."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- checkpoints -----------------------------------------------------------
    def checkpoint(self, account: str, folder: str, uidvalidity: int) -> int | None:
        rows = self.store.query(
            "SELECT last_uid FROM mail_checkpoints WHERE account=? AND folder=? AND uidvalidity=?",
            (account, folder, uidvalidity),
        )
        return int(rows[0]["last_uid"]) if rows else None

    def uidvalidities(self, account: str, folder: str) -> list[int]:
        """Every UIDVALIDITY this folder was read under, oldest checkpoint first."""
        rows = self.store.query(
            "SELECT uidvalidity FROM mail_checkpoints WHERE account=? AND folder=? "
            "ORDER BY updated_at",
            (account, folder),
        )
        return [int(r["uidvalidity"]) for r in rows]

    def advance(self, account: str, folder: str, uidvalidity: int, uid: int, now: datetime) -> None:
        """Move the checkpoint forward to ``uid`` (never backwards)."""
        with self.store.transaction() as conn:
            self._advance(
                conn, account=account, folder=folder, uidvalidity=uidvalidity, uid=uid, now=now
            )

    @staticmethod
    def _advance(
        conn: sqlite3.Connection,
        *,
        account: str,
        folder: str,
        uidvalidity: int,
        uid: int,
        now: datetime,
    ) -> None:
        conn.execute(
            "INSERT INTO mail_checkpoints(account, folder, uidvalidity, last_uid, updated_at) "
            "VALUES (?,?,?,?,?) ON CONFLICT(account, folder, uidvalidity) DO UPDATE SET "
            "last_uid = max(last_uid, excluded.last_uid), updated_at = excluded.updated_at",
            (account, folder, uidvalidity, uid, utcnow_iso(now)),
        )

    def start_uidvalidity(
        self, account: str, folder: str, uidvalidity: int, now: datetime
    ) -> list[int]:
        """Open a checkpoint at 0 for a new UIDVALIDITY; returns the older ones (an event
        records the change, so the operator can see the mailbox was renumbered)."""
        previous = self.uidvalidities(account, folder)
        with self.store.transaction() as conn:
            self._advance(
                conn, account=account, folder=folder, uidvalidity=uidvalidity, uid=0, now=now
            )
            if previous:
                Store.append_event(
                    conn,
                    "mail.uidvalidity_changed",
                    at=now,
                    subject_type="mailbox",
                    detail={
                        "account": account,
                        "folder": folder,
                        "previous": previous,
                        "uidvalidity": uidvalidity,
                    },
                )
        return previous

    # -- messages --------------------------------------------------------------
    def get(self, account: str, folder: str, uidvalidity: int, uid: int) -> MailRecord | None:
        rows = self.store.query(
            "SELECT * FROM mail_messages WHERE account=? AND folder=? AND uidvalidity=? AND uid=?",
            (account, folder, uidvalidity, uid),
        )
        return MailRecord.from_row(rows[0]) if rows else None

    def by_id(self, record_id: int) -> MailRecord:
        rows = self.store.query("SELECT * FROM mail_messages WHERE id=?", (record_id,))
        if not rows:
            raise KeyError(record_id)
        return MailRecord.from_row(rows[0])

    def seen_elsewhere(
        self, account: str, folder: str, key: str, uidvalidity: int
    ) -> MailRecord | None:
        """A record of the same message under another UIDVALIDITY of this folder, the
        handled one first."""
        rows = self.store.query(
            "SELECT * FROM mail_messages WHERE account=? AND folder=? AND dedupe_key=? "
            "AND uidvalidity<>? ORDER BY state='handled' DESC, id DESC LIMIT 1",
            (account, folder, key, uidvalidity),
        )
        return MailRecord.from_row(rows[0]) if rows else None

    def record_received(
        self,
        *,
        account: str,
        folder: str,
        uidvalidity: int,
        uid: int,
        key: str,
        message_id: str | None,
        received_at: datetime,
        sent_at: datetime | None,
        from_addr: str | None,
        subject: str | None,
        size: int | None,
        rule: str | None,
        class_: str | None,
        action: str | None,
        captures: Mapping[str, Any],
        defects: Sequence[str],
        now: datetime,
    ) -> MailRecord:
        """Insert the message as ``received`` (or return the existing row for this UID:
        a crash between recording and handling must not create a second row)."""
        (record,) = self.record_received_many(
            [
                NewMail(
                    account=account,
                    folder=folder,
                    uidvalidity=uidvalidity,
                    uid=uid,
                    key=key,
                    message_id=message_id,
                    received_at=received_at,
                    sent_at=sent_at,
                    from_addr=from_addr,
                    subject=subject,
                    size=size,
                    rule=rule,
                    class_=class_,
                    action=action,
                    captures=captures,
                    defects=defects,
                )
            ],
            now,
        )
        return record

    def record_received_many(self, mails: Sequence[NewMail], now: datetime) -> list[MailRecord]:
        """``record_received`` for several messages in one transaction, in order.

        The intake records a whole fetch batch before handling any of it: one commit
        instead of one per message (see benchmarks/RESULTS.md), and still every row is in
        the ledger before its ``on_message`` runs.
        """
        if not mails:
            return []
        fetched_at = utcnow_iso(now)
        out: list[MailRecord] = []
        with self.store.transaction() as conn:
            for m in mails:
                cur = conn.execute(_INSERT_RECEIVED, (*m.row(), fetched_at))
                if cur.rowcount == 1:
                    # The row is the record of arrival and classification; no separate
                    # event (it would double the writes of a large catch-up).
                    out.append(m.record(int(cur.lastrowid or 0)))
                    continue
                # Already recorded (a crash came between recording and the checkpoint).
                row = conn.execute(
                    "SELECT * FROM mail_messages WHERE account=? AND folder=? "
                    "AND uidvalidity=? AND uid=?",
                    (m.account, m.folder, m.uidvalidity, m.uid),
                ).fetchone()
                out.append(MailRecord.from_row(row))
        return out

    def mark_handled(
        self,
        record: MailRecord,
        now: datetime,
        *,
        advance_to: int | None = None,
        tidied: bool = False,
    ) -> None:
        """``handled`` (and the checkpoint moved to ``advance_to``) in one transaction.

        ``tidied`` when there is nothing to do on the server afterwards
        (``after_handling = none``); otherwise ``mark_tidied`` follows the tidy-up, and
        until then ``untidied`` lists the message.
        """
        stamp = utcnow_iso(now)
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE mail_messages SET state='handled', attempts=attempts+1, "
                "handled_at=?, tidied_at=?, last_error=NULL WHERE id=?",
                (stamp, stamp if tidied else None, record.id),
            )
            # No event: the row's state and handled_at say it, and an event per message
            # would double the writes of a large catch-up (see benchmarks/RESULTS.md).
            if advance_to is not None:
                self._advance(
                    conn,
                    account=record.account,
                    folder=record.folder,
                    uidvalidity=record.uidvalidity,
                    uid=advance_to,
                    now=now,
                )

    def mark_tidied(self, record_ids: Sequence[int], now: datetime) -> None:
        """The handled messages ``record_ids`` were flagged/moved on the server (or the
        server refused for good: they are not tried again either way)."""
        if not record_ids:
            return
        stamp = utcnow_iso(now)
        with self.store.transaction() as conn:
            conn.executemany(
                "UPDATE mail_messages SET tidied_at=? WHERE id=? AND tidied_at IS NULL",
                [(stamp, record_id) for record_id in record_ids],
            )

    def untidied(self, account: str, folder: str, uidvalidity: int) -> list[MailRecord]:
        """Handled messages of this UIDVALIDITY whose flag/move never happened (the process
        died or the connection dropped between ``mark_handled`` and the tidy-up), by UID.
        Answered from a partial index that holds only these rows."""
        rows = self.store.query(
            "SELECT * FROM mail_messages WHERE account=? AND folder=? AND uidvalidity=? "
            "AND state='handled' AND tidied_at IS NULL ORDER BY uid",
            (account, folder, uidvalidity),
        )
        return [MailRecord.from_row(r) for r in rows]

    def mark_failed(
        self,
        record: MailRecord,
        error: str,
        now: datetime,
        *,
        advance_to: int | None = None,
        gave_up: bool = False,
    ) -> int:
        """``failed`` with attempts+1 (and the checkpoint pushed past it); returns attempts."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE mail_messages SET state='failed', attempts=attempts+1, last_error=? "
                "WHERE id=?",
                (error[:2000], record.id),
            )
            attempts = int(
                conn.execute(
                    "SELECT attempts FROM mail_messages WHERE id=?", (record.id,)
                ).fetchone()[0]
            )
            Store.append_event(
                conn,
                "mail.abandoned" if gave_up else "mail.failed",
                at=now,
                subject_type="mail",
                subject_id=record.id,
                detail={"attempts": attempts, "error": error[:500]},
            )
            if advance_to is not None:
                self._advance(
                    conn,
                    account=record.account,
                    folder=record.folder,
                    uidvalidity=record.uidvalidity,
                    uid=advance_to,
                    now=now,
                )
        return attempts

    def retryable(
        self, account: str, folder: str, uidvalidity: int, max_attempts: int
    ) -> list[MailRecord]:
        """Failed (or interrupted) messages of this UIDVALIDITY still worth another try."""
        rows = self.store.query(
            "SELECT * FROM mail_messages WHERE account=? AND folder=? AND uidvalidity=? "
            "AND state IN ('failed','received') AND attempts < ? ORDER BY uid",
            (account, folder, uidvalidity, max_attempts),
        )
        return [MailRecord.from_row(r) for r in rows]

    def abandoned(self, account: str | None = None) -> list[MailRecord]:
        """Failed messages whose retries are used up (the monitor alerts on these)."""
        rows = self.store.query(
            "SELECT m.* FROM mail_messages m WHERE m.state='failed' AND (? IS NULL OR "
            "m.account=?) AND EXISTS (SELECT 1 FROM events e WHERE e.kind='mail.abandoned' "
            "AND e.subject_type='mail' AND e.subject_id=m.id) ORDER BY m.id",
            (account, account),
        )
        return [MailRecord.from_row(r) for r in rows]

    def messages(self, account: str, folder: str | None = None) -> list[MailRecord]:
        rows = self.store.query(
            "SELECT * FROM mail_messages WHERE account=? AND (? IS NULL OR folder=?) ORDER BY id",
            (account, folder, folder),
        )
        return [MailRecord.from_row(r) for r in rows]

    # -- listening -------------------------------------------------------------
    def record_listening(
        self, account: str, folder: str, at: datetime, kind: ListeningKind
    ) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO listening(account, folder, at, kind) VALUES (?,?,?,?)",
                (account, folder, utcnow_iso(at), kind),
            )

    def coverage(self, account: str, folder: str, start: datetime, end: datetime) -> Coverage:
        """Listening cycles in [start, end] and the largest gap between them."""
        if end < start:
            raise ValueError("coverage window ends before it starts")
        rows = self.store.query(
            "SELECT at FROM listening WHERE account=? AND folder=? AND at>=? AND at<=? ORDER BY at",
            (account, folder, utcnow_iso(start), utcnow_iso(end)),
        )
        stamps = tuple(_parse(r["at"]) for r in rows)
        points = [start.astimezone(UTC), *stamps, end.astimezone(UTC)]
        gap, gap_start, gap_end = timedelta(0), points[0], points[0]
        for before, after in itertools.pairwise(points):
            if after - before > gap:
                gap, gap_start, gap_end = after - before, before, after
        return Coverage(
            start=start,
            end=end,
            timestamps=stamps,
            largest_gap=gap,
            gap_start=gap_start,
            gap_end=gap_end,
        )


def _parse(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)
