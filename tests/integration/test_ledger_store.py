"""The ledger store on a real SQLite file: claims, the daily limit, crash safety, events."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from seftpilot.adapters.ledger_store import LedgerStore, RefRow, Submission
from seftpilot.adapters.store import Store
from seftpilot.core.ledger import plan
from seftpilot.errors import (
    ClaimLost,
    DailyLimitReached,
    IllegalTransition,
    InputError,
    LedgerError,
    StateDirError,
)

NIC = "NIC-402963-P0Y5D"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
D0 = date(2026, 3, 2)


def rows(*refs: str, dob: str = "19800101") -> list[RefRow]:
    # Synthetic NHS numbers from the 999 range (modulus-11 valid).
    numbers = ["9990000018", "9990000026", "9990000034", "9990000042", "9990000050"]
    return [
        RefRow(r, numbers[i % len(numbers)], {"UNIQUE_REFERENCE": r, "DATE_OF_BIRTH": dob})
        for i, r in enumerate(refs)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state") as s:
        yield s


@pytest.fixture
def ledger(store: Store) -> LedgerStore:
    return LedgerStore(store)


def upload(
    ledger: LedgerStore,
    action: str,
    refs: list[str],
    day: int,
    verdict: str | None = "presumed_success",
) -> Submission:
    """Take a submission through its lifecycle the way the service does."""
    at = T0 + timedelta(days=day)
    sub = ledger.create_submission(NIC, action, rows(*refs), at=at)  # type: ignore[arg-type]
    sub = ledger.make_due(sub, at=at)
    sub = ledger.claim_upload(sub, at=at, nhs_day=D0 + timedelta(days=day))
    sub = ledger.record_upload(sub, at=at, file_name=f"{NIC}.csv", file_sha256="ab" * 32)
    if verdict:
        sub = ledger.record_verdict(sub, verdict, at=at + timedelta(hours=26), detail={"why": "t"})
    return sub


def test_files_are_private_and_rows_come_back_in_order(store: Store, ledger: LedgerStore) -> None:
    assert stat.S_IMODE(store.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    sub = ledger.create_submission(NIC, "ADD", rows("S3", "S1", "S2"), at=T0)
    assert (sub.state, sub.row_count, sub.version, sub.attempt) == ("planned", 3, 0, 1)
    back = list(ledger.rows(sub.id))
    assert [r.unique_reference for r in back] == ["S3", "S1", "S2"]
    assert back[0].data == {"UNIQUE_REFERENCE": "S3", "DATE_OF_BIRTH": "19800101"}
    assert back[0].nhs_number == "9990000018"
    events = store.events("submission", sub.id)
    assert [e["kind"] for e in events] == ["submission.created"]
    # Events hold counts, never the identifying rows.
    assert "S3" not in json.dumps(events)


def test_a_large_submission_streams_in_batches(ledger: LedgerStore) -> None:
    count = 25_000

    def generated() -> Iterator[RefRow]:
        for i in range(count):
            yield RefRow(f"P{i:07d}", None, {"DATE_OF_BIRTH": "19700101"})

    sub = ledger.create_submission(NIC, "ADD", generated(), at=T0)
    assert sub.row_count == count
    assert sum(1 for _ in ledger.rows(sub.id)) == count


def test_claiming_twice_loses_the_second_claim(store: Store, ledger: LedgerStore) -> None:
    sub = ledger.make_due(ledger.create_submission(NIC, "ADD", rows("A"), at=T0), at=T0)
    first = ledger.claim_upload(sub, at=T0, nhs_day=D0)
    assert (first.state, first.version, first.nhs_day) == ("uploading", sub.version + 1, D0)
    with pytest.raises(ClaimLost, match="nothing was changed"):
        ledger.claim_upload(sub, at=T0, nhs_day=D0)  # the stale snapshot: another worker
    assert ledger.get_submission(sub.id) == first
    kinds = [e["kind"] for e in store.events("submission", sub.id)]
    assert kinds.count("submission.claim") == 1


def test_illegal_event_changes_nothing_in_the_ledger(store: Store, ledger: LedgerStore) -> None:
    sub = ledger.create_submission(NIC, "ADD", rows("A"), at=T0)
    before = len(store.events())
    with pytest.raises(IllegalTransition):
        ledger.record_verdict(sub, "presumed_success", at=T0)
    with pytest.raises(IllegalTransition):
        ledger.claim_upload(sub, at=T0, nhs_day=D0)  # planned, not due
    assert ledger.get_submission(sub.id) == sub
    assert len(store.events()) == before


def test_one_upload_per_agreement_per_nhs_day_is_enforced_by_the_database(
    ledger: LedgerStore,
) -> None:
    a = ledger.make_due(ledger.create_submission(NIC, "DELETE", rows("A"), at=T0), at=T0)
    b = ledger.make_due(ledger.create_submission(NIC, "ADD", rows("B"), at=T0), at=T0)
    ledger.claim_upload(a, at=T0, nhs_day=D0)
    with pytest.raises(DailyLimitReached) as info:
        ledger.claim_upload(b, at=T0, nhs_day=D0)
    assert f"#{a.id}" in str(info.value) and info.value.hint
    assert ledger.get_submission(b.id) == b  # still due, version unchanged
    assert ledger.claim_upload(b, at=T0, nhs_day=D0 + timedelta(days=1)).state == "uploading"
    # Another agreement has its own daily slot.
    other = ledger.create_submission("NIC-111111-AAAAA", "ADD", rows("C"), at=T0)
    other = ledger.make_due(other, at=T0)
    assert ledger.claim_upload(other, at=T0, nhs_day=D0).state == "uploading"


def test_the_limit_holds_even_when_written_past_the_repository(
    store: Store, ledger: LedgerStore
) -> None:
    upload(ledger, "ADD", ["A"], 0)
    sub = ledger.create_submission(NIC, "ADD", rows("B"), at=T0)
    with pytest.raises(Exception, match="UNIQUE"), store.transaction() as conn:
        conn.execute("UPDATE submissions SET nhs_day=? WHERE id=?", (D0.isoformat(), sub.id))


def test_a_crash_while_recording_rows_leaves_no_partial_submission(
    store: Store, ledger: LedgerStore
) -> None:
    def dies_halfway() -> Iterator[RefRow]:
        for i in range(12_000):  # more than two batches are written before the crash
            yield RefRow(f"P{i}", None, {"DATE_OF_BIRTH": "19700101"})
        raise OSError("disk went away")

    events_before = len(store.events())
    with pytest.raises(OSError, match="disk went away"):
        ledger.create_submission(NIC, "ADD", dies_halfway(), at=T0)
    assert ledger.list_submissions() == []
    assert store.query("SELECT count(*) FROM submission_refs")[0][0] == 0
    assert len(store.events()) == events_before


def test_a_duplicate_reference_is_named_and_nothing_is_recorded(ledger: LedgerStore) -> None:
    with pytest.raises(InputError, match="'B' appears twice"):
        ledger.create_submission(NIC, "ADD", rows("A", "B", "C", "B"), at=T0)
    assert ledger.list_submissions() == []


def test_lost_upload_resolved_by_listing(ledger: LedgerStore) -> None:
    sub = ledger.make_due(ledger.create_submission(NIC, "ADD", rows("A"), at=T0), at=T0)
    sub = ledger.record_upload_lost(ledger.claim_upload(sub, at=T0, nhs_day=D0), at=T0)
    assert sub.state == "upload_unknown"
    found = ledger.record_upload(sub, at=T0, found_remote=True, file_name=f"{NIC}.csv")
    assert (found.state, found.file_name, found.nhs_day) == ("uploaded", f"{NIC}.csv", D0)


def test_proved_absent_goes_back_to_due_and_keeps_the_days_slot(ledger: LedgerStore) -> None:
    sub = ledger.make_due(ledger.create_submission(NIC, "ADD", rows("A"), at=T0), at=T0)
    other = ledger.make_due(ledger.create_submission(NIC, "ADD", rows("B"), at=T0), at=T0)
    sub = ledger.record_upload_lost(ledger.claim_upload(sub, at=T0, nhs_day=D0), at=T0)
    sub = ledger.record_not_sent(sub, at=T0, proved_absent=True, reason="not in listing")
    assert sub.state == "due"
    with pytest.raises(DailyLimitReached):
        ledger.claim_upload(other, at=T0, nhs_day=D0)
    # The same submission may try again that day: nothing of it reached NHS.
    assert ledger.claim_upload(sub, at=T0, nhs_day=D0).state == "uploading"


def test_pool_follows_accepted_verdicts_only(ledger: LedgerStore) -> None:
    upload(ledger, "ADD", ["A", "B", "C"], 0)
    upload(ledger, "DELETE", ["B"], 1, "confirmed_success")
    upload(ledger, "DELETE", ["A"], 2, "failed")
    unknown = upload(ledger, "ADD", ["X"], 3, "unknown")
    upload(ledger, "ADD", ["Y"], 4, None)  # still awaiting its verdict
    pool = ledger.pool(NIC)
    assert list(pool) == ["A", "C"]
    # The operator settles the unknown verdict: now it counts.
    ledger.resolve(unknown, success=True, at=T0 + timedelta(days=6), note="summary file seen")
    assert list(ledger.pool(NIC)) == ["A", "C", "X"]
    assert ledger.pool("NIC-111111-AAAAA").members == {}


def test_rows_rejected_one_by_one_stay_out_of_the_pool(store: Store, ledger: LedgerStore) -> None:
    sub = upload(ledger, "ADD", ["A", "B", "C"], 0, None)
    assert ledger.reject_rows(sub.id, ["B"], at=T0, detail={"report": "errors.csv"}) == 1
    with pytest.raises(LedgerError, match="holds no row 'Z'"):
        ledger.reject_rows(sub.id, ["C", "Z"], at=T0)
    ledger.record_verdict(sub, "presumed_success", at=T0 + timedelta(days=1))
    assert list(ledger.pool(NIC)) == ["A", "C"]  # C's rejection was rolled back with Z's
    assert "submission.rows_rejected" in [e["kind"] for e in store.events("submission", sub.id)]


def test_retry_makes_a_new_attempt_without_the_rejected_rows(ledger: LedgerStore) -> None:
    sub = upload(ledger, "ADD", ["A", "B", "C"], 0, None)
    ledger.reject_rows(sub.id, ["B"], at=T0)
    failed = ledger.record_verdict(sub, "failed", at=T0 + timedelta(days=1), detail={"r": "2%"})
    again = ledger.retry(failed, at=T0 + timedelta(days=1))
    assert (again.state, again.attempt, again.retry_of, again.row_count) == (
        "planned",
        2,
        sub.id,
        2,
    )
    assert [r.unique_reference for r in ledger.rows(again.id)] == ["A", "C"]
    assert ledger.get_submission(sub.id).state == "retried"
    assert ledger.get_submission(sub.id).verdict == "failed"
    with pytest.raises(IllegalTransition):
        ledger.retry(ledger.get_submission(sub.id), at=T0)


def test_late_failure_after_presumed_success_takes_the_changes_back(ledger: LedgerStore) -> None:
    sub = upload(ledger, "ADD", ["A"], 0)
    assert list(ledger.pool(NIC)) == ["A"]
    failed = ledger.resolve(sub, success=False, at=T0 + timedelta(days=3), note="late", late=True)
    assert failed.verdict == "failed"
    assert failed.verdict_detail["previous"]["verdict"] == "presumed_success"
    assert list(ledger.pool(NIC)) == []


def test_mark_stuck_needs_an_accepted_delete_and_evidence(ledger: LedgerStore) -> None:
    upload(ledger, "ADD", ["A", "B", "C"], 0)
    delete = upload(ledger, "DELETE", ["A", "B"], 1)
    with pytest.raises(LedgerError, match="still in the believed pool"):
        ledger.mark_stuck(NIC, ["C"], "returned file", at=T0)
    with pytest.raises(LedgerError, match="never had an accepted DELETE"):
        ledger.mark_stuck(NIC, ["Q"], "returned file", at=T0)
    with pytest.raises(InputError):
        ledger.mark_stuck(NIC, ["A"], "  ", at=T0)
    assert ledger.mark_stuck(NIC, ["A"], "2026-04 release still has A", at=T0) == 1
    pool = ledger.pool(NIC)
    assert list(pool) == ["C"]
    assert pool.stuck["A"].deleted_by == delete.id
    assert ledger.resolve_stuck(NIC, ["A"], at=T0, note="NHS staff removed it") == 1
    assert ledger.pool(NIC).stuck == {}


def _add_rows(refs: list[str]) -> list[RefRow]:
    return rows(*refs, dob="19900202")


def test_campaign_from_a_plan_runs_step_by_step(store: Store, ledger: LedgerStore) -> None:
    upload(ledger, "ADD", ["A", "B", "C"], 0)
    pool = ledger.pool(NIC)
    target = ["B", "C", "D", "E", "F"]
    steps = plan(pool, target, "diff", max_rows=2)
    campaign = ledger.create_campaign(
        NIC, "diff", steps, at=T0, pool=pool, add_rows=_add_rows(target), target_sha256="00" * 32
    )
    subs = ledger.list_submissions(NIC, campaign_id=campaign.id)
    assert [(s.campaign_step, s.action, s.row_count, s.day_offset) for s in subs] == [
        (1, "DELETE", 1, 0),
        (2, "ADD", 2, 1),
        (3, "ADD", 1, 2),
    ]
    # The DELETE row is the row A was added with: A has left the target.
    (deleted,) = ledger.rows(subs[0].id)
    assert deleted.unique_reference == "A" and deleted.data
    assert deleted.data["DATE_OF_BIRTH"] == "19800101"
    assert [r.unique_reference for r in ledger.rows(subs[2].id)] == ["F"]

    with pytest.raises(LedgerError, match="still planned"):
        ledger.create_campaign(NIC, "diff", steps, at=T0, pool=pool, add_rows=_add_rows(target))

    campaign, due = ledger.advance_campaign(campaign.id, at=T0, due_on=D0)
    assert campaign.state == "running" and [s.campaign_step for s in due] == [1]
    assert due[0].due_on == D0
    assert ledger.advance_campaign(campaign.id, at=T0)[1] == []  # step 1 not uploaded yet
    d = ledger.claim_upload(due[0], at=T0, nhs_day=D0 + timedelta(days=1))
    d = ledger.record_upload(d, at=T0)
    # Uploaded but no verdict: the ADD waits.
    assert ledger.advance_campaign(campaign.id, at=T0)[1] == []
    d = ledger.record_verdict(d, "unknown", at=T0 + timedelta(days=1))
    campaign, due = ledger.advance_campaign(campaign.id, at=T0 + timedelta(days=1))
    assert campaign.state == "blocked" and due == []
    ledger.resolve(d, success=True, at=T0 + timedelta(days=1), note="operator checked")
    campaign, due = ledger.advance_campaign(campaign.id, at=T0 + timedelta(days=1))
    assert campaign.state == "running" and [s.campaign_step for s in due] == [2]
    for n, sub in enumerate([due[0]], start=1):
        s = ledger.claim_upload(sub, at=T0, nhs_day=D0 + timedelta(days=n + 1))
        ledger.record_upload(s, at=T0 + timedelta(days=n))
    campaign, due = ledger.advance_campaign(campaign.id, at=T0 + timedelta(days=2))
    assert [s.campaign_step for s in due] == [3]  # ADD part 2 follows ADD part 1's upload
    s = ledger.record_upload(
        ledger.claim_upload(due[0], at=T0, nhs_day=D0 + timedelta(days=3)),
        at=T0 + timedelta(days=2),
    )
    for sub in ledger.list_submissions(NIC, campaign_id=campaign.id, states=["uploaded"]):
        ledger.record_verdict(sub, "presumed_success", at=T0 + timedelta(days=4))
    campaign, due = ledger.advance_campaign(campaign.id, at=T0 + timedelta(days=4))
    assert campaign.state == "done" and due == []
    assert list(ledger.pool(NIC)) == ["B", "C", "D", "E", "F"]
    kinds = [e["kind"] for e in store.events("campaign", campaign.id)]
    assert kinds == [
        "campaign.created",
        "campaign.start",
        "campaign.block",
        "campaign.unblock",
        "campaign.complete",
    ]


def test_a_target_that_changed_since_planning_records_nothing(ledger: LedgerStore) -> None:
    pool = ledger.pool(NIC)
    steps = plan(pool, ["A", "B", "C"])
    with pytest.raises(InputError, match="no longer matches"):
        ledger.create_campaign(NIC, "diff", steps, at=T0, pool=pool, add_rows=_add_rows(["A", "C"]))
    assert ledger.list_campaigns() == [] and ledger.list_submissions() == []


def test_cancel_campaign_cancels_steps_not_yet_gone(ledger: LedgerStore) -> None:
    steps = plan([], ["A", "B"], max_rows=1)
    campaign = ledger.create_campaign(
        NIC, "diff", steps, at=T0, pool=ledger.pool(NIC), add_rows=_add_rows(["A", "B"])
    )
    campaign, _ = ledger.advance_campaign(campaign.id, at=T0)
    cancelled = ledger.cancel_campaign(campaign, at=T0, reason="wrong export")
    assert cancelled.state == "cancelled"
    states = {s.state for s in ledger.list_submissions(campaign_id=campaign.id)}
    assert states == {"cancelled"}
    with pytest.raises(ClaimLost):
        ledger.transition_campaign(campaign, "fail", at=T0)  # type: ignore[arg-type]


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    with Store(tmp_path / "s") as s:
        upload(LedgerStore(s), "ADD", ["A", "B"], 0)
    with Store(tmp_path / "s") as s:
        assert list(LedgerStore(s).pool(NIC)) == ["A", "B"]


def _in_child_as_other_user(fn: Callable[[], dict[str, Any]], cwd: Path) -> dict[str, Any]:
    """Run ``fn`` in a forked child in ``cwd``; as root, drop to nobody first (root ignores
    file modes, so a read-only ledger can only be shown to a normal user)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read)
            os.chdir(cwd)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            result = fn()
        except BaseException as exc:
            result = {"unexpected": repr(exc)}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


