"""Path traversal through file names a server (or a mail) chooses.

SEFT's download area is listed over SFTP and every listed file is downloaded into the
delivery's work dir under its listed name. A hostile or broken server can list a name
with a path in it (``../../x``, ``/etc/x``, ``a/../../x``): the collection must refuse
it, never write outside the work dir. Attachment names in mail are data only: nothing in
seftpilot writes an attachment to disk under its name (the intake records sizes and
hashes), which the test of the whole intake path in test_header_injection also checks.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import asyncssh
import pytest

from seftpilot.adapters.sftp import SftpClient
from seftpilot.errors import PermanentError
from seftpilot.sandbox.servers import SftpServer, _DroppingSftp, _Server
from seftpilot.service import collect

PAYLOAD = b"EVIL\n"


class _ListsHostileNames(_DroppingSftp):
    """The real directory listing, plus the owner's ``hostile`` names as regular files."""

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        async for entry in super().scandir(path):
            yield entry
        owner: HostileServer = self._owner  # type: ignore[assignment]
        for name in owner.hostile:
            attrs = asyncssh.SFTPAttrs(
                type=asyncssh.FILEXFER_TYPE_REGULAR,
                size=len(PAYLOAD),
                permissions=0o100644,
                mtime=1_700_000_000,
            )
            yield asyncssh.SFTPName(name.encode(), attrs=attrs)


class HostileServer(SftpServer):
    hostile: tuple[str, ...] = ()

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            self.host,
            0,
            server_host_keys=[self.host_key],
            server_factory=lambda: _Server(self),
            sftp_factory=lambda chan: _ListsHostileNames(chan, self),
            allow_scp=False,
            keepalive_interval=0,
        )


@pytest.fixture
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileServer]:
    server = HostileServer(tmp_path_factory.mktemp("hostile-sftp"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _plant(server: HostileServer, name: str) -> None:
    """Make the name resolvable on the (chrooted) server, so a download would succeed."""
    target = server.root / os.path.normpath(name.lstrip("/"))
    if not str(target.resolve()).startswith(str(server.root.resolve())):
        target = server.root / Path(name).name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(PAYLOAD)


def _files_outside(base: Path, work: Path) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and work not in p.parents]


@pytest.mark.parametrize(
    "name",
    ["sub/../../../escape.csv", "/ABS/escape.csv", "a/b.csv", "NIC402963/../../x.csv"],
)
def test_a_listed_name_with_a_path_is_refused_and_nothing_lands_outside(
    tmp_path: Path, hostile: HostileServer, name: str
) -> None:
    if name.startswith("/ABS"):
        name = str(tmp_path / "outside" / "escape.csv")
    hostile.hostile = (name,)
    _plant(hostile, name)
    (hostile.root / "NIC402963_HES_001.csv").write_bytes(b"good\r\n")
    work = tmp_path / "deliveries" / "1"
    delivery = SimpleNamespace(work_dir=str(work))
    with SftpClient(hostile.endpoint()) as client:
        with pytest.raises(PermanentError) as info:
            look = collect.look_sftp(client, [])
            # Were the refusal only in look_sftp, bring_sftp must still not write outside.
            collect.bring_sftp(client, delivery, look.files, None)  # type: ignore[arg-type]
        assert name in str(info.value) or repr(name)[1:-1] in str(info.value)
        assert "plain" in str(info.value)
        # The adapter layer below: bring refuses the name too, whatever ``look`` said.
        from seftpilot.core.delivery import SeenFile

        with pytest.raises(PermanentError):
            collect.bring_sftp(
                client,
                delivery,  # type: ignore[arg-type]
                [SeenFile(name, len(PAYLOAD), 1_700_000_000)],
                None,
            )
    assert _files_outside(tmp_path, work) == [], "a hostile name wrote outside the work dir"
