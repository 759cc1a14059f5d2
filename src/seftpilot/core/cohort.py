"""The cohort file engine: validate NHS cohort files and build them from study exports.

Owns the data path for millions of rows: a streaming validator fed bytes, a batch builder
fed source rows, the renderer of rows as NHS bytes, and the reports they return. Pure: it
is given bytes and lists of strings and returns bytes, problems and reports; opening,
writing and renaming files is ``adapters.cohort_files``'s job.

Why it is shaped like this (benchmarks/RESULTS.md has the figures): checking a million
rows field by field in Python costs about ten times a bare ``csv`` copy. So each path has
a fast filter in C-implemented primitives, and only what fails the filter goes to the
per-value rules of ``core.cohort_rules``, which remain the single source of truth:

- validate: a block of lines is vetted with whole-block byte operations (line endings
  counted, ASCII, allowed bytes via ``bytes.translate``), then one compiled regex per line
  (``findall`` over the block) proves every field's format at once and captures only the
  reference, NHS number and status. NHS numbers get a table-driven modulus 11, references
  go into a set. Lines the regex rejects get the full diagnosis.
- build: a block of whole source lines is split into columns with one ``replace`` and
  one ``split`` (blocks ``csv`` must read arrive as rows and are transposed); each column
  is normalised and checked with column-wide operations: one join, then one regex scan
  that skips runs of canonical values in C and stops only at the others, a
  ``bytes.translate``, a set test, or one ``replace`` for the whole column (ISO dates,
  NHS numbers with spaces). Only the values a scan stops at are normalised one by one,
  and only rows with a failing value are diagnosed. Rows are rendered by joining one
  prepared list per block.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import takewhile
from operator import itemgetter
from typing import Any

from seftpilot.core import nhs_number
from seftpilot.core.cohort_profile import FieldSpec, Profile, header_key
from seftpilot.core.cohort_rules import (
    YEAR_MAX,
    YEAR_MIN,
    Problem,
    ProblemLog,
    check_value,
    diagnose_row,
    normalise_date,
    normalise_gender,
    normalise_postcode,
    normalise_text,
    normalise_value,
    parse_profile_date,
    wrong_column_count,
)
from seftpilot.errors import CohortSourceError

NHS_REJECT_SHARE = 0.02  # NHS England rejects the whole file when more rows than this fail
LINE_LIMIT = 1 << 20  # a "line" longer than this is not a cohort file
_BOM = b"\xef\xbb\xbf"
# Printable ASCII except the quote (quoted lines take the slow path) plus CR and LF.
_CLEAN_BYTES = bytes(b for b in range(0x20, 0x7F) if b != 0x22) + b"\r\n"


# --- reports ----------------------------------------------------------------------------


class _RowShare:
    """The 2% rule, for a report or build result with ``rows`` and ``invalid_rows``."""

    rows: int
    invalid_rows: int

    @property
    def invalid_share(self) -> float:
        return self.invalid_rows / self.rows if self.rows else 0.0

    @property
    def nhs_threshold_exceeded(self) -> bool:
        """More than 2% of rows fail: NHS England rejects the whole file."""
        return self.invalid_share > NHS_REJECT_SHARE

    def _share_json(self) -> dict[str, Any]:
        return {
            "invalid_rows": self.invalid_rows,
            "invalid_share": round(self.invalid_share, 6),
            "nhs_threshold_exceeded": self.nhs_threshold_exceeded,
        }


@dataclass
class ValidationReport(_RowShare):
    """What ``cohort validate`` found. ``to_json`` is DESIGN.md's contract (plus extras)."""

    valid: bool
    rows: int
    action: str | None
    problems: list[Problem]
    problem_counts: dict[str, int] = field(default_factory=dict)
    invalid_rows: int = 0
    truncated: bool = False
    file_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "rows": self.rows,
            "action": self.action,
            "problems": [p.to_json() for p in self.problems],
            "problem_counts": dict(self.problem_counts),
            "problems_truncated": self.truncated,
            **self._share_json(),
            "file": self.file_name,
        }


@dataclass(frozen=True)
class BuildResult(_RowShare):
    """What ``cohort build`` did. ``path``/``sha256`` are None when nothing was written."""

    path: str | None
    rows: int
    sha256: str | None
    action: str
    problems: list[Problem]
    problem_counts: dict[str, int] = field(default_factory=dict)
    truncated: bool = False
    invalid_rows: int = 0
    # Not problems (nothing is refused for them) but worth an operator's look: an export
    # without an NHS number column, for one.
    notices: list[str] = field(default_factory=list)

    @property
    def written(self) -> bool:
        return self.path is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "action": self.action,
            "sha256": self.sha256,
            "problems": [p.to_json() for p in self.problems],
            "problem_counts": dict(self.problem_counts),
            "problems_truncated": self.truncated,
            **self._share_json(),
            "notices": list(self.notices),
        }


# --- file-wide state: duplicates and actions --------------------------------------------


class _Seen:
    """Unique references seen so far, per status, and how many rows had each status.

    The only structure that grows with the file: one set entry per row. References are
    kept as the bytes (validate) or str (build) they arrived as; hashing them to fixed
    digests would save about a third and cost exactness, so we do not.
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.header = profile.spec(profile.unique_field).header
        self.by_status: dict[Hashable, set[Hashable]] = {}
        self.status_counts: Counter[str] = Counter()
        self.first_row: dict[str, int] = {}

    def _problem(self, ref: Hashable, status: Hashable, row: int, own: bool) -> Problem:
        shown = ref.decode("ascii", "replace") if isinstance(ref, bytes) else str(ref)
        if own:
            return Problem(
                row,
                self.header,
                "unique_reference_duplicate",
                f"unique reference {shown!r} appears on an earlier row too: each participant "
                "once per file; remove the repeat",
            )
        return Problem(
            row,
            self.header,
            "added_and_deleted",
            f"unique reference {shown!r} is both added and deleted in this file: NHS "
            "England refuses that; keep one action per participant",
        )

    def count_statuses(
        self, counts: Mapping[Any, int], statuses: Sequence[Any], first_row: int
    ) -> None:
        """Add a batch's status counts (keys str or ASCII bytes, as they came)."""
        for key, count in counts.items():
            status = key.decode("ascii", "replace") if isinstance(key, bytes) else key
            if status in self.profile.status_values and status not in self.first_row:
                self.first_row[status] = first_row + statuses.index(key)
            self.status_counts[status] += count

    def add_batch(
        self, refs: Sequence[Hashable], status: Hashable, first_row: int, out: list[Problem]
    ) -> None:
        """Add a batch of references that share one status (the common case, in C)."""
        own = self.by_status.setdefault(status, set())
        new = set(refs)
        if (
            len(new) == len(refs)
            and "" not in new
            and b"" not in new
            and own.isdisjoint(new)
            and all(other.isdisjoint(new) for key, other in self.by_status.items() if key != status)
        ):
            own |= new
            return
        for i, ref in enumerate(refs):
            self.add_one(ref, status, first_row + i, out)

    def add_one(self, ref: Hashable, status: Hashable, row: int, out: list[Problem]) -> None:
        if ref in ("", b""):
            return
        own = self.by_status.setdefault(status, set())
        if ref in own:
            out.append(self._problem(ref, status, row, True))
        elif any(ref in other for key, other in self.by_status.items() if key != status):
            out.append(self._problem(ref, status, row, False))
        else:
            own.add(ref)

    def file_problems(self, rows: int) -> tuple[str | None, list[Problem]]:
        statuses = [s for s in self.profile.status_values if self.status_counts.get(s)]
        if len(statuses) == 1:
            return statuses[0], []
        if not statuses:
            return None, []
        first = max(self.first_row[s] for s in statuses)
        counts = ", ".join(f"{self.status_counts[s]} {s}" for s in statuses)
        return None, [
            Problem(
                first,
                self.profile.spec(self.profile.status_field).header,
                "mixed_status",
                f"the file mixes actions ({counts}; first change at row {first}): NHS "
                "England needs one action per file; build separate ADD and DELETE files "
                "and upload them on different days",
            )
        ]


