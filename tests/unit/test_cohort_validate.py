"""cohort validate (core): every problem code caught, at the right row and column.

The validator is fed bytes, as the adapter feeds it from disk; rows count from 1 after
the header (row 0).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seftpilot.adapters.cohort_files import load_profile
from seftpilot.core.cohort import CohortValidator, ValidationReport, render_rows, validate_bytes
from seftpilot.core.cohort_profile import FieldSpec, Profile, derive_profile_data, parse_profile
from seftpilot.core.cohort_rules import diagnose_row
from seftpilot.core.synthetic import synthetic_nhs_numbers

LEGACY = load_profile("mps-legacy-24")
PVE = load_profile("pve")
NIC = "NIC-402963-P0Y5D"
NUMBERS = synthetic_nhs_numbers(50, seed=11)


def row(i: int, **values: str) -> dict[str, str]:
    base = {
        "UNIQUE_REFERENCE": f"SYN-{i:04d}",
        "NHS_NO": NUMBERS[i],
        "FAMILY_NAME": "SMITH",
        "GIVEN_NAME": "JANE",
        "GENDER": "2",
        "DATE_OF_BIRTH": "19800105",
        "POSTCODE": "LS1 4AP",
    }
    base.update(values)
    return base


def lines(profile: Profile, rows: Iterable[dict[str, str]], action: str = "ADD") -> bytes:
    return b"".join(render_rows(profile, rows, action))


def check(data: bytes, profile: Profile = LEGACY, **kw: str) -> ValidationReport:
    return validate_bytes(profile, [data], file_name=kw.get("name", f"{NIC}.csv"), nic=NIC)


def codes(report: ValidationReport) -> list[tuple[int | None, str | None, str]]:
    return [(p.row, p.column, p.code) for p in report.problems]


def test_a_clean_file_is_valid() -> None:
    report = check(lines(LEGACY, [row(i) for i in range(10)]))
    assert report.valid, report.problems
    assert (report.rows, report.action, report.invalid_rows) == (10, "ADD", 0)
    assert report.to_json()["problems"] == []


@pytest.mark.parametrize(
    ("values", "column", "code"),
    [
        ({"NHS_NO": "9434765918"}, "NHS_NO", "invalid_nhs_number"),
        ({"NHS_NO": "9.43E+09"}, "NHS_NO", "invalid_nhs_number"),
        ({"NHS_NO": "", "POSTCODE": ""}, None, "insufficient_information"),
        ({"UNIQUE_REFERENCE": ""}, "UNIQUE_REFERENCE", "empty_unique_reference"),
        ({"UNIQUE_REFERENCE": "SYN 01"}, "UNIQUE_REFERENCE", "invalid_unique_reference"),
        ({"UNIQUE_REFERENCE": "R" * 101}, "UNIQUE_REFERENCE", "unique_reference_too_long"),
        ({"GENDER": "F"}, "GENDER", "invalid_gender"),
        ({"DATE_OF_BIRTH": "1980-01-05"}, "DATE_OF_BIRTH", "incorrect_format_for_date_of_birth"),
        ({"DATE_OF_BIRTH": "19800230"}, "DATE_OF_BIRTH", "incorrect_format_for_date_of_birth"),
        ({"DATE_OF_BIRTH": "17990101"}, "DATE_OF_BIRTH", "incorrect_format_for_date_of_birth"),
        ({"DATE_OF_BIRTH": ""}, "DATE_OF_BIRTH", "empty_date_of_birth"),
        ({"DATE_OF_DEATH": "31/12/2020"}, "DATE_OF_DEATH", "incorrect_format_for_date_of_death"),
        ({"FAMILY_NAME": "X" * 41}, "FAMILY_NAME", "family_name_too_long"),
        ({"GIVEN_NAME": "X" * 41}, "GIVEN_NAME", "given_name_too_long"),
        ({"OTHER_GIVEN_NAME": "X" * 101}, "OTHER_GIVEN_NAME", "other_given_name_too_long"),
        ({"POSTCODE": "LS1 4AP 99"}, "POSTCODE", "postcode_too_long"),
        ({"FAMILY_NAME": "O'BRIEN\tX"}, "FAMILY_NAME", "control_character"),
        ({"ADDRESS_LINE1": "1 High St\r\nLeeds"}, "ADDRESS_LINE1", "line_break_in_value"),
    ],
)
def test_each_row_problem_is_caught_with_row_and_column(
    values: dict[str, str], column: str | None, code: str
) -> None:
    rows = [row(0), row(1), row(2, **values), row(3)]
    report = check(lines(LEGACY, rows))
    assert not report.valid
    assert (3, column, code) in codes(report)
    assert report.invalid_rows == 1
    assert report.rows == 4
    assert all(p.message for p in report.problems)


def test_leap_day_is_a_date_and_29_february_1900_is_not() -> None:
    good = check(lines(LEGACY, [row(0, DATE_OF_BIRTH="20000229")]))
    assert good.valid
    bad = check(lines(LEGACY, [row(0, DATE_OF_BIRTH="19000229")]))
    assert codes(bad) == [(1, "DATE_OF_BIRTH", "incorrect_format_for_date_of_birth")]


def test_status_problems() -> None:
    data = lines(LEGACY, [row(0), row(1)]).replace(b",ADD\r\n", b",add\r\n", 1)
    data += lines(LEGACY, [row(2)]).split(b"\r\n", 1)[1].replace(b",ADD\r\n", b",\r\n")
    report = check(data)
    assert (1, "STATUS", "invalid_status") in codes(report)
    assert "capitals" in report.problems[0].message
    assert (3, "STATUS", "empty_status") in codes(report)


def test_duplicates_and_added_and_deleted() -> None:
    adds = lines(LEGACY, [row(0), row(1), row(0)])
    deletes = lines(LEGACY, [row(1)], "DELETE").split(b"\r\n", 1)[1]
    report = check(adds + deletes)
    got = codes(report)
    assert (3, "UNIQUE_REFERENCE", "unique_reference_duplicate") in got
    assert (4, "UNIQUE_REFERENCE", "added_and_deleted") in got
    assert (4, "STATUS", "mixed_status") in got
    assert report.action is None
    assert "3 ADD, 1 DELETE" in next(p for p in report.problems if p.code == "mixed_status").message


def test_an_action_change_in_a_later_block_is_mixed_status() -> None:
    """Each block is fed on its own (the fast path settles a block's action from the
    previous block's first): a DELETE block after ADD blocks is still caught, at its row."""
    adds = lines(LEGACY, [row(i) for i in range(20)])
    deletes = lines(LEGACY, [row(i) for i in range(20, 30)], "DELETE").split(b"\r\n", 1)[1]
    validator = CohortValidator(LEGACY, file_name=f"{NIC}.csv", nic=NIC)
    for piece in [*adds.splitlines(keepends=True), deletes]:
        validator.feed(piece)
    report = validator.finish()
    assert (21, "STATUS", "mixed_status") in codes(report)
    assert (
        "20 ADD, 10 DELETE" in next(p for p in report.problems if p.code == "mixed_status").message
    )
    assert report.action is None


def test_duplicates_found_across_blocks_fed_separately() -> None:
    data = lines(LEGACY, [row(i) for i in range(5)] + [row(2)])
    validator = CohortValidator(LEGACY, file_name=f"{NIC}.csv", nic=NIC)
    for i in range(0, len(data), 97):
        validator.feed(data[i : i + 97])
    assert codes(validator.finish()) == [(6, "UNIQUE_REFERENCE", "unique_reference_duplicate")]


def test_lf_line_endings_are_one_file_problem_with_the_fix() -> None:
    data = lines(LEGACY, [row(0), row(1)]).replace(b"\r\n", b"\n")
    report = check(data)
    assert codes(report) == [(None, None, "wrong_line_endings")]
    assert "Windows (CRLF)" in report.problems[0].message
    assert report.rows == 2


def test_missing_final_line_ending_is_caught() -> None:
    data = lines(LEGACY, [row(0), row(1)])[:-2]
    report = check(data)
    assert codes(report) == [(None, None, "wrong_line_endings")]
    assert "last line" in report.problems[0].message
    assert report.rows == 2


def test_classic_mac_line_endings_are_read_and_reported() -> None:
    data = lines(LEGACY, [row(0), row(1)]).replace(b"\r\n", b"\r")
    report = check(data)
    assert codes(report) == [(None, None, "wrong_line_endings")]
    assert report.rows == 2


def test_byte_order_mark() -> None:
    report = check(b"\xef\xbb\xbf" + lines(LEGACY, [row(0)]))
    assert codes(report) == [(None, None, "byte_order_mark")]


def test_non_ascii_and_undecodable_bytes_name_row_and_column() -> None:
    data = lines(LEGACY, [row(0), row(1)])
    utf8 = data.replace(b"JANE", "ZOË".encode(), 2)
    report = check(utf8)
    assert (1, "GIVEN_NAME", "non_ascii") in codes(report)
    assert "Zoë -> Zoe" in report.problems[0].message
    latin1 = data.replace(b"SMITH", "SMÏTH".encode("latin-1"), 1)
    report = check(latin1)
    assert codes(report) == [(1, "FAMILY_NAME", "non_ascii")]
    assert "not UTF-8" in report.problems[0].message


def test_utf16_file_is_reported_not_crashed_on() -> None:
    report = check(lines(LEGACY, [row(0)]).decode().encode("utf-16"))
    assert "non_ascii" in report.problem_counts
    assert "UTF-16" in report.problems[0].message
    assert "empty_file" not in report.problem_counts  # it said why already: not "empty" too


def test_wrong_column_count_per_row_and_blank_lines() -> None:
    data = lines(LEGACY, [row(0), row(1, FAMILY_NAME="SMITH, JR")])
    data = data.replace(b'"SMITH, JR"', b"SMITH, JR") + b"\r\n"
    report = check(data)
    assert (2, None, "wrong_column_count") in codes(report)
    assert (3, None, "wrong_column_count") in codes(report)
    assert "blank" in report.problems[-1].message


def test_quoted_values_are_fine() -> None:
    report = check(lines(LEGACY, [row(0, FAMILY_NAME="SMITH, JR", GIVEN_NAME='A "B"')]))
    assert report.valid, report.problems


def test_incorrect_headers_says_which_column() -> None:
    data = lines(LEGACY, [row(0)]).replace(b"UNIQUE_REFERENCE", b"UNIQUE REFERENCE", 1)
    report = check(data)
    assert codes(report) == [(0, "UNIQUE_REFERENCE", "incorrect_headers")]
    assert "'UNIQUE REFERENCE', expected 'UNIQUE_REFERENCE'" in report.problems[0].message


def test_wrong_filename_with_and_without_nic() -> None:
    data = lines(LEGACY, [row(0)])
    report = validate_bytes(LEGACY, [data], file_name="cohort.csv", nic=NIC)
    assert codes(report) == [(None, None, "wrong_filename")]
    assert f"{NIC}.csv" in report.problems[0].message
    other = validate_bytes(LEGACY, [data], file_name="NIC-111111-AAAAA.csv", nic=NIC)
    assert codes(other) == [(None, None, "wrong_filename")]
    assert validate_bytes(LEGACY, [data], file_name="NIC-111111-AAAAA.csv").valid


def test_empty_file_and_header_only() -> None:
    assert codes(check(b"")) == [(None, None, "empty_file")]
    header_only = check(lines(LEGACY, []))
    assert codes(header_only) == [(None, None, "empty_file")]
    assert "no participant rows" in header_only.problems[0].message


def test_too_many_rows_uses_the_profile_limit() -> None:
    data = derive_profile_data(
        {"name": "tiny", "fields": [{"name": "UNIQUE_REFERENCE", "kind": "reference"}]},
        {"max_rows": 3},
        "test",
    )
    data["fields"] = [
        {"name": "UNIQUE_REFERENCE", "kind": "reference", "required": True},
        {"name": "STATUS", "kind": "status", "required": True},
    ]
    tiny = parse_profile(data, "test")
    body = lines(tiny, [{"UNIQUE_REFERENCE": f"R{i}"} for i in range(4)])
    report = validate_bytes(tiny, [body])
    assert codes(report) == [(4, None, "too_many_rows")]
    assert report.rows == 4


def test_pve_dates_and_order() -> None:
    rows = [
        row(
            0,
            DATE_OF_BIRTH="1980/01/05",
            PERSON_MIN_DATE="2020/01/01",
            PERSON_MAX_DATE="2021/01/01",
        ),
        row(
            1,
            DATE_OF_BIRTH="1980/01/05",
            PERSON_MIN_DATE="2021/01/01",
            PERSON_MAX_DATE="2020/01/01",
        ),
        row(2, DATE_OF_BIRTH="1980/01/05", PERSON_MIN_DATE="20200101"),
    ]
    for r in rows:
        r["NHS_NUMBER"] = r.pop("NHS_NO")
    report = validate_bytes(PVE, [lines(PVE, rows)])
    assert codes(report) == [
        (2, "PERSON_MAX_DATE", "max_date_earlier_than_min_date"),
        (3, "PERSON_MIN_DATE", "incorrect_format_for_person_min_date"),
    ]


def test_share_of_invalid_rows_against_nhs_two_percent() -> None:
    rows = [row(i % 50, UNIQUE_REFERENCE=f"R{i}") for i in range(100)]
    rows[10]["GENDER"] = "X"
    one = check(lines(LEGACY, rows))
    assert (one.invalid_rows, one.invalid_share, one.nhs_threshold_exceeded) == (1, 0.01, False)
    rows[20]["GENDER"] = rows[30]["GENDER"] = "X"
    three = check(lines(LEGACY, rows))
    assert three.invalid_share == 0.03
    assert three.to_json()["nhs_threshold_exceeded"] is True


def test_problem_list_is_capped_but_counts_are_complete() -> None:
    rows = [row(i % 50, UNIQUE_REFERENCE=f"R{i}", GENDER="X") for i in range(30)]
    validator = CohortValidator(LEGACY, cap_per_code=5)
    validator.feed(lines(LEGACY, rows))
    report = validator.finish()
    assert report.problem_counts == {"invalid_gender": 30}
    assert len(report.problems) == 5
    assert report.to_json()["problems_truncated"] is True
    assert report.invalid_rows == 30


def test_a_line_that_never_ends_is_not_read_into_memory() -> None:
    validator = CohortValidator(LEGACY)
    validator.feed(lines(LEGACY, []))
    for _ in range(3):
        validator.feed(b"x" * 600_000)
    report = validator.finish()
    assert "line_too_long" in report.problem_counts


# --- the fast path never accepts what the rules reject ------------------------------------

values = {
    "UNIQUE_REFERENCE": st.sampled_from(["A1", "", "A 1", "x" * 101, "Z-9/1.2_3", "ÄB"]),
    "NHS_NO": st.sampled_from([NUMBERS[0], NUMBERS[1], "", "9434765918", "943476591", "9.43E+09"]),
    "FAMILY_NAME": st.sampled_from(["SMITH", "", "X" * 40, "X" * 41, "O'NEIL", "Zoë", " A "]),
    "GENDER": st.sampled_from(["0", "1", "2", "9", "", "3", "M"]),
    "DATE_OF_BIRTH": st.sampled_from(
        ["19800105", "20000229", "19000229", "19801301", "", "1980-01-05", "17991231", "20991231"]
    ),
    "POSTCODE": st.sampled_from(["LS1 4AP", "", "12345678", "123456789"]),
    "DATE_OF_DEATH": st.sampled_from(["", "20200431", "20200430"]),
    "STATUS": st.sampled_from(["ADD", "ADD", "DELETE", "", "add"]),
}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries(values), min_size=1, max_size=8))
def test_fast_and_slow_paths_agree(rows: list[dict[str, str]]) -> None:
    body = [
        ",".join(
            '"' + r.get(f, "") + '"' if "," in r.get(f, "") else r.get(f, "")
            for f in LEGACY.field_names
        )
        for r in rows
    ]
    data = ("\r\n".join([",".join(LEGACY.header), *body]) + "\r\n").encode("utf-8")
    report = validate_bytes(LEGACY, [data])
    expected = set()
    for i, r in enumerate(rows, start=1):
        full = [r.get(f, "") for f in LEGACY.field_names]
        expected |= {(p.row, p.column, p.code) for p in diagnose_row(LEGACY, full, i)}
    got = {
        (p.row, p.column, p.code)
        for p in report.problems
        if p.code not in ("unique_reference_duplicate", "added_and_deleted", "mixed_status")
    }
    assert got == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_any_chunking_gives_the_same_report(sizes: list[int]) -> None:
    rows = [row(i) for i in range(12)]
    rows[4]["GENDER"] = "7"
    rows[7]["UNIQUE_REFERENCE"] = rows[2]["UNIQUE_REFERENCE"]
    data = lines(LEGACY, rows).replace(b"\r\n", b"\n", 3)
    whole = validate_bytes(LEGACY, [data])
    chunks, pos = [], 0
    for size in sizes * (len(data) // sum(sizes) + 1):
        chunks.append(data[pos : pos + size])
        pos += size
    assert validate_bytes(LEGACY, chunks).to_json() == whole.to_json()


# Mostly valid rows with at most one thing wrong each: a block of such rows passes the
# whole-block byte checks, so the relaxed block regex (free text as [^,], "the rest are
# empty" runs of commas) is what decides, and must accept exactly what the rules accept.
def _good(spec: FieldSpec) -> list[str]:
    limit = spec.max_length or 50
    return {
        "reference": ["A1", "Z-9/1.2_3", "x" * limit],
        "nhs_number": [NUMBERS[0], NUMBERS[1], NUMBERS[2], ""],
        "gender": ["", "0", "1", "2", "9"],
        "date": ["", "19800105", "20000229", "20991231", "18000101"],
        "postcode": ["", "LS1 4AP", "A" * limit],
        "status": ["ADD", "ADD", "DELETE"],
    }.get(spec.kind, ["", "", "X", "O'NEIL", "1 HIGH ST", "A" * limit])


def _bad(spec: FieldSpec) -> list[str]:
    limit = spec.max_length or 50
    odd = ["Zoë", "a\tb", 'O"N', "A\rB"]
    return [
        *{
            "reference": ["", "A 1", "x" * (limit + 1), "ÄB"],
            "nhs_number": ["9434765918", "943476591", "9.43E+09", "94347659190"],
            "gender": ["3", "M", "00"],
            "date": ["19000229", "20200431", "1980-01-05", "17991231", "21000101", "1980010"],
            "postcode": ["A" * (limit + 1)],
            "status": ["", "add", "REMOVE"],
        }.get(spec.kind, ["A" * (limit + 1)] if spec.max_length else []),
        *odd,
    ]


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if '"' in value else value


_row_values = st.tuples(*(st.sampled_from(_good(spec)) for spec in LEGACY.fields))
_fault = st.none() | st.tuples(
    st.integers(0, len(LEGACY.fields) - 1),
    st.integers(0, 99),
    st.sampled_from(["value", "value", "value", "extra column", "missing column"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_row_values, st.integers(0, len(LEGACY.fields)), _fault), min_size=1, max_size=15
    )
)
def test_block_regex_accepts_exactly_what_the_rules_accept(
    rows: list[tuple[tuple[str, ...], int, tuple[int, int, str] | None]],
) -> None:
    records = []
    for values, filled, fault in rows:
        # optional fields after ``filled`` left empty, as in most built files
        fields = [
            v if i < filled or spec.required else ""
            for i, (v, spec) in enumerate(zip(values, LEGACY.fields, strict=True))
        ]
        if fault is not None:
            column, pick, kind = fault
            choices = _bad(LEGACY.fields[column])
            if kind == "value":
                fields[column] = choices[pick % len(choices)]
            elif kind == "extra column":
                fields.insert(column, "")
            else:
                del fields[column]
        records.append(fields)
    lines = [",".join(_quoted(v) for v in fields) for fields in records]
    data = ("\r\n".join([",".join(LEGACY.header), *lines]) + "\r\n").encode("utf-8")
    expected = set()
    for i, fields in enumerate(records, start=1):
        expected |= {(p.row, p.column, p.code) for p in diagnose_row(LEGACY, fields, i)}
    # Fed whole, one faulty line sends its block down the slow path; fed a line at a
    # time, every line is a block of its own and meets the block regex.
    for chunks in ([data], data.splitlines(keepends=True)):
        report = validate_bytes(LEGACY, chunks)
        got = {
            (p.row, p.column, p.code)
            for p in report.problems
            if p.row is not None
            and p.code not in ("unique_reference_duplicate", "added_and_deleted", "mixed_status")
        }
        assert got == expected
        assert report.rows == len(records)


def test_a_block_mixing_actions_still_finds_duplicates_and_the_first_change() -> None:
    rows = [row(i) for i in range(6)]
    data = lines(LEGACY, rows[:3]) + b"".join(
        lines(LEGACY, [r], "DELETE").split(b"\r\n", 1)[1] for r in [rows[3], rows[0], rows[4]]
    )
    report = check(data)
    assert codes(report) == [
        (5, "UNIQUE_REFERENCE", "added_and_deleted"),
        (4, "STATUS", "mixed_status"),
    ]
    assert report.action is None
