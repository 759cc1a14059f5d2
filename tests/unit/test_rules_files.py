"""Rules files: every mistake is reported with its file, line and rule name."""

from __future__ import annotations

from pathlib import Path

import pytest

from seftpilot.adapters.rules_files import (
    check_rules,
    default_rules_path,
    load_rules,
    parse_rules_text,
)
from seftpilot.errors import RulesError

NHS = Path("rules/nhs.yaml")


def problems(text: str) -> list[str]:
    _, errors = parse_rules_text(text, NHS)
    return [str(e.message) for e in errors]


def test_typo_in_condition_names_file_line_rule_and_suggests() -> None:
    text = """\
rules:
  - name: nhs-ok
    class: notice
    action: record
    when:
      subject: {contains: fine}
  - name: nhs-failure
    class: submission_failed
    action: alert
    when:
      all:
        - from: {regex: 'nhs\\.uk$'}
        - subjet: {contains: failed}
"""
    assert problems(text) == [
        "rules/nhs.yaml:13: rule 'nhs-failure': unknown condition 'subjet' "
        "(did you mean 'subject'?)"
    ]


@pytest.mark.parametrize(
    ("snippet", "line", "expected"),
    [
        (
            "    when: {subject: {contians: x}}\n",
            5,
            "unknown operator 'contians' (did you mean 'contains'?)",
        ),
        (
            "    when: {subject: {regex: '(open'}}\n",
            5,
            "bad regex '(open': missing ), unterminated subpattern at position 0",
        ),
        ("    stpo: false\n", 5, "unknown key 'stpo' (did you mean 'stop'?)"),
        (
            "    when:\n      header: {X-Unknown: {exists: true}}\n",
            6,
            "header 'X-Unknown' is not kept by the parser",
        ),
    ],
)
def test_errors_inside_a_rule(snippet: str, line: int, expected: str) -> None:
    text = "rules:\n  - name: r1\n    class: notice\n    action: record\n" + snippet
    (message,) = problems(text)
    assert message.startswith(f"rules/nhs.yaml:{line}: rule 'r1': ")
    assert expected in message


def test_unknown_class_lists_the_vocabulary_and_suggests() -> None:
    text = "rules:\n  - name: r1\n    class: submision_failed\n    action: alert\n"
    (message,) = problems(text)
    assert message.startswith("rules/nhs.yaml:3: rule 'r1': unknown class 'submision_failed'")
    assert "did you mean 'submission_failed'?" in message


def test_missing_key_and_unnamed_rule() -> None:
    (message,) = problems("rules:\n  - class: notice\n    action: record\n")
    assert message == "rules/nhs.yaml:2: rule '#1': missing required key 'name'"


def test_duplicate_yaml_key_is_an_error_not_silently_dropped() -> None:
    text = (
        "rules:\n  - name: r1\n    class: notice\n    action: record\n    when:\n"
        "      subject: {contains: a}\n      subject: {contains: b}\n"
    )
    (message,) = problems(text)
    assert message.startswith("rules/nhs.yaml:7: key 'subject' appears twice")


def test_yaml_syntax_error_names_the_line() -> None:
    (message,) = problems("rules:\n  - name: r1\n    when: {subject: {contains: 'x'}\n")
    assert message.startswith("rules/nhs.yaml:")
    assert "not valid YAML" in message


def test_file_must_hold_a_rules_list() -> None:
    (message,) = problems("- name: r1\n")
    assert "a mapping with a `rules:` list" in message


def test_all_problems_are_reported_not_only_the_first() -> None:
    text = (
        "rules:\n"
        "  - {name: a, class: notice, action: recrod}\n"
        "  - {name: b, class: notice, action: record, when: {bdy: {contains: x}}}\n"
    )
    found = problems(text)
    assert len(found) == 2
    assert found[0].startswith("rules/nhs.yaml:2: rule 'a': unknown action 'recrod'")
    assert found[1].startswith("rules/nhs.yaml:3: rule 'b': unknown condition 'bdy'")


def test_anchors_and_x_keys_are_allowed() -> None:
    text = """\
x-nhs: &nhs
  from: {regex: 'nhs\\.uk$'}
rules:
  - {name: a, class: notice, action: record, when: *nhs}
  - {name: b, class: notice, action: alert, when: {all: [*nhs, {body: {contains: b}}]}}
"""
    parsed, errors = parse_rules_text(text, NHS)
    assert errors == []
    assert [r.name for r in parsed.rules] == ["a", "b"]
    assert parsed.origins == ["rules/nhs.yaml:4", "rules/nhs.yaml:5"]


def test_load_rules_from_files_in_order_and_default_last(tmp_path: Path) -> None:
    (tmp_path / "10-a.yaml").write_text(
        "rules:\n  - {name: a, class: notice, action: record, when: {body: {contains: a}}}\n"
    )
    (tmp_path / "99-default.yaml").write_text(
        "rules:\n  - {name: default, class: unmatched, action: alert}\n"
    )
    extra = tmp_path / "more" / "extra.yaml"
    extra.parent.mkdir()
    extra.write_text(
        "rules:\n  - {name: b, class: notice, action: record, when: {body: {contains: b}}}\n"
    )
    assert load_rules([tmp_path]).names == ("a", "default")
    with pytest.raises(RulesError) as info:
        load_rules([tmp_path, extra])
    assert "99-default.yaml:2: rule 'default': the default rule must be the last rule" in str(
        info.value
    )
    assert "rule 'b' at " in str(info.value)


def test_missing_default_is_named(tmp_path: Path) -> None:
    only = tmp_path / "only.yaml"
    only.write_text(
        "rules:\n  - {name: a, class: notice, action: record, when: {body: {contains: a}}}\n"
    )
    with pytest.raises(RulesError, match="it is missing"):
        load_rules([only])


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="not found") as info:
        load_rules([tmp_path / "nope"])
    assert info.value.hint and "seftpilot init" in info.value.hint


def test_packaged_default_rules_load_and_lint_clean() -> None:
    report = check_rules([default_rules_path()])
    assert report.errors == [] and report.lint == []
    assert report.ruleset is not None
    assert report.ruleset.names[-1] == "default"
    assert {"seftpilot-canary", "delivery-failure", "auto-reply", "nhs-new-data"} <= set(
        report.ruleset.names
    )


def test_empty_when_is_refused_not_a_silent_catch_all() -> None:
    (message,) = problems(
        "rules:\n  - name: r1\n    class: ignore\n    action: ignore\n    when:\n"
    )
    assert message.startswith("rules/nhs.yaml:2: rule 'r1': ")
    assert "`when:` is empty" in message
