"""`seftpilot init` and `check` as an operator uses them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from seftpilot.cli import run
from tests.fixtures.site_config import site_config


def test_init_writes_commented_config_rules_and_env_example(tmp_path: Path) -> None:
    assert run(["init", str(tmp_path / "site")]) == 0
    site = tmp_path / "site"
    toml = (site / "seftpilot.toml").read_text()
    assert "[[agreement]]" in toml and "# " in toml
    assert (site / ".env.example").stat().st_mode & 0o777 == 0o600
    # The example configuration is itself valid.
    assert run(["check", "--config", str(site / "seftpilot.toml")]) == 0


def test_init_keeps_existing_files_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "seftpilot.toml").write_text("# mine\n")
    assert run(["init", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"]["seftpilot.toml"] == "kept"
    assert (tmp_path / "seftpilot.toml").read_text() == "# mine\n"
    assert run(["init", str(tmp_path), "--force"]) == 0
    assert "[[agreement]]" in (tmp_path / "seftpilot.toml").read_text()


def test_config_error_names_key_and_file_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two mistakes: a NIC in the wrong form and a misspelt key (imap.prot).
    cfg = site_config(tmp_path, name="bad.toml", agreement=[{"nic": "NIC-1-X"}], imap={"prot": 993})
    assert run(["check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err
    assert "agreement.0.nic" in err or "imap.prot" in err


def test_missing_config_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["check", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "seftpilot init" in capsys.readouterr().err


def test_environment_overrides_file_and_secret_never_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seftpilot.config import load_settings

    assert run(["init", str(tmp_path)]) == 0
    monkeypatch.setenv("SEFTPILOT_IMAP__PASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("SEFTPILOT_IMAP__PORT", "1993")
    cfg = load_settings(tmp_path / "seftpilot.toml")
    assert cfg.imap.port == 1993
    assert cfg.imap.password is not None
    assert cfg.imap.password.get_secret_value() == "hunter2-very-secret"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())


def test_usage_error_exits_2() -> None:
    assert run(["no-such-command"]) == 2
    assert os.EX_USAGE != 2  # documents that we follow click's 2, not sysexits' 64


def test_check_prints_bracketed_names_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = site_config(tmp_path, rules=[str(tmp_path / "none")])
    assert run(["check", "--config", str(cfg)]) == 1
    assert "no [[agreement]] configured" in capsys.readouterr().out
