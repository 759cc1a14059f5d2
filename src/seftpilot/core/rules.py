"""Classify a ``Message`` with an ordered ``RuleSet``; say why.

Owns the semantics of rules: how each field is read from a message, how contains /
equals / regex / exists and all / any / not evaluate, stop semantics (the first stopping
match decides; non-stopping matches annotate and evaluation continues), the mandatory
final ``default`` rule, capture sanitising, and the trace behind ``--explain``. Pure:
must not read files (``adapters.rules_files`` loads YAML), log, or look at the clock.

Matching rules of thumb (documented for operators in docs/rules.md):
- text comparisons are case-insensitive unless ``case_sensitive: true``;
- ``contains`` and ``equals`` compare with runs of whitespace collapsed, so a line break
  in the middle of a phrase does not defeat a rule;
- ``regex`` is searched with ``^``/``$`` matching at line ends; only the first
  ``MAX_TEXT`` characters of a body are searched, which bounds the cost of one message;
- ``from`` holds on the address or the display name; ``to`` on any To/Cc address;
  ``attachment`` on any file name; ``subject`` ``equals`` ignores Re:/Fw:/Fwd: prefixes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from seftpilot.core.message import Message
from seftpilot.core.rules_model import (
    DEFAULT_RULE,
    Capture,
    Match,
    Rule,
    RulesFile,
    When,
    compile_regex,
    json_schema,
)
from seftpilot.errors import RulesError

MAX_TEXT = 1_000_000
MAX_CAPTURE = 200
_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|tr|sv|vs)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def sanitize_capture(value: str, limit: int = MAX_CAPTURE) -> str:
    """Make captured text safe to put in an alert's subject or body.

    Control characters (CR, LF, NUL, ESC...), format characters (bidi overrides) and
    line/paragraph separators become spaces, so a sender cannot inject headers or
    terminal escapes through a capture; whitespace collapses; length is capped.
    """
    # Fast path (most captures): printable ASCII has no control characters to remove.
    simple = value.isascii() and value.isprintable() and len(value) <= limit
    if simple and "  " not in value and value == value.strip():
        return value
    cleaned = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") else ch for ch in value
    )
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


def _norm(text: str) -> str:
    return " ".join(text.split())


def _show(text: str, limit: int = 60) -> str:
    return repr(sanitize_capture(text, limit))


class _View:
    """The texts of one message as rules read them, computed once per message."""

    def __init__(self, message: Message, slots: int = 0) -> None:
        self.message = message
        self.cached: dict[tuple[str, str | None], tuple[str, ...]] = {}
        # Outcomes of identical tests (the same YAML anchor used by several rules) are
        # computed once per message: traced outcomes by key, plain truths by slot (the
        # number the RuleSet gave each distinct test).
        self.memo: dict[tuple[Any, ...], _Outcome] = {}
        self.held: list[bool | None] = [None] * slots
        # The match a regex test found on the fast path, by slot, so tracing the rule
        # that held does not search the same text again.
        self.found: dict[int, re.Match[str]] = {}

    def values(self, name: str, header: str | None = None) -> tuple[str, ...]:
        key = (name, header)
        found = self.cached.get(key)
        if found is None:
            found = self._compute(name, header)
            self.cached[key] = found
        return found

    def _compute(self, name: str, header: str | None) -> tuple[str, ...]:
        m = self.message
        if name == "from":
            return tuple(v for v in (m.from_addr, m.from_name) if v)
        if name == "to":
            return (*m.to, *m.cc)
        if name == "subject":
            return (m.subject,) if m.subject else ()
        if name == "subject-stripped":
            return (_PREFIX.sub("", m.subject),) if m.subject else ()
        if name == "body":
            return (m.text[:MAX_TEXT],) if m.text else ()
        if name == "attachment":
            return m.attachment_names
        if name == "header":
            value = m.headers.get((header or "").lower())
            return (value,) if value else ()
        raise AssertionError(name)  # pragma: no cover - the schema admits no other field

    def folded(self, name: str, header: str | None) -> tuple[str, ...]:
        key = (f"{name}#folded", header)
        found = self.cached.get(key)
        if found is None:
            found = tuple(_norm(v).casefold() for v in self.values(name, header))
            self.cached[key] = found
        return found


# A condition that held: its description, and the text a regex matched (else None).
# Formatted into sentences only for the rules that matched, which keeps classify cheap.
_Reason = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class _Outcome:
    held: bool
    reasons: tuple[_Reason, ...] = ()
    captures: tuple[tuple[str, str], ...] = ()


def _sentence(reason: _Reason) -> str:
    text, matched = reason
    return text if matched is None else f"{text} matched {_show(matched)}"


# A compiled condition: whether it holds for the message behind a view (no trace).
_Test = Callable[[_View], bool]


class _Leaf:
    """One compiled field condition."""

    def __init__(self, fieldname: str, match: Match, header: str | None = None) -> None:
        self.field = fieldname
        self.header = header
        self.match = match
        self.op = match.operator
        self.case = match.case_sensitive
        self.label = f"header {header}" if header else fieldname
        self.pattern = compile_regex(match.regex, case_sensitive=self.case) if match.regex else None
        raw = match.contains if self.op == "contains" else match.equals
        items = [raw] if isinstance(raw, str) else list(raw or [])
        self.needles = tuple(_norm(v) if self.case else _norm(v).casefold() for v in items)
        self.text = self.describe()
        value = repr(getattr(match, self.op))
        self.key = (fieldname, (header or "").lower(), self.op, value, self.case)
        # `subject equals` compares without Re:/Fw: prefixes.
        self.source = (
            "subject-stripped" if fieldname == "subject" and self.op == "equals" else fieldname
        )
        self.slot = -1  # set by RuleSet: identical tests share a slot

    def compile(self) -> _Test:
        """Whether the test holds (no trace, no captures: the fast path of ``classify``)
        as one closure, built once the RuleSet has numbered the slots: the values' cache
        key, the slot and the regex bound in advance, so a test already decided for this
        message costs one list lookup."""
        slot = self.slot
        source, header = self.source, self.header
        key = (source, header)
        if self.pattern is None or slot < 0:
            compute = self._holds
        else:
            search = self.pattern.search

            def compute(view: _View) -> bool:
                values = view.cached.get(key)
                if values is None:
                    values = view.values(source, header)
                for value in values:
                    found = search(value)
                    if found:
                        view.found[slot] = found
                        return True
                return False

        if slot < 0:
            return compute

        def test(view: _View) -> bool:
            held = view.held
            found = held[slot]
            if found is None:
                found = held[slot] = compute(view)
            return found

        return test

    def _holds(self, view: _View) -> bool:
        values = view.values(self.source, self.header)
        if self.op == "exists":
            return bool(values) is bool(self.match.exists)
        if self.pattern is not None:
            search = self.pattern.search
            for value in values:  # noqa: SIM110 - a loop: any(genexpr) is slower here
                if search(value):
                    return True
            return False
        folded = (
            tuple(_norm(v) for v in values) if self.case else view.folded(self.source, self.header)
        )
        if self.op == "contains":
            return any(n in v for v in folded for n in self.needles)
        return any(n == v for v in folded for n in self.needles)

    def describe(self) -> str:
        value = getattr(self.match, self.op)
        if self.op == "exists":
            return f"{self.label} is present" if value else f"{self.label} is absent"
        if self.op == "regex":  # shown as written, not with repr()'s doubled backslashes
            return f"{self.label} regex '{value}'"
        return f"{self.label} {self.op} {value!r}"

    def evaluate(self, view: _View) -> _Outcome:
        found = view.memo.get(self.key)
        if found is None:
            found = self._evaluate(view)
            view.memo[self.key] = found
        return found

    def _evaluate(self, view: _View) -> _Outcome:
        name = self.source
        decided = view.held[self.slot] if self.slot >= 0 else None
        if decided is False:  # the fast path already knows
            return _Outcome(False)
        if self.op == "exists":
            present = bool(view.values(name, self.header))
            held = present is bool(self.match.exists)
            return _Outcome(held, ((self.text, None),) if held else ())
        if self.pattern is not None:
            # The fast path's match when it decided this test (the same first match: it
            # searched the same values in the same order); else search here.
            found = view.found.get(self.slot) if decided else None
            if found is None:
                for value in view.values(name, self.header):
                    found = self.pattern.search(value)
                    if found:
                        break
            if not found:
                return _Outcome(False)
            caps = tuple(
                (k, sanitize_capture(v))
                for k, v in found.groupdict().items()
                if v is not None and v.strip()
            )
            return _Outcome(True, ((self.text, found.group(0)),), caps)
        values = (
            tuple(_norm(v) for v in view.values(name, self.header))
            if self.case
            else view.folded(name, self.header)
        )
        if self.op == "contains":
            held = any(n in v for v in values for n in self.needles)
        else:
            held = any(n == v for v in values for n in self.needles)
        return _Outcome(held, ((self.text, None),) if held else ())


class _Node:
    """A compiled ``When``: every part must hold (a conjunction)."""

    def __init__(self, when: When) -> None:
        self.parts: list[_Leaf | _Combinator] = []
        for fieldname, attr in (
            ("from", "from_"),
            ("to", "to"),
            ("subject", "subject"),
            ("body", "body"),
            ("attachment", "attachment"),
        ):
            match = getattr(when, attr)
            if match is not None:
                self.parts.append(_Leaf(fieldname, match))
        for header, match in (when.header or {}).items():
            self.parts.append(_Leaf("header", match, header))
        if when.all_ is not None:
            self.parts.append(_Combinator("all", [_Node(w) for w in when.all_]))
        if when.any_ is not None:
            self.parts.append(_Combinator("any", [_Node(w) for w in when.any_]))
        if when.not_ is not None:
            self.parts.append(_Combinator("not", [_Node(when.not_)]))

    def leaves(self) -> Iterator[_Leaf]:
        for part in self.parts:
            if isinstance(part, _Leaf):
                yield part
            else:
                for node in part.nodes:
                    yield from node.leaves()

    def describe(self) -> str:
        return " and ".join(p.describe() for p in self.parts)

    def evaluate(self, view: _View) -> _Outcome:
        return _conjunction([p.evaluate for p in self.parts], view)

    def compile(self) -> _Test:
        return _all_of([part.compile() for part in self.parts])


def _conjunction(tests: Iterable[Callable[[_View], _Outcome]], view: _View) -> _Outcome:
    reasons: list[_Reason] = []
    captures: list[tuple[str, str]] = []
    for test in tests:
        outcome = test(view)
        if not outcome.held:
            return _Outcome(False)
        reasons.extend(outcome.reasons)
        captures.extend(outcome.captures)
    return _Outcome(True, tuple(reasons), tuple(captures))


class _Combinator:
    """all / any / not over sub-conditions."""

    def __init__(self, kind: str, nodes: list[_Node]) -> None:
        self.kind = kind
        self.nodes = nodes

    def describe(self) -> str:
        if self.kind == "not":
            return f"not ({self.nodes[0].describe()})"
        return f"{self.kind}(" + "; ".join(n.describe() for n in self.nodes) + ")"

    def evaluate(self, view: _View) -> _Outcome:
        if self.kind == "not":
            if self.nodes[0].evaluate(view).held:
                return _Outcome(False)
            return _Outcome(True, ((self.describe(), None),))
        if self.kind == "any":
            for node in self.nodes:  # first alternative that holds explains the match
                outcome = node.evaluate(view)
                if outcome.held:
                    return outcome
            return _Outcome(False)
        return _conjunction([n.evaluate for n in self.nodes], view)

    def compile(self) -> _Test:
        tests = [node.compile() for node in self.nodes]
        if self.kind == "not":
            (inner,) = tests
            return lambda view: not inner(view)
        if self.kind == "any":
            return _any_of(tests)
        return _all_of(tests)


def _all_of(tests: list[_Test]) -> _Test:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda view: first(view) and second(view)

    def test(view: _View) -> bool:
        for part in tests:  # noqa: SIM110 - hot path: a loop beats all(genexpr)
            if not part(view):
                return False
        return True

    return test


def _any_of(tests: list[_Test]) -> _Test:
    if len(tests) == 1:
        return tests[0]

    def test(view: _View) -> bool:
        for part in tests:  # noqa: SIM110 - hot path: a loop beats any(genexpr)
            if part(view):
                return True
        return False

    return test


class _Capturer:
    def __init__(self, capture: Capture) -> None:
        self.items: list[tuple[str, str | None, re.Pattern[str]]] = []
        for fieldname, attr in (
            ("from", "from_"),
            ("to", "to"),
            ("subject", "subject"),
            ("body", "body"),
            ("attachment", "attachment"),
        ):
            pattern = getattr(capture, attr)
            if pattern is not None:
                self.items.append((fieldname, None, compile_regex(pattern)))
        for header, pattern in (capture.header or {}).items():
            self.items.append(("header", header, compile_regex(pattern)))

    def run(self, view: _View) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for fieldname, header, pattern in self.items:
            for value in view.values(fieldname, header):
                found = pattern.search(value)
                if found:
                    out.extend(
                        (k, sanitize_capture(v))
                        for k, v in found.groupdict().items()
                        if v is not None and v.strip()
                    )
                    break
        return out


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    origin: str
    node: _Node | None
    capturers: tuple[_Capturer, ...]

    @property
    def name(self) -> str:
        return self.rule.name


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule that matched (a non-stopping one, or the deciding one)."""

    rule: str
    class_: str
    action: str
    params: Mapping[str, Any]
    captures: Mapping[str, str]
    held: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NearMiss:
    """A rule that did not match, with how many of its conditions held (for --explain)."""

    rule: str
    held: tuple[str, ...]
    failed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Classification:
    """The verdict of the rules on one message, and why.

    ``rule``/``class_``/``action``/``params`` come from the deciding (stopping) rule;
    ``captures`` merge every matched rule's captures, the deciding rule's first;
    ``explanation`` lists the conditions of the deciding rule that held; ``matched``
    names every rule that matched, non-stopping ones included, in order.
    """

    rule: str
    class_: str
    action: str
    params: Mapping[str, Any]
    captures: Mapping[str, str]
    explanation: tuple[str, ...]
    matched: tuple[str, ...]
    hits: tuple[RuleHit, ...] = ()
    near_misses: tuple[NearMiss, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "class": self.class_,
            "action": self.action,
            "params": dict(self.params),
            "captures": dict(self.captures),
            "explanation": list(self.explanation),
            "matched": list(self.matched),
        }


