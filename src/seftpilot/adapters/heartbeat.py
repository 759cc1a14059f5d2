"""Dead-man's-switch pings in the healthchecks.io style.

Owns the HTTP pings: ``{url}/start`` when a listening cycle begins, ``{url}`` when it
succeeded, ``{url}/fail`` with a short reason when it did not, each with ``?rid=<run id>``
so the monitor can pair starts with ends and measure run time. The monitor (on another
machine) raises the alarm when pings stop; choose its period as the poll interval (or
IDLE renewal) and its grace as that plus normal mail delay (see docs).

A ping is best effort: a failure is logged at WARNING and returned as ``False``, never
raised, because a broken monitor must not stop the service it monitors. The ping URL
is a credential of sorts (anyone holding it can ping): only its scheme and host are
logged. Must not send anything else: no identifiers, no mail content.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
import uuid
from typing import Literal
from urllib.parse import quote, urlsplit

from seftpilot.config import HeartbeatSettings

log = logging.getLogger(__name__)

MAX_BODY = 1000  # characters; healthchecks keeps up to 100 kB, a reason needs far less
Signal = Literal["start", "success", "fail"]


def new_run_id() -> str:
    """A run id healthchecks.io accepts (it requires a UUID)."""
    return str(uuid.uuid4())


class Heartbeat:
    """Pings the configured URL; does nothing (and returns False) when none is set."""

    def __init__(self, settings: HeartbeatSettings) -> None:
        self.timeout = settings.timeout_seconds
        self.url = settings.url.rstrip("/") if settings.url else None
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"heartbeat.url must be an http(s) URL, got scheme {parts.scheme!r}"
                )
            self._where = f"{parts.scheme}://{parts.hostname}"
        else:
            self._where = "(no heartbeat url)"

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def start(self, run_id: str) -> bool:
        return self._ping("start", run_id, "")

    def success(self, run_id: str, message: str = "") -> bool:
        return self._ping("success", run_id, message)

    def fail(self, run_id: str, reason: str) -> bool:
        return self._ping("fail", run_id, reason)

    def _target(self, signal: Signal, run_id: str) -> str:
        assert self.url is not None
        suffix = {"start": "/start", "success": "", "fail": "/fail"}[signal]
        return f"{self.url}{suffix}?rid={quote(run_id, safe='')}"

    def _ping(self, signal: Signal, run_id: str, body: str) -> bool:
        if self.url is None:
            return False
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self._target(signal, run_id),
            data=body[:MAX_BODY].encode("utf-8"),
            method="POST",
            headers={"Content-Type": "text/plain; charset=utf-8", "User-Agent": "seftpilot"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                status = int(response.status)
                response.read(1024)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            log.warning("heartbeat %s ping to %s failed: %s", signal, self._where, reason)
            return False
        if 200 <= status < 300:
            log.debug("heartbeat %s ping to %s: %d", signal, self._where, status)
            return True
        log.warning("heartbeat %s ping to %s answered HTTP %d", signal, self._where, status)
        return False
