"""The ledger's storage: one SQLite database in the state directory.

Owns the connection (WAL, foreign keys, busy timeout), the schema and its migrations
(``PRAGMA user_version``), transactions, the append-only event log and the safety of the
files (directory 0700, database 0600). Domain queries live in repositories built on
``Store`` (see ``adapters/ledger_store.py`` and friends); this module must not decide
anything about submissions, mail or deliveries.

Migrations are append-only: never edit a shipped one, add a new entry at the end of
``MIGRATIONS``. Each runs in one transaction together with the version bump.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seftpilot.errors import StateDirError

DB_NAME = "seftpilot.sqlite3"

MIGRATIONS: list[str] = [
    # 1: the ledger's first shape.
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,                    -- ISO 8601 UTC
        kind TEXT NOT NULL,                  -- e.g. submission.uploaded, mail.classified
        subject_type TEXT,                   -- submission | campaign | mail | delivery | ...
        subject_id INTEGER,
        detail TEXT NOT NULL DEFAULT '{}'    -- JSON; never secrets
    );
    CREATE INDEX events_subject ON events(subject_type, subject_id);
    CREATE TRIGGER events_append_only_u BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_append_only_d BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

    CREATE TABLE campaigns (
        id INTEGER PRIMARY KEY,
        agreement TEXT NOT NULL,
        strategy TEXT NOT NULL,              -- diff | replace
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        target_sha256 TEXT
    );

    CREATE TABLE submissions (
        id INTEGER PRIMARY KEY,
        agreement TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('ADD', 'DELETE')),
        state TEXT NOT NULL,
        campaign_id INTEGER REFERENCES campaigns(id),
        campaign_step INTEGER,
        attempt INTEGER NOT NULL DEFAULT 1,
        retry_of INTEGER REFERENCES submissions(id),
        file_name TEXT,
        file_sha256 TEXT,
        row_count INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        due_on TEXT,                          -- NHS day (YYYY-MM-DD, Europe/London)
        nhs_day TEXT,                         -- the NHS day it was uploaded on
        uploaded_at TEXT,
        evidence_deadline TEXT,
        verdict TEXT,
        verdict_at TEXT,
        verdict_detail TEXT NOT NULL DEFAULT '{}',
        version INTEGER NOT NULL DEFAULT 0    -- bumped by every claim/transition
    );
    CREATE INDEX submissions_agreement ON submissions(agreement, state);
    -- One upload per agreement per NHS day, enforced by the database itself.
    CREATE UNIQUE INDEX submissions_one_a_day ON submissions(agreement, nhs_day)
        WHERE nhs_day IS NOT NULL;

    CREATE TABLE submission_refs (
        submission_id INTEGER NOT NULL REFERENCES submissions(id),
        unique_reference TEXT NOT NULL,
        nhs_number TEXT,
        outcome TEXT,                         -- NULL until known; 'rejected' for failing rows
        PRIMARY KEY (submission_id, unique_reference)
    ) WITHOUT ROWID;
    CREATE INDEX submission_refs_ref ON submission_refs(unique_reference);

    CREATE TABLE stuck_refs (
        agreement TEXT NOT NULL,
        unique_reference TEXT NOT NULL,
        since TEXT NOT NULL,
        evidence TEXT NOT NULL,
        resolved_at TEXT,
        PRIMARY KEY (agreement, unique_reference)
    ) WITHOUT ROWID;

    CREATE TABLE mail_checkpoints (
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        last_uid INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (account, folder, uidvalidity)
    ) WITHOUT ROWID;

    CREATE TABLE mail_messages (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        message_id TEXT,
        received_at TEXT NOT NULL,
        sent_at TEXT,
        from_addr TEXT,
        subject TEXT,
        rule TEXT,
        class TEXT,
        action TEXT,
        captures TEXT NOT NULL DEFAULT '{}',
        defects TEXT NOT NULL DEFAULT '[]',
        state TEXT NOT NULL DEFAULT 'received',   -- received | handled | failed
        attempts INTEGER NOT NULL DEFAULT 0,
        submission_id INTEGER REFERENCES submissions(id),
        UNIQUE (account, folder, uidvalidity, uid)
    );
    CREATE INDEX mail_messages_msgid ON mail_messages(account, message_id);
    CREATE INDEX mail_messages_state ON mail_messages(state);

    CREATE TABLE listening (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        at TEXT NOT NULL,                      -- a completed poll or IDLE cycle
        kind TEXT NOT NULL                     -- poll | idle | catchup
    );
    CREATE INDEX listening_at ON listening(account, folder, at);
    """,
    # 2: ledger rows and campaign steps (adapters/ledger_store.py). A DELETE file must
    # carry each participant's row (date of birth is mandatory on every row) even when the
    # participant has left the study export, so each submitted row is kept as it was sent.
    """
    ALTER TABLE submission_refs ADD COLUMN row_no INTEGER;
    ALTER TABLE submission_refs ADD COLUMN row_data TEXT;   -- JSON field: value; identifying
    CREATE INDEX submission_refs_row ON submission_refs(submission_id, row_no);
    ALTER TABLE submissions ADD COLUMN day_offset INTEGER;  -- a campaign step's earliest day
    CREATE INDEX submissions_campaign ON submissions(campaign_id, campaign_step, attempt);
    ALTER TABLE campaigns ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE campaigns ADD COLUMN updated_at TEXT;
    ALTER TABLE campaigns ADD COLUMN detail TEXT NOT NULL DEFAULT '{}';
    CREATE INDEX campaigns_agreement ON campaigns(agreement, state);
    """,
    # 3: mail intake (adapters/mail_store.py). dedupe_key is the Message-ID, or a hash of
    # Date+From+Subject+size when there is none: the second key that survives a
    # UIDVALIDITY change. last_error says why handling failed (no secrets).
    """
    ALTER TABLE mail_messages ADD COLUMN dedupe_key TEXT;
    ALTER TABLE mail_messages ADD COLUMN size INTEGER;
    ALTER TABLE mail_messages ADD COLUMN fetched_at TEXT;
    ALTER TABLE mail_messages ADD COLUMN handled_at TEXT;
    ALTER TABLE mail_messages ADD COLUMN last_error TEXT;
    CREATE INDEX mail_messages_key ON mail_messages(account, folder, dedupe_key);
    """,
    # 4: monitoring (service/alerts.py, service/monitor.py). An alert is one row per key
    # (dedupe); ``pending`` says which mail is owed (raised | reminder | cleared). A canary
    # row is claimed by its ``slot`` (daily:DAY, window:SUBMISSION) before it is sent. A
    # digest row is claimed per NHS day before it is sent: never two for one day.
    """
    CREATE TABLE alerts (
        key TEXT PRIMARY KEY,
        severity TEXT NOT NULL,
        subject TEXT NOT NULL,               -- sanitised: one line, no control characters
        text TEXT NOT NULL,
        state TEXT NOT NULL,                 -- open | cleared
        first_raised_at TEXT NOT NULL,
        last_seen_at TEXT NOT NULL,          -- last raise_alert for this key
        last_sent_at TEXT,
        sent_count INTEGER NOT NULL DEFAULT 0,
        pending TEXT,                        -- raised | reminder | cleared | NULL
        cleared_at TEXT,
        clear_text TEXT,
        version INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX alerts_pending ON alerts(pending);
    CREATE TABLE canaries (
        token TEXT PRIMARY KEY,
        slot TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL,
        created_at TEXT NOT NULL,
        sent_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        arrived_at TEXT,
        mail_id INTEGER REFERENCES mail_messages(id),
        lost_at TEXT
    );
    CREATE INDEX canaries_sent ON canaries(sent_at);
    CREATE TABLE heartbeat_pings (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        signal TEXT NOT NULL,                -- success | fail
        run_id TEXT NOT NULL,
        ok INTEGER NOT NULL,                 -- the monitor answered 2xx
        listening_at TEXT,                   -- the listening cycle reported (success)
        reason TEXT
    );
    CREATE TABLE digests (
        day TEXT PRIMARY KEY,                -- NHS day (Europe/London)
        claimed_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 1,
        sent_at TEXT,
        message_id TEXT,
        error TEXT
    );
    """,
    # 5: submission notices (service/submission_mail.py). ``correlation`` records how a
    # failure/success notice was attributed (JSON: submission_id, ambiguous, reason), so
    # an ambiguous notice is remembered as such instead of looking merely unhandled.
    """
    ALTER TABLE mail_messages ADD COLUMN correlation TEXT;
    CREATE INDEX mail_messages_received ON mail_messages(received_at);
    CREATE INDEX mail_messages_submission ON mail_messages(submission_id);
    """,
    # 6: deliveries to the partner (adapters/delivery_store.py, service/forward.py). A
    # delivery's ``state`` is its last completed step; ``step`` is the step claimed and in
    # hand (a crash leaves it set). ``delivery_files`` is the manifest; ``remote_files_seen``
    # what was collected from SEFT's download area (name + size + mtime), so a file is
    # collected once; ``delivery_triggers`` makes the new-data mail handler idempotent. At
    # most one delivery per agreement waits for its files. No passphrase is ever stored:
    # ``passphrase_fingerprint`` names it.
    """
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        agreement TEXT NOT NULL,
        state TEXT NOT NULL,
        step TEXT,                            -- claimed step in hand; NULL when none
        step_at TEXT,
        source TEXT NOT NULL,                 -- sftp | folder | dir
        source_path TEXT,                     -- the folder of `forward --from DIR`
        origin TEXT NOT NULL,                 -- mail | cli | folder
        nhs_day TEXT NOT NULL,                -- NHS day it started (the name's {date})
        work_dir TEXT NOT NULL,
        keep INTEGER NOT NULL DEFAULT 0,      -- `forward --keep`: never cleaned
        observed TEXT,                        -- JSON: last look at the drop folder
        quiet_since TEXT,
        file_count INTEGER,
        total_bytes INTEGER,
        manifest TEXT,                        -- JSON seftpilot-manifest/1
        archive_name TEXT,
        archive_parts TEXT,                   -- JSON [{local, name, size, sha256}]
        passphrase_fingerprint TEXT,
        remote_name TEXT,
        staged_at TEXT,                       -- every part complete under its staging name
        uploaded_at TEXT,
        passphrase_message_id TEXT,
        passphrase_sent_at TEXT,
        announce_message_id TEXT,
        clean_after TEXT,
        cleaned_at TEXT,
        held_from TEXT,                       -- the state a failed/blocked delivery was in
        attempts INTEGER NOT NULL DEFAULT 0,
        retry_at TEXT,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX deliveries_agreement ON deliveries(agreement, state);
    CREATE UNIQUE INDEX deliveries_one_waiting ON deliveries(agreement) WHERE state = 'waiting';
    CREATE TABLE delivery_files (
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        source TEXT NOT NULL,                 -- remote path or local path it came from
        remote_mtime INTEGER,
        deleted_at TEXT,
        PRIMARY KEY (delivery_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE remote_files_seen (
        agreement TEXT NOT NULL,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime INTEGER NOT NULL,
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        seen_at TEXT NOT NULL,
        PRIMARY KEY (agreement, name, size, mtime)
    ) WITHOUT ROWID;
    CREATE TABLE delivery_triggers (
        mail_id INTEGER PRIMARY KEY REFERENCES mail_messages(id),
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        at TEXT NOT NULL
    );
    """,
    # 7: the mail intake's tidy-up (flag/move after handling) is resumable
    # (adapters/mail_store.py). ``tidied_at`` is set once the server was told, or when
    # there is nothing to tell it; a handled row without it was interrupted between the
    # two steps and is tidied on the next catch-up. Rows handled before this upgrade
    # count as tidied, so an upgrade never re-touches history. The partial index holds
    # only the interrupted ones (usually none), so looking for them costs nothing.
    """
    ALTER TABLE mail_messages ADD COLUMN tidied_at TEXT;
    UPDATE mail_messages SET tidied_at = COALESCE(handled_at, received_at)
        WHERE state = 'handled';
    CREATE INDEX mail_messages_untidied ON mail_messages(account, folder, uidvalidity, uid)
        WHERE state = 'handled' AND tidied_at IS NULL;
    """,
]


