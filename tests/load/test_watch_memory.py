"""No memory growth over a long watch (slow: run with --run-slow or SEFTPILOT_SLOW=1).

`seftpilot watch` runs as an operator runs it (a separate process, IDLE on the in-process
IMAP server, alerts through the in-process SMTP server) while mail is appended steadily:
a mix of the sample NHS notices and unrelated mail, each one unique. Its RSS is sampled
from /proc/<pid>/status. After a warm-up (the first quarter of the run: imports, caches,
SQLite page cache, the first alerts), RSS may not grow by more than ``GROWTH_MB``: a leak
of even a few KB per message would show over the hundreds of messages appended.

Every appended message must be recorded in the ledger exactly once, too.

``SEFTPILOT_SOAK_SECONDS`` sets the length (default 180 s; the recorded run was longer,
see docs/RELIABILITY.md).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from benchmarks.bench_idle import rss_mb

from tests.fixtures.imap_server import ImapTestServer
from tests.fixtures.site_config import watch_site
from tests.fixtures.smtp_server import SmtpServer

REPO = Path(__file__).resolve().parents[2]
GROWTH_MB = 10.0
# Read at import: the autouse fixture clears SEFTPILOT_* before each test body runs.
SOAK_SECONDS = float(os.environ.get("SEFTPILOT_SOAK_SECONDS", "180"))
SAMPLES = sorted((REPO / "sample_mail").glob("*.eml"))


def _unique(raw: bytes, n: int) -> bytes:
    """A sample message made unique (its own Message-ID) so each is a new message."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    lines = [ln for ln in head.splitlines() if not ln.lower().startswith(b"message-id:")]
    lines.append(b"Message-ID: <soak-%d@load.example>" % n)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rss_does_not_grow_over_a_long_watch(
    tmp_path: Path, imap_server: ImapTestServer, smtp_server: SmtpServer
) -> None:
    seconds = SOAK_SECONDS
    config = watch_site(tmp_path, imap_server, smtp_server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEFTPILOT_")}
    log = tmp_path / "watch.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "seftpilot", "watch", "--config", str(config)],
            env=env,
            cwd=tmp_path,
            stderr=handle,
            stdout=subprocess.DEVNULL,
        )
    corpus = [p.read_bytes() for p in SAMPLES]
    samples: list[tuple[float, float]] = []
    appended = 0
    try:
        started = time.monotonic()
        next_sample = started
        while (now := time.monotonic()) - started < seconds:
            assert proc.poll() is None, log.read_text()
            imap_server.append(_unique(corpus[appended % len(corpus)], appended))
            appended += 1
            if now >= next_sample:
                samples.append((now - started, rss_mb(proc.pid)))
                next_sample = now + 2
            time.sleep(0.25)
        # Let the service catch up with the last messages before counting them.
        db = tmp_path / "state" / "seftpilot.sqlite3"
        deadline = time.monotonic() + 60
        recorded = 0
        while time.monotonic() < deadline:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                recorded = conn.execute("SELECT count(*) FROM mail_messages").fetchone()[0]
            if recorded >= appended:
                break
            time.sleep(1)
        samples.append((time.monotonic() - started, rss_mb(proc.pid)))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert recorded == appended, (recorded, appended, log.read_text()[-2000:])
    warm = [rss for t, rss in samples if t >= seconds / 4]
    growth = max(warm) - warm[0]
    report = ", ".join(f"{t:.0f}s:{rss:.1f}" for t, rss in samples[:: max(1, len(samples) // 12)])
    print(f"\n{appended} messages in {seconds:.0f} s; RSS MB {report}; growth {growth:.1f} MB")
    assert growth < GROWTH_MB, report
