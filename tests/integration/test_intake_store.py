"""The mail store on a real SQLite ledger, and the mailbox lock on real files."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from seftpilot.adapters.locks import MailboxLock, lock_path
from seftpilot.adapters.mail_store import MailStore, dedupe_key
from seftpilot.adapters.store import Store
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
