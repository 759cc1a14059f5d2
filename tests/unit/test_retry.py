"""The retry policy: what is retried, and the bounds, without real waiting."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from seftpilot.adapters import retry
from seftpilot.adapters.clock import FakeClock
from seftpilot.errors import AuthenticationError, PermanentError, TransientError


class Flaky:
    """Fails ``failures`` times with ``error`` (each failure taking ``cost`` fake seconds)."""

    def __init__(
        self, failures: int, error: Exception, clock: FakeClock | None = None, cost: float = 0.0
    ) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.clock = clock
        self.cost = cost

    def __call__(self) -> str:
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.cost)
        if self.calls <= self.failures:
            raise self.error
        return "done"


@pytest.fixture
def no_waits() -> Iterator[None]:
    with retry.testing():
        yield


def busy() -> TransientError:
    return TransientError("server busy", server="imap.example:993")


def test_transient_error_is_retried_until_success(no_waits: None) -> None:
    fn = Flaky(3, busy())
    assert retry.run(fn, what="fetch", policy=retry.RetryPolicy(attempts=5)) == "done"
    assert fn.calls == 4


@pytest.mark.parametrize(
    "error",
    [PermanentError("no such mailbox"), AuthenticationError("refused"), ValueError("bug")],
    ids=lambda e: type(e).__name__,
)
def test_non_transient_errors_are_not_retried(no_waits: None, error: Exception) -> None:
    fn = Flaky(1, error)
    with pytest.raises(type(error)):
        retry.run(fn, what="fetch")
    assert fn.calls == 1


def test_bounded_by_attempts_and_the_last_error_is_reraised(no_waits: None) -> None:
    fn = Flaky(10, busy())
    with pytest.raises(TransientError, match="server busy"):
        retry.run(fn, what="fetch", policy=retry.RetryPolicy(attempts=3))
    assert fn.calls == 3


def test_bounded_by_total_time_even_with_attempts_left(no_waits: None) -> None:
    # Each attempt times out after 40 fake seconds; the budget is 100 s.
    clock = FakeClock(datetime(2026, 1, 5, tzinfo=UTC))
    fn = Flaky(10, busy(), clock=clock, cost=40.0)
    policy = retry.RetryPolicy(attempts=10, timeout=100.0)
    with pytest.raises(TransientError):
        retry.run(fn, what="connect", policy=policy, clock=clock)
    assert fn.calls == 3  # after 120 s the budget is spent


@pytest.fixture
def _real_waits() -> Iterator[None]:
    """conftest switches waits off session-wide; these tests are about the waits."""
    was = retry.is_testing()
    retry.set_testing(False)
    yield
    retry.set_testing(was)


@pytest.mark.usefixtures("_real_waits")
def test_backoff_grows_and_never_overruns_the_budget() -> None:
    # Not in testing mode: the waits happen, on a fake clock.
    clock = FakeClock(datetime(2026, 1, 5, tzinfo=UTC))
    slept: list[float] = []
    original = clock.sleep

    def recording_sleep(seconds: float) -> None:
        slept.append(seconds)
        original(seconds)

    clock.sleep = recording_sleep  # type: ignore[method-assign]
    fn = Flaky(100, busy())
    policy = retry.RetryPolicy(attempts=100, timeout=60.0, wait_initial=1.0, wait_max=30.0)
    started = time.monotonic()
    with pytest.raises(TransientError):
        retry.run(fn, what="connect", policy=policy, clock=clock)
    assert time.monotonic() - started < 5, "the fake clock must have absorbed the waits"
    assert len(slept) >= 3
    assert slept[0] < slept[2]  # exponential (jitter is at most 1 s; 1 -> 4 s base)
    assert all(s <= 30.0 + 1.0 for s in slept)
    assert sum(slept) <= 60.0
    assert fn.calls == len(slept) + 1


@pytest.mark.usefixtures("_real_waits")
def test_backoff_doubles_from_initial_is_capped_and_never_overflows() -> None:
    policy = retry.RetryPolicy(wait_initial=1.0, wait_max=300.0, wait_jitter=1.0)
    assert 1.0 <= retry.backoff(policy, 1) <= 2.0
    assert 8.0 <= retry.backoff(policy, 4) <= 9.0
    assert retry.backoff(policy, 10) == 300.0  # 512 s is past the cap
    assert retry.backoff(policy, 10_000) == 300.0
    with retry.testing():
        assert retry.backoff(policy, 4) == 0.0


@pytest.mark.usefixtures("_real_waits")
def test_with_a_stop_event_waits_are_on_it_and_a_stop_ends_the_retrying() -> None:
    clock = FakeClock(datetime(2026, 1, 5, tzinfo=UTC))
    stop = threading.Event()
    calls = 0

    def connect() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            stop.set()  # SIGTERM arrives while the second attempt is failing
        raise busy()

    policy = retry.RetryPolicy(attempts=10, wait_initial=0.01, wait_jitter=0.0)
    with pytest.raises(TransientError, match="server busy"):
        retry.run(connect, what="connect", policy=policy, stop=stop, clock=clock)
    assert calls == 2
    # The one wait (0.01 s, after attempt 1) was taken on the stop event, not the clock.
    assert clock.monotonic() == 0.0


def test_decorator_form_keeps_name_and_arguments(no_waits: None) -> None:
    calls: list[tuple[int, str]] = []

    @retry.retrying(policy=retry.RetryPolicy(attempts=2))
    def upload(size: int, *, name: str) -> str:
        calls.append((size, name))
        if len(calls) == 1:
            raise busy()
        return f"{name}:{size}"

    assert upload(3, name="f.csv") == "f.csv:3"
    assert calls == [(3, "f.csv"), (3, "f.csv")]
    assert upload.__name__ == "upload"


def test_each_retry_is_logged_at_warning_without_secrets(
    no_waits: None, caplog: pytest.LogCaptureFixture
) -> None:
    error = TransientError("login timed out", server="imap.example:993", hint="pw=hunter2")
    fn = Flaky(2, error)
    with caplog.at_level(logging.WARNING, logger="seftpilot"):
        retry.run(fn, what="IMAP login", policy=retry.RetryPolicy(attempts=3))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "IMAP login" in warnings[0].getMessage()
    assert "imap.example:993: login timed out" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text


@pytest.mark.usefixtures("_real_waits")
def test_testing_switch_restores_itself() -> None:
    assert not retry.is_testing()
    with retry.testing():
        assert retry.is_testing()
    assert not retry.is_testing()
    retry.set_testing(True)
    try:
        assert retry.is_testing()
    finally:
        retry.set_testing(False)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="at least one attempt"):
        retry.RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="positive time budget"):
        retry.RetryPolicy(timeout=0)
