"""CLI: ``seftpilot cohort build``, ``cohort validate`` and ``cohort profile``.

Owns turning arguments and settings into calls of ``adapters.cohort_files`` and rendering
their results (human text or one JSON document). Must not decide what is valid or how a
file is written: that is the core's and the adapter's job.
"""

from __future__ import annotations

from collections import defaultdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from seftpilot.adapters.cohort_files import (
    DEFAULT_PROFILE,
    build_cohort,
    builtin_profiles,
    load_profile,
    validate_file,
)
from seftpilot.cli.common import ConfigOpt, JsonOpt, console, emit_json, err_console, settings
from seftpilot.config import Agreement, Settings
from seftpilot.core.cohort_profile import Profile
from seftpilot.core.cohort_rules import Problem

SHOW_PER_CODE = 20  # human output: the first problems of each code; counts stay complete


class Action(StrEnum):
    ADD = "ADD"
    DELETE = "DELETE"


NicOpt = Annotated[
    str | None,
    typer.Option("--nic", help="The agreement's NIC number (default: the configured one)."),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help=f"Built-in profile ({', '.join(builtin_profiles())}) or a YAML file "
        f"(default: the agreement's, else {DEFAULT_PROFILE}).",
        show_default=False,
    ),
]


def _agreement(cfg: Settings, nic: str | None) -> Agreement | None:
    """The agreement ``nic`` names, or the only configured one; None when neither."""
    if nic is not None:
        return next((a for a in cfg.agreement if a.nic == nic), None)
    return cfg.agreement[0] if len(cfg.agreement) == 1 else None


def _profile(profile: str | None, agreement: Agreement | None) -> Profile:
    chosen = load_profile(profile or (agreement.profile if agreement else DEFAULT_PROFILE))
    if not chosen.confirmed:
        err_console.print(
            f"warning: profile {chosen.name} is UNCONFIRMED: its layout comes from public "
            "guidance, not from a file NHS England accepted",
            markup=False,
        )
    return chosen


def _print_problems(problems: list[Problem], counts: dict[str, int]) -> None:
    by_code: dict[str, list[Problem]] = defaultdict(list)
    for problem in problems:
        by_code[problem.code].append(problem)
    for code, items in by_code.items():
        for p in items[:SHOW_PER_CODE]:
            where = ", ".join(
                part
                for part in (
                    f"row {p.row}" if p.row is not None else "file",
                    p.column or "",
                )
                if part
            )
            console.print(f"  {where}: {p.code}: {p.message}", markup=False)
        hidden = counts.get(code, len(items)) - min(len(items), SHOW_PER_CODE)
        if hidden > 0:
            console.print(f"  ... and {hidden} more {code} (use --json for the list)", markup=False)


