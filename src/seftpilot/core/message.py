"""The parsed e-mail as a value: ``Message`` and its ``Attachment`` s.

Owns the shape every later step reads (rules, correlation, the ledger record). Must not
parse bytes (``adapters.mailparse`` does that), touch files or the network, or hold
mutable state: a ``Message`` is frozen (its headers a read-only mapping), so it can be
passed around and recorded without anyone changing it underneath.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

# Headers kept on ``Message.headers`` (lower-case keys). Only these: rules and correlation
# need them, and keeping every header of every message would bloat the record for nothing.
SELECTED_HEADERS: tuple[str, ...] = (
    "auto-submitted",
    "x-auto-response-suppress",
    "precedence",
    "return-path",
    "x-seftpilot-canary",
    "content-type",
    "in-reply-to",
    "references",
    "x-failed-recipients",
    "list-id",
    "x-autoreply",
    "x-autorespond",
    "x-ms-exchange-generated-message-source",
    "reply-to",
    "sender",
)
# Not a real header: the number of ``Received:`` lines, as a string, under this key.
RECEIVED_COUNT = "received-count"


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attached file. ``payload`` is the decoded bytes (kept out of ``repr``)."""

    name: str
    content_type: str
    size: int
    sha256: str
    payload: bytes = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Message:
    """What could be read from one e-mail. ``defects`` lists what could not.

    ``text`` is the plain-text body; when the message had only HTML, ``text`` is that
    HTML converted to text and ``html_text_used`` is True. ``headers`` holds the selected
    headers above, keyed in lower case, decoded; ``received-count`` counts ``Received:``.
    ``size`` is the length of the raw bytes.
    """

    message_id: str
    from_addr: str
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    date: datetime | None
    text: str
    html_text_used: bool
    attachments: tuple[Attachment, ...]
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    defects: tuple[str, ...] = ()
    size: int = 0

    def header(self, name: str) -> str | None:
        """A selected header by name, case-insensitively; None when absent."""
        return self.headers.get(name.lower())

    @property
    def attachment_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attachments)


def frozen_headers(values: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy of ``values`` with lower-case keys."""
    return MappingProxyType({k.lower(): v for k, v in values.items()})


__all__ = ["RECEIVED_COUNT", "SELECTED_HEADERS", "Attachment", "Message", "frozen_headers"]
