"""The drop folder: the operator saves NHS England's files by hand with a browser.

The service must wait until the folder has been quiet for ``quiet_seconds`` (judged
between job runs with the injected clock, never by sleeping), or until ``expected_count``
files are there, and never collect an unfinished download (``*.crdownload``, ``*.part``).
``forward --from DIR`` uses a folder as it is and leaves it to the operator.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from seftpilot.errors import InputError
from seftpilot.service.forward import ForwardJob, forward_now
from tests.fixtures.sftp_server import InProcessSftpServer
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.forward_support import (
    World,
    open_archive,
    put_files,
    returned_csv,
    running_world,
)


@pytest.fixture
def world(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sftp_server: InProcessSftpServer,
    smtp_server: SmtpServer,
) -> Iterator[World]:
    with running_world(
        tmp_path,
        tmp_path_factory.mktemp("seft"),
        sftp_server,
        smtp_server,
        source="folder",
        download={"quiet_seconds": 300},
    ) as w:
        yield w


def tick(world: World, job: ForwardJob, seconds: float) -> None:
    """Let ``seconds`` pass, running the job whenever it is due."""
    end = world.clock.now() + timedelta(seconds=seconds)
    while world.clock.now() < end:
        for _ in range(20):  # the watcher runs a due job again on its next tick
            now = world.clock.now()
            due = job.next_due(now)
            if due is None or due > now:
                break
            job.run(now)
        world.clock.advance(30)


def test_waits_for_quiet_and_ignores_unfinished_downloads(world: World) -> None:
    drop = world.tmp / "drop"
    job = ForwardJob(world.runtime)
    sent = put_files(drop, 2)
    growing = drop / "NIC402963_HES_003.csv.crdownload"
    growing.write_bytes(b"UNIQUE_REFERENCE,NHS_NO\r\n")
    (drop / ".~lock.NIC402963_HES_001.csv#").write_bytes(b"lock")

    # The browser keeps writing: never quiet, nothing collected.
    for _ in range(4):
        tick(world, job, 120)
        with growing.open("ab") as handle:
            handle.write(b"S-1,9990000018\r\n")
    d = world.only_delivery()
    assert (d.state, d.origin) == ("waiting", "folder")
    assert world.partner_names() == []

    # The download finishes (the browser renames it), then the folder stays quiet.
    third = returned_csv(3)
    growing.unlink()
    (drop / "NIC402963_HES_003.csv").write_bytes(third)
    sent["NIC402963_HES_003.csv"] = third
    tick(world, job, 240)
    assert world.only_delivery().state == "waiting"  # quiet for 4 minutes only
    tick(world, job, 120)
    d = world.only_delivery()
    assert d.state == "announced", d.last_error
    assert open_archive(world.partner.root / d.remote_name, world.passphrase_from_mail()) == sent  # type: ignore[operator]
    # Moved out of the drop folder (only the lock file of the office suite stays).
    assert sorted(p.name for p in drop.iterdir()) == [".~lock.NIC402963_HES_001.csv#"]
    files = Path(d.work_dir) / "files"
    assert stat.S_IMODE(files.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in files.iterdir()} == {0o600}


def test_expected_count_does_not_wait_for_quiet(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sftp_server: InProcessSftpServer,
    smtp_server: SmtpServer,
) -> None:
    with running_world(
        tmp_path,
        tmp_path_factory.mktemp("seft"),
        sftp_server,
        smtp_server,
        source="folder",
        download={"quiet_seconds": 3600, "expected_count": 3},
    ) as w:
        drop = w.tmp / "drop"
        job = ForwardJob(w.runtime)
        put_files(drop, 2)
        tick(w, job, 90)
        assert w.only_delivery().state == "waiting"
        put_files(drop, 1, start=3)
        tick(w, job, 90)
        assert w.only_delivery().state == "announced"
        assert w.only_delivery().file_count == 3


def test_by_hand_refuses_while_a_download_is_unfinished(world: World) -> None:
    drop = world.tmp / "drop"
    put_files(drop, 1)
    (drop / "NIC402963_HES_002.csv.part").write_bytes(b"half")
    with pytest.raises(InputError, match=r"unfinished downloads: NIC402963_HES_002\.csv\.part"):
        forward_now(world.runtime)
    (drop / "NIC402963_HES_002.csv.part").unlink()
    outcome = forward_now(world.runtime)
    assert outcome.status == "delivered", outcome.message


def test_from_dir_copies_and_leaves_the_folder_alone(world: World) -> None:
    source = world.tmp / "from"
    source.mkdir()
    sent = put_files(source, 2)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    outcome = forward_now(world.runtime, from_dir=source)
    assert outcome.status == "delivered", outcome.message
    d = world.only_delivery()
    assert (d.source, d.origin) == ("dir", "cli")
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    assert open_archive(world.partner.root / d.remote_name, world.passphrase_from_mail()) == sent  # type: ignore[operator]
    assert all(f.source.startswith(str(source.resolve())) for f in world.store.files(d.id))


def test_from_dir_with_nothing_is_refused_before_anything_is_recorded(world: World) -> None:
    # The operator's slip, said at once by the service itself (not only by the CLI): no
    # failed delivery in the ledger, no alert mail about it.
    empty = world.tmp / "empty"
    empty.mkdir()
    (empty / ".hidden").write_text("not a returned file")
    with pytest.raises(InputError, match="holds no file"):
        forward_now(world.runtime, from_dir=empty)
    with pytest.raises(InputError, match="not a folder"):
        forward_now(world.runtime, from_dir=world.tmp / "missing")
    assert world.store.list_deliveries() == []
    assert world.smtp.messages == []
    assert os.listdir(world.partner.root) == []
