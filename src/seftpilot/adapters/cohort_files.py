"""Cohort files on disk: profiles, study exports in, NHS files out, NHS files checked.

Owns every byte of cohort I/O: finding and reading profiles (package data or the
operator's own YAML), streaming a study export through ``core.cohort.CohortBuilder`` into
a temporary file beside the target (mode 0600) that is fsynced and renamed into place
only when it is complete, streaming a file through ``core.cohort.CohortValidator``, and
reading the rows of a built file back. OSError, UnicodeDecodeError and csv.Error become
CohortSourceError/InputError naming the file. Must not decide what is valid: the core does.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

from seftpilot.core.cohort import BuildResult, CohortBuilder, CohortValidator, ValidationReport
from seftpilot.core.cohort_profile import (
    Profile,
    derive_profile_data,
    load_yaml,
    parse_profile,
)
from seftpilot.errors import CohortSourceError, InputError, ProfileError

DEFAULT_PROFILE = "mps-legacy-24"
# Validator feed and build block size. Small enough that a block's strings stay in the
# CPU cache while its columns are worked on: 64 KiB blocks built a million rows in 3.4 s
# where 1 MiB blocks took 4.9 s (benchmarks/RESULTS.md); per-block overhead stays < 5%.
READ_CHUNK = 1 << 16
BATCH_ROWS = 1_000  # builder batch (csv path): about a READ_CHUNK of rows, for the same reason
BLOCK_LINE_LIMIT = 1 << 20  # a longer line (or no LF at all) leaves the build to csv


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped with seftpilot."""
    folder = resources.files("seftpilot.profiles")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _profile_data(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> tuple[Any, str]:
    name = str(name_or_path)
    if name in builtin_profiles() and not Path(name).exists():
        text = resources.files("seftpilot.profiles").joinpath(f"{name}.yaml").read_text("utf-8")
        source = f"{name} (built in)"
    else:
        path = Path(name).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProfileError(
                f"no profile {name!r}: not a built-in profile and no such file",
                hint=f"built-in profiles: {', '.join(builtin_profiles())}; or give a YAML path",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"profile {path}: cannot read: {exc}") from None
        source = str(path)
    data = load_yaml(text, source)
    if isinstance(data, Mapping) and "base" in data:
        base = data["base"]
        if not isinstance(base, str) or base in seen:
            raise ProfileError(f"profile {source}: base: must name another profile, without loops")
        if not Path(base).is_absolute() and base not in builtin_profiles():
            base = str(Path(name).expanduser().parent / base)
        base_data, _ = _profile_data(base, (*seen, name))
        if not isinstance(base_data, Mapping):
            raise ProfileError(f"profile {base}: not a mapping")
        data = derive_profile_data(base_data, data, source)
    return data, source


def load_profile(name_or_path: str | Path | None = None) -> Profile:
    """A built-in profile by name (``mps-legacy-24``, ``pve``) or the operator's own YAML
    file. An own file may say ``base: mps-legacy-24`` and ``header: <the header line NHS
    England last accepted>`` to rename the columns and change nothing else."""
    data, source = _profile_data(name_or_path or DEFAULT_PROFILE)
    return parse_profile(data, source)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while batches of row lists are alive.

    The rows hold only strings (no cycles), but every few hundred new lists the collector
    walks all live containers: measured at about a third of the build time on a
    million-row file. Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --- validate -------------------------------------------------------------------------------


def validate_file(path: str | Path, profile: Profile, nic: str | None = None) -> ValidationReport:
    """Check an NHS cohort file from disk, streaming; every problem listed (up to a cap
    per code, with complete counts)."""
    path = Path(path)
    validator = CohortValidator(profile, file_name=path.name, nic=nic)
    try:
        with _gc_paused(), path.open("rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                validator.feed(chunk)
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a cohort file") from None
    except FileNotFoundError:
        raise InputError(
            f"{path}: no such file", hint="give the path of the .csv file to check"
        ) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return validator.finish()


# --- build ----------------------------------------------------------------------------------


def write_file_atomic(path: Path, chunks: Iterable[bytes]) -> tuple[int, str]:
    """Write ``chunks`` to ``path`` all or nothing: a 0600 temporary file in the same
    directory, fsynced, then renamed over ``path``. Returns (bytes, SHA-256 hex)."""
    with _AtomicWriter(path) as writer:
        for chunk in chunks:
            writer.write(chunk)
        writer.commit()
    return writer.size, writer.sha256.hexdigest()


class _AtomicWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._committed = False
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp creates the file 0600 in the target directory, so the rename is atomic.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        self.tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb", buffering=1 << 20)

    def __enter__(self) -> _AtomicWriter:
        return self

    def write(self, data: bytes) -> None:
        if data:
            self._handle.write(data)
            self.sha256.update(data)
            self.size += len(data)

    def commit(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.tmp, self.path)
        self._committed = True
        with contextlib.suppress(OSError):  # make the rename itself durable where we can
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            # On a full disk close() fails again flushing the buffer: the temporary file
            # must go all the same (it holds identifiers, and it is eating the space).
            with contextlib.suppress(OSError):
                self._handle.close()
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()


def _open_source(source: Path) -> BinaryIO:
    try:
        return source.open("rb")
    except FileNotFoundError:
        raise CohortSourceError(
            f"study export {source}: no such file", hint="check the path of the export"
        ) from None
    except IsADirectoryError:
        raise CohortSourceError(
            f"study export {source} is a directory, not a CSV file",
            hint=f"give the path of the export file itself, e.g. {source / 'export.csv'}",
        ) from None
    except OSError as exc:
        raise CohortSourceError(
            f"study export {source}: cannot read: {exc.strerror or exc}",
            hint="check the file's permissions",
        ) from None


def _not_utf8(source: Path, line: int, exc: UnicodeDecodeError) -> CohortSourceError:
    return CohortSourceError(
        f"study export {source} is not UTF-8 text near line {line} ({exc.reason})",
        hint="export or save it as 'CSV UTF-8'",
    )


def _not_csv(source: Path, line: int, exc: csv.Error) -> CohortSourceError:
    return CohortSourceError(f"study export {source}, line {line}: not readable as CSV: {exc}")


def _header(source: Path, header: list[str] | None) -> list[str]:
    if header is None:
        raise CohortSourceError(
            f"study export {source} is empty", hint="export the cohort again, with headers"
        )
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        raise CohortSourceError(
            f"study export {source} is not comma-separated (its header is one column "
            f"containing {';' if ';' in header[0] else 'tabs'})",
            hint="export as CSV with commas",
        )
    return header


def _feed_source(
    source: Path,
    raw: BinaryIO,
    make_builder: Callable[[list[str]], CohortBuilder],
    write: Callable[[bytes], None],
) -> CohortBuilder:
    """Read the export into a builder, streaming, and write what it renders.

    Blocks of whole lines (about READ_CHUNK bytes) go to ``CohortBuilder.process_text``,
    which splits them without csv; a block it declines (blank lines, a wrong number of
    values) is read with ``csv`` on its own. From the first quote on (a quoted value may
    hold line breaks and run across blocks), or when lines are not ended by LF, the rest
    of the file is read by ``csv.reader`` from that point, as the whole file once was.
    """
    head = raw.readline(BLOCK_LINE_LIMIT)
    simple = (
        raw.seekable()
        and head.endswith(b"\n")
        and b'"' not in head
        and head.count(b"\r") == head.endswith(b"\r\n")
    )
    if not simple:
        raw.seek(0)
        return _feed_csv(
            source, raw, offset=0, lines=0, builder=None, make_builder=make_builder, write=write
        )
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(source, 1, exc) from None
    builder = make_builder(_header(source, next(csv.reader([text]), None)))
    offset, lines, pending = len(head), 1, b""
    while True:
        chunk = raw.read(READ_CHUNK)
        buf = pending + chunk if pending else chunk
        if not chunk:
            if not buf:
                return builder
            buf += b"\n"  # the last line has no line break: csv reads it the same
        cut = buf.rfind(b"\n") + 1
        if not cut:
            if len(buf) > BLOCK_LINE_LIMIT:  # CR-only line ends, or a huge line
                break
            pending = buf
            continue
        block, pending = buf[:cut], buf[cut:]
        if b'"' in block:
            break
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(source, lines + block.count(b"\n", 0, exc.start) + 1, exc) from None
        out = builder.process_text(text)
        if out is None:
            reader = csv.reader(io.StringIO(text, newline=""))
            try:
                out = builder.process(list(reader))
            except csv.Error as exc:
                raise _not_csv(source, lines + reader.line_num, exc) from None
        write(out)
        offset += len(block)
        lines += block.count(b"\n")
        if not chunk:
            return builder
    raw.seek(offset)
    return _feed_csv(
        source,
        raw,
        offset=offset,
        lines=lines,
        builder=builder,
        make_builder=make_builder,
        write=write,
    )


def _feed_csv(
    source: Path,
    raw: BinaryIO,
    *,
    offset: int,
    lines: int,
    builder: CohortBuilder | None,
    make_builder: Callable[[list[str]], CohortBuilder],
    write: Callable[[bytes], None],
) -> CohortBuilder:
    """Read from byte ``offset`` (after ``lines`` lines) to the end with csv.reader."""
    handle = io.TextIOWrapper(raw, encoding="utf-8-sig" if offset == 0 else "utf-8", newline="")
    reader = csv.reader(handle)
    try:
        if builder is None:
            builder = make_builder(_header(source, next(reader, None)))
        while batch := list(islice(reader, BATCH_ROWS)):
            write(builder.process(batch))
    except UnicodeDecodeError as exc:
        raise _not_utf8(source, lines + reader.line_num + 1, exc) from None
    except csv.Error as exc:
        raise _not_csv(source, lines + reader.line_num, exc) from None
    finally:
        handle.detach()  # the caller closes the file
    return builder


def build_cohort(
    source: str | Path,
    *,
    action: str,
    profile: Profile,
    nic: str,
    out_dir: str | Path,
    mapping: Mapping[str, str] | None = None,
    allow_problems: bool = False,
) -> BuildResult:
    """Study export CSV -> ``out_dir/<profile.file_name(nic)>``, streaming.

    Refuses to write (``path`` None) when there are problems, unless ``allow_problems``.
    The file appears complete or not at all.
    """
    source = Path(source)
    target = Path(out_dir) / profile.file_name(nic)
    writer: _AtomicWriter | None = None

    def make_builder(header: list[str]) -> CohortBuilder:
        nonlocal writer
        builder = CohortBuilder(profile, action=action, source_header=header, mapping=mapping)
        try:
            writer = _AtomicWriter(target)
        except OSError as exc:
            raise _cannot_write(target, exc) from None
        writer.write(builder.header_bytes())
        return builder

    def write(data: bytes) -> None:
        assert writer is not None
        writer.write(data)

    with _open_source(source) as raw, _gc_paused():
        try:
            builder = _feed_source(source, raw, make_builder, write)
            assert writer is not None
            problems = builder.finish()
            if problems and not allow_problems:
                return BuildResult(
                    path=None,
                    rows=builder.rows,
                    sha256=None,
                    action=action,
                    problems=problems,
                    problem_counts=dict(builder.log.counts),
                    truncated=builder.log.truncated,
                    invalid_rows=builder.log.invalid_rows,
                    notices=builder.notices,
                )
            writer.commit()
        except OSError as exc:
            raise _cannot_write(target, exc) from None
        finally:
            if writer is not None:
                writer.__exit__()
    return BuildResult(
        path=str(target),
        rows=builder.rows,
        sha256=writer.sha256.hexdigest(),
        action=action,
        problems=problems,
        problem_counts=dict(builder.log.counts),
        truncated=builder.log.truncated,
        invalid_rows=builder.log.invalid_rows,
        notices=builder.notices,
    )


def _cannot_write(target: Path, exc: OSError) -> CohortSourceError:
    return CohortSourceError(
        f"cannot write {target}: {exc.strerror or exc}",
        hint="check that the output directory is writable and has space",
    )


# --- read back ------------------------------------------------------------------------------


def iter_file_records(path: str | Path, profile: Profile) -> Iterator[dict[str, str]]:
    """The data rows of an NHS cohort file as {field name: value}, streaming (for the
    ledger to record references and rows). The header must be the profile's."""
    path = Path(path)
    try:
        handle = path.open("r", encoding="utf-8", errors="replace", newline="")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is not None and header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        if header != list(profile.header):
            raise InputError(
                f"{path}: the header is not profile {profile.name}'s",
                hint=f"check it with: seftpilot cohort validate {path} --profile {profile.name}",
            )
        names = profile.field_names
        for row in reader:
            if row:
                yield dict(zip(names, row, strict=False))
