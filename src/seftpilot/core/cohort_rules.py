"""Cohort rules, value by value: the source of truth for what a valid row is.

Owns the problem vocabulary (codes and the wording that says how to fix each), the check
of one value against its field, the diagnosis of one whole row, and the normalisers that
turn what study exports contain into what NHS England accepts. The fast paths in
``core.cohort`` are filters in front of these: a row they accept must be one these accept
(tests hold them to it). Pure: no files, no clock, no logging.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from anyascii import anyascii

from seftpilot.core import nhs_number
from seftpilot.core.cohort_profile import FieldSpec, Profile

# Problems that describe the file rather than a row: they do not count towards the
# invalid-row share that NHS England compares with its 2% threshold.
FILE_LEVEL = frozenset(
    {
        "empty_file",
        "byte_order_mark",
        "incorrect_headers",
        "wrong_line_endings",
        "wrong_filename",
        "mixed_status",
        "too_many_rows",
        "line_too_long",
    }
)
YEAR_MIN, YEAR_MAX = 1800, 2099


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong: ``row`` counts data rows from 1 (the header is row 0; None for
    the file as a whole), ``column`` is the header name (None for the row or file)."""

    row: int | None
    column: str | None
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "code": self.code, "message": self.message}


class ProblemLog:
    """Every problem counted, the first ``cap_per_code`` of each code kept.

    A million-row file with the same mistake on every row must not hold a million
    messages in memory; the counts stay complete.
    """

    def __init__(self, cap_per_code: int = 1000) -> None:
        self.cap_per_code = cap_per_code
        self.problems: list[Problem] = []
        self.counts: Counter[str] = Counter()
        self.invalid_rows = 0

    def add(self, problem: Problem) -> None:
        self.extend([problem])

    def extend(self, problems: Iterable[Problem]) -> None:
        """Add a batch (kept in row order); the batch's rows are not in any earlier batch."""
        batch = sorted(problems, key=lambda p: -1 if p.row is None else p.row)
        rows = set()
        for p in batch:
            self.counts[p.code] += 1
            if self.counts[p.code] <= self.cap_per_code:
                self.problems.append(p)
            if p.row is not None and p.code not in FILE_LEVEL:
                rows.add(p.row)
        self.invalid_rows += len(rows)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def truncated(self) -> bool:
        return self.total > len(self.problems)


# --- problems, worded with the fix ---------------------------------------------------


