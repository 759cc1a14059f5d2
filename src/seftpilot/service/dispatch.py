"""Routes each classified message to the capabilities that act on it.

Owns the mapping from a classification's ``class`` to handlers (submission verdict
evidence, canary arrival, new-data forwarding, operator alerts). The intake calls the
Dispatcher as its ``on_message`` hook after the message is recorded and before it is
marked handled; a handler that raises makes the intake mark the message ``failed`` and
retry it on a later cycle, so every handler must be idempotent: claim in the ledger
before any side effect, and treat "already done" as success.

Must not: talk to servers itself or decide what a class means (handlers do).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from seftpilot.adapters.mail_store import MailRecord
from seftpilot.core.message import Message
from seftpilot.core.rules import Classification

log = logging.getLogger(__name__)

Handler = Callable[[MailRecord, Message, Classification], None]
ANY = "*"


class Dispatcher:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    def on(self, class_: str, handler: Handler) -> None:
        """Call ``handler`` for messages of ``class_`` (``"*"``: every message)."""
        self._handlers[class_].append(handler)

    def handlers_for(self, class_: str | None) -> list[Handler]:
        return [*self._handlers.get(class_ or "", []), *self._handlers.get(ANY, [])]

    def __call__(
        self, record: MailRecord, message: Message, classification: Classification
    ) -> None:
        for handler in self.handlers_for(classification.class_):
            handler(record, message, classification)
