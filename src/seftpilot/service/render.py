"""Rendering of the operator's mails (digest, alerts) from the package's jinja2 templates.

Owns the template environment: templates come from ``seftpilot/templates`` (package data),
HTML templates (``*.html.j2``) are autoescaped so mail text can never become markup, and a
missing variable is an error rather than an empty string. Must not gather facts or send.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

if TYPE_CHECKING:
    from seftpilot.core.digest import Digest

LONDON = ZoneInfo("Europe/London")


def london(value: datetime | None, fmt: str = "%a %d %b %H:%M") -> str:
    """A UTC instant as the operator reads it (Europe/London wall clock)."""
    if value is None:
        return "-"
    return value.astimezone(LONDON).strftime(fmt)


def london_when(value: datetime) -> str:
    """A UTC instant as a sentence gives it: ``12:00 on Tue 6 Jan (London)`` (the
    digest's clock and day names; the zone said, since --json and logs say UTC)."""
    local = value.astimezone(LONDON)
    return f"{local:%H:%M} on {local:%a} {local.day} {local:%b} (London)"


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("seftpilot", "templates"),
        autoescape=select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=False, default=False
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["london"] = london
    return env


def render_text(name: str, context: dict[str, Any]) -> str:
    return environment().get_template(name).render(**context)


def render_status(digest: Digest) -> str:
    """``seftpilot status``: the digest's text under its own title, without the footer
    about a mail sent every day (status is asked for, not sent); secrets redacted."""
    from seftpilot.logs import redact

    return redact(render_text("digest.txt.j2", {"d": digest, "title": "status", "footer": False}))
