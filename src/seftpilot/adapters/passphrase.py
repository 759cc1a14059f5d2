"""Archive passphrases: generation and the fingerprint the ledger keeps instead.

Owns how a delivery's passphrase is made (``secrets``, 140 bits) and how it is named in
records (``fingerprint``). It must not store, log or print a passphrase: ``Passphrase`` is a
``SecretStr`` and shows as ``**********``; only the passphrase email reveals it.

Form: 28 characters of RFC 4648 base32 (A-Z, 2-7: no 0/1/8/9, so no O-versus-0 or
I-versus-1 confusion), in seven groups of four joined by hyphens, e.g.
``K7QM-2XHD-...``. Easy to read aloud and to type; 28 x 5 = 140 bits of entropy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from pydantic import SecretStr

GROUPS = 7
GROUP_SIZE = 4
ENTROPY_BITS = GROUPS * GROUP_SIZE * 5  # base32: 5 bits a character
_SHAPE = re.compile(rf"^[A-Z2-7]{{{GROUP_SIZE}}}(-[A-Z2-7]{{{GROUP_SIZE}}}){{{GROUPS - 1}}}$")
# Domain separation: a fingerprint of a passphrase is never the hash of anything else.
_FINGERPRINT_KEY = b"seftpilot archive passphrase fingerprint v1"


class Passphrase(SecretStr):
    """A delivery passphrase. ``str()``/``repr()`` hide it; ``get_secret_value()`` reveals."""


def new_passphrase() -> Passphrase:
    """A fresh passphrase with ``ENTROPY_BITS`` (140) bits from ``secrets``."""
    chars = GROUPS * GROUP_SIZE
    # 18 random bytes = 144 bits -> 29 base32 characters (no padding needed), keep 28.
    text = base64.b32encode(secrets.token_bytes(18)).decode("ascii")[:chars]
    groups = [text[i : i + GROUP_SIZE] for i in range(0, chars, GROUP_SIZE)]
    return Passphrase("-".join(groups))


def normalise(typed: str) -> Passphrase:
    """A passphrase as someone typed it back (any case, spaces or hyphens between groups)."""
    compact = re.sub(r"[\s-]+", "", typed).upper()
    candidate = "-".join(compact[i : i + GROUP_SIZE] for i in range(0, len(compact), GROUP_SIZE))
    if not _SHAPE.match(candidate):
        raise ValueError(
            f"not a seftpilot passphrase: expected {GROUPS} groups of {GROUP_SIZE} "
            "characters A-Z and 2-7"
        )
    return Passphrase(candidate)


def fingerprint(passphrase: SecretStr | str) -> str:
    """16 hex characters naming ``passphrase`` in the ledger and in emails.

    HMAC-SHA-256 under a fixed, public key: with 140 bits of entropy nothing can be guessed
    from it, and anyone who holds the passphrase can check which delivery it belongs to.
    """
    secret = passphrase.get_secret_value() if isinstance(passphrase, SecretStr) else passphrase
    mac = hmac.new(_FINGERPRINT_KEY, secret.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:16]
