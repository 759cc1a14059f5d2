"""The ledger's decisions: state machines as data, the believed pool, and the plan.

Owns, as pure values and functions:

* the submission and campaign state machines, each one transition table
  (``{(state, event): new_state}``) and ``next_state``, which refuses every pair not in
  the table with ``errors.IllegalTransition`` and changes nothing;
* which campaign steps may become due (``due_steps``) and what the campaign itself should
  do next (``campaign_event``);
* the believed pool, derived from the recorded history (``derive_pool``): NHS England
  cannot list what it holds, so the pool is whatever accepted submissions imply;
* the plan (``plan``) that moves the pool to a target cohort, one file per NHS day.

It must not touch the database, files, clock or logs: ``adapters/ledger_store.py`` reads
the history, passes it here and records the results. Dates are the scheduler's business:
a plan says only in which order and on which NHS day offset a step may go at the earliest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

from seftpilot.errors import IllegalTransition

Action = Literal["ADD", "DELETE"]
Strategy = Literal["diff", "replace"]
ACTIONS: tuple[Action, ...] = ("ADD", "DELETE")
STRATEGIES: tuple[Strategy, ...] = ("diff", "replace")

# NHS England's documented ceiling for one cohort file.
MAX_ROWS_PER_FILE = 1_000_000


# -- submissions --------------------------------------------------------------------------
class SubmissionState(StrEnum):
    PLANNED = "planned"  # recorded, not yet allowed to go
    DUE = "due"  # may be uploaded on the next NHS day that allows it
    UPLOADING = "uploading"  # claimed; the side effect is in hand
    UPLOAD_UNKNOWN = "upload_unknown"  # crash or drop mid-transfer: list the remote first
    UPLOADED = "uploaded"  # on NHS's side; the evidence window is open
    CONFIRMED_SUCCESS = "confirmed_success"
    PRESUMED_SUCCESS = "presumed_success"
    FAILED = "failed"
    UNKNOWN = "unknown"  # evidence inconclusive: the operator decides
    RETRIED = "retried"  # failed, and a new attempt (attempt + 1, retry_of) replaced it
    CANCELLED = "cancelled"


class SubmissionEvent(StrEnum):
    MAKE_DUE = "make_due"  # its campaign step (or the operator) releases it
    CANCEL = "cancel"
    CLAIM = "claim"  # the uploader claims it; records the NHS day of the attempt
    UPLOAD_DONE = "upload_done"  # the transport confirmed the file is in place
    UPLOAD_NOT_SENT = "upload_not_sent"  # refused before any byte could land (nothing remote)
    UPLOAD_LOST = "upload_lost"  # crash or dropped connection: fate unknown
    REMOTE_FOUND = "remote_found"  # listing the remote folder found the file
    REMOTE_ABSENT = "remote_absent"  # listing the remote folder proved it is not there
    VERDICT_CONFIRMED = "verdict_confirmed"
    VERDICT_PRESUMED = "verdict_presumed"
    VERDICT_FAILED = "verdict_failed"
    VERDICT_UNKNOWN = "verdict_unknown"
    RESOLVE_SUCCESS = "resolve_success"  # the operator settles an unknown verdict
    RESOLVE_FAILED = "resolve_failed"
    LATE_CONFIRMATION = "late_confirmation"  # a success notice after a presumed success
    LATE_FAILURE = "late_failure"  # a failure notice correlated after a presumed success
    RETRY = "retry"


S = SubmissionState
E = SubmissionEvent

SUBMISSION_TRANSITIONS: dict[tuple[SubmissionState, SubmissionEvent], SubmissionState] = {
    (S.PLANNED, E.MAKE_DUE): S.DUE,
    (S.PLANNED, E.CANCEL): S.CANCELLED,
    (S.DUE, E.CANCEL): S.CANCELLED,
    (S.DUE, E.CLAIM): S.UPLOADING,
    (S.UPLOADING, E.UPLOAD_DONE): S.UPLOADED,
    (S.UPLOADING, E.UPLOAD_NOT_SENT): S.DUE,
    (S.UPLOADING, E.UPLOAD_LOST): S.UPLOAD_UNKNOWN,
    (S.UPLOAD_UNKNOWN, E.REMOTE_FOUND): S.UPLOADED,
    (S.UPLOAD_UNKNOWN, E.REMOTE_ABSENT): S.DUE,
    (S.UPLOADED, E.VERDICT_CONFIRMED): S.CONFIRMED_SUCCESS,
    (S.UPLOADED, E.VERDICT_PRESUMED): S.PRESUMED_SUCCESS,
    (S.UPLOADED, E.VERDICT_FAILED): S.FAILED,
    (S.UPLOADED, E.VERDICT_UNKNOWN): S.UNKNOWN,
    (S.UNKNOWN, E.RESOLVE_SUCCESS): S.CONFIRMED_SUCCESS,
    (S.UNKNOWN, E.RESOLVE_FAILED): S.FAILED,
    (S.PRESUMED_SUCCESS, E.LATE_CONFIRMATION): S.CONFIRMED_SUCCESS,
    (S.PRESUMED_SUCCESS, E.LATE_FAILURE): S.FAILED,
    (S.FAILED, E.RETRY): S.RETRIED,
}

# Verdicts are the states an upload settles in; ``verdict`` in the ledger mirrors them.
VERDICTS: frozenset[SubmissionState] = frozenset(
    {S.CONFIRMED_SUCCESS, S.PRESUMED_SUCCESS, S.FAILED, S.UNKNOWN}
)
# Only these change the believed pool (DESIGN.md, "Verdicts").
ACCEPTED: frozenset[str] = frozenset({S.CONFIRMED_SUCCESS, S.PRESUMED_SUCCESS})
# The file may be on NHS's side but no verdict says what NHS made of it.
IN_FLIGHT: frozenset[str] = frozenset({S.UPLOADING, S.UPLOAD_UNKNOWN, S.UPLOADED, S.UNKNOWN})
# Nothing more happens to a submission in these states.
SUBMISSION_FINAL: frozenset[str] = frozenset({S.CONFIRMED_SUCCESS, S.RETRIED, S.CANCELLED})


# -- campaigns ----------------------------------------------------------------------------
class CampaignState(StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    BLOCKED = "blocked"  # a step's verdict is unknown: nothing moves until it is resolved
    DONE = "done"
    FAILED = "failed"  # a step failed for good (retries exhausted, or the rule said alert)
    CANCELLED = "cancelled"


class CampaignEvent(StrEnum):
    START = "start"
    BLOCK = "block"
    UNBLOCK = "unblock"
    COMPLETE = "complete"
    FAIL = "fail"
    RESUME = "resume"  # the operator fixed what failed and lets the campaign go on
    CANCEL = "cancel"


C = CampaignState
CE = CampaignEvent

CAMPAIGN_TRANSITIONS: dict[tuple[CampaignState, CampaignEvent], CampaignState] = {
    (C.PLANNED, CE.START): C.RUNNING,
    (C.PLANNED, CE.CANCEL): C.CANCELLED,
    (C.RUNNING, CE.BLOCK): C.BLOCKED,
    (C.RUNNING, CE.COMPLETE): C.DONE,
    (C.RUNNING, CE.FAIL): C.FAILED,
    (C.RUNNING, CE.CANCEL): C.CANCELLED,
    (C.BLOCKED, CE.UNBLOCK): C.RUNNING,
    (C.BLOCKED, CE.FAIL): C.FAILED,
    (C.BLOCKED, CE.CANCEL): C.CANCELLED,
    (C.FAILED, CE.RESUME): C.RUNNING,
    (C.FAILED, CE.CANCEL): C.CANCELLED,
}
CAMPAIGN_ACTIVE: frozenset[str] = frozenset({C.PLANNED, C.RUNNING, C.BLOCKED, C.FAILED})

Machine = Literal["submission", "campaign"]
TRANSITIONS: dict[str, dict[tuple[str, str], str]] = {
    # Plain-string copies, so stored states (TEXT in the ledger) look up directly.
    "submission": {(str(s), str(e)): str(n) for (s, e), n in SUBMISSION_TRANSITIONS.items()},
    "campaign": {(str(s), str(e)): str(n) for (s, e), n in CAMPAIGN_TRANSITIONS.items()},
}
STATES: dict[str, tuple[str, ...]] = {
    "submission": tuple(SubmissionState),
    "campaign": tuple(CampaignState),
}
EVENTS: dict[str, tuple[str, ...]] = {
    "submission": tuple(SubmissionEvent),
    "campaign": tuple(CampaignEvent),
}


def next_state(machine: Machine, state: str, event: str) -> str:
    """The state ``event`` leads to from ``state``; IllegalTransition for any other pair."""
    try:
        table = TRANSITIONS[machine]
    except KeyError:
        raise ValueError(f"no state machine called {machine!r}") from None
    try:
        return table[(state, event)]
    except KeyError:
        raise IllegalTransition(machine, str(state), str(event)) from None


def allowed_events(machine: Machine, state: str) -> list[str]:
    """The events ``state`` accepts, in table order (for messages and status output)."""
    return [str(ev) for (st, ev) in TRANSITIONS[machine] if st == state]


# -- campaign progress --------------------------------------------------------------------
@dataclass(frozen=True)
class StepView:
    """One campaign step as the ledger sees it: its newest attempt's submission."""

    step: int
    action: Action
    state: str
    submission_id: int = 0


