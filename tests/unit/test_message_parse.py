"""adapters.mailparse: bytes -> Message, decoding what can be decoded, never raising."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import mailparser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seftpilot.adapters.mailparse import html_to_text, parse_headers, parse_message
from seftpilot.core.message import Message

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "sample_mail").glob("*.eml"))


def test_rfc2047_subject_addresses_date_and_selected_headers() -> None:
    raw = (
        b"Received: a\r\nReceived: b\r\n"
        b"From: =?utf-8?q?NHS_England_=E2=80=93_DARS?= <DARS@NHSDigital.nhs.uk>\r\n"
        b'To: a@example.org, "B, Bee" <b@example.org>\r\nCc: c@example.org\r\n'
        b"Subject: =?utf-8?b?Q29ob3J0IOKAkyBmYWlsZWQ=?= =?utf-8?q?_again?= (x)\r\n"
        b"Date: Tue, 03 Jun 2025 07:12:00 +0100\r\n"
        b"Message-ID: <abc@nhs.uk>\r\nAuto-Submitted: auto-generated\r\n"
        b"X-Unrelated: dropped\r\n\r\nbody\r\n"
    )
    m = parse_message(raw)
    assert m.from_addr == "dars@nhsdigital.nhs.uk"
    assert m.from_name == "NHS England – DARS"
    assert m.to == ("a@example.org", "b@example.org")
    assert m.cc == ("c@example.org",)
    assert m.subject == "Cohort – failed again (x)"
    assert m.date == datetime(2025, 6, 3, 7, 12, tzinfo=timezone(timedelta(hours=1)))
    assert m.message_id == "<abc@nhs.uk>"
    assert m.header("Auto-Submitted") == "auto-generated"
    assert m.header("x-unrelated") is None
    assert m.headers["received-count"] == "2"
    assert m.text == "body\n"
    assert m.defects == ()
    assert m.size == len(raw)


def test_html_only_body_becomes_text_with_links() -> None:
    raw = (
        b"From: a@nhs.uk\nSubject: s\nContent-Type: text/html; charset=utf-8\n\n"
        b"<html><head><style>p{}</style><title>t</title></head><body><p>Your file"
        b" has&nbsp;<b>failed</b></p><p>See <a href='https://x.example/f'>the file</a></p>"
        b"<script>var x=1;</script></body></html>"
    )
    m = parse_message(raw)
    assert m.html_text_used is True
    assert m.text == "Your file has failed\n\nSee the file <https://x.example/f>"


def test_plain_part_preferred_over_html() -> None:
    raw = (
        b'From: a@nhs.uk\nContent-Type: multipart/alternative; boundary="b"\n\n'
        b"--b\nContent-Type: text/plain\n\nplain words\n--b\nContent-Type: text/html\n\n"
        b"<p>html words</p>\n--b--\n"
    )
    m = parse_message(raw)
    assert (m.text.strip(), m.html_text_used) == ("plain words", False)


def test_attachments_have_size_sha256_and_payload_not_in_repr() -> None:
    payload = b"UNIQUE_REFERENCE,NHS_NO\r\nS1,9990000018\r\n"

    raw = (
        b'From: a@nhs.uk\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n'
        b"Content-Type: text/plain\n\nsee attached\n--b\n"
        b"Content-Type: text/csv\n"
        b'Content-Disposition: attachment; filename="=?utf-8?q?Errors_=C3=A9.csv?="\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.b64encode(payload) + b"\n--b--\n"
    )
    m = parse_message(raw)
    (att,) = m.attachments
    assert att.name == "Errors é.csv"
    assert att.content_type == "text/csv"
    assert att.size == len(payload)
    assert att.payload == payload
    assert att.sha256 == hashlib.sha256(payload).hexdigest()
    assert "9990000018" not in repr(att) and "9990000018" not in repr(m)
    assert m.text.strip() == "see attached"


def test_unknown_charset_is_decoded_with_a_defect() -> None:
    raw = b"From: a@nhs.uk\nContent-Type: text/plain; charset=x-bogus\n\nCaf\xe9 ok\n"
    m = parse_message(raw)
    assert m.text == "Café ok\n"
    assert any("unknown charset 'x-bogus'" in d for d in m.defects)


def test_wrong_declared_charset_falls_back_with_a_defect() -> None:
    raw = b"From: a@nhs.uk\nContent-Type: text/plain; charset=utf-8\n\nCaf\xe9\n"
    m = parse_message(raw)
    assert m.text == "Café\n"
    assert any("not valid utf-8" in d for d in m.defects)


def test_raw_8bit_header_bytes_are_decoded_and_recorded() -> None:
    raw = "From: Zoë <z@example.org>\nSubject: Données\n\nx\n".encode("latin-1")
    m = parse_message(raw)
    assert (m.from_name, m.subject) == ("Zoë", "Données")
    assert "Subject: raw 8-bit bytes in header" in m.defects
    utf8 = parse_message("Subject: Données\n\nx\n".encode())
    assert utf8.subject == "Données"


def test_malformed_encoded_word_and_bad_date_do_not_raise() -> None:
    raw = b"From: a@b.org\nSubject: =?utf-8?b?!!!notbase64?=\nDate: yesterday-ish\n\nx"
    m = parse_message(raw)
    assert "notbase64" in m.subject
    assert m.date is None
    assert any(d.startswith("Date: unparseable") for d in m.defects)


def test_date_without_zone_is_utc() -> None:
    m = parse_message(b"Date: Tue, 03 Jun 2025 07:12:00 -0000\n\nx")
    assert m.date == datetime(2025, 6, 3, 7, 12, tzinfo=UTC)


def test_a_header_folded_at_a_lone_cr_reads_as_one_line() -> None:
    # compat32 splits lines at CR too and keeps it in the folded value (found by
    # tests/fuzz/test_mime.py): no CR may reach a field.
    raw = (
        b"From: a@nhs.net\r\nSubject: Cohort\r ok\r\nMessage-ID: \r <m-1@nhs.net>\r\n"
        b'To: "Study\r Team" <s@example.org>\r\n\r\nbody\r\n'
    )
    message = parse_message(raw)
    assert (message.subject, message.message_id, message.to) == (
        "Cohort ok",
        "<m-1@nhs.net>",
        ("s@example.org",),
    )


def test_missing_from_is_a_defect() -> None:
    m = parse_message(b"Subject: hello\n\nbody")
    assert m.from_addr == "" and "From: missing or unparseable" in m.defects


def test_deep_nesting_is_cut_off_not_fatal() -> None:
    depth = 200
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(depth)
    )
    m = parse_message(b"From: a@b.org\n" + head + b"Content-Type: text/plain\n\ndeep\n")
    assert isinstance(m, Message)
    assert m.defects


def test_parse_headers_reads_only_the_header_block() -> None:
    raw = SAMPLES[0].read_bytes()
    full, lite = parse_message(raw), parse_headers(raw)
    assert (lite.subject, lite.from_addr, lite.to, lite.date) == (
        full.subject,
        full.from_addr,
        full.to,
        full.date,
    )
    assert lite.text == "" and lite.attachments == ()


def test_html_to_text_handles_broken_markup() -> None:
    assert html_to_text("<p>a<b>b</p><div>c &amp; d") == "ab\n\nc & d"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_agrees_with_mail_parser_on_sample_mail(path: Path) -> None:
    """mail-parser is the reference: where it reads a field cleanly, we read the same."""
    raw = path.read_bytes()
    ours = parse_message(raw)
    ref = mailparser.parse_from_bytes(raw)
    if not ours.defects:
        assert ours.subject == " ".join(ref.subject.split())
        assert ours.from_addr == ref.from_[0][1].lower()
        assert list(ours.to) == [a.lower() for _, a in ref.to]
    # Attached messages (message/rfc822) are attachments for us even when unnamed.
    ref_names = sorted(
        a["filename"] for a in ref.attachments if a["mail_content_type"] != "message/rfc822"
    )
    our_names = sorted(a.name for a in ours.attachments if a.content_type != "message/rfc822")
    assert our_names == ref_names


# --- robustness: never raises --------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    m = parse_message(raw)
    assert isinstance(m, Message) and m.size == len(raw)
    parse_headers(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SAMPLES),
    st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 8), st.binary(max_size=12)),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_samples_never_raise(path: Path, edits: list[tuple[float, int, bytes]]) -> None:
    raw = bytearray(path.read_bytes())
    for where, cut, insert in edits:
        at = int(where * len(raw))
        raw[at : at + cut] = insert
    m = parse_message(bytes(raw))
    assert isinstance(m, Message)
    # Whatever was read is plain text: safe to match, log and store.
    for text in (m.subject, m.text, m.from_name, *m.headers.values()):
        text.encode("utf-8")


# -- the address fast path ---------------------------------------------------------------
# `_addresses` reads the everyday shapes ("Name <user@host>", "user@host") without
# email.utils.getaddresses; it must give exactly getaddresses' answer for any header.
_ATOMS = st.text(alphabet="abcXYZ019_%+-'.", min_size=1, max_size=6)
_WORDS = st.text(alphabet="abXY09'- .,\"()<>@;:\\\t=?é[]", min_size=0, max_size=12)
_ADDRESSES = st.builds(
    lambda local, host, tld: f"{local}@{host}.{tld}", _ATOMS, _ATOMS, _ATOMS
) | st.text(alphabet="ab.@-_+<> ", max_size=12)


@st.composite
def _address_headers(draw: st.DrawFn) -> str:
    addr = draw(_ADDRESSES)
    name = draw(st.lists(_WORDS.filter(bool), max_size=3).map(" ".join) | _ATOMS)
    template = draw(
        st.sampled_from(
            [
                "{addr}",
                " {addr} ",
                "{name} <{addr}>",
                "{name}<{addr}>",
                "\t{name}  <{addr}> ",
                '"{name}" <{addr}>',
                '"{name}"<{addr}>',
                ' \t"{name}" \t<{addr}>\t',
                '"{name}" <{addr}>, "{name}" <{addr}>',
                "<{addr}>",
                "{addr}, {name} <{addr}>",
                "{addr} ({name})",
                "{name}",
            ]
        )
    )
    return template.format(name=name, addr=addr)


def _reference(values: list[str]) -> list[tuple[str, str]]:
    import email.utils

    from seftpilot.adapters.mailparse import _Defects, decode_header_value

    defects = _Defects()
    try:
        pairs = email.utils.getaddresses(values)
    except Exception:
        return []
    return [(decode_header_value(n, "To", defects), a.strip().lower()) for n, a in pairs if n or a]


@settings(max_examples=800, deadline=None)
@given(st.lists(_address_headers(), min_size=1, max_size=2))
def test_address_fast_path_agrees_with_getaddresses(values: list[str]) -> None:
    from seftpilot.adapters.mailparse import _addresses, _Defects

    assert _addresses(values, "To", _Defects()) == _reference(values)


def test_address_fast_path_covers_the_everyday_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    from seftpilot.adapters import mailparse
    from seftpilot.adapters.mailparse import _simple_address

    assert _simple_address("NHS England <enquiries@nhsdigital.nhs.uk>") == (
        "NHS England",
        "enquiries@nhsdigital.nhs.uk",
    )
    assert _simple_address("study.team+cohort@uni.example.ac.uk") == (
        "",
        "study.team+cohort@uni.example.ac.uk",
    )
    assert _simple_address('"NHS England - Data Access Request Service" <d@nhs.net>') == (
        "NHS England - Data Access Request Service",
        "d@nhs.net",
    )
    assert _simple_address('"Doe, \\"Jane\\"" <j@x.org>') is None  # escapes: getaddresses
    assert _simple_address("Sam Taylor (NHS ENGLAND - X24) <s@nhs.net>") is None  # comment
    fast = [parse_message(path.read_bytes()) for path in SAMPLES]
    monkeypatch.setattr(mailparse, "_simple_address", lambda value: None)
    slow = [parse_message(path.read_bytes()) for path in SAMPLES]
    for a, b in zip(fast, slow, strict=True):  # the samples' addresses: same either way
        assert (a.from_addr, a.from_name, a.to, a.cc, a.defects) == (
            b.from_addr,
            b.from_name,
            b.to,
            b.cc,
            b.defects,
        )