def test_a_read_only_ledger_gives_a_state_dir_error_with_a_hint() -> None:
    # Not tmp_path: SQLite reopens files by absolute path, and pytest's base directory is
    # private to root, so the unprivileged child could not reach it.
    base = Path(tempfile.mkdtemp(prefix="seftpilot-ro-"))
    state = base / "state"
    db = state / "seftpilot.sqlite3"
    try:
        with Store(state) as s:
            upload(LedgerStore(s), "ADD", ["A"], 0)
        if os.geteuid() == 0:
            for path in (base, state, db):
                os.chown(path, 65534, 65534)
        db.chmod(0o400)
        state.chmod(0o500)

        def attempt() -> dict[str, Any]:
            out: dict[str, Any] = {"error": None}
            try:
                with Store(state) as s:
                    ledger = LedgerStore(s)
                    out["pool"] = list(ledger.pool(NIC))  # reading still works
                    ledger.create_submission(NIC, "ADD", rows("B"), at=T0)
            except StateDirError as exc:
                out.update(error=exc.message, hint=exc.hint)
            return out

        result = _in_child_as_other_user(attempt, state)
        assert result.get("error"), result
        assert "readonly" in result["error"]
        assert "read-only" in result["hint"]
        assert result["pool"] == ["A"]
        state.chmod(0o700)
        db.chmod(0o600)
        with Store(state) as s:
            assert [x.row_count for x in LedgerStore(s).list_submissions()] == [1]
    finally:
        shutil.rmtree(base, ignore_errors=True)
