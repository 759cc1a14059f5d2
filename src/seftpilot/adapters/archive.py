"""One encrypted 7z archive per delivery, and its verification against the manifest.

Owns creating the archive (AES-256, encrypted headers so member names stay hidden without
the passphrase, LZMA2 by default) with one of two backends, and ``verify_archive``, which
reopens it with the passphrase and checks every member's name, size and SHA-256 against the
delivery's manifest. It must not choose which files go in (the service does), keep or log
the passphrase, or leave a partial archive under the final name.

Backends (``PartnerSettings.backend``):
- ``py7zr``: embedded, always available; the only one that writes zstd.
- ``7zz``: the 7-Zip CLI when installed: 2x faster at LZMA2 (both cores; see
  benchmarks/RESULTS.md). The passphrase is written to its standard input at its
  "Enter password" prompt (``-p`` without a value), never on its command line (which any
  local user can read from ``ps`` or /proc/PID/cmdline) nor in its environment.
- ``auto``: ``7zz`` when installed and the codec is one it writes (lzma2, copy), else py7zr.

Memory stays flat whatever the input size: both backends stream file by file, and verify
hashes decompressed bytes as they come, never holding a member or writing it to disk. A
member larger than the manifest says stops verification at once (decompression-bomb guard).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import multivolumefile
import py7zr
import py7zr.io
import py7zr.py7zr
from pydantic import SecretStr

from seftpilot.adapters.manifest import Manifest
from seftpilot.errors import ArchiveError, ArchiveVerificationError

Codec = Literal["lzma2", "zstd", "copy"]
Backend = Literal["auto", "py7zr", "7zz"]
Progress = Callable[[int, int], None]

SEVEN_ZIP_NAMES = ("7zz", "7z")
_CLI_CODECS = {"lzma2": "LZMA2", "copy": "Copy"}  # 7-Zip has no zstd (only its forks do)
_CHUNK = 1024 * 1024
_VOLUME_SUFFIX = re.compile(r"\.\d{3}$")

# py7zr decompresses a member in pieces sized from the machine's free memory: up to 128 MB
# each, with two or three copies alive at once (419 MB peak RSS verifying a 256 MiB member
# of zeros). DESIGN.md allows the forwarder 256 MB whatever the input, and py7zr has no
# parameter for the piece size, so its module-level limit is replaced here, where py7zr
# is first imported: 8 MiB pieces verify the same member in 70 MB, and faster (1.0 s
# against 1.4 s). tests/fuzz/test_archive_bomb.py fails if a py7zr upgrade drops the hook.
_PY7ZR_PIECE = 8 * 1024 * 1024
py7zr.py7zr.get_memory_limit = lambda: _PY7ZR_PIECE  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ArchiveResult:
    paths: tuple[Path, ...]  # one file, or the volumes .001, .002, ... in order
    size: int  # total bytes on disk
    backend: Literal["py7zr", "7zz"]


def find_7zz() -> str | None:
    """The 7-Zip CLI on PATH, or None."""
    for name in SEVEN_ZIP_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def resolve_backend(backend: Backend, codec: Codec) -> Literal["py7zr", "7zz"]:
    """The backend ``auto`` stands for; refuses a combination that cannot work."""
    if backend == "py7zr":
        return "py7zr"
    cli = find_7zz()
    if backend == "7zz":
        if cli is None:
            raise ArchiveError(
                "backend 7zz chosen but the 7-Zip CLI is not installed",
                hint="apt-get install 7zip, or set partner.backend = 'auto' or 'py7zr'",
            )
        if codec not in _CLI_CODECS:
            raise ArchiveError(
                f"the 7-Zip CLI cannot write codec {codec!r}",
                hint="use partner.codec = 'lzma2', or partner.backend = 'py7zr'",
            )
        return "7zz"
    return "7zz" if cli is not None and codec in _CLI_CODECS else "py7zr"


def _secret(passphrase: SecretStr | str) -> str:
    value = passphrase.get_secret_value() if isinstance(passphrase, SecretStr) else passphrase
    if not value or "\n" in value or "\r" in value:
        raise ArchiveError("a passphrase must be non-empty and on one line")
    return value


def _check_inputs(files: Sequence[Path]) -> int:
    names: dict[str, Path] = {}
    total = 0
    for path in files:
        if path.name in names:
            raise ArchiveError(
                f"two files are both named {path.name!r}: {names[path.name]} and {path}",
                hint="member names must be unique",
            )
        names[path.name] = path
        try:
            info = path.stat()
        except OSError as exc:
            raise ArchiveError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not path.is_file():
            raise ArchiveError(f"{path} is not a regular file")
        total += info.st_size
    if not files:
        raise ArchiveError("no files to archive")
    return total


def create_archive(
    files: Sequence[Path],
    dest: Path,
    passphrase: SecretStr | str,
    *,
    codec: Codec = "lzma2",
    level: int = 1,
    backend: Backend = "auto",
    volume_size_mb: int | None = None,
    progress: Progress | None = None,
) -> ArchiveResult:
    """Write ``files`` (members named by their base names) into ``dest``, encrypted.

    With ``volume_size_mb`` the archive is split into ``dest.001``, ``dest.002``...; 7-Zip
    opens the first. Built in a private temporary folder beside ``dest`` and moved into
    place only when complete. Every output file is mode 0600.
    """
    if not 0 <= level <= 9:
        raise ArchiveError(f"level must be 0-9, not {level}")
    secret = _secret(passphrase)
    total = _check_inputs(files)
    chosen = resolve_backend(backend, codec)
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        target = work / dest.name
        volume = volume_size_mb * 1024 * 1024 if volume_size_mb else None
        if chosen == "7zz":
            _create_7zz(
                files,
                target,
                secret=secret,
                codec=codec,
                level=level,
                volume=volume,
                total=total,
                progress=progress,
            )
        else:
            _create_py7zr(
                files,
                target,
                secret=secret,
                codec=codec,
                level=level,
                volume=volume,
                total=total,
                progress=progress,
            )
        built = sorted(work.iterdir())
        if not built:
            raise ArchiveError(f"no archive was written for {dest}")
        _remove_previous(dest)
        final: list[Path] = []
        for part in built:
            part.chmod(0o600)
            placed = dest.parent / part.name
            os.replace(part, placed)
            final.append(placed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ArchiveResult(tuple(final), sum(p.stat().st_size for p in final), chosen)


def _remove_previous(dest: Path) -> None:
    """An earlier attempt's output under the same name (single file or volumes)."""
    dest.unlink(missing_ok=True)
    for old in dest.parent.glob(f"{glob_escape(dest.name)}.*"):
        if _VOLUME_SUFFIX.search(old.name):
            old.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _py7zr_filters(codec: Codec, level: int) -> list[dict[str, int]]:
    if codec == "lzma2":
        compressor = {"id": py7zr.FILTER_LZMA2, "preset": level}
    elif codec == "zstd":
        compressor = {"id": py7zr.FILTER_ZSTD, "level": max(1, level)}
    else:
        compressor = {"id": py7zr.FILTER_COPY}
    return [compressor, {"id": py7zr.FILTER_CRYPTO_AES256_SHA256}]


