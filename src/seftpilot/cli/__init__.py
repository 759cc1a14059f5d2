"""The ``seftpilot`` command line: a thin layer over the service functions.

Owns argument parsing and exit codes: 0 success, 1 the work found a problem, 2 a usage
or configuration error. Each command group lives in its own module and registers itself
here; none of them holds workflow logic.
"""

from __future__ import annotations

import sys

import typer

from seftpilot.cli import (
    cohort,
    demo,
    digest,
    forward,
    mail,
    plan,
    pool,
    project,
    sandbox,
    status,
    submission,
    watch,
)
from seftpilot.cli.common import print_error
from seftpilot.cli.examples import add_examples
from seftpilot.errors import SeftpilotError

app = typer.Typer(
    name="seftpilot",
    help=(
        "Run a research study's data linkage with NHS England unattended: build and "
        "pre-flight cohort files, submit them over SEFT, watch the mailbox with rules, "
        "turn silence into verdicts, forward returned data encrypted, report daily."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for _module in (
    project,
    cohort,
    pool,
    plan,
    submission,
    mail,
    watch,
    forward,
    status,
    digest,
    demo,
    sandbox,
):
    _module.register(app)
plan.register_campaigns(app)
add_examples(app)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status instead of exiting (tests call this).

    Typer runs in standalone mode, so usage errors print and exit 2 by themselves; our
    own errors propagate here and become a message plus their exit code.
    """
    try:
        app(args=argv, prog_name="seftpilot")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    except SeftpilotError as exc:
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
