"""Logging setup and the last line of defence for secrets.

Owns the log format and a redacting filter. Secrets are ``SecretStr`` and never formatted
on purpose; the filter is defence in depth: every secret value the process loads is
registered here and replaced by ``***`` in any record that would carry it anyway (an
exception message quoting a server reply, say). Must not decide what to log.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable

from pydantic import SecretStr

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
# Short values would redact innocent text ("1234"); real secrets are longer.
_MIN_SECRET_LEN = 6


def register_secret(value: str | SecretStr | None) -> None:
    """Remember a secret so that no log record can carry it."""
    if value is None:
        return
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if len(text) >= _MIN_SECRET_LEN:
        with _secrets_lock:
            _secrets.add(text)


def register_secrets(values: Iterable[str | SecretStr | None]) -> None:
    for value in values:
        register_secret(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = text
        return True


def configure_logging(level: str = "INFO", *, stream: object = None) -> None:
    """Plain, greppable lines on stderr: time, level, logger, message."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"
        )
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger("seftpilot")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
