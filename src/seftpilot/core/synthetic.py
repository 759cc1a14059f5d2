"""Synthetic participants: NHS numbers that can never belong to a person, and study exports.

Owns the only data the tests, the benchmark and the sandbox demo may use: NHS numbers from
the never-issued 999 range that pass modulus 11, and rows shaped like a study database's
export (headers a person would write, ISO dates, sex as words, a share of "messy" values
written the way real exports write them). Deterministic for a given seed. Pure: returns
values, never writes files.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from seftpilot.core.nhs_number import check_digit

EXPORT_HEADER: tuple[str, ...] = (
    "Unique Reference",
    "NHS Number",
    "Family Name",
    "Given Name",
    "Gender",
    "Date of Birth",
    "Postcode",
    "Site",
    "Consent Date",
)

_FAMILY = (
    "SMITH",
    "JONES",
    "TAYLOR",
    "BROWN",
    "WILLIAMS",
    "WILSON",
    "JOHNSON",
    "DAVIES",
    "PATEL",
    "WRIGHT",
    "KHAN",
    "EVANS",
    "THOMAS",
    "ROBERTS",
    "WALKER",
    "HUGHES",
    "GREEN",
    "LEWIS",
    "HALL",
    "CLARKE",
)
_GIVEN = (
    "OLIVIA",
    "AMELIA",
    "ISLA",
    "AVA",
    "MIA",
    "NOAH",
    "OLIVER",
    "GEORGE",
    "ARTHUR",
    "LEO",
    "MUHAMMAD",
    "HARRY",
    "OSCAR",
    "ARCHIE",
    "FREYA",
    "GRACE",
    "LILY",
    "SOPHIA",
    "JACK",
    "ROSIE",
)
_ACCENTED = ("Zoë", "José", "Siobhán", "Øyvind", "Renée", "Björn", "Chloé", "Łukasz")
_LETTERS = "ABCDEFGHJKLMNOPRSTUWYZ"
_SITES = ("LIV01", "LON02", "MAN03", "BIR04", "EDI05")


def synthetic_nhs_number(rng: random.Random) -> str:
    """A ten-digit number starting 999 (never issued to a person) that passes modulus 11."""
    while True:
        first_nine = f"999{rng.randrange(1_000_000):06d}"
        check = check_digit(first_nine)
        if check is not None:
            return f"{first_nine}{check}"


def synthetic_nhs_numbers(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    return [synthetic_nhs_number(rng) for _ in range(count)]


def _postcode(rng: random.Random) -> str:
    return (
        f"{rng.choice(_LETTERS)}{rng.choice(_LETTERS)}{rng.randrange(1, 99)} "
        f"{rng.randrange(10)}{rng.choice(_LETTERS)}{rng.choice(_LETTERS)}"
    )


def export_rows(count: int, seed: int = 0, messy: float = 0.05) -> Iterator[list[str]]:
    """``count`` rows in ``EXPORT_HEADER`` order, like a study database export.

    Clean rows have an ISO date of birth and sex as a word (what databases export); a
    ``messy`` share has what people and spreadsheets do instead: spaced or dashed NHS
    numbers, dd/mm/yyyy or "5 Jan 1980" dates, accented names, lower-case postcodes
    without a space. Every row is still fixable by ``cohort build``.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    for i in range(count):
        nhs = synthetic_nhs_number(rng)
        year, month, day = rng.randrange(1930, 2006), rng.randrange(1, 13), rng.randrange(1, 29)
        family, given = rng.choice(_FAMILY), rng.choice(_GIVEN)
        sex = rng.choice(("Male", "Female", "male", "female", "M", "F"))
        dob = f"{year:04d}-{month:02d}-{day:02d}"
        postcode = _postcode(rng)
        if rng.random() < messy:
            style = rng.randrange(4)
            if style == 0:
                nhs = f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}"
                dob = f"{day:02d}/{month:02d}/{year:04d}"
            elif style == 1:
                nhs = f"{nhs[:3]}-{nhs[3:6]}-{nhs[6:]}"
                dob = f"{day} {months[month - 1]} {year}"
            elif style == 2:
                given = rng.choice(_ACCENTED)
                dob = f"{day:02d}.{month:02d}.{year:04d}"
            else:
                postcode = postcode.replace(" ", "").lower()
                sex = rng.choice(("not known", "Unknown", "not specified"))
        yield [
            f"SYN-{seed:02d}-{i:07d}",
            nhs,
            family,
            given,
            sex,
            dob,
            postcode,
            rng.choice(_SITES),
            f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        ]
