"""NHS numbers: normalising how people write them, and the modulus-11 check.

Owns the NHS Data Dictionary check-digit rule and the diagnosis of the ways an NHS number
gets mangled on its way out of a study database (spaces, dashes, Excel's scientific
notation, dropped leading zeros). Pure: values in, values out; must not do I/O.

The check (NHS Data Dictionary): multiply digits 1-9 by weights 10..2, sum, take the
remainder mod 11 and subtract it from 11; 11 means check digit 0, 10 means the number can
never be valid. Because 10 = -1 (mod 11), that is the same as asking that
``sum(i * d_i for i in 1..10)`` be divisible by 11 (position-weighted, check digit
included), which lets two lookup tables of 100,000 entries each decide a whole number with
one ``int()`` and two list lookups (``is_valid``, for rows checked one at a time). The
tables are built on first use (about 20 ms), not at import: a command that never checks
one number alone should not pay for them. Whole columns take ``invalid_packed``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Final

_SEPARATORS = re.compile(r"[\s\-]+")
_EXCEL_FLOAT = re.compile(r"^\d(?:\.\d+)?[eE]\+?\d+$")
_DECIMAL_TAIL = re.compile(r"^\d+\.0+$")


def _weighted_table(first_weight: int) -> list[int]:
    """Position-weighted digit sums mod 11 of every five-digit string, by its value.
    Built by extending partial sums digit by digit (about 10 ms)."""
    sums = [0]
    for weight in range(first_weight, first_weight + 5):
        sums = [s + weight * d for s in sums for d in range(10)]
    return [s % 11 for s in sums]


@cache
def _tables() -> tuple[list[int], list[int]]:
    """(HEAD, TAIL): HEAD[n] is the position-weighted sum (weights 1..5) of the five
    leading digits of n; TAIL[n] the same for the last five (weights 6..10). A ten-digit
    number N is valid iff (HEAD[N // 100000] + TAIL[N % 100000]) % 11 == 0."""
    return _weighted_table(1), _weighted_table(6)


def check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None when no check digit can make them valid."""
    if len(first_nine) != 9 or not (first_nine.isascii() and first_nine.isdigit()):
        raise ValueError(f"need nine digits, got {first_nine!r}")
    total = sum((10 - k) * int(c) for k, c in enumerate(first_nine))
    result = 11 - total % 11
    if result == 11:
        return 0
    if result == 10:
        return None
    return result


def is_valid(number: str) -> bool:
    """True when ``number`` is exactly ten ASCII digits whose last digit checks out."""
    if len(number) != 10 or not (number.isascii() and number.isdigit()):
        return False
    n = int(number)
    head, tail = _tables()
    return (head[n // 100_000] + tail[n % 100_000]) % 11 == 0


def invalid_positions(numbers: Sequence[str | bytes]) -> list[int]:
    """Indexes of the numbers that fail modulus 11, for numbers already known to be ten
    ASCII digits each (the caller checked the column). The bulk path: packed and checked
    by ``invalid_packed``, no Python step per number."""
    if not numbers:
        return []
    if isinstance(numbers[0], bytes):
        packed = b"".join(numbers)  # type: ignore[arg-type]
    else:
        packed = "".join(numbers).encode("ascii")  # type: ignore[arg-type]
    return invalid_packed(packed)


def invalid_positions_by_table(numbers: Sequence[str | bytes]) -> list[int]:
    """The answer of ``invalid_positions`` one number at a time (two table lookups each):
    the reference the packed path is tested against."""
    head, tail = _tables()
    return [
        i for i, n in enumerate(map(int, numbers)) if (head[n // 100_000] + tail[n % 100_000]) % 11
    ]


# For the packed form: one translation per digit position, digit -> position weight x
# digit (mod 11), and the flag of a weighted sum: 0 when it divides by 11, else 1.
_WEIGHTED_DIGITS: Final = tuple(
    bytes.maketrans(b"0123456789", bytes(weight * d % 11 for d in range(10)))
    for weight in range(1, 11)
)
_TEN_BYTES: Final = int.from_bytes(b"\x01" * 10, "little")  # 1 + 256 + ... + 256**9
_FAILS: Final = bytes(int(s % 11 != 0) for s in range(256))


def invalid_packed(digits: bytes) -> list[int]:
    """Indexes of the numbers that fail modulus 11 in ``digits``: ten-digit numbers
    written one after another (``b"94347659199434765918"``), all ASCII digits (the caller
    checked). The bulk path for a million numbers, without a Python step per number.

    Each digit becomes its weighted value mod 11 (one ``translate`` per position over a
    strided slice), so a number's ten bytes sum to at most 100. Read as one little-endian
    integer and multiplied by 1 + 256 + ... + 256**9, the byte at a number's last position
    holds the sum of its ten bytes (no carries: every byte sum stays below 256), and one
    more ``translate`` flags the sums that are not multiples of 11.
    """
    size = len(digits)
    count = size // 10
    if size != 10 * count:
        raise ValueError(f"packed NHS numbers must be ten digits each, got {size} bytes")
    if not count:
        return []
    weighted = bytearray(size)
    for position, table in enumerate(_WEIGHTED_DIGITS):
        weighted[position::10] = digits[position::10].translate(table)
    total = int.from_bytes(weighted, "little") * _TEN_BYTES
    flags = total.to_bytes(size + 10, "little")[9::10][:count].translate(_FAILS)
    out: list[int] = []
    i = flags.find(1)
    while i != -1:
        out.append(i)
        i = flags.find(1, i + 1)
    return out


def normalise(raw: str) -> str:
    """Strip the spaces and dashes people write NHS numbers with (``943 476 5919``,
    ``943-476-5919``). Anything else is returned as it is, for ``diagnose`` to explain."""
    return _SEPARATORS.sub("", raw.strip())


def diagnose(value: str) -> str | None:
    """None when ``value`` (already normalised) is a valid NHS number; else a message that
    says what is wrong and how to fix it."""
    if is_valid(value):
        return None
    if _EXCEL_FLOAT.match(value):
        return (
            f"{value!r} is an NHS number that Excel turned into scientific notation "
            "(like 9.43E+09) and the digits are lost: format the column as text and "
            "re-export from the study database"
        )
    if _DECIMAL_TAIL.match(value):
        return (
            f"{value!r} has a decimal part: a spreadsheet stored the NHS number as a "
            "number; format the column as text and re-export"
        )
    if not (value.isascii() and value.isdigit()):
        return f"{value!r} is not ten digits: an NHS number has only digits 0-9"
    if len(value) == 9:
        return (
            f"{value!r} has 9 digits: a spreadsheet may have dropped a leading zero; "
            "format the column as text and re-export"
        )
    if len(value) != 10:
        return f"{value!r} has {len(value)} digits: an NHS number has exactly 10"
    expected = check_digit(value[:9])
    if expected is None:
        return f"{value!r} can never be a valid NHS number (its check digit would be 10)"
    return (
        f"{value!r} fails the modulus-11 check (the last digit should be {expected}): "
        "look for a mistyped digit"
    )


def valid_all(numbers: Iterable[str]) -> bool:
    """True when every number is valid (a convenience for tests and small inputs)."""
    return all(is_valid(n) for n in numbers)
