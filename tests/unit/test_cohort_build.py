"""cohort build (core): normalising study exports and rendering the exact NHS bytes."""

from __future__ import annotations

import csv
import io
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seftpilot.adapters.cohort_files import load_profile
from seftpilot.core.cohort import (
    CohortBuilder,
    render_rows,
    resolve_columns,
    split_simple_block,
    validate_bytes,
)
from seftpilot.core.cohort_profile import Profile
from seftpilot.core.cohort_rules import (
    diagnose_row,
    normalise_gender,
    normalise_postcode,
    normalise_text,
    normalise_value,
    parse_source_date,
)
from seftpilot.core.synthetic import EXPORT_HEADER, export_rows, synthetic_nhs_numbers
from seftpilot.errors import CohortSourceError

LEGACY = load_profile()
PVE = load_profile("pve")
NIC = "NIC-402963-P0Y5D"
N = synthetic_nhs_numbers(10, seed=5)


def build(header: list[str], rows: list[list[str]], action: str = "ADD", **kw: object):  # type: ignore[no-untyped-def]
    builder = CohortBuilder(LEGACY, action=action, source_header=header, **kw)  # type: ignore[arg-type]
    data = builder.header_bytes() + builder.process(rows)
    return data, builder.finish(), builder


@pytest.mark.parametrize(
    "text",
    [
        "1980-01-05",
        "1980-01-05T00:00:00",
        "1980-01-05 13:45:00Z",
        "19800105",
        "1980/01/05",
        "05/01/1980",
        "5/1/1980",
        "05-01-1980",
        "05.01.1980",
        "5 Jan 1980",
        "05-Jan-1980",
        "5th January 1980",
        "January 5, 1980",
        "Jan 5 1980",
    ],
)
def test_common_date_forms_mean_5_january_1980(text: str) -> None:
    assert parse_source_date(text) == date(1980, 1, 5)


@pytest.mark.parametrize("text", ["", "1980", "31/02/1980", "05/01/80", "13/13/1980", "5 Foo 1980"])
def test_ambiguous_or_impossible_dates_are_not_guessed(text: str) -> None:
    assert parse_source_date(text) is None


@pytest.mark.parametrize(
    ("word", "code"),
    [
        ("Male", "1"),
        ("m", "1"),
        (" FEMALE ", "2"),
        ("f", "2"),
        ("Unknown", "0"),
        ("not known", "0"),
        ("Not  Specified", "9"),
        ("indeterminate", "9"),
        ("2", "2"),
        ("other", "other"),
    ],
)
def test_sex_and_gender_words_become_codes(word: str, code: str) -> None:
    assert normalise_gender(word) == code


def test_postcodes_and_names_are_normalised() -> None:
    assert normalise_postcode(" sw1a1aa ") == "SW1A 1AA"
    assert normalise_postcode("ls1  4ap") == "LS1 4AP"
    assert normalise_text("Zoë") == "Zoe"
    assert normalise_text("Łukasz  Ó\u00a0Briain\t") == "Lukasz O Briain"
    assert normalise_text("SMITH") == "SMITH"


@given(st.text(max_size=30))
def test_normalised_text_is_always_printable_ascii_and_stable(value: str) -> None:
    once = normalise_text(value)
    assert once.isascii() and once.isprintable()
    assert normalise_text(once) == once


def test_headers_match_in_any_case_order_and_spacing_and_extras_are_ignored() -> None:
    header = ["site", "date of birth", "Nhs-Number", " unique reference ", "SEX", "Surname"]
    columns = resolve_columns(LEGACY, header)
    assert columns == {
        "DATE_OF_BIRTH": 1,
        "NHS_NO": 2,
        "UNIQUE_REFERENCE": 3,
        "GENDER": 4,
        "FAMILY_NAME": 5,
    }


def test_mapping_names_source_columns_and_mistakes_are_explained() -> None:
    header = ["study_id", "nhs", "dob"]
    mapping = {"study_id": "UNIQUE_REFERENCE", "dob": "DATE_OF_BIRTH"}
    assert resolve_columns(LEGACY, header, mapping)["UNIQUE_REFERENCE"] == 0
    with pytest.raises(CohortSourceError, match="not a field of profile"):
        resolve_columns(LEGACY, header, {"study_id": "STUDY"})
    with pytest.raises(CohortSourceError, match="does not have"):
        resolve_columns(LEGACY, header, {"participant": "UNIQUE_REFERENCE"})
    with pytest.raises(CohortSourceError, match="no column for UNIQUE_REFERENCE") as exc:
        resolve_columns(LEGACY, ["id", "nhs", "dob"])
    assert "column_mapping" in (exc.value.hint or "")
    with pytest.raises(CohortSourceError, match="two source columns could be NHS_NO"):
        resolve_columns(LEGACY, ["UNIQUE_REFERENCE", "NHS_NO", "NHS Number", "DOB"])