def _show(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def too_long(spec: FieldSpec, value: str, row: int) -> Problem:
    code = (
        "unique_reference_too_long" if spec.kind == "reference" else f"{spec.name.lower()}_too_long"
    )
    return Problem(
        row,
        spec.header,
        code,
        f"{spec.header} is {len(value)} characters, at most {spec.max_length} are allowed "
        f"({_show(value)}): shorten it in the study export",
    )


def empty_required(spec: FieldSpec, row: int) -> Problem:
    if spec.kind == "reference":
        return Problem(
            row,
            spec.header,
            "empty_unique_reference",
            f"{spec.header} is empty: every row needs the study's own participant ID",
        )
    if spec.kind == "status":
        return Problem(
            row,
            spec.header,
            "empty_status",
            f"{spec.header} is empty: every row needs ADD or DELETE "
            "(build the file with `seftpilot cohort build --action`)",
        )
    return Problem(
        row,
        spec.header,
        f"empty_{spec.name.lower()}",
        f"{spec.header} is empty and is mandatory on every row: fill it in the study export",
    )


def non_ascii(spec_header: str | None, value: str, row: int | None) -> Problem:
    return Problem(
        row,
        spec_header,
        "non_ascii",
        f"{_show(value)} has characters outside ASCII (accents, curly quotes, non-breaking "
        "spaces): NHS pipelines drop them; rebuild with `seftpilot cohort build`, which "
        "transliterates (Zoë -> Zoe)",
    )


def wrong_column_count(found: int, expected: int, row: int, *, source: bool = False) -> Problem:
    what = "source row" if source else "row"
    if found <= 1:
        return Problem(
            row,
            None,
            "wrong_column_count",
            f"{what} {row} is blank: delete blank lines (every line needs {expected} columns)",
        )
    return Problem(
        row,
        None,
        "wrong_column_count",
        f"{what} {row} has {found} columns, the header has {expected}: a value with an "
        "unquoted comma, or a missing or extra comma; fix that line",
    )


# --- one value ------------------------------------------------------------------------

_DATE_PARTS = {"YYYY": r"(?P<y>[0-9]{4})", "MM": r"(?P<m>[0-9]{2})", "DD": r"(?P<d>[0-9]{2})"}
_date_parsers: dict[str, re.Pattern[str]] = {}


def _date_parser(fmt: str) -> re.Pattern[str]:
    pattern = _date_parsers.get(fmt)
    if pattern is None:
        body = re.escape(fmt)
        for token, part in _DATE_PARTS.items():
            body = body.replace(token, part)
        pattern = _date_parsers[fmt] = re.compile(body + r"\Z")
    return pattern


def parse_profile_date(value: str, fmt: str) -> date | None:
    """The date ``value`` names in the profile's format, or None."""
    m = _date_parser(fmt).match(value)
    if not m:
        return None
    try:
        return date(int(m["y"]), int(m["m"]), int(m["d"]))
    except ValueError:
        return None


def format_date(d: date, fmt: str) -> str:
    return (
        fmt.replace("YYYY", f"{d.year:04d}")
        .replace("MM", f"{d.month:02d}")
        .replace("DD", f"{d.day:02d}")
    )


def check_value(profile: Profile, spec: FieldSpec, value: str, row: int) -> Problem | None:
    """The first thing wrong with ``value`` in ``spec``'s column, or None."""
    if "\r" in value or "\n" in value:
        return Problem(
            row,
            spec.header,
            "line_break_in_value",
            f"{spec.header} contains a line break: NHS England reads one participant per "
            "line; remove it (cohort build replaces line breaks with spaces)",
        )
    if not value.isascii():
        return non_ascii(spec.header, value, row)
    if not value.isprintable():
        return Problem(
            row,
            spec.header,
            "control_character",
            f"{spec.header} contains a control character such as a tab: remove it",
        )
    if not value:
        return empty_required(spec, row) if spec.required else None
    if spec.max_length is not None and len(value) > spec.max_length:
        return too_long(spec, value, row)
    kind = spec.kind
    if kind == "reference":
        if spec.allowed_characters and not re.fullmatch(f"[{spec.allowed_characters}]*", value):
            return Problem(
                row,
                spec.header,
                "invalid_unique_reference",
                f"{_show(value)} has characters a unique reference may not contain "
                f"(allowed: {spec.allowed_characters}): use the study ID exactly as NHS "
                "England has it",
            )
    elif kind == "nhs_number":
        message = nhs_number.diagnose(value)
        if message:
            return Problem(row, spec.header, "invalid_nhs_number", message)
    elif kind == "gender":
        if value not in spec.allowed_values:
            return Problem(
                row,
                spec.header,
                "invalid_gender",
                f"{_show(value)} is not an allowed {spec.header} "
                f"({', '.join(spec.allowed_values)}: 0 not known, 1 male, 2 female, "
                "9 not specified); cohort build maps words like Female or M",
            )
    elif kind == "date":
        d = parse_profile_date(value, profile.date_format)
        if d is None:
            return Problem(
                row,
                spec.header,
                f"incorrect_format_for_{spec.name.lower()}",
                f"{_show(value)} is not a real date written {profile.date_format}: "
                "cohort build converts common forms (1980-01-05, 05/01/1980); if Excel "
                "opened the file it may have reformatted the dates",
            )
        if not YEAR_MIN <= d.year <= YEAR_MAX:
            return Problem(
                row,
                spec.header,
                f"incorrect_format_for_{spec.name.lower()}",
                f"{_show(value)}: year {d.year} is outside {YEAR_MIN}-{YEAR_MAX}; check the "
                "source value",
            )
    elif kind == "status" and value not in profile.status_values:
        hint = (
            f" (write it in capitals: {value.upper()})"
            if value.upper() in profile.status_values
            else ""
        )
        return Problem(
            row,
            spec.header,
            "invalid_status",
            f"{_show(value)} is not {' or '.join(profile.status_values)}{hint}",
        )
    return None


def diagnose_row(profile: Profile, values: Sequence[str], row: int) -> list[Problem]:
    """Everything wrong with one row that can be seen from the row alone (duplicates and
    mixed actions need the whole file; ``core.cohort`` tracks those)."""
    expected = len(profile.fields)
    if len(values) != expected:
        return [wrong_column_count(len(values), expected, row)]
    problems = []
    for spec, value in zip(profile.fields, values, strict=True):
        problem = check_value(profile, spec, value, row)
        if problem is not None:
            problems.append(problem)
    if profile.sufficient_information and not any(
        all(values[profile.index(name)] for name in group)
        for group in profile.sufficient_information
    ):
        choices = " or ".join(
            group[0] if len(group) == 1 else f"all of {', '.join(group)}"
            for group in profile.sufficient_information
        )
        problems.append(
            Problem(
                row,
                None,
                "insufficient_information",
                f"not enough to find the person: the row needs {choices}",
            )
        )
    for low, high in profile.date_order:
        lo_value, hi_value = values[profile.index(low)], values[profile.index(high)]
        if lo_value and hi_value:
            lo = parse_profile_date(lo_value, profile.date_format)
            hi = parse_profile_date(hi_value, profile.date_format)
            if lo and hi and hi < lo:
                problems.append(
                    Problem(
                        row,
                        profile.spec(high).header,
                        "max_date_earlier_than_min_date",
                        f"{high} {hi_value} is earlier than {low} {lo_value}: swap them or "
                        "correct the dates",
                    )
                )
    return problems


# --- normalisers (build) --------------------------------------------------------------

_SPACES = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalise_text(value: str) -> str:
    """ASCII, one space between words, none at the ends. Accented letters transliterate
    (Zoë -> Zoe, Łukasz -> Lukasz); control characters go."""
    if value.isascii() and value.isprintable() and "  " not in value and value == value.strip():
        return value
    if not value.isascii():
        value = anyascii(value)
    return _SPACES.sub(" ", _CONTROL.sub(" ", value)).strip()


def normalise_postcode(value: str) -> str:
    """Upper case, a single space before the inward code: ``sw1a1aa`` -> ``SW1A 1AA``."""
    compact = "".join(normalise_text(value).split()).upper()
    if 5 <= len(compact) <= 7 and compact.isalnum():
        return f"{compact[:-3]} {compact[-3:]}"
    return compact


_GENDER_WORDS = {
    "1": ("1", "m", "male", "man", "boy"),
    "2": ("2", "f", "female", "woman", "girl"),
    "0": ("0", "u", "unknown", "not known", "notknown", "not_known"),
    "9": ("9", "not specified", "unspecified", "not_specified", "indeterminate", "i"),
}
GENDER_WORDS = {word: code for code, words in _GENDER_WORDS.items() for word in words}


def normalise_gender(value: str) -> str:
    """Sex and gender words to the NHS codes (0 not known, 1 male, 2 female, 9 not
    specified); anything else is left for the check to report."""
    key = " ".join(value.split()).casefold()
    return GENDER_WORDS.get(key, normalise_text(value))


_MONTHS = {
    name: i
    for i, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        start=1,
    )
    for name in names
}
_TIME_TAIL = r"(?:[T ][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
_YMD = re.compile(r"([0-9]{4})([-/.])([0-9]{1,2})\2([0-9]{1,2})" + _TIME_TAIL + r"\Z")
_COMPACT = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})\Z")
_DMY = re.compile(r"([0-9]{1,2})([-/.])([0-9]{1,2})\2([0-9]{4})" + _TIME_TAIL + r"\Z")
_D_MON_Y = re.compile(r"([0-9]{1,2})(?:st|nd|rd|th)?[ \-]+([A-Za-z]{3,9})\.?[ \-,]+([0-9]{4})\Z")
_MON_D_Y = re.compile(r"([A-Za-z]{3,9})\.?[ \-]+([0-9]{1,2})(?:st|nd|rd|th)?,?[ \-]+([0-9]{4})\Z")


