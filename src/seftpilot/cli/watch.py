"""CLI: ``seftpilot watch``, the service itself."""

from __future__ import annotations

from typing import Annotated

import typer

from seftpilot.cli.common import ConfigOpt, JsonOpt, console, emit_json, settings


def register(app: typer.Typer) -> None:
    @app.command("watch")
    def watch_cmd(
        config: ConfigOpt = None,
        once: Annotated[
            bool,
            typer.Option(
                "--once", help="One pass (catch up the mailbox, run due timers), then exit."
            ),
        ] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Run the service: the mailbox plus every timer, until SIGTERM or Ctrl-C.

        SIGTERM finishes the step in hand and exits 0. After a restart it first settles
        what fell due while it was down, then sends one summary, not a storm of alerts.
        """
        from seftpilot.logs import configure_logging
        from seftpilot.service.assemble import build_watcher, run_once
        from seftpilot.service.checks import require_secrets
        from seftpilot.service.runtime import Runtime

        cfg = settings(config, required=True)
        # A missing password is a configuration error (exit 2, naming the key), not a
        # login the server refuses later (exit 1, or a service that retries forever).
        require_secrets(cfg)
        configure_logging(cfg.log_level)
        with Runtime(cfg) as runtime:
            if once:
                result = run_once(runtime)
                if json_out:
                    emit_json(result)
                else:
                    console.print(result)
                if result["jobs_failing"]:
                    raise typer.Exit(1)
                return
            watcher = build_watcher(runtime)
            watcher.install_signal_handlers()
            code = watcher.run()
        if code:
            raise typer.Exit(code)
