"""Lint a ``RuleSet``: rules that can never match, and duplicate names.

Owns the shadowing analysis behind `seftpilot rules check`. A later rule B is shadowed
when an earlier *stopping* rule A matches every message B matches (B implies A), so B
is never reached. Pure: takes a RuleSet, returns problems.

What the analysis covers (sound, not complete: a reported shadow is real, but some
real shadows are not found):
- an earlier rule with no conditions shadows everything after it;
- identical conditions (structurally equal after parsing);
- same field, same case mode: ``contains x`` shadows ``contains y`` / ``equals y``
  when x is inside y (whitespace and case normalised); ``equals x`` shadows
  ``equals x``; identical regexes; ``exists: true`` shadows any positive test on the
  same field (except ``exists: false``);
- combinators: A = all(a1..an) needs B to imply each ai; A = any(...) needs B to imply
  one; B = all(...) implies A when one of its parts does; B = any(...) when all do.
It does not reason about what a regex can match beyond identity, about ``not`` beyond
identity, or about the real contents of mail (two rules can overlap without either
shadowing the other; that is fine, the earlier one wins).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seftpilot.core.rules import RuleSet
from seftpilot.core.rules_model import Match, When

Formula = tuple[Any, ...]
_TRUE: Formula = ("true",)


@dataclass(frozen=True, slots=True)
class LintProblem:
    rule: str
    origin: str
    code: str  # "shadowed" | "duplicate-name"
    message: str

    def as_dict(self) -> dict[str, str]:
        return {
            "rule": self.rule,
            "origin": self.origin,
            "code": self.code,
            "message": self.message,
        }


def _formula(when: When | None) -> Formula:
    if when is None:
        return _TRUE
    parts: list[Formula] = []
    for fieldname, attr in (
        ("from", "from_"),
        ("to", "to"),
        ("subject", "subject"),
        ("body", "body"),
        ("attachment", "attachment"),
    ):
        match = getattr(when, attr)
        if match is not None:
            parts.append(("leaf", fieldname, None, match))
    for header, match in (when.header or {}).items():
        parts.append(("leaf", "header", header.lower(), match))
    if when.all_ is not None:
        parts.extend(_formula(w) for w in when.all_)
    if when.any_ is not None:
        parts.append(("or", tuple(_formula(w) for w in when.any_)))
    if when.not_ is not None:
        parts.append(("not", _formula(when.not_)))
    return parts[0] if len(parts) == 1 else ("and", tuple(parts))


def _texts(value: str | list[str] | None, case_sensitive: bool) -> list[str]:
    items = [value] if isinstance(value, str) else list(value or [])
    return [
        " ".join(v.split()) if case_sensitive else " ".join(v.split()).casefold() for v in items
    ]


def _leaf_implies(b: Match, a: Match) -> bool:
    """Does every text satisfying ``b`` satisfy ``a`` (same field)?"""
    if b == a:
        return True
    if a.exists is True:
        return b.exists is not False
    if a.case_sensitive and not b.case_sensitive:
        return False
    case = a.case_sensitive
    if a.contains is not None:
        needles = _texts(a.contains, case)
        if b.contains is not None or b.equals is not None:
            # Every alternative of b must contain one of a's alternatives.
            return all(any(n in y for n in needles) for y in _texts(b.contains or b.equals, case))
        return False
    if a.equals is not None and b.equals is not None:
        wanted = set(_texts(a.equals, case))
        return all(y in wanted for y in _texts(b.equals, case))
    if a.regex is not None and b.regex is not None:
        return a.regex == b.regex and a.case_sensitive == b.case_sensitive
    return False


def implies(b: Formula, a: Formula) -> bool:
    """Sound check that every message matching ``b`` also matches ``a``."""
    if a in (_TRUE, b):
        return True
    if b == _TRUE:
        return False
    if a[0] == "and":
        return all(implies(b, part) for part in a[1])
    if b[0] == "or":
        return all(implies(part, a) for part in b[1])
    if a[0] == "or" and any(implies(b, part) for part in a[1]):
        return True
    if b[0] == "and" and any(implies(part, a) for part in b[1]):
        return True
    if a[0] == "leaf" and b[0] == "leaf" and a[1:3] == b[1:3]:
        return _leaf_implies(b[3], a[3])
    return False


def lint(ruleset: RuleSet) -> list[LintProblem]:
    """Problems that make a rule set misbehave without making it invalid."""
    problems: list[LintProblem] = []
    seen: dict[str, str] = {}
    for compiled in ruleset:
        if compiled.name in seen:
            problems.append(
                LintProblem(
                    compiled.name,
                    compiled.origin,
                    "duplicate-name",
                    f"rule name {compiled.name!r} is also used at {seen[compiled.name]}",
                )
            )
        seen.setdefault(compiled.name, compiled.origin)
    formulas = [_formula(c.rule.when) for c in ruleset]
    rules = list(ruleset)
    for j, later in enumerate(rules):
        for i in range(j):
            earlier = rules[i]
            if not earlier.rule.stop:
                continue
            if implies(formulas[j], formulas[i]):
                why = (
                    "it has no conditions"
                    if formulas[i] == _TRUE
                    else "its conditions are the same or weaker"
                )
                where = f" ({earlier.origin})" if earlier.origin else ""
                problems.append(
                    LintProblem(
                        later.name,
                        later.origin,
                        "shadowed",
                        f"can never match: earlier stopping rule {earlier.name!r}{where} "
                        f"matches every message it would ({why}); move it earlier, "
                        "narrow the earlier rule, or give that rule `stop: false`",
                    )
                )
                break
    return problems


__all__ = ["LintProblem", "implies", "lint"]
