"""Hostile input to the rules loader: whatever the text of a rules file, the answer is a
valid rule set or RulesError naming the file (and the line where there is one), never
another exception, a hang or a blow-up; and no rule that can backtrack exponentially
ever loads (Python's re has no time limit: one such rule would stall the intake)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seftpilot.adapters.rules_files import (
    check_rules,
    default_rules_path,
    load_rules,
    parse_rules_text,
)
from seftpilot.core.regex_safety import nested_quantifier
from seftpilot.errors import RulesError

DEFAULT_FILES = sorted(default_rules_path().glob("*.yaml"))
DEFAULT_TEXTS = {p.name: p.read_text(encoding="utf-8") for p in DEFAULT_FILES}
FAST = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _check_answer(text: str, name: str = "fuzz.yaml") -> None:
    """The loader's contract on one file's text."""
    rules, problems = parse_rules_text(text, Path(name))
    for problem in problems:
        assert isinstance(problem, RulesError)
        assert problem.file == name
        assert str(problem).startswith(name)
    if not problems:
        assert all(r.name for r in rules.rules)
        assert len(rules.origins) == len(rules.rules)


@FAST
@given(st.text(max_size=400))
def test_arbitrary_text_gets_rules_or_a_rules_error(text: str) -> None:
    _check_answer(text)


yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["default", "alert", "unmatched", "(a+)+", "[", "subject", "when"]),
)
yaml_keys = st.one_of(
    st.sampled_from(
        [
            *("rules", "version", "name", "when", "class", "action", "params", "capture"),
            *("stop", "from", "to", "subject", "body", "attachment", "header", "all", "any"),
            *("not", "contains", "equals", "regex", "exists", "case_sensitive", "x-anchor"),
        ]
    ),
    st.text(max_size=8),
    st.integers(),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(yaml_keys, inner, max_size=5),
    max_leaves=30,
)


@FAST
@given(yaml_values)
def test_arbitrary_yaml_documents_get_rules_or_a_rules_error(doc: object) -> None:
    _check_answer(yaml.safe_dump(doc, allow_unicode=True))
    _check_answer(yaml.safe_dump({"rules": doc}, allow_unicode=True))


def _mutate(text: str, rnd: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(rnd.randint(1, 4)):
        if not lines:
            break
        i = rnd.randrange(len(lines))
        kind = rnd.randrange(8)
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[i])
        elif kind == 2:
            j = rnd.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == 3:  # indentation
            lines[i] = " " * rnd.choice([0, 1, 2, 3, 5, 8]) + lines[i].lstrip(" ")
        elif kind == 4:  # a word replaced
            words = lines[i].split(" ")
            k = rnd.randrange(len(words))
            words[k] = rnd.choice(
                ["subjet", "class:", "action: explode", "*nope", "&a", "'", '"', "{", "(a+)+", ""]
            )
            lines[i] = " ".join(words)
        elif kind == 5:  # random characters in the line
            pos = rnd.randrange(len(lines[i]) + 1)
            junk = "".join(rnd.choice(":-[]{}&*!|>'\"#%@\t\x00\\é") for _ in range(3))
            lines[i] = lines[i][:pos] + junk + lines[i][pos:]
        elif kind == 6:
            lines[i] = lines[i][: rnd.randrange(len(lines[i]) + 1)]
        else:  # a regex made catastrophic
            lines[i] = lines[i].replace("regex: '", "regex: '(\\w+\\s?)*$|", 1)
    return "".join(lines)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(DEFAULT_TEXTS)), st.randoms(use_true_random=False))
def test_mutated_default_rules_load_or_name_file_and_line(name: str, rnd: random.Random) -> None:
    text = _mutate(DEFAULT_TEXTS[name], rnd)
    rules, problems = parse_rules_text(text, Path(name))
    for problem in problems:
        assert isinstance(problem, RulesError)
        assert problem.file == name
        # Inside one file every problem has a line to look at.
        assert problem.line is not None and problem.line >= 1, str(problem)
    for rule in rules.rules:  # whatever loaded holds no exponential regex
        for pattern in _regexes(rule.model_dump(by_alias=True)):
            assert nested_quantifier(pattern) is None, pattern


def _regexes(value: object) -> list[str]:
    if isinstance(value, dict):
        out = [v for k, v in value.items() if k == "regex" and isinstance(v, str)]
        capture = value.get("capture")
        if isinstance(capture, list):
            for c in capture:
                out += [v for v in c.values() if isinstance(v, str)]
        for v in value.values():
            out += _regexes(v)
        return out
    if isinstance(value, list):
        return [r for v in value for r in _regexes(v)]
    return []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_on_disk_load_or_raise_rules_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    folder = tmp_path_factory.mktemp("rules")
    (folder / "10-fuzz.yaml").write_bytes(data)
    (folder / "99-default.yaml").write_text(DEFAULT_TEXTS["99-default.yaml"], encoding="utf-8")
    try:
        ruleset = load_rules([folder])
    except RulesError as exc:
        assert exc.file is not None
        assert "10-fuzz.yaml" in str(exc) or "99-default.yaml" in str(exc)
    else:
        assert ruleset.names[-1] == "default"


def test_an_alias_bomb_is_refused_quickly_with_file_and_line(tmp_path: Path) -> None:
    """Nine anchors of nine aliases each expand to 9**9 values: refused, not expanded."""
    lines = ['x-a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        lines.append(f"x-a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("rules:\n  - {name: default, class: unmatched, action: alert, params: {x: *a8}}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules([path])
    assert info.value.file == str(path) and info.value.line is not None
    assert "alias" in str(info.value)


CATASTROPHIC = [
    r"(a+)+$",
    r"(a*)*b",
    r"(\w+\s?)*$",
    r"(.+,)*x",
    r"^(\d+)*$",
    r"(x+x+)+y",
    r"(?:[a-z]+|b)*!",
]
SAFE = [
    r"@([a-z0-9-]+\.)*(nhs\.uk|nhs\.net)$",
    r"(\d+,)*\d+",
    r"((re|fw|fwd)\s*(\[\d+\])?\s*:\s*)+",
    r"(?P<n>\d{1,3}(\.\d+)?)",
    r"(ab)+c",
]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_a_rule_with_a_catastrophic_regex_is_refused_at_its_line(
    tmp_path: Path, pattern: str
) -> None:
    path = tmp_path / "50-local.yaml"
    path.write_text(
        "rules:\n"
        "  - name: slow-rule\n"
        "    when:\n"
        f"      body: {{regex: '{pattern}'}}\n"
        "    class: notice\n"
        "    action: record\n" + DEFAULT_TEXTS["99-default.yaml"].split("rules:", 1)[1],
        encoding="utf-8",
    )
    report = check_rules([path])
    assert report.ruleset is None
    (error,) = report.errors
    assert (error.file, error.line, error.rule) == (str(path), 4, "slow-rule")
    assert "exponential" in str(error)


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_a_capture_with_a_catastrophic_regex_is_refused(tmp_path: Path, pattern: str) -> None:
    path = tmp_path / "50-local.yaml"
    path.write_text(
        "rules:\n"
        "  - name: cap\n"
        "    when: {subject: {contains: x}}\n"
        "    class: notice\n"
        "    action: record\n"
        "    capture:\n"
        f"      - body: '(?P<n>{pattern})'\n"
        + DEFAULT_TEXTS["99-default.yaml"].split("rules:", 1)[1],
        encoding="utf-8",
    )
    report = check_rules([path])
    assert report.errors and "exponential" in str(report.errors[0])
    assert report.errors[0].line == 7


@pytest.mark.parametrize("pattern", SAFE)
def test_nested_but_separated_repeats_are_accepted(pattern: str) -> None:
    assert nested_quantifier(pattern) is None


def test_the_default_rules_pass_the_check() -> None:
    assert len(load_rules([default_rules_path()])) >= 5


def test_a_key_that_looks_like_a_type_tag_is_named_not_a_crash() -> None:
    """Found by the fuzzer: a key such as ``[`` made the loader fail with IndexError."""
    text = "rules:\n  - name: r\n    '[': 1\n    class: notice\n    action: record\n"
    _, problems = parse_rules_text(text, Path("odd.yaml"))
    assert [str(p) for p in problems] == ["odd.yaml:3: rule 'r': unknown key '['"]


def test_a_control_character_is_named_with_its_line() -> None:
    """Found by the fuzzer: a NUL in the file gave an error without a line number."""
    text = "rules:\n  - name: default\n    class: unmatched\x00\n    action: alert\n"
    _, problems = parse_rules_text(text, Path("nul.yaml"))
    (problem,) = problems
    assert problem.line == 3 and "'\\x00'" in str(problem)
