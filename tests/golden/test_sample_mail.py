"""Golden: every sample_mail/*.eml is classified by the packaged default rules exactly as
its hand-reviewed <name>.expected.json says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seftpilot.adapters.mailparse import parse_message
from seftpilot.adapters.rules_files import default_rules_path, load_rules
from seftpilot.core.rules import RuleSet, classify

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_mail"
SAMPLES = sorted(SAMPLE_DIR.glob("*.eml"))


@pytest.fixture(scope="module")
def default_rules() -> RuleSet:
    return load_rules([default_rules_path()])


def test_there_are_enough_samples_and_each_has_an_expected_file() -> None:
    assert len(SAMPLES) >= 25
    expected = {p.name.removesuffix(".expected.json") for p in SAMPLE_DIR.glob("*.expected.json")}
    assert expected == {p.stem for p in SAMPLES}


def test_samples_cover_every_default_rule(default_rules: RuleSet) -> None:
    used = {
        json.loads(p.read_text(encoding="utf-8"))["rule"]
        for p in SAMPLE_DIR.glob("*.expected.json")
    }
    assert used == set(default_rules.names)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_is_classified_as_expected(path: Path, default_rules: RuleSet) -> None:
    expected = json.loads(path.with_name(f"{path.stem}.expected.json").read_text(encoding="utf-8"))
    message = parse_message(path.read_bytes())
    result = classify(message, default_rules)
    got = {
        "rule": result.rule,
        "class": result.class_,
        "action": result.action,
        "captures": dict(result.captures),
    }
    assert got == {k: expected[k] for k in ("rule", "class", "action", "captures")}
    assert bool(message.defects) is expected.get("defects_expected", False), message.defects
