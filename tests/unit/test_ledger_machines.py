"""The ledger's state machines: every legal transition, and every illegal pair refused."""

from __future__ import annotations

import itertools

import pytest

from seftpilot.core.ledger import (
    CAMPAIGN_TRANSITIONS,
    SUBMISSION_TRANSITIONS,
    TRANSITIONS,
    CampaignEvent,
    CampaignState,
    StepView,
    SubmissionEvent,
    SubmissionState,
    allowed_events,
    campaign_event,
    due_steps,
    next_state,
)
from seftpilot.errors import IllegalTransition, LedgerError

S, E = SubmissionState, SubmissionEvent
C, CE = CampaignState, CampaignEvent

# The lifecycle as the operator reads it in docs/ledger.md, written out independently of
# the table so that a slip in either shows up here.
EXPECTED_SUBMISSION = {
    ("planned", "make_due"): "due",
    ("planned", "cancel"): "cancelled",
    ("due", "cancel"): "cancelled",
    ("due", "claim"): "uploading",
    ("uploading", "upload_done"): "uploaded",
    ("uploading", "upload_not_sent"): "due",
    ("uploading", "upload_lost"): "upload_unknown",
    ("upload_unknown", "remote_found"): "uploaded",
    ("upload_unknown", "remote_absent"): "due",
    ("uploaded", "verdict_confirmed"): "confirmed_success",
    ("uploaded", "verdict_presumed"): "presumed_success",
    ("uploaded", "verdict_failed"): "failed",
    ("uploaded", "verdict_unknown"): "unknown",
    ("unknown", "resolve_success"): "confirmed_success",
    ("unknown", "resolve_failed"): "failed",
    ("presumed_success", "late_confirmation"): "confirmed_success",
    ("presumed_success", "late_failure"): "failed",
    ("failed", "retry"): "retried",
}
EXPECTED_CAMPAIGN = {
    ("planned", "start"): "running",
    ("planned", "cancel"): "cancelled",
    ("running", "block"): "blocked",
    ("running", "complete"): "done",
    ("running", "fail"): "failed",
    ("running", "cancel"): "cancelled",
    ("blocked", "unblock"): "running",
    ("blocked", "fail"): "failed",
    ("blocked", "cancel"): "cancelled",
    ("failed", "resume"): "running",
    ("failed", "cancel"): "cancelled",
}


def test_tables_are_exactly_the_documented_lifecycles() -> None:
    assert {(str(s), str(e)): str(n) for (s, e), n in SUBMISSION_TRANSITIONS.items()} == (
        EXPECTED_SUBMISSION
    )
    assert {(str(s), str(e)): str(n) for (s, e), n in CAMPAIGN_TRANSITIONS.items()} == (
        EXPECTED_CAMPAIGN
    )


@pytest.mark.parametrize(("pair", "new"), sorted(EXPECTED_SUBMISSION.items()))
def test_every_submission_transition(pair: tuple[str, str], new: str) -> None:
    assert next_state("submission", *pair) == new


@pytest.mark.parametrize(("pair", "new"), sorted(EXPECTED_CAMPAIGN.items()))
def test_every_campaign_transition(pair: tuple[str, str], new: str) -> None:
    assert next_state("campaign", *pair) == new


@pytest.mark.parametrize(
    ("machine", "states", "events", "table"),
    [
        ("submission", list(S), list(E), EXPECTED_SUBMISSION),
        ("campaign", list(C), list(CE), EXPECTED_CAMPAIGN),
    ],
)
def test_every_illegal_pair_raises_and_changes_nothing(
    machine: str, states: list[str], events: list[str], table: dict[tuple[str, str], str]
) -> None:
    snapshot = {k: dict(v) for k, v in TRANSITIONS.items()}
    illegal = [(s, e) for s, e in itertools.product(states, events) if (s, e) not in table]
    assert len(illegal) == len(states) * len(events) - len(table)
    for state, event in illegal:
        with pytest.raises(IllegalTransition) as info:
            next_state(machine, state, event)  # type: ignore[arg-type]
        assert isinstance(info.value, LedgerError)
        assert (info.value.machine, info.value.state, info.value.event) == (
            machine,
            state,
            event,
        )
        assert "nothing was changed" in str(info.value)
    assert {k: dict(v) for k, v in TRANSITIONS.items()} == snapshot


