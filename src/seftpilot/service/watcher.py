"""The long-running service loop: mailbox intake plus timers, until SIGTERM.

Owns scheduling and shutdown, nothing else. Each timer is a ``Job`` that says when it is
next due and does one step when run; the mailbox intake runs in its own thread. SIGTERM
or SIGINT sets a flag: the step in hand finishes, the loop ends, the process exits 0.

A job that raises is pushed forward with a growing delay (capped), so one failing step
cannot crash-loop the service or starve the others (the healthchecks habit). After a
restart, the first pass runs every job that fell due while the service was down exactly
once: jobs decide themselves what that means (a digest sends one summary, not seven).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import FrameType
from typing import Protocol

from seftpilot.adapters.clock import Clock

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=1)


class Job(Protocol):
    name: str

    def next_due(self, now: datetime) -> datetime | None:
        """When this job next wants to run (None: not scheduled)."""
        ...

    def run(self, now: datetime) -> None:
        """Do one step. May raise; the loop pushes the job forward."""
        ...


@dataclass
class _JobState:
    job: Job
    failures: int = 0
    not_before: datetime | None = None
    last_error: str | None = None


@dataclass
class Watcher:
    clock: Clock
    jobs: Sequence[Job]
    intake: Callable[[threading.Event], None] | None = None
    tick_seconds: float = 1.0
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._states = [_JobState(job) for job in self.jobs]
        self._intake_thread: threading.Thread | None = None
        self.intake_error: BaseException | None = None

    # -- signals -------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT finish the step in hand, then the loop ends (exit 0)."""

        def _handler(signum: int, _frame: FrameType | None) -> None:
            log.info(
                "received %s: finishing the step in hand, then stopping",
                signal.Signals(signum).name,
            )
            self.stop.set()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)

    # -- loop ----------------------------------------------------------------
    def run_pending(self) -> int:
        """Run every job that is due now, once. Returns how many ran successfully."""
        ran = 0
        for state in self._states:
            if self.stop.is_set():
                break
            now = self.clock.now()
            if state.not_before is not None and now < state.not_before:
                continue
            due = state.job.next_due(now)
            if due is None or due > now:
                continue
            try:
                state.job.run(now)
            except Exception as exc:  # any failure pushes the job forward, never the loop down
                state.failures += 1
                delay = min(timedelta(seconds=30 * 2 ** min(state.failures - 1, 10)), MAX_BACKOFF)
                state.not_before = now + delay
                state.last_error = f"{type(exc).__name__}: {exc}"
                log.error(
                    "job %s failed (%d in a row), next try after %s: %s",
                    state.job.name,
                    state.failures,
                    state.not_before.isoformat(timespec="seconds"),
                    state.last_error,
                )
            else:
                ran += 1
                state.failures = 0
                state.not_before = None
                state.last_error = None
        return ran

    def _run_intake(self) -> None:
        assert self.intake is not None
        try:
            self.intake(self.stop)
        except BaseException as exc:  # a dead intake must stop the service loudly
            self.intake_error = exc
            log.exception("mailbox intake stopped with an error; stopping the service")
            self.stop.set()

    def run(self) -> int:
        """Run until stopped. Returns the process exit status."""
        if self.intake is not None:
            self._intake_thread = threading.Thread(
                target=self._run_intake, name="intake", daemon=True
            )
            self._intake_thread.start()
        log.info("service started with %d timers", len(self._states))
        while not self.stop.is_set():
            self.run_pending()
            self.stop.wait(self.tick_seconds)
        if self._intake_thread is not None:
            self._intake_thread.join(timeout=60)
        log.info("service stopped")
        return 1 if self.intake_error is not None else 0

    def failing_jobs(self) -> dict[str, str]:
        return {s.job.name: s.last_error for s in self._states if s.last_error}
