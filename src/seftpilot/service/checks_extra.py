"""The checks that capabilities add to ``seftpilot check`` (rules, profiles, servers)."""

from __future__ import annotations

from collections.abc import Callable

from seftpilot.config import Settings

Check = tuple[str, Callable[[Settings], str]]


def offline_checks() -> list[Check]:
    from seftpilot.adapters.rules_files import check_configured_rules

    return [("rules", check_configured_rules)]


def connect_checks() -> list[Check]:
    return []
