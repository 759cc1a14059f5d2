"""CLI: ``seftpilot plan TARGET`` — the files that move the believed pool to TARGET.

Owns reading the target study export for planning, rendering the plan, and (``--apply``)
asking the ledger to record it as a campaign. Without ``--apply`` nothing is written
anywhere. The plan itself is ``core.ledger.plan``; the pool is ``LedgerStore.pool``.

The target is read through the cohort engine (the agreement's profile and
``column_mapping``, ``core.cohort.CohortBuilder``), so the rows the ledger keeps are the
normalised rows a file would carry, and a target with problems is refused.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer

from seftpilot.adapters.clock import SystemClock
from seftpilot.adapters.cohort_files import load_profile
from seftpilot.adapters.ledger_store import LedgerStore, RefRow
from seftpilot.cli.common import ConfigOpt, JsonOpt, console, emit_json
from seftpilot.cli.pool import NicOpt, open_ledger
from seftpilot.config import Agreement
from seftpilot.core.cohort import CohortBuilder
from seftpilot.core.cohort_profile import Profile
from seftpilot.core.ledger import (
    IN_FLIGHT,
    MAX_ROWS_PER_FILE,
    STRATEGIES,
    PlannedStep,
    Pool,
    plan,
)
from seftpilot.errors import CohortSourceError, LedgerError


class _HashingLines:
    """Iterate a binary file's lines as text while hashing exactly the bytes read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sha256 = hashlib.sha256()

    def __iter__(self) -> Iterator[str]:
        first = True
        with self.path.open("rb") as handle:
            for raw in handle:
                self.sha256.update(raw)
                text = raw.decode("utf-8", errors="strict")
                if first:
                    text = text.removeprefix("\ufeff")
                    first = False
                yield text


# Problems that do not apply to a planning target: the plan splits a target of any size
# into files of at most 1,000,000 rows, and an empty target is its own question.
_NOT_TARGET_PROBLEMS = frozenset({"too_many_rows", "empty_file"})
_BATCH_ROWS = 20_000


def _problems_error(path: Path, problems: list[Any], total: int) -> CohortSourceError:
    shown = "; ".join(
        f"row {p.row}, column {p.column or '-'}: {p.code}: {p.message}" for p in problems[:5]
    )
    more = f" (and {total - 5} more)" if total > 5 else ""
    return CohortSourceError(
        f"{path}: {total} problem(s) in the target: {shown}{more}",
        hint=f"fix the export; `seftpilot cohort build {path} --action ADD --out DIR` "
        "lists every problem",
    )


def _read_records(
    path: Path, agreement: Agreement
) -> tuple[_HashingLines, Profile, Iterator[dict[str, str]]]:
    """(hasher, records): each record maps profile field -> normalised value, empty
    values left out, read through the cohort engine's builder (the agreement's profile and
    column_mapping, the same normalising and checks as ``seftpilot cohort build``). Any
    problem in the target stops the plan once the file has been read."""
    lines = _HashingLines(path)
    profile = load_profile(agreement.profile)
    names = profile.field_names

    def records() -> Iterator[dict[str, str]]:
        reader = csv.reader(lines)
        header = next(reader, None)
        if not header:
            raise CohortSourceError(
                f"{path}: the file is empty",
                hint="export the study's participants with a header row",
            )
        if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
            # Otherwise "no column for UNIQUE_REFERENCE..." about a file that has them all.
            raise CohortSourceError(
                f"{path} is not comma-separated (its header is one column containing "
                f"{';' if ';' in header[0] else 'tabs'})",
                hint="export as CSV with commas",
            )
        try:
            builder = CohortBuilder(
                profile,
                action=profile.status_values[0],
                source_header=header,
                mapping=agreement.column_mapping or None,
            )
        except CohortSourceError as exc:
            raise CohortSourceError(f"{path}: {exc.message}", hint=exc.hint) from None
        while batch := list(islice(reader, _BATCH_ROWS)):
            rendered = builder.process(batch).decode("ascii")
            for row in csv.reader(rendered.splitlines()):
                yield {n: v for n, v in zip(names, row, strict=False) if v}
        problems = [p for p in builder.finish() if p.code not in _NOT_TARGET_PROBLEMS]
        if problems:
            total = sum(
                n for code, n in builder.log.counts.items() if code not in _NOT_TARGET_PROBLEMS
            )
            raise _problems_error(path, problems, total)

    return lines, profile, records()


