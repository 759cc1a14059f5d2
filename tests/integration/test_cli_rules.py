"""`seftpilot rules check | schema | test` as an operator uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seftpilot.cli import run

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_mail"


def out_json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def test_rules_test_json_contract_with_packaged_fallback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = [SAMPLE_DIR / "failure-plain.eml", SAMPLE_DIR / "new-data-plain.eml"]
    assert run(["rules", "test", "--json", *map(str, files)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert "packaged default rules" in captured.err  # no config, no ./rules: said out loud
    assert [set(d) for d in doc] == [{"file", "rule", "class", "action", "captures"}] * 2
    assert doc[0]["file"] == str(files[0])
    assert (doc[0]["rule"], doc[0]["class"], doc[0]["action"]) == (
        "nhs-validation-failed",
        "submission_failed",
        "alert",
    )
    assert doc[0]["captures"]["nic"] == "NIC-402963-P0Y5D"
    assert doc[1]["class"] == "new_data" and doc[1]["action"] == "forward"


def test_rules_test_explain_shows_conditions_and_near_misses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = [SAMPLE_DIR / "failure-plain.eml", SAMPLE_DIR / "spoofed-success-outside-nhs.eml"]
    assert run(["rules", "test", "--explain", *map(str, files)]) == 0
    out = capsys.readouterr().out
    assert "because:" in out
    assert "matched '@nhsdigital.nhs.uk'" in out
    assert "closest rules that did not match:" in out
    assert "nhs-validation-succeeded" in out
    assert "did not hold: from regex" in out


def test_init_then_check_and_test_use_the_sites_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    assert run(["init", str(site)]) == 0
    config = str(site / "seftpilot.toml")
    capsys.readouterr()
    assert run(["rules", "check", "--config", config, "--json"]) == 0
    report = out_json(capsys)
    assert isinstance(report, dict) and report["ok"] is True
    assert report["files"][-1].endswith("99-default.yaml")
    # An operator's local rule, in a file that sorts before the default, takes effect.
    (site / "rules" / "50-local.yaml").write_text(
        "rules:\n"
        "  - name: lunch\n"
        "    when: {subject: {contains: lunch}}\n"
        "    class: ignore\n"
        "    action: ignore\n"
    )
    eml = str(SAMPLE_DIR / "unrelated-colleague.eml")
    assert run(["rules", "test", "--config", config, "--json", eml]) == 0
    assert out_json(capsys) == [
        {"file": eml, "rule": "lunch", "class": "ignore", "action": "ignore", "captures": {}}
    ]
    # `seftpilot check` runs the same rules check (with the secrets the site needs).
    (site / ".env").write_text("SEFTPILOT_IMAP__PASSWORD=x\nSEFTPILOT_SMTP__PASSWORD=y\n")
    assert run(["check", "--config", config, "--json"]) == 0
    checks = out_json(capsys)
    assert isinstance(checks, dict)
    assert {"name": "rules", "ok": True, "detail": "12 rules from 4 files"} in checks["checks"]


def test_broken_rules_file_exits_1_naming_file_line_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: nhs-failure\n"
        "    class: submission_failed\n"
        "    action: alert\n"
        "    when:\n"
        "      subjet: {contains: failed}\n"
        "  - {name: default, class: unmatched, action: alert}\n"
    )
    assert run(["rules", "check", "--rules", str(rules)]) == 1
    err = capsys.readouterr().err
    assert f"{rules}:6: rule 'nhs-failure': unknown condition 'subjet'" in err
    assert "did you mean 'subject'?" in err
    # rules test refuses to classify with broken rules, with the same message.
    assert run(["rules", "test", "--rules", str(rules), str(SAMPLE_DIR / "canary.eml")]) == 1
    assert f"{rules}:6: rule 'nhs-failure'" in capsys.readouterr().err


def test_a_regex_in_an_error_is_printed_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "[a-z]" looks like a style tag to the terminal; it must reach the operator intact.
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: broken\n"
        "    class: notice\n"
        "    action: ignore\n"
        "    when:\n"
        "      subject: {regex: '[a-z]('}\n"
        "  - {name: default, class: unmatched, action: alert}\n"
    )
    assert run(["rules", "check", "--rules", str(rules)]) == 1
    assert "bad regex '[a-z]('" in capsys.readouterr().err


def test_shadowed_rule_is_reported_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {name: any-failure, class: submission_failed, action: alert,\n"
        "     when: {subject: {contains: failed}}}\n"
        "  - {name: validation-failure, class: submission_failed, action: alert,\n"
        "     when: {all: [{subject: {contains: validation failed}}]}}\n"
        "  - {name: default, class: unmatched, action: alert}\n"
    )
    assert run(["rules", "check", "--rules", str(rules), "--json"]) == 1
    report = out_json(capsys)
    assert isinstance(report, dict)
    assert report["errors"] == []
    (problem,) = report["lint"]
    assert problem["rule"] == "validation-failure"
    assert problem["code"] == "shadowed"
    assert problem["origin"] == f"{rules}:4"
    assert "'any-failure'" in problem["message"]


def test_configured_rules_path_missing_is_not_silently_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "seftpilot.toml"
    config.write_text('rules = ["my-rules"]\n')
    assert run(["rules", "check", "--config", str(config)]) == 1
    assert f"{tmp_path / 'my-rules'}: rules file or directory not found" in capsys.readouterr().err


def test_rules_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["rules", "schema"]) == 0
    schema = out_json(capsys)
    assert isinstance(schema, dict)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "rules" in schema["properties"]


def test_missing_eml_is_a_usage_error(tmp_path: Path) -> None:
    assert run(["rules", "test", str(tmp_path / "nope.eml")]) == 2
