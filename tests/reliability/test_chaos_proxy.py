"""The chaos proxy itself: it forwards faithfully when calm and each fault does what it says.

An echo server on loopback stands in for IMAP/SMTP/SFTP: the proxy understands no protocol.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.reliability.chaos_proxy import ChaosProxy, Rates


@pytest.fixture
def echo() -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            worker = threading.Thread(target=serve, args=(conn,))
            workers.append(worker)
            worker.start()

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    yield listener.getsockname()[1]
    stop.set()
    acceptor.join(5)
    listener.close()
    for worker in workers:
        worker.join(5)


def roundtrip(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


def answer(port: int, payload: bytes, timeout: float = 5.0) -> bytes | str:
    """The echoed bytes, or ``"error"`` when the connection failed under the client
    (reset, broken pipe, not connected: which one depends on who the RST reached first)."""
    try:
        return roundtrip(port, payload, timeout)
    except TimeoutError:
        return "timeout"
    except OSError:
        return "error"


def cut(result: bytes | str, payload: bytes) -> bool:
    return result == "error" or (isinstance(result, bytes) and len(result) < len(payload))


def test_calm_proxy_forwards_every_byte(echo: int) -> None:
    payload = bytes(range(256)) * 2000
    with ChaosProxy(echo, seed=1) as proxy:
        for _ in range(5):
            assert roundtrip(proxy.port, payload) == payload
        assert proxy.stats["pass"] == 5


def test_refuse_reset_and_drop_cut_the_stream_where_told(echo: int) -> None:
    payload = b"x" * 100_000
    with ChaosProxy(echo, seed=1) as proxy:
        proxy.force_next("refuse")
        # Refused before the server was dialled: reset (or, racing the RST, nothing at all).
        assert answer(proxy.port, payload) in ("error", b"")
        proxy.force_next("reset", offset=5_000)
        assert answer(proxy.port, payload) == "error"
        proxy.force_next("drop", offset=5_000)
        # A close after 5,000 bytes: a short answer, or a reset if our data was still unread.
        assert cut(answer(proxy.port, payload), payload)
        assert proxy.stats["reset_fired"] == 1
        assert proxy.stats["drop_fired"] == 1


def test_stall_delays_and_blackhole_times_out(echo: int) -> None:
    with ChaosProxy(echo, seed=1) as proxy:
        proxy.force_next("stall", offset=1, stall=0.2)
        assert roundtrip(proxy.port, b"hello") == b"hello"  # late, but whole
        proxy.force_next("blackhole")
        with pytest.raises(TimeoutError):
            roundtrip(proxy.port, b"hello", timeout=0.3)


def test_commands_reset_every_live_connection_and_pause_refuses(echo: int) -> None:
    with ChaosProxy(echo, seed=1) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        assert proxy.reset_all() == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(5)
        sock.close()
        proxy.pause()
        assert answer(proxy.port, b"x") in ("error", b"")
        proxy.resume()
        assert roundtrip(proxy.port, b"back") == b"back"


def test_random_plan_is_seeded_and_bounded(echo: int) -> None:
    def faults(seed: int) -> list[str]:
        with ChaosProxy(echo, seed=seed, rates=Rates.stormy(0.5), max_connections=30) as p:
            for _ in range(35):
                answer(p.port, b"abc" * 1000, timeout=2)
            assert p.stats["over_limit"] == 5
            return [k for k in ("refuse", "drop", "reset", "stall") for _ in range(p.stats[k])]

    assert faults(7) == faults(7)


def test_refuses_a_non_loopback_upstream() -> None:
    with pytest.raises(ValueError, match="loopback"):
        ChaosProxy(25, upstream_host="192.0.2.1")