def parse_source_date(value: str) -> date | None:
    """The date a study export means by ``value``: ISO (1980-01-05, with or without a
    time), YYYYMMDD, YYYY/MM/DD, UK day-first dd/mm/yyyy, dd-mm-yyyy, dd.mm.yyyy, and
    month names (5 Jan 1980, 05-Jan-1980, January 5, 1980). Day-first is assumed for
    numeric dates: US month-first exports must be converted at source."""
    text = value.strip()
    y = m = d = 0
    if len(text) == 10 and text[4] == "-" == text[7] and text[:4].isdigit():
        # ISO, what databases export: the common case, without a regex
        try:
            return date(int(text[:4]), int(text[5:7]), int(text[8:]))
        except ValueError:
            return None
    if match := _COMPACT.match(text):
        y, m, d = int(match[1]), int(match[2]), int(match[3])
    elif match := _YMD.match(text):
        y, m, d = int(match[1]), int(match[3]), int(match[4])
    elif match := _DMY.match(text):
        d, m, y = int(match[1]), int(match[3]), int(match[4])
    elif match := _D_MON_Y.match(text):
        month = _MONTHS.get(match[2].casefold())
        if month is None:
            return None
        d, m, y = int(match[1]), month, int(match[3])
    elif match := _MON_D_Y.match(text):
        month = _MONTHS.get(match[1].casefold())
        if month is None:
            return None
        d, m, y = int(match[2]), month, int(match[3])
    else:
        return None
    try:
        return date(y, m, d)
    except ValueError:
        return None


def normalise_date(value: str, fmt: str) -> str:
    """``value`` in the profile's date format when it is a date in a known form; else the
    value unchanged (trimmed) for the check to report."""
    text = value.strip()
    if not text:
        return ""
    parsed = parse_source_date(text)
    return format_date(parsed, fmt) if parsed else normalise_text(text)


def normalise_value(profile: Profile, spec: FieldSpec, value: str) -> str:
    """One source value as the profile wants it (the slow, general path)."""
    kind = spec.kind
    if kind == "nhs_number":
        return nhs_number.normalise(normalise_text(value))
    if kind == "gender":
        return normalise_gender(value)
    if kind == "date":
        return normalise_date(value, profile.date_format)
    if kind == "postcode":
        return normalise_postcode(value)
    if kind == "status":
        return normalise_text(value).upper()
    return normalise_text(value)
