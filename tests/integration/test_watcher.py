"""The service loop: failing jobs are pushed forward, SIGTERM finishes the step in hand."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from seftpilot.adapters.clock import FakeClock
from seftpilot.service.watcher import Watcher


class _Job:
    def __init__(self, name: str, fail_times: int = 0) -> None:
        self.name = name
        self.fail_times = fail_times
        self.runs: list[datetime] = []

    def next_due(self, now: datetime) -> datetime | None:
        return now

    def run(self, now: datetime) -> None:
        self.runs.append(now)
        if len(self.runs) <= self.fail_times:
            raise RuntimeError(f"boom {len(self.runs)}")


def test_failing_job_is_pushed_forward_and_does_not_starve_others() -> None:
    clock = FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    bad, good = _Job("bad", fail_times=3), _Job("good")
    watcher = Watcher(clock=clock, jobs=[bad, good])
    watcher.run_pending()
    assert len(bad.runs) == 1 and len(good.runs) == 1
    assert "boom 1" in watcher.failing_jobs()["bad"]
    # Within the backoff the bad job is not retried; the good one keeps running.
    clock.advance(timedelta(seconds=10))
    watcher.run_pending()
    assert len(bad.runs) == 1 and len(good.runs) == 2
    # Backoff grows: 30 s, then 60 s, then 120 s.
    clock.advance(timedelta(seconds=25))
    watcher.run_pending()
    assert len(bad.runs) == 2
    clock.advance(timedelta(seconds=59))
    watcher.run_pending()
    assert len(bad.runs) == 2
    clock.advance(timedelta(seconds=2))
    watcher.run_pending()
    assert len(bad.runs) == 3
    clock.advance(timedelta(minutes=3))
    watcher.run_pending()
    assert len(bad.runs) == 4
    assert watcher.failing_jobs() == {}


def test_intake_crash_stops_service_with_status_1() -> None:
    def intake(stop: threading.Event) -> None:
        raise RuntimeError("mailbox exploded")

    watcher = Watcher(clock=FakeClock(), jobs=[], intake=intake, tick_seconds=0.01)
    assert watcher.run() == 1


def test_sigterm_finishes_step_in_hand_then_exits_0(tmp_path: Path) -> None:
    marker = tmp_path / "step-done"
    started = tmp_path / "step-started"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from seftpilot.adapters.clock import SystemClock
        from seftpilot.service.watcher import Watcher

        class Slow:
            name = "slow"
            def next_due(self, now):
                return now
            def run(self, now):
                Path({str(started)!r}).write_text("1")
                time.sleep(1.0)
                Path({str(marker)!r}).write_text("finished")

        w = Watcher(clock=SystemClock(), jobs=[Slow()], tick_seconds=0.05)
        w.install_signal_handlers()
        sys.exit(w.run())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not started.exists():
            assert time.monotonic() < deadline, "job never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert marker.read_text() == "finished"
