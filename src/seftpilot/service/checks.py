"""``seftpilot check``: validate settings and rules, optionally probe servers.

Each check is a small function returning (ok, detail); a failing check never stops the
others, so the operator sees everything that is wrong at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seftpilot.config import Settings
from seftpilot.errors import SeftpilotError

Check = tuple[str, Callable[[Settings], str]]


def _agreements(cfg: Settings) -> str:
    if not cfg.agreement:
        raise SeftpilotError("no [[agreement]] configured")
    return ", ".join(a.nic for a in cfg.agreement)


def _dotenv(cfg: Settings) -> str:
    # Which .env the secrets came from is the first question when one seems missing.
    if cfg.dotenv_file is None:
        return "no .env file read (secrets only from the environment)"
    detail = f"read {cfg.dotenv_file}"
    if cfg.dotenv_ignored is not None:
        detail += f"; ignored {cfg.dotenv_ignored} (the one beside the settings file wins)"
    return detail


def _checks(cfg: Settings, connect: bool) -> list[Check]:
    checks: list[Check] = [("agreements", _agreements), (".env", _dotenv)]
    # Later capabilities register their checks here (rules, profiles, servers).
    from seftpilot.service import checks_extra

    checks.extend(checks_extra.offline_checks())
    if connect:
        checks.extend(checks_extra.connect_checks(cfg))
    return checks


def run_checks(cfg: Settings, *, connect: bool = False) -> dict[str, Any]:
    results = []
    for name, check in _checks(cfg, connect):
        try:
            detail = check(cfg)
            results.append({"name": name, "ok": True, "detail": detail})
        except SeftpilotError as exc:
            results.append({"name": name, "ok": False, "detail": str(exc)})
    return {"ok": all(r["ok"] for r in results), "checks": results}