# --- the fast line regex ------------------------------------------------------------------

_TEXT = rb"[ !#-+\--~]"  # printable ASCII without '"' (0x22) and ',' (0x2c)
_YEAR = rb"(?:1[89]|20)[0-9][0-9]"  # YEAR_MIN..YEAR_MAX, kept in step with cohort_rules
_MONTH_DAY = (
    (rb"(?:0[13578]|1[02])", rb"(?:0[1-9]|[12][0-9]|3[01])"),
    (rb"(?:0[469]|11)", rb"(?:0[1-9]|[12][0-9]|30)"),
    (rb"02", rb"(?:0[1-9]|1[0-9]|2[0-8])"),  # 29 February takes the slow path
)
assert (YEAR_MIN, YEAR_MAX) == (1800, 2099)


def _date_fragment(fmt: str) -> bytes:
    """A regex for valid dates in ``fmt`` (never matching when the layout is unusual)."""
    m = re.match(r"^(YYYY|MM|DD)([-/. ]?)(YYYY|MM|DD)\2(YYYY|MM|DD)$", fmt)
    assert m is not None
    order, sep = (m.group(1), m.group(3), m.group(4)), re.escape(m.group(2)).encode()
    if order in (("YYYY", "MM", "DD"), ("MM", "DD", "YYYY")):
        md = rb"|".join(month + sep + day for month, day in _MONTH_DAY)
    elif order == ("DD", "MM", "YYYY"):
        md = rb"|".join(day + sep + month for month, day in _MONTH_DAY)
    else:
        return rb"(?!)"
    md = rb"(?:" + md + rb")"
    return _YEAR + sep + md if order[0] == "YYYY" else md + sep + _YEAR


def _repeat(atom: bytes, low: int, high: int | None) -> bytes:
    return atom + (b"{%d,%d}" % (low, high) if high is not None else b"{%d,}" % low)


@dataclass(frozen=True)
class _LineRegex:
    pattern: re.Pattern[bytes]
    ref: int | None  # group numbers in findall's tuples (None: findall returns the ref itself)
    nhs: int | None
    status: int | None  # None: the status is not captured (counted per block instead)


@dataclass(frozen=True)
class _FastLine:
    block: _LineRegex  # findall over a vetted block of CRLF lines, one action per block
    block_status: _LineRegex  # the same, capturing the status (blocks mixing actions)
    record: re.Pattern[bytes]  # fullmatch of one record without its line ending (strict)
    ref: int
    nhs: int | None
    status: int
    nhs_header: str | None
    # (status, b",STATUS\r\n") when the status is the last field: a block's action count
    # is then one substring count per value instead of a captured group per line.
    status_tails: tuple[tuple[str, bytes], ...] | None


def _line_body(
    profile: Profile, *, relaxed: bool, capture_status: bool
) -> tuple[bytes, dict[str, int]]:
    """The regex of one valid record and its group numbers by field kind.

    ``relaxed`` is for blocks already vetted as a whole (only printable ASCII without the
    quote, one CR per line and right before its LF): there a free-text field can be
    ``[^,]`` (a tight C loop) instead of a character class, and every run of two or more
    optional, uncaptured fields first tries "all empty", a run of commas. Both give the
    same language; in built files most of the 24 fields are empty, so the run of commas
    saves the per-field cost that dominates the regex's time.
    """
    must_fill = set(profile.sufficient_information[0]) if profile.sufficient_information else set()
    must_empty = {name for pair in profile.date_order for name in pair}
    parts: list[tuple[bytes, bool]] = []  # (regex, may be empty and is not captured)
    groups: dict[str, int] = {}
    nhs_field = next((f for f in profile.fields if f.kind == "nhs_number"), None)
    text = rb"[^,]" if relaxed else _TEXT
    for spec in profile.fields:
        low = 1 if (spec.required or spec.name in must_fill) else 0
        if spec.name in must_empty:
            part = b""
        elif spec.kind == "reference":
            chars = spec.allowed_characters.encode() if spec.allowed_characters else rb"!#-+\--~"
            part = _repeat(b"[" + chars + b"]", low, spec.max_length)
        elif spec.kind == "nhs_number":
            part = rb"[0-9]{10}" if low else rb"(?:[0-9]{10})?"
        elif spec.kind == "gender":
            part = rb"(?:" + rb"|".join(re.escape(v.encode()) for v in spec.allowed_values) + rb")"
            part += b"" if low else b"?"
        elif spec.kind == "date":
            part = rb"(?:" + _date_fragment(profile.date_format) + rb")" + (b"" if low else b"?")
        elif spec.kind == "status":
            low = 1  # never empty: one of the values
            part = (
                rb"(?:" + rb"|".join(re.escape(v.encode()) for v in profile.status_values) + rb")"
            )
        else:
            part = _repeat(text, low, spec.max_length)
        captured = (
            spec.name == profile.unique_field
            or spec is nhs_field
            or (spec.kind == "status" and capture_status)
        )
        if captured:
            groups[spec.kind] = len(groups) + 1
            part = b"(" + part + b")"
        parts.append((part, not captured and low == 0))
    body, i = parts[0][0], 1
    while i < len(parts):
        j = i
        while j < len(parts) and parts[j][1]:
            j += 1
        if relaxed and j - i >= 2:
            # (?:,{3}|,a(?:,{2}|,b(?:,{1}|,c))): at each field, "the rest are empty" first
            run = b""
            for k in range(j - 1, i - 1, -1):
                run = b"," + parts[k][0] + run
                if k < j - 1:
                    run = b"(?:,{%d}|%s)" % (j - k, run)
            body += run
            i = j
        else:
            body += b"," + parts[i][0]
            i += 1
    return body, groups


def _block_regex(profile: Profile, *, capture_status: bool) -> _LineRegex:
    body, groups = _line_body(profile, relaxed=True, capture_status=capture_status)
    pattern = re.compile(rb"^" + body + rb"\r$", re.MULTILINE)
    if pattern.groups == 1:  # findall returns the captured values themselves
        return _LineRegex(pattern, None, None, None)
    return _LineRegex(
        pattern,
        groups["reference"] - 1,
        groups["nhs_number"] - 1 if "nhs_number" in groups else None,
        groups["status"] - 1 if "status" in groups else None,
    )