@contextlib.contextmanager
def _open_for_write(target: Path, volume: int | None) -> Iterator[Any]:
    if volume is None:
        yield target
        return
    # Three-digit suffixes (.001) are what 7-Zip looks for.
    with multivolumefile.MultiVolume(target, mode="wb", volume=volume, ext_digits=3) as vol:
        yield vol


def _create_py7zr(
    files: Sequence[Path],
    target: Path,
    *,
    secret: str,
    codec: Codec,
    level: int,
    volume: int | None,
    total: int,
    progress: Progress | None,
) -> None:
    done = 0
    try:
        with (
            _open_for_write(target, volume) as sink,
            py7zr.SevenZipFile(
                sink,
                "w",
                filters=_py7zr_filters(codec, level),
                password=secret,
                header_encryption=True,
            ) as archive,
        ):
            for path in files:
                archive.write(path, path.name)  # streams the file in blocks
                done += path.stat().st_size
                if progress is not None:
                    progress(done, total)
    except (py7zr.exceptions.ArchiveError, OSError, ValueError) as exc:
        raise ArchiveError(f"py7zr could not write {target.name}: {exc}") from exc


def _run_7zz(args: list[str], secret: str, on_output: Callable[[bytes], None]) -> tuple[int, bytes]:
    """Run 7zz, answering its password prompt on stdin; return (exit code, output tail)."""
    tail = bytearray()
    # stdin carries the passphrase; it is not in argv, and the environment is ours minus
    # nothing secret (the passphrase never enters os.environ).
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(secret.encode("utf-8") + b"\n")
        proc.stdin.close()
    except BrokenPipeError:
        pass
    fd = proc.stdout.fileno()
    for block in iter(lambda: os.read(fd, 65536), b""):
        on_output(block)
        tail += block
        del tail[:-4096]
    proc.stdout.close()
    return proc.wait(), bytes(tail)


