"""Interop with OpenSSH's sshd (internal-sftp): upload via temp name + rename, list,
download, host key pinning, against the real server on a loopback high port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seftpilot.adapters.sftp import SftpClient
from seftpilot.errors import AuthenticationError, HostKeyError
from tests.fixtures.sftp_server import OpenSshd, known_hosts_line, write_key_pair

pytestmark = pytest.mark.interop


def test_upload_rename_list_download(openssh_server: OpenSshd, tmp_path: Path) -> None:
    local = tmp_path / "isaric-2025-01-01-1.7z"
    local.write_bytes(os.urandom(5_000_000))
    with SftpClient(openssh_server.endpoint()) as client:
        result = client.upload(local, local.name)
        assert not result.already_present
        listing = client.list()
        assert [(f.name, f.size) for f in listing] == [(local.name, local.stat().st_size)]
        again = client.upload(local, local.name)
        assert again.already_present
        back = tmp_path / "back" / "copy.7z"
        got = client.download(local.name, back, expected_size=local.stat().st_size)
    assert back.read_bytes() == local.read_bytes()
    assert got.size == local.stat().st_size
    assert (openssh_server.root / local.name).read_bytes() == local.read_bytes()
    assert sorted(p.name for p in openssh_server.root.iterdir()) == [local.name]


def test_overwrite_uses_posix_rename(openssh_server: OpenSshd, tmp_path: Path) -> None:
    local = tmp_path / "file.csv"
    local.write_bytes(b"new contents\n")
    (openssh_server.root / "file.csv").write_bytes(b"old\n")
    with SftpClient(openssh_server.endpoint()) as client:
        client.upload(local, "file.csv", overwrite=True)
    assert (openssh_server.root / "file.csv").read_bytes() == b"new contents\n"


def test_unknown_and_changed_host_keys_are_refused(
    openssh_server: OpenSshd, tmp_path: Path
) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError, match=f"ssh-keyscan -p {openssh_server.port} 127.0.0.1"):
        SftpClient(openssh_server.endpoint(known_hosts=empty)).connect()
    impostor, _ = write_key_pair(tmp_path, "impostor")
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(known_hosts_line("127.0.0.1", openssh_server.port, impostor))
    with pytest.raises(HostKeyError, match="CHANGED"):
        SftpClient(openssh_server.endpoint(known_hosts=changed)).connect()


def test_unauthorised_key_is_refused(openssh_server: OpenSshd, tmp_path: Path) -> None:
    _, stranger = write_key_pair(tmp_path, "stranger")
    with pytest.raises(AuthenticationError):
        SftpClient(openssh_server.endpoint(key_file=stranger)).connect()
