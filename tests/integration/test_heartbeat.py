"""Heartbeat pings against a real HTTP server on loopback (http.server in a thread)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from seftpilot.adapters.heartbeat import Heartbeat, new_run_id
from seftpilot.config import HeartbeatSettings


@dataclass
class Ping:
    method: str
    path: str
    query: dict[str, list[str]]
    body: str


@dataclass
class PingServer:
    url: str
    pings: list[Ping] = field(default_factory=list)
    status: int = 200
    hang: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def ping_server() -> Iterator[PingServer]:
    state = PingServer(url="")
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8")
            parts = urlsplit(self.path)
            state.pings.append(Ping("POST", parts.path, parse_qs(parts.query), body))
            if state.hang.is_set():
                release.wait(10)  # longer than the client's timeout
                return
            self.send_response(state.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/ping/abc-123"
    yield state
    release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_start_success_fail_hit_healthchecks_paths_with_run_id(ping_server: PingServer) -> None:
    hb = Heartbeat(HeartbeatSettings(url=ping_server.url + "/", timeout_seconds=5))
    rid = new_run_id()
    assert hb.start(rid) is True
    assert hb.success(rid, "polled INBOX, 0 new") is True
    assert hb.fail(rid, "IMAP login refused by imap.example:993") is True

    assert [p.path for p in ping_server.pings] == [
        "/ping/abc-123/start",
        "/ping/abc-123",
        "/ping/abc-123/fail",
    ]
    assert all(p.method == "POST" and p.query == {"rid": [rid]} for p in ping_server.pings)
    assert ping_server.pings[2].body == "IMAP login refused by imap.example:993"


def test_long_reason_is_truncated(ping_server: PingServer) -> None:
    hb = Heartbeat(HeartbeatSettings(url=ping_server.url, timeout_seconds=5))
    assert hb.fail(new_run_id(), "x" * 50_000)
    assert 0 < len(ping_server.pings[0].body) <= 1000


def test_http_error_is_logged_and_returns_false(
    ping_server: PingServer, caplog: pytest.LogCaptureFixture
) -> None:
    ping_server.status = 500
    hb = Heartbeat(HeartbeatSettings(url=ping_server.url, timeout_seconds=5))
    with caplog.at_level(logging.WARNING, logger="seftpilot"):
        assert hb.success(new_run_id()) is False
    assert "HTTP 500" in caplog.text
    # The ping path identifies the check (anyone holding it can ping): not logged.
    assert "abc-123" not in caplog.text


def test_unreachable_monitor_returns_false() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/ping/x"
        assert Heartbeat(HeartbeatSettings(url=url, timeout_seconds=5)).start(new_run_id()) is False


def test_timeout_returns_false(ping_server: PingServer) -> None:
    ping_server.hang.set()
    hb = Heartbeat(HeartbeatSettings(url=ping_server.url, timeout_seconds=0.3))
    assert hb.start(new_run_id()) is False
    assert len(ping_server.pings) == 1


def test_no_url_configured_is_disabled_and_quiet(caplog: pytest.LogCaptureFixture) -> None:
    hb = Heartbeat(HeartbeatSettings())
    with caplog.at_level(logging.DEBUG, logger="seftpilot"):
        assert hb.enabled is False
        assert hb.success(new_run_id()) is False
    assert caplog.text == ""


def test_non_http_url_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        Heartbeat(HeartbeatSettings(url="file:///etc/passwd"))
