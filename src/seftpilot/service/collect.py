"""Collecting a delivery's files: SEFT's download area over SFTP, a drop folder, or a folder
the operator names (``seftpilot forward --from DIR``).

Owns looking at a source (``look``: what is there, is it ready, pure decisions from
``core.delivery``) and bringing the files into the delivery's work dir (``bring``):
downloads (each checked against the listed size and fetched again when wrong, by
``adapters.sftp``), moves out of the drop folder (so the next delivery never sees them
again), or copies (``--from``: the operator's folder stays theirs). Everything lands in
``<work_dir>/files`` (0700) as 0600 files, streamed (never held in memory); a file lands
under its own name only complete, so after a crash whatever is already there is whole.

Must not claim or record anything (``service.forward`` does), hash twice (the manifest is
built once from the landed files) or collect an unfinished download.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from seftpilot.adapters.delivery_store import Delivery
from seftpilot.adapters.manifest import Manifest, build_manifest
from seftpilot.config import Agreement, SftpEndpoint
from seftpilot.core.delivery import SeenFile, folder_decision, is_partial, new_remote_files
from seftpilot.errors import ConfigError, InputError, PermanentError

if TYPE_CHECKING:
    from seftpilot.adapters.sftp import SftpClient

Progress = Callable[[str, int, int], None]
"""``progress(phase, done_bytes, total_bytes)``."""

CHUNK = 1024 * 1024


@dataclass
class Look:
    """What a source holds now and whether the delivery may collect it."""

    ready: bool
    reason: str
    files: list[SeenFile] = field(default_factory=list)  # what ``bring`` will collect
    partial: list[str] = field(default_factory=list)  # unfinished downloads left alone
    snapshot: list[SeenFile] | None = None  # drop folder: remember for the next look
    quiet_since: datetime | None = None


@dataclass
class Collected:
    manifest: Manifest
    sources: Mapping[str, tuple[str, int | None]]  # name -> (where it came from, remote mtime)
    seen: list[SeenFile]  # remote files now collected (never collected again)


def files_dir(delivery: Delivery) -> Path:
    return Path(delivery.work_dir) / "files"


def ensure_private_dir(path: Path) -> Path:
    """``path`` and its missing parents as 0700 directories."""
    # mkdir(parents=True) would make the parents with the default mode (0755 under the
    # usual umask): the deliveries folder above each work dir was world-readable.
    for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):
        missing.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


def download_endpoint(agreement: Agreement) -> SftpEndpoint:
    if agreement.download.sftp is None:
        raise ConfigError(
            f"agreement {agreement.nic} collects from SFTP but has no download.sftp endpoint",
            key="agreement.download.sftp",
            hint="add [agreement.download.sftp] (SEFT's download area), or set "
            "download.source = 'folder'",
        )
    return agreement.download.sftp


def _scan(folder: Path) -> list[SeenFile]:
    """Every regular file directly in ``folder`` (partial downloads included)."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InputError(
            f"cannot read the folder {folder}: {exc.strerror or exc}",
            hint="check it exists and this user may read it",
        ) from None
    out = []
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                info = entry.stat(follow_symlinks=False)
                out.append(SeenFile(entry.name, info.st_size, info.st_mtime_ns))
        except FileNotFoundError:
            continue  # renamed away while we looked (a browser finishing a download)
    return sorted(out)


def _landed(delivery: Delivery) -> list[SeenFile]:
    return [f for f in _scan(files_dir(delivery)) if not f.name.startswith(".")]


# -- looking ------------------------------------------------------------------------------
def complete_files(folder: Path) -> list[SeenFile]:
    """The files in ``folder`` that are neither unfinished downloads nor hidden."""
    return [f for f in _scan(folder) if not is_partial(f.name)]