def test_unknown_words_are_illegal_not_crashes() -> None:
    with pytest.raises(IllegalTransition):
        next_state("submission", "planned", "upload_done_twice")
    with pytest.raises(IllegalTransition):
        next_state("submission", "limbo", "claim")
    with pytest.raises(ValueError, match="no state machine"):
        next_state("delivery", "planned", "claim")  # type: ignore[arg-type]


def test_every_state_is_reachable_from_planned() -> None:
    for machine, table in (("submission", EXPECTED_SUBMISSION), ("campaign", EXPECTED_CAMPAIGN)):
        seen, frontier = {"planned"}, ["planned"]
        while frontier:
            state = frontier.pop()
            for event in allowed_events(machine, state):  # type: ignore[arg-type]
                new = table[(state, event)]
                if new not in seen:
                    seen.add(new)
                    frontier.append(new)
        enum = S if machine == "submission" else C
        assert seen == {str(s) for s in enum}


def test_a_verdict_can_only_follow_an_upload() -> None:
    for state in ("planned", "due", "uploading", "upload_unknown"):
        with pytest.raises(IllegalTransition):
            next_state("submission", state, "verdict_presumed")


# -- campaign progress ------------------------------------------------------------------


def _steps(*spec: tuple[str, str]) -> list[StepView]:
    return [StepView(i, action, state, 100 + i) for i, (action, state) in enumerate(spec, 1)]  # type: ignore[arg-type]


def test_first_planned_step_is_due_only_when_running() -> None:
    steps = _steps(("DELETE", "planned"), ("ADD", "planned"))
    assert due_steps("planned", steps) == []
    assert [v.step for v in due_steps("running", steps)] == [1]
    assert due_steps("blocked", steps) == []


def test_add_waits_for_the_delete_before_it_to_succeed() -> None:
    assert due_steps("running", _steps(("DELETE", "uploaded"), ("ADD", "planned"))) == []
    assert due_steps("running", _steps(("DELETE", "unknown"), ("ADD", "planned"))) == []
    assert due_steps("running", _steps(("DELETE", "failed"), ("ADD", "planned"))) == []
    for ok in ("confirmed_success", "presumed_success"):
        due = due_steps("running", _steps(("DELETE", ok), ("ADD", "planned")))
        assert [v.step for v in due] == [2]


def test_same_action_parts_follow_once_the_previous_is_uploaded() -> None:
    steps = _steps(("DELETE", "uploaded"), ("DELETE", "planned"), ("ADD", "planned"))
    assert [v.step for v in due_steps("running", steps)] == [2]
    # ...but not while the previous one is still due or in transfer.
    for busy in ("due", "uploading", "upload_unknown"):
        assert due_steps("running", _steps(("ADD", busy), ("ADD", "planned"))) == []


def test_a_retried_step_goes_again() -> None:
    # The store passes each step's newest attempt: a retry is planned again.
    steps = _steps(("DELETE", "confirmed_success"), ("ADD", "planned"))
    assert [v.step for v in due_steps("running", steps)] == [2]


def test_campaign_event_complete_block_unblock() -> None:
    done = _steps(("DELETE", "confirmed_success"), ("ADD", "presumed_success"))
    assert campaign_event("running", done) == CE.COMPLETE
    stuck = _steps(("DELETE", "unknown"), ("ADD", "planned"))
    assert campaign_event("running", stuck) == CE.BLOCK
    assert campaign_event("blocked", stuck) is None
    resolved = _steps(("DELETE", "confirmed_success"), ("ADD", "planned"))
    assert campaign_event("blocked", resolved) == CE.UNBLOCK
    assert campaign_event("running", resolved) is None
    assert campaign_event("running", []) is None
    # Failure is the service's call (retry budget, the rule's action), not this function's.
    assert campaign_event("running", _steps(("ADD", "failed"))) is None
