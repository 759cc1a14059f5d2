"""Hostile input on the MIME path: whatever bytes arrive, ``parse_message`` returns a
``Message`` and the default rules classify it (the ``default`` rule at worst), without an
exception, a hang or unbounded memory; header text never carries a line break into a
field a header could be built from.

Inputs: arbitrary bytes, mutated sample mail, generated MIME trees (deep nesting, many
parts, broken boundaries and transfer encodings, bogus charsets, RFC 2047 words hiding
CR/LF), oversized messages, and bodies built to make the default rules backtrack.
"""

from __future__ import annotations

import base64
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seftpilot.adapters.mailparse import parse_headers, parse_message
from seftpilot.adapters.rules_files import default_rules_path, load_rules
from seftpilot.core.message import Message
from seftpilot.core.rules import classify
from seftpilot.core.rules_model import MESSAGE_CLASSES

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "sample_mail").glob("*.eml"))
SAMPLE_BYTES = [p.read_bytes() for p in SAMPLES]
RULES = load_rules([default_rules_path()])
CHEAP = settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def handled(raw: bytes) -> Message:
    """The intake's two steps on ``raw``, with what must hold whatever the bytes."""
    message = parse_message(raw)
    assert isinstance(message, Message)
    assert message.size == len(raw)
    for value in (message.subject, message.from_addr, message.message_id, *message.to):
        assert "\r" not in value and "\n" not in value, value
    for name, value in message.headers.items():
        assert "\r" not in value and "\n" not in value, (name, value)
    assert len(message.defects) <= 51  # capped (50 and "more defects not listed")
    result = classify(message, RULES)
    assert result.class_ in MESSAGE_CLASSES
    assert result.rule in RULES.names
    for value in result.captures.values():  # captures are one clean line, capped
        assert value.isprintable() and len(value) <= 200, value
    head = parse_headers(raw)
    assert head.subject == message.subject
    return message


@CHEAP
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(raw: bytes) -> None:
    handled(raw)


@CHEAP
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_a_plausible_header(tail: bytes) -> None:
    handled(b"From: dars@nhs.net\r\nSubject: FW: Validation failed\r\nMIME-Version: 1.0\r\n" + tail)


def mutate(raw: bytes, rnd: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rnd.randint(1, 6)):
        if not data:
            data.extend(rnd.randbytes(8))
        i = rnd.randrange(len(data))
        kind = rnd.randrange(7)
        if kind == 0:
            del data[i : i + rnd.randint(1, 200)]
        elif kind == 1:
            data[i:i] = rnd.randbytes(rnd.randint(1, 20))
        elif kind == 2:
            data[i] = rnd.randrange(256)
        elif kind == 3:  # duplicate a span (boundaries, headers, encoded words)
            j = rnd.randrange(len(data))
            data[i:i] = data[j : j + rnd.randint(1, 400)]
        elif kind == 4:
            del data[i:]
        elif kind == 5:  # MIME tokens in odd places
            data[i:i] = rnd.choice(
                [
                    b"\r\n--",
                    b'\r\nContent-Type: multipart/mixed; boundary="',
                    b"\r\nContent-Transfer-Encoding: base64\r\n",
                    b"=?x-unknown?B?////?=",
                    b"=?utf-8?Q?a=0D=0ABcc:_evil@x?=",
                    b'; charset="utf-7"',
                    b"\r\n\r\n",
                    b"\x00\xff\xfe",
                ]
            )
        else:
            data[i : i + 1] = data[i : i + 1].upper()
    return bytes(data)


@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.sampled_from(range(len(SAMPLE_BYTES))), st.randoms(use_true_random=False))
def test_mutated_sample_mail(index: int, rnd: random.Random) -> None:
    handled(mutate(SAMPLE_BYTES[index], rnd))


# -- generated MIME trees -------------------------------------------------------------------
charsets = st.sampled_from(["utf-8", "us-ascii", "iso-8859-1", "x-bogus", "utf-7", "", "cp1252"])
encodings = st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-uue", "binary"])
header_words = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "=?utf-8?B?U3ViamVjdA==?=",
            "=?utf-8?Q?line=0D=0AX-Injected:_yes?=",
            "=?bogus?Q?x?=",
            "=?utf-8?B?not base64!?=",
            "../../etc/passwd",
            "/abs/path.csv",
            "..\\..\\win.ini",
        ]
    ),
)


@st.composite
def mime_part(draw: st.DrawFn, depth: int = 0) -> bytes:
    if depth < 6 and draw(st.booleans()):
        boundary = draw(st.sampled_from(["b1", "b1", "=_x", "", "a b", "--"])) + str(depth)
        children = draw(st.lists(mime_part(depth=depth + 1), max_size=4))
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + c + b"\r\n" for c in children)
        if draw(st.booleans()):
            body += b"--" + boundary.encode() + b"--\r\n"  # else: never closed
        sub = draw(st.sampled_from(["mixed", "alternative", "report", "related"]))
        head = f'Content-Type: multipart/{sub}; boundary="{boundary}"\r\n'
        return head.encode() + b"\r\n" + body
    ctype = draw(
        st.sampled_from(
            ["text/plain", "text/html", "text/csv", "application/octet-stream", "message/rfc822"]
        )
    )
    cte = draw(encodings)
    payload = draw(st.binary(max_size=200))
    if cte == "base64" and draw(st.booleans()):
        payload = base64.encodebytes(payload)
    head = (
        f"Content-Type: {ctype}; charset={draw(charsets)}\r\nContent-Transfer-Encoding: {cte}\r\n"
    )
    if draw(st.booleans()):
        name = draw(header_words).replace("\r", " ").replace("\n", " ").replace('"', "'")
        head += f'Content-Disposition: attachment; filename="{name}"\r\n'
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + payload