def _create_7zz(
    files: Sequence[Path],
    target: Path,
    *,
    secret: str,
    codec: Codec,
    level: int,
    volume: int | None,
    total: int,
    progress: Progress | None,
) -> None:
    cli = find_7zz()
    assert cli is not None
    listfile = target.parent / "files.lst"
    listfile.write_text("".join(f"{p.resolve()}\n" for p in files), encoding="utf-8")
    args = [
        cli,
        "a",
        "-t7z",
        f"-m0={_CLI_CODECS[codec]}",
        f"-mx={level if codec != 'copy' else 0}",
        "-mhe=on",  # encrypt headers: names hidden without the passphrase
        "-mmt=on",
        "-p",  # no value: 7-Zip prompts and reads the passphrase from stdin
        "-spd",  # no wildcard matching: names are literal
        "-scsUTF-8",
        "-bsp1" if progress is not None else "-bsp0",  # progress lines only when wanted
        "-bb0",
        "-y",
    ]
    if volume is not None:
        args.append(f"-v{volume}b")
    args += [str(target), f"@{listfile}"]

    last = [-1]

    def on_output(block: bytes) -> None:
        if progress is None:
            return
        for match in re.finditer(rb"(\d{1,3})%", block):
            pct = int(match.group(1))
            if pct != last[0]:
                last[0] = pct
                progress(total * pct // 100, total)

    try:
        code, tail = _run_7zz(args, secret, on_output)
    except OSError as exc:
        raise ArchiveError(f"cannot run {cli}: {exc}") from exc
    finally:
        listfile.unlink(missing_ok=True)
    if code != 0:
        raise ArchiveError(
            f"7-Zip failed (exit {code}) writing {target.name}: {_last_lines(tail)}",
            hint="check free disk space and that the input files are readable",
        )
    if progress is not None:
        progress(total, total)


def _last_lines(tail: bytes) -> str:
    text = re.sub(r"[\x08]+", "\n", tail.decode("utf-8", "replace"))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "%" not in ln]
    return " / ".join(lines[-4:])


# --- verification ----------------------------------------------------------------------------


def _first_volume(paths: Sequence[Path]) -> Path:
    if not paths:
        raise ArchiveVerificationError("no archive files given")
    return sorted(paths)[0]


def verify_archive(
    paths: Sequence[Path],
    passphrase: SecretStr | str,
    manifest: Manifest,
    *,
    backend: Backend = "auto",
) -> None:
    """Reopen the archive with ``passphrase``; every member's name, size and SHA-256 must
    match ``manifest`` exactly (no member missing, none extra). Raises
    ArchiveVerificationError naming the first difference."""
    secret = _secret(passphrase)
    chosen = resolve_backend(backend, "lzma2") if backend != "py7zr" else "py7zr"
    first = _first_volume(paths)
    if chosen == "7zz":
        _verify_7zz(first, secret, manifest)
    else:
        _verify_py7zr(paths, first, secret, manifest)


def _compare_listing(listing: list[tuple[str, int]], manifest: Manifest, where: Path) -> None:
    expected = manifest.by_name()
    names = [name for name, _ in listing]
    missing = sorted(set(expected) - set(names))
    extra = sorted(set(names) - set(expected))
    if missing or extra or len(names) != len(set(names)):
        raise ArchiveVerificationError(
            f"{where.name}: members differ from the manifest"
            + (f"; missing {missing}" if missing else "")
            + (f"; not in the manifest {extra}" if extra else "")
            + ("; duplicate names" if len(names) != len(set(names)) else ""),
        )
    for name, size in listing:
        if size != expected[name].size:
            raise ArchiveVerificationError(
                f"{where.name}: member {name!r} is {size} bytes, the manifest says "
                f"{expected[name].size}"
            )


