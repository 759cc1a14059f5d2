"""Shared CLI plumbing: the --config/--json options, output, and error rendering.

Owns how a command talks to the terminal. Must not hold workflow logic: a command parses
its arguments, loads settings, calls one service function and renders the result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from seftpilot.config import Settings, config_path, load_settings
from seftpilot.errors import ConfigError, SeftpilotError

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Settings file (default ./seftpilot.toml, or $SEFTPILOT_CONFIG).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]

# Human output goes to stdout; errors and progress to stderr, so --json stays parseable.
# Markup is off unless a call asks for it: what we print is mostly data (messages naming
# `[[agreement]]`, regexes like `[a-z]`), and rich would swallow it as style tags.
console = Console(highlight=False, soft_wrap=True, markup=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def settings(config: Path | None, *, required: bool = False) -> Settings:
    """The settings; ``required`` for every command that reads or writes the ledger: run
    from the wrong directory, it must say so, not open an empty ./state and report on it."""
    path = config_path(config)
    if path.is_dir():
        # pydantic-settings would read nothing from it and carry on with the defaults.
        raise ConfigError(
            "this is a directory, not a settings file",
            file=str(path),
            hint=f"pass the file itself, e.g. --config {path / 'seftpilot.toml'}",
        )
    return load_settings(config, required=required)


def emit_json(document: Any) -> None:
    """Print exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def print_error(exc: SeftpilotError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True)
    if exc.hint:
        err_console.print(f"  [bold]hint:[/] {escape(exc.hint)}", markup=True)