def test_build_normalises_a_messy_export_into_a_valid_file() -> None:
    header = [
        "Unique Reference",
        "NHS Number",
        "Surname",
        "Forename",
        "Sex",
        "DOB",
        "Postcode",
        "Site",
    ]
    rows = [
        [
            "S-1",
            f"{N[0][:3]} {N[0][3:6]} {N[0][6:]}",
            "Smith",
            "Zoë",
            "Female",
            "1980-01-05",
            "sw1a1aa",
            "X",
        ],
        [
            "S-2",
            f"{N[1][:3]}-{N[1][3:6]}-{N[1][6:]}",
            "O'Neil",
            "Sean",
            "M",
            "5 Jan 1981",
            "LS1 4AP",
            "Y",
        ],
        ["S-3", N[2], "Jones", "Ann", "not known", "05/01/1982", "", "Z"],
    ]
    data, problems, builder = build(header, rows)
    assert problems == []
    text = data.decode("ascii")
    assert text.splitlines()[1:] == [
        f"S-1,{N[0]},Smith,Zoe,,2,19800105,SW1A 1AA,,,,,,,,,,,,,,,,ADD",
        f"S-2,{N[1]},O'Neil,Sean,,1,19810105,LS1 4AP,,,,,,,,,,,,,,,,ADD",
        f"S-3,{N[2]},Jones,Ann,,0,19820105,,,,,,,,,,,,,,,,,ADD",
    ]
    assert validate_bytes(LEGACY, [data]).valid
    assert builder.rows == 3


def test_build_reports_problems_by_source_row_and_column() -> None:
    header = ["UNIQUE_REFERENCE", "NHS_NO", "DATE_OF_BIRTH", "GENDER"]
    rows = [
        ["A1", N[0], "1980-01-05", "F"],
        ["A2", "9.43E+09", "1980-01-05", "F"],
        ["A1", N[1], "31/02/1980", "F"],
        ["A4", N[2], "1980-01-05", "robot"],
        ["A5", N[3]],
    ]
    _, problems, _ = build(header, rows)
    got = [(p.row, p.column, p.code) for p in problems]
    assert got == [
        (2, "NHS_NO", "invalid_nhs_number"),
        (3, "DATE_OF_BIRTH", "incorrect_format_for_date_of_birth"),
        (3, "UNIQUE_REFERENCE", "unique_reference_duplicate"),
        (4, "GENDER", "invalid_gender"),
        (5, None, "wrong_column_count"),
        (5, "DATE_OF_BIRTH", "empty_date_of_birth"),
    ]
    assert "Excel" in problems[0].message


def test_values_with_commas_or_quotes_are_quoted_minimally() -> None:
    header = ["UNIQUE_REFERENCE", "NHS_NO", "DATE_OF_BIRTH", "FAMILY_NAME", "ADDRESS_LINE1"]
    rows = [["A1", N[0], "19800105", 'SMITH, "JR"', "1 High St"]]
    data, problems, _ = build(header, rows)
    assert problems == []
    line = data.split(b"\r\n")[1]
    assert line.startswith(f'A1,{N[0]},"SMITH, ""JR""",,,,19800105,,,1 High St,'.encode())
    parsed = next(csv.reader(io.StringIO(line.decode())))
    assert parsed[2] == 'SMITH, "JR"'


def test_render_rows_bytes_exactly() -> None:
    out = list(
        render_rows(
            LEGACY,
            [{"UNIQUE_REFERENCE": "A1", "NHS_NO": N[0], "DATE_OF_BIRTH": "19800105"}],
            "DELETE",
        )
    )
    assert out[0] == (",".join(LEGACY.header) + "\r\n").encode()
    assert out[1] == f"A1,{N[0]},,,,,19800105,{',' * 16}DELETE\r\n".encode()
    data = b"".join(out)
    assert not data.startswith(b"\xef\xbb\xbf")
    assert data.endswith(b"DELETE\r\n")
    assert data.count(b"\r\n") == data.count(b"\n") == 2
    with pytest.raises(CohortSourceError):
        list(render_rows(LEGACY, [], "REMOVE"))


def test_synthetic_export_builds_clean_and_deterministically() -> None:
    rows = list(export_rows(2000, seed=2, messy=0.3))
    assert rows == list(export_rows(2000, seed=2, messy=0.3))
    data, problems, _ = build(list(EXPORT_HEADER), rows)
    assert problems == []
    assert validate_bytes(LEGACY, [data]).valid


def test_build_batches_give_the_same_bytes_as_one_batch() -> None:
    rows = list(export_rows(300, seed=4, messy=0.5))
    whole, _, _ = build(list(EXPORT_HEADER), rows)
    builder = CohortBuilder(LEGACY, action="ADD", source_header=list(EXPORT_HEADER))
    parts = builder.header_bytes() + b"".join(
        builder.process(rows[i : i + 37]) for i in range(0, 300, 37)
    )
    assert parts == whole