class _HashingWriter(py7zr.io.Py7zIO):
    """Hashes what py7zr decompresses; refuses to take more than the manifest's size."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.hash = hashlib.sha256()
        self.count = 0

    def write(self, s: bytes | bytearray) -> int:
        self.count += len(s)
        if self.count > self.limit:
            raise ArchiveVerificationError(
                f"member {self.name!r} decompresses to more than the {self.limit} bytes "
                "the manifest says; stopped"
            )
        self.hash.update(s)
        return len(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return self.count


class _HashingFactory(py7zr.io.WriterFactory):
    def __init__(self, manifest: Manifest) -> None:
        self.expected = manifest.by_name()
        self.products: dict[str, _HashingWriter] = {}

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        name = Path(filename).name
        entry = self.expected.get(name)
        writer = _HashingWriter(name, entry.size if entry else 0)
        self.products[name] = writer
        return writer


@contextlib.contextmanager
def _open_for_read(paths: Sequence[Path], first: Path) -> Iterator[Any]:
    if len(paths) == 1 and not _VOLUME_SUFFIX.search(first.name):
        yield first
        return
    base = first.with_name(_VOLUME_SUFFIX.sub("", first.name))
    with multivolumefile.MultiVolume(base, mode="rb", ext_digits=3) as vol:
        yield vol


def _verify_py7zr(paths: Sequence[Path], first: Path, secret: str, manifest: Manifest) -> None:
    factory = _HashingFactory(manifest)
    try:
        with (
            _open_for_read(paths, first) as source,
            py7zr.SevenZipFile(source, "r", password=secret) as archive,
        ):
            infos = archive.list()
            if any(info.is_directory for info in infos):
                raise ArchiveVerificationError(f"{first.name}: contains a directory entry")
            _compare_listing([(i.filename, int(i.uncompressed)) for i in infos], manifest, first)
            archive.extractall(factory=factory)
    except ArchiveVerificationError:
        raise
    except Exception as exc:
        # A wrong passphrase or a damaged file sends py7zr's parser down arbitrary paths
        # (Bad7zFile, LZMAError, CrcError, struct.error, UnicodeDecodeError...): each means
        # the same thing here, so this boundary catches them all.
        raise ArchiveVerificationError(
            f"{first.name} does not open with this passphrase, or is damaged "
            f"({type(exc).__name__})",
            hint="check the passphrase belongs to this delivery (compare fingerprints)",
        ) from exc
    _compare_digests(
        {n: (w.count, w.hash.hexdigest()) for n, w in factory.products.items()}, manifest, first
    )


def _compare_digests(got: dict[str, tuple[int, str]], manifest: Manifest, where: Path) -> None:
    for entry in manifest.files:
        size, digest = got.get(entry.name, (0, hashlib.sha256().hexdigest()))
        if size != entry.size:
            raise ArchiveVerificationError(
                f"{where.name}: member {entry.name!r} gave {size} bytes, expected {entry.size}"
            )
        if digest != entry.sha256:
            raise ArchiveVerificationError(
                f"{where.name}: member {entry.name!r} SHA-256 {digest} differs from the "
                f"manifest's {entry.sha256}",
                hint="the archive is damaged or was built from other files: rebuild it",
            )


def _listing_7zz(cli: str, first: Path, secret: str) -> list[tuple[str, int]]:
    out = bytearray()
    code, tail = _run_7zz([cli, "l", "-slt", "-sccUTF-8", "--", str(first)], secret, out.extend)
    if code != 0:
        raise ArchiveVerificationError(
            f"{first.name} does not open with this passphrase, or is damaged: {_last_lines(tail)}",
            hint="check the passphrase belongs to this delivery (compare fingerprints)",
        )
    text = out.decode("utf-8", "replace")
    body = text.split("\n----------\n", 1)[-1]
    listing: list[tuple[str, int]] = []
    for block in body.split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
        if "Path" not in fields:
            continue
        if fields.get("Folder") == "+" or "D" in fields.get("Attributes", "").split(" ")[0]:
            raise ArchiveVerificationError(f"{first.name}: contains a directory entry")
        listing.append((fields["Path"], int(fields.get("Size") or 0)))
    return listing


def _verify_7zz(first: Path, secret: str, manifest: Manifest) -> None:
    cli = find_7zz()
    assert cli is not None
    listing = _listing_7zz(cli, first, secret)
    _compare_listing(listing, manifest, first)
    # `x -so` writes every member to stdout, in listing order, back to back: split the
    # stream by the (already checked) sizes and hash each piece as it passes.
    proc = subprocess.Popen(
        [cli, "x", "-so", "-bd", "--", str(first)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    errors = bytearray()
    drain = threading.Thread(target=lambda: errors.extend(proc.stderr.read()))  # type: ignore[union-attr]
    drain.start()
    got: dict[str, tuple[int, str]] = {}
    overflow = False
    try:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(secret.encode("utf-8") + b"\n")
            proc.stdin.close()
        stdout: IO[bytes] = proc.stdout
        for name, size in listing:
            digest = hashlib.sha256()
            remaining = size
            while remaining:
                block = stdout.read(min(_CHUNK, remaining))
                if not block:
                    break
                digest.update(block)
                remaining -= len(block)
            got[name] = (size - remaining, digest.hexdigest())
        if stdout.read(1):
            overflow = True  # more bytes than the checked sizes: never read further
    finally:
        if overflow:
            proc.kill()
        proc.stdout.close()
        code = proc.wait()
        drain.join()
        proc.stderr.close()
    if overflow:
        raise ArchiveVerificationError(
            f"{first.name}: decompresses to more than the manifest's sizes; stopped"
        )
    if code != 0:
        raise ArchiveVerificationError(
            f"{first.name} failed 7-Zip's own checks (exit {code}): {_last_lines(bytes(errors))}",
            hint="the archive is damaged or the passphrase is wrong: rebuild it",
        )
    _compare_digests(got, manifest, first)
