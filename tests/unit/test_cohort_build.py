"""cohort build (core): normalising study exports and rendering the exact NHS bytes."""

from __future__ import annotations

import csv
import io
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seftpilot.adapters.cohort_files import load_profile
from seftpilot.core.cohort import CohortBuilder, render_rows, resolve_columns, validate_bytes
from seftpilot.core.cohort_rules import (
    normalise_gender,
    normalise_postcode,
    normalise_text,
    parse_source_date,
)
from seftpilot.core.synthetic import EXPORT_HEADER, export_rows, synthetic_nhs_numbers
from seftpilot.errors import CohortSourceError

LEGACY = load_profile()
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
