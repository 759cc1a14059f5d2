"""Rules files on disk -> ``core.rules.RuleSet``, with errors that name file, line, rule.

Owns reading YAML rules files (one file, or a directory of ``*.yaml`` read in name
order), keeping each value's line number (``yaml.compose`` node marks), validating every
rule against ``core.rules_model`` and turning each problem into a ``RulesError`` such as
``rules/nhs.yaml:14: rule 'nhs-failure': unknown condition 'subjet' (did you mean
'subject'?)``. Also knows where the packaged default rules live. Must not classify mail
or decide what a rule means (``core.rules``), and never writes files.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from seftpilot.config import Settings
from seftpilot.core.rules import RuleSet
from seftpilot.core.rules_lint import LintProblem, lint
from seftpilot.core.rules_model import (
    ACTIONS,
    FIELDS,
    MATCH_KEYS,
    MESSAGE_CLASSES,
    RULE_KEYS,
    WHEN_KEYS,
    Rule,
)
from seftpilot.errors import RulesError

RULE_SUFFIXES = (".yaml", ".yml")
_MAX_DEPTH = 64
# Values after expanding aliases. A real rules file has a few thousand; nine aliases of nine
# aliases of ... ("billion laughs") expand to 9**9 and would take hours and gigabytes.
_MAX_NODES = 200_000
Path_ = tuple[Any, ...]


def default_rules_path() -> Path:
    """The directory of the rules shipped with seftpilot (what `seftpilot init` copies)."""
    import seftpilot.default_rules

    return Path(seftpilot.default_rules.__file__).resolve().parent


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files to read, in order: a directory contributes its ``*.yaml`` in name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in RULE_SUFFIXES and p.is_file())
            if not found:
                raise RulesError(
                    "directory holds no *.yaml rules files",
                    file=str(path),
                    hint="run `seftpilot init` to write the default rules, or fix `rules` "
                    "in seftpilot.toml",
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise RulesError(
                "rules file or directory not found",
                file=str(path),
                hint="run `seftpilot init` to write the default rules, or fix `rules` in "
                "seftpilot.toml (paths are relative to that file)",
            )
    return files


# --- YAML with line numbers -------------------------------------------------------------


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Path_, int] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self._nodes = 0

    def read(self, text: str) -> Any:
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise RulesError(
                f"not valid YAML: {exc.problem or exc}",
                file=self.file,
                line=mark.line + 1 if mark else None,
                hint="check indentation and quoting; regexes are safest in 'single quotes'",
            ) from None
        except yaml.reader.ReaderError as exc:  # a control character: no mark, a position
            char = chr(exc.character) if isinstance(exc.character, int) else exc.character
            raise RulesError(
                f"not valid YAML: character {char!r} is not allowed",
                file=self.file,
                line=text.count("\n", 0, max(exc.position, 0)) + 1,
                hint="remove control characters (NUL, ESC...) from the file",
            ) from None
        except yaml.YAMLError as exc:
            raise RulesError(f"not valid YAML: {exc}", file=self.file) from None
        if node is None:
            return None
        return self._data(node, (), 0)

    def _data(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        line = node.start_mark.line + 1
        self.lines.setdefault(path, line)
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise RulesError(
                f"more than {_MAX_NODES:,} values once aliases are expanded (an alias bomb?)",
                file=self.file,
                line=line,
                hint="use each &anchor a few times, not anchors of anchors of anchors",
            )
        if depth > _MAX_DEPTH:
            raise RulesError("nested too deeply (a recursive alias?)", file=self.file, line=line)
        if isinstance(node, yaml.MappingNode):
            self._constructor.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node)
                key_line = key_node.start_mark.line + 1
                if not isinstance(key, str | int | bool | float) or key is None:
                    raise RulesError("a key must be plain text", file=self.file, line=key_line)
                if key in out:
                    raise RulesError(
                        f"key {key!r} appears twice in one mapping (YAML keeps only the last)",
                        file=self.file,
                        line=key_line,
                        hint="to combine several tests of one field use all: [...] or any: [...]",
                    )
                self.lines[(*path, key)] = key_line
                out[key] = self._data(value_node, (*path, key), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._data(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise RulesError(
                "a key must be plain text", file=self.file, line=node.start_mark.line + 1
            )
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise RulesError(
                f"unreadable value: {exc}", file=self.file, line=node.start_mark.line + 1
            ) from None

    def line_of(self, path: Path_) -> int | None:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


# --- validation errors -> RulesError ------------------------------------------------------


def _suggest(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-member tags (``str``, ``list[str]``...) from an error path."""
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and p not in {"str"}))