def test_build_refuses_an_unknown_action_and_empty_exports_are_a_problem() -> None:
    with pytest.raises(CohortSourceError):
        CohortBuilder(LEGACY, action="add", source_header=list(EXPORT_HEADER))
    builder = CohortBuilder(LEGACY, action="ADD", source_header=list(EXPORT_HEADER))
    assert [p.code for p in builder.finish()] == ["empty_file"]


# --- the block path (no csv) gives exactly what the csv path gives --------------------------

_SOURCE_VALUES = [
    "",
    "S-1",
    "S-2",
    N[0],
    f"{N[1][:3]} {N[1][3:6]} {N[1][6:]}",
    f"{N[2][:3]}-{N[2][3:6]}-{N[2][6:]}",
    "9.43E+09",
    "Zoë",
    " Ann  Marie ",
    "O'Neil",
    "Female",
    "m",
    "robot",
    "1980-01-05",
    "05/01/1980",
    "31/02/1980",
    "sw1a1aa",
    "LS1 4AP",
    "ls1 4ap",
    "123456789",
    "X" * 41,
    "a,b",
    'say "hi"',
    "two\nlines",
    "tab\there",
    "cr\rhere",
]


def _csv_text(rows: list[list[str]], eol: str = "\n") -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=eol).writerows(rows)
    return buffer.getvalue()


@given(st.lists(st.lists(st.sampled_from(_SOURCE_VALUES), min_size=2, max_size=4), max_size=8))
def test_simple_split_is_what_csv_reads_or_declines(rows: list[list[str]]) -> None:
    for eol in ("\n", "\r\n"):
        text = _csv_text(rows, eol)
        got = split_simple_block(text, 3, [0, 2, 1])
        if got is None:
            continue  # csv reads it instead
        parsed = list(csv.reader(io.StringIO(text, newline="")))
        assert all(len(r) == 3 for r in parsed)
        assert got == [[r[i] for r in parsed] for i in (0, 2, 1)]
    plain = [[v for v in r if v and not set(v) & set(',"\r\n')] for r in rows]
    plain = [r + ["x"] * (3 - len(r)) for r in plain if len(r) <= 3]
    if plain:  # what it must not decline: plain values, one line each, LF or CRLF
        for eol in ("\n", "\r\n"):
            assert split_simple_block(_csv_text(plain, eol), 3, [0, 1, 2]) is not None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from(_SOURCE_VALUES), min_size=len(EXPORT_HEADER) - 1, max_size=9),
        min_size=1,
        max_size=10,
    ),
    st.sampled_from(["\n", "\r\n"]),
)
def test_block_and_csv_paths_render_and_report_the_same(rows: list[list[str]], eol: str) -> None:
    header = list(EXPORT_HEADER)
    text = _csv_text(rows, eol)
    by_csv = CohortBuilder(LEGACY, action="ADD", source_header=header)
    expected = by_csv.process(list(csv.reader(io.StringIO(text, newline=""))))
    by_block = CohortBuilder(LEGACY, action="ADD", source_header=header)
    got = by_block.process_text(text)
    if got is None:  # declined: quotes, line breaks in values, a short row
        assert (
            '"' in text
            or "\r" in text.replace("\r\n", "")
            or any(len(r) != len(header) for r in rows)
        )
        return
    assert got == expected
    assert by_block.finish() == by_csv.finish()
    assert by_block.rows == by_csv.rows == len(rows)


def test_block_path_on_a_synthetic_export_matches_csv_rows() -> None:
    rows = list(export_rows(3000, seed=9, messy=0.4))
    text = _csv_text(rows, "\r\n")
    by_csv = CohortBuilder(LEGACY, action="DELETE", source_header=list(EXPORT_HEADER))
    expected = by_csv.process(rows)
    by_block = CohortBuilder(LEGACY, action="DELETE", source_header=list(EXPORT_HEADER))
    assert by_block.process_text(text) == expected
    assert by_block.finish() == by_csv.finish() == []


def _reference_build(
    header: list[str], rows: list[list[str]], action: str, profile: Profile = LEGACY
) -> tuple[bytes, set[tuple[int | None, str | None, str]]]:
    """Row at a time, straight from the rules: what the column-wise builder must match."""
    columns = resolve_columns(profile, header)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    problems: set[tuple[int | None, str | None, str]] = set()
    seen: set[str] = set()
    for n, source_row in enumerate(rows, start=1):
        if not source_row:
            continue
        raw = (source_row + [""] * len(header))[: len(header)]
        if len(source_row) != len(header):
            problems.add((n, None, "wrong_column_count"))
        values = [
            action
            if spec.name == profile.status_field
            else normalise_value(profile, spec, raw[columns[spec.name]])
            if spec.name in columns
            else ""
            for spec in profile.fields
        ]
        problems |= {(p.row, p.column, p.code) for p in diagnose_row(profile, values, n)}
        ref = values[0]
        if ref in seen:
            problems.add((n, "UNIQUE_REFERENCE", "unique_reference_duplicate"))
        elif ref:
            seen.add(ref)
        writer.writerow(values)
    return buffer.getvalue().encode("ascii"), problems


