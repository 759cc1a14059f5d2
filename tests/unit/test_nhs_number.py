"""NHS numbers: the modulus-11 rule, its fast table form, and the mangled forms explained."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seftpilot.core import nhs_number
from seftpilot.core.synthetic import synthetic_nhs_numbers

nine_digits = st.text(alphabet="0123456789", min_size=9, max_size=9)
ten_digits = st.text(alphabet="0123456789", min_size=10, max_size=10)


def reference_valid(number: str) -> bool:
    """The NHS Data Dictionary's wording, literally."""
    if len(number) != 10 or not number.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:9], range(10, 1, -1), strict=True))
    result = 11 - total % 11
    if result == 10:
        return False
    return (0 if result == 11 else result) == int(number[9])


def test_data_dictionary_example_is_valid_in_every_written_form() -> None:
    assert nhs_number.is_valid("9434765919")
    assert nhs_number.normalise("943 476 5919") == "9434765919"
    assert nhs_number.normalise(" 943-476-5919 ") == "9434765919"
    assert nhs_number.diagnose("9434765919") is None


def test_check_digit_eleven_means_zero_and_ten_means_never_valid() -> None:
    # 000000001: weights give 2 -> 11 - 2 = 9
    assert nhs_number.check_digit("000000001") == 9
    assert nhs_number.check_digit("000000000") == 0  # 11 - 0 = 11 -> 0
    # 000000005: 10 -> 11 - 10 = 1; 000000006: 12 % 11 = 1 -> 10 -> invalid
    assert nhs_number.check_digit("000000006") is None
    assert "can never be a valid" in (nhs_number.diagnose("0000000060") or "")


@given(ten_digits)
def test_table_check_agrees_with_the_data_dictionary(number: str) -> None:
    assert nhs_number.is_valid(number) == reference_valid(number)


@given(st.lists(ten_digits, max_size=50))
def test_bulk_check_finds_exactly_the_invalid_ones(numbers: list[str]) -> None:
    bad = nhs_number.invalid_positions(numbers)
    assert bad == [i for i, n in enumerate(numbers) if not reference_valid(n)]
    assert nhs_number.invalid_positions([n.encode() for n in numbers]) == bad


@given(nine_digits, st.integers(0, 9), st.integers(1, 9))
def test_any_single_digit_typo_is_caught(first_nine: str, position: int, delta: int) -> None:
    check = nhs_number.check_digit(first_nine)
    if check is None:
        return
    number = first_nine + str(check)
    assert nhs_number.is_valid(number)
    typo = number[:position] + str((int(number[position]) + delta) % 10) + number[position + 1 :]
    assert not nhs_number.is_valid(typo)


@given(nine_digits, st.integers(0, 8))
def test_swapping_adjacent_digits_is_caught(first_nine: str, position: int) -> None:
    check = nhs_number.check_digit(first_nine)
    if check is None:
        return
    number = first_nine + str(check)
    a, b = number[position], number[position + 1]
    if a == b:
        return
    swapped = number[:position] + b + a + number[position + 2 :]
    assert not nhs_number.is_valid(swapped)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("9.43E+09", ["Excel", "scientific", "text"]),
        ("9434765919.0", ["decimal", "text"]),
        ("434765919", ["9 digits", "leading zero"]),
        ("94347659", ["8 digits"]),
        ("94347A5919", ["not ten digits"]),
        ("9434765918", ["modulus-11", "should be 9"]),
    ],
)
def test_diagnosis_says_what_went_wrong_and_how_to_fix_it(value: str, words: list[str]) -> None:
    message = nhs_number.diagnose(value)
    assert message is not None
    for word in words:
        assert word in message


def test_unicode_digits_are_not_nhs_numbers() -> None:
    assert not nhs_number.is_valid("٩٤٣٤٧٦٥٩١٩")  # Arabic-Indic digits: isdigit() but not 0-9


def test_synthetic_numbers_are_999_range_valid_and_reproducible() -> None:
    numbers = synthetic_nhs_numbers(500, seed=3)
    assert all(n.startswith("999") and nhs_number.is_valid(n) for n in numbers)
    assert numbers == synthetic_nhs_numbers(500, seed=3)
    assert numbers != synthetic_nhs_numbers(500, seed=4)


@given(st.lists(ten_digits, max_size=60))
def test_packed_check_agrees_with_the_one_by_one_tables(numbers: list[str]) -> None:
    """The big-integer path (no Python step per number) against two table lookups each."""
    packed = "".join(numbers).encode()
    expected = nhs_number.invalid_positions_by_table(numbers)
    assert nhs_number.invalid_packed(packed) == expected
    assert expected == [i for i, n in enumerate(numbers) if not reference_valid(n)]


def test_packed_check_on_a_large_batch_with_invalid_ones_at_the_edges() -> None:
    numbers = synthetic_nhs_numbers(5000, seed=3)
    numbers[0] = numbers[0][:9] + str((int(numbers[0][9]) + 1) % 10)
    assert nhs_number.is_valid("9999999999")  # 9 x (1 + ... + 10) = 495 = 45 x 11
    numbers[-2] = "9999999999"
    numbers[-1] = "9999999998"
    numbers[2500] = "0000000060"  # check digit would be 10
    assert nhs_number.invalid_packed("".join(numbers).encode()) == [0, 2500, 4999]
    with pytest.raises(ValueError, match="ten digits each"):
        nhs_number.invalid_packed(b"123")
