"""CLI: ``seftpilot sandbox up`` — local servers and a simulated NHS England to rehearse with.

Owns the terminal side of ``sandbox.up.serve``: options, the sandbox directory (new or
empty; a temporary one is removed at the end), signal handling (SIGTERM and Ctrl-C stop it
cleanly, exit 0) and printing as things happen. Needs no settings file: it writes one.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from seftpilot.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add the ``sandbox`` group to ``app``."""
    group = typer.Typer(
        help="A local sandbox: IMAP, SMTP, SEFT and partner SFTP, and NHS England simulated.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="sandbox")

    @group.command("up")
    def up_cmd(
        directory: Annotated[
            Path | None,
            typer.Option(
                "--dir",
                help="Where to put the settings, keys and files (new or empty; kept). "
                "Default: a temporary directory, removed when the sandbox stops.",
                show_default=False,
            ),
        ] = None,
        mode: Annotated[
            str,
            typer.Option(help="NHS England's intake: legacy (success is silence) or pve."),
        ] = "legacy",
        files: Annotated[
            int, typer.Option("--files", min=1, max=200, help="Files NHS returns per release.")
        ] = 3,
        speed: Annotated[
            float,
            typer.Option(
                "--speed",
                min=1.0,
                help="NHS England answers this many times sooner (the service keeps real time).",
            ),
        ] = 1.0,
        stuck_rate: Annotated[
            float,
            typer.Option(
                "--stuck-rate", min=0.0, max=1.0, help="Share of DELETE rows NHS fails to remove."
            ),
        ] = 0.0,
    ) -> None:
        """Start the servers and the NHS England simulator; write a seftpilot.toml for them.

        Runs until Ctrl-C or SIGTERM. Point the service at it with
        `seftpilot watch --config DIR/seftpilot.toml` (the .env beside it holds the IMAP
        password).
        """
        from seftpilot.sandbox.up import UpOptions, serve

        if mode not in ("legacy", "pve"):
            raise typer.BadParameter(f"{mode!r} is not legacy or pve", param_hint="--mode")
        temporary = directory is None
        if directory is None:
            base = Path(tempfile.mkdtemp(prefix="seftpilot-sandbox-"))
        else:
            if directory.exists() and any(directory.iterdir()):
                raise ConfigError(
                    f"{directory} is not empty",
                    hint="give a new or empty directory (the sandbox makes fresh keys)",
                )
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            base = directory.resolve()
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        def echo(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        try:
            code = serve(
                base,
                UpOptions(
                    mode=mode, returned_files=files, speed=speed, stuck_delete_rate=stuck_rate
                ),
                stop,
                echo,
            )
        finally:
            if temporary:
                shutil.rmtree(base, ignore_errors=True)
        if code:
            raise typer.Exit(code)
