"""Raw e-mail bytes -> ``core.message.Message``; never raises on what it is given.

Owns turning RFC 5322 / MIME bytes into the frozen ``Message`` value: decoded headers
(RFC 2047 encoded words, raw 8-bit bytes), addresses, date, the plain-text body (or HTML
converted to text when there is no plain part), attachments with SHA-256, and a list of
defects for everything that could not be read cleanly. Must not classify, log, touch the
network or the disk: it is called once per message by the intake and by `rules test`.

Engine choice (measured, see benchmarks/RESULTS.md "Mail parsing"): the stdlib ``email``
package with the ``compat32`` policy does the MIME split; this module does the decoding.
mail-parser calls the same ``email.message_from_bytes`` underneath, then walks every
header twice, parses ``Received:`` chains and formats debug logs eagerly: this module was
2.3x faster per message on the sample mail, and DESIGN.md names parsing as the cost to
beat. mail-parser stays the reference the tests compare our fields against.
``policy.default`` was slower than mail-parser itself (header objects built eagerly).

Robustness contract: whatever the bytes, ``parse_message`` returns a ``Message``.
Unknown charsets and undecodable bytes are decoded with replacement characters and a
defect is recorded; a missing closing boundary or truncated base64 keep what was read.
"""

from __future__ import annotations

import codecs
import dataclasses
import email
import email.header
import email.utils
import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import Message as EmailMessage
from email.parser import BytesHeaderParser
from html.parser import HTMLParser

from seftpilot.core.message import (
    RECEIVED_COUNT,
    SELECTED_HEADERS,
    Attachment,
    Message,
    frozen_headers,
)

MAX_DEFECTS = 50
_SELECTED = frozenset(SELECTED_HEADERS)
# A fold: compat32 keeps the line break it split on, CRLF, LF or a lone CR (a header
# must not carry any of them into a field: tests/fuzz/test_mime.py).
_FOLD = re.compile(r"(?:\r\n?|\n)[ \t]*")
_SURROGATES = re.compile("[\udc80-\udcff]")
# Fallback charsets for bytes that are not what they claim: UTF-8 first (most common
# lie: "us-ascii" declared, UTF-8 sent), then Windows-1252 (Outlook), which decodes
# almost any byte, so replacement characters only remain for its five undefined bytes.
_FALLBACKS = ("utf-8", "cp1252")