def due_steps(campaign_state: str, steps: Iterable[StepView]) -> list[StepView]:
    """The planned steps that may become due now (at most one: files go one a day).

    Steps go in order. A step may go once every earlier step has been uploaded (its NHS
    day is then spent, the unique index keeps the next one off that day); an ADD step
    additionally waits until every DELETE before it has a successful verdict, because
    adding a reference that a still-undecided DELETE may yet remove would leave the pool
    unknowable. A step that failed, is unknown or is still in transfer stops the line.
    """
    if campaign_state != C.RUNNING:
        return []
    deletes_accepted = True
    for view in sorted(steps, key=lambda v: v.step):
        if view.state in ACCEPTED:
            continue
        if view.state == S.PLANNED:
            if view.action == "ADD" and not deletes_accepted:
                return []
            return [view]
        if view.state == S.UPLOADED:  # awaiting its verdict; the next file may follow
            if view.action == "DELETE":
                deletes_accepted = False
            continue
        return []
    return []


def campaign_event(campaign_state: str, steps: Iterable[StepView]) -> CampaignEvent | None:
    """The event the campaign's steps call for, if any (complete, block, unblock).

    Failure is not decided here: whether a failed step is retried or fails the campaign
    is the rule's and the retry budget's call, made by the service.
    """
    views = list(steps)
    unknown = any(v.state == S.UNKNOWN for v in views)
    if campaign_state == C.RUNNING:
        if views and all(v.state in ACCEPTED for v in views):
            return CE.COMPLETE
        if unknown:
            return CE.BLOCK
    if campaign_state == C.BLOCKED and not unknown:
        return CE.UNBLOCK
    return None


