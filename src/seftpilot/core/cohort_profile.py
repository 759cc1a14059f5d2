"""Cohort profiles: what one NHS England cohort file layout demands, as a value.

Owns the profile model (header names and order, field kinds, mandatory fields, limits,
allowed values, date format, status values, file-name rule, row limit) and its validation
from parsed YAML, with a ProfileError naming the file and the key for every mistake.
Pure: it parses text it is given; finding and reading profile files is
``adapters.cohort_files.load_profile``'s job.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from seftpilot.errors import ProfileError

KINDS = ("reference", "nhs_number", "text", "gender", "date", "postcode", "status")
_DATE_TOKENS = {"YYYY": "%Y", "MM": "%m", "DD": "%d"}
_DATE_FORMAT = re.compile(r"^(YYYY|MM|DD)([-/. ]?)(YYYY|MM|DD)\2(YYYY|MM|DD)$")
_HEADER_KEY = re.compile(r"[\s_\-]+")


def header_key(header: str) -> str:
    """How a source header is compared with field names: case, surrounding space, a BOM
    and the difference between spaces, dashes and underscores do not matter."""
    return _HEADER_KEY.sub("_", header.replace("\ufeff", "").strip()).upper()


@dataclass(frozen=True)
class FieldSpec:
    """One column of the NHS file."""

    name: str
    header: str
    kind: str
    required: bool = False
    max_length: int | None = None
    allowed_values: tuple[str, ...] = ()
    allowed_characters: str | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """A cohort file layout. ``fields`` are in file order."""

    name: str
    description: str
    confirmed: bool
    file_name_rule: str
    max_rows: int
    date_format: str
    status_field: str
    status_values: tuple[str, ...]
    unique_field: str
    sufficient_information: tuple[tuple[str, ...], ...]
    date_order: tuple[tuple[str, str], ...]
    fields: tuple[FieldSpec, ...]
    source: str = "(built in)"
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({f.name: i for i, f in enumerate(self.fields)})

    @property
    def header(self) -> tuple[str, ...]:
        return tuple(f.header for f in self.fields)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def index(self, name: str) -> int:
        return self._index[name]

    def spec(self, name: str) -> FieldSpec:
        return self.fields[self._index[name]]

    @property
    def strftime(self) -> str:
        """The date format as a strftime pattern (``YYYYMMDD`` -> ``%Y%m%d``)."""
        out = self.date_format
        for token, directive in _DATE_TOKENS.items():
            out = out.replace(token, directive)
        return out

    def file_name(self, nic: str) -> str:
        """The name NHS England expects for this agreement's file, e.g. NIC-402963-P0Y5D.csv."""
        return self.file_name_rule.format(nic=nic)

    def file_name_pattern(self) -> re.Pattern[str]:
        """Matches any name the rule can produce for a well-formed NIC number."""
        before, _, after = self.file_name_rule.partition("{nic}")
        return re.compile(re.escape(before) + r"NIC-\d{5,6}-[A-Z0-9]{5}" + re.escape(after) + r"\Z")


def _fail(source: str, key: str, message: str) -> ProfileError:
    return ProfileError(
        f"profile {source}: {key}: {message}",
        hint="compare with a built-in profile: seftpilot cohort profile mps-legacy-24",
    )