def iter_target(
    path: Path, agreement: Agreement
) -> tuple[_HashingLines, Iterator[tuple[int, RefRow]]]:
    """Yield ``(row number, RefRow)`` for every participant of the target, checked for an
    empty or repeated reference (named by data row, counting from 1)."""
    try:
        lines, profile, records = _read_records(path, agreement)
    except OSError as exc:
        raise CohortSourceError(f"cannot read {path}: {exc.strerror or exc}") from None

    ref_field = profile.unique_field
    nhs_fields = [f.name for f in profile.fields if f.kind == "nhs_number"]

    def rows() -> Iterator[tuple[int, RefRow]]:
        seen: dict[str, int] = {}
        try:
            for number, record in enumerate(records, start=1):
                ref = record.get(ref_field, "")
                if not ref:
                    raise CohortSourceError(
                        f"{path}: row {number}, column {ref_field}: empty unique reference",
                        hint="every participant needs the study's ID",
                    )
                if ref in seen:
                    raise CohortSourceError(
                        f"{path}: row {number}, column {ref_field}: {ref!r} repeats row "
                        f"{seen[ref]}",
                        hint="each participant may appear once; remove the duplicate",
                    )
                seen[ref] = number
                nhs = next((record[f] for f in nhs_fields if record.get(f)), None)
                # The action column is the file's, not the participant's.
                data = {k: v for k, v in record.items() if k != profile.status_field}
                yield number, RefRow(ref, nhs, data)
        except FileNotFoundError:
            raise CohortSourceError(
                f"{path}: no such file", hint="check the path of the study export"
            ) from None
        except IsADirectoryError:
            raise CohortSourceError(
                f"{path} is a directory, not a CSV file",
                hint="give the path of the study export's .csv file",
            ) from None
        except UnicodeDecodeError as exc:
            # Excel's "Unicode Text" is UTF-16: its byte-order mark is the first thing read.
            utf16 = exc.object[:2] in (b"\xff\xfe", b"\xfe\xff") and exc.start == 0
            raise CohortSourceError(
                f"{path} is {'UTF-16' if utf16 else 'not UTF-8'} text "
                f"({'as Excel saves Unicode Text' if utf16 else exc.reason})",
                hint="export or save it as 'CSV UTF-8'",
            ) from None
        except (OSError, csv.Error) as exc:
            raise CohortSourceError(
                f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}",
                hint="check the file is the study export, saved as 'CSV UTF-8'",
            ) from None

    return lines, rows()


def read_target_refs(path: Path, agreement: Agreement) -> tuple[list[str], str]:
    """The target's references in file order, and the SHA-256 of the bytes read."""
    lines, rows = iter_target(path, agreement)
    refs = [row.unique_reference for _, row in rows]
    return refs, lines.sha256.hexdigest()


def stream_target_rows(path: Path, agreement: Agreement, sha256: str) -> Iterator[RefRow]:
    """The target's rows again, for recording; the file must not have changed since."""
    lines, rows = iter_target(path, agreement)
    for _, row in rows:
        yield row
    if lines.sha256.hexdigest() != sha256:
        raise CohortSourceError(
            f"{path} changed while the plan was being recorded; nothing was recorded",
            hint="run `seftpilot plan` again once the export is final",
        )


def _step_dict(step: PlannedStep) -> dict[str, Any]:
    return {
        "order": step.order,
        "action": step.action,
        "rows": step.count,
        "earliest_nhs_day_offset": step.day_offset,
        "part": step.part,
        "parts": step.parts,
        "waits_for": list(step.waits_for),
    }


