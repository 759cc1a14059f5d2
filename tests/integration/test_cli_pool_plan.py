"""`seftpilot pool show|export` and `seftpilot plan` as an operator uses them."""

from __future__ import annotations

import csv
import json
import stat
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from seftpilot.adapters.ledger_store import LedgerStore, RefRow
from seftpilot.adapters.store import Store
from seftpilot.cli import run

NIC = "NIC-402963-P0Y5D"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
# Synthetic NHS numbers from the 999 range, modulus-11 valid.
NHS = {"S1": "9990000018", "S2": "9990000026", "S3": "9990000034", "S4": "9990000042"}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "seftpilot.toml").write_text(
        f'state_dir = "{tmp_path / "state"}"\n[[agreement]]\nnic = "{NIC}"\n'
    )
    return tmp_path


def cfg(site: Path) -> list[str]:
    return ["--config", str(site / "seftpilot.toml")]


def write_target(path: Path, refs: list[str], header: str = "UNIQUE_REFERENCE") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([header, "NHS_NO", "Date of Birth", "STATUS"])
        for ref in refs:
            writer.writerow([ref, NHS.get(ref, ""), "19850615", "ADD"])
    return path


@pytest.fixture
def ledger(site: Path) -> Iterator[LedgerStore]:
    with Store(site / "state") as store:
        yield LedgerStore(store)


def accept(ledger: LedgerStore, action: str, refs: list[str], day: int, verdict: str) -> int:
    at = T0 + timedelta(days=day)
    rows = [
        RefRow(r, NHS.get(r), {"UNIQUE_REFERENCE": r, "DATE_OF_BIRTH": "19700101"}) for r in refs
    ]
    sub = ledger.make_due(ledger.create_submission(NIC, action, rows, at=at), at=at)  # type: ignore[arg-type]
    sub = ledger.claim_upload(sub, at=at, nhs_day=date(2026, 3, 2) + timedelta(days=day))
    sub = ledger.record_upload(sub, at=at, file_name=f"{NIC}.csv")
    if verdict:
        sub = ledger.record_verdict(sub, verdict, at=at + timedelta(days=1))
    return sub.id