# Source values by EXPORT_HEADER column: fixable ones, and faults. A row has at most one
# fault, so that a column-wide check that misses it is not covered up by another value
# of the same row sending the row to diagnose_row anyway.
_GOOD: list[list[str]] = [
    ["S-1", "S-2", "S-3", "A.b_c/9", "x" * 100],
    [N[0], f"{N[1][:3]} {N[1][3:6]} {N[1][6:]}", f"{N[2][:3]}-{N[2][3:6]}-{N[2][6:]}", ""],
    ["SMITH", "O'Neil", "Zoë", " Ann  Marie ", "X" * 40, "tab\there"],
    ["ANN", "Łukasz", "Siobhán", "jo"],
    ["Female", "m", "2", "not known", "Unknown", "9"],
    ["1980-01-05", "05/01/1980", "5 Jan 1980", "19800105", "2000-02-29"],
    ["sw1a1aa", "LS1 4AP", "ls1 4ap", "EC1A  1BB", "M1 1AE"],
    ["LIV01", "", "a,b"],
    ["2024-01-01", "", 'say "hi"'],
]
_FAULTS: list[list[str]] = [
    ["", "A 1", "x" * 101, "a,b", "Zoë"],
    ["9.43E+09", "943476591", "9434765918", "94347659190"],
    ["X" * 41, "a,b", 'say "hi"', "two\nlines", " " * 3],
    ["X" * 41, "  "],
    ["robot", "3", "a,b"],
    # ISO-shaped but not valid (the one-replace ISO path must send them to the rules)
    [
        "31/02/1980",
        "",
        "1799-12-31",
        "2100-01-01",
        "05/01/80",
        "1980-02-30",
        "1980-13-01",
        "2001-02-29",
        "1980-00-10",
        "1980-04-31",
        "0000-01-01",
        "1980-1-5",
        "1980-01-05x",
    ],
    ["123456789", "a,b", "sw1a 1aa extra"],
    [],
    [],
]
_source_row = st.tuples(
    st.tuples(*(st.sampled_from(values) for values in _GOOD)),
    st.none() | st.tuples(st.integers(0, 6), st.integers(0, 99)),
)


@pytest.mark.parametrize("profile", [LEGACY, PVE], ids=lambda p: p.name)
@settings(max_examples=200, deadline=None)
@given(st.lists(_source_row, min_size=1, max_size=12))
def test_column_wise_build_matches_the_rules_row_by_row(
    profile: Profile,
    drawn: list[tuple[tuple[str, ...], tuple[int, int] | None]],
) -> None:
    """Both built-in profiles: YYYYMMDD and YYYY/MM/DD dates take the ISO column path
    with different separators."""
    rows = []
    for values, fault in drawn:
        row = list(values)
        if fault is not None:
            column, pick = fault
            row[column] = _FAULTS[column][pick % len(_FAULTS[column])]
        rows.append(row)
    header = list(EXPORT_HEADER)
    expected_bytes, expected = _reference_build(header, rows, "ADD", profile)
    text = _csv_text(rows, "\r\n")
    for use_text in (False, True):
        builder = CohortBuilder(profile, action="ADD", source_header=header)
        data = builder.process_text(text) if use_text else builder.process(rows)
        if data is None:
            continue
        assert data == expected_bytes
        assert {(p.row, p.column, p.code) for p in builder.finish()} == expected


def test_a_wrong_check_digit_among_clean_numbers_is_found_by_row() -> None:
    rows = [[f"S-{i}", n, "1980-01-05"] for i, n in enumerate(synthetic_nhs_numbers(500, seed=8))]
    rows[321][1] = rows[321][1][:9] + str((int(rows[321][1][9]) + 1) % 10)
    rows[400][1] = f"{rows[400][1][:3]} {rows[400][1][3:]}"  # fixable: still packed
    header = ["UNIQUE_REFERENCE", "NHS_NO", "DOB"]
    for use_text in (False, True):
        builder = CohortBuilder(LEGACY, action="ADD", source_header=header)
        data = builder.process_text(_csv_text(rows)) if use_text else builder.process(rows)
        assert data is not None
        assert [(p.row, p.column, p.code) for p in builder.finish()] == [
            (322, "NHS_NO", "invalid_nhs_number")
        ]
