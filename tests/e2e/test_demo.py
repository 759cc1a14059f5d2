"""`seftpilot demo`: the whole loop against the sandbox, checked the way a user would."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import py7zr
import pytest

from seftpilot.cli import run


def _extract(archive: Path, passphrase: str, into: Path) -> dict[str, str]:
    with py7zr.SevenZipFile(archive, mode="r", password=passphrase) as z:
        z.extractall(path=into)
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in into.rglob("*") if p.is_file()
    }


def test_demo_json_happy_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo_dir = tmp_path / "demo"
    assert run(["demo", "--json", "--dir", str(demo_dir)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)

    # Legacy intake: success is silence, and silence became a verdict only with evidence.
    [submission] = summary["submissions"]
    assert submission["action"] == "ADD"
    assert submission["rows"] == 40
    assert submission["verdict"] == "presumed_success"
    assert summary["believed_pool"] == 40 == summary["nhs"]["pool"]

    # The partner's drop holds one isaric-* archive; the passphrase came by mail and opens it;
    # inside are exactly the files NHS England placed in the download area, byte for byte.
    [delivery] = summary["deliveries"]
    archive = Path(delivery["archive"])
    assert archive.parent == Path(summary["partner_drop"])
    assert archive.name.startswith("isaric-") and archive.suffix == ".7z"
    assert delivery["files"] == 5
    with pytest.raises(Exception):  # noqa: B017 - any refusal: without the passphrase it stays shut
        _extract(archive, "WRONG-PASS-WORD-AAAA-BBBB-CCCC-DDDD", tmp_path / "wrong")
    inside = _extract(archive, delivery["passphrase"], tmp_path / "opened")
    assert inside == summary["nhs"]["returned_files"]
    assert len(inside) == 5
    download_area = demo_dir / "sandbox" / "seft-download" / "root"
    for name, digest in inside.items():
        assert hashlib.sha256((download_area / name).read_bytes()).hexdigest() == digest

    assert summary["digests_sent"] >= 1
    assert summary["ok"] is True and summary["problems"] == []
    # Only loopback servers were used, and the live view went to stderr as plain lines.
    assert "\x1b[" not in captured.err
    assert "== Building the cohort file" in captured.err
    assert "verdict presumed_success" in captured.err
    assert "delivery #1 uploaded" in captured.err


def test_demo_refuses_a_directory_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "something").write_text("x")
    assert run(["demo", "--dir", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
