"""The service in a process the SIGKILL tests can kill: ``python -m tests.reliability.harness
CONFIG.json``.

This process is a *zygote*: it imports seftpilot once, then forks one child per "life" of
the service when the test writes ``spawn POINT NTH`` on its stdin, and reports on stdout:

    spawned PID            a life started
    done PID ISO SECONDS   the life finished a pass for the simulated time ISO (in SECONDS)
    armed PID POINT        the life reached POINT (its NTH time) and is about to SIGKILL itself
    exit PID STATUS        a life ended (``-9``: SIGKILL)

A life is what ``seftpilot watch`` does, without its IDLE thread: it builds a ``Runtime``
over the state directory from the fixed settings in CONFIG (the servers run in the test
process), a ``FakeClock`` whose time is read from ``CONFIG["time_file"]`` (the test owns
time and moves it forward), takes the mailbox lock, and then for every new time in that
file runs one pass: mailbox catch-up (reconnecting on a transient error, as the intake loop
does) and ``Watcher.run_pending`` over ``service.assemble.build_jobs``. Forking from a
process that already imported everything makes a restart cost milliseconds instead of a
second, so the tests can kill hundreds of times; the child is a real process and dies by a
real SIGKILL (no ``finally``, no ``atexit``, SQLite and file locks left as they are).

Named crash points (the ``POINT`` of ``spawn``; ``-`` for none) are wired from outside the
service, so ``src/`` needs no test hooks: ``mail:before-handlers`` / ``mail:after-handlers``
around the dispatcher (after: the handlers ran, the message is not yet marked handled),
``submit:before-put`` / ``submit:after-put`` around the SEFT transport (after: the file is
on SEFT, the ledger does not know yet), ``smtp:before-send`` / ``smtp:after-send`` around
every mail the service sends (after: the server accepted it, the ledger does not know),
and ``forward:<checkpoint>`` at each of ``Forwarder``'s own checkpoints (``claimed:upload``,
``staged``, ``done:passphrase``...). The test also kills at random moments on its own.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

# Imported before any fork: every life starts warm.
from seftpilot.adapters import retry
from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.locks import MailboxLock
from seftpilot.config import Settings
from seftpilot.errors import TransientError
from seftpilot.service import assemble
from seftpilot.service.forward import ForwardJob
from seftpilot.service.runtime import Runtime
from seftpilot.service.submit import SubmitJob
from seftpilot.service.watcher import Watcher

POINTS = (
    "mail:before-handlers",
    "mail:after-handlers",
    "submit:before-put",
    "submit:after-put",
    "smtp:before-send",
    "smtp:after-send",
    *(
        f"forward:{when}:{step}"
        for step in ("collect", "archive", "verify", "upload", "passphrase", "announce", "clean")
        for when in ("claimed", "done")
    ),
    "forward:staged",
)
CATCH_UP_TRIES = 3
PR_SET_PDEATHSIG = 1


def say(line: str) -> None:
    """One line on stdout in one write (atomic on a pipe), from the zygote or a life."""
    os.write(1, (line + "\n").encode())


def read_time(path: Path) -> datetime:
    return datetime.fromisoformat(path.read_text().strip())


class Crash:
    """SIGKILL this process the ``nth`` time ``point`` is reached."""

    def __init__(self, point: str | None, nth: int) -> None:
        self.point = point
        self.nth = nth
        self.seen = 0

    def at(self, name: str) -> None:
        if name != self.point:
            return
        self.seen += 1
        if self.seen == self.nth:
            say(f"armed {os.getpid()} {name}")
            os.kill(os.getpid(), signal.SIGKILL)


class CrashingTransport:
    def __init__(self, real: Any, crash: Crash) -> None:
        self.real = real
        self.crash = crash
        self.name = real.name
        self.listable = real.listable

    def put(self, local_path: Path, final_name: str, *, submission_id: int | None = None) -> None:
        self.crash.at("submit:before-put")
        self.real.put(local_path, final_name, submission_id=submission_id)
        self.crash.at("submit:after-put")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)  # find, find_partial, ...


class CrashingMailer:
    def __init__(self, real: Any, crash: Crash) -> None:
        self.real = real
        self.crash = crash

    def send(self, msg: Any) -> str:
        self.crash.at("smtp:before-send")
        message_id = str(self.real.send(msg))
        self.crash.at("smtp:after-send")
        return message_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def warm_up(config: dict[str, Any]) -> Any:
    """What every life would do the same way, done once before forking: the lazy imports
    behind the bank-holiday calendar, and the rules (read from the same files, so a life
    classifies exactly as a fresh process would). Returns the rules."""
    from seftpilot.adapters.holidays_source import bank_holidays
    from seftpilot.adapters.rules_files import configured_rules_paths, load_rules

    bank_holidays(range(2025, 2029))
    settings = Settings(_env_file=None, **config["settings"])  # type: ignore[call-arg]
    return load_rules(configured_rules_paths(settings))


def life(config: dict[str, Any], point: str | None, nth: int, rules: Any = None) -> None:
    """One life of the service (module docstring). Never returns normally."""
    retry.set_testing(True)
    logging.basicConfig(
        filename=config["log_file"],
        level=logging.WARNING,
        format=f"%(asctime)s {os.getpid()} %(levelname)s %(name)s: %(message)s",
    )
    time_file = Path(config["time_file"])
    settings = Settings(_env_file=None, **config["settings"])  # type: ignore[call-arg]
    clock = FakeClock(read_time(time_file))
    runtime = Runtime(settings, clock=clock)
    if rules is not None:
        runtime.__dict__["rules"] = rules
    crash = Crash(point, nth)
    dispatcher = assemble.build_dispatcher(runtime)

    def on_message(record: Any, message: Any, classification: Any) -> None:
        crash.at("mail:before-handlers")
        dispatcher(record, message, classification)
        crash.at("mail:after-handlers")

    intake = assemble.build_intake(runtime, on_message)  # type: ignore[arg-type]
    jobs = assemble.build_jobs(runtime)
    for job in jobs:
        if isinstance(job, SubmitJob):
            job._transport = CrashingTransport(job.transport, crash)  # type: ignore[assignment]
        if isinstance(job, ForwardJob):
            job.forwarder.checkpoint = lambda name: crash.at(f"forward:{name}")
    runtime.__dict__["mailer"] = CrashingMailer(runtime.mailer, crash)
    watcher = Watcher(clock=clock, jobs=jobs)
    MailboxLock(settings.state_dir, intake.account, intake.folder).acquire()
    last: datetime | None = None
    while True:
        now = read_time(time_file)
        if now == last:
            time.sleep(0.002)
            continue
        started = time.monotonic()
        if now > clock.now():
            clock.set(now)
        for _ in range(CATCH_UP_TRIES):
            try:
                intake.catch_up()
                break
            except TransientError as exc:
                logging.getLogger("harness").warning("catch-up: %s", exc)
                intake.close()
        watcher.run_pending()
        say(f"done {os.getpid()} {now.isoformat()} {time.monotonic() - started:.4f}")
        last = now


def _die_with_parent() -> None:
    """A life must not outlive the zygote (a test that stops it stops everything)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def zygote(config: dict[str, Any]) -> None:
    """Fork a life per ``spawn`` line; report every life's end (module docstring)."""
    stdin = sys.stdin.fileno()
    buffer = b""
    lives: set[int] = set()
    rules = warm_up(config)

    def reap() -> None:
        while lives:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            lives.discard(pid)
            say(f"exit {pid} {os.waitstatus_to_exitcode(status)}")

    try:
        while True:
            reap()
            ready, _, _ = select.select([stdin], [], [], 0.005)
            if not ready:
                continue
            chunk = os.read(stdin, 4096)
            if not chunk:
                return  # the test went away
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                words = line.decode().split()
                if not words:
                    continue
                if words[0] == "quit":
                    return
                if words[0] == "spawn":
                    lives.add(_spawn(config, stdin, words[1], int(words[2]), rules))
    finally:
        for pid in lives:
            os.kill(pid, signal.SIGKILL)
        for pid in lives:
            os.waitpid(pid, 0)


def _spawn(config: dict[str, Any], stdin: int, point: str, nth: int, rules: Any) -> int:
    pid = os.fork()
    if pid == 0:  # the life
        os.close(stdin)
        _die_with_parent()
        try:
            life(config, None if point == "-" else point, nth, rules)
        except BaseException as exc:  # reported, then the life ends
            say(f"error {os.getpid()} {type(exc).__name__}: {exc}".replace("\n", " "))
            logging.getLogger("harness").exception("life ended with an error")
        finally:
            os._exit(3)
    say(f"spawned {pid}")
    return pid


if __name__ == "__main__":
    zygote(json.loads(Path(sys.argv[1]).read_text()))
