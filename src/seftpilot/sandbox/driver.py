"""Simulated time: one fake clock drives the service and the NHS England simulator.

Owns the stepping loop of the demo and the end-to-end tests. Each ``step()`` advances the
shared ``FakeClock`` (15 simulated minutes by default, well inside the verdicts'
30-minute listening-gap limit and the canary's 30-minute delay), lets the simulator do
what is due, catches the mailbox up exactly as ``seftpilot watch`` does after each IDLE
or poll wake-up (recording a listening cycle), and runs every due timer of the real
service (``service.assemble.build_jobs``: submissions, verdicts, forwarding, canary,
digest, alerts) once. Days pass in seconds; nothing here decides anything the service
decides.

``Observer`` turns what changed in the ledger and the mailboxes into the lines the demo
shows. Must not reach into the service's state other than by reading the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.delivery_store import Delivery, DeliveryStore
from seftpilot.adapters.locks import MailboxLock
from seftpilot.errors import TransientError
from seftpilot.sandbox.world import Sandbox
from seftpilot.service.assemble import build_dispatcher, build_intake, build_jobs
from seftpilot.service.runtime import Runtime
from seftpilot.service.watcher import Job, Watcher

log = logging.getLogger(__name__)

STEP = timedelta(minutes=15)

Report = Callable[[datetime, str, str], None]
"""``report(simulated time, who, line)``: who is ``nhs``, ``service``, ``mail`` or ``fault``."""


@dataclass
class Observer:
    """What changed since the last look, as lines for a person."""

    runtime: Runtime
    sandbox: Sandbox
    _subs: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    _deliveries: dict[int, str] = field(default_factory=dict)
    _filed: int = 0

    def changes(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for sub in self.runtime.ledger.list_submissions():
            now = (str(sub.state), sub.verdict)
            before = self._subs.get(sub.id)
            if before == now:
                continue
            self._subs[sub.id] = now
            label = f"submission #{sub.id} ({sub.action}, {sub.row_count} rows)"
            if sub.verdict and (before is None or before[1] != sub.verdict):
                out.append(("service", f"{label}: verdict {sub.verdict}"))
            elif str(sub.state) == "uploaded":
                out.append(
                    (
                        "service",
                        f"{label} uploaded to SEFT as {sub.file_name}; evidence window "
                        f"closes {sub.evidence_deadline:%a %d %b %H:%M} UTC",
                    )
                )
            else:
                out.append(("service", f"{label}: {sub.state}"))
        for d in _deliveries(self.runtime):
            if self._deliveries.get(d.id) == d.state:
                continue
            self._deliveries[d.id] = d.state
            extra = ""
            if d.state == "collected":
                extra = f": {d.file_count} files downloaded from SEFT"
            elif d.state == "uploaded":
                extra = f": {d.remote_name} is in the partner's drop"
            out.append(("service", f"delivery #{d.id} {d.state}{extra}"))
        filed = self.sandbox.router.filed
        for item in filed[self._filed :]:
            if item.folder == "INBOX":
                continue  # NHS mail and canaries: the service's own lines say what it made of them
            verb = "lost (fault)" if item.dropped else f"-> {item.folder}"
            out.append(("mail", f"{verb}: {item.subject}"))
        self._filed = len(filed)
        return out


def _deliveries(runtime: Runtime) -> list[Delivery]:
    tables = runtime.store.query(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='deliveries'"
    )
    return DeliveryStore(runtime.store).list_deliveries() if tables else []


class Driver:
    """Steps the sandbox and the service together (module docstring)."""

    def __init__(
        self,
        sandbox: Sandbox,
        runtime: Runtime,
        *,
        step: timedelta = STEP,
        report: Report | None = None,
        jobs: list[Job] | None = None,
    ) -> None:
        if not isinstance(runtime.clock, FakeClock):
            raise TypeError("the driver steps a FakeClock; give the Runtime one")
        self.sandbox = sandbox
        self.runtime = runtime
        self.clock: FakeClock = runtime.clock
        self.step_size = step
        self.report = report or (lambda _at, _who, _line: None)
        self.intake = build_intake(runtime, build_dispatcher(runtime))
        self.jobs = jobs if jobs is not None else build_jobs(runtime)
        self.watcher = Watcher(clock=self.clock, jobs=self.jobs)
        self.observer = Observer(runtime, sandbox)
        self.lock = MailboxLock(runtime.settings.state_dir, self.intake.account, self.intake.folder)
        self.lock.acquire()
        self.steps = 0
        self.mail_errors = 0

    def job(self, name: str) -> Job:
        return next(j for j in self.jobs if j.name == name)

    def tick(self) -> None:
        """Everything due at the current simulated time: NHS, the mailbox, the timers."""
        now = self.clock.now()
        for line in self.sandbox.simulator.step():
            self.report(now, "nhs", line)
        try:
            self.intake.catch_up()
        except TransientError as exc:
            # What `seftpilot watch` does: reconnect and catch up on the next cycle; the
            # listening record keeps the gap, so the verdicts see it.
            self.mail_errors += 1
            self.report(now, "fault", f"mailbox connection lost ({exc.message}); reconnecting")
            self.intake.close()
        self.watcher.run_pending()
        for who, line in self.observer.changes():
            self.report(now, who, line)

    def step(self) -> None:
        self.clock.advance(self.step_size)
        self.steps += 1
        self.tick()

    def run_until(self, goal: Callable[[], bool], *, within: timedelta) -> bool:
        """Step until ``goal()`` holds (checked after every step) or ``within`` has passed
        on the simulated clock. Returns whether the goal was reached."""
        end = self.clock.now() + within
        while not goal():
            if self.clock.now() >= end:
                return False
            self.step()
        return True

    def run_for(self, duration: timedelta) -> None:
        end = self.clock.now() + duration
        while self.clock.now() < end:
            self.step()

    def close(self) -> None:
        try:
            self.intake.close()
        finally:
            self.lock.release()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