def _fast_line(profile: Profile) -> _FastLine:
    """Regexes accepting only rows ``diagnose_row`` accepts, capturing the values that
    need whole-file state or arithmetic: reference, NHS number, status."""
    body, groups = _line_body(profile, relaxed=False, capture_status=True)
    nhs_field = next((f for f in profile.fields if f.kind == "nhs_number"), None)
    countable = len(profile.fields) > 1 and profile.fields[-1].name == profile.status_field
    return _FastLine(
        block=_block_regex(profile, capture_status=not countable),
        block_status=_block_regex(profile, capture_status=True),
        record=re.compile(body),
        ref=groups["reference"] - 1,
        nhs=groups["nhs_number"] - 1 if "nhs_number" in groups else None,
        status=groups["status"] - 1,
        nhs_header=nhs_field.header if nhs_field else None,
        status_tails=tuple((v, b"," + v.encode() + b"\r\n") for v in profile.status_values)
        if countable
        else None,
    )


def _split_record(text: str) -> list[str]:
    """One record's values as csv reads them, without csv's refusals: a bare CR inside an
    unquoted value (reported as a line break in the value, not a crash) and a value over
    csv's field size limit (reported as too long)."""
    try:
        if "\r" not in text:
            return next(csv.reader([text]), [])
        mark = next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in text)
        values = next(csv.reader([text.replace("\r", mark)]), [])
        return [v.replace(mark, "\r") for v in values]
    except csv.Error:
        return text.split(",")


def _nhs_problem(header: str | None, value: str, row: int) -> Problem:
    return Problem(
        row, header, "invalid_nhs_number", nhs_number.diagnose(value) or "invalid NHS number"
    )


# --- validate ---------------------------------------------------------------------------


