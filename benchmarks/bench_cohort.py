"""Cohort budget: build + validate a 1,000,000-row file vs a bare csv read + write of it.

DESIGN.md: build + validate at no worse than 2x the time of a bare ``csv`` read + write of
the same file; peak memory under 300 MB.

    uv run python benchmarks/bench_cohort.py                 # 1,000,000 rows, 3 rounds
    uv run python benchmarks/bench_cohort.py --rows 100000   # quicker
    uv run python benchmarks/bench_cohort.py --repeat 5      # more rounds on a noisy machine

A synthetic study export (core.synthetic: 999-range NHS numbers, ISO dates, sex as words,
5% "messy" rows needing real normalisation) is generated first, outside the timing. Each
measured step runs in a fresh child process (so its peak RSS is its own, and nothing is
cached between steps); a round runs each step once, in turn, so a round's steps share the
machine's load. Medians over the rounds are reported with their spread, the ratio as the
median of the rounds' ratios, and the load average (the machine has 2 shared cores; all
steps are single-process). A step's time includes its imports and profile loading (shown
apart as "start-up"), with bytecode caching on as for an installed tool:

- baseline: ``csv.reader`` -> ``csv.writer`` copy of the built NHS file (CRLF), and, for
  reference, of the study export;
- build: ``adapters.cohort_files.build_cohort`` (export -> NHS file, atomic, 0600);
- validate: ``adapters.cohort_files.validate_file`` on the built file.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

NIC = "NIC-402963-P0Y5D"


def _child(step: str, work: Path) -> None:
    """Run one step in this (fresh) process and print its time and peak RSS as JSON."""
    export = work / "export.csv"
    nhs_file = work / "out" / f"{NIC}.csv"
    start = time.perf_counter()
    extra: dict[str, object] = {}
    if step in ("copy_nhs", "copy_export"):
        src = nhs_file if step == "copy_nhs" else export
        with (
            src.open(newline="", encoding="utf-8") as fin,
            (work / "copy.csv").open("w", newline="", encoding="utf-8") as fout,
        ):
            csv.writer(fout, lineterminator="\r\n").writerows(csv.reader(fin))
    elif step == "build":
        from seftpilot.adapters.cohort_files import build_cohort, load_profile

        profile = load_profile()
        extra["startup"] = time.perf_counter() - start
        result = build_cohort(export, action="ADD", profile=profile, nic=NIC, out_dir=work / "out")
        extra |= {"rows": result.rows, "problems": len(result.problems), "path": result.path}
    elif step == "validate":
        from seftpilot.adapters.cohort_files import load_profile, validate_file

        profile = load_profile()
        extra["startup"] = time.perf_counter() - start
        report = validate_file(nhs_file, profile, nic=NIC)
        extra |= {"rows": report.rows, "valid": report.valid, "problems": len(report.problems)}
    else:
        raise SystemExit(f"unknown step {step}")
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"step": step, "seconds": seconds, "peak_mb": peak_mb, **extra}))


def _run(step: str, work: Path) -> dict[str, float]:
    # Bytecode caching on, as for an installed tool (this machine sets
    # PYTHONDONTWRITEBYTECODE=1, which would recompile seftpilot's modules in every child:
    # about 55 ms a step), into a prefix inside the work directory, not the source tree.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    out = subprocess.run(
        [sys.executable, __file__, "--child", step, "--work", str(work)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _generate(work: Path, rows: int, messy: float) -> None:
    from seftpilot.core.synthetic import EXPORT_HEADER, export_rows

    with (work / "export.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(EXPORT_HEADER)
        writer.writerows(export_rows(rows, seed=7, messy=messy))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--messy", type=float, default=0.05, help="share of messy source rows")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians reported)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.work)
        return

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        _generate(work, args.rows, args.messy)
        print(f"generated {args.rows:,} export rows in {time.perf_counter() - t:.1f}s (untimed)")
        first = _run("build", work)  # also produces the NHS file the baseline copies
        if first.get("problems"):
            print(f"warning: build reported {first['problems']} problems")
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeat):  # rounds: each step once per round, in turn
            for step in ("copy_nhs", "build", "validate", "copy_export"):
                runs.setdefault(step, []).append(_run(step, work))
        nhs_size = (work / "out" / f"{NIC}.csv").stat().st_size
    load_after = os.getloadavg()

    def secs(step: str) -> list[float]:
        return [r["seconds"] for r in runs[step]]

    def peak(step: str) -> float:
        return max(r["peak_mb"] for r in runs[step])

    def line(label: str, step: str) -> str:
        times = secs(step)
        spread = f"{min(times):.2f}-{max(times):.2f}" if len(times) > 1 else ""
        return f"{label:27s}{median(times):7.2f}s  {spread:>11s}   peak {peak(step):.0f} MB"

    # The ratio of each round (same load for its four steps), then their median.
    ratios = [
        (b + v) / c
        for b, v, c in zip(secs("build"), secs("validate"), secs("copy_nhs"), strict=True)
    ]
    base = median(secs("copy_nhs"))
    build, validate = median(secs("build")), median(secs("validate"))
    ratio = median(ratios)
    top = max(peak("build"), peak("validate"))
    startup = median([r["startup"] for r in runs["build"] + runs["validate"]])
    print(f"rows                       {args.rows:,} (NHS file {nhs_size / 1e6:.0f} MB)")
    print(f"runs                       {args.repeat} rounds; median, then min-max")
    print(line("baseline csv copy NHS file", "copy_nhs"))
    print(line("baseline csv copy export", "copy_export"))
    print(line("build", "build"))
    print(line("validate", "validate"))
    print(
        f"build + validate           {build + validate:7.2f}s   "
        f"= {ratio:.2f}x baseline (budget 2.00x; rounds {min(ratios):.2f}x-{max(ratios):.2f}x)"
        f"   build {build / base:.2f}x, validate {validate / base:.2f}x"
    )
    print(f"start-up (imports, profile) {startup:6.2f}s  per step, included above")
    print(
        "load average               "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after (1, 5, 15 min; 2 cores)"
    )
    print(f"time   {'within' if ratio <= 2.0 else 'OVER'} budget ({ratio:.2f}x of 2.00x)")
    print(f"memory {'within' if top < 300 else 'OVER'} budget (peak {top:.0f} MB of 300 MB)")


if __name__ == "__main__":
    main()
