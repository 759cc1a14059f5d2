"""A sustained run of the whole loop with every connection the service makes (IMAP, SMTP,
SEFT upload, SEFT download, partner SFTP) going through a chaos proxy that refuses, drops,
resets and stalls connections at random (seeded), plus commanded resets of every live
connection now and then.

What must hold at the end (``world.ledger_problems``): every message that reached the
mailbox has exactly one ledger row, handled, and its handlers completed exactly once;
every due upload reached SEFT once (one final-name rename per NHS day, NHS accepted each);
every delivery is complete (one ``isaric-*`` archive each, renamed from a hidden name,
never changing once visible, opening with the one passphrase mailed); no duplicate
passphrase mail. Where the service asks the operator by design (a passphrase mail whose
fate a dropped connection made unknown), the test answers truthfully and reports it.

The default run is short (one upload, one delivery, ~130 steps); ``-m slow`` runs the long
scenario (three uploads on three days, two deliveries) over several seeds and a stormier
plan that includes black holes (connections that never answer until the client's timeout).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from seftpilot.adapters.locks import MailboxLock
from seftpilot.adapters.mail_store import MailRecord
from seftpilot.core.message import Message
from seftpilot.core.rules import Classification
from seftpilot.errors import TransientError
from seftpilot.service.assemble import build_dispatcher, build_intake, build_jobs
from seftpilot.service.dispatch import ANY
from seftpilot.service.runtime import Runtime
from seftpilot.service.watcher import Watcher
from tests.reliability.chaos_proxy import Rates
from tests.reliability.world import (
    SERVERS,
    STEP,
    RouterWatch,
    Scenario,
    ledger_problems,
    running_world,
)

log = logging.getLogger(__name__)

# What counts as a fault that struck: a refusal, a drop/reset/stall that fired (a planned
# one can miss when the connection ends before its byte offset), a commanded reset.
FIRED = ("refuse", "drop_fired", "reset_fired", "stall_fired", "blackhole", "cmd_reset", "expired")
CATCH_UP_TRIES = 4  # `seftpilot watch` reconnects with backoff; a step tries this often
RESET_EVERY = 25  # steps between commanded resets of every live connection


@dataclass
class ChaosReport:
    seed: int
    steps: int = 0
    complete: bool = False
    mail_errors: int = 0
    mail_unreached_steps: int = 0
    problems: list[str] = field(default_factory=list)
    handler_runs: Counter[int] = field(default_factory=Counter)
    proxies: dict[str, dict[str, int]] = field(default_factory=dict)
    operator_answers: list[str] = field(default_factory=list)
    appended: int = 0
    snapshot: dict[str, Any] = field(default_factory=dict)
    verdicts: list[str | None] = field(default_factory=list)
    failing_jobs: Counter[str] = field(default_factory=Counter)

    def faults_by_server(self) -> dict[str, int]:
        return {
            server: sum(n for k, n in stats.items() if k in FIRED)
            for server, stats in self.proxies.items()
        }

    def faults(self) -> int:
        return sum(self.faults_by_server().values())


def run_chaos(
    base: Path, *, seed: int, rates: Rates, long: bool, max_steps: int, timeout: float = 2.0
) -> ChaosReport:
    report = ChaosReport(seed)
    with running_world(base, seed=seed, timeout=timeout) as world:
        runtime = Runtime(world.settings(), clock=world.clock)
        scenario = Scenario(world, seed=seed, long=long)
        scenario.begin(runtime)

        dispatcher = build_dispatcher(runtime)

        def completed(record: MailRecord, _m: Message, _c: Classification) -> None:
            report.handler_runs[record.id] += 1  # registered last: every handler before it ran

        dispatcher.on(ANY, completed)
        intake = build_intake(runtime, dispatcher)
        watcher = Watcher(clock=world.clock, jobs=build_jobs(runtime))
        router = RouterWatch(world)
        world.set_rates(rates)
        # SFTP connections are few (a listing, an upload, a collection a day): make sure
        # the first ones of each server are cut, wherever the random offset falls.
        for name in ("seft_upload", "seft_download", "partner"):
            world.proxies[name].force_next("reset", "pass", "drop", "stall", "reset")
        with MailboxLock(world.state_dir, intake.account, intake.folder):
            try:
                for step in range(1, max_steps + 1):
                    world.clock.advance(STEP)
                    world.sandbox.simulator.step()
                    scenario.before_pass()
                    if step % RESET_EVERY == 0:
                        for name in SERVERS:
                            world.proxies[name].reset_all()
                    for _ in range(CATCH_UP_TRIES):
                        try:
                            intake.catch_up()
                            break
                        except TransientError:
                            report.mail_errors += 1
                            intake.close()
                    else:
                        report.mail_unreached_steps += 1
                    watcher.run_pending()
                    for name in watcher.failing_jobs():
                        report.failing_jobs[name] += 1
                    router.look()
                    scenario.between_steps(runtime)
                    report.steps = step
                    if scenario.complete(runtime):
                        report.complete = True
                        break
            finally:
                intake.close()
        # Quiet servers for the final look (the checks read the servers directly anyway).
        world.set_rates(Rates.calm())
        report.proxies = world.proxy_stats()
        report.snapshot = scenario.snapshot(runtime)
        report.appended = scenario.appended
        report.operator_answers = scenario.operator_answers
        report.verdicts = [s.verdict for s in runtime.ledger.list_submissions()]
        report.problems = ledger_problems(world.state_dir, world)
        handled = {
            int(r["id"])
            for r in runtime.store.query("SELECT id FROM mail_messages WHERE state='handled'")
        }
        twice = {k: n for k, n in report.handler_runs.items() if n != 1}
        if twice:
            report.problems.append(f"handlers completed more than once: {twice}")
        if set(report.handler_runs) != handled:
            report.problems.append(
                f"handled rows {sorted(handled - set(report.handler_runs))} never completed "
                "their handlers"
            )
        report.problems += [f"isaric-* file changed after it appeared: {n}" for n in router.changed]
        runtime.close()
    return report


def check(report: ChaosReport, *, min_faults: int) -> None:
    summary: dict[str, Any] = {
        "steps": report.steps,
        "faults": report.faults(),
        "by_server": report.faults_by_server(),
        "connections": {k: v.get("connections", 0) for k, v in report.proxies.items()},
        "mail_errors": report.mail_errors,
        "operator": report.operator_answers,
        "verdicts": report.verdicts,
        "appended": report.appended,
        "failing_jobs": dict(report.failing_jobs),
    }
    log.warning("chaos seed %s: %s", report.seed, summary)
    assert report.complete, f"scenario did not finish: {summary} {report.snapshot}"
    assert report.problems == [], report.problems
    assert report.faults() >= min_faults, f"too few faults to prove anything: {summary}"


def test_whole_loop_through_a_chaos_proxy(tmp_path: Path) -> None:
    report = run_chaos(
        tmp_path, seed=1, rates=Rates.stormy(0.25), long=False, max_steps=200, timeout=2.0
    )
    check(report, min_faults=20)


SLOW_SEEDS = list(range(11, 23))


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_sustained_chaos_run(tmp_path: Path, seed: int) -> None:
    rates = Rates(
        refuse=0.06, drop=0.08, reset=0.12, stall=0.08, blackhole=0.01, stall_seconds=(0.05, 1.0)
    )
    report = run_chaos(tmp_path, seed=seed, rates=rates, long=True, max_steps=600, timeout=1.5)
    check(report, min_faults=60)
