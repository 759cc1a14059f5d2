"""Mail intake: read the mailbox, classify each message, hand it on, never lose or repeat one.

Wires ``adapters.imap`` (the server), ``adapters.mailparse`` + ``core.rules`` (meaning) and
``adapters.mail_store`` (the record). For every message above the checkpoint, in UID order:

    fetch a batch -> parse + classify each -> record the batch ``received`` (one
    transaction) -> per message: on_message(record, message, class)
          -> ``handled`` (one transaction) -> flag/move if configured -> ``tidied``
    -> the checkpoint moves to the batch's last UID (with its last ``handled`` mark)

Every row is in the ledger before its ``on_message`` runs; a message is never marked
handled, nor the checkpoint moved past it, before its own ``on_message`` returned.
The row's state, not the checkpoint, is what stops a second handling: after a crash
mid-batch the checkpoint is behind, the batch is fetched again, and a message whose row
says ``handled`` only moves the checkpoint. So the checkpoint is written once per batch
rather than once per message (3.5 -> 2.5 pages written to the WAL per message in a
catch-up, so fewer auto-checkpoints and their fsyncs; see benchmarks/RESULTS.md).

The flag/move is resumable: a message is ``tidied`` in the ledger only after the server
did it (at once with ``handled`` when ``after_handling = none``). If the process dies or
the connection drops between ``handled`` and the tidy-up, the next catch-up (right after
SELECT, for the current UIDVALIDITY) flags/moves every handled-but-untidied message in
one command per ``TIDY_BATCH``; a UID no longer in the folder is a no-op for the server.
A PermanentError from the tidy-up is logged and the message still counts as tidied, so
it cannot loop.

A message whose ``on_message`` raises is marked ``failed`` (attempts + 1) and the checkpoint
moves past it, so one poison message cannot stop the mailbox; it is retried on later cycles
until ``max_attempts``, then abandoned with a ``mail.abandoned`` event for the monitor.

``run(stop)`` is the long-running loop: take the mailbox lock, connect, catch up, then wait
(IDLE or poll) and catch up again, recording listening coverage after every successful
cycle. After any drop it reconnects under ``RECONNECT``, the project's one retry policy
(``adapters.retry``: exponential backoff with jitter, only ``TransientError`` retried,
bounded by attempts and total time) and always catches up before waiting again. It
honours ``stop`` within about a second. SIGTERM handling and the CLI belong to the
watcher; ``run_intake(settings, stop)`` is its entry point.

``preview_mailbox`` is ``rules test --mailbox``: the same parse + classify over the live
folder with no side effects at all (EXAMINE, BODY.PEEK, no ledger, no lock, no flag/move).

Must not: act on a classification itself (that is ``on_message``'s job), flag or move a
message before it is handled, or swallow an authentication/TLS error (those stop the loop).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from seftpilot.adapters import retry
from seftpilot.adapters.clock import Clock, SystemClock
from seftpilot.adapters.imap import FetchedMessage, ImapMailbox
from seftpilot.adapters.locks import MailboxLock
from seftpilot.adapters.mail_store import (
    ListeningKind,
    MailRecord,
    MailStore,
    NewMail,
    dedupe_key,
)
from seftpilot.adapters.mailparse import parse_message
from seftpilot.adapters.oauth import OAuthTokenProvider
from seftpilot.adapters.store import Store
from seftpilot.config import ImapSettings, Settings
from seftpilot.core.message import Message
from seftpilot.core.rules import Classification, RuleSet, classify
from seftpilot.errors import PermanentError, TransientError, TransportError

log = logging.getLogger(__name__)

OnMessage = Callable[[MailRecord, Message, Classification], None]
OnAbandoned = Callable[[MailRecord, str], None]

DEFAULT_MAX_ATTEMPTS = 5
# Parsed messages (attachments decoded) of one recording batch are held until handled:
# cap their raw size so a backlog of large attachments cannot balloon memory.
RECORD_BATCH_BYTES = 16 * 1024 * 1024
# Interrupted tidy-ups redone per UID STORE/MOVE command: keeps the command line short.
TIDY_BATCH = 500


# Reconnecting: 12 attempts within 30 minutes, waits from 1 s doubling to 5 minutes (plus up
# to 1 s of jitter); then the TransientError reaches the watcher. The same growth paces
# reconnects after a connection that keeps dying before one cycle completes. Tests remove
# the waits with the retry module's switch (``retry.testing()``), not by editing this.
RECONNECT = retry.RetryPolicy(
    attempts=12, timeout=1800.0, wait_initial=1.0, wait_max=300.0, wait_jitter=1.0
)


def account_name(imap: ImapSettings) -> str:
    """How the ledger names a mailbox account: ``username@host``."""
    return f"{imap.username or 'anonymous'}@{imap.host}"


@dataclass
class CatchUpReport:
    uidvalidity: int = 0
    last_uid: int = 0
    fetched: int = 0
    handled: int = 0
    failed: int = 0
    duplicates: int = 0
    retried: int = 0
    abandoned: int = 0
    tidied_late: int = 0  # handled earlier, flagged/moved only now (after a crash or drop)
    renumbered_from: list[int] = field(default_factory=list)


def open_mailbox(settings: Settings, clock: Clock) -> ImapMailbox:
    """The configured mailbox (OAuth2 token source included when ``imap.auth`` says so)."""
    provider = None
    if settings.imap.auth == "xoauth2":
        provider = OAuthTokenProvider(settings.imap.oauth, now=clock.now)
    return ImapMailbox(settings.imap, token_provider=provider)


@dataclass
class _Item:
    """One fetched message on its way through a batch; no classification (and no
    record) when it was already handled under an earlier UIDVALIDITY."""

    fetched: FetchedMessage
    message: Message
    classification: Classification | None
    record: MailRecord | None = None


def _by_size(batch: list[FetchedMessage], limit: int) -> Iterator[list[FetchedMessage]]:
    """``batch`` in order, cut into runs of at most ``limit`` raw bytes (at least one
    message each)."""
    run: list[FetchedMessage] = []
    size = 0
    for fetched in batch:
        if run and size + len(fetched.raw) > limit:
            yield run
            run, size = [], 0
        run.append(fetched)
        size += len(fetched.raw)
    if run:
        yield run


def _ignore(record: MailRecord, message: Message, classification: Classification) -> None:
    """The default hook: the record and classification are already in the ledger."""


class MailIntake:
    """The mailbox reader for one account + folder."""

    def __init__(
        self,
        settings: Settings,
        store: Store | MailStore,
        ruleset: RuleSet,
        clock: Clock,
        on_message: OnMessage | None = None,
        *,
        mailbox: ImapMailbox | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        on_abandoned: OnAbandoned | None = None,
        parse: Callable[[bytes], Message] = parse_message,
    ) -> None:
        self.settings = settings
        self.mail = store if isinstance(store, MailStore) else MailStore(store)
        self.ruleset = ruleset
        self.clock = clock
        self.on_message = on_message or _ignore
        self.on_abandoned = on_abandoned
        self.max_attempts = max_attempts
        self.parse = parse
        self.account = account_name(settings.imap)
        self.folder = settings.imap.folder
        self.mailbox = mailbox if mailbox is not None else open_mailbox(settings, clock)

    # -- one pass ----------------------------------------------------------------
    def catch_up(
        self, stop: threading.Event | None = None, *, kind: ListeningKind = "catchup"
    ) -> CatchUpReport:
        """Handle everything above the checkpoint, retry failed messages, then record a
        listening cycle of ``kind``. Connects first if needed."""
        if not self.mailbox.connected:
            self.mailbox.connect()
        folder = self.mailbox.select(self.folder)
        uv = folder.uidvalidity
        report = CatchUpReport(uidvalidity=uv)
        last = self.mail.checkpoint(self.account, self.folder, uv)
        if last is None:
            report.renumbered_from = self.mail.start_uidvalidity(
                self.account, self.folder, uv, self.clock.now()
            )
            if report.renumbered_from:
                log.warning(
                    "%s %s: UIDVALIDITY changed (%s -> %s); re-reading the folder, skipping "
                    "messages already handled",
                    self.account,
                    self.folder,
                    report.renumbered_from,
                    uv,
                )
            last = 0
        # Tidy-ups cut short by a crash or a drop: done before anything new is handled.
        self._tidy_interrupted(uv, report)
        # Only after a renumbering can a message come back under a new UID.
        others = any(v != uv for v in self.mail.uidvalidities(self.account, self.folder))
        attempted: set[int] = set()
        for fetched_batch in self.mailbox.fetch_batches(self.mailbox.uids_above(last)):
            for batch in _by_size(fetched_batch, RECORD_BATCH_BYTES):
                # The whole batch is parsed, classified and recorded as `received` in one
                # transaction, then handled message by message in UID order.
                items = self._record_batch(batch, uv, dedupe=others, report=report)
                for n, item in enumerate(items, start=1):
                    uid = item.fetched.uid
                    attempted.add(uid)
                    # The checkpoint rides on the batch's last message only (see above).
                    batch_end = n == len(items)
                    self._process(item, uv, report, advance=batch_end)
                    report.last_uid = uid
                    if stop is not None and stop.is_set():
                        # The message in hand is finished; the rest of the batch is in
                        # the ledger as `received` and is handled on the next pass.
                        if not batch_end:
                            self.mail.advance(self.account, self.folder, uv, uid, self.clock.now())
                        return report
        self._retry_failed(uv, attempted, report)
        self.mail.record_listening(self.account, self.folder, self.clock.now(), kind)
        return report

    def _record_batch(
        self, batch: list[FetchedMessage], uv: int, *, dedupe: bool, report: CatchUpReport
    ) -> list[_Item]:
        """Parse and classify ``batch``; record the new ones as ``received`` together."""
        items: list[_Item] = []
        pending: list[NewMail] = []
        now = self.clock.now()
        for fetched in batch:
            report.fetched += 1
            message = self.parse(fetched.raw)
            key = dedupe_key(
                message.message_id,
                date=message.date,
                from_addr=message.from_addr,
                subject=message.subject,
                size=fetched.size,
            )
            if dedupe:
                earlier = self.mail.seen_elsewhere(self.account, self.folder, key, uv)
                if earlier is not None and earlier.state == "handled":
                    items.append(_Item(fetched, message, None))
                    continue
            classification = classify(message, self.ruleset)
            items.append(_Item(fetched, message, classification))
            pending.append(
                NewMail(
                    account=self.account,
                    folder=self.folder,
                    uidvalidity=uv,
                    uid=fetched.uid,
                    key=key,
                    message_id=message.message_id,
                    received_at=fetched.internal_date or now,
                    sent_at=message.date,
                    from_addr=message.from_addr,
                    subject=message.subject,
                    size=fetched.size,
                    rule=classification.rule,
                    class_=classification.class_,
                    action=classification.action,
                    captures=classification.captures,
                    defects=message.defects,
                )
            )
        records = iter(self.mail.record_received_many(pending, now))
        for item in items:
            if item.classification is not None:
                item.record = next(records)
            else:
                report.duplicates += 1
        return items

    def _process(self, item: _Item, uv: int, report: CatchUpReport, *, advance: bool) -> None:
        """Handle one message of a recorded batch; with ``advance``, also move the
        checkpoint to it (every message before it in the batch is dealt with)."""
        uid = item.fetched.uid
        if item.record is None or item.record.state == "handled":
            # Handled under an earlier UIDVALIDITY, or before a crash that came before the
            # checkpoint moved: nothing to do but, at the batch's end, the checkpoint.
            if advance:
                self.mail.advance(self.account, self.folder, uv, uid, self.clock.now())
            return
        assert item.classification is not None
        self._handle(
            item.record,
            item.message,
            item.classification,
            report,
            advance_to=uid if advance else None,
        )

    def _handle(
        self,
        record: MailRecord,
        message: Message,
        classification: Classification,
        report: CatchUpReport,
        *,
        advance_to: int | None = None,
    ) -> None:
        try:
            self.on_message(record, message, classification)
        except Exception as exc:  # any failure of the hook: record it, move on
            error = f"{type(exc).__name__}: {exc}"
            gave_up = record.attempts + 1 >= self.max_attempts
            attempts = self.mail.mark_failed(
                record, error, self.clock.now(), advance_to=record.uid, gave_up=gave_up
            )
            report.failed += 1
            log.warning(
                "%s uid %s (%s): handling failed, attempt %s of %s: %s",
                self.folder,
                record.uid,
                classification.rule,
                attempts,
                self.max_attempts,
                error,
            )
            if gave_up:
                report.abandoned += 1
                if self.on_abandoned is not None:
                    self.on_abandoned(self.mail.by_id(record.id), error)
            return
        nothing_to_tidy = self.mailbox.settings.after_handling == "none"
        self.mail.mark_handled(
            record, self.clock.now(), advance_to=advance_to, tidied=nothing_to_tidy
        )
        report.handled += 1
        if not nothing_to_tidy:
            # A TransientError here leaves the row handled but untidied: the next
            # catch-up, after reconnecting, does the tidy-up (``_tidy_interrupted``).
            self._tidy([record])

    def _tidy(self, records: list[MailRecord]) -> None:
        """Flag/move ``records`` (handled, same UIDVALIDITY) on the server, then record
        them tidied. A PermanentError is logged and they count as tidied all the same:
        the message is handled and recorded, only the tidy-up failed, and retrying it on
        every pass would only repeat the warning."""
        uids = [r.uid for r in records]
        try:
            done = self.mailbox.after_handling_many(uids)
        except PermanentError as exc:
            if len(records) > 1:
                # One refused UID must not leave the others untidied: one by one.
                for record in records:
                    self._tidy([record])
                return
            log.warning("%s uid %s: handled, but %s", self.folder, uids[0], exc)
        else:
            if done:
                log.debug("%s uid %s: %s", self.folder, ",".join(map(str, uids)), done)
        self.mail.mark_tidied([r.id for r in records], self.clock.now())

    def _tidy_interrupted(self, uv: int, report: CatchUpReport) -> None:
        """Redo the flag/move of messages handled under ``uv`` whose tidy-up was cut short."""
        pending = self.mail.untidied(self.account, self.folder, uv)
        if not pending:
            return
        if self.mailbox.settings.after_handling == "none":
            # The configuration changed since: nothing to do on the server any more.
            self.mail.mark_tidied([r.id for r in pending], self.clock.now())
            return
        log.info(
            "%s %s: flagging/moving %s message(s) handled before an interruption",
            self.account,
            self.folder,
            len(pending),
        )
        for start in range(0, len(pending), TIDY_BATCH):
            chunk = pending[start : start + TIDY_BATCH]
            self._tidy(chunk)
            report.tidied_late += len(chunk)

    def _retry_failed(self, uv: int, attempted: set[int], report: CatchUpReport) -> None:
        for record in self.mail.retryable(self.account, self.folder, uv, self.max_attempts):
            if record.uid in attempted or record.state != "failed":
                continue
            fetched = list(self.mailbox.fetch([record.uid]))
            if not fetched:
                self.mail.mark_failed(
                    record,
                    "message no longer in the folder (moved or deleted by someone)",
                    self.clock.now(),
                    gave_up=True,
                )
                report.abandoned += 1
                continue
            report.retried += 1
            message = self.parse(fetched[0].raw)
            # Classified afresh: the operator may have fixed the rules meanwhile.
            self._handle(record, message, classify(message, self.ruleset), report)

    def close(self) -> None:
        """Log out of the mailbox (``run`` does this itself when it returns)."""
        self.mailbox.close()

    # -- the loop ---------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Listen until ``stop`` is set. Raises AlreadyRunning if another runner holds this
        mailbox, PermanentError (auth, TLS) at once, TransientError when reconnecting
        has used up its attempts or time."""
        with MailboxLock(self.settings.state_dir, self.account, self.folder):
            try:
                self._loop(stop)
            finally:
                self.mailbox.close()

    def _loop(self, stop: threading.Event) -> None:
        quick_drops = 0
        while not stop.is_set():
            self._connect_and_catch_up(stop)
            cycles = 0
            try:
                while not stop.is_set():
                    waited = self.mailbox.wait(stop)
                    self.catch_up(stop, kind=waited.kind)
                    cycles += 1
            except TransientError as exc:
                log.warning("%s: connection lost (%s); reconnecting", self.account, exc)
                self._event("mail.connection_lost", {"error": str(exc), "cycles": cycles})
                # A connection that dies before completing one cycle is flapping: back off
                # before the next attempt instead of hammering the server.
                quick_drops = 0 if cycles else quick_drops + 1
                if quick_drops:
                    stop.wait(retry.backoff(RECONNECT, quick_drops))

    def _connect_and_catch_up(self, stop: threading.Event) -> None:
        """Connect and catch up, retried under ``RECONNECT`` on the intake's clock (only
        what ``retry.is_retryable`` says is transient; a stop request cuts a wait short
        and ends the retrying quietly)."""

        def attempt() -> None:
            if stop.is_set():
                return
            # A fresh token is fetched by connect() on every reconnect.
            self.mailbox.connect()
            self.catch_up(stop, kind="catchup")

        try:
            retry.run(
                attempt,
                what=f"reaching the mailbox {self.account}",
                policy=RECONNECT,
                clock=self.clock,
                stop=stop,
            )
        except TransportError as exc:
            # What retry.run retries is what a stop may cut short: the same test as its own.
            if stop.is_set() and retry.is_retryable(exc):
                return  # stopping anyway: the outer loop ends, the lock is released
            raise

    def _event(self, kind: str, detail: dict[str, Any]) -> None:
        with self.mail.store.transaction() as conn:
            Store.append_event(
                conn,
                kind,
                at=self.clock.now(),
                subject_type="mailbox",
                detail={"account": self.account, "folder": self.folder, **detail},
            )


