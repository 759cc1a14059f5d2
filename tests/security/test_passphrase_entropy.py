"""The archive passphrase has the promised entropy (>= 128 bits).

Structure: 28 characters from a 32-symbol alphabet is 140 bits only if every character
is drawn uniformly and independently; the alphabet and length are checked exactly, and
20,000 generated passphrases are checked statistically (each position's symbol counts
against uniform with a chi-squared bound far beyond chance, no repeats, no structure
shared between consecutive passphrases).
"""

from __future__ import annotations

import itertools
import math
import string
from collections import Counter

from seftpilot.adapters.passphrase import ENTROPY_BITS, new_passphrase

ALPHABET = set(string.ascii_uppercase + "234567")
SAMPLES = 20_000


def _chars(text: str) -> str:
    return text.replace("-", "")


def test_alphabet_and_length_give_at_least_128_bits() -> None:
    text = new_passphrase().get_secret_value()
    groups = text.split("-")
    assert [len(g) for g in groups] == [4] * 7
    assert set(_chars(text)) <= ALPHABET
    bits = len(_chars(text)) * math.log2(len(ALPHABET))
    assert bits == ENTROPY_BITS >= 128


def test_twenty_thousand_passphrases_look_uniform_and_independent() -> None:
    samples = [_chars(new_passphrase().get_secret_value()) for _ in range(SAMPLES)]
    assert len(set(samples)) == SAMPLES
    assert all(set(s) <= ALPHABET and len(s) == 28 for s in samples)
    expected = SAMPLES / 32
    # Chi-squared with 31 degrees of freedom: mean 31, sd ~7.9. 90 is ~7.5 sd out: a
    # correct generator fails this about once in 10**11 runs; a biased one (a position
    # stuck on half the alphabet, a modulo bias of 1/8) fails it every time.
    for position in range(28):
        counts = Counter(s[position] for s in samples)
        assert set(counts) == ALPHABET, position
        chi2 = sum((counts[c] - expected) ** 2 / expected for c in ALPHABET)
        assert chi2 < 90, (position, chi2)
    # Consecutive passphrases share a symbol at a position with probability 1/32.
    same = sum(a[i] == b[i] for a, b in itertools.pairwise(samples) for i in range(28))
    trials = (SAMPLES - 1) * 28
    sd = math.sqrt(trials * (1 / 32) * (31 / 32))
    assert abs(same - trials / 32) < 8 * sd
