"""Scenario plumbing for the end-to-end tests: a sandbox, the real service on its fake
clock, and the driver that steps both (see ``seftpilot.sandbox``)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.ledger_store import Submission
from seftpilot.config import Agreement, Settings
from seftpilot.core.synthetic import EXPORT_HEADER, export_rows
from seftpilot.sandbox.demo import DEMO_START
from seftpilot.sandbox.driver import Driver
from seftpilot.sandbox.simulator import SimulatorConfig
from seftpilot.sandbox.world import DEFAULT_NIC, WATCHED, Sandbox
from seftpilot.service.runtime import Runtime


class SimulatedCrash(BaseException):
    """The process dies here (not an Exception: nothing in the service may catch it)."""


@dataclass
class Scenario:
    sandbox: Sandbox
    clock: FakeClock
    settings: Settings
    runtime: Runtime
    driver: Driver
    lines: list[str]

    @property
    def agreement(self) -> Agreement:
        return self.settings.agreement_for(None)

    def submissions(self) -> list[Submission]:
        return self.runtime.ledger.list_submissions()

    def decided(self, count: int) -> bool:
        subs = self.submissions()
        return len(subs) >= count and all(s.verdict is not None for s in subs[:count])

    def run_until(self, goal: Any, days: float) -> None:
        assert self.driver.run_until(goal, within=timedelta(days=days)), (
            "the goal was not reached; the simulated timeline was:\n" + "\n".join(self.lines)
        )

    def restart(self) -> None:
        """A new process: fresh Runtime and Driver over the same state and servers."""
        self.driver.close()
        self.runtime.close()
        self.runtime = Runtime(self.settings, clock=self.clock)
        self.driver = Driver(self.sandbox, self.runtime, report=self._report)

    def _report(self, at: datetime, who: str, line: str) -> None:
        self.lines.append(f"{at:%a %d %b %H:%M} {who:<7} {line}")


@contextmanager
def scenario(
    tmp_path: Path, sim: SimulatorConfig | None = None, **overrides: Any
) -> Iterator[Scenario]:
    clock = FakeClock(DEMO_START)
    config = sim or SimulatorConfig(nic=DEFAULT_NIC, to=WATCHED)
    with Sandbox(tmp_path / "sandbox", clock=clock, simulator=config) as sandbox:
        settings = sandbox.settings(state_dir=tmp_path / "state", **overrides)
        runtime = Runtime(settings, clock=clock)
        lines: list[str] = []
        world = Scenario(sandbox, clock, settings, runtime, None, lines)  # type: ignore[arg-type]
        world.driver = Driver(sandbox, runtime, report=world._report)
        try:
            world.driver.tick()
            yield world
        finally:
            world.driver.close()
            world.runtime.close()


def write_export(path: Path, rows: int, seed: int) -> tuple[Path, list[str]]:
    """A synthetic study export; returns it and its unique references."""
    data = list(export_rows(rows, seed=seed, messy=0.0))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(EXPORT_HEADER)
        writer.writerows(data)
    return path, [r[0] for r in data]


def subjects(sandbox: Sandbox, folder: str) -> list[str]:
    return [f.subject for f in sandbox.mail(folder)]