def _str_list(source: str, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise _fail(source, key, "must be a list of strings")
    return tuple(str(v) for v in value)


def _field(source: str, i: int, raw: object) -> FieldSpec:
    key = f"fields[{i}]"
    if not isinstance(raw, Mapping):
        raise _fail(source, key, "must be a mapping with at least name and kind")
    known = {
        "name",
        "header",
        "kind",
        "required",
        "max_length",
        "allowed_values",
        "allowed_characters",
        "aliases",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _fail(
            source, f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(known))})"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, f"{key}.name", "missing or empty")
    header = raw.get("header", name)
    if not isinstance(header, str) or not header or any(c in header for c in ',"\r\n'):
        raise _fail(source, f"{key}.header", "must be text without commas, quotes or newlines")
    if not header.isascii():
        raise _fail(source, f"{key}.header", "must be ASCII (the file is ASCII only)")
    kind = raw.get("kind", "text")
    if kind not in KINDS:
        raise _fail(source, f"{key}.kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise _fail(source, f"{key}.required", "must be true or false")
    max_length = raw.get("max_length")
    if max_length is not None and (
        not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1
    ):
        raise _fail(source, f"{key}.max_length", "must be a positive whole number")
    allowed_values = _str_list(source, f"{key}.allowed_values", raw.get("allowed_values", []))
    if kind == "gender" and not allowed_values:
        allowed_values = ("0", "1", "2", "9")
    chars = raw.get("allowed_characters")
    if chars is not None:
        if not isinstance(chars, str) or not chars or not chars.isascii():
            raise _fail(source, f"{key}.allowed_characters", "must be ASCII text like A-Za-z0-9_-")
        try:
            klass = re.compile(f"[{chars}]")
        except re.error as exc:
            raise _fail(
                source, f"{key}.allowed_characters", f"not a character class body: {exc}"
            ) from None
        if any(klass.match(c) for c in ',"\r\n'):
            raise _fail(
                source, f"{key}.allowed_characters", "must not allow commas, quotes or newlines"
            )
    aliases = _str_list(source, f"{key}.aliases", raw.get("aliases", []))
    return FieldSpec(
        name=name.strip(),
        header=header,
        kind=kind,
        required=required,
        max_length=max_length,
        allowed_values=allowed_values,
        allowed_characters=chars,
        aliases=aliases,
    )


def parse_profile(data: object, source: str) -> Profile:
    """Validate parsed YAML into a Profile; every mistake is a ProfileError naming the key."""
    if not isinstance(data, Mapping):
        raise _fail(source, "(top level)", "must be a mapping (name:, fields:, ...)")
    known = {
        "name",
        "description",
        "confirmed",
        "file_name",
        "max_rows",
        "date_format",
        "status_field",
        "status_values",
        "unique_field",
        "sufficient_information",
        "date_order",
        "fields",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(source, unknown[0], f"unknown key (known: {', '.join(sorted(known))})")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(source, "name", "missing")
    raw_fields = data.get("fields")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise _fail(source, "fields", "must be a non-empty list of columns")
    fields = tuple(_field(source, i, f) for i, f in enumerate(raw_fields))
    names: dict[str, int] = {}
    headers: set[str] = set()
    for i, f in enumerate(fields):
        if f.name in names:
            raise _fail(source, f"fields[{i}].name", f"{f.name!r} appears twice")
        if f.header in headers:
            raise _fail(source, f"fields[{i}].header", f"{f.header!r} appears twice")
        names[f.name] = i
        headers.add(f.header)

    for kind in ("status", "nhs_number"):
        of_kind = [f.name for f in fields if f.kind == kind]
        if len(of_kind) > 1:
            raise _fail(source, "fields", f"only one field may be of kind {kind}: {of_kind}")

    def field_ref(key: str, value: object, kind: str | None = None) -> str:
        if not isinstance(value, str) or value not in names:
            raise _fail(source, key, f"{value!r} is not one of the profile's field names")
        if kind and fields[names[value]].kind != kind:
            raise _fail(source, key, f"{value!r} must be a field of kind {kind}")
        return value

    rule = data.get("file_name", "{nic}.csv")
    if not isinstance(rule, str):
        raise _fail(source, "file_name", "must be text containing {nic}")
    try:
        placeholders = {p[1] for p in string.Formatter().parse(rule) if p[1] is not None}
    except ValueError as exc:
        raise _fail(source, "file_name", str(exc)) from None
    if placeholders != {"nic"} or rule.count("{nic}") != 1 or "/" in rule:
        raise _fail(source, "file_name", "must contain {nic} once and nothing else in braces")
    max_rows = data.get("max_rows", 1_000_000)
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
        raise _fail(source, "max_rows", "must be a positive whole number")
    date_format = data.get("date_format", "YYYYMMDD")
    match = _DATE_FORMAT.match(date_format) if isinstance(date_format, str) else None
    if not match or len({match.group(1), match.group(3), match.group(4)}) != 3:
        raise _fail(
            source, "date_format", f"{date_format!r}: use YYYY, MM and DD once each, like YYYYMMDD"
        )
    status_field = field_ref("status_field", data.get("status_field", "STATUS"), "status")
    status_values = _str_list(source, "status_values", data.get("status_values", ["ADD", "DELETE"]))
    if set(status_values) != {"ADD", "DELETE"} or len(status_values) != 2:
        raise _fail(source, "status_values", "must be [ADD, DELETE]")
    unique_field = field_ref(
        "unique_field", data.get("unique_field", "UNIQUE_REFERENCE"), "reference"
    )
    suff_raw = data.get("sufficient_information", [])
    if not isinstance(suff_raw, list):
        raise _fail(source, "sufficient_information", "must be a list of lists of field names")
    sufficient = tuple(
        tuple(
            field_ref(f"sufficient_information[{i}][{j}]", f)
            for j, f in enumerate(_str_list(source, f"sufficient_information[{i}]", group))
        )
        for i, group in enumerate(suff_raw)
    )
    order_raw = data.get("date_order", [])
    if not isinstance(order_raw, list):
        raise _fail(source, "date_order", "must be a list of [MIN_FIELD, MAX_FIELD] pairs")
    date_order: list[tuple[str, str]] = []
    for i, pair in enumerate(order_raw):
        items = _str_list(source, f"date_order[{i}]", pair)
        if len(items) != 2:
            raise _fail(source, f"date_order[{i}]", "must be a pair [MIN_FIELD, MAX_FIELD]")
        date_order.append(
            (
                field_ref(f"date_order[{i}][0]", items[0], "date"),
                field_ref(f"date_order[{i}][1]", items[1], "date"),
            )
        )
    confirmed = data.get("confirmed", False)
    description = data.get("description", "")
    return Profile(
        name=name,
        description=str(description),
        confirmed=bool(confirmed),
        file_name_rule=rule,
        max_rows=max_rows,
        date_format=date_format,
        status_field=status_field,
        status_values=status_values,
        unique_field=unique_field,
        sufficient_information=sufficient,
        date_order=tuple(date_order),
        fields=fields,
        source=source,
    )


def derive_profile_data(
    base: Mapping[str, Any], override: Mapping[str, Any], source: str
) -> dict[str, Any]:
    """A profile that starts from ``base`` (``base: mps-legacy-24`` in the operator's file):
    top-level keys replace the base's, and ``header`` (a list, or the header line pasted
    from the last file NHS England accepted) renames the columns in order."""
    merged = {k: v for k, v in base.items()}
    merged.update({k: v for k, v in override.items() if k not in ("base", "header")})
    header = override.get("header")
    if header is not None:
        names = [h.strip() for h in header.split(",")] if isinstance(header, str) else header
        fields = merged.get("fields")
        if not isinstance(names, list) or not all(isinstance(h, str) for h in names):
            raise _fail(source, "header", "must be a list of names or one comma-separated line")
        if not isinstance(fields, list) or len(names) != len(fields):
            count = len(fields) if isinstance(fields, list) else 0
            raise _fail(
                source,
                "header",
                f"has {len(names)} names but the profile has {count} columns",
            )
        merged["fields"] = [
            {**f, "header": h} if isinstance(f, Mapping) else f
            for f, h in zip(fields, names, strict=True)
        ]
    return merged


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text, turning syntax errors into a ProfileError with the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(
            f"profile {source}:{where}: not valid YAML: {exc}",
            hint="check indentation and quoting; a built-in profile is a good template",
        ) from None


def parse_profile_text(text: str, source: str) -> Profile:
    """Parse a profile from YAML text; ``source`` names it in error messages."""
    return parse_profile(load_yaml(text, source), source)
