"""docs/configuration.md lists every settings key: operators read it, so it must not drift."""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import BaseModel

from seftpilot.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        sub = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if sub is None:
            found.append((prefix, name))
        else:
            found.extend(_keys(sub, f"{prefix}.{name}" if prefix else name))
    return found


def test_every_setting_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    sections = {"": text.split("### `", 1)[0]}
    for chunk in text.split("### `")[1:]:
        header, _, body = chunk.partition("\n")
        sections[header.split("`")[0].strip("[]")] = body
    sections[""] = text.split("### top level", 1)[1].split("### `", 1)[0]
    missing = [
        f"{section}.{key}" if section else key
        for section, key in _keys(Settings)
        if f"| `{key}` |" not in sections.get(section, "")
    ]
    assert not missing, f"docs/configuration.md lacks: {missing}"
