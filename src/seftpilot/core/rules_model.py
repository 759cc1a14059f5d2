"""The schema of a rules file: pydantic models that are values (frozen), nothing more.

Owns what a rule may say and the checks that need no other rule: known keys, exactly one
operator per condition, regexes that compile, headers the parser keeps. Must not read
files (``adapters.rules_files`` does, and maps errors back to file and line) or evaluate
rules against mail (``core.rules`` does). ``RulesFile.model_json_schema`` is what
`seftpilot rules schema` prints for editors.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from seftpilot.core.message import RECEIVED_COUNT, SELECTED_HEADERS
from seftpilot.core.regex_safety import nested_quantifier

DEFAULT_RULE = "default"

# The vocabulary the service acts on. A class outside it would be a typo that silently
# changes what happens to a message, so it is refused at load time.
MessageClass = Literal[
    "submission_failed",
    "submission_succeeded",
    "new_data",
    "release_reminder",
    "bounce",
    "auto_reply",
    "canary",
    "notice",
    "ignore",
    "unmatched",
]
Action = Literal["alert", "retry", "forward", "record", "ignore"]
MESSAGE_CLASSES: tuple[str, ...] = MessageClass.__args__  # type: ignore[attr-defined]
ACTIONS: tuple[str, ...] = Action.__args__  # type: ignore[attr-defined]

FIELDS: tuple[str, ...] = ("from", "to", "subject", "body", "attachment", "header")
COMBINATORS: tuple[str, ...] = ("all", "any", "not")
OPERATORS: tuple[str, ...] = ("contains", "equals", "regex", "exists")
KNOWN_HEADERS: tuple[str, ...] = (*SELECTED_HEADERS, RECEIVED_COUNT)
# Default regex flags: case-insensitive (unless case_sensitive), ^ and $ match per line.
REGEX_FLAGS = re.MULTILINE


def compile_regex(pattern: str, *, case_sensitive: bool = False) -> re.Pattern[str]:
    return re.compile(pattern, REGEX_FLAGS | (0 if case_sensitive else re.IGNORECASE))


def _check_regex(pattern: str) -> str:
    try:
        # Python warns (FutureWarning) about a set that a later version will read
        # differently ("[[", "--", "&&" inside [...]): refused here with the rule named,
        # not left to print at every classification. As an error the warning also stops
        # the pattern from entering re's cache, so a second load refuses it again.
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            re.compile(pattern, REGEX_FLAGS)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise ValueError(f"bad regex {pattern!r}: {exc.msg}{where}") from None
    except FutureWarning as exc:
        raise ValueError(
            f"regex {pattern!r} is ambiguous ({exc}): a future Python reads it differently; "
            "escape the character inside the brackets, e.g. [[a] -> [\\[a]"
        ) from None
    # Refused at load time: Python's re has no time limit (see core.regex_safety).
    why = nested_quantifier(pattern)
    if why:
        raise ValueError(
            f"regex {pattern!r} can take exponential time on some mail ({why}); rewrite it "
            "so the repeat inside the group cannot also match what follows it, e.g. "
            "(\\w+\\s?)* -> [\\w\\s]*, (a+)+ -> a+"
        )
    return pattern


def _check_headers(names: dict[str, Any] | None) -> None:
    for name in names or {}:
        if name.lower() not in KNOWN_HEADERS:
            raise ValueError(
                f"header {name!r} is not kept by the parser, so it could never match "
                f"(kept: {', '.join(KNOWN_HEADERS)})"
            )


class _Value(BaseModel):
    # A typo in a key is an error, never a silently ignored condition.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Match(_Value):
    """One test of one field: exactly one of contains / equals / regex / exists."""

    contains: str | list[str] | None = Field(
        default=None, description="Holds if the text contains this (or any of these)."
    )
    equals: str | list[str] | None = Field(
        default=None, description="Holds if the whole text equals this (or any of these)."
    )
    regex: str | None = Field(
        default=None,
        description="Python regex searched in the text; (?P<name>...) groups become captures.",
    )
    exists: bool | None = Field(
        default=None, description="true: the field is present and not empty; false: absent."
    )
    case_sensitive: bool = Field(default=False, description="Default: case-insensitive.")

    @model_validator(mode="after")
    def _one_operator(self) -> Match:
        given = [op for op in OPERATORS if getattr(self, op) is not None]
        if len(given) != 1:
            raise ValueError(
                "a condition needs exactly one of contains, equals, regex, exists"
                + (f" (got {', '.join(given)})" if given else "")
            )
        for op in ("contains", "equals"):
            value = getattr(self, op)
            values = [value] if isinstance(value, str) else value or []
            if value is not None and (not values or any(not v.strip() for v in values)):
                raise ValueError(f"{op} needs non-empty text")
        if self.regex is not None:
            _check_regex(self.regex)
        return self

    @property
    def operator(self) -> str:
        return next(op for op in OPERATORS if getattr(self, op) is not None)


class When(_Value):
    """Conditions; several keys in one mapping must all hold."""

    from_: Match | None = Field(
        default=None, alias="from", description="Sender address or display name."
    )
    to: Match | None = Field(default=None, description="Any To or Cc address.")
    subject: Match | None = Field(
        default=None, description="Subject (equals ignores leading Re:/Fw:/Fwd:)."
    )
    body: Match | None = Field(default=None, description="Plain text, or HTML made text.")
    attachment: Match | None = Field(default=None, description="Any attachment's file name.")
    header: dict[str, Match] | None = Field(
        default=None, description="Selected headers by name: {Auto-Submitted: {...}}."
    )
    all_: list[When] | None = Field(default=None, alias="all", description="Every one holds.")
    any_: list[When] | None = Field(default=None, alias="any", description="At least one.")
    not_: When | None = Field(default=None, alias="not", description="Does not hold.")

    @model_validator(mode="after")
    def _not_empty(self) -> When:
        if not self.model_fields_set:
            raise ValueError("empty condition: give a field (subject, body, ...) or all/any/not")
        for key in ("all_", "any_"):
            value = getattr(self, key)
            if value is not None and not value:
                raise ValueError(f"{key.rstrip('_')} needs at least one condition")
        return self

    @field_validator("header")
    @classmethod
    def _headers_kept(cls, value: dict[str, Match] | None) -> dict[str, Match] | None:
        _check_headers(value)
        return value


class Capture(_Value):
    """Extra captures taken once the rule has matched; they never affect matching."""

    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    subject: str | None = None
    body: str | None = None
    attachment: str | None = None
    header: dict[str, str] | None = None

    @model_validator(mode="after")
    def _regexes(self) -> Capture:
        patterns = [getattr(self, f) for f in ("from_", "to", "subject", "body", "attachment")]
        patterns += list((self.header or {}).values())
        given = [p for p in patterns if p is not None]
        if not given:
            raise ValueError("a capture needs a field with a regex, e.g. {body: '(?P<n>\\d+)'}")
        for pattern in given:
            if not compile_regex(_check_regex(pattern)).groupindex:
                raise ValueError(f"capture regex {pattern!r} has no named group (?P<name>...)")
        _check_headers(self.header)
        return self


ParamValue = str | int | float | bool | list[str]


class Rule(_Value):
    """One rule: when the conditions hold, the message gets this class and action."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Unique; letters, digits, - _ . (recorded with every message).",
    )
    description: str = ""
    when: When | None = Field(default=None, description="Absent: matches every message.")
    class_: MessageClass = Field(alias="class")
    action: Action
    params: dict[str, ParamValue] = Field(
        default_factory=dict, description="Action parameters, e.g. {severity: high}."
    )
    capture: list[Capture] = Field(default_factory=list)
    stop: bool = Field(
        default=True, description="false: record the match and keep looking for a rule."
    )

    @model_validator(mode="after")
    def _default_shape(self) -> Rule:
        if "when" in self.model_fields_set and self.when is None:
            # `when:` with nothing under it would silently match every message.
            raise ValueError(
                "`when:` is empty: indent conditions under it, or remove it to match every message"
            )
        if self.name == DEFAULT_RULE:
            if self.when is not None:
                raise ValueError("the default rule must have no `when`: it catches everything")
            if self.action != "alert" or not self.stop:
                raise ValueError(
                    "the default rule must alert the operator (action: alert, stop: true) "
                    "so no message is silently dropped"
                )
        return self


class RulesFile(_Value):
    """A rules file: `rules:` is the ordered list; the first stopping match wins."""

    version: Literal[1] = 1
    rules: list[Rule]


RULE_KEYS: tuple[str, ...] = (
    "name",
    "description",
    "when",
    "class",
    "action",
    "params",
    "capture",
    "stop",
)
WHEN_KEYS: tuple[str, ...] = (*FIELDS, *COMBINATORS)
MATCH_KEYS: tuple[str, ...] = (*OPERATORS, "case_sensitive")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a rules file, for editors (yaml-language-server and the like)."""
    schema = RulesFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "seftpilot rules file"
    # Top-level x-... keys are allowed for YAML anchors that rules share.
    schema["patternProperties"] = {"^x-": {}}
    return schema


__all__ = [
    "ACTIONS",
    "DEFAULT_RULE",
    "KNOWN_HEADERS",
    "MESSAGE_CLASSES",
    "Action",
    "Capture",
    "Match",
    "MessageClass",
    "Rule",
    "RulesFile",
    "When",
    "compile_regex",
    "json_schema",
]