class RuleSet:
    """An ordered, validated list of rules ending with the ``default`` rule.

    Build it with ``RuleSet(rules, origins)``; ``origins`` (e.g. ``"rules/nhs.yaml:14"``)
    are only used in messages. Raises ``RulesError`` when the default rule is missing or
    not last, or two rules share a name.
    """

    def __init__(self, rules: Sequence[Rule], origins: Sequence[str] | None = None) -> None:
        origins = list(origins) if origins is not None else ["" for _ in rules]
        if len(origins) != len(rules):
            raise ValueError("one origin per rule")
        seen: dict[str, str] = {}
        for rule, origin in zip(rules, origins, strict=True):
            if rule.name in seen:
                file, line = _split_origin(origin)
                first = seen[rule.name] or "an earlier rule"
                raise RulesError(
                    f"duplicate rule name (first defined at {first})",
                    file=file,
                    line=line,
                    rule=rule.name,
                    hint="rule names are recorded with every message: give each its own",
                )
            seen[rule.name] = origin
        if not rules or rules[-1].name != DEFAULT_RULE:
            hint = (
                "end the last rules file with: {name: default, class: unmatched, "
                "action: alert}; it sends anything no other rule matched to the operator"
            )
            if DEFAULT_RULE in seen:
                file, line = _split_origin(seen[DEFAULT_RULE])
                after = f"{rules[-1].name!r}" + (f" at {origins[-1]}" if origins[-1] else "")
                raise RulesError(
                    f"the default rule must be the last rule, but rule {after} comes after it",
                    file=file,
                    line=line,
                    rule=DEFAULT_RULE,
                    hint="move your own rules into a file that sorts before the default's "
                    "(e.g. 50-local.yaml), or above it in the same file",
                )
            file, _ = _split_origin(origins[-1]) if origins else (None, None)
            raise RulesError(
                "the rule set must end with the rule named 'default' (it is missing)",
                file=file,
                hint=hint,
            )
        self.rules: tuple[CompiledRule, ...] = tuple(
            CompiledRule(
                rule=r,
                origin=o,
                node=_Node(r.when) if r.when is not None else None,
                capturers=tuple(_Capturer(c) for c in r.capture),
            )
            for r, o in zip(rules, origins, strict=True)
        )
        # Number the distinct tests, so each is decided at most once per message.
        slots: dict[tuple[Any, ...], int] = {}
        for compiled in self.rules:
            if compiled.node is not None:
                for leaf in compiled.node.leaves():
                    leaf.slot = slots.setdefault(leaf.key, len(slots))
        self.slots = len(slots)
        # What ``classify`` walks: each rule with its conditions compiled into closures
        # (half the cost of walking the node objects) and its params as a read-only view
        # built once, not once per message.
        self.plan: tuple[tuple[CompiledRule, _Test | None, Mapping[str, Any]], ...] = tuple(
            (
                compiled,
                compiled.node.compile() if compiled.node is not None else None,
                MappingProxyType(dict(compiled.rule.params)),
            )
            for compiled in self.rules
        )

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(self.rules)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules)

    @classmethod
    def from_files(cls, files: Iterable[tuple[RulesFile, Sequence[str]]]) -> RuleSet:
        """Concatenate already-validated files (each with one origin per rule), in order."""
        rules: list[Rule] = []
        origins: list[str] = []
        for parsed, file_origins in files:
            rules.extend(parsed.rules)
            origins.extend(file_origins)
        return cls(rules, origins)


