"""Mail intake against a real IMAP server (pymap in-process on loopback).

Each test drives ``MailIntake`` the way ``seftpilot watch`` does and checks what an operator
cares about: every message handled exactly once, in order, recorded before it is acted on,
moved or flagged only after it was handled, listening coverage recorded, and the mailbox
survives drops, renumbering and poison messages.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from seftpilot.adapters.clock import FakeClock, SystemClock
from seftpilot.adapters.imap import ImapMailbox
from seftpilot.adapters.mail_store import MailRecord, MailStore, NewMail
from seftpilot.adapters.rules_files import load_rules
from seftpilot.adapters.store import Store
from seftpilot.config import Settings
from seftpilot.core.message import Message
from seftpilot.core.rules import Classification, RuleSet
from seftpilot.errors import AlreadyRunning, AuthenticationError, TransientError
from seftpilot.service import intake as intake_mod
from seftpilot.service.intake import MailIntake
from tests.fixtures.imap_server import ImapTestServer, make_message
from tests.reliability.chaos_proxy import ChaosProxy

RULES = """\
version: 1
rules:
  - name: nhs-failure
    when:
      subject: {contains: "failed"}
    class: submission_failed
    action: alert
  - name: default
    class: unmatched
    action: alert
"""


@pytest.fixture
def ruleset(tmp_path: Path) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return load_rules([path])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state") as s:
        yield s


class Recorder:
    """The on_message hook: remembers calls; raises for subjects containing ``poison``."""

    def __init__(self, store: Store) -> None:
        self.calls: list[tuple[int, str, str]] = []
        self.states_seen: list[str] = []
        self.store = store
        self.lock = threading.Lock()

    def __call__(self, record: MailRecord, message: Message, c: Classification) -> None:
        # The row must already be in the ledger when the hook runs.
        row = self.store.query("SELECT state FROM mail_messages WHERE id=?", (record.id,))
        with self.lock:
            self.states_seen.append(row[0]["state"])
            self.calls.append((record.uid, message.subject, c.rule))
        if "poison" in message.subject:
            raise RuntimeError("cannot act on this one")

    def subjects(self) -> list[str]:
        with self.lock:
            return [s for _, s, _ in self.calls]


def settings_for(tmp_path: Path, server: ImapTestServer, **imap: Any) -> Settings:
    return Settings(state_dir=tmp_path / "state", imap=server.settings(**imap))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if _RUNNER_ERRORS:
            raise AssertionError(f"the intake died: {_RUNNER_ERRORS[0]!r}") from _RUNNER_ERRORS[0]
        time.sleep(0.05)


_RUNNER_ERRORS: list[BaseException] = []


@pytest.fixture(autouse=True)
def _forget_runner_errors() -> None:
    _RUNNER_ERRORS.clear()


class Runner:
    """``intake.run(stop)`` in a thread, its exception kept for the test."""

    def __init__(self, intake: MailIntake) -> None:
        self.intake = intake
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.intake.run(self.stop)
        except BaseException as exc:
            self.error = exc
            _RUNNER_ERRORS.append(exc)

    def __enter__(self) -> Runner:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "intake did not honour the stop event"
        if self.error is not None and exc[0] is None:
            raise self.error


def listening(store: Store, kind: str | None = None) -> int:
    rows = store.query("SELECT count(*) FROM listening WHERE (? IS NULL OR kind=?)", (kind, kind))
    return int(rows[0][0])


def test_catch_up_handles_the_backlog_once_in_uid_order(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    for n in range(1, 4):
        imap_server.append(make_message(n, subject=f"Cohort upload {n} failed" if n == 2 else None))
    hook = Recorder(store)
    intake = MailIntake(settings_for(tmp_path, imap_server), store, ruleset, SystemClock(), hook)

    report = intake.catch_up()
    again = intake.catch_up()
    intake.mailbox.close()

    uids = imap_server.folder_uids()
    assert [uid for uid, _, _ in hook.calls] == uids
    assert [rule for _, _, rule in hook.calls] == ["default", "nhs-failure", "default"]
    assert hook.states_seen == ["received"] * 3  # recorded before on_message ran
    assert report.handled == 3
    assert again.fetched == 0
    mail = MailStore(store)
    records = mail.messages(intake.account)
    assert [r.state for r in records] == ["handled"] * 3
    assert records[1].class_ == "submission_failed"
    assert mail.checkpoint(intake.account, "INBOX", report.uidvalidity) == uids[-1]
    assert listening(store, "catchup") == 2
    # Fetching used BODY.PEEK[]: nothing was marked read on the server.
    assert all("\\Seen" not in flags for flags in imap_server.flags().values())


def test_idle_wakes_up_on_new_mail_and_stops_promptly(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    hook = Recorder(store)
    intake = MailIntake(settings_for(tmp_path, imap_server), store, ruleset, SystemClock(), hook)
    with Runner(intake) as runner:
        wait_until(lambda: listening(store) >= 1, "the first catch-up")
        imap_server.append(make_message(7, subject="Your cohort submission failed"))
        wait_until(lambda: len(hook.calls) == 1, "the IDLE wake-up")
        assert intake.mailbox.uses_idle
    assert hook.calls[0][2] == "nhs-failure"
    assert not runner.thread.is_alive()
    # The wake-up was followed by a catch-up recorded as an IDLE cycle.
    assert listening(store, "idle") >= 1


def test_poll_fallback_when_the_server_has_no_idle(
    imap_server_factory: Callable[..., ImapTestServer],
    tmp_path: Path,
    store: Store,
    ruleset: RuleSet,
) -> None:
    server = imap_server_factory(idle=False)
    hook = Recorder(store)
    settings = settings_for(tmp_path, server, poll_interval_seconds=1)
    intake = MailIntake(settings, store, ruleset, SystemClock(), hook)
    with Runner(intake):
        wait_until(lambda: listening(store) >= 1, "the first catch-up")
        assert not intake.mailbox.uses_idle
        server.append(make_message(1))
        wait_until(lambda: len(hook.calls) == 1, "a poll to find the message")
    assert listening(store, "poll") >= 1


def test_reconnects_after_a_drop_without_losing_or_repeating_mail(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    imap_server.append(make_message(1))
    hook = Recorder(store)
    intake = MailIntake(settings_for(tmp_path, imap_server), store, ruleset, SystemClock(), hook)
    with Runner(intake):
        wait_until(lambda: len(hook.calls) == 1, "the backlog")
        wait_until(lambda: imap_server.connection_count() == 1, "the IDLE connection")
        for round_ in range(3):
            assert imap_server.drop_connections() >= 1
            # Mail arriving while the client is away must be picked up on reconnect.
            imap_server.append(make_message(10 + round_))
            wait_until(lambda r=round_: len(hook.calls) == 2 + r, "catch-up after reconnect")
            wait_until(lambda: imap_server.connection_count() == 1, "reconnection")
    uids = [uid for uid, _, _ in hook.calls]
    assert uids == imap_server.folder_uids()  # every message, once, in order
    events = [e["kind"] for e in store.events("mailbox")]
    assert events.count("mail.connection_lost") >= 3


class HangingUpHost:
    """A mailbox host that accepts each connection and hangs up before the greeting (a dead
    backend behind a live load balancer). Counts connections; with a FakeClock, each one
    costs ``cost`` fake seconds first, as a connect that runs into its timeout would."""

    def __init__(self, clock: FakeClock | None = None, cost: float = 0.0) -> None:
        self.clock = clock
        self.cost = cost
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            if self.clock is not None:
                self.clock.advance(self.cost)  # before the client can see the hang-up
            conn.close()

    def __enter__(self) -> HangingUpHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def test_reconnecting_gives_up_after_twelve_attempts(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    # conftest's retry.testing() removes the waits; every attempt still happens.
    with HangingUpHost() as host:
        settings = settings_for(tmp_path, imap_server, port=host.port)
        intake = MailIntake(settings, store, ruleset, SystemClock(), Recorder(store))
        with pytest.raises(TransientError):
            intake.run(threading.Event())
    assert host.connections == 12 == intake_mod.RECONNECT.attempts
    assert listening(store) == 0


def test_reconnecting_gives_up_when_its_half_hour_is_spent(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    # Each attempt takes 400 s of fake time: after the fifth (2,000 s) the 1,800 s budget
    # is spent, with attempts to spare.
    clock = FakeClock()
    started = clock.monotonic()
    with HangingUpHost(clock, cost=400.0) as host:
        settings = settings_for(tmp_path, imap_server, port=host.port)
        intake = MailIntake(settings, store, ruleset, clock, Recorder(store))
        with pytest.raises(TransientError):
            intake.run(threading.Event())
    assert intake_mod.RECONNECT.timeout == 1800.0
    assert host.connections == 5
    assert clock.monotonic() - started == 2000.0


def test_refused_credentials_are_not_retried(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    # The proxy only counts connections to the real server.
    with ChaosProxy(imap_server.port, name="imap") as proxy:
        settings = settings_for(tmp_path, imap_server, port=proxy.port, password="not-it")
        intake = MailIntake(settings, store, ruleset, SystemClock(), Recorder(store))
        with pytest.raises(AuthenticationError):
            intake.run(threading.Event())
    assert proxy.stats["connections"] == 1
    assert listening(store) == 0


def test_a_host_that_refuses_a_few_connections_is_reached_and_caught_up(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    imap_server.append(make_message(1))
    hook = Recorder(store)
    with ChaosProxy(imap_server.port, name="imap") as proxy:
        proxy.force_next("refuse", "refuse", "refuse")
        settings = settings_for(tmp_path, imap_server, port=proxy.port)
        intake = MailIntake(settings, store, ruleset, SystemClock(), hook)
        with Runner(intake):
            wait_until(lambda: len(hook.calls) == 1, "the catch-up after three refusals")
            wait_until(lambda: listening(store) >= 1, "the listening record")
        assert proxy.stats["refuse"] == 3
        assert proxy.stats["connections"] == 4


def test_uidvalidity_change_neither_loses_nor_repeats(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    imap_server.append(make_message(1))
    imap_server.append(make_message(2, message_id=None))  # deduplicated by hash instead
    imap_server.append(make_message(3, subject="poison pill"))  # failed: tried again
    hook = Recorder(store)
    intake = MailIntake(settings_for(tmp_path, imap_server), store, ruleset, SystemClock(), hook)
    first = intake.catch_up()
    old_uv = first.uidvalidity

    new_uv = imap_server.change_uidvalidity()  # drops the connection, renumbers
    imap_server.append(make_message(4))
    with pytest.raises(TransientError):
        intake.catch_up()  # the old connection is gone: the loop would reconnect
    second = intake.catch_up()
    intake.close()

    assert new_uv != old_uv and second.uidvalidity == new_uv
    assert second.renumbered_from == [old_uv]
    assert second.duplicates == 2  # the two handled ones were recognised
    subjects = hook.subjects()
    assert subjects.count("Test message 1") == 1
    assert subjects.count("Test message 2") == 1
    assert subjects.count("Test message 4") == 1
    # The failed message was not handled, so it is tried again under its new UID.
    assert subjects.count("poison pill") == 2
    mail = MailStore(store)
    assert mail.checkpoint(intake.account, "INBOX", new_uv) == max(imap_server.folder_uids())
    kinds = [e["kind"] for e in store.events("mailbox")]
    assert "mail.uidvalidity_changed" in kinds


def test_move_after_handling_and_never_when_handling_failed(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    imap_server.append(make_message(1, subject="all good"))
    imap_server.append(make_message(2, subject="poison"))
    hook = Recorder(store)
    settings = settings_for(tmp_path, imap_server, after_handling="move")
    intake = MailIntake(settings, store, ruleset, SystemClock(), hook)
    intake.catch_up()
    intake.mailbox.close()

    assert "seftpilot/handled" in imap_server.folders()  # created on first use
    moved = imap_server.messages("seftpilot/handled")
    left = imap_server.messages("INBOX")
    assert len(moved) == 1 and b"all good" in moved[0]
    assert len(left) == 1 and b"poison" in left[0]


def test_flag_after_handling_and_never_when_handling_failed(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    ok_uid = imap_server.append(make_message(1, subject="all good"))
    bad_uid = imap_server.append(make_message(2, subject="poison"))
    hook = Recorder(store)
    # pymap keeps no keyword flags (no \* in PERMANENTFLAGS): the adapter falls back to
    # \Flagged rather than setting a flag the server would forget.
    settings = settings_for(tmp_path, imap_server, after_handling="flag")
    intake = MailIntake(settings, store, ruleset, SystemClock(), hook)
    intake.catch_up()
    intake.mailbox.close()
    flags = imap_server.flags()
    assert "\\Flagged" in flags[ok_uid]
    assert "\\Flagged" not in flags[bad_uid]


def test_a_drop_between_handled_and_the_move_is_made_good_on_the_next_catch_up(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    # The handler succeeds, then the connection dies before the move: the message is
    # handled (never again), and the reconnecting catch-up moves it after all.
    imap_server.append(make_message(1, subject="first"))
    imap_server.append(make_message(2, subject="second"))
    calls: list[int] = []

    def dropping(record: MailRecord, message: Message, c: Classification) -> None:
        calls.append(record.uid)
        if len(calls) == 1:
            assert imap_server.drop_connections() == 1  # the move comes next, and fails

    settings = settings_for(tmp_path, imap_server, after_handling="move")
    intake = MailIntake(settings, store, ruleset, SystemClock(), dropping)
    with pytest.raises(TransientError):
        intake.catch_up()
    mail = MailStore(store)
    (uv,) = mail.uidvalidities(intake.account, "INBOX")
    (first,) = mail.untidied(intake.account, "INBOX", uv)
    assert first.state == "handled" and len(imap_server.messages("INBOX")) == 2

    report = intake.catch_up()  # reconnects first
    intake.close()
    assert len(calls) == 2 and calls == sorted(set(calls))  # each handled exactly once
    assert imap_server.messages("INBOX") == []
    moved = imap_server.messages("seftpilot/handled")
    assert len(moved) == 2 and b"first" in moved[0] and b"second" in moved[1]
    assert report.tidied_late == 1 and report.handled == 1
    assert mail.untidied(intake.account, "INBOX", uv) == []
    assert [r.state for r in mail.messages(intake.account)] == ["handled", "handled"]


def test_a_crash_between_handled_and_the_flag_is_made_good_on_the_next_catch_up(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    # The ledger as a process killed between mark_handled and the flag leaves it: the row
    # handled (checkpoint past it), the message on the server untouched.
    uid = imap_server.append(make_message(1, subject="handled, then killed"))
    settings = settings_for(tmp_path, imap_server, after_handling="flag")
    intake = MailIntake(settings, store, ruleset, SystemClock(), Recorder(store))
    uv = imap_server.uidvalidity()
    mail = MailStore(store)
    gone = 10_000  # handled, untidied, and since deleted from the folder by someone
    records = mail.record_received_many([_new_mail(intake.account, uv, n) for n in (uid, gone)], T)
    for record in records:
        mail.mark_handled(record, T, advance_to=record.uid)
    assert "\\Flagged" not in imap_server.flags()[uid]

    hook = Recorder(store)
    intake.on_message = hook
    report = intake.catch_up()
    intake.close()
    assert hook.calls == []  # handled before the crash: never again
    assert "\\Flagged" in imap_server.flags()[uid]
    assert report.tidied_late == 2
    assert mail.untidied(intake.account, "INBOX", uv) == []  # the gone UID was a no-op
    again = MailIntake(settings, store, ruleset, SystemClock(), hook)
    assert again.catch_up().tidied_late == 0
    again.close()


T = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _new_mail(account: str, uv: int, uid: int) -> NewMail:
    return NewMail(
        account=account,
        folder="INBOX",
        uidvalidity=uv,
        uid=uid,
        key=f"mid:<test-{uid}@example.nhs.uk>",
        message_id=f"<test-{uid}@example.nhs.uk>",
        received_at=T,
        sent_at=None,
        from_addr="enquiries@nhsdigital.nhs.uk",
        subject="handled, then killed",
        size=100,
        rule="default",
        class_="unmatched",
        action="alert",
        captures={},
        defects=(),
    )


def test_poison_message_is_pushed_forward_retried_then_abandoned(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    imap_server.append(make_message(1, subject="poison"))
    imap_server.append(make_message(2, subject="the next one"))
    hook = Recorder(store)
    abandoned: list[tuple[MailRecord, str]] = []
    intake = MailIntake(
        settings_for(tmp_path, imap_server),
        store,
        ruleset,
        SystemClock(),
        hook,
        max_attempts=3,
        on_abandoned=lambda record, error: abandoned.append((record, error)),
    )
    first = intake.catch_up()
    assert (first.handled, first.failed) == (1, 1)
    assert hook.subjects() == ["poison", "the next one"]  # the next one was not blocked
    for _ in range(4):
        intake.catch_up()
    intake.mailbox.close()

    assert hook.subjects().count("poison") == 3  # max_attempts, then no more
    mail = MailStore(store)
    (poison,) = mail.abandoned(intake.account)
    assert poison.attempts == 3 and poison.state == "failed"
    assert "RuntimeError: cannot act on this one" in (poison.last_error or "")
    assert len(abandoned) == 1 and abandoned[0][0].id == poison.id
    assert mail.checkpoint(intake.account, "INBOX", first.uidvalidity) == max(
        imap_server.folder_uids()
    )


def test_a_second_watcher_on_the_same_mailbox_is_refused(
    imap_server: ImapTestServer, tmp_path: Path, store: Store, ruleset: RuleSet
) -> None:
    settings = settings_for(tmp_path, imap_server)
    first = MailIntake(settings, store, ruleset, SystemClock(), Recorder(store))
    with Runner(first):
        wait_until(lambda: listening(store) >= 1, "the first watcher to start")
        second = MailIntake(settings, store, ruleset, SystemClock(), Recorder(store))
        with pytest.raises(AlreadyRunning) as refused:
            second.run(threading.Event())
        assert "locks/mailbox-" in refused.value.lock_path
    # Once the first has stopped, the mailbox can be taken again.
    stop = threading.Event()
    stop.set()
    MailIntake(settings, store, ruleset, SystemClock(), Recorder(store)).run(stop)


def test_a_batch_is_recorded_before_handling_and_a_stop_mid_batch_loses_nothing(
    tmp_path: Path, imap_server: ImapTestServer, store: Store, ruleset: RuleSet
) -> None:
    for n in range(6):
        imap_server.append(make_message(n, subject=f"Notice {n}"))
    uids = imap_server.folder_uids()
    stop = threading.Event()
    calls: list[int] = []
    ledger_states: list[list[str]] = []

    def hook(record: MailRecord, message: Message, c: Classification) -> None:
        # When the first message is handled, the whole fetch batch is already in the
        # ledger as `received`, and nothing after the message in hand is handled.
        rows = store.query("SELECT state FROM mail_messages ORDER BY uid")
        ledger_states.append([r["state"] for r in rows])
        calls.append(record.uid)
        if len(calls) == 2:
            stop.set()  # SIGTERM while the batch is being handled

    settings = settings_for(tmp_path, imap_server)
    mailbox = ImapMailbox(settings.imap, fetch_batch=4)
    intake = MailIntake(settings, store, ruleset, SystemClock(), hook, mailbox=mailbox)
    first = intake.catch_up(stop)
    assert calls == uids[:2] and first.last_uid == uids[1]
    assert ledger_states[0] == ["received"] * 4  # batch one: 4 rows, before any handling
    mail = MailStore(store)
    assert mail.checkpoint(intake.account, "INBOX", first.uidvalidity) == uids[1]
    assert [r.state for r in mail.messages(intake.account)] == ["handled"] * 2 + ["received"] * 2

    # The next pass (after a restart, say) handles the rest, each message exactly once.
    stop.clear()
    second = intake.catch_up(stop)
    intake.close()
    assert calls == uids
    assert second.handled == 4
    assert [r.state for r in mail.messages(intake.account)] == ["handled"] * 6
    assert mail.checkpoint(intake.account, "INBOX", first.uidvalidity) == uids[-1]


class _Crash(BaseException):
    """The process dying in the middle of a handler (not an Exception: nothing catches it)."""


def test_a_crash_mid_batch_handles_no_message_twice(
    tmp_path: Path, imap_server: ImapTestServer, store: Store, ruleset: RuleSet
) -> None:
    # The checkpoint moves once per batch; the rows' states are what prevent a second
    # handling when a crash leaves it behind.
    for n in range(6):
        imap_server.append(make_message(n, subject=f"Notice {n}"))
    uids = imap_server.folder_uids()
    calls: list[int] = []

    def dying(record: MailRecord, message: Message, c: Classification) -> None:
        calls.append(record.uid)
        if len(calls) == 3:
            raise _Crash

    settings = settings_for(tmp_path, imap_server)
    first = MailIntake(
        settings,
        store,
        ruleset,
        SystemClock(),
        dying,
        mailbox=ImapMailbox(settings.imap, fetch_batch=4),
    )
    with pytest.raises(_Crash):
        first.catch_up()
    first.close()
    mail = MailStore(store)
    states = [r.state for r in mail.messages(first.account)]
    assert states == ["handled", "handled", "received", "received"]
    (uv,) = mail.uidvalidities(first.account, "INBOX")
    # The crash came before the batch's end: the checkpoint is behind the handled two.
    assert mail.checkpoint(first.account, "INBOX", uv) == 0

    calls_after: list[int] = []
    second = MailIntake(
        settings,
        store,
        ruleset,
        SystemClock(),
        lambda r, m, c: calls_after.append(r.uid),
        mailbox=ImapMailbox(settings.imap, fetch_batch=4),
    )
    report = second.catch_up()
    second.close()
    # The message whose handler died is handled again (its on_message never returned);
    # the two handled before the crash are not.
    assert calls == uids[:3] and calls_after == uids[2:]
    assert report.handled == 4
    assert [r.state for r in mail.messages(second.account)] == ["handled"] * 6
    assert mail.checkpoint(second.account, "INBOX", report.uidvalidity) == uids[-1]


def test_recording_batches_are_cut_by_size_keeping_uid_order() -> None:
    from seftpilot.adapters.imap import FetchedMessage
    from seftpilot.service.intake import _by_size

    batch = [FetchedMessage(uid, b"x" * size, size, None) for uid, size in enumerate([5, 5, 12, 1])]
    runs = [[f.uid for f in run] for run in _by_size(batch, 10)]
    assert runs == [[0, 1], [2], [3]]  # an oversized message still goes, on its own
