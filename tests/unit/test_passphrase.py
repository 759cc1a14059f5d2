"""Passphrases: entropy, a typeable form, never printed, and a stable fingerprint."""

from __future__ import annotations

import math
import re

import pytest
from pydantic import SecretStr

from seftpilot.adapters.passphrase import (
    ENTROPY_BITS,
    Passphrase,
    fingerprint,
    new_passphrase,
    normalise,
)


def test_passphrase_has_at_least_128_bits_in_grouped_base32() -> None:
    value = new_passphrase().get_secret_value()
    assert re.fullmatch(r"[A-Z2-7]{4}(-[A-Z2-7]{4}){6}", value)
    alphabet_bits = math.log2(32)
    assert len(value.replace("-", "")) * alphabet_bits == ENTROPY_BITS >= 128


def test_passphrases_differ_and_use_the_whole_alphabet() -> None:
    values = {new_passphrase().get_secret_value() for _ in range(300)}
    assert len(values) == 300
    used = set("".join(values).replace("-", ""))
    assert used == set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


def test_passphrase_never_prints() -> None:
    phrase = new_passphrase()
    secret = phrase.get_secret_value()
    assert secret not in str(phrase)
    assert secret not in repr(phrase)
    assert secret not in f"{phrase} {phrase!r}"
    assert isinstance(phrase, SecretStr)


def test_typed_back_passphrase_normalises_to_the_same_value() -> None:
    phrase = new_passphrase()
    typed = phrase.get_secret_value().lower().replace("-", " ")
    assert normalise(typed).get_secret_value() == phrase.get_secret_value()
    with pytest.raises(ValueError, match="7 groups"):
        normalise("ABCD-EFGH")
    with pytest.raises(ValueError):
        normalise("0000-1111-0000-1111-0000-1111-0000")  # 0 and 1 are not base32


def test_fingerprint_is_short_stable_and_does_not_reveal_the_passphrase() -> None:
    phrase = Passphrase("ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23")
    fp = fingerprint(phrase)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert (
        fp
        == fingerprint(phrase.get_secret_value())
        == fingerprint(SecretStr(str(phrase.get_secret_value())))
    )
    assert fp != fingerprint("ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ24")
    assert "ABCD" not in fp.upper()
