"""Cohort profiles: the built-in layouts and clear errors for an operator's own file."""

from __future__ import annotations

from pathlib import Path

import pytest

from seftpilot.adapters.cohort_files import builtin_profiles, load_profile
from seftpilot.core.cohort_profile import parse_profile_text
from seftpilot.errors import ProfileError

LEGACY_HEADER = [
    "UNIQUE_REFERENCE",
    "NHS_NO",
    "FAMILY_NAME",
    "GIVEN_NAME",
    "OTHER_GIVEN_NAME",
    "GENDER",
    "DATE_OF_BIRTH",
    "POSTCODE",
    "DATE_OF_DEATH",
    "ADDRESS_LINE1",
    "ADDRESS_LINE2",
    "ADDRESS_LINE3",
    "ADDRESS_LINE4",
    "ADDRESS_LINE5",
    "ADDRESS_DATE",
    "GP_PRACTICE_CODE",
    "NHAIS_POSTING_ID",
    "AS_AT_DATE",
    "LOCAL_PATIENT_ID",
    "INTERNAL_ID",
    "TELEPHONE_NUMBER",
    "MOBILE_NUMBER",
    "EMAIL_ADDRESS",
    "STATUS",
]


def test_legacy_profile_is_the_24_columns_of_nhs_cohort_md() -> None:
    profile = load_profile()
    assert profile.name == "mps-legacy-24"
    assert list(profile.header) == LEGACY_HEADER
    assert profile.file_name("NIC-402963-P0Y5D") == "NIC-402963-P0Y5D.csv"
    assert profile.max_rows == 1_000_000
    assert profile.date_format == "YYYYMMDD"
    assert profile.spec("GENDER").allowed_values == ("0", "1", "2", "9")
    assert profile.spec("UNIQUE_REFERENCE").max_length == 100
    assert profile.spec("POSTCODE").max_length == 8
    assert profile.confirmed


def test_pve_profile_is_marked_unconfirmed() -> None:
    assert set(builtin_profiles()) >= {"mps-legacy-24", "pve"}
    pve = load_profile("pve")
    assert not pve.confirmed and "UNCONFIRMED" in pve.description
    assert pve.date_format == "YYYY/MM/DD"
    assert ("PERSON_MIN_DATE", "PERSON_MAX_DATE") in pve.date_order
    assert {"ADDRESS_LINE1", "ADDRESS_LINE5", "STATUS"} <= set(pve.field_names)


def test_operator_pastes_the_accepted_header_over_a_base(tmp_path: Path) -> None:
    pasted = ",".join(["UNIQUE REFERENCE", *LEGACY_HEADER[1:-1], "ACTION"])
    own = tmp_path / "ours.yaml"
    own.write_text(f"base: mps-legacy-24\nname: ours\nheader: {pasted}\n")
    profile = load_profile(own)
    assert profile.header[0] == "UNIQUE REFERENCE" and profile.header[-1] == "ACTION"
    assert profile.field_names[0] == "UNIQUE_REFERENCE"  # rules still keyed by field name
    assert profile.source == str(own)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: x\nfields: []\n", "fields"),
        ("name: x\ncolour: red\nfields: [{name: A}]\n", "colour"),
        ("name: x\nfields: [{name: A, kind: dat}]\n", "fields[0].kind"),
        ("name: x\nfields: [{name: A, max_length: -1}]\n", "fields[0].max_length"),
        ("name: x\nfields: [{name: A}, {name: B, header: A}]\n", "fields[1].header"),
        ("name: x\ndate_format: DD/MM/YY\nfields: [{name: A}]\n", "date_format"),
        ("name: x\nfile_name: cohort.csv\nfields: [{name: A}]\n", "file_name"),
        (
            "name: x\nfields: [{name: A, kind: reference, allowed_characters: 'A-Z,'}]\n",
            "allowed_characters",
        ),
        ("name: x\nfields: [{name: UNIQUE_REFERENCE, kind: reference}]\n", "status_field"),
        ("fields: [{name: A\n", "line"),
    ],
)
def test_profile_mistakes_name_the_file_and_key(text: str, key: str) -> None:
    with pytest.raises(ProfileError) as exc:
        parse_profile_text(text, "site/profile.yaml")
    assert "site/profile.yaml" in str(exc.value)
    assert key in str(exc.value)


def test_unknown_profile_name_lists_the_built_in_ones(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as exc:
        load_profile(tmp_path / "nope.yaml")
    assert "mps-legacy-24" in (exc.value.hint or "")
    wrong = tmp_path / "short.yaml"
    wrong.write_text("base: mps-legacy-24\nheader: A,B,C\n")
    with pytest.raises(ProfileError, match="has 3 names but the profile has 24 columns"):
        load_profile(wrong)