class _Defects:
    """Collects defect descriptions, capped so a hostile message cannot grow the list."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._seen: set[str] = set()

    def add(self, text: str) -> None:
        if text in self._seen:
            return
        self._seen.add(text)
        if len(self.items) < MAX_DEFECTS:
            self.items.append(text)
        elif len(self.items) == MAX_DEFECTS:
            self.items.append("more defects not listed")


def _decode_bytes(data: bytes, charset: str | None, where: str, defects: _Defects) -> str:
    """Decode ``data`` in ``charset``; on failure fall back and record why."""
    name = (charset or "us-ascii").strip().strip('"').lower()
    if name in ("unknown-8bit", "x-unknown", "8bit", "default"):
        name = ""
    if name:
        try:
            codecs.lookup(name)
        except LookupError:
            defects.add(f"{where}: unknown charset {name!r}; decoded as UTF-8/Windows-1252")
            name = ""
    if name:
        try:
            return data.decode(name)
        except UnicodeDecodeError:
            if name not in ("us-ascii", "ascii"):
                defects.add(f"{where}: bytes are not valid {name}; decoded with replacement")
    for fallback in _FALLBACKS:
        try:
            return data.decode(fallback)
        except UnicodeDecodeError:
            continue
    return data.decode("cp1252", errors="replace")  # pragma: no cover - cp1252 rarely fails


def _unsurrogate(value: str, where: str, defects: _Defects) -> str:
    """compat32 carries raw 8-bit header bytes as surrogate escapes; decode them."""
    if not _SURROGATES.search(value):
        return value
    defects.add(f"{where}: raw 8-bit bytes in header")
    data = value.encode("ascii", errors="surrogateescape")
    return _decode_bytes(data, "utf-8", where, _Defects())


def decode_header_value(value: object, where: str, defects: _Defects) -> str:
    """One header value as text: unfolded, RFC 2047 words decoded, raw bytes decoded."""
    if isinstance(value, email.header.Header):
        value = value.encode()  # back to its wire form; decoded below like any other
    text = _FOLD.sub(" ", str(value))
    text = _unsurrogate(text, where, defects)
    if "=?" not in text:
        return text.strip()
    try:
        parts = email.header.decode_header(text)
    except Exception:  # binascii / HeaderParseError on malformed encoded words
        defects.add(f"{where}: malformed encoded word; kept as written")
        return text.strip()
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
        else:
            out.append(_decode_bytes(chunk, charset, where, defects))
    # Plain segments keep their own spacing; the space between two adjacent encoded
    # words is not part of the text (RFC 2047 section 6.2), so plain concatenation is right.
    return " ".join("".join(out).split())


# The everyday shapes of one address, ``Display Name <user@example.org>``,
# ``"Quoted, Name" <user@example.org>`` (NHS England's own notices) or a bare
# ``user@example.org``, read without email.utils.getaddresses (a character-by-character
# parser that cost ~0.03 ms per header, 10% of a catch-up's budget). Anything else
# (escapes, comments, groups, lists, odd dots) goes to getaddresses. A property test
# (tests/unit/test_message_parse.py) holds this to getaddresses' answers.
_ADDR = r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
_SIMPLE_ADDRESS = re.compile(
    rf"[ \t]*(?:([A-Za-z0-9'-]+(?: [A-Za-z0-9'-]+)*) ?<({_ADDR})>"
    rf'|"([^"\\]*)"[ \t]*<({_ADDR})>|({_ADDR}))[ \t]*'
)


def _simple_address(value: str) -> tuple[str, str] | None:
    found = _SIMPLE_ADDRESS.fullmatch(value)
    if found is None:
        return None
    name, routed, quoted, quoted_routed, bare = found.groups()
    if routed:
        return name, routed
    if quoted_routed:
        return quoted, quoted_routed  # the quotes' content, as getaddresses gives it
    return "", bare


def _addresses(values: list[str], where: str, defects: _Defects) -> list[tuple[str, str]]:
    """(display name, address) pairs; names decoded, addresses lower-cased."""
    if not values:
        return []
    raw = [_unsurrogate(_FOLD.sub(" ", str(v)), where, defects) for v in values]
    simple = [_simple_address(v) for v in raw]
    if all(pair is not None for pair in simple):
        pairs = [pair for pair in simple if pair is not None]
    else:
        try:
            pairs = email.utils.getaddresses(raw)
        except Exception:
            defects.add(f"{where}: unparseable address list")
            return []
    result = []
    for name, addr in pairs:
        if not addr and not name:
            continue
        result.append((decode_header_value(name, where, defects), addr.strip().lower()))
    return result


def _parse_date(value: str | None, defects: _Defects) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.add(f"Date: unparseable {value[:60]!r}")
        return None
    if parsed.tzinfo is None:  # "-0000": time in UTC, source zone unknown (RFC 5322 3.3)
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


class _HtmlToText(HTMLParser):
    """HTML -> plain text good enough for rules: blocks become lines, links keep URLs.

    stdlib rather than html2text: no Markdown markup (``**``, ``[..](..)``) leaks into
    the text rules match against, and it is several times faster.
    """

    _BLOCK = frozenset(
        [
            "p",
            "div",
            "br",
            "tr",
            "li",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "table",
            "ul",
            "ol",
            "blockquote",
            "pre",
            "hr",
            "section",
            "article",
        ]
    )
    _SKIP = frozenset(("script", "style", "head", "title"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0
        self._href: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            self.out.append("\n")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "a":
            self._href.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.out.append("\n")
        elif tag == "a" and self._href:
            href = self._href.pop()
            if href and not href.startswith(("mailto:", "#")):
                self.out.append(f" <{href}>")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.out).splitlines())
        return "\n".join(_squeeze(lines)).strip()


def _squeeze(lines: Iterator[str]) -> Iterator[str]:
    """Collapse runs of blank lines into one."""
    blank = False
    for line in lines:
        if line:
            blank = False
            yield line
        elif not blank:
            blank = True
            yield line


def html_to_text(html: str) -> str:
    parser = _HtmlToText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # pragma: no cover - HTMLParser is lenient; belt and braces
        return re.sub(r"<[^>]*>", " ", html)
    return parser.text()


def _part_payload(part: EmailMessage, where: str, defects: _Defects) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # pragma: no cover - compat32 decodes leniently
        defects.add(f"{where}: payload could not be decoded")
        return b""
    return data if isinstance(data, bytes) else b""


def _collect_defects(part: EmailMessage, where: str, defects: _Defects) -> None:
    for defect in getattr(part, "defects", ()):
        defects.add(f"{where}: {type(defect).__name__}")


class _Body:
    def __init__(self) -> None:
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[Attachment] = []


def _walk(
    part: EmailMessage,
    body: _Body,
    defects: _Defects,
    *,
    path: str,
    in_attachment: bool,
    depth: int,
) -> None:
    ctype = part.get_content_type()
    where = f"part {path} ({ctype})"
    _collect_defects(part, where, defects)
    if depth > 20:
        defects.add(f"{where}: nesting deeper than 20 levels not read")
        return
    raw_filename = _filename(part, where, defects)
    filename = decode_header_value(raw_filename, where, defects) if raw_filename else ""
    disposition = (part.get_content_disposition() or "").lower()

    if ctype == "message/rfc822" or (part.is_multipart() and ctype.startswith("message/")):
        inner = part.get_payload()
        inner_msgs = (
            [m for m in inner if isinstance(m, EmailMessage)] if isinstance(inner, list) else []
        )
        if ctype == "message/rfc822":
            for i, msg in enumerate(inner_msgs):
                # A forwarded-as-attachment message: its text joins the body so rules
                # written for the original still match (Outlook "Forward as attachment").
                subj = decode_header_value(msg.get("subject", ""), where, defects)
                frm = decode_header_value(msg.get("from", ""), where, defects)
                sub_body = _Body()
                _walk(
                    msg,
                    sub_body,
                    defects,
                    path=f"{path}.{i + 1}",
                    in_attachment=False,
                    depth=depth + 1,
                )
                header = f"----- attached message -----\nFrom: {frm}\nSubject: {subj}\n\n"
                text = "\n".join(sub_body.plain) or html_to_text("\n".join(sub_body.html))
                if not in_attachment:
                    body.plain.append(header + text)
                # The message itself is also a file the operator may want (sha256, size).
                data = _as_bytes(msg, where, defects)
                body.attachments.append(
                    Attachment(
                        name=filename or f"{subj[:60] or 'message'}.eml",
                        content_type=ctype,
                        size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                        payload=data,
                    )
                )
                body.attachments.extend(sub_body.attachments)
        else:
            # message/delivery-status etc.: compat32 splits it into header blocks.
            blocks = []
            for msg in inner_msgs:
                blocks.append("\n".join(f"{k}: {_FOLD.sub(' ', str(v))}" for k, v in msg.items()))
            if blocks and not in_attachment:
                body.plain.append(_unsurrogate("\n\n".join(blocks), where, defects))
        return

    if part.is_multipart():
        payload = part.get_payload()
        children = payload if isinstance(payload, list) else []
        child_in_attachment = in_attachment or disposition == "attachment"
        for i, child in enumerate(children):
            if isinstance(child, EmailMessage):
                _walk(
                    child,
                    body,
                    defects,
                    path=f"{path}.{i + 1}",
                    in_attachment=child_in_attachment,
                    depth=depth + 1,
                )
        return

    data = _part_payload(part, where, defects)
    _collect_defects(part, where, defects)  # get_payload(decode=True) adds base64 defects
    is_text_body = (
        ctype in ("text/plain", "text/html", "text/rfc822-headers")
        and disposition != "attachment"
        and not filename
        and not in_attachment
    )
    if is_text_body:
        text = _decode_bytes(data, part.get_content_charset(), where, defects)
        (body.html if ctype == "text/html" else body.plain).append(text)
        return
    name = filename or _default_name(ctype, len(body.attachments) + 1)
    body.attachments.append(
        Attachment(
            name=name,
            content_type=ctype,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            payload=data,
        )
    )


def _filename(part: EmailMessage, where: str, defects: _Defects) -> str | None:
    """``part.get_filename()``, which parses Content-Disposition and Content-Type for
    their parameters (~0.03 ms a part): skipped when neither header has a ``name``
    parameter to find (``filename``, ``name`` and their RFC 2231 ``*`` forms all contain
    the word), as in the text parts of nearly every message."""
    disposition = part.get("content-disposition")
    ctype = part.get("content-type")
    if "name" not in str(disposition or "").lower() and "name" not in str(ctype or "").lower():
        return None
    try:
        return part.get_filename()
    except Exception:
        defects.add(f"{where}: unreadable file name")
        return None


def _as_bytes(msg: EmailMessage, where: str, defects: _Defects) -> bytes:
    try:
        return msg.as_bytes()
    except Exception:  # re-serialising a damaged message can fail; the text is kept
        defects.add(f"{where}: attached message could not be re-serialised")
        return b""


def _default_name(ctype: str, index: int) -> str:
    ext = {"text/plain": "txt", "text/csv": "csv", "text/html": "html"}.get(ctype, "bin")
    return f"attachment-{index}.{ext}"


_ENVELOPE = ("from", "to", "cc", "message-id", "subject", "date")


def _envelope(msg: EmailMessage, raw: bytes, defects: _Defects) -> dict[str, object]:
    """Everything readable from the header block alone, in one pass over the headers."""
    found: dict[str, list[str]] = {name: [] for name in _ENVELOPE}
    chosen: dict[str, tuple[str, object]] = {}  # selected header -> (name as written, value)
    received = 0
    for name, value in msg.raw_items():
        key = name.lower()
        values = found.get(key)
        if values is not None:
            values.append(str(value))
        elif key == "received":
            received += 1
        elif key in _SELECTED and key not in chosen:
            chosen[key] = (name, value)

    def first(key: str) -> str | None:
        values = found[key]
        return values[0] if values else None

    # Decoded in this order, so the defects are listed as before the single pass.
    froms = _addresses(found["from"], "From", defects)
    from_name, from_addr = froms[0] if froms else ("", "")
    if not froms:
        defects.add("From: missing or unparseable")
    selected = {
        key: decode_header_value(value, name, defects) for key, (name, value) in chosen.items()
    }
    selected[RECEIVED_COUNT] = str(received)
    return {
        "message_id": decode_header_value(first("message-id") or "", "Message-ID", defects),
        "from_addr": from_addr,
        "from_name": from_name,
        "to": tuple(a for _, a in _addresses(found["to"], "To", defects) if a),
        "cc": tuple(a for _, a in _addresses(found["cc"], "Cc", defects) if a),
        "subject": decode_header_value(first("subject") or "", "Subject", defects),
        "date": _parse_date(first("date"), defects),
        "headers": frozen_headers(selected),
        "size": len(raw),
    }


def parse_message(raw: bytes) -> Message:
    """Parse one message. Never raises for any input bytes; see ``Message.defects``."""
    defects = _Defects()
    try:
        msg = email.message_from_bytes(raw)
        envelope = _envelope(msg, raw, defects)
        body = _Body()
        _walk(msg, body, defects, path="1", in_attachment=False, depth=0)
    except Exception as exc:  # last resort: RecursionError, a bug of ours, a stdlib edge
        # Keep what the header block says (From, Subject): the stdlib parser recurses once
        # per MIME level, so deep nesting fails here while the headers alone still read.
        defects.add(f"message could not be parsed ({type(exc).__name__}); headers only")
        head = parse_headers(raw)
        return dataclasses.replace(head, defects=(*defects.items, *head.defects))
    if body.plain:
        text, html_used = "\n".join(body.plain), False
    elif body.html:
        text, html_used = html_to_text("\n".join(body.html)), True
    else:
        text, html_used = "", False
    return Message(
        text=text.replace("\r\n", "\n"),
        html_text_used=html_used,
        attachments=tuple(body.attachments),
        defects=tuple(defects.items),
        **envelope,  # type: ignore[arg-type]
    )


def parse_headers(raw: bytes) -> Message:
    """Header-only parse for header-first triage: no body, no attachments.

    About 3x cheaper than ``parse_message`` on typical notices; the body, attachments and
    body-level defects are left empty, so only rules that read headers can be decided.
    """
    defects = _Defects()
    try:
        msg = BytesHeaderParser().parsebytes(raw)
        envelope = _envelope(msg, raw, defects)
    except Exception as exc:
        defects.add(f"headers could not be parsed ({type(exc).__name__})")
        return _empty(raw, defects)
    return Message(
        text="",
        html_text_used=False,
        attachments=(),
        defects=tuple(defects.items),
        **envelope,  # type: ignore[arg-type]
    )


def _empty(raw: bytes, defects: _Defects) -> Message:
    return Message(
        message_id="",
        from_addr="",
        from_name="",
        to=(),
        cc=(),
        subject="",
        date=None,
        text="",
        html_text_used=False,
        attachments=(),
        headers=frozen_headers({}),
        defects=tuple(defects.items),
        size=len(raw),
    )


__all__ = ["decode_header_value", "html_to_text", "parse_headers", "parse_message"]