def _split_origin(origin: str) -> tuple[str | None, int | None]:
    file, _, line = origin.rpartition(":")
    if file and line.isdigit():
        return file, int(line)
    return (origin or None), None


_Score = tuple[float, list[str], list[str]]


def _score(part: _Leaf | _Node | _Combinator, view: _View) -> _Score:
    """How nearly ``part`` holds: 1 or 0 for a test, the mean over a conjunction, the best
    alternative of an ``any``; with the tests that held and failed along that path."""
    if isinstance(part, _Leaf):
        held = part.evaluate(view).held
        return (1.0, [part.describe()], []) if held else (0.0, [], [part.describe()])
    if isinstance(part, _Combinator) and part.kind == "not":
        if part.evaluate(view).held:
            return 1.0, [part.describe()], []
        return 0.0, [], [part.describe()]
    if isinstance(part, _Combinator) and part.kind == "any":
        return max((_score(n, view) for n in part.nodes), key=lambda s: s[0])
    children = part.nodes if isinstance(part, _Combinator) else part.parts
    scores = [_score(c, view) for c in children]
    return (
        sum(s[0] for s in scores) / len(scores),
        [h for s in scores for h in s[1]],
        [f for s in scores for f in s[2]],
    )


def _near_misses(ruleset: RuleSet, view: _View, limit: int = 3) -> tuple[NearMiss, ...]:
    """The rules that came closest to matching (a hint for --explain, not a proof)."""
    scored: list[tuple[float, int, NearMiss]] = []
    for index, compiled in enumerate(ruleset.rules):
        if compiled.node is None:
            continue
        value, held, failed = _score(compiled.node, view)
        if value > 0:
            scored.append((value, -index, NearMiss(compiled.name, tuple(held), tuple(failed))))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return tuple(miss for _, _, miss in scored[:limit])


