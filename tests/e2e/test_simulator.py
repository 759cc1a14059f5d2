"""The NHS England simulator on its own: what it checks, what it answers and when, and that
the default rules read its mail as they read NHS England's (no servers: mail is captured)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.cohort_files import build_cohort, load_profile
from seftpilot.adapters.mailparse import parse_message
from seftpilot.adapters.rules_files import default_rules_path, load_rules
from seftpilot.core.rules import classify
from seftpilot.sandbox.simulator import Faults, NhsSimulator, SimulatorConfig
from tests.e2e.support import write_export

NIC = "NIC-402963-P0Y5D"
MONDAY = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


class Harness:
    def __init__(self, tmp_path: Path, **config: object) -> None:
        self.clock = FakeClock(MONDAY)
        self.up = tmp_path / "up"
        self.down = tmp_path / "down"
        self.up.mkdir(parents=True)
        self.mail: list[bytes] = []
        self.sim = NhsSimulator(
            SimulatorConfig(nic=NIC, to="linkage@study.example", **config),  # type: ignore[arg-type]
            self.clock,
            upload_dir=self.up,
            download_dir=self.down,
            send=self.mail.append,
            work_dir=tmp_path / "nhs",
        )
        self.tmp = tmp_path

    def cohort(self, rows: int, seed: int, action: str = "ADD") -> tuple[bytes, list[str]]:
        export, refs = write_export(self.tmp / f"export-{seed}.csv", rows, seed)
        out = self.tmp / f"built-{seed}-{action}"
        out.mkdir()
        built = build_cohort(
            export, action=action, profile=load_profile("mps-legacy-24"), nic=NIC, out_dir=out
        )
        assert built.path is not None
        return Path(built.path).read_bytes(), refs

    def upload(self, data: bytes, name: str = f"{NIC}.csv") -> list[str]:
        (self.up / name).write_bytes(data)
        lines = self.sim.step()  # first sight: SEFT waits for the size to settle
        self.clock.advance(timedelta(minutes=15))
        return lines + self.sim.step()

    def run(self, hours: float) -> list[str]:
        lines: list[str] = []
        for _ in range(int(hours * 4)):
            self.clock.advance(timedelta(minutes=15))
            lines += self.sim.step()
        return lines

    def classified(self) -> list[tuple[str, str]]:
        rules = load_rules([default_rules_path()])
        return [
            (c.rule, c.class_) for c in (classify(parse_message(raw), rules) for raw in self.mail)
        ]


def test_legacy_success_is_silence_then_new_data(tmp_path: Path) -> None:
    h = Harness(tmp_path, returned_files=4)
    data, refs = h.cohort(30, seed=1)
    assert "accepted" in h.upload(data)[0]
    assert not list(h.up.iterdir())  # collected, as SEFT's intake does
    h.run(24)
    assert h.mail == []  # the next morning passes in silence
    h.run(12)  # matching: the next working day at 14:00
    assert sorted(h.sim.pool) == sorted(refs)
    assert len(list(h.down.glob("*.csv"))) == 4
    assert not [p for p in h.down.iterdir() if p.name.startswith(".")]
    assert h.classified() == [("nhs-new-data", "new_data")]
    placed = h.sim.files_placed()
    body = (h.down / next(iter(placed))).read_bytes()
    assert body.startswith(b"UNIQUE_REFERENCE,NHS_NO,") and b"\r\n" in body
    assert all(line.split(b",")[1].startswith(b"999") for line in body.splitlines()[1:])


def test_pve_sends_a_summary_notice_the_next_morning(tmp_path: Path) -> None:
    h = Harness(tmp_path, mode="pve")
    data, _ = h.cohort(10, seed=2)
    h.upload(data)
    h.run(20)
    assert h.mail == []  # not before the morning
    h.run(2)  # 07:20 the next working day
    assert h.classified() == [("nhs-validation-succeeded", "submission_succeeded")]


@pytest.mark.parametrize(
    ("share", "rule", "outcome"),
    [(3, "nhs-validation-failed", "rejected"), (1, "nhs-validation-rows-dropped", "rows_dropped")],
)
def test_failing_rows_reject_the_file_above_two_percent(
    tmp_path: Path, share: int, rule: str, outcome: str
) -> None:
    h = Harness(tmp_path)
    data, refs = h.cohort(60, seed=3)
    h.sim.config.reject_refs = {r: "insufficient_information" for r in refs[:share]}
    h.upload(data)
    h.run(24)
    assert h.sim.received[0].outcome == outcome
    assert h.classified()[0] == (rule, "submission_failed")
    message = parse_message(h.mail[0])
    [report] = [a for a in message.attachments if "Cohort-Data-Validation-Errors" in a.name]
    listed = report.payload.decode().splitlines()[1:]
    assert sorted(line.split(",")[0] for line in listed) == sorted(refs[:share])
    expected_pool = set() if outcome == "rejected" else set(refs[share:])
    assert set(h.sim.pool) == expected_pool


def test_file_level_problems(tmp_path: Path) -> None:
    # Legacy: LF line endings break the intake, and nothing ever comes back.
    h = Harness(tmp_path / "lf")
    data, _ = h.cohort(10, seed=4)
    assert "no answer will come" in h.upload(data.replace(b"\r\n", b"\n"))[0]
    h.run(48)
    assert h.mail == [] and h.sim.pool == {}

    # A wrong name; the next day the right one, then a second file that same day.
    h = Harness(tmp_path / "name")
    data, _ = h.cohort(10, seed=5)
    h.upload(data, name="NIC-402963-P0Y5D-final.csv")
    h.run(24)
    h.upload(data)
    h.upload(data)
    assert [r.outcome for r in h.sim.received] == ["rejected", "accepted", "rejected"]
    h.run(24)
    assert [c for _, c in h.classified()] == ["submission_failed", "submission_failed"]
    bodies = [parse_message(raw).text for raw in h.mail]
    assert any("does not match the agreement" in b for b in bodies)
    assert any("More than one file was received today" in b for b in bodies)


def test_delete_leaves_stuck_records_and_faults(tmp_path: Path) -> None:
    h = Harness(tmp_path, faults=Faults(mangle={"new_data"}, lose={"summary"}))
    data, refs = h.cohort(10, seed=6)
    h.upload(data)
    h.run(48)
    # The new-data mail arrived mangled (a boundary that never comes, the body cut short):
    # the parser records the damage, and the rules still know it by its subject.
    assert [m.kind for m in h.sim.sent if m.mangled] == ["new_data"]
    [raw] = h.mail
    assert parse_message(raw).defects
    assert b"Files are kept for 30 days" not in raw
    assert h.classified() == [("nhs-new-data", "new_data")]
    h.sim.config.stuck_refs = {refs[0]}
    delete, _ = h.cohort(10, seed=6, action="DELETE")
    h.upload(delete)
    assert h.sim.received[-1].stuck == (refs[0],)
    assert set(h.sim.pool) == {refs[0]}

    # A day of total silence: the file is taken and nothing happens, ever.
    h2 = Harness(tmp_path / "silent", faults=Faults(silent_days={MONDAY.date()}))
    data, _ = h2.cohort(10, seed=7)
    assert "no answer will come" in h2.upload(data)[0]
    h2.run(72)
    assert h2.mail == [] and h2.sim.pool == {}


def test_release_reminder_five_days_before(tmp_path: Path) -> None:
    release = MONDAY.date() + timedelta(days=7)
    h = Harness(tmp_path, release_dates=[release])
    h.run(24 * 3)
    assert h.mail  # 5 days before the release, at 10:00
    assert h.classified() == [("nhs-release-reminder", "release_reminder")]
    assert h.sim.sent[0].at.date() == release - timedelta(days=5)
