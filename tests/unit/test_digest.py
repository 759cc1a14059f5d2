"""core.digest: which submissions a reader sees, what needs them, what happens next, and
the JSON shape. Pure: facts in, a Digest out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from seftpilot.core.digest import (
    AlertFacts,
    CanaryFacts,
    CanaryRecord,
    Facts,
    HeartbeatFacts,
    PoolFacts,
    SubmissionFacts,
    build_digest,
)

NOW = datetime(2026, 3, 6, 7, 30, tzinfo=UTC)
SINCE = NOW - timedelta(days=1)
OLD = NOW - timedelta(days=30)


def sub(id_: int, state: str, **kw: object) -> SubmissionFacts:
    values: dict[str, object] = {
        "id": id_,
        "agreement": "NIC-402963-P0Y5D",
        "action": "ADD",
        "state": state,
        "attempt": 1,
        "row_count": 10,
        "created_at": OLD,
    }
    values.update(kw)
    return SubmissionFacts(**values)  # type: ignore[arg-type]


def facts(**kw: object) -> Facts:
    values: dict[str, object] = {
        "now": NOW,
        "since": SINCE,
        "submissions": [],
        "pools": [PoolFacts("NIC-402963-P0Y5D", 0, 0, None)],
        "heartbeat": HeartbeatFacts(True, NOW - timedelta(minutes=1), False, timedelta(minutes=6)),
        "canary": CanaryFacts(True, timedelta(minutes=30)),
        "open_alerts": [],
        "cleared_alerts": [],
        "mails": [],
        "next_digest_at": NOW + timedelta(days=1),
    }
    values.update(kw)
    return Facts(**values)  # type: ignore[arg-type]


def test_a_quiet_day_still_makes_a_digest() -> None:
    digest = build_digest(facts())
    assert digest.headline == "all quiet, no news"
    assert digest.attention == ()
    assert digest.subject == "[seftpilot] digest Fri 06 Mar: all quiet, no news"
    assert [s.what for s in digest.next_steps] == ["next digest"]


def test_settled_old_submissions_are_left_out_unsettled_ones_always_shown() -> None:
    subs = [
        sub(1, "confirmed_success", verdict_at=OLD),
        sub(2, "presumed_success", verdict_at=NOW - timedelta(hours=3)),
        sub(3, "unknown", verdict_at=OLD),
        sub(
            4,
            "uploaded",
            uploaded_at=NOW - timedelta(hours=20),
            evidence_deadline=NOW + timedelta(hours=5),
        ),
        sub(5, "due", next_upload_at=NOW + timedelta(hours=2)),
    ]
    digest = build_digest(facts(submissions=subs))
    assert [s.id for s in digest.submissions] == [2, 3, 4, 5]
    assert digest.headline == "1 thing needs you"
    assert "#3" in digest.attention[0] and "unknown" in digest.attention[0]
    steps = [(s.at, s.what) for s in digest.next_steps]
    assert steps == [
        (NOW + timedelta(hours=2), "upload of submission #5 (ADD, 10 rows)"),
        (NOW + timedelta(hours=5), "verdict on submission #4 (ADD)"),
        (NOW + timedelta(days=1), "next digest"),
        (None, "the operator decides on submission #3"),
    ]


def test_stale_listening_lost_canaries_and_high_alerts_need_the_operator() -> None:
    lost = CanaryRecord("t1", "daily:2026-03-05", OLD, None, OLD + timedelta(minutes=30))
    digest = build_digest(
        facts(
            heartbeat=HeartbeatFacts(True, NOW - timedelta(hours=2), True, timedelta(minutes=6)),
            canary=CanaryFacts(True, timedelta(minutes=30), recent=(lost,)),
            open_alerts=[
                AlertFacts("a", "high", "IMAP login refused", "open", OLD, NOW),
                AlertFacts("b", "warning", "minor", "open", OLD, NOW),
            ],
        )
    )
    assert len(digest.attention) == 3
    assert "not being listened to" in digest.attention[0]
    assert "start `seftpilot watch`" in digest.attention[0]
    assert "canary" in digest.attention[1]
    assert "IMAP login refused" in digest.attention[2]
    assert digest.canary.lost == 1


def test_json_document_is_plain_json() -> None:
    digest = build_digest(facts(submissions=[sub(7, "due")]))
    doc = digest.to_dict()
    text = json.dumps(doc)
    assert json.loads(text)["submissions"][0]["id"] == 7
    assert doc["heartbeat"]["stale_after"] == 360.0
    assert doc["deliveries"] is None
    assert doc["canary"]["lost"] == 0
    assert doc["subject"].startswith("[seftpilot] digest")
