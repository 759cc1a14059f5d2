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
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

from seftpilot.core.cohort import BuildResult, CohortBuilder, CohortValidator, ValidationReport
from seftpilot.core.cohort_profile import (
    Profile,
    derive_profile_data,
    load_yaml,
    parse_profile,
)
from seftpilot.errors import CohortSourceError, InputError, ProfileError

DEFAULT_PROFILE = "mps-legacy-24"
READ_CHUNK = 1 << 20  # validator feed size: big enough that per-block overhead vanishes
BATCH_ROWS = 20_000  # builder batch: columns of this many values stay well inside the cache


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


def _open_source(source: Path) -> Any:
    try:
        return source.open("r", encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise CohortSourceError(
            f"study export {source}: no such file", hint="check the path of the export"
        ) from None
    except IsADirectoryError:
        raise CohortSourceError(f"study export {source} is a directory, not a CSV file") from None
    except OSError as exc:
        raise CohortSourceError(
            f"study export {source}: cannot read: {exc.strerror or exc}",
            hint="check the file's permissions",
        ) from None


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
    with _open_source(source) as handle, _gc_paused():
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
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
            builder = CohortBuilder(profile, action=action, source_header=header, mapping=mapping)
            with _AtomicWriter(target) as writer:
                writer.write(builder.header_bytes())
                while batch := list(islice(reader, BATCH_ROWS)):
                    writer.write(builder.process(batch))
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
                    )
                writer.commit()
        except UnicodeDecodeError as exc:
            raise CohortSourceError(
                f"study export {source} is not UTF-8 text near line {reader.line_num + 1} "
                f"({exc.reason})",
                hint="export or save it as 'CSV UTF-8'",
            ) from None
        except csv.Error as exc:
            raise CohortSourceError(
                f"study export {source}, line {reader.line_num}: not readable as CSV: {exc}"
            ) from None
        except OSError as exc:
            raise CohortSourceError(
                f"cannot write {target}: {exc.strerror or exc}",
                hint="check that the output directory is writable and has space",
            ) from None
    return BuildResult(
        path=str(target),
        rows=builder.rows,
        sha256=writer.sha256.hexdigest(),
        action=action,
        problems=problems,
        problem_counts=dict(builder.log.counts),
        truncated=builder.log.truncated,
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