@st.composite
def mime_message(draw: st.DrawFn) -> bytes:
    subject = draw(header_words).replace("\r", " ").replace("\n", " ")
    sender = draw(st.sampled_from(["dars@nhs.net", "x@example.org", "", "<>", "a@b@c"]))
    top = (
        f"From: {sender}\r\nTo: study@example.org\r\nSubject: {subject}\r\n"
        "Message-ID: <fuzz@example.org>\r\nMIME-Version: 1.0\r\n"
    ).encode("utf-8", "surrogateescape")
    return top + draw(mime_part())


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(mime_message())
def test_generated_mime_trees(raw: bytes) -> None:
    handled(raw)


def test_encoded_line_breaks_never_reach_a_header_field() -> None:
    raw = (
        b"From: =?utf-8?Q?Evil=0D=0ABcc:_x@evil.example?= <dars@nhs.net>\r\n"
        b"Subject: =?utf-8?Q?Validation_failed=0D=0AX-Injected:_yes?=\r\n"
        b"Message-ID: <a=0D=0Ab@x>\r\n\r\nbody\r\n"
    )
    message = handled(raw)
    assert message.subject == "Validation failed X-Injected: yes"


# -- oversized ------------------------------------------------------------------------------
def test_a_20_mb_attachment() -> None:
    data = os.urandom(20 * 1024 * 1024)
    raw = (
        b"From: dars@nhs.net\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/"
        b'mixed; boundary="XX"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nThere is new '
        b"data.\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding:"
        b' base64\r\nContent-Disposition: attachment; filename="big.bin"\r\n\r\n'
        + base64.encodebytes(data)
        + b"\r\n--XX--\r\n"
    )
    message = handled(raw)
    (attachment,) = message.attachments
    assert attachment.size == len(data)


def test_ten_thousand_parts() -> None:
    parts = b"".join(
        b'--XX\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename="f%d.csv"'
        b"\r\n\r\n%d\r\n" % (i, i)
        for i in range(10_000)
    )
    raw = (
        b"From: a@example.org\r\nSubject: many\r\nMIME-Version: 1.0\r\nContent-Type: "
        b'multipart/mixed; boundary="XX"\r\n\r\n' + parts + b"--XX--\r\n"
    )
    assert len(handled(raw).attachments) == 10_000


def nested(levels: int) -> bytes:
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(levels)
    )
    return (
        b"From: a@example.org\r\nSubject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\nhi"
    )


def test_nesting_two_thousand_deep_keeps_the_headers() -> None:
    """Found by these tests: the stdlib parser recursed once per level and failed, and the
    message was classified as if empty (no From, no Subject); now the headers survive."""
    message = handled(nested(2000))
    assert (message.subject, message.from_addr) == ("deep", "a@example.org")
    assert any("headers only" in d for d in message.defects)
    assert any("deeper than 20" in d for d in handled(nested(25)).defects)


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@b\r\nSubject: " + b"x" * 5_000_000 + b"\r\n\r\nhi",
        b"From: a@b\r\n" + b"X-H: y\r\n" * 200_000 + b"\r\nhi",
        b"From: " + b"a@b, " * 200_000 + b"\r\n\r\nhi",
        b"From: a@b\r\nSubject: x\r\n\r\n" + b"=?utf-8?B?" * 200_000,
    ],
    ids=["5MB-subject", "200k-headers", "200k-senders", "200k-encoded-words"],
)
def test_oversized_headers(raw: bytes) -> None:
    handled(raw)


# -- bodies built to make the default rules backtrack ----------------------------------------
# Before the fix each of these took minutes to hours per message (quadratic regexes in the
# default rules: a leading \s* crossing every following blank line, an unanchored repeat
# rescanning a run of names or digits from each start). The default pytest timeout (120 s)
# is the guard: these now classify in well under a second.
ADVERSARIAL = {
    "fw-blank-lines": b"From: a@example.org\r\nSubject: FW: x\r\n\r\n" + b"\r\n" * 1_000_000,
    "nhs-blank-lines": b"From: a@nhs.net\r\nSubject: validation failed\r\n\r\n" + b"\n" * 999_000,
    "nhs-digit-run": b"From: a@nhs.net\r\nSubject: validation failed\r\n\r\n" + b"1," * 500_000,
    "nhs-name-run": b"From: a@nhs.net\r\nSubject: validation failed\r\n\r\n"
    + b"NIC-12345-AAAAA" * 66_000,
    "content-type-run": b"From: a@example.org\r\nSubject: x\r\nContent-Type: "
    + b"multipart/report;" * 60_000
    + b"\r\n\r\nhi",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_bodies_built_to_backtrack_classify(name: str) -> None:
    handled(ADVERSARIAL[name])
