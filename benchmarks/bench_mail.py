"""Mail intake benchmark: catch-up of a backlog, and APPEND-to-classified latency with IDLE.

Starts Dovecot (as the interop tests do: root, loopback high port, config and maildir in a
temp dir), appends a backlog cycled from sample_mail/*.eml, then in the same run measures:

- baseline: a bare script's work — imapclient fetch of every message (BODY.PEEK[] in
  batches) + mail-parser's parse of each;
- ours: ``MailIntake.catch_up()`` on a fresh ledger — fetch, parse, classify with the
  default rules, record each message (received -> handled, checkpoint) in SQLite;

printing ours / baseline per run (budget <= 1.2x; ``--repeat`` alternating runs, reported
as the median ratio with its spread and the load average, since the machine is shared;
also the ratio of this process's CPU time, which other load on the machine barely moves),
then the latency from just before an APPEND to the moment ``on_message`` sees the message
classified, with the intake IDLE-ing in its own thread (p50/p95 over ``--samples``; budget
p95 < 1 s).

    uv run python benchmarks/bench_mail.py                   # 2,000 messages
    uv run python benchmarks/bench_mail.py --messages 10000  # the budget run (5 pairs)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import mailparser  # noqa: E402
from imapclient import IMAPClient  # noqa: E402
from tests.fixtures.imap_server import DovecotServer  # noqa: E402

from seftpilot.adapters.clock import SystemClock  # noqa: E402
from seftpilot.adapters.imap import DEFAULT_FETCH_BATCH, ImapMailbox  # noqa: E402
from seftpilot.adapters.rules_files import default_rules_path, load_rules  # noqa: E402
from seftpilot.adapters.store import Store  # noqa: E402
from seftpilot.config import Settings  # noqa: E402
from seftpilot.service.intake import MailIntake  # noqa: E402

BATCH = 250


def corpus() -> list[bytes]:
    files = sorted((REPO / "sample_mail").glob("*.eml"))
    if not files:
        raise SystemExit("sample_mail/*.eml not found")
    return [f.read_bytes() for f in files]


def fill(server: DovecotServer, count: int) -> None:
    mails = corpus()
    client = server.client()
    try:
        for n in range(count):
            client.append("INBOX", mails[n % len(mails)])
    finally:
        client.logout()


def warm(server: DovecotServer) -> None:
    """Let Dovecot build its index and cache before anything is timed."""
    client = server.client()
    try:
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["ALL"])
        for start in range(0, len(uids), BATCH):
            client.fetch(uids[start : start + BATCH], [b"BODY.PEEK[]", b"RFC822.SIZE"])
    finally:
        client.logout()


def baseline(server: DovecotServer) -> tuple[float, float, int]:
    started, cpu = time.perf_counter(), time.process_time()
    client = IMAPClient(server.host, server.port, ssl=False, timeout=60)
    client.login(server.username, server.password)
    client.select_folder("INBOX", readonly=True)
    uids = client.search(["ALL"])
    parsed = 0
    for start in range(0, len(uids), BATCH):
        response = client.fetch(uids[start : start + BATCH], [b"BODY.PEEK[]", b"RFC822.SIZE"])
        for uid in uids[start : start + BATCH]:
            mailparser.parse_from_bytes(response[uid][b"BODY[]"])
            parsed += 1
    client.logout()
    return time.perf_counter() - started, time.process_time() - cpu, parsed


def ours(
    server: DovecotServer, state: Path, fetch_batch: int
) -> tuple[float, float, int, MailIntake, Store]:
    settings = Settings(state_dir=state, imap=server.settings())
    ruleset = load_rules([default_rules_path()])
    store = Store(state)
    mailbox = ImapMailbox(settings.imap, fetch_batch=fetch_batch)
    intake = MailIntake(settings, store, ruleset, SystemClock(), mailbox=mailbox)
    started, cpu = time.perf_counter(), time.process_time()
    report = intake.catch_up()
    elapsed = time.perf_counter() - started
    return elapsed, time.process_time() - cpu, report.handled + report.failed, intake, store


def latency(server: DovecotServer, intake: MailIntake, samples: int) -> list[float]:
    seen: dict[str, float] = {}
    arrived = threading.Condition()

    def on_message(record, message, classification) -> None:  # type: ignore[no-untyped-def]
        with arrived:
            seen[message.subject] = time.perf_counter()
            arrived.notify_all()

    intake.on_message = on_message
    intake.close()
    stop = threading.Event()
    runner = threading.Thread(target=intake.run, args=(stop,), daemon=True)
    runner.start()
    client = server.client()
    results: list[float] = []
    try:
        time.sleep(1.0)  # let the runner connect, catch up and enter IDLE
        for n in range(samples):
            subject = f"Latency probe {n}"
            raw = (
                f"From: NHS England <enquiries@nhsdigital.nhs.uk>\r\nTo: study@example.org\r\n"
                f"Subject: {subject}\r\nMessage-ID: <probe-{n}-{time.time_ns()}@bench>\r\n"
                f"Date: Mon, 05 Jan 2026 09:00:00 +0000\r\n\r\nThere is new data.\r\n"
            ).encode()
            sent = time.perf_counter()
            client.append("INBOX", raw)
            with arrived:
                if not arrived.wait_for(lambda s=subject: s in seen, timeout=30):
                    raise SystemExit(f"{subject} was not classified within 30 s")
            results.append(seen[subject] - sent)
            time.sleep(0.05)
    finally:
        client.logout()
        stop.set()
        runner.join(15)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=50)
    # Five alternating pairs: on the shared 2-core machine a single pair can swing by
    # +-0.3x either way (whichever process shares a core with other work), the median less.
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fetch-batch", type=int, default=DEFAULT_FETCH_BATCH)
    parser.add_argument("--dovecot", default=shutil.which("dovecot") or "/usr/sbin/dovecot")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="seftpilot-bench-mail-", dir="/tmp"))
    root.chmod(0o755)  # Dovecot's unprivileged processes must reach the maildir below
    server = DovecotServer(args.dovecot, root / "dovecot").start()
    try:
        t0 = time.perf_counter()
        fill(server, args.messages)
        print(f"appended {args.messages} messages in {time.perf_counter() - t0:.1f} s")
        warm(server)
        load_before = os.getloadavg()[0]
        base_times: list[float] = []
        our_times: list[float] = []
        cpu_ratios: list[float] = []
        last = None
        for run in range(args.repeat):
            b, bcpu, nb = baseline(server)
            if last is not None:
                last[1].close()
            o, ocpu, no, intake, store = ours(server, root / f"state-{run}", args.fetch_batch)
            last = (intake, store)
            assert nb == no == args.messages, (nb, no)
            base_times.append(b)
            our_times.append(o)
            cpu_ratios.append(ocpu / bcpu)
            print(
                f"run {run + 1}: baseline {b:.2f} s ({nb / b:,.0f} msg/s), "
                f"ours {o:.2f} s ({no / o:,.0f} msg/s), ratio {o / b:.2f}x; "
                f"CPU of this process {bcpu:.2f} s vs {ocpu:.2f} s, {ocpu / bcpu:.2f}x"
            )
        ratios = sorted(o / b for o, b in zip(our_times, base_times, strict=True))
        median = statistics.median(ratios)
        best = min(our_times) / min(base_times)
        print(
            f"catch-up ratio over {args.repeat} runs: median {median:.2f}x "
            f"(spread {ratios[0]:.2f}-{ratios[-1]:.2f}x; best-of {best:.2f}x; fetch batch "
            f"{args.fetch_batch}; 1-min load average {load_before:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after) (budget <= 1.2x) -> "
            f"{'OK' if median <= 1.2 else 'OVER BUDGET'}"
        )
        cpu_ratios.sort()
        print(
            f"CPU-time ratio (this process only: Dovecot's share, the same for both, is left "
            f"out, so this exaggerates any difference; steadier under load): median "
            f"{statistics.median(cpu_ratios):.2f}x (spread {cpu_ratios[0]:.2f}-"
            f"{cpu_ratios[-1]:.2f}x)"
        )
        assert last is not None
        lat = latency(server, last[0], args.samples)
        last[1].close()
        lat.sort()
        p50 = statistics.median(lat)
        p95 = lat[min(len(lat) - 1, round(0.95 * len(lat)) - 1)]
        print(
            f"APPEND-to-classified with IDLE over {len(lat)} appends: p50 {p50 * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms (budget p95 < 1000 ms) -> "
            f"{'OK' if p95 < 1 else 'OVER BUDGET'}"
        )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
