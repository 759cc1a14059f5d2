"""`seftpilot watch` as an operator runs it: a real process against real IMAP and SMTP
servers on loopback. Unmatched mail reaches the operator; SIGTERM ends it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from seftpilot.cli import run
from tests.fixtures.imap_server import ImapTestServer, make_message
from tests.fixtures.site_config import OPERATOR, watch_site
from tests.fixtures.smtp_server import ReceivedMail, SmtpServer


def _config(directory: Path, imap: ImapTestServer, smtp: SmtpServer) -> Path:
    # IDLE, and a 1 s poll should the server not offer it (the default 60 s would outlast
    # the alert test's 30 s wait).
    return watch_site(directory, imap, smtp, imap={"poll_interval_seconds": 1})


def _text(mail: ReceivedMail) -> str:
    body = mail.message.get_body(preferencelist=("plain",))
    return str(body.get_content()) if body is not None else ""


def _wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_watch_alerts_on_unmatched_mail_and_stops_on_sigterm(
    tmp_path: Path, imap_server: ImapTestServer, smtp_server: SmtpServer
) -> None:
    config = _config(tmp_path, imap_server, smtp_server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEFTPILOT_")}
    log_path = tmp_path / "watch.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "seftpilot", "watch", "--config", str(config)],
            env=env,
            cwd=tmp_path,
            stderr=log_file,
        )
    try:
        imap_server.append(
            make_message(1, subject="Lunch on Friday?", sender="colleague@study.example")
        )

        def alerted() -> bool:
            return any("Lunch on Friday?" in _text(m) for m in smtp_server.messages)

        try:
            _wait_for(alerted)
        except AssertionError:
            proc.kill()
            proc.wait()
            raise AssertionError("no alert mail; service said:\n" + log_path.read_text()) from None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = log_path.read_text()
    assert "service stopped" in stderr
    assert imap_server.password not in stderr
    alert = next(m for m in smtp_server.messages if "Lunch on Friday?" in _text(m))
    assert OPERATOR in alert.rcpt_tos
    assert "Mail needs you" in _text(alert)


def test_watch_once_handles_backlog_then_exits(
    tmp_path: Path,
    imap_server: ImapTestServer,
    smtp_server: SmtpServer,
    capsys: object,
) -> None:
    config = _config(tmp_path, imap_server, smtp_server)
    for n in range(3):
        imap_server.append(make_message(n, subject=f"unrelated {n}", sender="x@study.example"))
    assert run(["watch", "--once", "--json", "--config", str(config)]) == 0
    out = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert out["mail"]["fetched"] == 3 and out["mail"]["handled"] == 3
    # A second pass fetches nothing: the checkpoint holds.
    assert run(["watch", "--once", "--json", "--config", str(config)]) == 0
    out = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert out["mail"]["fetched"] == 0


def test_an_idle_watch_pass_loads_neither_sftp_nor_7z(
    tmp_path: Path, imap_server: ImapTestServer, smtp_server: SmtpServer
) -> None:
    """The idle budget (under 80 MB RSS, DESIGN.md): paramiko and py7zr, with what they pull
    in (cryptography, nacl, pycryptodomex...), load on the first transfer, not at start-up.
    They were over 20 MB of an idle watch's 77 MB when the service modules imported them at
    the top. A fresh process, so the other tests' imports do not count."""
    config = _config(tmp_path, imap_server, smtp_server)
    imap_server.append(make_message(1, subject="unrelated", sender="x@study.example"))
    heavy = ("paramiko", "py7zr", "nacl", "Cryptodome")
    code = (
        "import sys\n"
        "from seftpilot.cli import run\n"
        "code = run(['watch', '--once', '--json', '--config', sys.argv[1]])\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "print('exit', code, 'loaded', *loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEFTPILOT_")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    last = done.stdout.strip().splitlines()[-1:]
    assert last == ["exit 0 loaded"], (done.stdout[-2000:], done.stderr[-2000:])
    # The pass did run: the message was fetched and handled (the JSON line before ours).
    out = json.loads(done.stdout[: done.stdout.rindex("exit 0")])
    assert out["mail"]["fetched"] == 1 and out["mail"]["handled"] == 1
