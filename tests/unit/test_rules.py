"""core.rules: what a rule matches, what it captures, which rule decides, what lint finds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from seftpilot.core.message import Attachment, Message, frozen_headers
from seftpilot.core.rules import RuleSet, classify, sanitize_capture
from seftpilot.core.rules_lint import lint
from seftpilot.core.rules_model import Rule, json_schema
from seftpilot.errors import RulesError

DEFAULT = {"name": "default", "class": "unmatched", "action": "alert"}


def msg(
    *,
    subject: str = "",
    text: str = "",
    from_addr: str = "someone@example.org",
    from_name: str = "",
    to: tuple[str, ...] = ("study@example.org",),
    cc: tuple[str, ...] = (),
    attachments: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> Message:
    return Message(
        message_id="<m@example.org>",
        from_addr=from_addr,
        from_name=from_name,
        to=to,
        cc=cc,
        subject=subject,
        date=datetime(2025, 6, 3, 7, 0, tzinfo=UTC),
        text=text,
        html_text_used=False,
        attachments=tuple(Attachment(n, "text/csv", 1, "0" * 64, b"x") for n in attachments),
        headers=frozen_headers(headers or {}),
    )


def ruleset(*rules: dict[str, Any]) -> RuleSet:
    return RuleSet([Rule.model_validate(r) for r in (*rules, DEFAULT)])


def rule(name: str, when: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "class": "notice", "action": "record", **extra}
    if when is not None:
        body["when"] = when
    return body


def decided(message: Message, *rules: dict[str, Any]) -> str:
    return classify(message, ruleset(*rules)).rule


# --- conditions ---------------------------------------------------------------------------


def test_contains_is_case_insensitive_and_ignores_line_breaks() -> None:
    r = rule("r", {"body": {"contains": "Validation  FAILED"}})
    assert decided(msg(text="your file\nvalidation\n   failed today"), r) == "r"
    assert decided(msg(text="validation passed"), r) == "default"


def test_case_sensitive_contains() -> None:
    r = rule("r", {"subject": {"contains": "NIC", "case_sensitive": True}})
    assert decided(msg(subject="about NIC-1"), r) == "r"
    assert decided(msg(subject="about nic-1"), r) == "default"


def test_contains_list_means_any_of() -> None:
    r = rule("r", {"subject": {"contains": ["rejected", "failed"]}})
    assert decided(msg(subject="File REJECTED"), r) == "r"
    assert decided(msg(subject="File accepted"), r) == "default"


def test_equals_is_whole_text_and_ignores_reply_forward_prefixes() -> None:
    r = rule("r", {"subject": {"equals": "There is new data"}})
    assert decided(msg(subject="There is new data"), r) == "r"
    assert decided(msg(subject="FW: RE: there is new data"), r) == "r"
    assert decided(msg(subject="There is new data for you"), r) == "default"


def test_regex_searches_per_line_and_named_groups_become_captures() -> None:
    r = rule("r", {"body": {"regex": r"^Reason: (?P<reason>.+)$"}})
    result = classify(msg(text="Hello\nReason: bad header\nBye"), ruleset(r))
    assert result.rule == "r"
    assert dict(result.captures) == {"reason": "bad header"}


def test_from_matches_address_or_display_name() -> None:
    by_addr = rule("a", {"from": {"regex": r"@nhsdigital\.nhs\.uk$"}})
    by_name = rule("n", {"from": {"contains": "DARS"}})
    m = msg(from_addr="dars@nhsdigital.nhs.uk", from_name="NHS England DARS")
    assert decided(m, by_addr) == "a"
    assert decided(m, by_name) == "n"


def test_to_matches_any_to_or_cc_address() -> None:
    r = rule("r", {"to": {"equals": "linkage@study.example.org"}})
    assert decided(msg(to=("a@x.org",), cc=("linkage@study.example.org",)), r) == "r"
    assert decided(msg(to=("a@x.org",)), r) == "default"


def test_attachment_matches_any_file_name() -> None:
    r = rule("r", {"attachment": {"contains": "Cohort-Data-Validation-Errors"}})
    assert decided(msg(attachments=("a.pdf", "Cohort-Data-Validation-Errors_1.csv")), r) == "r"
    assert decided(msg(attachments=("a.pdf",)), r) == "default"


def test_header_conditions_and_exists() -> None:
    present = rule("p", {"header": {"Auto-Submitted": {"exists": True}}})
    absent = rule("a", {"header": {"auto-submitted": {"exists": False}}})
    replied = rule("r", {"header": {"AUTO-SUBMITTED": {"regex": "^auto-replied"}}})
    auto = msg(headers={"Auto-Submitted": "auto-replied"})
    assert decided(auto, replied) == "r"
    assert decided(auto, present) == "p"
    assert decided(msg(), absent) == "a"
    assert decided(msg(), present) == "default"


# --- combinators ---------------------------------------------------------------------------


def test_all_any_not_combine() -> None:
    r = rule(
        "r",
        {
            "all": [
                {"from": {"regex": r"nhs\.uk$"}},
                {"any": [{"subject": {"contains": "failed"}}, {"body": {"contains": "rejected"}}]},
                {"not": {"subject": {"regex": "^automatic reply"}}},
            ]
        },
    )
    nhs = "x@nhs.uk"
    assert decided(msg(from_addr=nhs, subject="validation failed"), r) == "r"
    assert decided(msg(from_addr=nhs, text="was rejected"), r) == "r"
    assert decided(msg(from_addr=nhs, subject="Automatic reply: failed"), r) == "default"
    assert decided(msg(from_addr="x@example.org", subject="failed"), r) == "default"
    assert decided(msg(from_addr=nhs, subject="ok"), r) == "default"


def test_several_keys_in_one_mapping_must_all_hold() -> None:
    r = rule("r", {"subject": {"contains": "cohort"}, "body": {"contains": "failed"}})
    assert decided(msg(subject="cohort", text="failed"), r) == "r"
    assert decided(msg(subject="cohort", text="passed"), r) == "default"


def test_explanation_lists_the_conditions_that_held() -> None:
    r = rule(
        "r",
        {
            "all": [
                {"subject": {"contains": "cohort"}},
                {"any": [{"body": {"contains": "nope"}}, {"body": {"regex": "fail(ed)?"}}]},
            ]
        },
    )
    result = classify(msg(subject="Cohort", text="it failed"), ruleset(r))
    assert result.explanation == (
        "subject contains 'cohort'",
        "body regex 'fail(ed)?' matched 'failed'",
    )


# --- captures ---------------------------------------------------------------------------------


def test_captures_are_stripped_of_control_characters_and_capped() -> None:
    r = rule("r", {"subject": {"regex": r"(?s)ref (?P<ref>.*)"}})
    evil = "ref X\r\nBcc: victim@example.org\x1b[31m\u202e" + "A" * 500
    result = classify(msg(subject=evil), ruleset(r))
    ref = result.captures["ref"]
    assert "\r" not in ref and "\n" not in ref and "\x1b" not in ref and "\u202e" not in ref
    assert len(ref) <= 200
    assert ref.startswith("X Bcc: victim@example.org [31m")


def test_sanitize_capture_collapses_whitespace() -> None:
    assert sanitize_capture("  a\t\tb \u2028 c  ") == "a b c"
    assert sanitize_capture("x" * 10, limit=5) == "xxxx…"


def test_capture_section_adds_captures_without_affecting_matching() -> None:
    r = rule(
        "r",
        {"subject": {"contains": "failed"}},
        capture=[{"body": r"(?P<failed>\d+) of (?P<total>\d+)"}, {"body": r"(?P<failed>x)"}],
    )
    assert dict(classify(msg(subject="failed", text="3 of 10"), ruleset(r)).captures) == {
        "failed": "3",
        "total": "10",
    }
    assert dict(classify(msg(subject="failed", text="none"), ruleset(r)).captures) == {}


def test_capture_regex_without_named_group_is_refused() -> None:
    with pytest.raises(ValidationError, match="no named group"):
        Rule.model_validate(rule("r", {"subject": {"contains": "x"}}, capture=[{"body": "x"}]))


# --- stop semantics and the default rule ---------------------------------------------------


def test_first_stopping_match_wins() -> None:
    a = rule("a", {"subject": {"contains": "data"}})
    b = rule("b", {"subject": {"contains": "new data"}})
    assert decided(msg(subject="new data"), a, b) == "a"


def test_non_stopping_rule_annotates_and_evaluation_continues() -> None:
    note = rule("note-nic", {"body": {"regex": r"(?P<nic>NIC-\d+-\w+)"}}, stop=False)
    real = {
        "name": "new-data",
        "class": "new_data",
        "action": "forward",
        "when": {"subject": {"contains": "new data"}},
    }
    result = classify(
        msg(subject="There is new data", text="for NIC-402963-P0Y5D"), ruleset(note, real)
    )
    assert result.rule == "new-data"
    assert result.class_ == "new_data" and result.action == "forward"
    assert result.matched == ("note-nic", "new-data")
    assert dict(result.captures) == {"nic": "NIC-402963-P0Y5D"}
    # Nothing else matched: the non-stopping note is recorded and the default decides.
    fallback = classify(msg(text="NIC-1-A"), ruleset(note, real))
    assert fallback.matched == ("note-nic", "default")
    assert fallback.rule == "default" and fallback.action == "alert"


def test_unmatched_mail_reaches_default_with_near_misses() -> None:
    r = rule("fail", {"all": [{"subject": {"contains": "cohort"}}, {"body": {"contains": "x"}}]})
    result = classify(msg(subject="cohort news"), ruleset(r), explain=True)
    assert (result.rule, result.class_, result.action) == ("default", "unmatched", "alert")
    assert result.near_misses[0].rule == "fail"
    assert result.near_misses[0].failed == ("body contains 'x'",)


def test_rule_set_without_default_is_refused() -> None:
    with pytest.raises(RulesError, match="must end with the rule named 'default'"):
        RuleSet([Rule.model_validate(rule("a", {"subject": {"contains": "x"}}))])


def test_default_not_last_is_refused() -> None:
    rules = [
        Rule.model_validate(DEFAULT),
        Rule.model_validate(rule("a", {"body": {"contains": "x"}})),
    ]
    with pytest.raises(
        RulesError, match=r"a\.yaml:1: rule 'default': the default rule must be the last"
    ):
        RuleSet(rules, ["a.yaml:1", "a.yaml:5"])


def test_default_must_alert_and_have_no_conditions() -> None:
    with pytest.raises(ValidationError, match="must alert"):
        Rule.model_validate({**DEFAULT, "action": "ignore"})
    with pytest.raises(ValidationError, match="no `when`"):
        Rule.model_validate({**DEFAULT, "when": {"subject": {"contains": "x"}}})


def test_duplicate_names_are_refused_naming_both_places() -> None:
    a = Rule.model_validate(rule("a", {"subject": {"contains": "x"}}))
    with pytest.raises(RulesError, match=r"nhs.yaml:9: rule 'a': duplicate .* nhs.yaml:3"):
        RuleSet([a, a, Rule.model_validate(DEFAULT)], ["nhs.yaml:3", "nhs.yaml:9", "d.yaml:1"])


# --- model validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ({"subject": {}}, "exactly one of"),
        ({"subject": {"contains": "a", "regex": "b"}}, "exactly one of"),
        ({"subject": {"regex": "(unclosed"}}, "bad regex"),
        # re's FutureWarning ("Possible nested set"), refused by name: found by the fuzzer
        ({"subject": {"regex": "[[a]"}}, "is ambiguous .*Possible nested set"),
        ({"subject": {"regex": "[a--b]"}}, "is ambiguous .*Possible set difference"),
        ({"subject": {"contains": " "}}, "non-empty"),
        ({"header": {"X-Not-Kept": {"exists": True}}}, "not kept by the parser"),
        ({"all": []}, "at least one"),
        ({}, "empty condition"),
    ],
)
def test_bad_conditions_are_refused(when: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Rule.model_validate(rule("r", when))


def test_unknown_class_is_refused() -> None:
    with pytest.raises(ValidationError):
        Rule.model_validate({"name": "r", "class": "submision_failed", "action": "alert"})


def test_json_schema_describes_rules_file() -> None:
    schema = json_schema()
    assert schema["title"] == "seftpilot rules file"
    text = str(schema)
    for word in ("contains", "regex", "submission_failed", "stop", "when"):
        assert word in text


# --- lint: shadowing --------------------------------------------------------------------------


def shadowed(*rules: dict[str, Any]) -> list[str]:
    return [p.rule for p in lint(ruleset(*rules)) if p.code == "shadowed"]


def test_weaker_earlier_condition_shadows_later_rule() -> None:
    early = rule("early", {"subject": {"contains": "failed"}})
    late = rule("late", {"all": [{"subject": {"contains": "validation failed"}}]})
    assert shadowed(early, late) == ["late"]


def test_rule_without_conditions_shadows_everything_after_it_including_default() -> None:
    catch_all = {"name": "catch-all", "class": "ignore", "action": "ignore"}
    later = rule("later", {"subject": {"contains": "x"}})
    assert shadowed(catch_all, later) == ["later", "default"]


def test_identical_conditions_shadow() -> None:
    when = {"any": [{"subject": {"regex": "a+"}}, {"body": {"equals": "b"}}]}
    assert shadowed(rule("a", when), rule("b", when)) == ["b"]


def test_non_stopping_rules_and_narrower_earlier_rules_do_not_shadow() -> None:
    wide_note = rule("note", {"subject": {"contains": "failed"}}, stop=False)
    narrow = rule("narrow", {"subject": {"contains": "validation failed"}})
    wide = rule("wide", {"subject": {"contains": "failed"}})
    other_field = rule("body", {"body": {"contains": "failed"}})
    assert shadowed(wide_note, narrow, wide, other_field) == []


def test_any_and_all_combinations() -> None:
    either = rule(
        "either", {"any": [{"subject": {"contains": "fail"}}, {"body": {"contains": "x"}}]}
    )
    both = rule("both", {"subject": {"contains": "failed"}, "from": {"contains": "nhs"}})
    assert shadowed(either, both) == ["both"]
    # An earlier rule needing two things does not shadow a later one needing only one.
    assert shadowed(both, rule("one", {"subject": {"contains": "failed"}})) == []