def plain_name(name: str) -> bool:
    """A file name with no path in it: the only kind a download may be written under."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\x00")


def _refuse_paths(names: list[str], server: str) -> None:
    """A listing is the server's word: a name with a path in it (``../../x``, ``/etc/x``)
    would write outside the work dir, so the collection stops and the operator is told."""
    unsafe = [n for n in names if not plain_name(n)]
    if unsafe:
        raise PermanentError(
            f"the download area lists {len(unsafe)} name(s) that are not plain file names: "
            f"{', '.join(repr(n) for n in unsafe[:3])}; refused, nothing was downloaded",
            server=server,
            hint="ask the server's administrator what these are and have them removed",
        )


def look_sftp(client: SftpClient, seen: list[SeenFile]) -> Look:
    listing = [SeenFile(f.name, f.size, f.mtime) for f in client.list()]
    _refuse_paths([f.name for f in listing], client.server)
    new = new_remote_files(listing, seen)
    partial = [f.name for f in listing if is_partial(f.name)]
    if not new:
        return Look(False, "the download area holds nothing new", partial=partial)
    total = sum(f.size for f in new)
    return Look(True, f"{len(new)} new file(s), {total} bytes", new, partial)


def look_folder(
    folder: Path,
    delivery: Delivery | None,
    now: datetime,
    quiet_seconds: int,
    expected_count: int | None,
    *,
    by_hand: bool,
) -> Look:
    """The drop folder: ready when quiet long enough (looks are compared across job runs
    with the injected clock) or the expected count is there; by hand, ready at once
    unless a download is unfinished."""
    if delivery is not None and _landed(delivery):
        # A crash after some files were moved: the decision was taken, finish the move.
        rest = [f for f in _scan(folder) if not is_partial(f.name)]
        return Look(True, "resuming an interrupted collection", rest)
    snapshot = _scan(folder)
    complete = [f for f in snapshot if not is_partial(f.name)]
    partial = [f.name for f in snapshot if is_partial(f.name) and not f.name.startswith(".")]
    if by_hand:
        if partial:
            raise InputError(
                f"{folder} holds unfinished downloads: {', '.join(partial[:5])}"
                + (" ..." if len(partial) > 5 else ""),
                hint="wait until the browser has finished (or delete what it abandoned), "
                "then run `seftpilot forward` again",
            )
        if not complete:
            return Look(False, f"{folder} holds no file")
        return Look(True, f"{len(complete)} file(s) in {folder}", complete)
    decision = folder_decision(
        snapshot,
        delivery.observed if delivery is not None else None,
        delivery.quiet_since if delivery is not None else None,
        now,
        quiet_seconds,
        expected_count,
    )
    return Look(
        decision.ready,
        decision.reason,
        list(decision.complete),
        list(decision.partial),
        snapshot,
        decision.quiet_since,
    )


def look_dir(folder: Path) -> Look:
    if not folder.is_dir():
        raise InputError(
            f"--from {folder}: not a folder",
            hint="name the folder holding the files NHS England returned",
        )
    snapshot = _scan(folder)
    partial = [f.name for f in snapshot if is_partial(f.name) and not f.name.startswith(".")]
    if partial:
        raise InputError(
            f"--from {folder} holds unfinished downloads: {', '.join(partial[:5])}",
            hint="wait until they finish (or delete them), then run again",
        )
    complete = [f for f in snapshot if not is_partial(f.name)]
    if not complete:
        raise InputError(f"--from {folder} holds no file", hint="check the folder name")
    return Look(True, f"{len(complete)} file(s) in {folder}", complete)


# -- bringing -----------------------------------------------------------------------------
def _copy_private(src: Path, dest: Path) -> None:
    """Stream ``src`` to ``dest`` (0600) via a hidden temporary name."""
    temp = dest.with_name(f".{dest.name}.part")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _move_private(src: Path, dest: Path) -> None:
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_private(src, dest)  # another filesystem: copy, then remove the original
        src.unlink()
    dest.chmod(0o600)


def _clear_leftovers(target: Path, keep: set[str]) -> None:
    """Remove what an earlier attempt left that is not part of this collection."""
    for entry in target.iterdir():
        if entry.name not in keep and entry.is_file():
            entry.unlink()


def bring_sftp(
    client: SftpClient, delivery: Delivery, files: list[SeenFile], progress: Progress | None
) -> Collected:
    _refuse_paths([f.name for f in files], client.server)
    target = ensure_private_dir(files_dir(delivery))
    names = {f.name for f in files}
    _clear_leftovers(target, names)
    total = sum(f.size for f in files)
    done = 0
    for remote in files:
        local = target / remote.name
        # A file under its own name is a completed, size-checked download (the adapter
        # renames into place only then): an interrupted collection resumes after it.
        if not (local.exists() and local.stat().st_size == remote.size):
            base = done

            def each(got: int, _size: int, base: int = base) -> None:
                if progress is not None:
                    progress("download", base + got, total)

            client.download(remote.name, local, expected_size=remote.size, progress=each)
        local.chmod(0o600)
        done += remote.size
        if progress is not None:
            progress("download", done, total)
    ep = client.endpoint
    source = f"sftp://{ep.host}:{ep.port}/{ep.remote_dir.strip('/')}".rstrip("/")
    manifest = build_manifest([target / f.name for f in files], source)
    sources = {f.name: (client.path(f.name), f.mtime) for f in files}
    return Collected(manifest, sources, list(files))


def bring_local(
    delivery: Delivery,
    folder: Path,
    files: list[SeenFile],
    *,
    move: bool,
    progress: Progress | None,
) -> Collected:
    """Move (drop folder) or copy (``--from``) ``files`` into the work dir."""
    target = ensure_private_dir(files_dir(delivery))
    landed = {f.name for f in _landed(delivery)} if move else set()
    names = {f.name for f in files} | landed
    _clear_leftovers(target, names)
    total = sum(f.size for f in files)
    done = 0
    for f in files:
        src, dest = folder / f.name, target / f.name
        if move:
            _move_private(src, dest)
        else:
            _copy_private(src, dest)
        done += f.size
        if progress is not None:
            progress("collect", done, total)
    kind = "folder" if move else "dir"
    paths = sorted(target / n for n in names)
    manifest = build_manifest(paths, f"{kind}:{folder.resolve()}")
    sources = {p.name: (str(folder.resolve() / p.name), None) for p in paths}
    return Collected(manifest, sources, [])
