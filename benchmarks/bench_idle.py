"""Idle service: `seftpilot watch` with nothing to do, its memory and its CPU.

Starts the sandbox's in-process IMAP and SMTP servers on loopback (in this process), runs
`seftpilot watch` against them as a separate process (IDLE on, the default rules, one
agreement with the manual transport, like tests/integration/test_watch.py), waits
``--seconds`` and samples the child's RSS (``VmRSS`` in /proc/<pid>/status) and CPU time
(utime + stime in /proc/<pid>/stat) every ``--every`` seconds after a warm-up.

Budget (DESIGN.md): RSS under 80 MB and no busy loop, reported here as CPU seconds per
wall-clock minute (a busy loop would show ~60 s/min; an idle IMAP IDLE loop ~0).

    uv run python benchmarks/bench_idle.py               # 60 s
    uv run python benchmarks/bench_idle.py --seconds 600 # the recorded run
    uv run python benchmarks/bench_idle.py --imports     # also: modules the service loads
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.site_config import watch_site  # noqa: E402

from seftpilot.sandbox.servers import ImapServer, SmtpServer  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def start_watch(
    config: Path, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEFTPILOT_")}
    env.update(extra_env or {})
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "seftpilot", "watch", "--config", str(config)],
            env=env,
            cwd=config.parent,
            stderr=handle,
            stdout=subprocess.DEVNULL,
        )


def stop_watch(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def imported_modules(config: Path) -> list[str]:
    """The top-level packages a `watch` process holds once started (run in a child)."""
    code = (
        "import sys, threading, time\n"
        "from seftpilot.cli import run\n"
        "argv = ['watch', '--config', sys.argv[1]]\n"
        "t = threading.Thread(target=run, args=(argv,), daemon=True)\n"
        "t.start(); time.sleep(8)\n"
        "tops = {}\n"
        "for name in list(sys.modules):\n"
        "    tops[name.split('.')[0]] = tops.get(name.split('.')[0], 0) + 1\n"
        "print('\\n'.join(f'{n} {c}' for n, c in sorted(tops.items(), key=lambda x: -x[1])))\n"
        "import os; os._exit(0)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEFTPILOT_")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        env=env,
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return out.stdout.splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=5.0, help="sampling period (s)")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--imports", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()
    imap = ImapServer().start()
    smtp = SmtpServer()
    with tempfile.TemporaryDirectory(prefix="seftpilot-bench-idle-") as tmp:
        config = watch_site(Path(tmp), imap, smtp)
        log = Path(tmp) / "watch.log"
        proc = start_watch(config, log)
        try:
            time.sleep(args.warmup)
            if proc.poll() is not None:
                raise SystemExit("watch exited:\n" + log.read_text())
            rss0, cpu0, t0 = rss_mb(proc.pid), cpu_seconds(proc.pid), time.monotonic()
            samples = [rss0]
            while time.monotonic() - t0 < args.seconds:
                time.sleep(args.every)
                samples.append(rss_mb(proc.pid))
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        finally:
            code = stop_watch(proc)
        wall_min = (t1 - t0) / 60
        per_min = (cpu1 - cpu0) / wall_min
        peak = max(samples)
        print(f"idle watch for {t1 - t0:.0f} s after {args.warmup:.0f} s warm-up (exit {code})")
        # The machine is shared: RSS does not depend on other load, the CPU figure can.
        print(
            "load average (1/5/15 min): before "
            + " ".join(f"{v:.2f}" for v in load_before)
            + ", after "
            + " ".join(f"{v:.2f}" for v in os.getloadavg())
        )
        print(
            f"RSS: after warm-up {rss0:.1f} MB, peak {peak:.1f} MB, end {samples[-1]:.1f} MB "
            f"(budget < 80 MB) -> {'OK' if peak < 80 else 'OVER BUDGET'}"
        )
        print(
            f"CPU: {cpu1 - cpu0:.2f} s over {wall_min:.2f} min = {per_min:.2f} CPU s per wall "
            f"minute ({per_min / 60:.2%} of one core) -> "
            f"{'no busy loop' if per_min < 3 else 'BUSY'}"
        )
        if args.imports:
            print("modules held by a started watch (top-level package: module count):")
            for line in imported_modules(config)[:25]:
                print("  " + line)
    smtp.stop()
    imap.stop()


if __name__ == "__main__":
    main()
