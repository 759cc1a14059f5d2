"""CLI: ``seftpilot status [--json]``.

Owns rendering the service's facts for a person or a tool: submissions with verdicts and
evidence, the believed pool, deliveries, heartbeat, canaries, alerts and what happens
next (the digest's facts, ``service.monitor.status_document``). Exits 1 when something
needs the operator (the digest's "needs you" list is not empty), so a script or a
monitoring check can act on it. Must not change the ledger beyond opening it.
"""

from __future__ import annotations

import typer

from seftpilot.cli.common import ConfigOpt, JsonOpt, emit_json, settings
from seftpilot.service.runtime import Runtime


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("status")
    def status(config: ConfigOpt = None, json_: JsonOpt = False) -> None:
        """Everything at a glance, and what happens next; exits 1 when something needs you.

        Submissions with verdicts and evidence, the believed pool, deliveries, heartbeat,
        canaries and alerts: the daily digest's facts, at any time."""
        from seftpilot.service.monitor import current_digest, status_document
        from seftpilot.service.render import render_status

        with Runtime(settings(config, required=True)) as runtime:
            if json_:
                doc = status_document(runtime)
                emit_json(doc)
                needs = bool(doc["attention"])
            else:
                digest = current_digest(runtime)
                typer.echo(render_status(digest), nl=False)
                needs = bool(digest.attention)
        if needs:
            raise typer.Exit(1)
