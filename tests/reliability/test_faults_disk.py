"""A full disk and a read-only state directory: a clear error, and nothing corrupted.

The disk is a real one: a 1 MiB tmpfs mounted for the test (the suite runs as root on CI;
where mounting is not permitted the tests skip and say so), filled to the last byte, or
remounted read-only (root ignores file modes, so a read-only mount is how root is shown a
read-only state directory; the 0500/0400 case for a normal user is in
tests/integration/test_ledger_store.py). Afterwards the space is freed or the mount made
writable again, and the ledger must open, pass ``PRAGMA integrity_check`` and hold exactly
what it held before; a cohort or outbox file that was good must still be the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from seftpilot.adapters.cohort_files import write_file_atomic
from seftpilot.adapters.ledger_store import LedgerStore, RefRow
from seftpilot.adapters.store import Store
from seftpilot.cli import run as cli
from seftpilot.errors import InputError, StateDirError
from seftpilot.service.transports import ManualTransport

NIC = "NIC-402963-P0Y5D"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _mount(path: Path, options: str) -> None:
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the suite as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    _mount(mount, "size=1m,mode=0700")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write zeros until the disk refuses one more byte; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def rows(n: int, prefix: str) -> list[RefRow]:
    return [RefRow(f"{prefix}{i:06d}", "9990000018") for i in range(n)]


def ledger_facts(state: Path) -> tuple[str, list[tuple[object, ...]], int]:
    """integrity_check, the submissions, and how many rows they hold, read-only."""
    conn = sqlite3.connect(f"file:{state / 'seftpilot.sqlite3'}?mode=ro", uri=True)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        subs = conn.execute("SELECT id, action, state, row_count FROM submissions").fetchall()
        refs = conn.execute("SELECT count(*) FROM submission_refs").fetchone()[0]
        return integrity, subs, refs
    finally:
        conn.close()


def test_full_disk_ledger_write_says_so_and_loses_nothing(small_disk: Path) -> None:
    state = small_disk / "state"
    with Store(state) as store:
        LedgerStore(store).create_submission(NIC, "ADD", rows(200, "A"), at=T0)
    before = ledger_facts(state)
    filler = fill(small_disk)

    with Store(state) as store:
        ledger = LedgerStore(store)
        assert [s.row_count for s in ledger.list_submissions()] == [200]  # reading works
        with pytest.raises(StateDirError) as caught:
            ledger.create_submission(NIC, "ADD", rows(5000, "B"), at=T0)
        # The cause, not a follow-on error: the disk is full, and what to do about it.
        assert "full" in caught.value.message
        assert caught.value.hint is not None and "full" in caught.value.hint
        # Any repository's write, not only the ledger's own: the store maps it.
        with pytest.raises(StateDirError) as again, store.transaction() as conn:
            Store.append_event(conn, "test.big", at=T0, detail={"pad": "x" * 2_000_000})
        assert "full" in (again.value.hint or "")

    filler.unlink()
    assert ledger_facts(state) == before
    with Store(state) as store:
        LedgerStore(store).create_submission(NIC, "DELETE", rows(10, "A"), at=T0)
    integrity, subs, _ = ledger_facts(state)
    assert integrity == "ok"
    assert [s[3] for s in subs] == [200, 10]


def test_full_disk_never_replaces_a_good_file(small_disk: Path) -> None:
    good = b"UNIQUE_REFERENCE,NHS_NUMBER\r\nA000001,9990000018\r\n"
    cohort = small_disk / "cohort" / f"{NIC}.csv"
    write_file_atomic(cohort, [good])
    outbox = small_disk / "outbox"
    transport = ManualTransport(outbox, NIC, notify=lambda _s, _t: None)
    transport.put(cohort, cohort.name, submission_id=1)
    placed = outbox / "submission-1" / cohort.name
    fill(small_disk)

    bigger = [b"A" * 65536 for _ in range(64)]  # 4 MiB: cannot fit
    with pytest.raises(OSError):
        write_file_atomic(cohort, bigger)
    with pytest.raises(InputError) as caught:
        transport.put(_big_source(small_disk), cohort.name, submission_id=1)
    assert "outbox" in caught.value.message
    # The good files are the same bytes, and no temporary file is left to eat the space.
    assert cohort.read_bytes() == good
    assert hashlib.sha256(placed.read_bytes()).digest() == hashlib.sha256(good).digest()
    leftovers = [p.name for p in small_disk.rglob("*.part")]
    assert leftovers == []


def _big_source(disk: Path) -> Path:
    """A source file too big for the full disk, kept outside it."""
    path = disk.parent / "big.csv"
    path.write_bytes(b"B" * 2_000_000)
    return path


def _config(directory: Path, state: Path) -> Path:
    toml = directory / "seftpilot.toml"
    toml.write_text(f'state_dir = "{state}"\n\n[[agreement]]\nnic = "{NIC}"\n')
    return toml


def _target(directory: Path) -> Path:
    from seftpilot.sandbox.demo import write_study_export

    return write_study_export(directory / "export.csv", 400, seed=2)


def test_full_disk_cli_exits_2_with_a_hint(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = small_disk / "state"
    with Store(state) as store:
        LedgerStore(store).create_submission(NIC, "ADD", rows(100, "A"), at=T0)
    before = ledger_facts(state)
    config = _config(tmp_path, state)
    target = _target(tmp_path)
    fill(small_disk)

    code = cli(["plan", str(target), "--apply", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "full" in err and "hint" in err
    assert "Traceback" not in err
    (small_disk / "filler").unlink()
    assert ledger_facts(state) == before


def test_read_only_state_dir_cli_exits_2_and_the_ledger_is_intact(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = small_disk / "state"
    with Store(state) as store:
        LedgerStore(store).create_submission(NIC, "ADD", rows(100, "A"), at=T0)
    before = ledger_facts(state)
    config = _config(tmp_path, state)
    target = _target(tmp_path)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        for argv in (
            ["plan", str(target), "--apply", "--config", str(config)],
            ["submission", "list", "--config", str(config)],
        ):
            code = cli(argv)
            err = capsys.readouterr().err
            assert code == 2, (argv, err)
            assert "read-only" in err.lower(), err
            assert "Traceback" not in err
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert ledger_facts(state) == before
