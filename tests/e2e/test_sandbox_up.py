"""`seftpilot sandbox up` in its own process: the settings it writes work with the real
service command, mail lands where an operator can look, and SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def _reader(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line.rstrip("\n"))


def _wait_for(lines: queue.Queue[str], seen: list[str], text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in seen):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{text!r} never appeared in:\n" + "\n".join(seen)
        try:
            seen.append(lines.get(timeout=remaining))
        except queue.Empty:
            pass


def test_sandbox_up_writes_settings_the_service_uses(tmp_path: Path) -> None:
    where = tmp_path / "sandbox"
    proc = subprocess.Popen(
        [sys.executable, "-m", "seftpilot", "sandbox", "up", "--dir", str(where)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    reader = threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        _wait_for(lines, seen, "Stop the sandbox with Ctrl-C")
        toml = where / "seftpilot.toml"
        env = where / ".env"
        assert env.stat().st_mode & 0o777 == 0o600
        assert toml.stat().st_mode & 0o777 == 0o600
        secret = env.read_text().strip().partition("SEFTPILOT_IMAP__PASSWORD=")[2]
        assert len(secret) >= 16
        assert secret not in toml.read_text()
        assert "127.0.0.1" in toml.read_text()

        # The real service, one pass, from the sandbox directory (its .env has the password).
        once = subprocess.run(
            [sys.executable, "-m", "seftpilot", "watch", "--once", "--json", "--config", str(toml)],
            check=False,
            cwd=where,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert once.returncode == 0, once.stderr
        result = json.loads(once.stdout)
        assert result["jobs_failing"] == {}
        # Its digest went through the sandbox's SMTP into the operator's folder.
        _wait_for(lines, seen, "-> Operator: [seftpilot] digest")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        reader.join(timeout=10)  # the pipe is at its end once the process has gone
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0
    assert where.exists()  # --dir is kept
