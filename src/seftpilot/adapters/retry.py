"""The project's one retry policy, on tenacity, in the spirit of ``stamina``.

Owns *how* adapters retry: only ``errors.TransientError`` (a ``TransportError`` whose
``permanent`` flag is False) is retried; exponential backoff with jitter; bounded by a
number of attempts *and* a total time budget (a wait that would overrun the budget is not
started); every retry logged at WARNING with the error's message, never its hint or any
argument of the call (arguments may hold passwords or message bodies).

Use as a decorator or a call wrapper::

    @retrying(what="SMTP send to mail.example.org:587")
    def send(...): ...

    result = run(lambda: client.fetch(uids), what="IMAP fetch")

A long-running loop passes its ``stop`` event: a stop request cuts a wait short and no
further attempt starts. ``backoff(policy, failures)`` is the same wait for a loop that
paces itself (the mail intake's pause after a flapping connection).

Tests remove the waits with ``set_testing(True)`` or ``with testing():`` (the attempts
still happen; the time budget is still checked against the clock). A ``Clock`` may be
injected, so a FakeClock can show the time bound without real waiting.

Must not decide *what* is transient: adapters map their libraries' exceptions into the
error tree, and this module trusts that mapping.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import tenacity

from seftpilot.adapters.clock import Clock, SystemClock
from seftpilot.errors import SeftpilotError, TransportError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_testing = threading.Event()


def set_testing(enabled: bool) -> None:
    """Remove (or restore) every wait between attempts, process-wide."""
    if enabled:
        _testing.set()
    else:
        _testing.clear()


@contextmanager
def testing() -> Iterator[None]:
    """``with testing():`` retries happen at once inside the block."""
    was = _testing.is_set()
    set_testing(True)
    try:
        yield
    finally:
        set_testing(was)


def is_testing() -> bool:
    return _testing.is_set()


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. ``timeout`` is the budget in seconds for all attempts and waits."""

    attempts: int = 5
    timeout: float = 120.0
    wait_initial: float = 1.0
    wait_max: float = 30.0
    wait_jitter: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")
        if self.timeout <= 0:
            raise ValueError("a retry policy needs a positive time budget")


DEFAULT_POLICY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def is_retryable(exc: BaseException) -> bool:
    """Only transient transport errors are worth another attempt."""
    return isinstance(exc, TransportError) and not exc.permanent


def backoff(policy: RetryPolicy, failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``wait_initial`` doubling per
    failure plus up to ``wait_jitter``, capped at ``wait_max``; none at all under testing."""
    # tenacity's wait_exponential_jitter formula, written out: a pacing loop needs it with no
    # retry state, and tenacity now deprecates its ``initial`` argument for values other
    # than 1 (a DeprecationWarning, which fails a test run under -W error).
    if _testing.is_set():
        return 0.0
    # The exponent is capped: 2**64 seconds is past any wait_max, and floats stay finite.
    grown = policy.wait_initial * 2.0 ** min(max(0, failures - 1), 64)
    jitter = random.uniform(0.0, policy.wait_jitter)  # noqa: S311 - spreading, not secrecy
    return max(0.0, min(policy.wait_max, grown + jitter))


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, SeftpilotError):
        return f"{type(exc).__name__}: {exc.message}"
    return type(exc).__name__


def run(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    clock: Clock | None = None,
    stop: threading.Event | None = None,
) -> T:
    """Call ``fn`` until it returns, raises a non-transient error, or the policy is spent.

    The last error is re-raised as it is (never wrapped in tenacity's RetryError). With
    ``stop``, waits are ``stop.wait`` (real time, cut short by a stop request; the budget
    is still measured on ``clock``) and once it is set no further attempt starts: the
    last error is re-raised, and the caller decides whether a stop makes it moot.
    """
    clk = clock or SystemClock()
    started = clk.monotonic()

    def give_up(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= policy.attempts:
            return True
        if stop is not None and stop.is_set():
            return True
        upcoming = 0.0 if _testing.is_set() else (state.upcoming_sleep or 0.0)
        return clk.monotonic() - started + upcoming > policy.timeout

    def wait(state: tenacity.RetryCallState) -> float:
        return backoff(policy, state.attempt_number)

    def sleep(seconds: float) -> None:
        if seconds <= 0:
            return
        if stop is not None:
            stop.wait(seconds)
        else:
            clk.sleep(seconds)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "retrying %s in %.1f s (attempt %d of %d failed): %s",
            what,
            state.upcoming_sleep,
            state.attempt_number,
            policy.attempts,
            _describe(exc),
        )

    retrier = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_retryable),
        stop=give_up,
        wait=wait,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrier(fn)


def retrying(
    *,
    what: str | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    clock: Clock | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form of ``run``; ``what`` defaults to the function's qualified name."""

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        label = what or fn.__qualname__

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return run(lambda: fn(*args, **kwargs), what=label, policy=policy, clock=clock)

        return wrapper

    return decorate
