"""A chaos TCP proxy for tests: sits between seftpilot and one server on loopback and, with a
seeded random generator (or on command), refuses, drops, resets and stalls connections.

Owns only the byte pump and the faults; it understands no protocol, so the same proxy
serves IMAP, SMTP and SFTP (SSH). Each accepted connection draws one ``Fault`` from the
plan: ``pass`` (forward faithfully), ``refuse`` (closed at once, before the server is even
dialled), ``drop`` (a clean close, FIN, after a random number of bytes), ``reset`` (an RST
after a random number of bytes: SO_LINGER 0, as a NAT box or a crashed peer does),
``stall`` (stop forwarding for a while after a random number of bytes: short stalls only
slow the client down, long ones outlast its timeout) and ``blackhole`` (forward nothing,
ever, until the client gives up). The byte offset of a fault is drawn log-uniformly from
1 byte to ``max_offset`` so that greetings, handshakes, commands and bulk data are all hit.

Commands change the world at once, whatever the plan says: ``reset_all()`` (RST every live
connection), ``drop_all()``, ``stall_all(seconds)``, ``force_next(fault, ...)`` (the next
connections get exactly these faults), ``pause()`` / ``resume()`` (refuse everything, as a
server that is down) and ``set_rates`` (change the plan).

Bounded: loopback only (both the listening and the upstream address), at most
``max_connections`` connections over the proxy's life (later ones are refused and counted),
each closed after ``max_lifetime`` seconds, and ``stop()`` closes everything and joins
every thread it started within a few seconds. Must not listen beyond 127.0.0.1 / ::1.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

FAULTS = ("pass", "refuse", "drop", "reset", "stall", "blackhole")
CHUNK = 64 * 1024
POLL = 0.05  # how often a pump looks at its stop flags


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class Rates:
    """Probability of each fault per new connection (the rest pass untouched)."""

    refuse: float = 0.0
    drop: float = 0.0
    reset: float = 0.0
    stall: float = 0.0
    blackhole: float = 0.0
    # Stalls last between these many seconds (a stall longer than the client's timeout
    # becomes a timeout for it; shorter ones only slow it down).
    stall_seconds: tuple[float, float] = (0.05, 0.3)
    # Faults strike after 1..max_offset bytes (log-uniform), counting both directions:
    # from the greeting or handshake through commands to the middle of a file.
    max_offset: int = 30_000

    @classmethod
    def calm(cls) -> Rates:
        return cls()

    @classmethod
    def stormy(cls, level: float = 0.2) -> Rates:
        """``level`` of all connections hit, spread over the fault kinds."""
        return cls(
            refuse=level * 0.2,
            drop=level * 0.25,
            reset=level * 0.35,
            stall=level * 0.2,
        )

    def draw(self, rng: random.Random) -> str:
        roll = rng.random()
        for name in ("refuse", "drop", "reset", "stall", "blackhole"):
            p = getattr(self, name)
            if roll < p:
                return name
            roll -= p
        return "pass"


@dataclass
class _Conn:
    number: int
    fault: str
    offset: int
    stall: float
    client: socket.socket
    upstream: socket.socket | None = None
    moved: int = 0
    fired: bool = False
    stalled_until: float = 0.0
    closed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ChaosProxy:
    """One listening port on 127.0.0.1 forwarding to ``upstream`` (module docstring)."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        name: str = "proxy",
        seed: int = 0,
        rates: Rates | None = None,
        max_connections: int = 5_000,
        max_lifetime: float = 120.0,
    ) -> None:
        if not _loopback(upstream_host):
            raise ValueError(f"{upstream_host} is not a loopback address: the proxy stays local")
        self.name = name
        self.upstream = (upstream_host, upstream_port)
        self.rates = rates or Rates.calm()
        self.max_connections = max_connections
        self.max_lifetime = max_lifetime
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._forced: list[tuple[str, int | None, float | None]] = []
        self._conns: dict[int, _Conn] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._paused = False
        self.stats: Counter[str] = Counter()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(POLL)
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{name}-accept")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ChaosProxy:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        self._listener.close()
        for conn in self._live():
            self._close(conn, rst=True)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> ChaosProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands ----------------------------------------------------------------------------
    def set_rates(self, rates: Rates) -> None:
        with self._lock:
            self.rates = rates

    def force_next(
        self, *faults: str, offset: int | None = None, stall: float | None = None
    ) -> None:
        """The next ``len(faults)`` connections get exactly these faults."""
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; choose from {FAULTS}")
        with self._lock:
            self._forced.extend((f, offset, stall) for f in faults)

    def reset_all(self) -> int:
        """RST every live connection now; returns how many."""
        live = self._live()
        for conn in live:
            self._close(conn, rst=True)
        self.stats["cmd_reset"] += len(live)
        return len(live)

    def drop_all(self) -> int:
        live = self._live()
        for conn in live:
            self._close(conn, rst=False)
        self.stats["cmd_drop"] += len(live)
        return len(live)

    def stall_all(self, seconds: float) -> int:
        live = self._live()
        until = time.monotonic() + seconds
        for conn in live:
            conn.stalled_until = max(conn.stalled_until, until)
        self.stats["cmd_stall"] += len(live)
        return len(live)

    def pause(self) -> None:
        """Refuse every new connection (the server looks down) until ``resume``."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    @contextmanager
    def calm(self) -> Iterator[None]:
        """No random faults inside the block (what a test needs to set things up)."""
        with self._lock:
            before, self.rates = self.rates, Rates.calm()
        try:
            yield
        finally:
            with self._lock:
                self.rates = before

    def live_connections(self) -> int:
        return len(self._live())

    # -- internals ---------------------------------------------------------------------------
    def _live(self) -> list[_Conn]:
        with self._lock:
            return [c for c in self._conns.values() if not c.closed.is_set()]

    def _plan(self, number: int, client: socket.socket) -> _Conn:
        with self._lock:
            rates = self.rates
            if self._paused:
                fault, offset, stall = "refuse", None, None
            elif self._forced:
                fault, offset, stall = self._forced.pop(0)
            else:
                fault, offset, stall = rates.draw(self._rng), None, None
            if offset is None:
                offset = int(10 ** self._rng.uniform(0, max(0.0, _log10(rates.max_offset))))
            if stall is None:
                stall = self._rng.uniform(*rates.stall_seconds)
        return _Conn(number, fault, offset, stall, client)

    def _accept_loop(self) -> None:
        number = 0
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            number += 1
            self.stats["connections"] += 1
            if number > self.max_connections:
                self.stats["over_limit"] += 1
                _rst(client)
                continue
            conn = self._plan(number, client)
            self.stats[conn.fault] += 1
            if conn.fault == "refuse":
                conn.fired = True
                _rst(client)
                conn.closed.set()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                self.stats["upstream_down"] += 1
                _rst(client)
                continue
            conn.upstream = upstream
            for sock in (client, upstream):
                sock.settimeout(POLL)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns[number] = conn
                # Forget finished connections so a long run does not grow without bound.
                for done in [n for n, c in self._conns.items() if c.closed.is_set()]:
                    del self._conns[done]
                pumps = [
                    threading.Thread(
                        target=self._pump, args=(conn, a, b), name=f"{self.name}-{number}-{d}"
                    )
                    for a, b, d in ((client, upstream, "up"), (upstream, client, "down"))
                ]
                self._threads = [t for t in self._threads if t.is_alive()] + pumps
            for pump in pumps:
                pump.start()
            self._arm_lifetime(conn)

    def _arm_lifetime(self, conn: _Conn) -> None:
        def expire() -> None:
            if not conn.closed.wait(self.max_lifetime):
                self.stats["expired"] += 1
                self._close(conn, rst=False)

        timer = threading.Thread(target=expire, name=f"{self.name}-{conn.number}-life")
        with self._lock:
            self._threads.append(timer)
        timer.start()

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket) -> None:
        while not conn.closed.is_set() and not self._stop.is_set():
            if conn.fault == "blackhole" or time.monotonic() < conn.stalled_until:
                time.sleep(POLL)
                continue
            try:
                data = src.recv(CHUNK)
                # Acknowledge at once: servers that write a reply in two pieces (pymap,
                # aiosmtpd) would otherwise wait out Nagle + delayed ACK, 40 ms a reply.
                src.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                # A half close: pass it on, let the other direction finish.
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with conn.lock:
                before = conn.moved
                conn.moved += len(data)
                strike = (
                    not conn.fired and conn.fault != "pass" and before + len(data) >= conn.offset
                )
                if strike:
                    conn.fired = True
            if strike:
                cut = max(0, conn.offset - before)
                if conn.fault in ("drop", "reset"):
                    _send_all(dst, data[:cut])
                    self.stats[f"{conn.fault}_fired"] += 1
                    self._close(conn, rst=conn.fault == "reset")
                    return
                if conn.fault == "stall":
                    self.stats["stall_fired"] += 1
                    _send_all(dst, data[:cut])
                    data = data[cut:]
                    conn.stalled_until = time.monotonic() + conn.stall
                    while time.monotonic() < conn.stalled_until and not conn.closed.is_set():
                        time.sleep(min(POLL, conn.stall))
            if not _send_all(dst, data):
                break
        self._close(conn, rst=False)

    def _close(self, conn: _Conn, *, rst: bool) -> None:
        with conn.lock:
            if conn.closed.is_set():
                return
            conn.closed.set()
        for sock in (conn.client, conn.upstream):
            if sock is None:
                continue
            if rst:
                _rst(sock)
            else:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


def _log10(value: int) -> float:
    return math.log10(max(1, value))


def _send_all(sock: socket.socket, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except TimeoutError:
            continue
        except OSError:
            return False
        view = view[sent:]
    return True


def _rst(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN (SO_LINGER on, timeout 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