def classify(message: Message, ruleset: RuleSet, *, explain: bool = False) -> Classification:
    """Run the rules in order; the first matching stopping rule decides.

    Always returns a classification: the mandatory ``default`` rule matches everything.
    With ``explain``, a message that fell through to ``default`` also carries the rules
    that came closest (``near_misses``).
    """
    view = _View(message, ruleset.slots)
    hits: list[RuleHit] = []
    for compiled, test, params in ruleset.plan:
        if test is None:  # no conditions (the default rule)
            outcome = _Outcome(True, (("no conditions: matches every message", None),))
        elif explain or test(view):
            # Most rules do not match a given message: deciding that with plain booleans
            # is ~3x cheaper than tracing. Only rules that hold are traced (reasons and
            # captures); with ``explain`` every rule is traced, which tests compare against.
            node = compiled.node
            assert node is not None  # a rule has a test exactly when it has conditions
            outcome = node.evaluate(view)
        else:
            continue
        if not outcome.held:
            continue
        captures: dict[str, str] = {}
        for key, value in outcome.captures:
            captures.setdefault(key, value)
        for capturer in compiled.capturers:
            for key, value in capturer.run(view):
                captures.setdefault(key, value)
        rule = compiled.rule
        hits.append(
            RuleHit(
                rule=rule.name,
                class_=rule.class_,
                action=rule.action,
                params=params,
                captures=MappingProxyType(captures),
                held=tuple(_sentence(r) for r in outcome.reasons),
            )
        )
        if rule.stop:
            break
    decided = hits[-1]  # the default rule stops and matches everything
    merged: dict[str, str] = dict(decided.captures)
    for hit in hits[:-1]:
        for key, value in hit.captures.items():
            merged.setdefault(key, value)
    near = _near_misses(ruleset, view) if explain and decided.rule == DEFAULT_RULE else ()
    return Classification(
        rule=decided.rule,
        class_=decided.class_,
        action=decided.action,
        params=decided.params,
        captures=MappingProxyType(merged),
        explanation=decided.held,
        matched=tuple(h.rule for h in hits),
        hits=tuple(hits),
        near_misses=near,
    )


__all__ = [
    "Classification",
    "CompiledRule",
    "NearMiss",
    "Rule",
    "RuleHit",
    "RuleSet",
    "RulesFile",
    "classify",
    "json_schema",
    "sanitize_capture",
]