def utcnow_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")


class Store:
    """One SQLite database. Thread-safe through one lock around one connection."""

    def __init__(self, state_dir: Path, *, name: str = DB_NAME) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / name
        self._lock = threading.RLock()
        self._ensure_dir()
        self._conn = self._connect()
        self.migrate()

    # -- files ---------------------------------------------------------------
    def _ensure_dir(self) -> None:
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.state_dir, 0o700)
            if not self.path.exists():
                # Create the file 0600 before SQLite does (it would honour the umask).
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
        except OSError as exc:
            raise StateDirError(
                f"cannot use state directory {self.state_dir}: {exc.strerror or exc}",
                hint="check that it exists, is writable by this user and the disk is not full",
            ) from None

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise _state_error(self.path, exc) from None
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.chmod(side, 0o600)
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema --------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        with self._lock:
            current = self.version
            if current > len(MIGRATIONS):
                raise StateDirError(
                    f"{self.path} has schema version {current}, newer than this seftpilot "
                    f"({len(MIGRATIONS)})",
                    hint="upgrade seftpilot; never downgrade against a newer ledger",
                )
            for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                # executescript commits first, so run the statements inside our own
                # transaction with the version bump to make each migration atomic.
                with self.transaction() as conn:
                    for statement in _split_sql(script):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")

    # -- transactions --------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolls back on any exception."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _state_error(self.path, exc) from None
            try:
                yield conn
            except sqlite3.OperationalError as exc:
                # Disk full, read-only, I/O error: the state directory's fault, said so.
                # (IntegrityError and friends stay as they are: repositories catch them.)
                _rollback(conn)
                raise _state_error(self.path, exc) from None
            except BaseException:
                _rollback(conn)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise _state_error(self.path, exc) from None

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, params))
            except sqlite3.Error as exc:
                raise _state_error(self.path, exc) from None

    # -- events --------------------------------------------------------------
    @staticmethod
    def append_event(
        conn: sqlite3.Connection,
        kind: str,
        *,
        at: datetime | None = None,
        subject_type: str | None = None,
        subject_id: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Append one event inside the caller's transaction. ``detail`` must hold no secret."""
        cur = conn.execute(
            "INSERT INTO events(at, kind, subject_type, subject_id, detail) VALUES (?,?,?,?,?)",
            (utcnow_iso(at), kind, subject_type, subject_id, json.dumps(detail or {}, default=str)),
        )
        return int(cur.lastrowid or 0)

    def events(
        self, subject_type: str | None = None, subject_id: int | None = None
    ) -> list[dict[str, Any]]:
        if subject_type is None:
            rows = self.query("SELECT * FROM events ORDER BY id")
        else:
            rows = self.query(
                "SELECT * FROM events WHERE subject_type=? AND subject_id IS ? ORDER BY id",
                (subject_type, subject_id),
            )
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open. SQLite ends it by itself on some errors
    (SQLITE_FULL, SQLITE_IOERR); a ROLLBACK then would fail and hide the real cause."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements, keeping CREATE TRIGGER bodies whole."""
    statements: list[str] = []
    buf: list[str] = []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped.strip():
            continue
        buf.append(stripped)
        joined = "\n".join(buf)
        if joined.rstrip().endswith(";") and sqlite3.complete_statement(joined):
            statements.append(joined)
            buf = []
    if buf and "".join(buf).strip():
        statements.append("\n".join(buf))
    return statements


def _state_error(path: Path, exc: sqlite3.Error) -> StateDirError:
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        hint = "the state directory or database is read-only; make it writable by this user"
    elif "full" in text:
        hint = "the disk holding the state directory is full; free space, then run again"
    elif "locked" in text or "busy" in text:
        hint = "another process holds the database; is a second `seftpilot watch` running?"
    else:
        hint = "check the state directory; the ledger was not changed"
    return StateDirError(f"ledger {path}: {text}", hint=hint)
