"""Correlation: which submission a classified NHS notice concerns.

Owns the attribution rules: a file name or NIC number quoted in the notice (its rule's
captures or its text) narrows the candidates; the evidence window the notice arrived in
decides among what is left. Exactly one candidate, or no answer: an ambiguous case is
returned as such and never guessed (the shell alerts the operator).

Pure: candidates and the notice are values. Must not read the ledger or the clock.

Note that NHS England requires every cohort file of an agreement to carry the same name
(``NIC-402963-P0Y5D.csv``), so a quoted file name usually identifies the *agreement*;
the window then identifies the submission. Where a profile gives each file its own
name, a quoted name narrows to that submission. Either way the notice must have arrived
inside the evidence window of the one submission left: a late notice is reported with
the submissions it names, not attributed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

NIC_IN_TEXT = re.compile(r"\bNIC-\d{5,6}-[A-Z0-9]{5}\b", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    """A submission a notice may concern: uploaded, with its evidence window."""

    submission_id: int
    nic: str
    file_name: str | None
    uploaded_at: datetime
    window_start: datetime
    window_end: datetime


@dataclass(frozen=True)
class Correlation:
    """``submission_id`` when exactly one candidate fits; ``ambiguous`` when several do."""

    submission_id: int | None
    ambiguous: bool
    reason: str


def _by_id(candidate: Candidate) -> int:
    return candidate.submission_id


def _haystack(captures: Mapping[str, str], text: str) -> str:
    return "\n".join([*captures.values(), text])


def correlate(
    received_at: datetime,
    captures: Mapping[str, str],
    text: str,
    candidates: Sequence[Candidate],
) -> Correlation:
    """Attribute a notice received at ``received_at`` to one of ``candidates``.

    ``text`` is what the notice says (subject and body text); ``captures`` are the named
    groups its rule captured. Quoted file names, then quoted NIC numbers narrow the
    candidates; the evidence window the notice arrived in must then leave exactly one.
    """
    if not candidates:
        return Correlation(None, False, "no submission is awaiting a verdict")
    # A notice cannot concern a file uploaded after it arrived.
    pool = [c for c in candidates if c.uploaded_at <= received_at]
    if not pool:
        return Correlation(None, False, "arrived before every awaiting submission was uploaded")
    haystack = _haystack(captures, text)
    lowered = haystack.lower()
    found: list[str] = []

    named = [c for c in pool if c.file_name and c.file_name.lower() in lowered]
    if named:
        names = sorted({c.file_name for c in named if c.file_name})
        found.append("file name " + ", ".join(names))
        pool = named

    quoted_nics = {m.upper() for m in NIC_IN_TEXT.findall(haystack)}
    if quoted_nics:
        by_nic = [c for c in pool if c.nic.upper() in quoted_nics]
        found.append("NIC " + ", ".join(sorted(quoted_nics)))
        if not by_nic:
            return Correlation(
                None,
                False,
                f"quotes {', '.join(sorted(quoted_nics))}, which no awaiting submission has",
            )
        pool = by_nic

    quoted = f"quotes {' and '.join(found)}; " if found else "quotes no file name or NIC; "
    inside = [c for c in pool if c.window_start <= received_at <= c.window_end]
    if len(inside) == 1:
        return Correlation(
            inside[0].submission_id,
            False,
            quoted + f"arrived inside the evidence window of submission {inside[0].submission_id}",
        )
    if not inside:
        named_ids = ""
        if found:
            ids = ", ".join(str(c.submission_id) for c in sorted(pool, key=_by_id))
            named_ids = f" (of submissions {ids}, which it names)"
        return Correlation(
            None, False, quoted + f"arrived outside every open evidence window{named_ids}"
        )
    ids = ", ".join(str(c.submission_id) for c in sorted(inside, key=_by_id))
    return Correlation(
        None,
        True,
        quoted + f"arrived inside the evidence windows of submissions {ids}; not guessing",
    )
