"""Delivery manifests: name, size and SHA-256 of every file, and where they came from.

Owns building a manifest from files on disk (streaming: memory stays flat whatever their
size) and its JSON form, which the ledger records and ``archive.verify_archive`` checks.
It must not decide which files belong to a delivery (the service does) nor modify them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seftpilot.errors import InputError

CHUNK = 1024 * 1024
FORMAT = "seftpilot-manifest/1"


@dataclass(frozen=True)
class ManifestEntry:
    name: str  # the member name in the archive: the file's base name
    size: int
    sha256: str  # lowercase hex


@dataclass(frozen=True)
class Manifest:
    source: str  # e.g. "sftp://host:22/dir" or "folder:/path"
    files: tuple[ManifestEntry, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def by_name(self) -> dict[str, ManifestEntry]:
        return {f.name: f for f in self.files}

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "source": self.source,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            doc: Any = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
            files = tuple(
                ManifestEntry(str(f["name"]), int(f["size"]), str(f["sha256"]).lower())
                for f in doc["files"]
            )
            return cls(source=str(doc["source"]), files=files)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"not a seftpilot manifest: {exc}") from None


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def build_manifest(paths: Iterable[Path], source: str) -> Manifest:
    """Hash every file in ``paths``; names must be unique (they become archive members)."""
    entries: list[ManifestEntry] = []
    seen: dict[str, Path] = {}
    for path in paths:
        if path.name in seen:
            raise InputError(
                f"two files are both named {path.name!r}: {seen[path.name]} and {path}",
                hint="an archive member name must be unique; rename or drop one of them",
            )
        seen[path.name] = path
        try:
            size, digest = sha256_file(path)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        entries.append(ManifestEntry(path.name, size, digest))
    return Manifest(source=source, files=tuple(entries))