# -- the believed pool --------------------------------------------------------------------
REJECTED = "rejected"  # submission_refs.outcome for a row NHS refused on its own


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded submission, as far as the pool cares.

    ``refs`` yields ``(unique_reference, outcome)`` and may be lazy (a cursor in pages):
    it is read once, and only for accepted submissions.
    """

    submission_id: int
    action: Action
    verdict: str | None
    uploaded_at: datetime | None
    refs: Iterable[tuple[str, str | None]]


@dataclass(frozen=True, slots=True)
class StuckMark:
    """Evidence that NHS still holds a reference after accepting its DELETE."""

    ref: str
    since: datetime
    evidence: str
    resolved: bool = False


@dataclass(frozen=True, slots=True)
class PoolEntry:
    ref: str
    added_at: datetime
    submission_id: int  # the accepted ADD that put it there (its row data is kept there)


@dataclass(frozen=True, slots=True)
class StuckEntry:
    ref: str
    since: datetime
    evidence: str
    deleted_by: int | None  # the accepted DELETE NHS apparently ignored
    deleted_at: datetime | None


@dataclass
class Pool:
    """What NHS England is believed to hold, in the order it was added."""

    members: dict[str, PoolEntry] = field(default_factory=dict)
    stuck: dict[str, StuckEntry] = field(default_factory=dict)
    last_change: datetime | None = None
    last_submission_id: int | None = None

    def __iter__(self) -> Iterator[str]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, ref: object) -> bool:
        return ref in self.members


def derive_pool(history: Iterable[HistoryEntry], stuck: Iterable[StuckMark] = ()) -> Pool:
    """The believed pool implied by the recorded history.

    Accepted ADDs put their references in (rows NHS rejected on their own stay out);
    accepted DELETEs take theirs out (a rejected DELETE row leaves the reference in).
    Failed, unknown, cancelled and unsent submissions change nothing. Submissions apply in
    upload order. A reference marked stuck (and not resolved) is reported in ``stuck``
    while it is out of the pool; an accepted ADD after the mark makes it a member again.
    """
    marks = {m.ref: m for m in stuck if not m.resolved}
    deleted_by: dict[str, tuple[int, datetime]] = {}
    pool = Pool()
    accepted = [h for h in history if h.verdict in ACCEPTED and h.uploaded_at is not None]
    accepted.sort(key=lambda h: (h.uploaded_at, h.submission_id))
    members = pool.members
    for entry in accepted:
        uploaded_at = entry.uploaded_at
        assert uploaded_at is not None  # filtered above; narrows the type
        if entry.action == "ADD":
            for ref, outcome in entry.refs:
                if outcome != REJECTED and ref not in members:
                    members[ref] = PoolEntry(ref, uploaded_at, entry.submission_id)
        else:
            for ref, outcome in entry.refs:
                if outcome == REJECTED:
                    continue
                members.pop(ref, None)
                if ref in marks:
                    deleted_by[ref] = (entry.submission_id, uploaded_at)
        pool.last_change = uploaded_at
        pool.last_submission_id = entry.submission_id
    for ref, mark in marks.items():
        if ref in members:
            continue
        by = deleted_by.get(ref)
        pool.stuck[ref] = StuckEntry(
            ref, mark.since, mark.evidence, by[0] if by else None, by[1] if by else None
        )
    return pool


# -- the plan -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedStep:
    """One file of a plan. ``day_offset`` is the earliest NHS day, counted from the first
    step's (0); the scheduler turns it into a date once the steps before it allow."""

    order: int
    action: Action
    refs: tuple[str, ...]
    day_offset: int
    part: int  # 1-based index among this action's files
    parts: int
    waits_for: tuple[int, ...] = ()  # steps that need a successful verdict first

    @property
    def count(self) -> int:
        return len(self.refs)


