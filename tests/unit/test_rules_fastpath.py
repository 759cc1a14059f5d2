"""``classify`` decides most rules with plain booleans and traces only the rules that hold;
with ``explain=True`` it traces every rule. Both must reach the same Classification (rule,
class, action, params, captures, explanation, matched, hits) for any message: the fast
path is an optimisation (benchmarks/RESULTS.md "Mail intake"), never a second semantics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seftpilot.adapters.mailparse import parse_message
from seftpilot.adapters.rules_files import default_rules_path, load_rules
from seftpilot.core.message import Attachment, Message, frozen_headers
from seftpilot.core.rules import Classification, RuleSet, classify
from seftpilot.core.rules_model import Rule

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "sample_mail").glob("*.eml"))
DEFAULT_RULES = load_rules([default_rules_path()])

# Rules exercising every operator and combinator, stop: false, shared tests, captures.
MIXED_RULES = RuleSet(
    [
        Rule.model_validate(r)
        for r in (
            {
                "name": "tag-nic",
                "when": {"subject": {"regex": r"(?P<nic>NIC-\d{5,6}-[A-Z0-9]{5})"}},
                "class": "notice",
                "action": "record",
                "stop": False,
            },
            {
                "name": "exact-subject",
                "when": {"subject": {"equals": "Cohort file rejected"}},
                "class": "submission_failed",
                "action": "alert",
            },
            {
                "name": "case-sensitive",
                "when": {"body": {"contains": "URGENT", "case_sensitive": True}},
                "class": "notice",
                "action": "alert",
                "stop": False,
            },
            {
                "name": "nested",
                "when": {
                    "all": [
                        {"from": {"regex": r"@([a-z0-9-]+\.)*nhs\.(uk|net)$"}},
                        {
                            "any": [
                                {"attachment": {"contains": "errors"}},
                                {"to": {"equals": "x@y.z"}},
                            ]
                        },
                        {"not": {"header": {"Auto-Submitted": {"exists": True}}}},
                    ]
                },
                "class": "notice",
                "action": "record",
                "capture": [{"body": r"(?P<count>\d+) rows"}],
            },
            {
                "name": "list",
                "when": {
                    "header": {"List-Id": {"exists": True}},
                    "body": {"contains": ["new data", "release"]},
                },
                "class": "ignore",
                "action": "ignore",
            },
            {"name": "default", "class": "unmatched", "action": "alert"},
        )
    ]
)

WORDS = [
    "validation failed",
    "passed validation",
    "Cohort-Data-Validation-Errors",
    "Cohort Data Summary File",
    "There is new data",
    "release",
    "upcoming release",
    "reminder",
    "URGENT",
    "urgent",
    "FW:",
    "Re:",
    "NIC-402963-P0Y5D",
    "NIC-402963-P0Y5D_ADD.csv",
    "153 of 2,000 records",
    "(7.65 %)",
    "Reason: the file was rejected",
    "From: enquiries@nhsdigital.nhs.uk",
    "technical issue",
    "please resubmit",
    "12 rows",
    "Cohort file rejected",
    "\n",
    "  ",
]
SENDERS = [
    "enquiries@nhsdigital.nhs.uk",
    "data@england.nhs.net",
    "colleague@uni.example.ac.uk",
    "mailer-daemon@mail.example.org",
    "",
]
HEADERS = ["Auto-Submitted", "List-Id", "X-Failed-Recipients", "X-Seftpilot-Canary", "Precedence"]

texts = st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join) | st.text(max_size=40)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    names = draw(
        st.lists(
            st.sampled_from(["errors.csv", "Cohort-Data-Validation-Errors.csv", "a.pdf"]),
            max_size=2,
        )
    )
    headers = draw(st.dictionaries(st.sampled_from(HEADERS), texts, max_size=3))
    return Message(
        message_id="<m@example.org>",
        from_addr=draw(st.sampled_from(SENDERS)),
        from_name=draw(st.sampled_from(["", "NHS England", "Mail Delivery System"])),
        to=tuple(draw(st.lists(st.sampled_from(["study@example.org", "x@y.z"]), max_size=2))),
        cc=(),
        subject=draw(texts),
        date=None,
        text=draw(texts),
        html_text_used=False,
        attachments=tuple(Attachment(n, "text/csv", 1, "0" * 64, b"x") for n in names),
        headers=frozen_headers(headers),
    )


def _essentials(c: Classification) -> dict[str, Any]:
    """Everything but near_misses (only the traced path computes those)."""
    return {**c.as_dict(), "hits": c.hits}


def _same_both_ways(message: Message, rules: RuleSet) -> None:
    assert _essentials(classify(message, rules)) == _essentials(
        classify(message, rules, explain=True)
    )


def test_fast_path_matches_traced_path_on_every_sample() -> None:
    assert len(SAMPLES) >= 25
    for path in SAMPLES:
        message = parse_message(path.read_bytes())
        _same_both_ways(message, DEFAULT_RULES)
        _same_both_ways(message, MIXED_RULES)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(messages())
def test_fast_path_matches_traced_path_on_generated_messages(message: Message) -> None:
    _same_both_ways(message, DEFAULT_RULES)
    _same_both_ways(message, MIXED_RULES)


def test_shared_tests_are_numbered_once() -> None:
    # The NHS-sender test is one YAML anchor used by six rules: decided once per message.
    leaves = [leaf for r in DEFAULT_RULES if r.node is not None for leaf in r.node.leaves()]
    assert DEFAULT_RULES.slots == len({leaf.key for leaf in leaves}) < len(leaves)
    assert all(0 <= leaf.slot < DEFAULT_RULES.slots for leaf in leaves)