class CohortValidator:
    """Validate a cohort file fed as bytes, in pieces of any size; memory stays flat.

    ``feed`` the file's bytes in order, then ``finish`` for the report. ``file_name`` (the
    base name) is checked against the profile's rule for ``nic``, or for any NIC number
    when ``nic`` is None.
    """

    def __init__(
        self,
        profile: Profile,
        *,
        file_name: str | None = None,
        nic: str | None = None,
        cap_per_code: int = 1000,
    ) -> None:
        self.profile = profile
        self.file_name = file_name
        self.nic = nic
        self.log = ProblemLog(cap_per_code)
        self._fast = _fast_line(profile)
        self._seen = _Seen(profile)
        self._pending = b""
        self._started = False
        self._header_done = False
        self._cr_mode = False
        self._dead = False
        self._bytes = 0
        self.rows = 0
        self._lf_only = 0
        self._lf_first: int | None = None
        self._stray_cr = 0
        self._no_final_eol = False
        self._quote_parts: list[bytes] | None = None
        self._last_tail: int | None = None  # index in status_tails of the last block's action
        self._quote_len = 0  # bytes in _quote_parts, kept as they come (no re-summing)
        self._quote_row = 0

    # feeding

    def feed(self, data: bytes) -> None:
        if self._dead or not data:
            return
        self._bytes += len(data)
        buf = self._pending + data if self._pending else data
        if not self._started:
            buf = self._start(buf, final=False)
            if not self._started:
                self._pending = buf
                return
        self._consume(buf)

    def _consume(self, buf: bytes) -> None:
        if self._cr_mode:
            buf = buf.replace(b"\r", b"\r\n")
        cut = buf.rfind(b"\n") + 1
        self._pending = buf[cut:]
        if len(self._pending) > LINE_LIMIT:
            self._fatal_long_line()
            return
        if cut:
            self._process(buf[:cut] if cut < len(buf) else buf)

    def _start(self, buf: bytes, *, final: bool) -> bytes:
        """Look at the first bytes: encoding marks and the kind of line ending."""
        if len(buf) < 4 and not final:
            return buf
        if buf.startswith((b"\xff\xfe", b"\xfe\xff")):
            self.log.add(
                Problem(
                    None,
                    None,
                    "non_ascii",
                    "the file is UTF-16 text (Excel's 'Unicode Text'): save it as "
                    "'CSV (Comma delimited)' or rebuild it with `seftpilot cohort build`",
                )
            )
            self._dead = self._started = True
            return b""
        if buf.startswith(_BOM):
            self.log.add(
                Problem(
                    None,
                    None,
                    "byte_order_mark",
                    "the file starts with a UTF-8 byte-order mark (Excel's 'CSV UTF-8'): "
                    "save as plain 'CSV (Comma delimited)' or rebuild with cohort build",
                )
            )
            buf = buf[len(_BOM) :]
        first_cr, first_lf = buf.find(b"\r"), buf.find(b"\n")
        if first_lf == -1 and first_cr == -1 and not final and len(buf) <= LINE_LIMIT:
            return buf
        if first_lf == -1 and first_cr == len(buf) - 1 and not final:
            return buf  # a CR last in this piece: its LF may come first in the next one
        if first_cr != -1 and (first_lf == -1 or first_cr < first_lf - 1):
            self._cr_mode = True
            self.log.add(
                Problem(
                    None,
                    None,
                    "wrong_line_endings",
                    "lines end with CR only (classic Mac): save as CSV with Windows (CRLF) "
                    "line endings",
                )
            )
        self._started = True
        return buf

    def _fatal_long_line(self) -> None:
        self.log.add(
            Problem(
                self.rows + 1 if self._header_done else 0,
                None,
                "line_too_long",
                f"a line runs on for more than {LINE_LIMIT // 1024} KiB without ending (or a "
                "quote is never closed): this does not look like a cohort CSV; check the file",
            )
        )
        self._dead = True
        self._pending = b""

    # blocks of whole lines

    def _process(self, block: bytes) -> None:
        if not self._header_done:
            end = block.find(b"\n") + 1
            self._header(block[:end])
            block = block[end:]
            if not block:
                return
        n = block.count(b"\n")
        # Vet the block as a whole (C loops over bytes): only printable ASCII without the
        # quote, and as many CRs as LFs. With the regex demanding a CR at every line's end
        # that leaves no stray CR, and lets the regex use its relaxed, faster form.
        if (
            self._quote_parts is None
            and block.count(b"\r") == n
            and not block.translate(None, _CLEAN_BYTES)
        ):
            fast = self._fast
            status: str | None = None
            regex: _LineRegex | None = fast.block_status
            if fast.status_tails is not None:
                # The previous block's action first: a file has one, so a single count
                # (a pass over the block) usually settles it.
                tails = fast.status_tails
                if self._last_tail is not None and block.count(tails[self._last_tail][1]) == n:
                    status, regex = tails[self._last_tail][0], fast.block
                else:
                    counts = [(value, block.count(tail)) for value, tail in tails]
                    present = [value for value, count in counts if count]
                    if sum(count for _, count in counts) != n:
                        regex = None  # a line without a valid status: diagnose line by line
                    elif len(present) == 1:
                        status, regex = present[0], fast.block
                        self._last_tail = [value for value, _ in tails].index(status)
            if regex is not None:
                matches = regex.pattern.findall(block)
                if len(matches) == n:
                    self._fast_rows(matches, regex, status, self.rows + 1)
                    self.rows += n
                    return
        self._slow(block)

    def _fast_rows(
        self, matches: list[Any], regex: _LineRegex, status: str | None, first_row: int
    ) -> None:
        """Rows the regex accepted: modulus 11 on their NHS numbers, their references and
        actions into the file-wide state. ``status`` is the block's one action, or None
        when the regex captured each row's."""
        fast = self._fast
        problems: list[Problem] = []
        if regex.nhs is not None:
            numbers = list(map(itemgetter(regex.nhs), matches))
            packed = b"".join(numbers)
            if len(packed) == 10 * len(numbers):  # all present (each is empty or ten digits)
                bad = nhs_number.invalid_packed(packed)
            else:
                idx = [i for i, v in enumerate(numbers) if v]
                bad = [idx[j] for j in nhs_number.invalid_positions([numbers[i] for i in idx])]
            for i in bad:
                problems.append(_nhs_problem(fast.nhs_header, numbers[i].decode(), first_row + i))
        refs = matches if regex.ref is None else list(map(itemgetter(regex.ref), matches))
        if status is not None:
            self._seen.count_statuses({status: len(refs)}, [status], first_row)
            self._seen.add_batch(refs, status, first_row, problems)
        else:
            assert regex.status is not None
            statuses = list(map(itemgetter(regex.status), matches))
            counts = Counter(statuses)
            self._seen.count_statuses(counts, statuses, first_row)
            if len(counts) == 1:
                self._seen.add_batch(refs, statuses[0].decode(), first_row, problems)
            else:
                for i, (ref, raw) in enumerate(zip(refs, statuses, strict=True)):
                    self._seen.add_one(ref, raw.decode(), first_row + i, problems)
        if problems:
            self.log.extend(problems)

    def _slow(self, block: bytes) -> None:
        lines = block.split(b"\n")
        lines.pop()  # the block ends with a line end
        problems: list[Problem] = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if line is raw:
                self._lf_only += 1
                if self._lf_first is None:
                    self._lf_first = self.rows + 1
            if b"\r" in line:
                self._stray_cr += 1
            if self._quote_parts is not None:
                self._quote_parts.append(line)
                self._quote_len += len(line) + 1
                if line.count(b'"') % 2:
                    record = b"\n".join(self._quote_parts)
                    self._quote_parts = None
                    self._record(record, self._quote_row, problems)
                elif self._quote_len > LINE_LIMIT:
                    self._fatal_long_line()
                    return
                continue
            self.rows += 1
            if line.count(b'"') % 2:
                self._quote_parts = [line]
                self._quote_len = len(line)
                self._quote_row = self.rows
                continue
            self._record(line, self.rows, problems)
        if problems:
            self.log.extend(problems)

    def _record(self, record: bytes, row: int, problems: list[Problem]) -> None:
        fast = self._fast
        m = fast.record.fullmatch(record) if record.isascii() else None
        if m is not None:
            groups = m.groups()
            if fast.nhs is not None and groups[fast.nhs]:
                number = groups[fast.nhs].decode()
                if not nhs_number.is_valid(number):
                    problems.append(_nhs_problem(fast.nhs_header, number, row))
            status = groups[fast.status].decode()
            self._seen.count_statuses({status: 1}, [status], row)
            self._seen.add_one(groups[fast.ref], status, row, problems)
            return
        undecodable = False
        try:
            text = record.decode("utf-8")
        except UnicodeDecodeError:
            text, undecodable = record.decode("utf-8", "replace"), True
        values = _split_record(text)
        found = diagnose_row(self.profile, values, row)
        if undecodable:
            found = [
                Problem(
                    p.row,
                    p.column,
                    p.code,
                    "has bytes that are not UTF-8 text (saved as ANSI/Windows-1252?): "
                    "remove accents or rebuild the file with `seftpilot cohort build`",
                )
                if p.code == "non_ascii"
                else p
                for p in found
            ]
        problems.extend(found)
        if len(values) == len(self.profile.fields):
            status = values[self.profile.index(self.profile.status_field)]
            ref = values[self.profile.index(self.profile.unique_field)]
            self._seen.count_statuses({status: 1}, [status], row)
            self._seen.add_one(ref.encode("utf-8"), status, row, problems)

    def _header(self, line: bytes) -> None:
        self._header_done = True
        if line.endswith(b"\r\n"):
            line = line[:-2]
        elif line.endswith(b"\n"):
            line = line[:-1]
            self._lf_only += 1
            self._lf_first = 0
        expected = list(self.profile.header)
        text = line.decode("utf-8", "replace")
        found = _split_record(text)
        if found == expected:
            if not line.isascii():
                self.log.add(Problem(0, None, "non_ascii", "the header row has non-ASCII bytes"))
            return
        diffs = [
            f"column {i + 1} is {f!r}, expected {e!r}"
            for i, (f, e) in enumerate(zip(found, expected, strict=False))
            if f != e
        ]
        if len(found) != len(expected):
            diffs.insert(0, f"{len(found)} columns, expected {len(expected)}")
        column = next(
            (e for f, e in zip(found, expected, strict=False) if f != e),
            expected[min(len(found), len(expected) - 1)],
        )
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        self.log.add(
            Problem(
                0,
                column,
                "incorrect_headers",
                f"the header row does not match profile {self.profile.name}: "
                f"{'; '.join(diffs[:4])}{more}. Use the profile's header exactly (cohort "
                "build writes it), or if NHS England's template differs, make a profile "
                "with its header",
            )
        )

    # the end

    def finish(self) -> ValidationReport:
        if not self._started and not self._dead:
            buf = self._start(self._pending, final=True)
            self._pending = b""
            if buf:
                self._consume(buf)
        if self._pending and not self._dead:
            self._no_final_eol = True
            tail, self._pending = self._pending, b""
            self._process(tail + b"\r\n")
        if self._quote_parts is not None:
            record, self._quote_parts = b"\n".join(self._quote_parts), None
            problems: list[Problem] = []
            self._record(record, self._quote_row, problems)
            self.log.extend(problems)
        file_problems: list[Problem] = []
        # A file given up on (UTF-16, a line that never ends) has said why already; it is
        # not "empty" as well.
        if self._bytes == 0 or (not self._header_done and not self._dead):
            file_problems.append(
                Problem(None, None, "empty_file", "the file is empty: build it with cohort build")
            )
        elif self.rows == 0 and not self._dead:
            file_problems.append(
                Problem(
                    None,
                    None,
                    "empty_file",
                    "the file has a header but no participant rows: NHS England needs at least one",
                )
            )
        if self._lf_only or self._stray_cr or self._no_final_eol:
            parts = []
            if self._lf_only:
                parts.append(
                    f"{self._lf_only} line(s) end with LF only (first at row {self._lf_first})"
                )
            if self._stray_cr:
                parts.append(f"{self._stray_cr} line(s) contain a stray CR")
            if self._no_final_eol:
                parts.append("the last line has no line ending")
            file_problems.append(
                Problem(
                    None,
                    None,
                    "wrong_line_endings",
                    f"{'; '.join(parts)}: save as CSV with Windows (CRLF) line endings, "
                    "including after the last line",
                )
            )
        if self.rows > self.profile.max_rows:
            file_problems.append(
                Problem(
                    self.profile.max_rows + 1,
                    None,
                    "too_many_rows",
                    f"{self.rows} rows, NHS England accepts at most {self.profile.max_rows} "
                    "per file: split the cohort and upload the parts on different days",
                )
            )
        action, status_problems = self._seen.file_problems(self.rows)
        file_problems.extend(status_problems)
        if self.file_name is not None:
            file_problems.extend(self._check_name(self.file_name))
        self.log.extend(file_problems)
        return ValidationReport(
            valid=self.log.total == 0,
            rows=self.rows,
            action=action,
            problems=list(self.log.problems),
            problem_counts=dict(self.log.counts),
            invalid_rows=self.log.invalid_rows,
            truncated=self.log.truncated,
            file_name=self.file_name,
        )

    def _check_name(self, name: str) -> list[Problem]:
        if self.nic is not None:
            expected = self.profile.file_name(self.nic)
            if name == expected:
                return []
            why = f"NHS England expects exactly {expected!r} for agreement {self.nic}"
        else:
            if self.profile.file_name_pattern().match(name):
                return []
            why = (
                "NHS England expects it named after the agreement's NIC number, "
                f"{self.profile.file_name_rule}"
            )
        return [
            Problem(
                None,
                None,
                "wrong_filename",
                f"the file is named {name!r}: {why} (e.g. "
                f"{self.profile.file_name('NIC-402963-P0Y5D')}); rename it",
            )
        ]


