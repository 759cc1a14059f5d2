"""The IMAP boundary's exception map is complete (in the spirit of httpx's mapping tests).

Every exception type ``ImapMailbox`` catches, and every subclass of those that the wrapped
libraries define, becomes a seftpilot error of the right kind; nothing we catch falls
through unmapped, and nothing we do not catch is silently swallowed.
"""

from __future__ import annotations

import builtins
import imaplib
import inspect
import socket
import ssl

import pytest
from imapclient import exceptions as imapx

from seftpilot.adapters.imap import CAUGHT, EXCEPTION_MAP, map_exception
from seftpilot.errors import (
    AuthenticationError,
    PermanentError,
    TLSVerificationError,
    TransientError,
    TransportError,
)

SERVER = "imap.example.org:993"


def _library_exceptions() -> list[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for module in (ssl, imaplib, imapx, socket, builtins):
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException):
                found.add(value)
    found.update({imaplib.IMAP4.error, imaplib.IMAP4.abort, imaplib.IMAP4.readonly})
    return sorted(found, key=lambda t: f"{t.__module__}.{t.__qualname__}")


def _instance(kind: type[BaseException]) -> BaseException:
    try:
        return kind("boom")
    except TypeError:
        return kind.__new__(kind)


@pytest.mark.parametrize("kind", [k for k, _ in EXCEPTION_MAP], ids=lambda k: k.__name__)
def test_every_row_of_the_map_produces_a_transport_error_naming_the_server(
    kind: type[BaseException],
) -> None:
    mapped = map_exception(_instance(kind), SERVER)
    assert isinstance(mapped, TransportError)
    assert mapped.server == SERVER
    assert SERVER in str(mapped)


def test_every_library_exception_we_catch_is_mapped() -> None:
    caught = [k for k in _library_exceptions() if issubclass(k, CAUGHT)]
    assert len(caught) > 30  # the enumeration really found the libraries' exceptions
    for kind in caught:
        assert isinstance(map_exception(_instance(kind), SERVER), TransportError), kind


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ssl.SSLCertVerificationError("certificate verify failed"), TLSVerificationError),
        (ssl.SSLEOFError("EOF"), TransientError),
        (ssl.SSLError("wrong version number"), PermanentError),
        (imapx.LoginError("[AUTHENTICATIONFAILED] Invalid credentials"), AuthenticationError),
        (imapx.LoginError("[UNAVAILABLE] Temporary authentication failure."), TransientError),
        (imaplib.IMAP4.abort("socket error: EOF"), TransientError),
        (imaplib.IMAP4.error("SELECT failed: [NONEXISTENT] no such mailbox"), PermanentError),
        (imaplib.IMAP4.error("NO [UNAVAILABLE] try again later"), TransientError),
        (imaplib.IMAP4.readonly("read-only"), PermanentError),
        (imapx.CapabilityError("Server does not support STARTTLS"), PermanentError),
        (TimeoutError("timed out"), TransientError),
        (ConnectionResetError(104, "reset"), TransientError),
        (BrokenPipeError(32, "broken pipe"), TransientError),
        (ConnectionRefusedError(111, "refused"), TransientError),
        (socket.gaierror(-2, "Name or service not known"), TransientError),
        (OSError(101, "Network is unreachable"), TransientError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
def test_the_kind_each_failure_becomes(exc: BaseException, expected: type[Exception]) -> None:
    mapped = map_exception(exc, SERVER)
    assert type(mapped) is expected


def test_an_exception_we_do_not_catch_is_not_silently_mapped() -> None:
    assert not issubclass(ValueError, CAUGHT)
    with pytest.raises(TypeError):
        map_exception(ValueError("a bug of ours"), SERVER)
