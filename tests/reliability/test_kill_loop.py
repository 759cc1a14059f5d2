"""SIGKILL at randomised points across the whole loop, then restart, until the scenario is done.

The service runs in a separate process (``tests/reliability/harness.py``: a warm zygote
forks one "life" of the service per restart); the servers, the NHS England simulator and
the clock stay in this process. At each simulated step the test moves time forward, lets
NHS act, and waits for the service's pass; on a share of the steps it SIGKILLs the life
after a random delay (usually mid-pass), and every life is also armed with one named crash
point (between handling a message and marking it handled, after the SEFT upload but before
the ledger knows, after the SMTP server accepted a mail, at each forwarding checkpoint...)
where it SIGKILLs itself. Each death is followed at once by a restart at the same
simulated time, as systemd would restart the service.

At the end (``world.ledger_problems``): no duplicate upload (the SEFT server saw exactly one
final-name rename per NHS day, NHS accepted every file), no duplicate forward (exactly one
``isaric-*`` archive per delivery, renamed from a hidden name, never changing once visible,
opening with its passphrase and matching NHS's files), no duplicate passphrase mail, no
lost mail (every message in the mailbox has one handled row), nothing stuck (every
submission has its success verdict, every delivery announced or cleaned), and
``PRAGMA integrity_check`` passes. Where the service asks the operator by design (a
passphrase mail whose fate is unknown), the test answers from what the servers saw.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from seftpilot.adapters.delivery_store import DeliveryStore
from seftpilot.core.delivery import step_for
from seftpilot.service.runtime import Runtime
from tests.reliability.harness import POINTS
from tests.reliability.world import (
    REPO,
    STEP,
    RouterWatch,
    Scenario,
    ledger_problems,
    running_world,
)

log = logging.getLogger(__name__)

PASS_TIMEOUT = 30.0  # real seconds one pass may take before the test calls it hung
SPARE_STEPS = 8  # two simulated hours
# Cleaning comes after the partner's retention (days after the run ends): never reached.
REACHABLE = tuple(p for p in POINTS if not p.endswith(":clean"))


class Zygote:
    """The harness process and the lines it reports (see ``harness.py``)."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        path = workdir / "harness.json"
        path.write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.stderr = (workdir / "harness.stderr").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.harness", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=workdir,
            env=env,
        )
        self.lines: queue.Queue[list[str]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode().strip().split(maxsplit=2))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def next_line(self, timeout: float) -> list[str] | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        try:
            self.send("quit")
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.stderr):
            if pipe is not None:
                pipe.close()


@dataclass
class KillReport:
    seed: int
    steps: int = 0
    complete: bool = False
    lives: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    operator_answers: list[str] = field(default_factory=list)
    appended: int = 0
    down_steps: int = 0
    outages: int = 0
    snapshot: dict[str, Any] = field(default_factory=dict)

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())