@dataclass(frozen=True)
class PreviewItem:
    """One message of the live folder as the rules see it (``rules test --mailbox``)."""

    folder: str
    uid: int
    internal_date: datetime | None
    message: Message
    classification: Classification

    @property
    def ref(self) -> str:
        """How ``rules test --json`` names it: ``imap:<folder>/<uid>``."""
        return f"imap:{self.folder}/{self.uid}"


@dataclass(frozen=True)
class Preview:
    folder: str
    uidvalidity: int
    total: int  # messages that met --since, before --limit
    items: tuple[PreviewItem, ...]


def preview_mailbox(
    settings: Settings,
    ruleset: RuleSet,
    *,
    limit: int | None = None,
    since: date | None = None,
    explain: bool = False,
    clock: Clock | None = None,
    mailbox: ImapMailbox | None = None,
) -> Preview:
    """Classify the newest ``limit`` messages (received ``since`` that day) of the
    configured folder, changing nothing anywhere.

    The folder is opened with EXAMINE (read-only: the server keeps every flag, \\Seen
    and \\Recent included), bodies are read with BODY.PEEK[], and neither the ledger nor
    the mailbox lock is touched, so it can run beside a live ``seftpilot watch``. The only
    write it can cause is the one any login causes: a rotated OAuth2 refresh token is
    saved, because losing it would lock the service out.
    """
    box = mailbox if mailbox is not None else open_mailbox(settings, clock or SystemClock())
    folder_name = settings.imap.folder
    try:
        if not box.connected:
            box.connect()
        folder = box.select(folder_name, readonly=True)
        if not folder.read_only:  # pragma: no cover - EXAMINE is read-only by definition
            raise PermanentError(
                f"the server opened {folder_name} read-write for EXAMINE; not reading it",
                server=box.server,
            )
        uids = box.search_uids(since)
        chosen = uids[-limit:] if limit else uids
        items = []
        for fetched in box.fetch(chosen):
            message = parse_message(fetched.raw)
            items.append(
                PreviewItem(
                    folder=folder_name,
                    uid=fetched.uid,
                    internal_date=fetched.internal_date,
                    message=message,
                    classification=classify(message, ruleset, explain=explain),
                )
            )
    finally:
        if mailbox is None:
            box.close()
    return Preview(
        folder=folder_name, uidvalidity=folder.uidvalidity, total=len(uids), items=tuple(items)
    )


def run_intake(
    settings: Settings,
    stop: threading.Event,
    *,
    on_message: OnMessage | None = None,
    clock: Clock | None = None,
    store: Store | None = None,
    on_abandoned: OnAbandoned | None = None,
) -> None:
    """Entry point for ``seftpilot watch``: load the rules, open the ledger, listen."""
    from seftpilot.adapters.rules_files import load_rules

    ruleset = load_rules(list(settings.rules))
    own_store = store is None
    ledger = store if store is not None else Store(settings.state_dir)
    try:
        MailIntake(
            settings,
            ledger,
            ruleset,
            clock or SystemClock(),
            on_message,
            on_abandoned=on_abandoned,
        ).run(stop)
    finally:
        if own_store:
            ledger.close()
