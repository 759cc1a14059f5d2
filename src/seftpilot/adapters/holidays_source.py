"""England & Wales bank holidays, from the ``holidays`` package, as plain dates.

Owns the one place the ``holidays`` package is asked; ``core.calendar`` gets the answer as
a ``frozenset[date]`` and never imports the package. Must not read the clock: the caller
says which years it needs.

Why England (``subdiv="ENG"``): the NHS England intake and its staff work to England &
Wales bank holidays; Scotland's 2 January, first Monday of August and St Andrew's Day and
Northern Ireland's St Patrick's Day and 12 July are ordinary working days for it.
England and Wales share the same bank holidays. One-off bank holidays (a coronation, a
state funeral) arrive with new releases of the package: keep it up to date.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import holidays

from seftpilot.errors import ConfigError


def bank_holidays(years: Iterable[int]) -> frozenset[date]:
    """England & Wales bank holidays (including substitute days) in ``years``."""
    wanted = sorted(set(years))
    if not wanted:
        return frozenset()
    try:
        calendar = holidays.country_holidays("GB", subdiv="ENG", years=wanted)
    except (NotImplementedError, KeyError, ValueError) as exc:  # an unknown subdivision
        raise ConfigError(
            f"the installed holidays package cannot list England bank holidays: {exc}",
            hint="upgrade it with `uv sync`",
        ) from None
    return frozenset(day for day in calendar if isinstance(day, date))


def bank_holidays_around(
    day: date, *, years_before: int = 1, years_after: int = 1
) -> frozenset[date]:
    """Bank holidays from ``years_before`` years before ``day``'s year to ``years_after`` after.

    One year either side covers every window that starts near a new year (an upload on
    30 December is judged in January).
    """
    return bank_holidays(range(day.year - years_before, day.year + years_after + 1))
