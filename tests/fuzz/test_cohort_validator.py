"""Hostile input to `cohort validate`: whatever the bytes and however they are split into
pieces, the validator answers with a report (problems naming row and column, from the
fixed vocabulary) and never an exception; a line that never ends is cut at the line
limit with memory bounded, not buffered.
"""

from __future__ import annotations

import random
import resource
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seftpilot.adapters.cohort_files import load_profile, validate_file
from seftpilot.core.cohort import LINE_LIMIT, CohortValidator, ValidationReport, render_rows
from seftpilot.core.synthetic import synthetic_nhs_numbers

PROFILE = load_profile("mps-legacy-24")
NIC = "NIC-402963-P0Y5D"
NAME = f"{NIC}.csv"
NUMBERS = synthetic_nhs_numbers(40, seed=8)
VALID = b"".join(
    render_rows(
        PROFILE,
        [
            {
                "UNIQUE_REFERENCE": f"SYN-{i:04d}",
                "NHS_NO": n,
                "FAMILY_NAME": "SMITH",
                "GIVEN_NAME": "JANE",
                "GENDER": "2",
                "DATE_OF_BIRTH": "19800105",
                "POSTCODE": "LS1 4AP",
            }
            for i, n in enumerate(NUMBERS)
        ],
        "ADD",
    )
)
FAST = settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def validate(pieces: list[bytes], name: str = NAME) -> ValidationReport:
    validator = CohortValidator(PROFILE, file_name=name, nic=NIC)
    for piece in pieces:
        validator.feed(piece)
    report = validator.finish()
    assert isinstance(report, ValidationReport)
    doc = report.to_json()
    assert doc["valid"] == (not doc["problems"]) or doc["valid"] is False
    for problem in report.problems:
        assert problem.code and problem.code.replace("_", "").isalnum(), problem
        assert problem.message
        assert problem.row is None or problem.row >= 0
    return report


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@FAST
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=6))
def test_arbitrary_bytes_in_arbitrary_pieces(data: bytes, cuts: list[int]) -> None:
    whole = validate([data])
    pieces = validate(split(data, cuts))
    # How the bytes arrive must not change the answer.
    assert pieces.to_json() == whole.to_json()


def mutate(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randint(1, 5)):
        i = rnd.randrange(len(out) or 1)
        kind = rnd.randrange(6)
        if kind == 0:
            del out[i : i + rnd.randint(1, 60)]
        elif kind == 1:
            out[i:i] = rnd.choice(
                [b'"', b",", b"\r", b"\n", b"\r\n", b"\x00", b"\xef\xbb\xbf", b"\xff"]
            )
        elif kind == 2 and out:
            out[i % len(out)] = rnd.randrange(256)
        elif kind == 3:
            j = rnd.randrange(len(out) or 1)
            out[i:i] = out[j : j + rnd.randint(1, 300)]
        elif kind == 4:
            del out[i:]
        else:
            out[i:i] = b"9" * rnd.randint(1, 40)
    return bytes(out)


@FAST
@given(st.randoms(use_true_random=False), st.lists(st.integers(min_value=0), max_size=4))
def test_mutated_valid_files(rnd: random.Random, cuts: list[int]) -> None:
    data = mutate(VALID, rnd)
    assert validate(split(data, cuts)).to_json() == validate([data]).to_json()


def test_the_unmutated_file_is_valid() -> None:
    assert validate([VALID]).valid


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_file_name(name: str) -> None:
    validate([VALID], name=name)


def test_a_line_that_never_ends_is_cut_with_memory_bounded() -> None:
    """64 MiB of one line fed 1 MiB at a time: the validator keeps at most about one line
    limit of it, answers line_too_long, and ignores the rest."""
    validator = CohortValidator(PROFILE, file_name=NAME, nic=NIC)
    validator.feed(VALID[: VALID.index(b"\n") + 1])  # a good header first
    block = b"A" * (1 << 20)
    tracemalloc.start()
    try:
        for _ in range(64):
            validator.feed(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    report = validator.finish()
    assert [p.code for p in report.problems] == ["line_too_long"]
    assert not report.valid
    assert peak < 4 * LINE_LIMIT, peak  # a few line limits, not 64 MiB


def test_an_unclosed_quote_is_cut_too(tmp_path: Path) -> None:
    path = tmp_path / NAME
    with path.open("wb") as handle:
        handle.write(VALID[: VALID.index(b"\n") + 1] + b'"SYN-1,')
        for _ in range(16):
            handle.write(b"x,y\r\n" * (1 << 18))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = validate_file(path, PROFILE, nic=NIC)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert not report.valid
    assert any(p.code == "line_too_long" for p in report.problems), report.problems
    assert grown_kib < 64 * 1024  # the 20 MiB "line" was never held whole... nor thrice


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xfe" + "a,b\r\n".encode("utf-16-le"), b"\r" * 100_000, b"," * 2_000_000],
    ids=["empty", "utf16", "cr-only", "commas"],
)
def test_degenerate_files(data: bytes) -> None:
    assert not validate([data]).valid
