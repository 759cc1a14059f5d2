"""The running process's parts, built once from the settings.

Owns construction: the store, the repositories, the mailer, the clock, the bank holidays
and the rules, each made on first use so that a command only opens what it needs (``pool
show`` never touches SMTP). Must not decide anything; workflows take a Runtime and act.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

from seftpilot.adapters.clock import Clock, SystemClock
from seftpilot.adapters.store import Store
from seftpilot.config import Settings
from seftpilot.logs import register_secrets

if TYPE_CHECKING:
    from seftpilot.adapters.ledger_store import LedgerStore
    from seftpilot.adapters.mail_store import MailStore
    from seftpilot.adapters.smtp import Mailer
    from seftpilot.core.rules import RuleSet


@lru_cache(maxsize=8)
def _holidays_for(year: int) -> frozenset[date]:
    # The holidays package computes its tables on every call; timers ask every tick.
    from seftpilot.adapters.holidays_source import bank_holidays

    return bank_holidays(range(year - 1, year + 3))


def _secrets_of(settings: Settings) -> list[object]:
    found: list[object] = [
        settings.imap.password,
        settings.imap.oauth.client_secret,
        settings.smtp.password,
        settings.partner.sftp.password if settings.partner.sftp else None,
        settings.partner.sftp.key_passphrase if settings.partner.sftp else None,
    ]
    for agreement in settings.agreement:
        for endpoint in (agreement.upload.sftp, agreement.download.sftp):
            if endpoint is not None:
                found.extend([endpoint.password, endpoint.key_passphrase])
    return found


@dataclass
class Runtime:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        register_secrets(s for s in _secrets_of(self.settings) if s is not None)  # type: ignore[misc]

    @cached_property
    def store(self) -> Store:
        return Store(self.settings.resolve(self.settings.state_dir))

    @cached_property
    def ledger(self) -> LedgerStore:
        from seftpilot.adapters.ledger_store import LedgerStore

        return LedgerStore(self.store)

    @cached_property
    def mail(self) -> MailStore:
        from seftpilot.adapters.mail_store import MailStore

        return MailStore(self.store)

    @cached_property
    def mailer(self) -> Mailer:
        from seftpilot.adapters.smtp import Mailer

        return Mailer(self.settings.smtp)

    @cached_property
    def rules(self) -> RuleSet:
        from seftpilot.adapters.rules_files import configured_rules_paths, load_rules

        return load_rules(configured_rules_paths(self.settings))

    def holidays(self, around: date | None = None) -> frozenset[date]:
        """England & Wales bank holidays for the years around ``around`` (default: now)."""
        year = (around or self.clock.now().date()).year
        return _holidays_for(year)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
