"""The examples every command's ``--help`` ends with, kept in one table.

Owns what an operator copies from ``--help``: one or more real command lines per command,
shown as its epilog. A test walks the command tree and fails when a command has none, or
when this table names a command that no longer exists. Must not hold help text about what
the options mean: that stays beside each option.
"""

from __future__ import annotations

import typer
from rich.markup import escape

NIC = "NIC-402963-P0Y5D"

EXAMPLES: dict[str, tuple[str, ...]] = {
    "init": (
        "seftpilot init site/                # then edit site/seftpilot.toml",
        "seftpilot init --force              # rewrite the files here",
    ),
    "check": (
        "seftpilot check                     # settings and rules, no network",
        "seftpilot check --connect           # also log in to every server",
    ),
    "plan": (
        "seftpilot plan export.csv                       # show; records nothing",
        "seftpilot plan export.csv --apply               # record it as a campaign",
        "seftpilot plan export.csv --strategy replace",
    ),
    "submit": (
        "seftpilot submit --dry-run          # what would go today, and why (not)",
        "seftpilot submit",
    ),
    "watch": (
        "seftpilot watch --config /srv/study/seftpilot.toml",
        "seftpilot watch --once              # one pass, e.g. from cron",
    ),
    "forward": (
        "seftpilot forward                   # what SEFT or the drop folder holds",
        "seftpilot forward --from ~/Downloads/nhs-release --keep",
    ),
    "status": (
        "seftpilot status",
        "seftpilot status --json             # exit 1 when something needs you",
    ),
    "digest": (
        "seftpilot digest                    # print today's",
        "seftpilot digest --send             # mail it (once a day)",
    ),
    "demo": (
        "seftpilot demo",
        "seftpilot demo --dir /tmp/seftpilot-demo --json",
    ),
    "cohort build": (
        "seftpilot cohort build export.csv --action ADD --out outbox/",
        f"seftpilot cohort build leavers.csv --action DELETE --out outbox/ --nic {NIC}",
    ),
    "cohort validate": (
        f"seftpilot cohort validate outbox/{NIC}.csv",
        f"seftpilot cohort validate outbox/{NIC}.csv --json",
    ),
    "cohort profile": (
        "seftpilot cohort profile            # list them",
        "seftpilot cohort profile mps-legacy-24",
    ),
    "pool show": (
        "seftpilot pool show",
        "seftpilot pool show --json          # with every reference",
    ),
    "pool export": (
        "seftpilot pool export --out pool.csv",
        "seftpilot pool export --stuck --out stuck-for-nhs.csv",
    ),
    "submission list": ("seftpilot submission list",),
    "submission show": ("seftpilot submission show 12",),
    "submission confirm": (
        "seftpilot submission confirm 12 --at 2026-03-02T10:15   # London time",
        "seftpilot submission confirm 12 --not-sent",
    ),
    "submission resolve": (
        'seftpilot submission resolve 12 --outcome success --note "NHS helpdesk: received"',
        'seftpilot submission resolve 12 --outcome failed --note "ticket 4711" --retry',
    ),
    "rules check": (
        "seftpilot rules check",
        "seftpilot rules check --rules rules/ --rules extra.yaml",
    ),
    "rules test": (
        "seftpilot rules test saved-mail.eml --explain",
        "seftpilot rules test --mailbox --limit 20",
    ),
    "rules schema": ("seftpilot rules schema > rules.schema.json",),
    "delivery list": ("seftpilot delivery list",),
    "delivery show": ("seftpilot delivery show 3",),
    "delivery retry": ("seftpilot delivery retry 3",),
    "delivery resolve": (
        "seftpilot delivery resolve 3 --passphrase-arrived",
        "seftpilot delivery resolve 3 --upload-again",
    ),
    "delivery clean": ("seftpilot delivery clean 3",),
    "sandbox up": (
        "seftpilot sandbox up --dir /tmp/rehearsal",
        "seftpilot sandbox up --dir /tmp/rehearsal --mode pve --speed 60",
    ),
    "campaign list": ("seftpilot campaign list",),
    "campaign cancel": ('seftpilot campaign cancel 2 --reason "wrong export"',),
}


def epilog(lines: tuple[str, ...]) -> str:
    # Escaped: `[...]` in an example would otherwise be read as a style tag.
    return "Examples:\n\n" + "\n".join(f"  {escape(line)}" for line in lines)


def add_examples(app: typer.Typer, prefix: str = "") -> None:
    """Give every registered command of ``app`` (and its groups) its examples' epilog."""
    for command in app.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else "")
        lines = EXAMPLES.get(f"{prefix}{name}")
        if lines and not command.epilog:
            command.epilog = epilog(lines)
    for group in app.registered_groups:
        if group.typer_instance is not None and group.name:
            add_examples(group.typer_instance, f"{prefix}{group.name} ")