class KillRun:
    """Drives one scenario with kills (module docstring)."""

    def __init__(
        self,
        base: Path,
        *,
        seed: int,
        long: bool,
        kill_rate: float,
        named_rate: float = 0.7,
        outage_rate: float = 0.0,
    ) -> None:
        self.base = base
        self.seed = seed
        self.long = long
        self.kill_rate = kill_rate
        self.named_rate = named_rate
        self.outage_rate = outage_rate
        self.rng = random.Random(seed)
        self.report = KillReport(seed)
        self.pid: int | None = None
        self.runtime: Runtime | None = None
        # Scripted outages: the first lives are armed with these points, in order, and a
        # death at a point in ``downtime`` keeps the service down for that many steps
        # (while NHS and the mail go on), as a machine that takes a while to come back.
        self.script: list[str] = []
        self.downtime: dict[str, int] = {}
        self.down_steps = 0
        self.step = 0
        self.spared_until = 0
        self.done: dict[int, str] = {}
        # How long the last passes took, as the life measured them: the random kill lands
        # within the median of these, so usually while a pass is running.
        self.recent: deque[float] = deque([0.05], maxlen=5)

    # -- lives -----------------------------------------------------------------------------
    def likely_points(self) -> list[str]:
        """The named points the next passes may reach, from what the ledger says is going
        on: a delivery's next step, an upload to come; else mail in and out."""
        assert self.runtime is not None
        points: list[str] = []
        for d in DeliveryStore(self.runtime.store).list_deliveries():
            step = step_for(d.state) if d.active else None
            if step is not None and step != "clean":
                points += [f"forward:claimed:{step}", f"forward:done:{step}"]
                points += ["forward:staged"] if step == "upload" else []
        if any(str(s.state) in ("planned", "due") for s in self.runtime.ledger.list_submissions()):
            points += ["submit:before-put", "submit:after-put"]
        return points

    def spawn(self, zygote: Zygote) -> None:
        point = "-"
        if self.script:
            point = self.script.pop(0)
            self.spared_until = self.step + 10_000
        elif self.rng.random() < self.named_rate:
            rare = self.likely_points()
            if rare and self.rng.random() < 0.8:
                point = self.rng.choice(rare)
                # Spared from random kills for a while, so that it lives to reach its
                # point (forwarding and uploads come round only a few times a run).
                self.spared_until = self.step + SPARE_STEPS
            else:
                point = self.rng.choice(REACHABLE)
        zygote.send(f"spawn {point} 1")
        self.report.lives += 1
        self.pid = None
        while self.pid is None:
            line = self._line(zygote)
            if line is not None and line[0] == "spawned":
                self.pid = int(line[1])

    def _line(self, zygote: Zygote, timeout: float = PASS_TIMEOUT) -> list[str] | None:
        line = zygote.next_line(timeout)
        if line is None:
            if timeout >= PASS_TIMEOUT:
                raise AssertionError(f"the service did not answer within {PASS_TIMEOUT} s")
            return None
        kind = line[0]
        if kind == "done":
            at, seconds = line[2].split()
            self.done[int(line[1])] = at
            self.recent.append(float(seconds))
        elif kind == "armed":
            self.report.kills[f"at {line[2]}"] += 1
            self.spared_until = 0
            self.down_steps = self.downtime.get(line[2], 0)
        elif kind == "error":
            self.report.errors.append(" ".join(line))
        elif kind == "exit" and self.pid == int(line[1]):
            if int(line[2]) != -signal.SIGKILL:
                self.report.errors.append(f"life {line[1]} exited {line[2]}")
            self.pid = None
            if not self.down_steps and self.rng.random() < self.outage_rate:
                # Not restarted at once: down for 15 minutes to an hour, NHS carries on.
                self.down_steps = self.rng.randint(1, 4)
                self.report.outages += 1
        return line

    def kill(self, zygote: Zygote) -> bool:
        """SIGKILL the life; False when it had died by itself a moment before."""
        assert self.pid is not None
        try:
            os.kill(self.pid, signal.SIGKILL)
            killed = True
        except ProcessLookupError:  # reaped already: its "exit" line is on its way
            killed = False
        while self.pid is not None:
            self._line(zygote)
        return killed

    def one_pass(self, zygote: Zygote, at: datetime) -> None:
        """Wait until a life has finished the pass for ``at``, killing and restarting."""
        want = at.isoformat()
        kill_after = None
        if self.step >= self.spared_until and self.rng.random() < self.kill_rate:
            kill_after = self.rng.uniform(0, statistics.median(self.recent))
        started = time.monotonic()
        while True:
            if self.pid is None and self.down_steps:
                return  # an outage: nobody restarts the service for a while
            if self.pid is None:
                self.spawn(zygote)
                started = time.monotonic()
            if self.done.get(self.pid or 0) == want:
                if kill_after is not None and self.rng.random() < 0.5:
                    # The pass beat the clock: kill the idle service instead, and let a
                    # new life redo the pass (a restart between two steps).
                    if self.kill(zygote):
                        self.report.kills["random between passes"] += 1
                    self.done.clear()
                    kill_after = None
                    continue
                return
            if kill_after is None:
                self._line(zygote)
                continue
            if self._line(zygote, max(0.0, started + kill_after - time.monotonic())) is None:
                if self.pid is None:
                    continue  # it died at its named point meanwhile
                # The moment came before the pass ended: kill it mid-pass.
                kill_after = None
                if self.kill(zygote):
                    self.report.kills["random mid-pass"] += 1

    # -- the run ---------------------------------------------------------------------------
    def run(self, max_steps: int) -> KillReport:
        report = self.report
        with running_world(self.base, seed=self.seed, timeout=5.0) as world:
            runtime = Runtime(world.settings(), clock=world.clock)
            self.runtime = runtime
            scenario = Scenario(world, seed=self.seed, long=self.long)
            scenario.begin(runtime)
            time_file = self.base / "time"
            time_file.write_text(world.clock.now().isoformat())
            config = {
                "settings": world.settings_values(),
                "time_file": str(time_file),
                "log_file": str(self.base / "harness.log"),
            }
            zygote = Zygote(config, self.base)
            router = RouterWatch(world)
            try:
                for step in range(1, max_steps + 1):
                    now = world.clock.advance(STEP)
                    world.sandbox.simulator.step()
                    scenario.before_pass()
                    if self.down_steps:
                        self.down_steps -= 1
                        self.report.down_steps += 1
                        router.look()
                        continue
                    tmp = time_file.with_suffix(".tmp")
                    tmp.write_text(now.isoformat())
                    tmp.replace(time_file)
                    self.step = step
                    self.one_pass(zygote, now)
                    router.look()
                    scenario.between_steps(runtime)
                    report.steps = step
                    if scenario.complete(runtime):
                        report.complete = True
                        break
            finally:
                if self.pid is not None:
                    self.kill(zygote)
                zygote.close()
            report.snapshot = scenario.snapshot(runtime)
            report.appended = scenario.appended
            report.operator_answers = scenario.operator_answers
            report.problems = ledger_problems(world.state_dir, world)
            report.problems += [f"isaric-* changed after it appeared: {n}" for n in router.changed]
            runtime.close()
        return report