def _unknown_key(loc: tuple[Any, ...]) -> str:
    key = loc[-1]
    parent = loc[:-1]
    if not parent:
        return f"unknown key {key!r}{_suggest(key, RULE_KEYS)}"
    if len(parent) >= 2 and parent[-2] == "capture":
        return f"unknown capture field {key!r}{_suggest(key, FIELDS)}"
    if parent[-1] in FIELDS or (len(parent) >= 2 and parent[-2] == "header"):
        return f"unknown operator {key!r}{_suggest(key, MATCH_KEYS)}"
    return f"unknown condition {key!r}{_suggest(key, WHEN_KEYS)}"


def _message(error: Any, loc: tuple[Any, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    if kind == "literal_error" and loc and loc[-1] in ("class", "action"):
        known = MESSAGE_CLASSES if loc[-1] == "class" else ACTIONS
        value = error.get("input")
        return (
            f"unknown {loc[-1]} {value!r}{_suggest(str(value), known)}; known: {', '.join(known)}"
        )
    msg = str(error["msg"])
    msg = msg.removeprefix("Value error, ")
    where = ".".join(str(p) for p in loc)
    return f"{where}: {msg}" if where else msg


@dataclass
class FileRules:
    """One file's rules with their origins ("file:line")."""

    path: Path
    rules: list[Rule] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)


def read_rules_file(path: Path) -> tuple[FileRules, list[RulesError]]:
    """Parse and validate one file; every problem found is returned, not just the first."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return FileRules(path), [RulesError(f"not UTF-8 text ({exc.reason})", file=name)]
    except OSError as exc:
        return FileRules(path), [RulesError(f"cannot read: {exc.strerror}", file=name)]
    return parse_rules_text(text, path)


def parse_rules_text(text: str, path: Path) -> tuple[FileRules, list[RulesError]]:
    """Validate the text of one rules file (``path`` names it in messages)."""
    name = str(path)
    reader = _Reader(name)
    try:
        data = reader.read(text)
    except RulesError as exc:
        return FileRules(path), [exc]
    problems: list[RulesError] = []
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        problems.append(
            RulesError(
                "a rules file is a mapping with a `rules:` list",
                file=name,
                line=reader.line_of(("rules",)) or 1,
                hint="start the file with `rules:` and list rules as `- name: ...`",
            )
        )
        return FileRules(path), problems
    for key in data:
        # x-... keys hold YAML anchors shared by several rules (&from_nhs ... *from_nhs).
        if key not in ("rules", "version") and not str(key).startswith("x-"):
            problems.append(
                RulesError(
                    f"unknown top-level key {key!r}{_suggest(key, ('rules', 'version'))}",
                    file=name,
                    line=reader.line_of((key,)),
                )
            )
    if data.get("version", 1) != 1:
        problems.append(
            RulesError(
                f"unsupported version {data['version']!r} (this seftpilot reads version 1)",
                file=name,
                line=reader.line_of(("version",)),
            )
        )
    result = FileRules(path)
    for index, raw in enumerate(data["rules"]):
        base: Path_ = ("rules", index)
        rule_name = raw.get("name") if isinstance(raw, dict) else None
        label = rule_name if isinstance(rule_name, str) else f"#{index + 1}"
        if not isinstance(raw, dict):
            problems.append(
                RulesError(
                    "a rule is a mapping (name:, when:, class:, action:)",
                    file=name,
                    line=reader.line_of(base),
                    rule=label,
                )
            )
            continue
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            seen: set[tuple[Any, ...]] = set()
            for error in exc.errors():
                raw_loc = tuple(error["loc"])
                loc = _clean_loc(raw_loc)
                if error["type"] == "extra_forbidden":
                    # The last part is the operator's own key, even one that looks like a
                    # union tag ("[", "str"): keep it (it was dropped, then loc[-1] failed).
                    loc = _clean_loc(raw_loc[:-1]) + raw_loc[-1:]
                if loc in seen:
                    continue  # one message per place: union members repeat each other
                seen.add(loc)
                problems.append(
                    RulesError(
                        _message(error, loc),
                        file=name,
                        line=reader.line_of((*base, *loc)),
                        rule=label,
                    )
                )
            continue
        result.rules.append(rule)
        result.origins.append(f"{name}:{reader.line_of(base)}")
    return result, problems


@dataclass
class RulesReport:
    """Everything `rules check` says about a set of rules files."""

    files: list[Path]
    ruleset: RuleSet | None
    errors: list[RulesError]
    lint: list[LintProblem]

    @property
    def ok(self) -> bool:
        return self.ruleset is not None and not self.errors and not self.lint


def check_rules(paths: Sequence[Path]) -> RulesReport:
    """Load every file, collecting all errors; lint the result when it loads."""
    try:
        files = expand_paths(paths)
    except RulesError as exc:
        return RulesReport([], None, [exc], [])
    errors: list[RulesError] = []
    parsed: list[FileRules] = []
    for path in files:
        file_rules, problems = read_rules_file(path)
        parsed.append(file_rules)
        errors.extend(problems)
    if errors:
        return RulesReport(files, None, errors, [])
    rules = [r for f in parsed for r in f.rules]
    origins = [o for f in parsed for o in f.origins]
    try:
        ruleset = RuleSet(rules, origins)
    except RulesError as exc:
        return RulesReport(files, None, [exc], [])
    return RulesReport(files, ruleset, [], lint(ruleset))


def load_rules(paths: Sequence[Path]) -> RuleSet:
    """The rule set from ``paths`` (files or directories, in order); RulesError if broken.

    Lint findings (shadowed rules) do not stop loading: the rules still work as written;
    `seftpilot rules check` and `seftpilot check` report them.
    """
    report = check_rules(paths)
    if report.errors or report.ruleset is None:
        first = report.errors[0]
        more = len(report.errors) - 1
        if more:
            first.message += f" (and {more} more problem{'s' if more > 1 else ''}; "
            first.message += "run `seftpilot rules check`)"
            first.args = (first.message,)
        raise first
    return report.ruleset


def configured_rules_paths(cfg: Settings) -> list[Path]:
    """The rules paths of the settings, read relative to the settings file."""
    return [cfg.resolve(p) for p in cfg.rules]


def check_configured_rules(cfg: Settings) -> str:
    """`seftpilot check`'s rules check: load and lint; raise RulesError on any problem."""
    report = check_rules(configured_rules_paths(cfg))
    if report.errors:
        first = report.errors[0]
        more = len(report.errors) - 1
        suffix = f" (and {more} more; run `seftpilot rules check`)" if more else ""
        raise RulesError(first.message + suffix, hint=first.hint)
    if report.lint:
        problem = report.lint[0]
        more = len(report.lint) - 1
        suffix = f" (and {more} more; run `seftpilot rules check`)" if more else ""
        raise RulesError(f"{problem.origin}: rule {problem.rule!r}: {problem.message}{suffix}")
    assert report.ruleset is not None
    return f"{len(report.ruleset)} rules from {len(report.files)} files"


__all__ = [
    "RulesReport",
    "check_configured_rules",
    "check_rules",
    "configured_rules_paths",
    "default_rules_path",
    "expand_paths",
    "load_rules",
    "parse_rules_text",
    "read_rules_file",
]