def test_first_plan_is_all_adds_and_changes_nothing_without_apply(
    site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]
) -> None:
    target = write_target(site / "export.csv", ["S1", "S2", "S3"], header="unique reference")
    assert run(["plan", str(target), *cfg(site)]) == 0
    out = capsys.readouterr().out
    assert "ADD" in out and "day +0" in out and "--apply" in out
    assert "DELETE" not in out
    assert ledger.list_submissions() == [] and ledger.list_campaigns() == []

    assert run(["plan", str(target), "--json", *cfg(site)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["steps"] == [
        {
            "order": 1,
            "action": "ADD",
            "rows": 3,
            "earliest_nhs_day_offset": 0,
            "part": 1,
            "parts": 1,
            "waits_for": [],
        }
    ]
    assert (doc["applied"], doc["nothing_to_do"], doc["target"]["rows"]) == (False, False, 3)
    assert ledger.list_submissions() == []


def test_apply_records_a_campaign_with_rows_and_refuses_a_second(
    site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]
) -> None:
    accept(ledger, "ADD", ["S1", "S2"], 0, "presumed_success")
    target = write_target(site / "export.csv", ["S2", "S3", "S4"])
    assert run(["plan", str(target), "--apply", "--json", *cfg(site)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["applied"] and doc["campaign_id"]
    assert [(s["action"], s["rows"]) for s in doc["steps"]] == [("DELETE", 1), ("ADD", 2)]
    subs = ledger.list_submissions(campaign_id=doc["campaign_id"])
    assert [(s.action, s.state, s.row_count) for s in subs] == [
        ("DELETE", "planned", 1),
        ("ADD", "planned", 2),
    ]
    # S1 left the export; its DELETE row is the row it was added with (DOB is mandatory).
    (leaver,) = ledger.rows(subs[0].id)
    assert (leaver.unique_reference, leaver.nhs_number) == ("S1", NHS["S1"])
    assert leaver.data and leaver.data["DATE_OF_BIRTH"] == "19700101"
    added = list(ledger.rows(subs[1].id))
    assert [r.unique_reference for r in added] == ["S3", "S4"]
    assert added[0].data == {
        "UNIQUE_REFERENCE": "S3",
        "NHS_NO": NHS["S3"],
        "DATE_OF_BIRTH": "19850615",
    }  # STATUS belongs to the file, not the participant

    assert run(["plan", str(target), "--apply", *cfg(site)]) == 1
    assert "still planned" in capsys.readouterr().err
    assert len(ledger.list_campaigns()) == 1


def test_nothing_to_do(site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]) -> None:
    accept(ledger, "ADD", ["S1", "S2"], 0, "confirmed_success")
    target = write_target(site / "export.csv", ["S2", "S1"])
    assert run(["plan", str(target), "--apply", *cfg(site)]) == 0
    assert "Nothing to do" in capsys.readouterr().out
    assert ledger.list_campaigns() == []
    assert run(["plan", str(target), "--json", *cfg(site)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["nothing_to_do"] is True and doc["steps"] == []


def test_replace_and_splitting(
    site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]
) -> None:
    accept(ledger, "ADD", ["S1", "S2"], 0, "confirmed_success")
    target = write_target(site / "export.csv", ["S2", "S3", "S4"])
    argv = ["plan", str(target), "--strategy", "replace", "--max-rows", "2", "--json", *cfg(site)]
    assert run(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(s["action"], s["rows"], s["earliest_nhs_day_offset"]) for s in doc["steps"]] == [
        ("DELETE", 2, 0),
        ("ADD", 2, 1),
        ("ADD", 1, 2),
    ]
    assert doc["steps"][2]["waits_for"] == [1]


def test_unsettled_pool_is_noted_and_blocks_apply(
    site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]
) -> None:
    pending = accept(ledger, "ADD", ["S1"], 0, "")
    target = write_target(site / "export.csv", ["S1", "S2"])
    assert run(["plan", str(target), *cfg(site)]) == 0
    assert f"#{pending} (uploaded)" in capsys.readouterr().out
    assert run(["plan", str(target), "--apply", *cfg(site)]) == 1
    assert "not settled" in capsys.readouterr().err
    assert ledger.list_campaigns() == []


def test_bad_targets_are_named(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    no_ref = site / "noref.csv"
    no_ref.write_text("PARTICIPANT,NHS_NO,DOB\r\nS1,9990000018,1980-01-01\r\n")
    assert run(["plan", str(no_ref), *cfg(site)]) == 1
    err = capsys.readouterr().err
    assert "noref.csv" in err and "UNIQUE_REFERENCE" in err and "PARTICIPANT" in err
    assert "column_mapping" in err

    invalid = site / "invalid.csv"
    invalid.write_text(
        "UNIQUE_REFERENCE,NHS_NO,DOB\r\nS1,9990000018,1980-01-01\r\nS2,1234567890,1980-01-01\r\n"
    )
    assert run(["plan", str(invalid), "--apply", *cfg(site)]) == 1
    err = capsys.readouterr().err
    assert "invalid.csv" in err and "row 2" in err and "invalid_nhs_number" in err

    dup = write_target(site / "dup.csv", ["S1", "S2", "S1"])
    assert run(["plan", str(dup), *cfg(site)]) == 1
    err = capsys.readouterr().err
    assert "row 3" in err and "repeats row 1" in err

    empty = write_target(site / "empty.csv", [])
    assert run(["plan", str(empty), *cfg(site)]) == 1
    assert "--allow-empty" in capsys.readouterr().err
    assert run(["plan", str(empty), "--allow-empty", *cfg(site)]) == 0

    assert run(["plan", str(site / "absent.csv"), *cfg(site)]) == 1
    err = capsys.readouterr().err
    assert "absent.csv: no such file" in err and "UTF-8" not in err  # not a save-as hint

    assert run(["plan", str(site), *cfg(site)]) == 1
    assert "is a directory, not a CSV file" in capsys.readouterr().err

    # A spreadsheet's other exports: named for what they are, not "no column for ...".
    semicolons = site / "semicolons.csv"
    semicolons.write_text("UNIQUE_REFERENCE;NHS_NO;DOB\r\nS1;9990000018;1980-01-01\r\n")
    assert run(["plan", str(semicolons), *cfg(site)]) == 1
    err = capsys.readouterr().err
    assert "not comma-separated" in err and "export as CSV with commas" in err
    utf16 = site / "unicode-text.csv"
    utf16.write_text("UNIQUE_REFERENCE,NHS_NO\r\nS1,9990000018\r\n", encoding="utf-16")
    assert run(["plan", str(utf16), *cfg(site)]) == 1
    err = capsys.readouterr().err
    assert "is UTF-16 text" in err and "'CSV UTF-8'" in err and "codec" not in err

    assert run(["plan", str(dup), "--strategy", "merge", *cfg(site)]) == 2


def test_column_mapping_names_the_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "seftpilot.toml").write_text(
        f'state_dir = "{tmp_path / "state"}"\n[[agreement]]\nnic = "{NIC}"\n'
        '[agreement.column_mapping]\n"Study ID" = "UNIQUE_REFERENCE"\n'
    )
    export = tmp_path / "export.csv"
    export.write_text("Study ID,NHS number,DOB\nS1,999 000 0018,1990-01-01\nS2,,02/02/1991\n")
    config = ["--config", str(tmp_path / "seftpilot.toml")]
    assert run(["plan", str(export), "--json", *config]) == 1  # S2: insufficient information
    assert "row 2" in capsys.readouterr().err
    export.write_text(
        "Study ID,NHS number,DOB\nS1,999 000 0018,1990-01-01\nS2,999-000-0026,02/02/1991\n"
    )
    assert run(["plan", str(export), "--apply", "--json", *config]) == 0
    assert json.loads(capsys.readouterr().out)["steps"][0]["rows"] == 2
    with Store(tmp_path / "state") as store:
        ledger = LedgerStore(store)
        (sub,) = ledger.list_submissions()
        rows = list(ledger.rows(sub.id))
    # Kept as the file will carry them: normalised by the cohort engine.
    assert [(r.unique_reference, r.nhs_number) for r in rows] == [
        ("S1", "9990000018"),
        ("S2", "9990000026"),
    ]
    assert rows[1].data and rows[1].data["DATE_OF_BIRTH"] == "19910202"


def test_pool_show(site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["pool", "show", *cfg(site)]) == 0
    assert "0 reference(s)" in capsys.readouterr().out
    accept(ledger, "ADD", ["S1", "S2", "S3"], 0, "presumed_success")
    delete = accept(ledger, "DELETE", ["S1"], 1, "confirmed_success")
    accept(ledger, "ADD", ["S4"], 2, "failed")
    ledger.mark_stuck(NIC, ["S1"], "2026-04 release still lists S1", at=T0 + timedelta(days=30))

    assert run(["pool", "show", *cfg(site)]) == 0
    out = capsys.readouterr().out
    assert "2 reference(s)" in out
    assert f"submission #{delete}" in out
    assert "stuck: 1" in out and "pool export --stuck" in out

    assert run(["pool", "show", "--json", *cfg(site)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["count"], doc["stuck_count"]) == (2, 1)
    assert [r["ref"] for r in doc["refs"]] == ["S2", "S3"]
    assert doc["stuck"][0]["ref"] == "S1" and doc["stuck"][0]["deleted_by"] == delete
    assert doc["last_change"]["submission_id"] == delete


def test_pool_export_and_stuck_list_for_nhs_staff(
    site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]
) -> None:
    accept(ledger, "ADD", ["S1", "S2"], 0, "presumed_success")
    delete = accept(ledger, "DELETE", ["S1"], 1, "presumed_success")
    ledger.mark_stuck(NIC, ["S1"], "returned file still lists S1", at=T0 + timedelta(days=30))

    out = site / "pool.csv"
    assert run(["pool", "export", "--out", str(out), *cfg(site)]) == 0
    assert "mode 0600" in capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [(r["UNIQUE_REFERENCE"], r["NHS_NO"], r["DATE_OF_BIRTH"]) for r in rows] == [
        ("S2", NHS["S2"], "19700101")
    ]
    assert out.read_bytes().endswith(b"\r\n")

    stuck = site / "stuck.csv"
    assert run(["pool", "export", "--stuck", "--out", str(stuck), "--json", *cfg(site)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1
    assert stat.S_IMODE(stuck.stat().st_mode) == 0o600
    (row,) = csv.DictReader(stuck.read_text().splitlines())
    assert row["UNIQUE_REFERENCE"] == "S1" and row["NHS_NO"] == NHS["S1"]
    assert row["DATE_OF_BIRTH"] == "19700101"
    assert row["DELETE_SUBMISSION"] == str(delete) and row["DELETE_FILE"] == f"{NIC}.csv"
    assert row["EVIDENCE"] == "returned file still lists S1"
    assert [p.name for p in site.iterdir() if p.name.endswith(".tmp")] == []

    assert run(["pool", "export", "--out", str(site / "missing" / "x.csv"), *cfg(site)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_several_agreements_need_nic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "seftpilot.toml").write_text(
        f'state_dir = "{tmp_path / "state"}"\n[[agreement]]\nnic = "{NIC}"\n'
        '[[agreement]]\nnic = "NIC-111111-AAAAA"\n'
    )
    config = ["--config", str(tmp_path / "seftpilot.toml")]
    assert run(["pool", "show", *config]) == 2
    assert "--nic" in capsys.readouterr().err
    assert run(["pool", "show", "--nic", "NIC-111111-AAAAA", "--json", *config]) == 0
    assert json.loads(capsys.readouterr().out)["agreement"] == "NIC-111111-AAAAA"


def test_error_text_in_square_brackets_is_printed_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The terminal's style markup once swallowed "[[agreement]]", leaving "no [] is configured".
    (tmp_path / "seftpilot.toml").write_text(f'state_dir = "{tmp_path / "state"}"\n')
    assert run(["pool", "show", "--config", str(tmp_path / "seftpilot.toml")]) == 2
    err = capsys.readouterr().err
    assert "no [[agreement]] is configured" in err
    assert "add an [[agreement]] section" in err


def test_campaign_cancel_lets_a_new_plan_be_applied(
    site: Path, ledger: LedgerStore, capsys: pytest.CaptureFixture[str]
) -> None:
    accept(ledger, "ADD", ["S1", "S2"], 0, "presumed_success")
    target = write_target(site / "export.csv", ["S2", "S3"])
    assert run(["plan", str(target), "--apply", "--json", *cfg(site)]) == 0
    campaign_id = json.loads(capsys.readouterr().out)["campaign_id"]

    assert run(["campaign", "list", "--json", *cfg(site)]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == campaign_id
    assert [s["action"] for s in listed["steps"]] == ["DELETE", "ADD"]

    reason = ["--reason", "export was wrong"]
    assert run(["campaign", "cancel", str(campaign_id), *reason, "--json", *cfg(site)]) == 0
    cancelled = json.loads(capsys.readouterr().out)
    assert cancelled["state"] == "cancelled"
    assert {s["state"] for s in cancelled["steps"]} == {"cancelled"}
    # Nothing was uploaded, so the pool is untouched and a corrected plan can go ahead.
    assert ledger.pool(NIC).members.keys() >= {"S1", "S2"}
    assert run(["plan", str(target), "--apply", *cfg(site)]) == 0
    # Cancelling twice is refused and changes nothing.
    assert run(["campaign", "cancel", str(campaign_id), *reason, *cfg(site)]) == 1
    assert "not allowed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [["pool", "show", "--nic", NIC], ["campaign", "list", "--nic", NIC]]
)
def test_without_a_settings_file_is_a_usage_error_and_creates_no_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    assert run(command) == 2
    assert "configuration file not found" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()
