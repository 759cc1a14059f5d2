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
    # The example configuration is itself valid once the secrets it names are filled in.
    example = (site / ".env.example").read_text()
    (site / ".env").write_text(
        example.replace("IMAP__PASSWORD=", "IMAP__PASSWORD=imap-x").replace(
            "SMTP__PASSWORD=", "SMTP__PASSWORD=smtp-x"
        )
    )
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
    # The secrets it needs are there; the missing agreement is a configuration mistake
    # (exit 2), and its name keeps its brackets.
    cfg = site_config(tmp_path, rules=[str(tmp_path / "none")], imap={"password": "x"})
    assert run(["check", "--config", str(cfg)]) == 2
    assert "no [[agreement]] configured" in capsys.readouterr().out


def test_misspelt_key_suggests_the_right_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = site_config(tmp_path, imap={"poll_intervall_seconds": 60}, operatr={"emails": []})
    assert run(["check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    # Every mistake, each with its key and the likely intended one; not pydantic's
    # "Extra inputs are not permitted".
    assert "unknown key 'poll_intervall_seconds' in [imap]" in err
    assert "did you mean 'poll_interval_seconds'?" in err
    assert "unknown key 'operatr' at the top level: did you mean 'operator'?" in err
    assert "Extra inputs" not in err and "docs/configuration.md" in err


def test_a_mistake_from_the_environment_names_the_variable_not_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = site_config(tmp_path, agreement=[{"nic": "NIC-402963-P0Y5D"}])
    monkeypatch.setenv("SEFTPILOT_IMAP__PASWORD", "hunter2-never-shown")
    assert run(["check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "set by environment variable SEFTPILOT_IMAP__PASWORD" in err
    assert "did you mean 'password'?" in err
    assert "hunter2" not in err


def test_toml_syntax_error_says_so_and_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "seftpilot.toml"
    cfg.write_text('state_dir = "state"\n[imap]\nhost = "a"\nhost = "b"\n')
    assert run(["check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "not valid TOML" in err and "line 4" in err and "a key written twice" in err


def test_missing_default_file_names_the_directory_and_a_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["check"]) == 2  # the tests run in tmp_path, which holds no seftpilot.toml
    err = capsys.readouterr().err
    assert str(tmp_path / "seftpilot.toml") in err and "SEFTPILOT_CONFIG" in err
    # A directory given as --config was read as an empty file: defaults, silently.
    assert run(["check", "--config", str(tmp_path)]) == 2
    assert "a directory, not a settings file" in capsys.readouterr().err


def test_init_says_how_to_run_check_for_the_new_site_without_cd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # .env is read beside the settings file, so --config is all the next step needs.
    assert run(["init", "site"]) == 0
    out = capsys.readouterr().out
    assert "copy site/.env.example to site/.env (beside seftpilot.toml" in out
    assert "`seftpilot check --connect --config site/seftpilot.toml`" in out
    assert "cd " not in out


def test_check_names_the_env_file_it_read_and_the_one_it_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(["init", "site"]) == 0
    (tmp_path / "site" / ".env").write_text("SEFTPILOT_IMAP__PASSWORD=hunter2-beside\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / ".env").write_text("SEFTPILOT_IMAP__PASSWORD=hunter2-cwd\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    run(["check", "--config", str(tmp_path / "site" / "seftpilot.toml")])
    out = capsys.readouterr().out
    read, ignored = tmp_path / "site" / ".env", tmp_path / "elsewhere" / ".env"
    assert f".env: read {read}; ignored {ignored}" in out
    assert "hunter2" not in out


def _leaf_commands() -> dict[str, object]:
    import typer

    from seftpilot.cli import app

    leaves: dict[str, object] = {}

    def walk(command: object, path: str) -> None:
        children = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                walk(child, f"{path} {name}".strip())
        else:
            leaves[path] = command

    walk(typer.main.get_command(app), "")
    return leaves


def test_every_command_help_ends_with_examples_of_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from seftpilot.cli.examples import EXAMPLES

    leaves = _leaf_commands()
    assert len(leaves) > 20
    for path, command in leaves.items():
        epilog = getattr(command, "epilog", None) or ""
        lines = [line.strip() for line in epilog.splitlines()[1:] if line.strip()]
        assert lines, f"`seftpilot {path} --help` has no example"
        assert all(line.startswith(f"seftpilot {path}") for line in lines), path
        # The command lists show the first paragraph: one line, or it wraps mid-sentence.
        summary = (getattr(command, "help", None) or "").split("\n\n")[0]
        assert summary and "\n" not in summary, f"{path}: {summary!r}"
    assert set(EXAMPLES) <= set(leaves), "examples for commands that do not exist"

    assert run(["cohort", "build", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and "seftpilot cohort build export.csv --action ADD" in out


def test_check_lists_each_missing_secret_and_exits_2_without_showing_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["init", "site"]) == 0
    site = tmp_path / "site"
    config = str(site / "seftpilot.toml")
    capsys.readouterr()
    # Nothing yet: both secrets the example's IMAP and SMTP AUTH need, each on its own line.
    assert run(["check", "--config", config]) == 2
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2, out
    assert "imap.password is not set" in fails[0] and "smtp.password is not set" in fails[1]
    assert f"SEFTPILOT_IMAP__PASSWORD=... in {site / '.env'}" in out
    # .env.example copied as it is: a blank line is no password.
    (site / ".env").write_text((site / ".env.example").read_text())
    assert run(["check", "--config", config, "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert [c["key"] for c in failed] == ["imap.password", "smtp.password"]
    assert all(c["configuration_error"] for c in failed) and report["exit_code"] == 2
    assert "imap.password is empty" in failed[0]["detail"]
    # Filled in: named as set, never shown.
    (site / ".env").write_text(
        "SEFTPILOT_IMAP__PASSWORD=hunter2-imap\nSEFTPILOT_SMTP__PASSWORD=hunter2-smtp\n"
    )
    assert run(["check", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "secrets: set: imap.password, smtp.password" in out
    assert "hunter2" not in out


def test_check_asks_for_oauth_settings_and_sftp_credentials_the_features_need(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    cfg = site_config(
        tmp_path,
        imap={"auth": "xoauth2", "oauth": {"flow": "client_credentials"}},
        partner={"sftp": {"host": "partner.example", "known_hosts": known_hosts}},
        agreement=[
            {
                "nic": "NIC-402963-P0Y5D",
                "upload": {
                    "transport": "sftp",
                    "sftp": {"host": "seft.example", "key_file": "absent_key"},
                },
            }
        ],
    )
    assert run(["check", "--config", str(cfg), "--json"]) == 2
    checks = json.loads(capsys.readouterr().out)["checks"]
    failed = [c for c in checks if c["name"] == "secrets"]
    assert [c["key"] for c in failed] == [
        "imap.oauth.client_id",
        "imap.oauth.client_secret",
        "agreement.0.upload.sftp.key_file",
        "partner.sftp.key_file",
    ]
    details = "\n".join(c["detail"] for c in failed)
    assert f"the private key file {tmp_path / 'absent_key'} does not exist" in details
    assert "SEFTPILOT_PARTNER__SFTP__PASSWORD" in details
