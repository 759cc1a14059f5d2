"""Secrets never reach a log line, even when an exception quotes them."""

from __future__ import annotations

import io
import logging

from pydantic import SecretStr

from seftpilot.logs import configure_logging, redact, register_secret


def test_registered_secret_is_redacted_from_messages_and_tracebacks() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    register_secret(SecretStr("correct-horse-battery"))
    log = logging.getLogger("seftpilot.test")
    log.info("server said: login failed for password %s", "correct-horse-battery")
    try:
        raise ValueError("bad credentials correct-horse-battery")
    except ValueError:
        log.exception("while logging in")
    text = stream.getvalue()
    assert "correct-horse-battery" not in text
    assert text.count("***") >= 2
    assert "while logging in" in text


def test_short_values_are_not_treated_as_secrets() -> None:
    register_secret("1234")
    assert redact("port 1234") == "port 1234"
