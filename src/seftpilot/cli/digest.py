"""CLI: ``seftpilot digest [--send] [--force] [--json]``.

Owns printing the digest (plain text, or its facts as JSON) and sending it by hand.
``--send`` claims today's digest in the ledger exactly as the service's daily job does,
so a digest sent by hand is not sent again by ``seftpilot watch`` that day (and vice
versa); ``--force`` sends another copy anyway. Must not decide what the digest says
(``core.digest``) or how it is sent (``service.monitor``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from seftpilot.cli.common import ConfigOpt, JsonOpt, console, emit_json, settings
from seftpilot.service.runtime import Runtime


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("digest")
    def digest(
        config: ConfigOpt = None,
        json_: JsonOpt = False,
        send: Annotated[
            bool, typer.Option("--send", help="Mail it to operator.emails (once per day).")
        ] = False,
        force: Annotated[
            bool, typer.Option("--force", help="With --send: send even if today's went.")
        ] = False,
    ) -> None:
        """Print today's digest (or send it with --send)."""
        from seftpilot.service.monitor import (
            current_digest,
            render_digest,
            send_digest,
            status_document,
        )

        with Runtime(settings(config, required=True)) as runtime:
            if send:
                result = send_digest(runtime, force=force)
                doc = {
                    "sent": result.sent,
                    "day": result.day.isoformat(),
                    "already_sent_at": (
                        result.sent_at.isoformat() if result.already and result.sent_at else None
                    ),
                    "message_id": result.message_id,
                    "recipients": list(runtime.settings.operator.emails),
                }
                if json_:
                    emit_json(doc)
                elif result.sent:
                    console.print(
                        f"digest for {result.day} sent to "
                        f"{', '.join(runtime.settings.operator.emails)}"
                    )
                else:
                    console.print(
                        f"the digest for {result.day} was already sent"
                        + (f" at {result.sent_at:%H:%M} UTC" if result.sent_at else "")
                        + "; nothing sent (--force sends another copy)"
                    )
                return
            if json_:
                emit_json(status_document(runtime))
                return
            value = current_digest(runtime)
            text, _ = render_digest(value)
            typer.echo(f"Subject: {value.subject}\n\n{text}", nl=False)