def validate_bytes(
    profile: Profile,
    chunks: Iterable[bytes],
    *,
    file_name: str | None = None,
    nic: str | None = None,
) -> ValidationReport:
    """Validate a file given as an iterable of byte chunks (tests and small inputs)."""
    validator = CohortValidator(profile, file_name=file_name, nic=nic)
    for chunk in chunks:
        validator.feed(chunk)
    return validator.finish()


# --- build --------------------------------------------------------------------------------


def resolve_columns(
    profile: Profile, source_header: Sequence[str], mapping: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Which source column feeds which profile field: ``mapping`` (source column -> field)
    first, then headers that are the field's name, header or an alias, compared ignoring
    case, surrounding spaces and space/dash/underscore differences. Extra columns are
    ignored; the status column never comes from the source (``--action`` sets it)."""
    keys = [header_key(h) for h in source_header]
    fields_by_key: dict[str, str] = {}
    for spec in profile.fields:
        for candidate in (spec.name, spec.header, *spec.aliases):
            fields_by_key.setdefault(header_key(candidate), spec.name)
    result: dict[str, int] = {}
    taken: dict[int, str] = {}
    for source_column, field_name in (mapping or {}).items():
        if field_name not in profile.field_names:
            raise CohortSourceError(
                f"column_mapping maps {source_column!r} to {field_name!r}, which is not a "
                f"field of profile {profile.name}",
                hint=f"fields are: {', '.join(profile.field_names)}",
            )
        key = header_key(source_column)
        if key not in keys:
            raise CohortSourceError(
                f"column_mapping names source column {source_column!r}, which the export "
                "does not have",
                hint=f"the export's columns are: {', '.join(source_header)}",
            )
        result[field_name] = keys.index(key)
        taken[keys.index(key)] = field_name
    for i, key in enumerate(keys):
        name = fields_by_key.get(key)
        if i in taken or name is None or name == profile.status_field:
            continue
        if name in result:
            if name in (mapping or {}).values():
                continue  # the mapping said which column; others are extra columns
            raise CohortSourceError(
                f"two source columns could be {name}: {source_header[result[name]]!r} "
                f"and {source_header[i]!r}",
                hint="say which one in the agreement's column_mapping",
            )
        result[name] = i
        taken[i] = name
    result.pop(profile.status_field, None)
    needed = [
        f.name
        for f in profile.fields
        if (f.required or f.name == profile.unique_field) and f.name != profile.status_field
    ]
    missing = [n for n in needed if n not in result]
    if profile.sufficient_information and not any(
        all(n in result for n in group) for group in profile.sufficient_information
    ):
        missing.append(" or ".join("+".join(g) for g in profile.sufficient_information))
    if missing:
        raise CohortSourceError(
            f"the export has no column for {', '.join(missing)} "
            f"(its columns: {', '.join(source_header) or 'none'})",
            hint="rename the export's columns to the profile's field names, or map them in "
            'the agreement: column_mapping = { "study_id" = "UNIQUE_REFERENCE" }',
        )
    return result


# What normalise_text would change: anything but printable ASCII, double or edge spaces.
_TEXT_SPOTS = re.compile(r"[^\x20-\x7e\n]|  |^ | $", re.MULTILINE)


_MARK = "\x00"  # never in a block split_simple_block accepts


def split_simple_block(text: str, n_source: int, wanted: Sequence[int]) -> list[list[str]] | None:
    """The columns ``wanted`` of ``text``, whole CSV lines each ending with a line break,
    when ``csv.reader`` would read them as plain comma splitting: no quote, no NUL, no
    bare CR, no blank line, and ``n_source`` values on every line. None otherwise: the
    caller reads that text with ``csv``.

    One ``replace`` and one ``split`` for the whole block, then a strided slice per
    column: each value is allocated once and no Python code runs per row. A marker
    value after every line proves the line lengths: ``lines`` markers sitting exactly
    at every ``n_source + 1``-th place leave no room for a line of another length.
    """
    if '"' in text or _MARK in text or not text.endswith("\n"):
        return None
    lines = text.count("\n")
    eol = "\n"
    if "\r" in text:  # CRLF on every line (csv.writer's default), or csv's turn
        if text.count("\r\n") != lines or text.count("\r") != lines:
            return None
        eol = "\r\n"
    if text.startswith(eol) or eol + eol in text:
        return None  # a blank line
    width = n_source + 1
    flat = text.replace(eol, "," + _MARK + ",").split(",")
    flat.pop()  # the empty string after the last marker
    if len(flat) != lines * width or flat[n_source::width].count(_MARK) != lines:
        return None
    return [flat[i::width] for i in wanted]


def _line_run(line: str) -> re.Pattern[str]:
    """The pattern ``_other_lines`` scans with, for lines that are empty or match ``line``:
    each match skips a run of such lines in C and stops at one other line (group 1)."""
    return re.compile(rf"(?:(?:{line})?\n)*([^\n]*)\n")


def _other_lines(run: re.Pattern[str], joined: str) -> list[int]:
    """Indexes of the lines of ``joined`` (a column joined with newlines) that ``run`` (a
    ``_line_run`` pattern) does not accept. One C scan over the column; Python runs only
    per other line. Measured on a million postcodes: 0.05 s, where testing each value
    with ``str`` methods (``map(str.isupper, col)`` and the like) took 0.1 s per method.

    A sentinel line that no pattern accepts ends the text, so the last match stops there
    instead of backtracking into the last accepted line."""
    scan = joined + "\n\x00\n"
    end = len(joined) + 1  # where the sentinel starts
    return _line_indexes(scan, takewhile(end.__gt__, (m.start(1) for m in run.finditer(scan))))


def _line_indexes(text: str, offsets: Iterable[int]) -> list[int]:
    """The line (counted from 0) of each of ``offsets`` (ascending) in ``text``, each
    line once: newlines are counted between consecutive offsets only, so the whole
    costs one pass over the text."""
    out: list[int] = []
    line = pos = 0
    for offset in offsets:
        line += text.count("\n", pos, offset)
        pos = offset
        if not out or out[-1] != line:
            out.append(line)
    return out


_POSTCODE_OTHER = _line_run(r"[A-Z0-9]{2,4} [A-Z0-9]{3}")  # canonical or empty
_POSTCODE_ONE = re.compile(r"(?:[A-Z0-9]{2,4} [A-Z0-9]{3})?")
_PRINTABLE_LF = bytes(range(0x20, 0x7F)) + b"\n"
_NHS_OTHER = _line_run(r"[0-9]{10}")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# ISO dates that are valid within the years accepted (29 February left to the rules), or empty.
_ISO_OTHER = _line_run(_date_fragment("YYYY-MM-DD").decode("ascii"))


def _ten_digit_column(joined: str, count: int) -> bytes | None:
    """The digits of a column of ``count`` values joined with newlines, when every value
    is ten ASCII digits (a newline at every 11th place, digits elsewhere); else None."""
    if len(joined) == 11 * count - 1 and joined[10::11].count("\n") == count - 1:
        digits = joined.replace("\n", "")
        if digits.isascii() and digits.isdigit():
            return digits.encode("ascii")
    return None


def _ascii_digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _needs_quote(joined: str) -> bool:
    return "," in joined or '"' in joined


def _has_empty(joined: str, count: int) -> bool:
    """Whether a column of ``count`` values joined with newlines holds an empty value."""
    if count == 1:
        return not joined
    return joined.startswith("\n") or joined.endswith("\n") or "\n\n" in joined


class CohortBuilder:
    """Turn study-export rows into NHS file bytes, collecting problems.

    ``process`` takes a batch of source rows (lists of str, as ``csv.reader`` yields
    them), ``process_text`` a block of whole source lines when it can be split without
    csv (None when it cannot: give those lines to ``process``); both return the rendered
    rows. ``header_bytes`` is the first line; ``finish`` returns the problems. Problem
    rows count the source's data rows from 1.

    Each batch is worked on as columns: a column-wide test in C first (one join, a few
    substring searches or a set test), and only a column that fails it is looked at
    value by value; only rows with a value that may break a rule go to ``diagnose_row``.
    """

    _CACHE_LIMIT = 200_000  # distinct values remembered per cache (bounded memory)

    def __init__(
        self,
        profile: Profile,
        *,
        action: str,
        source_header: Sequence[str],
        mapping: Mapping[str, str] | None = None,
        cap_per_code: int = 1000,
    ) -> None:
        if action not in profile.status_values:
            raise CohortSourceError(
                f"action {action!r} is not one of {', '.join(profile.status_values)}"
            )
        self.profile = profile
        self.action = action
        self.log = ProblemLog(cap_per_code)
        self.rows = 0
        self._source_rows = 0
        self._n_source = len(source_header)
        columns = resolve_columns(profile, source_header, mapping)
        self.notices: list[str] = []
        nhs_field = next((f for f in profile.fields if f.kind == "nhs_number"), None)
        if nhs_field is not None and nhs_field.name not in columns:
            # Allowed (names, sex, birth date and postcode can be enough), but more often a
            # forgotten or renamed column than a choice: say so, never refuse.
            known = ", ".join(dict.fromkeys((nhs_field.name, nhs_field.header, *nhs_field.aliases)))
            self.notices.append(
                f"the export has no NHS number column (looked for: {known}): every "
                f"{nhs_field.header} is left empty and NHS England must trace each person "
                "from name, sex, date of birth and postcode. If the export has the numbers "
                'under another name, map it: column_mapping = { "<its header>" = '
                f'"{nhs_field.name}" }} in the agreement'
            )
        # Mapped fields in file order, with their source index.
        self._mapped = [(f, columns[f.name]) for f in profile.fields if f.name in columns]
        self._source_index = [i for _, i in self._mapped]
        self._getters = [itemgetter(i) for i in self._source_index]
        self._transpose = len(source_header) <= 2 * len(self._mapped)
        self._status_index = profile.index(profile.status_field)
        self._seen = _Seen(profile)
        self._date_cache: dict[str, str] = {"": ""}
        self._gender_cache: dict[str, str] = {"": ""}
        self._date_valid: set[str] = set()
        self._unique_pos = [f.name for f, _ in self._mapped].index(profile.unique_field)
        self._allowed = {
            spec.name: frozenset(spec.allowed_values) | ({""} if not spec.required else set())
            for spec, _ in self._mapped
            if spec.kind == "gender"
        }
        # Reference characters as bytes, for one bytes.translate per column.
        self._ref_bytes = {
            spec.name: bytes(
                b for b in range(128) if re.fullmatch(f"[{spec.allowed_characters}]", chr(b))
            )
            + b"\n"
            for spec, _ in self._mapped
            if spec.kind == "reference" and spec.allowed_characters
        }
        # The rendered line around the mapped values: pieces[0] before the first,
        # pieces[j] between value j-1 and j, pieces[-1] after the last (with CRLF).
        line = ",".join(
            _MARK if spec.name in columns else (action if spec.name == profile.status_field else "")
            for spec in profile.fields
        )
        self._pieces = (line + "\r\n").split(_MARK)
        self._template: list[str] = []
        self._date_format = (
            profile.date_format.replace("YYYY", "{0}").replace("MM", "{1}").replace("DD", "{2}")
        ).format
        # ISO dates (what databases export) become a year-first profile format with one
        # replace over the joined column: `_iso_sep` is that format's separator, None when
        # the profile's dates are not year-first. `_ISO_OTHER` finds the lines that are
        # neither empty nor a valid ISO date within the years accepted (29 February among
        # them: it needs the leap-year test); only those go value by value.
        iso = re.fullmatch(r"YYYY([-/. ]?)MM\1DD", profile.date_format)
        self._iso_sep = iso.group(1) if iso else None

    def header_bytes(self) -> bytes:
        return (",".join(self.profile.header) + "\r\n").encode("ascii")

    # normalising and checking whole columns

    def _date(self, value: str) -> str:
        """``normalise_date`` for one new value, remembering the valid results (their
        check is then a set test). ISO dates, what databases export, skip the parsers."""
        text = value.strip()
        y = m = d = ""
        if len(text) == 10 and text.isascii():
            if text[4] == "-" == text[7]:
                y, m, d = text[:4], text[5:7], text[8:]
            elif text[2] == text[5] and text[2] in "/.-":
                d, m, y = text[:2], text[3:5], text[6:]  # UK day first, as parse_source_date
            if y.isdigit() and m.isdigit() and d.isdigit():
                try:
                    date(int(y), int(m), int(d))
                except ValueError:
                    return normalise_date(value, self.profile.date_format)
                result = self._date_format(y, m, d)
                if YEAR_MIN <= int(y) <= YEAR_MAX and len(self._date_valid) < self._CACHE_LIMIT:
                    self._date_valid.add(result)
                return result
        result = normalise_date(value, self.profile.date_format)
        parsed = parse_profile_date(result, self.profile.date_format)
        if (
            parsed is not None
            and YEAR_MIN <= parsed.year <= YEAR_MAX
            and len(self._date_valid) < (self._CACHE_LIMIT)
        ):
            self._date_valid.add(result)
        return result

    @staticmethod
    def _fix(col: list[str], bad: Iterable[int], fix: Callable[[str], str]) -> list[str]:
        for i in bad:
            col[i] = fix(col[i])
        return col

    @staticmethod
    def _lines_with(spots: re.Pattern[str], joined: str) -> list[int]:
        """Indexes of the lines of ``joined`` (a column joined with newlines) where
        ``spots`` matches: one C-level scan instead of a Python test per value."""
        return _line_indexes(joined, (m.start() for m in spots.finditer(joined)))

    def _cached(
        self,
        cache: dict[str, str],
        col: list[str],
        fix: Callable[[str], str],
        values: set[str] | None = None,
    ) -> tuple[list[str], set[str]]:
        """Normalise through a cache: sex words and dates repeat a lot in a cohort. New
        values are found with one set difference (in C, O(distinct values in the batch)),
        then the column maps through the cache in one C-level pass. Returns the column and
        its distinct normalised values. ``values`` is ``set(col)`` when the caller has it."""
        if values is None:
            values = set(col)
        new = values.difference(cache)
        if new:
            results = {value: fix(value) for value in new}
            if len(cache) + len(results) > self._CACHE_LIMIT:
                get = cache.get
                out = [r if (r := get(v)) is not None else results[v] for v in col]
                return out, set(out)
            cache.update(results)
        return list(map(cache.__getitem__, col)), set(map(cache.__getitem__, values))

    def _checked(self, spec: FieldSpec, col: list[str]) -> list[int]:
        """Indexes of the values ``check_value`` rejects (the slow, exact path)."""
        profile = self.profile
        return [i for i, v in enumerate(col) if check_value(profile, spec, v, 0) is not None]

    def _column(self, spec: FieldSpec, col: list[str]) -> tuple[list[str], Iterable[int], bool]:
        """``col`` (a fresh list, changed in place or replaced) in canonical form, the
        indexes of values that may break a rule (a superset: ``diagnose_row`` decides),
        and whether a value needs quoting."""
        kind = spec.kind
        if kind == "gender":
            allowed = self._allowed[spec.name]
            values = set(col)
            if values <= allowed:
                return col, (), False
            col, values = self._cached(self._gender_cache, col, normalise_gender, values)
            if values <= allowed:
                return col, (), False
            suspects = [i for i, v in enumerate(col) if v not in allowed]
            return col, suspects, any(map(_needs_quote, values))
        if kind == "date":
            if self._iso_sep is not None:
                done = self._iso_date_column(spec, col, self._iso_sep)
                if done is not None:
                    return done
            col, values = self._cached(self._date_cache, col, self._date)
            if not spec.required:
                values.discard("")
            if values <= self._date_valid:
                return col, (), False
            valid = self._date_valid
            suspects = [i for i, v in enumerate(col) if v not in valid and (v or spec.required)]
            return col, suspects, any(map(_needs_quote, values))
        joined = "\n".join(col)
        if kind == "status" or joined.count("\n") != len(col) - 1:
            # a status, or a value holding a line break (quoted in the source): one by one
            col = [normalise_value(self.profile, spec, v) for v in col]
            return col, self._checked(spec, col), _needs_quote("\n".join(col))
        if kind == "nhs_number":
            return self._nhs_column(spec, col, joined)
        short = False  # every value known to be within the length limit
        if kind == "postcode":
            # Canonical or empty values (one scan) are left as they are; the others are
            # normalised one by one, and the column is short if they became canonical.
            short = (spec.max_length or 8) >= 8
            others = _other_lines(_POSTCODE_OTHER, joined)
            if others:
                col = self._fix(col, others, normalise_postcode)
                joined = "\n".join(col)
                short = short and all(_POSTCODE_ONE.fullmatch(col[i]) for i in others)
        else:
            # What normalise_text leaves as is: printable ASCII (one bytes.translate)
            # without double or edge spaces (substring searches, skipped without a space).
            spaced = " " in joined and (
                "  " in joined
                or "\n " in joined
                or " \n" in joined
                or joined.startswith(" ")
                or joined.endswith(" ")
            )
            if joined.isascii():
                printable = not joined.encode("ascii").translate(None, _PRINTABLE_LF)
            else:
                printable = joined.replace("\n", "|").isprintable()
            if spaced or not printable:
                where = self._lines_with(_TEXT_SPOTS, joined)
            elif not joined.isascii():  # the usual mess: accented letters to transliterate
                where = self._lines_with(_NON_ASCII, joined)
            else:
                where = []
            if where:
                col = self._fix(col, where, normalise_text)
                joined = "\n".join(col)
        # Now printable ASCII without line breaks: check_value can only object to an
        # empty required value, the length, and a reference's characters.
        ok = not (spec.required and _has_empty(joined, len(col)))
        if ok and spec.max_length is not None and not short:
            ok = max(map(len, col)) <= spec.max_length
        if ok and spec.name in self._ref_bytes:
            ok = not joined.encode("ascii").translate(None, self._ref_bytes[spec.name])
        return col, (() if ok else self._checked(spec, col)), _needs_quote(joined)

    def _iso_date_column(
        self, spec: FieldSpec, col: list[str], sep: str
    ) -> tuple[list[str], Iterable[int], bool] | None:
        """A date column in a year-first profile format: every valid ISO value converted
        by one ``replace`` over the joined column, the other values (other layouts, 29
        February, out-of-range years, rubbish) through ``_cached`` one by one. None when
        a value holds a line break (the caller takes the general path)."""
        joined = "\n".join(col)
        if joined.count("\n") != len(col) - 1:
            return None
        others = _other_lines(_ISO_OTHER, joined)
        out = (joined.replace("-", sep) if sep != "-" else joined).split("\n")
        suspects: list[int] = []
        if spec.required and _has_empty(joined, len(col)):
            suspects = [i for i, v in enumerate(col) if not v]
        if not others:
            return out, suspects, False
        fixed, values = self._cached(self._date_cache, [col[i] for i in others], self._date)
        valid = self._date_valid
        for i, v in zip(others, fixed, strict=True):
            out[i] = v
            if v not in valid and (v or spec.required):
                suspects.append(i)
        return out, suspects, any(map(_needs_quote, values))

    def _nhs_column(
        self, spec: FieldSpec, col: list[str], joined: str
    ) -> tuple[list[str], Iterable[int], bool]:
        count = len(col)
        digits = _ten_digit_column(joined, count)
        if digits is not None:
            # Every value ten digits: canonical, and modulus 11 for the whole column in
            # one packed check.
            return col, nhs_number.invalid_packed(digits), False
        if (
            ("-" in joined or " " in joined)
            and joined.isascii()
            and not joined.encode("ascii").translate(None, _PRINTABLE_LF)
        ):
            # Printable ASCII: normalising a value is removing its spaces and dashes, so
            # the whole column is normalised with two replaces (numbers written 999 123
            # 4567 or 999-123-4567, by some or all rows).
            joined = joined.replace(" ", "").replace("-", "")
            col = joined.split("\n")
            digits = _ten_digit_column(joined, count)
            if digits is not None:
                return col, nhs_number.invalid_packed(digits), False
        # Otherwise only the values that are neither ten digits nor empty (one scan) can
        # change: normalised one by one.
        others = _other_lines(_NHS_OTHER, joined)
        col = self._fix(col, others, lambda v: nhs_number.normalise(normalise_text(v)))
        not_ten = {i for i in others if not (len(col[i]) == 10 and _ascii_digits(col[i]))}
        if _has_empty(joined, count):
            not_ten.update(i for i, v in enumerate(col) if not v)
        suspects = [i for i in not_ten if col[i] or spec.required]
        quote = any(_needs_quote(col[i]) for i in not_ten)
        if not not_ten:
            packed = "".join(col)  # every value ten ASCII digits now
            return col, nhs_number.invalid_packed(packed.encode("ascii")), False
        ten = [i for i in range(count) if i not in not_ten]
        if ten:
            packed = "".join([col[i] for i in ten])
            suspects.extend(ten[j] for j in nhs_number.invalid_packed(packed.encode("ascii")))
        return col, suspects, quote

    # batches

    def process(self, batch: list[list[str]]) -> bytes:
        """Normalise, check and render one batch of source rows."""
        first = self._source_rows + 1
        self._source_rows += len(batch)
        problems: list[Problem] = []
        rownums: list[int] | None = None
        n_source = self._n_source
        if set(map(len, batch)) != {n_source}:
            fixed, rownums = [], []
            for i, raw in enumerate(batch):
                if not raw:
                    continue  # a blank line in the export
                if len(raw) != n_source:
                    problems.append(wrong_column_count(len(raw), n_source, first + i, source=True))
                fixed.append((raw + [""] * n_source)[:n_source] if len(raw) != n_source else raw)
                rownums.append(first + i)
            batch = fixed
        if not batch:
            self.log.extend(problems)
            return b""
        if self._transpose:  # few extra columns: one C-level transpose is cheapest
            columns = list(zip(*batch, strict=True))
            source_cols = [list(columns[i]) for i in self._source_index]
            del columns
        else:
            source_cols = [list(map(getter, batch)) for getter in self._getters]
        return self._columns(source_cols, first, rownums, problems)

    def process_text(self, text: str) -> bytes | None:
        """Normalise, check and render a block of whole source lines (each ending with a
        line break) when it splits without csv; None, having done nothing, when it does
        not (quotes, blank lines, a wrong number of values): read those lines with csv
        and give them to ``process``."""
        source_cols = split_simple_block(text, self._n_source, self._source_index)
        if source_cols is None:
            return None
        first = self._source_rows + 1
        self._source_rows += len(source_cols[0])
        return self._columns(source_cols, first, None, [])

    def _columns(
        self,
        source_cols: list[list[str]],
        first: int,
        rownums: list[int] | None,
        problems: list[Problem],
    ) -> bytes:
        k = len(source_cols[0])
        self.rows += k
        cols: list[list[str]] = []
        suspects: set[int] = set()
        quote = False
        for (spec, _), source_col in zip(self._mapped, source_cols, strict=True):
            col, bad, needs_quote = self._column(spec, source_col)
            cols.append(col)
            suspects.update(bad)
            quote = quote or needs_quote
        suspects.update(self._insufficient(cols, k))
        suspects.update(self._date_order_suspects(cols))

        def row_no(i: int) -> int:
            return rownums[i] if rownums is not None else first + i

        if suspects:
            for i in sorted(suspects):
                problems.extend(diagnose_row(self.profile, self._full_row(cols, i), row_no(i)))
        refs = cols[self._unique_pos]
        seen_problems: list[Problem] = []
        self._seen.count_statuses({self.action: k}, [self.action], 1)
        self._seen.add_batch(refs, self.action, 1, seen_problems)
        problems.extend(
            Problem(row_no(p.row - 1), p.column, p.code, p.message)
            for p in seen_problems
            if p.row is not None
        )
        if problems:
            self.log.extend(problems)
        return self._render(cols, quote)

    def _full_row(self, cols: list[list[str]], i: int) -> list[str]:
        values = [""] * len(self.profile.fields)
        for (spec, _), col in zip(self._mapped, cols, strict=True):
            values[self.profile.index(spec.name)] = col[i]
        values[self._status_index] = self.action
        return values

    def _insufficient(self, cols: list[list[str]], k: int) -> set[int]:
        groups = self.profile.sufficient_information
        if not groups:
            return set()
        position = {spec.name: j for j, (spec, _) in enumerate(self._mapped)}
        lacking: set[int] | None = None
        for group in groups:
            if not all(name in position for name in group):
                continue
            gaps: set[int] = set()
            for name in group:
                col = cols[position[name]]
                if "" in col:
                    gaps.update(i for i, v in enumerate(col) if not v)
            lacking = gaps if lacking is None else lacking & gaps
            if not lacking:
                return set()
        return lacking or set()

    def _date_order_suspects(self, cols: list[list[str]]) -> set[int]:
        position = {spec.name: j for j, (spec, _) in enumerate(self._mapped)}
        out: set[int] = set()
        for low, high in self.profile.date_order:
            if low in position and high in position:
                lo, hi = cols[position[low]], cols[position[high]]
                out.update(i for i, (a, b) in enumerate(zip(lo, hi, strict=True)) if a and b)
        return out

    def _render(self, cols: list[list[str]], quote: bool) -> bytes:
        k = len(cols[0])
        if quote:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
            for i in range(k):
                writer.writerow(self._full_row(cols, i))
            return buffer.getvalue().encode("ascii")
        # One list holding every row's values and the text between them, joined once:
        # a copy of a prepared template with the values assigned column by column.
        pieces = self._pieces
        m = len(cols)
        step = 2 * m
        if len(self._template) < step * k:
            row = []
            for j in range(m):
                row += ["", pieces[j + 1]]
            row[-1] = pieces[-1] + pieces[0]
            self._template = row * k
        flat = self._template[: step * k]
        flat[-1] = pieces[-1]
        for j, col in enumerate(cols):
            flat[2 * j :: step] = col
        return (pieces[0] + "".join(flat)).encode("ascii")

    def finish(self) -> list[Problem]:
        """File-level problems, added to the log; returns the log's kept problems."""
        file_problems: list[Problem] = []
        if self.rows == 0:
            file_problems.append(
                Problem(
                    None,
                    None,
                    "empty_file",
                    "the study export has no participant rows: nothing to send",
                )
            )
        if self.rows > self.profile.max_rows:
            file_problems.append(
                Problem(
                    None,
                    None,
                    "too_many_rows",
                    f"{self.rows} rows, NHS England accepts at most {self.profile.max_rows} "
                    "per file: split the export and build one file per part",
                )
            )
        self.log.extend(file_problems)
        return list(self.log.problems)


# --- rendering stored rows ------------------------------------------------------------------


def header_line(profile: Profile) -> bytes:
    return (",".join(profile.header) + "\r\n").encode("ascii")


def render_rows(
    profile: Profile, rows: Iterable[Mapping[str, str]], action: str
) -> Iterator[bytes]:
    """The NHS file for ``rows`` (keyed by field name; missing fields are empty) with every
    status set to ``action``: the header line, then one CRLF-terminated line per row,
    minimally quoted, ASCII. Values are written as given (they came from a built file)."""
    if action not in profile.status_values:
        raise CohortSourceError(
            f"action {action!r} is not one of {', '.join(profile.status_values)}"
        )
    names = profile.field_names
    status = profile.status_field
    yield header_line(profile)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    for row in rows:
        writer.writerow([action if name == status else row.get(name, "") or "" for name in names])
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        try:
            yield text.encode("ascii")
        except UnicodeEncodeError:
            raise CohortSourceError(
                f"row for {row.get(profile.unique_field, '?')!r} has non-ASCII text",
                hint="stored rows should come from a built file; rebuild them",
            ) from None