def _render(doc: Mapping[str, Any]) -> None:
    pool, target = doc["pool"], doc["target"]
    console.print(
        f"{doc['agreement']}: plan ({doc['strategy']}) from a believed pool of "
        f"{pool['count']:,} to {target['path']} ({target['rows']:,} participants)"
    )
    for note in doc["notes"]:
        console.print(f"  note: {note}")
    if doc["nothing_to_do"]:
        console.print("Nothing to do: the believed pool already matches the target.")
        return
    console.print(
        f"\n  {'step':>4}  {'action':<6}  {'rows':>9}  {'part':>5}  {'earliest NHS day':<16}  "
        "waits for"
    )
    for step in doc["steps"]:
        waits = step["waits_for"]
        after = f"a successful verdict on step {', '.join(map(str, waits))}" if waits else "-"
        part = f"{step['part']}/{step['parts']}"
        day = f"day +{step['earliest_nhs_day_offset']}"
        console.print(
            f"  {step['order']:>4}  {step['action']:<6}  {step['rows']:>9,}  {part:>5}  "
            f"{day:<16}  {after}"
        )
    console.print(
        "\n  One file per NHS day; day +N is the earliest, counted from the first upload."
    )
    if doc["applied"]:
        console.print(
            f"Recorded as campaign #{doc['campaign_id']} with {len(doc['steps'])} planned "
            "submission(s); `seftpilot watch` or `seftpilot submit` carries it out."
        )
    else:
        console.print("Nothing was recorded. Run again with --apply to record this plan.")


