"""Encrypted 7z archives (embedded py7zr backend) and manifests: round trip, refusals,
hidden names, tampering, volumes, flat memory."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import py7zr
import pytest

from seftpilot.adapters.archive import _HashingWriter, create_archive, verify_archive
from seftpilot.adapters.manifest import Manifest, ManifestEntry, build_manifest
from seftpilot.adapters.passphrase import new_passphrase
from seftpilot.errors import ArchiveError, ArchiveVerificationError, InputError

SECRET_NAME = "NIC-402963-P0Y5D_HES_APC_returned.csv"


def synthetic_csv(path: Path, size: int, seed: int = 7) -> Path:
    """Synthetic returned-data CSV (NHS numbers from the 999 test range)."""
    rnd = random.Random(seed)
    rows = ["study_id,nhs_number,admission_date,diagnosis,los_days\n"]
    total = len(rows[0])
    while total < size:
        row = (
            f"S{rnd.randrange(10**6):06d},999{rnd.randrange(10**7):07d},"
            f"20{rnd.randrange(10, 25)}-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d},"
            f"{rnd.choice(['A01', 'C34', 'E11', 'I10', 'J45'])},{rnd.randrange(60)}\n"
        )
        rows.append(row)
        total += len(row)
    path.write_text("".join(rows)[:size])
    return path


@pytest.fixture
def delivery(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "returned"
    folder.mkdir()
    files = [
        synthetic_csv(folder / SECRET_NAME, 400_000, seed=1),
        synthetic_csv(folder / "NIC-402963-P0Y5D_demographics.csv", 150_000, seed=2),
    ]
    (folder / "empty.csv").write_bytes(b"")
    files.append(folder / "empty.csv")
    return files


def test_round_trip_verifies_against_the_manifest(delivery: list[Path], tmp_path: Path) -> None:
    phrase = new_passphrase()
    manifest = build_manifest(delivery, "folder:/returned")
    seen: list[tuple[int, int]] = []
    dest = tmp_path / "out" / "isaric-2025-01-01-1.7z"
    result = create_archive(
        delivery, dest, phrase, backend="py7zr", progress=lambda d, t: seen.append((d, t))
    )
    assert result.backend == "py7zr"
    assert result.paths == (dest,)
    assert result.size == dest.stat().st_size
    assert dest.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no partial left
    assert seen[-1] == (manifest.total_size, manifest.total_size)
    verify_archive(result.paths, phrase, manifest, backend="py7zr")


def test_wrong_passphrase_is_refused(delivery: list[Path], tmp_path: Path) -> None:
    manifest = build_manifest(delivery, "folder:/returned")
    result = create_archive(delivery, tmp_path / "a.7z", new_passphrase(), backend="py7zr")
    with pytest.raises(ArchiveVerificationError, match="does not open with this passphrase"):
        verify_archive(result.paths, new_passphrase(), manifest, backend="py7zr")


def test_member_names_are_hidden_without_the_passphrase(
    delivery: list[Path], tmp_path: Path
) -> None:
    result = create_archive(delivery, tmp_path / "a.7z", new_passphrase(), backend="py7zr")
    raw = result.paths[0].read_bytes()
    assert SECRET_NAME.encode() not in raw
    assert SECRET_NAME.encode("utf-16-le") not in raw  # 7z stores names as UTF-16
    assert b"999" not in raw[:64]
    with pytest.raises(py7zr.exceptions.PasswordRequired):
        py7zr.SevenZipFile(result.paths[0], "r").close()


def test_tampered_archive_is_detected(delivery: list[Path], tmp_path: Path) -> None:
    phrase = new_passphrase()
    manifest = build_manifest(delivery, "folder:/returned")
    result = create_archive(delivery, tmp_path / "a.7z", phrase, backend="py7zr")
    data = bytearray(result.paths[0].read_bytes())
    data[len(data) // 3] ^= 0x55  # inside the packed stream
    result.paths[0].write_bytes(bytes(data))
    with pytest.raises(ArchiveVerificationError):
        verify_archive(result.paths, phrase, manifest, backend="py7zr")


def test_archive_that_differs_from_its_manifest_is_refused(
    delivery: list[Path], tmp_path: Path
) -> None:
    phrase = new_passphrase()
    manifest = build_manifest(delivery, "folder:/returned")
    result = create_archive(delivery, tmp_path / "a.7z", phrase, backend="py7zr")
    first = manifest.files[0]
    wrong_hash = Manifest(
        manifest.source, (ManifestEntry(first.name, first.size, "0" * 64), *manifest.files[1:])
    )
    with pytest.raises(ArchiveVerificationError, match="SHA-256"):
        verify_archive(result.paths, phrase, wrong_hash, backend="py7zr")
    missing = Manifest(manifest.source, (*manifest.files, ManifestEntry("extra.csv", 1, "0" * 64)))
    with pytest.raises(ArchiveVerificationError, match=r"missing \['extra.csv'\]"):
        verify_archive(result.paths, phrase, missing, backend="py7zr")
    extra = Manifest(manifest.source, manifest.files[1:])
    with pytest.raises(ArchiveVerificationError, match="not in the manifest"):
        verify_archive(result.paths, phrase, extra, backend="py7zr")


def test_members_larger_than_the_manifest_are_refused_before_extraction(
    delivery: list[Path], tmp_path: Path
) -> None:
    phrase = new_passphrase()
    manifest = build_manifest(delivery, "folder:/returned")
    result = create_archive(delivery, tmp_path / "a.7z", phrase, backend="py7zr")
    first = manifest.files[0]
    smaller = Manifest(
        manifest.source, (ManifestEntry(first.name, 1000, first.sha256), *manifest.files[1:])
    )
    with pytest.raises(ArchiveVerificationError, match="manifest says 1000"):
        verify_archive(result.paths, phrase, smaller, backend="py7zr")
    # And the streaming guard stops a member that outgrows its stated size.
    writer = _HashingWriter("bomb.csv", 10)
    writer.write(b"x" * 10)
    with pytest.raises(ArchiveVerificationError, match="more than the 10 bytes"):
        writer.write(b"x")


@pytest.mark.parametrize("codec", ["lzma2", "zstd", "copy"])
def test_every_codec_round_trips(delivery: list[Path], tmp_path: Path, codec: str) -> None:
    phrase = new_passphrase()
    manifest = build_manifest(delivery, "folder:/returned")
    result = create_archive(
        delivery,
        tmp_path / f"{codec}.7z",
        phrase,
        codec=codec,  # type: ignore[arg-type]
        level=3,
        backend="py7zr",
    )
    verify_archive(result.paths, phrase, manifest, backend="py7zr")


def test_volumes_split_and_verify(tmp_path: Path) -> None:
    files = [tmp_path / "noise.bin"]
    files[0].write_bytes(random.Random(3).randbytes(2_600_000))  # incompressible
    phrase = new_passphrase()
    manifest = build_manifest(files, "folder:/x")
    dest = tmp_path / "out" / "isaric-x.7z"
    result = create_archive(files, dest, phrase, backend="py7zr", volume_size_mb=1)
    assert [p.name for p in result.paths] == [
        "isaric-x.7z.001",
        "isaric-x.7z.002",
        "isaric-x.7z.003",
    ]
    assert all(p.stat().st_size <= 1024 * 1024 for p in result.paths)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in result.paths)
    verify_archive(result.paths, phrase, manifest, backend="py7zr")


def _peak_python_memory(path: Path) -> int:
    phrase = new_passphrase()
    manifest = build_manifest([path], "folder:/x")
    tracemalloc.start()
    try:
        result = create_archive([path], path.with_suffix(".7z"), phrase, backend="py7zr")
        verify_archive(result.paths, phrase, manifest, backend="py7zr")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_whatever_the_input_size(tmp_path: Path) -> None:
    small = _peak_python_memory(synthetic_csv(tmp_path / "small.csv", 4 * 2**20))
    large = _peak_python_memory(synthetic_csv(tmp_path / "large.csv", 28 * 2**20))
    # Seven times the input, the same few buffers: streaming, not loading.
    assert large < small * 1.2 + 2**20, f"peaks {small / 2**20:.1f} vs {large / 2**20:.1f} MiB"
    assert large < 28 * 2**20


def test_bad_inputs_get_clear_answers(delivery: list[Path], tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / SECRET_NAME).write_text("x")
    with pytest.raises(ArchiveError, match="both named"):
        create_archive([delivery[0], twin / SECRET_NAME], tmp_path / "a.7z", "pw")
    with pytest.raises(InputError, match="both named"):
        build_manifest([delivery[0], twin / SECRET_NAME], "folder:/x")
    with pytest.raises(ArchiveError, match="cannot read"):
        create_archive([tmp_path / "absent.csv"], tmp_path / "a.7z", "pw")
    with pytest.raises(ArchiveError, match="one line"):
        create_archive(delivery, tmp_path / "a.7z", "two\nlines")
    assert not (tmp_path / "a.7z").exists()


def test_manifest_json_round_trip(delivery: list[Path]) -> None:
    manifest = build_manifest(delivery, "sftp://127.0.0.1:22/out")
    doc = json.loads(manifest.to_json())
    assert doc["files"][0] == {
        "name": SECRET_NAME,
        "size": delivery[0].stat().st_size,
        "sha256": manifest.files[0].sha256,
    }
    assert Manifest.from_json(manifest.to_json()) == manifest
    with pytest.raises(InputError, match="not a seftpilot manifest"):
        Manifest.from_json('{"files": []}')
