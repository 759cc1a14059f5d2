"""Every exception type the SFTP adapter catches maps into seftpilot's tree (and a new
caught type without a row here fails the first test)."""

from __future__ import annotations

import errno
import socket

import paramiko
import pytest

from seftpilot.adapters.sftp import CAUGHT, map_exception
from seftpilot.errors import (
    AuthenticationError,
    HostKeyError,
    PermanentError,
    TransientError,
    TransportError,
)

EXAMPLES: dict[type[BaseException], tuple[BaseException, type[TransportError]]] = {
    paramiko.BadHostKeyException: (
        paramiko.BadHostKeyException(
            "h", paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
        ),
        HostKeyError,
    ),
    paramiko.AuthenticationException: (
        paramiko.AuthenticationException("Authentication failed."),
        AuthenticationError,
    ),
    paramiko.ssh_exception.IncompatiblePeer: (
        paramiko.ssh_exception.IncompatiblePeer("no acceptable ciphers"),
        PermanentError,
    ),
    paramiko.ChannelException: (paramiko.ChannelException(2, "refused"), TransientError),
    paramiko.SFTPError: (paramiko.SFTPError("Expected handle"), PermanentError),
    paramiko.SSHException: (
        paramiko.SSHException("Error reading SSH protocol banner"),
        TransientError,
    ),
    EOFError: (EOFError(), TransientError),
    socket.gaierror: (socket.gaierror(-2, "Name or service not known"), TransientError),
    TimeoutError: (TimeoutError("timed out"), TransientError),
    ConnectionError: (ConnectionResetError(104, "Connection reset by peer"), TransientError),
    OSError: (OSError(errno.ENOENT, "No such file"), PermanentError),
}


def test_every_caught_type_has_a_mapping_example() -> None:
    assert set(EXAMPLES) == set(CAUGHT)


@pytest.mark.parametrize("caught", list(EXAMPLES), ids=lambda t: t.__name__)
def test_each_caught_type_maps_into_our_tree(caught: type[BaseException]) -> None:
    example, expected = EXAMPLES[caught]
    assert isinstance(example, caught)
    mapped = map_exception(example, "sftp.example:22", "upload x")
    assert type(mapped) is expected
    assert mapped.server == "sftp.example:22"
    assert "sftp.example:22" in str(mapped)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.EACCES, PermanentError),
        (errno.ENOSPC, PermanentError),
        (errno.EEXIST, PermanentError),
        (errno.EIO, TransientError),
        (None, TransientError),  # paramiko's bare "Failure" status
    ],
)
def test_os_errors_split_by_errno(code: int | None, expected: type[TransportError]) -> None:
    exc = OSError(code, "x") if code is not None else OSError("Failure")
    assert type(map_exception(exc, "s:22")) is expected


def test_host_key_mapping_names_both_fingerprints() -> None:
    got, pinned = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    mapped = map_exception(paramiko.BadHostKeyException("h", got, pinned), "s:22")
    assert got.fingerprint in str(mapped)
    assert pinned.fingerprint in str(mapped)