def register(app: typer.Typer) -> None:
    """Add ``plan`` to ``app``."""

    @app.command("plan")
    def plan_cmd(  # noqa: PLR0917 (typer maps parameters to options)
        target: Annotated[
            Path, typer.Argument(help="The study export (CSV) the pool should become.")
        ],
        strategy: Annotated[
            str,
            typer.Option(
                "--strategy",
                help="diff: delete only who leaves, add only who is new. "
                "replace: delete the whole pool, then add the whole target.",
            ),
        ] = "diff",
        nic: NicOpt = None,
        apply: Annotated[
            bool, typer.Option("--apply", help="Record the plan as a campaign of submissions.")
        ] = False,
        allow_empty: Annotated[
            bool,
            typer.Option(
                "--allow-empty", help="Accept a target with no participants (deletes everyone)."
            ),
        ] = False,
        max_rows: Annotated[
            int, typer.Option("--max-rows", hidden=True, min=1)
        ] = MAX_ROWS_PER_FILE,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Show the submissions that move the believed pool to TARGET (--apply records them)."""
        if strategy not in STRATEGIES:
            raise typer.BadParameter(
                f"{strategy!r} is not one of: {', '.join(STRATEGIES)}", param_hint="--strategy"
            )
        with open_ledger(config, nic) as (agreement, ledger):
            refs, sha256 = read_target_refs(target, agreement)
            if not refs and not allow_empty:
                raise CohortSourceError(
                    f"{target} has no participants; planning from it would delete the whole pool",
                    hint="check the export; pass --allow-empty if everyone really is leaving",
                )
            pool = ledger.pool(agreement.nic)
            steps = plan(pool, refs, strategy, max_rows=max_rows)
            doc = _describe(
                ledger,
                agreement=agreement.nic,
                target=target,
                refs=refs,
                sha256=sha256,
                strategy=strategy,
                pool=pool,
                steps=steps,
            )
            if apply and steps:
                doc["campaign_id"] = _apply(
                    ledger,
                    agreement=agreement,
                    target=target,
                    sha256=sha256,
                    strategy=strategy,
                    pool=pool,
                    steps=steps,
                )
                doc["applied"] = True
        if json_out:
            emit_json(doc)
        else:
            _render(doc)


def _describe(
    ledger: LedgerStore,
    *,
    agreement: str,
    target: Path,
    refs: list[str],
    sha256: str,
    strategy: str,
    pool: Pool,
    steps: list[PlannedStep],
) -> dict[str, Any]:
    pending = ledger.list_submissions(agreement, states=IN_FLIGHT)
    notes: list[str] = []
    if pending:
        ids = ", ".join(f"#{s.id} ({s.state})" for s in pending)
        notes.append(
            f"{len(pending)} submission(s) have no successful verdict yet and are not in the "
            f"pool: {ids}; the plan may change once they are decided"
        )
    if pool.stuck:
        wanted = sum(1 for r in refs if r in pool.stuck)
        notes.append(
            f"{len(pool.stuck):,} stuck reference(s) are not in the pool (NHS still holds them; "
            f"{wanted:,} of them are in the target and will be added again); "
            "see `seftpilot pool export --stuck`"
        )
    return {
        "agreement": agreement,
        "strategy": strategy,
        "target": {"path": str(target), "rows": len(refs), "sha256": sha256},
        "pool": {"count": len(pool), "stuck": len(pool.stuck), "awaiting_verdict": len(pending)},
        "nothing_to_do": not steps,
        "steps": [_step_dict(s) for s in steps],
        "notes": notes,
        "applied": False,
        "campaign_id": None,
    }


def _apply(
    ledger: LedgerStore,
    *,
    agreement: Agreement,
    target: Path,
    sha256: str,
    strategy: str,
    pool: Pool,
    steps: list[PlannedStep],
) -> int:
    pending = ledger.list_submissions(agreement.nic, states=IN_FLIGHT)
    if pending:
        raise LedgerError(
            f"submission #{pending[0].id} is {pending[0].state}: the pool is not settled, so "
            "the plan cannot be recorded yet",
            hint="wait for its verdict (or resolve it), then plan again",
        )
    campaign = ledger.create_campaign(
        agreement.nic,
        strategy,
        steps,
        at=SystemClock().now(),
        pool=pool,
        add_rows=stream_target_rows(target, agreement, sha256),
        target_sha256=sha256,
    )
    return campaign.id


def register_campaigns(app: typer.Typer) -> None:
    """``seftpilot campaign list|cancel``: see and stop what ``plan --apply`` recorded."""
    campaigns = typer.Typer(
        help="Campaigns recorded by `plan --apply`: list them, cancel one that must not go on.",
        no_args_is_help=True,
    )
    app.add_typer(campaigns, name="campaign")

    @campaigns.command("list")
    def list_cmd(config: ConfigOpt = None, nic: NicOpt = None, json_out: JsonOpt = False) -> None:
        """Every campaign with its state and steps (newest attempt of each)."""
        with open_ledger(config, nic) as (agreement, ledger):
            docs = [
                {
                    **c.to_dict(),
                    "steps": [
                        {
                            "step": s.step,
                            "action": str(s.action),
                            "state": s.state,
                            "submission": s.submission_id,
                        }
                        for s in ledger.campaign_steps(c.id)
                    ],
                }
                for c in ledger.list_campaigns(agreement.nic)
            ]
        if json_out:
            emit_json(docs)
            return
        if not docs:
            console.print("no campaigns recorded (`seftpilot plan TARGET --apply` records one)")
        for doc in docs:
            steps = ", ".join(
                f"{s['action']} #{s['submission']} {s['state']}" for s in doc["steps"]
            )
            console.print(f"#{doc['id']} {doc['strategy']} {doc['state']}: {steps}")

    @campaigns.command("cancel")
    def cancel_cmd(
        campaign_id: Annotated[int, typer.Argument(help="The campaign's number.")],
        reason: Annotated[str, typer.Option("--reason", help="Why; kept in the ledger.")],
        config: ConfigOpt = None,
        nic: NicOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Cancel a campaign and its steps that have not been uploaded yet.

        Uploaded steps keep their verdicts (NHS England has them); afterwards a new plan
        can be made and applied.
        """
        from datetime import UTC, datetime

        with open_ledger(config, nic) as (_agreement, ledger):
            campaign = ledger.get_campaign(campaign_id)
            done = ledger.cancel_campaign(campaign, at=datetime.now(UTC), reason=reason)
            steps = ledger.campaign_steps(done.id)
        if json_out:
            emit_json(
                {
                    **done.to_dict(),
                    "steps": [
                        {"step": s.step, "action": str(s.action), "state": s.state}
                        | {"submission": s.submission_id}
                        for s in steps
                    ],
                }
            )
            return
        console.print(f"campaign #{done.id} is {done.state}")
        for s in steps:
            console.print(f"  step {s.step}: {s.action} #{s.submission_id} {s.state}")