def _closing(counts: dict[str, int], next_step: str, lead: str = "") -> None:
    """The last line: totals by code and what to do, where a long list ends, not above it."""
    total = sum(counts.values())
    by_code = ", ".join(
        f"{n:,} {code}" for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    console.print(
        f"{lead}{total:,} problem(s): {by_code}. Next: {next_step}; docs/cohort.md explains "
        "each code.",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    cohort = typer.Typer(
        help="Build NHS England cohort files from a study export, and check them.",
        no_args_is_help=True,
    )
    app.add_typer(cohort, name="cohort")

    @cohort.command("build")
    def build_cmd(  # noqa: PLR0917 - typer maps parameters to options
        source: Annotated[Path, typer.Argument(help="The study's export (CSV with a header).")],
        action: Annotated[
            Action, typer.Option("--action", case_sensitive=False, help="ADD or DELETE.")
        ],
        out: Annotated[Path, typer.Option("--out", help="Directory to write the file into.")],
        nic: NicOpt = None,
        profile: ProfileOpt = None,
        allow_problems: Annotated[
            bool,
            typer.Option(
                "--allow-problems",
                help="Write the file even with problems (NHS drops failing rows below 2%).",
            ),
        ] = False,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Study export -> the exact CSV NHS England's intake accepts (atomic, mode 0600)."""
        cfg = settings(config)
        agreement = _agreement(cfg, nic)
        if nic is None:
            nic = cfg.agreement_for(None).nic  # ConfigError (exit 2) when none or several
        chosen = _profile(profile, agreement)
        result = build_cohort(
            source,
            action=action.value,
            profile=chosen,
            nic=nic,
            out_dir=out,
            mapping=agreement.column_mapping if agreement else None,
            allow_problems=allow_problems,
        )
        over = (
            f"{result.invalid_rows:,} of {result.rows:,} rows fail "
            f"({result.invalid_share:.2%}), above the 2% at which NHS England rejects the "
            "whole file"
        )
        if json_out:
            emit_json(result.to_json())
        elif result.written:
            console.print(
                f"wrote {result.path}: {result.rows} rows, {result.action}, sha256 {result.sha256}",
                markup=False,
            )
            for notice in result.notices:
                console.print(f"note: {notice}", markup=False)
            if result.problems:
                console.print(
                    f"written despite {sum(result.problem_counts.values())} problem(s) "
                    "(--allow-problems):",
                    markup=False,
                )
                _print_problems(result.problems, result.problem_counts)
                if result.nhs_threshold_exceeded:
                    console.print(f"warning: {over}: do not upload it", markup=False)
        else:
            total = sum(result.problem_counts.values())
            for notice in result.notices:
                console.print(f"note: {notice}", markup=False)
            console.print(
                f"not written: {total} problem(s) in {result.rows} rows of {source}; "
                + (
                    f"{over}, so --allow-problems would not help: fix the export:"
                    if result.nhs_threshold_exceeded
                    else "fix the export (or pass --allow-problems to write it anyway: NHS "
                    "England drops the failing rows and takes the rest):"
                ),
                markup=False,
            )
            _print_problems(result.problems, result.problem_counts)
            _closing(
                result.problem_counts,
                f"fix these rows in {source} and build again",
                lead="Nothing was written. ",
            )
        if not result.written:
            raise typer.Exit(1)

    @cohort.command("validate")
    def validate_cmd(
        file: Annotated[Path, typer.Argument(help="The cohort file to check.")],
        nic: NicOpt = None,
        profile: ProfileOpt = None,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Pre-flight check of a cohort file: every problem, with row, column and a fix."""
        cfg = settings(config)
        agreement = _agreement(cfg, nic)
        chosen = _profile(profile, agreement)
        report = validate_file(file, chosen, nic=nic or (agreement.nic if agreement else None))
        if json_out:
            emit_json(report.to_json())
        elif report.valid:
            console.print(
                f"{file}: valid: {report.rows} rows, action {report.action} "
                f"(profile {chosen.name})",
                markup=False,
            )
        else:
            total = sum(report.problem_counts.values())
            rows = (
                f"{report.invalid_rows} of {report.rows} rows invalid ({report.invalid_share:.2%})"
                if report.rows
                else "no participant rows read"
            )
            console.print(
                f"{file}: INVALID: {total} problem(s); {rows}"
                + (
                    "; NHS England rejects the whole file above 2%"
                    if report.nhs_threshold_exceeded
                    else ""
                ),
                markup=False,
            )
            _print_problems(report.problems, report.problem_counts)
            _closing(
                report.problem_counts,
                "fix the study export and rebuild this file with `seftpilot cohort build` "
                "(it fixes dates, spacing and line endings itself)",
            )
        if not report.valid:
            raise typer.Exit(1)

    @cohort.command("profile")
    def profile_cmd(
        name: Annotated[str | None, typer.Argument(help="A profile name or YAML file.")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """List the built-in profiles, or show one profile's columns and rules."""
        if name is None:
            names = builtin_profiles()
            if json_out:
                emit_json({"profiles": names})
            else:
                for n in names:
                    p = load_profile(n)
                    said = p.confirmed or "UNCONFIRMED" in p.description
                    mark = "" if said else "  (UNCONFIRMED)"
                    console.print(f"{n}: {p.description}{mark}", markup=False)
            return
        p = load_profile(name)
        if json_out:
            emit_json(
                {
                    "name": p.name,
                    "confirmed": p.confirmed,
                    "file_name": p.file_name_rule,
                    "date_format": p.date_format,
                    "max_rows": p.max_rows,
                    "header": list(p.header),
                }
            )
            return
        # A built-in profile's source already starts with its name ("pve (built in)").
        where = p.source if p.source.startswith(p.name) else f"{p.name} ({p.source})"
        console.print(f"{where}: {p.description}", markup=False)
        console.print(
            f"file name {p.file_name_rule}, dates {p.date_format}, at most {p.max_rows:,} rows; "
            f"{p.status_field} is {' or '.join(p.status_values)} (from --action), "
            f"{p.unique_field} unique in a file",
            markup=False,
        )
        console.print(
            "each row needs " + " or ".join("+".join(group) for group in p.sufficient_information),
            markup=False,
        )
        for spec in p.fields:
            rules = [spec.kind, "required" if spec.required else "optional"]
            if spec.max_length:
                rules.append(f"at most {spec.max_length} characters")
            if spec.allowed_values:
                rules.append(f"one of {'/'.join(spec.allowed_values)}")
            if spec.allowed_characters:
                rules.append(f"characters {spec.allowed_characters}")
            # What cohort build recognises in an export without a column_mapping.
            read_from = (
                f"; also read from export columns {', '.join(spec.aliases)}" if spec.aliases else ""
            )
            console.print(f"  {spec.header:<18} {', '.join(rules)}{read_from}", markup=False)
        console.print("header: " + ",".join(p.header), markup=False)
