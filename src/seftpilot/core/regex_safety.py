"""Refuses the regex shapes that backtrack exponentially (nested quantifiers).

Owns one question asked of every regex in a rules file when it is loaded: can this
pattern take exponential time on some text? Python's ``re`` backtracks, has no time limit,
and holds the GIL while it runs, so a rule such as ``(\\w+\\s?)*$`` meeting a long line of
words would stall the intake for hours on one message. Such a rule is refused at load
time (``core.rules_model`` turns the answer into a RulesError naming file and line).

The check is the classic "star height" test made less jumpy: a repeated group whose body
holds another repeat is refused only when nothing mandatory separates the inner repeat's
iterations, i.e. every mandatory part of the body could be eaten by the inner repeat
itself. So ``(a+)+``, ``(a*)*``, ``(\\w+\\s?)*`` and ``(.+,)*`` are refused, while
``([a-z0-9-]+\\.)*`` (the ``.`` cannot be a letter) and ``(\\d+,)*`` are fine.

Not detected (documented in docs/RELIABILITY.md): overlapping alternatives such as
``(a|aa)+`` and polynomial backtracking such as ``\\d+\\d+x`` or a ``^\\s*`` that runs
across many blank lines. Those are bounded by the length of text a rule reads, not by
this check. Pure: parses the pattern, never runs it against mail.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

# The regex parser is private (``sre_parse`` is its deprecated public name); typeshed has
# no stubs for ``re._parser``, hence Any.
_parser: Any = importlib.import_module("re._parser")
_compiler: Any = importlib.import_module("re._compiler")
_c: Any = importlib.import_module("re._constants")

_REPEATS = frozenset(
    op
    for op in (
        _c.MAX_REPEAT,
        _c.MIN_REPEAT,
        getattr(_c, "POSSESSIVE_REPEAT", None),
    )
    if op is not None
)
_SINGLE = frozenset((_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN))
# The characters tried when a set of characters must be compared: ASCII, Latin-1, and a
# few characters rules commonly meet (no-break space, line separator, Cyrillic, euro).
_PROBES = (*(chr(n) for n in range(0x180)), "\u2028", "\u0416", "\u20ac", "\uffff")

Chars = frozenset[str] | None  # None: could not tell


def nested_quantifier(pattern: str, *, case_sensitive: bool = False) -> str | None:
    """Why ``pattern`` can backtrack exponentially, or None when the shape is safe.

    ``pattern`` must already compile (callers check that first)."""
    flags = re.MULTILINE | (0 if case_sensitive else re.IGNORECASE)
    tree = _parser.parse(pattern, flags)
    return _scan(list(tree), tree.state, flags)


def _scan(items: list[Any], state: Any, flags: int) -> str | None:
    for op, av in items:
        if op in _REPEATS:
            _lo, hi, body = av
            if hi > 1:
                found = _unseparated(_unwrap(list(body)), state, flags)
                if found:
                    return found
            found = _scan(list(body), state, flags)
        elif op == _c.SUBPATTERN:
            found = _scan(list(av[3]), state, flags)
        elif op == _c.ATOMIC_GROUP:
            found = _scan(list(av), state, flags)
        elif op == _c.BRANCH:
            found = next((f for b in av[1] if (f := _scan(list(b), state, flags))), None)
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            found = _scan(list(av[1]), state, flags)
        else:
            found = None
        if found:
            return found
    return None


def _unwrap(items: list[Any]) -> list[Any]:
    """A body that is one group: look at the group's own items."""
    while len(items) == 1 and items[0][0] in (_c.SUBPATTERN, _c.ATOMIC_GROUP):
        op, av = items[0]
        items = list(av[3] if op == _c.SUBPATTERN else av)
    return items


def _unseparated(items: list[Any], state: Any, flags: int) -> str | None:
    """In the body of a repeat: an inner repeat nothing mandatory separates."""
    if len(items) == 1 and items[0][0] == _c.BRANCH:
        for branch in items[0][1][1]:
            found = _unseparated(_unwrap(list(branch)), state, flags)
            if found:
                return found
        return None
    inner = [item for item in items if item[0] in _REPEATS and item[1][1] > 1]
    if not inner:
        return None
    mandatory = [item for item in items if item not in inner and _min_width([item], state) > 0]
    for _op, av in inner:
        eaten = _all_chars(list(av[2]), state, flags)
        if eaten is None:
            continue  # cannot tell: do not refuse what may be fine
        if not mandatory:
            return "a repeated group holds a repeat and nothing else that must match"
        firsts = [_first_chars([m], state, flags) for m in mandatory]
        if all(f is None for f in firsts):
            continue
        if not any(f is not None and not (f & eaten) for f in firsts):
            return (
                "a repeated group holds a repeat whose characters can also match the "
                "rest of the group"
            )
    return None


def _min_width(items: list[Any], state: Any) -> int:
    lo, _hi = _parser.SubPattern(state, items).getwidth()
    return int(lo)


def _single_chars(item: Any, state: Any, flags: int) -> Chars:
    try:
        compiled = _compiler.compile(_parser.SubPattern(state, [item]), flags)
    except Exception:
        return None
    return frozenset(ch for ch in _PROBES if compiled.fullmatch(ch))


def _all_chars(items: list[Any], state: Any, flags: int) -> Chars:
    """Every character ``items`` can consume (None when unknown)."""
    out: set[str] = set()
    for item in items:
        op, av = item
        if op in _SINGLE:
            found = _single_chars(item, state, flags)
        elif op in _REPEATS:
            found = _all_chars(list(av[2]), state, flags)
        elif op == _c.SUBPATTERN:
            found = _all_chars(list(av[3]), state, flags)
        elif op == _c.ATOMIC_GROUP:
            found = _all_chars(list(av), state, flags)
        elif op == _c.BRANCH:
            parts = [_all_chars(list(b), state, flags) for b in av[1]]
            found = None if any(p is None for p in parts) else frozenset().union(*parts)  # type: ignore[arg-type]
        elif op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            found = frozenset()
        else:
            found = None  # back-references and the like
        if found is None:
            return None
        out |= found
    return frozenset(out)


def _first_chars(items: list[Any], state: Any, flags: int) -> Chars:
    """The characters a match of ``items`` can start with (None when unknown)."""
    out: set[str] = set()
    for item in items:
        op, av = item
        if op in _SINGLE:
            found = _single_chars(item, state, flags)
        elif op in _REPEATS:
            found = _first_chars(list(av[2]), state, flags)
        elif op == _c.SUBPATTERN:
            found = _first_chars(list(av[3]), state, flags)
        elif op == _c.ATOMIC_GROUP:
            found = _first_chars(list(av), state, flags)
        elif op == _c.BRANCH:
            parts = [_first_chars(list(b), state, flags) for b in av[1]]
            found = None if any(p is None for p in parts) else frozenset().union(*parts)  # type: ignore[arg-type]
        elif op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            continue  # zero width: the next item decides
        else:
            return None
        if found is None:
            return None
        out |= found
        if _min_width([item], state) > 0:
            return frozenset(out)
    return frozenset(out)


__all__ = ["nested_quantifier"]
