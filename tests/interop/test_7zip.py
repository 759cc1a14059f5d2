"""Interop with the 7-Zip CLI: our archives open with `7zz`, refuse a wrong passphrase, hide
names; archives the 7zz backend makes verify with py7zr; the passphrase never appears in
the CLI's command line or environment."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from seftpilot.adapters.archive import create_archive, verify_archive
from seftpilot.adapters.manifest import build_manifest
from seftpilot.adapters.passphrase import new_passphrase
from seftpilot.errors import ArchiveVerificationError
from tests.fixtures.interop import require_tool
from tests.integration.test_archive import SECRET_NAME, synthetic_csv

pytestmark = pytest.mark.interop


@pytest.fixture
def sevenzip() -> str:
    return require_tool("7zz", "7-Zip CLI interop")


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "returned"
    folder.mkdir()
    return [
        synthetic_csv(folder / SECRET_NAME, 300_000, seed=1),
        synthetic_csv(folder / "second file.csv", 100_000, seed=2),
    ]


def run_7zz(cli: str, *args: str, password: str | None) -> subprocess.CompletedProcess[str]:
    stdin = f"{password}\n" if password is not None else ""
    return subprocess.run(
        [cli, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("codec", ["lzma2", "copy"])
def test_py7zr_archive_opens_with_7zz_and_refuses_a_wrong_passphrase(
    sevenzip: str, files: list[Path], tmp_path: Path, codec: str
) -> None:
    phrase = new_passphrase()
    result = create_archive(
        files,
        tmp_path / "a.7z",
        phrase,
        backend="py7zr",
        codec=codec,  # type: ignore[arg-type]
    )
    archive = str(result.paths[0])
    ok = run_7zz(sevenzip, "t", archive, password=phrase.get_secret_value())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Everything is Ok" in ok.stdout
    wrong = run_7zz(sevenzip, "t", archive, password=new_passphrase().get_secret_value())
    assert wrong.returncode != 0
    listing = run_7zz(sevenzip, "l", archive, password=None)  # no passphrase at all
    assert listing.returncode != 0
    assert SECRET_NAME not in listing.stdout + listing.stderr


def test_7zz_backend_archive_verifies_with_py7zr_and_with_7zz(
    sevenzip: str, files: list[Path], tmp_path: Path
) -> None:
    phrase = new_passphrase()
    manifest = build_manifest(files, "folder:/returned")
    seen: list[tuple[int, int]] = []
    result = create_archive(
        files,
        tmp_path / "out" / "b.7z",
        phrase,
        backend="7zz",
        progress=lambda d, t: seen.append((d, t)),
    )
    assert result.backend == "7zz"
    assert result.paths[0].stat().st_mode & 0o777 == 0o600
    assert seen[-1] == (manifest.total_size, manifest.total_size)
    verify_archive(result.paths, phrase, manifest, backend="py7zr")
    verify_archive(result.paths, phrase, manifest, backend="7zz")
    with pytest.raises(ArchiveVerificationError, match="does not open"):
        verify_archive(result.paths, new_passphrase(), manifest, backend="7zz")
    listing = run_7zz(sevenzip, "l", str(result.paths[0]), password=None)
    assert listing.returncode != 0
    assert SECRET_NAME not in listing.stdout + listing.stderr
    assert SECRET_NAME.encode("utf-16-le") not in result.paths[0].read_bytes()


def test_7zz_verify_detects_tampering(sevenzip: str, files: list[Path], tmp_path: Path) -> None:
    phrase = new_passphrase()
    manifest = build_manifest(files, "folder:/returned")
    result = create_archive(files, tmp_path / "c.7z", phrase, backend="7zz")
    data = bytearray(result.paths[0].read_bytes())
    data[len(data) // 3] ^= 0x55
    result.paths[0].write_bytes(bytes(data))
    with pytest.raises(ArchiveVerificationError):
        verify_archive(result.paths, phrase, manifest, backend="7zz")


def test_7zz_volumes_open_with_py7zr(sevenzip: str, tmp_path: Path) -> None:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(2_300_000))
    phrase = new_passphrase()
    manifest = build_manifest([noise], "folder:/x")
    result = create_archive([noise], tmp_path / "v.7z", phrase, backend="7zz", volume_size_mb=1)
    assert [p.name for p in result.paths] == ["v.7z.001", "v.7z.002", "v.7z.003"]
    verify_archive(result.paths, phrase, manifest, backend="py7zr")
    verify_archive(result.paths, phrase, manifest, backend="7zz")
    # And py7zr's volumes open with 7-Zip.
    ours = create_archive([noise], tmp_path / "w.7z", phrase, backend="py7zr", volume_size_mb=1)
    ok = run_7zz(sevenzip, "t", str(ours.paths[0]), password=phrase.get_secret_value())
    assert ok.returncode == 0, ok.stdout


def _children_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            exe = os.readlink(entry / "exe")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and os.path.basename(exe) == name:
            found.append(int(entry.name))
    return found


def test_passphrase_never_on_the_7zz_command_line(sevenzip: str, tmp_path: Path) -> None:
    big = synthetic_csv(tmp_path / "big.csv", 12 * 2**20)
    phrase = new_passphrase()
    secret = phrase.get_secret_value().encode()
    seen: dict[int, tuple[bytes, bytes]] = {}
    done = threading.Event()

    def build() -> None:
        try:
            create_archive([big], tmp_path / "p.7z", phrase, backend="7zz", level=5)
        finally:
            done.set()

    worker = threading.Thread(target=build)
    worker.start()
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:
        for pid in _children_named(os.path.basename(os.path.realpath(sevenzip))):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if cmdline:
                seen[pid] = (cmdline, environ)
        time.sleep(0.01)
    worker.join()
    assert seen, "7zz was never seen running (input too small to catch it?)"
    for cmdline, environ in seen.values():
        assert b"-p\x00" in cmdline  # the prompt form: -p with no value
        assert secret not in cmdline
        assert secret not in environ
