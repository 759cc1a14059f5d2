"""`seftpilot cohort build` and `cohort validate` as an operator runs them, on real files."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from seftpilot.adapters.cohort_files import iter_file_records, load_profile
from seftpilot.cli import run
from seftpilot.core.synthetic import EXPORT_HEADER, export_rows

NIC = "NIC-402963-P0Y5D"


def write_export(path: Path, rows: int = 500, *, seed: int = 1, messy: float = 0.2) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(EXPORT_HEADER)
        writer.writerows(export_rows(rows, seed=seed, messy=messy))
    return path


def config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "seftpilot.toml"
    cfg.write_text(f'[[agreement]]\nnic = "{NIC}"\n{extra}')
    return cfg


def test_build_then_validate_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_export(tmp_path / "export.csv")
    out = tmp_path / "outbox"
    cfg = config(tmp_path)
    assert (
        run(
            [
                "cohort",
                "build",
                str(source),
                "--action",
                "ADD",
                "--out",
                str(out),
                "--config",
                str(cfg),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    target = out / f"{NIC}.csv"
    assert result["path"] == str(target)
    assert (result["rows"], result["action"], result["problems"]) == (500, "ADD", [])
    assert result["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in out.iterdir()) == [f"{NIC}.csv"]  # no temporary left

    assert run(["cohort", "validate", str(target), "--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True
    assert (report["rows"], report["action"], report["problems"]) == (500, "ADD", [])

    records = list(iter_file_records(target, load_profile()))
    assert len(records) == 500
    assert records[0]["UNIQUE_REFERENCE"] == "SYN-01-0000000"
    assert records[0]["STATUS"] == "ADD"


def test_validate_json_contract_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "cohort.csv"
    bad.write_bytes(b"UNIQUE_REFERENCE,NHS_NO\nA1,123\n")
    assert run(["cohort", "validate", str(bad), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {
        "valid",
        "rows",
        "action",
        "problems",
        "invalid_rows",
        "invalid_share",
        "nhs_threshold_exceeded",
    }
    assert report["valid"] is False and report["rows"] == 1 and report["action"] is None
    for problem in report["problems"]:
        assert set(problem) == {"row", "column", "code", "message"}
        assert problem["row"] is None or isinstance(problem["row"], int)
        assert problem["column"] is None or isinstance(problem["column"], str)
    found = {p["code"] for p in report["problems"]}
    assert {
        "incorrect_headers",
        "wrong_column_count",
        "wrong_line_endings",
        "wrong_filename",
    } <= found


def test_validate_human_output_names_row_column_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_export(tmp_path / "export.csv", 20)
    assert (
        run(
            [
                "cohort",
                "build",
                str(source),
                "--action",
                "ADD",
                "--out",
                str(tmp_path),
                "--nic",
                NIC,
            ]
        )
        == 0
    )
    target = tmp_path / f"{NIC}.csv"
    data = target.read_bytes().split(b"\r\n")
    fields = data[3].split(b",")
    fields[1] = b"9.43E+09"
    data[3] = b",".join(fields)
    target.write_bytes(b"\r\n".join(data))
    capsys.readouterr()
    assert run(["cohort", "validate", str(target), "--nic", NIC]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out
    assert "row 3, NHS_NO: invalid_nhs_number" in out
    assert "format the column as text" in out
    # The list can be long: its last line sums it up and says what to do next.
    last = out.strip().splitlines()[-1]
    assert last.startswith("1 problem(s): 1 invalid_nhs_number. Next: fix the study export")
    assert "seftpilot cohort build" in last and "docs/cohort.md" in last


def test_build_with_problems_writes_nothing_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "export.csv"
    source.write_text(
        "study id,NHS number,DOB\nS1,9434765919,1980-01-05\nS2,9434765918,1980-01-05\n"
    )
    cfg = config(tmp_path, '[agreement.column_mapping]\n"study id" = "UNIQUE_REFERENCE"\n')
    out = tmp_path / "out"
    args = [
        "cohort",
        "build",
        str(source),
        "--action",
        "add",
        "--out",
        str(out),
        "--config",
        str(cfg),
    ]
    assert run(args) == 1
    printed = capsys.readouterr().out
    assert "not written" in printed and "row 2, NHS_NO: invalid_nhs_number" in printed
    last = printed.strip().splitlines()[-1]
    assert last.startswith("Nothing was written. 1 problem(s): 1 invalid_nhs_number. Next: ")
    assert f"fix these rows in {source} and build again" in last
    assert not out.exists() or list(out.iterdir()) == []
    assert run([*args, "--allow-problems", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 2 and result["problems"][0]["code"] == "invalid_nhs_number"
    assert Path(result["path"]).exists()


def test_failure_midway_leaves_no_partial_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_export(tmp_path / "export.csv", 50_000, messy=0.0)
    with source.open("ab") as handle:
        handle.write(b"SYN-X,9434765919,SM\xffTH,A,F,1980-01-05,LS1 4AP,S,2024-01-01\r\n")
    out = tmp_path / "out"
    out.mkdir()
    previous = out / f"{NIC}.csv"
    previous.write_bytes(b"the file from yesterday")
    assert (
        run(["cohort", "build", str(source), "--action", "ADD", "--out", str(out), "--nic", NIC])
        == 1
    )
    err = capsys.readouterr().err
    assert str(source) in err and "UTF-8" in err
    assert sorted(p.name for p in out.iterdir()) == [f"{NIC}.csv"]
    assert previous.read_bytes() == b"the file from yesterday"


def test_missing_or_unusable_source_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-export.csv"
    assert (
        run(
            [
                "cohort",
                "build",
                str(missing),
                "--action",
                "ADD",
                "--out",
                str(tmp_path),
                "--nic",
                NIC,
            ]
        )
        == 1
    )
    assert str(missing) in capsys.readouterr().err
    assert (
        run(
            [
                "cohort",
                "build",
                str(tmp_path),
                "--action",
                "ADD",
                "--out",
                str(tmp_path),
                "--nic",
                NIC,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "is a directory" in err and "give the path of the export file itself" in err
    semi = tmp_path / "semi.csv"
    semi.write_text("UNIQUE_REFERENCE;NHS_NO;DATE_OF_BIRTH\nA;9434765919;19800105\n")
    assert (
        run(["cohort", "build", str(semi), "--action", "ADD", "--out", str(tmp_path), "--nic", NIC])
        == 1
    )
    assert "not comma-separated" in capsys.readouterr().err
    assert run(["cohort", "validate", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err


def _export_with_bad_numbers(path: Path, rows: int, bad: int) -> Path:
    """``rows`` participants, the first ``bad`` with an NHS number that can never be valid."""
    numbers = [n for n, *_ in (r[1:2] for r in export_rows(rows, seed=3, messy=0.0))]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Study ID", "NHS Number", "Surname", "DOB"])
        for i in range(rows):
            writer.writerow(
                [f"S-{i}", "1234567890" if i < bad else numbers[i], "SMITH", "1980-01-05"]
            )
    return path


@pytest.mark.parametrize(("bad", "advice"), [(1, "pass --allow-problems"), (5, "would not help")])
def test_allow_problems_is_suggested_only_below_nhs_englands_2_percent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: int, advice: str
) -> None:
    """Above 2% failing rows NHS England rejects the whole file: writing it anyway is no
    way out, and the operator is told so instead of being offered the flag."""
    source = _export_with_bad_numbers(tmp_path / "export.csv", 100, bad)
    args = ["cohort", "build", str(source), "--action", "ADD", "--out", str(tmp_path / "o")]
    assert run([*args, "--nic", NIC]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert advice in first
    assert ("above the 2%" in first) == (bad > 2)
    assert run([*args, "--nic", NIC, "--allow-problems"]) == 0
    printed = capsys.readouterr().out
    assert ("do not upload it" in printed) == (bad > 2)
    assert run([*args, "--nic", NIC, "--allow-problems", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["invalid_rows"], result["nhs_threshold_exceeded"]) == (bad, bad > 2)


def test_an_export_without_nhs_numbers_builds_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Allowed (name, sex, birth date and postcode can be traced), but more often a
    forgotten column: the build says so, and how to map a renamed one."""
    source = tmp_path / "export.csv"
    source.write_text(
        "Study ID,Surname,Forename,Sex,DOB,Postcode\nS-1,SMITH,ANN,F,1980-01-05,LS1 4AP\n"
    )
    args = [
        "cohort",
        "build",
        str(source),
        "--action",
        "ADD",
        "--out",
        str(tmp_path / "o"),
        "--nic",
        NIC,
    ]
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "note: the export has no NHS number column" in printed
    assert 'column_mapping = { "<its header>" = "NHS_NO" }' in printed
    assert run([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notices"][0].startswith("the export has no NHS")
    with_numbers = write_export(tmp_path / "full.csv", 10)
    assert run(["cohort", "build", str(with_numbers), *args[3:], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notices"] == []


def test_validate_of_an_unreadable_file_does_not_count_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    utf16 = tmp_path / f"{NIC}.csv"
    utf16.write_bytes("UNIQUE_REFERENCE,NHS_NO\r\nA,9434765919\r\n".encode("utf-16"))
    assert run(["cohort", "validate", str(utf16), "--nic", NIC]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("INVALID: 1 problem(s); no participant rows read"), first


def test_usage_and_configuration_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_export(tmp_path / "export.csv", 5)
    assert (
        run(
            [
                "cohort",
                "build",
                str(source),
                "--action",
                "REMOVE",
                "--out",
                str(tmp_path),
                "--nic",
                NIC,
            ]
        )
        == 2
    )
    # No --nic and no agreement configured: nothing to name the file after.
    assert run(["cohort", "build", str(source), "--action", "ADD", "--out", str(tmp_path)]) == 2
    assert "--nic" in capsys.readouterr().err


def test_pve_profile_warns_that_it_is_unconfirmed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_export(tmp_path / "export.csv", 30)
    args = ["cohort", "build", str(source), "--action", "ADD", "--out", str(tmp_path), "--nic", NIC]
    assert run([*args, "--profile", "pve"]) == 0
    captured = capsys.readouterr()
    assert "UNCONFIRMED" in captured.err
    target = tmp_path / f"{NIC}.csv"
    assert target.read_bytes().split(b"\r\n")[1].count(b"/") == 2  # yyyy/mm/dd
    assert run(["cohort", "validate", str(target), "--profile", "pve", "--nic", NIC]) == 0


def test_profile_command_lists_and_shows(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["cohort", "profile", "--json"]) == 0
    assert "mps-legacy-24" in json.loads(capsys.readouterr().out)["profiles"]
    assert run(["cohort", "profile"]) == 0
    assert capsys.readouterr().out.count("UNCONFIRMED") == 1  # pve's, said once
    assert run(["cohort", "profile", "mps-legacy-24"]) == 0
    out = capsys.readouterr().out
    assert "UNIQUE_REFERENCE,NHS_NO" in out
    # The name once, then each column's rules and the export headers build recognises.
    assert out.startswith("mps-legacy-24 (built in): ")
    assert "each row needs NHS_NO or FAMILY_NAME+GIVEN_NAME+GENDER+POSTCODE" in out
    assert "  GENDER             gender, optional, one of 0/1/2/9; also read from" in out
    assert "DATE_OF_BIRTH      date, required; also read from export columns DOB" in out