def _chunks(refs: Sequence[str], size: int) -> list[tuple[str, ...]]:
    return [tuple(refs[i : i + size]) for i in range(0, len(refs), size)]


def plan(
    pool: Iterable[str],
    target: Iterable[str],
    strategy: Strategy = "diff",
    *,
    max_rows: int = MAX_ROWS_PER_FILE,
) -> list[PlannedStep]:
    """The files that move the believed ``pool`` to ``target``; [] when nothing is to do.

    ``diff`` deletes only what leaves and adds only what is new; ``replace`` deletes the
    whole pool and then adds the whole target. Never both actions in one file, every
    DELETE before any ADD, one file per NHS day, at most ``max_rows`` rows per file (a
    larger set is split into several files on successive days). DELETEs follow the pool's
    order (upload time); ADDs follow the target's order. Duplicates in ``target`` count once.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    held = list(dict.fromkeys(pool))
    wanted = list(dict.fromkeys(target))
    if strategy == "diff":
        wanted_set = set(wanted)
        held_set = set(held)
        to_delete = [r for r in held if r not in wanted_set]
        to_add = [r for r in wanted if r not in held_set]
    else:
        to_delete, to_add = held, wanted
    steps: list[PlannedStep] = []
    delete_orders: list[int] = []
    for action, refs in (("DELETE", to_delete), ("ADD", to_add)):
        chunks = _chunks(refs, max_rows)
        for part, chunk in enumerate(chunks, start=1):
            order = len(steps) + 1
            steps.append(
                PlannedStep(
                    order=order,
                    action="DELETE" if action == "DELETE" else "ADD",
                    refs=chunk,
                    day_offset=order - 1,
                    part=part,
                    parts=len(chunks),
                    waits_for=tuple(delete_orders) if action == "ADD" else (),
                )
            )
            if action == "DELETE":
                delete_orders.append(order)
    return steps