def check(report: KillReport, *, min_kills: int) -> None:
    summary = {
        "steps": report.steps,
        "lives": report.lives,
        "kills": report.total_kills,
        "by_point": dict(report.kills),
        "operator": report.operator_answers,
        "appended": report.appended,
        "outages": report.outages,
        "down_steps": report.down_steps,
    }
    log.warning("kill seed %s: %s", report.seed, summary)
    assert report.errors == [], report.errors
    assert report.complete, f"scenario did not finish: {summary} {report.snapshot}"
    assert report.problems == [], report.problems
    assert report.total_kills >= min_kills, summary


def test_sigkill_at_random_points_then_restart(tmp_path: Path) -> None:
    report = KillRun(tmp_path, seed=5, long=False, kill_rate=0.3).run(max_steps=200)
    check(report, min_kills=24)


@pytest.mark.slow
@pytest.mark.parametrize("seed", list(range(21, 29)))
def test_hundreds_of_sigkills_across_the_long_loop(tmp_path: Path, seed: int) -> None:
    run = KillRun(tmp_path, seed=seed, long=True, kill_rate=0.5, outage_rate=0.1)
    report = run.run(max_steps=700)
    check(report, min_kills=80)


@pytest.mark.parametrize(
    "point", ["submit:after-put", "forward:done:upload", "forward:done:passphrase"]
)
def test_down_for_an_hour_at_the_worst_moment(tmp_path: Path, point: str) -> None:
    """The service dies right after a side effect the ledger has not recorded yet and stays
    down for an hour, long enough for NHS England to collect the uploaded file (it moves it
    out of the upload folder) and for the partner's folder to be listed anew: the restart
    must still send nothing twice. The hour also breaks the listening record, so the
    verdict is ``unknown`` and the operator (the test, from NHS's record) settles it."""
    run = KillRun(tmp_path, seed=9, long=False, kill_rate=0.0, named_rate=0.0)
    run.script = [point]
    run.downtime = {point: 4}
    report = run.run(max_steps=200)
    check(report, min_kills=1)
    assert report.kills[f"at {point}"] == 1
    assert report.down_steps == 4
