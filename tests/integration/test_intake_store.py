"""The mail store on a real SQLite ledger, and the mailbox lock on real files."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from seftpilot.adapters.locks import MailboxLock, lock_path
from seftpilot.adapters.mail_store import MailStore, NewMail, dedupe_key
from seftpilot.adapters.store import DB_NAME, MIGRATIONS, Store, _split_sql
from seftpilot.errors import AlreadyRunning

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ACCOUNT, FOLDER = "study@example.org@imap.example.org", "INBOX"


@pytest.fixture
def mail(tmp_path: Path) -> Iterator[MailStore]:
    with Store(tmp_path / "state") as store:
        yield MailStore(store)


def test_coverage_reports_the_largest_gap_including_the_window_edges(mail: MailStore) -> None:
    for minutes in (5, 10, 50, 55):
        mail.record_listening(ACCOUNT, FOLDER, T0 + timedelta(minutes=minutes), "idle")
    mail.record_listening("other@x", FOLDER, T0 + timedelta(minutes=30), "poll")  # not ours
    cov = mail.coverage(ACCOUNT, FOLDER, T0, T0 + timedelta(minutes=60))
    assert len(cov.timestamps) == 4
    assert cov.largest_gap == timedelta(minutes=40)
    assert (cov.gap_start, cov.gap_end) == (T0 + timedelta(minutes=10), T0 + timedelta(minutes=50))
    assert cov.covered(timedelta(minutes=40)) and not cov.covered(timedelta(minutes=30))


def test_coverage_with_no_listening_is_one_gap_the_size_of_the_window(mail: MailStore) -> None:
    cov = mail.coverage(ACCOUNT, FOLDER, T0, T0 + timedelta(hours=2))
    assert cov.timestamps == () and cov.largest_gap == timedelta(hours=2)


def test_checkpoints_are_per_uidvalidity_and_never_go_back(mail: MailStore) -> None:
    assert mail.checkpoint(ACCOUNT, FOLDER, 7) is None
    mail.advance(ACCOUNT, FOLDER, 7, 120, T0)
    mail.advance(ACCOUNT, FOLDER, 7, 110, T0)  # a late, lower UID must not rewind
    assert mail.checkpoint(ACCOUNT, FOLDER, 7) == 120
    assert mail.start_uidvalidity(ACCOUNT, FOLDER, 9, T0) == [7]
    assert mail.checkpoint(ACCOUNT, FOLDER, 9) == 0
    assert mail.checkpoint(ACCOUNT, FOLDER, 7) == 120


def test_dedupe_key_prefers_message_id_and_falls_back_to_a_stable_hash() -> None:
    assert dedupe_key(" <a@b> ", date=None, from_addr=None, subject=None, size=1) == "mid:<a@b>"
    one = dedupe_key("", date=T0, from_addr="X@nhs.net", subject="Hi", size=10)
    assert one == dedupe_key(None, date=T0, from_addr="x@nhs.net", subject="Hi", size=10)
    assert one != dedupe_key(None, date=T0, from_addr="x@nhs.net", subject="Hi", size=11)
    assert one.startswith("hash:")


def test_recording_the_same_uid_twice_returns_the_first_row(mail: MailStore) -> None:
    fields = dict(
        account=ACCOUNT,
        folder=FOLDER,
        uidvalidity=7,
        uid=101,
        key="mid:<a@b>",
        message_id="<a@b>",
        received_at=T0,
        sent_at=None,
        from_addr="x@nhs.net",
        subject="s",
        size=10,
        rule="default",
        class_="unmatched",
        action="alert",
        captures={},
        defects=[],
        now=T0,
    )
    first = mail.record_received(**fields)  # type: ignore[arg-type]
    again = mail.record_received(**fields)  # type: ignore[arg-type]
    assert first.id == again.id and again.state == "received"
    assert mail.mark_failed(first, "boom", T0, advance_to=101) == 1
    assert [r.uid for r in mail.retryable(ACCOUNT, FOLDER, 7, max_attempts=2)] == [101]
    assert mail.retryable(ACCOUNT, FOLDER, 7, max_attempts=1) == []


def test_a_second_lock_on_the_same_mailbox_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with MailboxLock(state, ACCOUNT, FOLDER) as held:
        assert held.held
        with pytest.raises(AlreadyRunning) as refused:
            MailboxLock(state, ACCOUNT, FOLDER).acquire()
        assert refused.value.lock_path == str(lock_path(state, ACCOUNT, FOLDER))
        assert "seftpilot watch" in (refused.value.hint or "")
        # Another folder of the same account is a different mailbox.
        with MailboxLock(state, ACCOUNT, "Archive"):
            pass
    with MailboxLock(state, ACCOUNT, FOLDER):  # released: can be taken again
        pass
    assert stat.S_IMODE((state / "locks").stat().st_mode) == 0o700


def test_lock_names_are_safe_file_names(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "a/b@host", "../../etc")
    assert path.parent == tmp_path / "locks"
    assert path.resolve().parent == (tmp_path / "locks").resolve()
    assert "/" not in path.name and ".." not in path.name


def test_upgrading_an_old_ledger_counts_its_handled_messages_as_tidied(tmp_path: Path) -> None:
    # A ledger as the previous release left it (schema 6): one handled, one failed and one
    # received message. The upgrade must not make the next catch-up re-flag/move history.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    conn = sqlite3.connect(state / DB_NAME, isolation_level=None)
    for script in MIGRATIONS[:6]:
        for statement in _split_sql(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 6")
    for uid, state_, handled_at in (
        (1, "handled", "2026-01-05T09:01:00+00:00"),
        (2, "failed", None),
        (3, "received", None),
    ):
        conn.execute(
            "INSERT INTO mail_messages(account, folder, uidvalidity, uid, received_at, state, "
            "handled_at) VALUES (?,?,?,?,?,?,?)",
            (ACCOUNT, FOLDER, 7, uid, "2026-01-05T09:00:00+00:00", state_, handled_at),
        )
    conn.close()

    with Store(state) as store:
        assert store.version == len(MIGRATIONS) >= 7
        mail = MailStore(store)
        tidied = {r.uid: r.tidied_at for r in mail.messages(ACCOUNT)}
        assert tidied == {1: datetime(2026, 1, 5, 9, 1, tzinfo=UTC), 2: None, 3: None}
        assert mail.untidied(ACCOUNT, FOLDER, 7) == []


def test_a_handled_message_stays_untidied_until_marked(mail: MailStore) -> None:
    (first, second) = mail.record_received_many([_new(1, "<a@x>"), _new(2, "<b@x>")], T0)
    mail.mark_handled(first, T0, advance_to=1)
    mail.mark_handled(second, T0, tidied=True)  # after_handling = none: nothing owed
    assert [r.uid for r in mail.untidied(ACCOUNT, FOLDER, 7)] == [1]
    assert mail.untidied(ACCOUNT, FOLDER, 8) == []  # another UIDVALIDITY: not these UIDs
    mail.mark_tidied([first.id], T0 + timedelta(minutes=1))
    assert mail.untidied(ACCOUNT, FOLDER, 7) == []
    assert mail.by_id(first.id).tidied_at == T0 + timedelta(minutes=1)
    assert mail.by_id(second.id).tidied_at == T0


def _new(uid: int, message_id: str) -> NewMail:
    return NewMail(
        account=ACCOUNT,
        folder=FOLDER,
        uidvalidity=7,
        uid=uid,
        key=dedupe_key(message_id, date=None, from_addr=None, subject=None, size=None),
        message_id=message_id,
        received_at=T0,
        sent_at=None,
        from_addr="nhs@example.org",
        subject="Notice",
        size=100,
        rule="default",
        class_="unmatched",
        action="alert",
        captures={},
        defects=(),
    )
