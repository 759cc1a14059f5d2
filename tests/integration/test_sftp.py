"""SftpClient against the in-process asyncssh server: pinning, auth, temp+rename, drops."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from seftpilot.adapters.sftp import SftpClient
from seftpilot.errors import (
    AuthenticationError,
    ConfigError,
    HostKeyError,
    PermanentError,
    TransientError,
)
from tests.fixtures.sftp_server import InProcessSftpServer, known_hosts_line, write_key_pair


def _payload(tmp_path: Path, name: str = "isaric-2025-01-01-1.7z", size: int = 3_000_000) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def test_upload_goes_through_a_temporary_name_and_lands_whole(
    sftp_server: InProcessSftpServer, tmp_path: Path
) -> None:
    local = _payload(tmp_path)
    seen: list[tuple[int, int]] = []
    with SftpClient(sftp_server.endpoint()) as client:
        result = client.upload(local, local.name, progress=lambda d, t: seen.append((d, t)))
        listing = client.list()
    assert not result.already_present
    assert result.size == local.stat().st_size
    assert [f.name for f in listing] == [local.name]  # the temporary name is gone
    assert listing[0].size == local.stat().st_size
    assert (sftp_server.root / local.name).read_bytes() == local.read_bytes()
    assert seen[-1] == (local.stat().st_size, local.stat().st_size)


def test_password_authentication_works_and_a_wrong_password_is_refused(
    sftp_server: InProcessSftpServer,
) -> None:
    with SftpClient(sftp_server.endpoint(auth="password")) as client:
        assert client.list() == []
    from pydantic import SecretStr

    bad = sftp_server.endpoint(auth="password", password=SecretStr("not the password"))
    with pytest.raises(AuthenticationError) as caught, SftpClient(bad):
        pass
    assert "not the password" not in str(caught.value)
    assert caught.value.server == f"127.0.0.1:{sftp_server.port}"


def test_unknown_host_key_is_refused_with_the_pinning_hint(
    sftp_server: InProcessSftpServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError) as caught, SftpClient(sftp_server.endpoint(known_hosts=empty)):
        pass
    text = str(caught.value)
    assert f"ssh-keyscan -p {sftp_server.port} 127.0.0.1 >> {empty}" in text
    # The offered key's fingerprint is printed, so it can be compared out of band.
    fingerprint = sftp_server.host_key.get_fingerprint("sha256")
    assert fingerprint in text
    assert list(sftp_server.root.iterdir()) == []


def test_missing_known_hosts_file_is_refused_like_an_unknown_key(
    sftp_server: InProcessSftpServer, tmp_path: Path
) -> None:
    with (
        pytest.raises(HostKeyError, match="ssh-keyscan"),
        SftpClient(sftp_server.endpoint(known_hosts=tmp_path / "absent")),
    ):
        pass


def test_changed_host_key_is_refused_naming_both_fingerprints(
    sftp_server: InProcessSftpServer, tmp_path: Path
) -> None:
    other, _ = write_key_pair(tmp_path, "impostor")
    pinned = tmp_path / "known_hosts"
    pinned.write_text(known_hosts_line("127.0.0.1", sftp_server.port, other))
    with (
        pytest.raises(HostKeyError) as caught,
        SftpClient(sftp_server.endpoint(known_hosts=pinned)),
    ):
        pass
    text = str(caught.value)
    assert "CHANGED" in text
    assert other.get_fingerprint("sha256") in text
    assert sftp_server.host_key.get_fingerprint("sha256") in text


def test_drop_mid_upload_never_leaves_the_final_name_and_a_retry_completes(
    sftp_server: InProcessSftpServer, tmp_path: Path
) -> None:
    local = _payload(tmp_path, size=4_000_000)
    sftp_server.drop_after_bytes = 1_500_000
    with pytest.raises(TransientError), SftpClient(sftp_server.endpoint()) as client:
        client.upload(local, local.name)
    assert sftp_server.drops == 1
    names = sorted(p.name for p in sftp_server.root.iterdir())
    assert local.name not in names
    assert all(not n.startswith("isaric-") for n in names)
    # The next attempt restarts the temporary file and completes.
    with SftpClient(sftp_server.endpoint()) as client:
        result = client.upload(local, local.name)
        assert [f.name for f in client.list()] == [local.name]
    assert not result.already_present
    assert (sftp_server.root / local.name).read_bytes() == local.read_bytes()


def test_a_retry_that_finds_the_file_already_there_sends_nothing(
    sftp_server: InProcessSftpServer, tmp_path: Path
) -> None:
    local = _payload(tmp_path)
    with SftpClient(sftp_server.endpoint()) as client:
        client.upload(local, local.name)
        before = sftp_server.bytes_written
        again = client.upload(local, local.name)
    assert again.already_present
    assert sftp_server.bytes_written == before


def test_a_different_file_under_the_final_name_is_not_overwritten(
    sftp_server: InProcessSftpServer, tmp_path: Path
) -> None:
    local = _payload(tmp_path)
    (sftp_server.root / local.name).write_bytes(b"someone else's file")
    with (
        pytest.raises(PermanentError, match="already exists"),
        SftpClient(sftp_server.endpoint()) as client,
    ):
        client.upload(local, local.name)
    assert (sftp_server.root / local.name).read_bytes() == b"someone else's file"
    with SftpClient(sftp_server.endpoint()) as client:
        client.upload(local, local.name, overwrite=True)
    assert (sftp_server.root / local.name).read_bytes() == local.read_bytes()


@pytest.mark.parametrize("temp_name", ["isaric-upload.part", "x/y.part", "same.7z"])
def test_temporary_names_the_router_would_pick_up_are_rejected(
    sftp_server: InProcessSftpServer, tmp_path: Path, temp_name: str
) -> None:
    local = _payload(tmp_path, name="same.7z", size=10)
    with SftpClient(sftp_server.endpoint()) as client, pytest.raises(ValueError):
        client.upload(local, "same.7z", temp_name=temp_name)
    assert list(sftp_server.root.iterdir()) == []


def test_list_download_and_refetch(sftp_server: InProcessSftpServer, tmp_path: Path) -> None:
    data = os.urandom(2_500_000)
    (sftp_server.root / "NIC-402963-P0Y5D_data_1.csv").write_bytes(data)
    (sftp_server.root / "sub").mkdir()
    local = tmp_path / "in" / "file.csv"
    with SftpClient(sftp_server.endpoint()) as client:
        listing = client.list()
        assert [(f.name, f.size) for f in listing] == [("NIC-402963-P0Y5D_data_1.csv", len(data))]
        got = client.download(
            listing[0].name,
            local,
            expected_size=len(data),
            expected_sha256=hashlib.sha256(data).hexdigest(),
        )
        assert got.attempts == 1
        assert local.read_bytes() == data
        assert local.stat().st_mode & 0o777 == 0o600
        # A checksum that cannot match: fetched again, then refused, no file left behind.
        other = tmp_path / "in" / "other.csv"
        with pytest.raises(TransientError, match="after 2 attempts"):
            client.download(listing[0].name, other, expected_sha256="0" * 64)
        assert not other.exists()
        assert sorted(p.name for p in other.parent.iterdir()) == ["file.csv"]
        assert client.stat("absent.csv") is None
        with pytest.raises(PermanentError, match="ENOENT"):
            client.download("absent.csv", tmp_path / "absent.csv")
        client.remove("NIC-402963-P0Y5D_data_1.csv")
        assert client.list() == []


def test_encrypted_client_key_needs_its_passphrase(
    sftp_server: InProcessSftpServer, tmp_path: Path
) -> None:
    from pydantic import SecretStr

    key_file = tmp_path / "enc_key"
    key_file.write_bytes(
        sftp_server.client_key.export_private_key("openssh", passphrase="key secret")
    )
    with SftpClient(
        sftp_server.endpoint(key_file=key_file, key_passphrase=SecretStr("key secret"))
    ) as client:
        assert client.list() == []
    with (
        pytest.raises(ConfigError, match="key_passphrase"),
        SftpClient(sftp_server.endpoint(key_file=key_file)),
    ):
        pass


def test_unreachable_server_is_transient(tmp_path: Path) -> None:
    from seftpilot.config import SftpEndpoint
    from tests.fixtures.sftp_server import free_port

    endpoint = SftpEndpoint(
        host="127.0.0.1",
        port=free_port(),
        username="u",
        password="p",  # type: ignore[arg-type]
        known_hosts=tmp_path / "kh",
        timeout_seconds=2,
    )
    with pytest.raises(TransientError) as caught, SftpClient(endpoint):
        pass
    assert caught.value.server == f"127.0.0.1:{endpoint.port}"
