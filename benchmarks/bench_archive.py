"""Forward budget: archive + verify vs the 7-Zip CLI alone, same codec and level, both cores.

    uv run python benchmarks/bench_archive.py            # ~63 MB of synthetic CSV
    uv run python benchmarks/bench_archive.py --mb 1024  # the DESIGN.md budget run

Generates N MB of synthetic CSV (NHS numbers from the 999 test range) split over --files
files, then in the same run times: the 7-Zip CLI (`7zz a -mhe=on -mmt=2`, password on stdin)
as the baseline, and seftpilot's create_archive + verify_archive with each backend. Each of
ours runs in a child process so its peak RSS (itself + its 7zz children) is its own.
Budgets (DESIGN.md): ratio <= 1.5, peak memory < 256 MB.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

PASSPHRASE = "BENCH-ONLY-NOTA-SECR-ET22-2222-2222"


def generate(folder: Path, total_mb: int, files: int) -> list[Path]:
    rnd = random.Random(2024)
    per_file = total_mb * 1024 * 1024 // files
    paths = []
    for i in range(files):
        path = folder / f"NIC-402963-P0Y5D_table_{i:03d}.csv"
        with path.open("w") as out:
            out.write("study_id,nhs_number,event_date,code,value,description\n")
            written = 0
            while written < per_file:
                block = "".join(
                    f"S{rnd.randrange(10**6):06d},999{rnd.randrange(10**7):07d},"
                    f"20{rnd.randrange(10, 25)}-{rnd.randrange(1, 13):02d}-"
                    f"{rnd.randrange(1, 29):02d},{rnd.choice(['A01', 'C34', 'E11', 'I10'])},"
                    f"{rnd.random() * 100:.3f},"
                    f"{rnd.choice(['admitted', 'discharged', 'outpatient', 'referral'])}\n"
                    for _ in range(2000)
                )
                out.write(block)
                written += len(block)
        paths.append(path)
    return paths


def cli_baseline(files: list[Path], dest: Path, level: int) -> float:
    dest.unlink(missing_ok=True)
    args = ["7zz", "a", "-t7z", "-m0=LZMA2", f"-mx={level}", "-mmt=2", "-mhe=on", "-p", "-bd"]
    start = time.perf_counter()
    subprocess.run(
        [*args, str(dest), *map(str, files)],
        input=f"{PASSPHRASE}\n".encode(),
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - start


def child(backend: str, codec: str, level: int, files: list[Path], dest: Path) -> None:
    from seftpilot.adapters.archive import create_archive, verify_archive
    from seftpilot.adapters.manifest import build_manifest

    manifest = build_manifest(files, "folder:bench")  # made at collection time, not timed
    start = time.perf_counter()
    result = create_archive(files, dest, PASSPHRASE, codec=codec, level=level, backend=backend)  # type: ignore[arg-type]
    built = time.perf_counter()
    verify_archive(result.paths, PASSPHRASE, manifest, backend=backend)  # type: ignore[arg-type]
    done = time.perf_counter()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "archive_s": built - start,
                "verify_s": done - built,
                "total_s": done - start,
                "size": result.size,
                "rss_self_mb": own,
                "rss_children_mb": kids,
            }
        )
    )


def run_child(
    backend: str, codec: str, level: int, files: list[Path], dest: Path
) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            backend,
            "--codec",
            codec,
            "--level",
            str(level),
            "--dest",
            str(dest),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=63)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--codec", default="lzma2")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--backends", default="7zz,py7zr")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", default=None)
    parser.add_argument("--dest", type=Path, default=None)
    parser.add_argument("inputs", nargs="*", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.codec, args.level, args.inputs, args.dest)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=args.workdir))
    try:
        src = work / "src"
        src.mkdir()
        files = generate(src, args.mb, args.files)
        total = sum(p.stat().st_size for p in files)
        print(
            f"input: {len(files)} files, {total / 1e6:.1f} MB; "
            f"codec {args.codec} level {args.level}"
        )
        rows: dict[str, list[dict[str, float]]] = {}
        base: list[float] = []
        for _ in range(args.repeat):
            # Interleave baseline and ours so machine noise hits both alike.
            base.append(cli_baseline(files, work / "cli.7z", args.level))
            for backend in args.backends.split(","):
                dest = work / f"ours-{backend}.7z"
                rows.setdefault(backend, []).append(
                    run_child(backend, args.codec, args.level, files, dest)
                )
                dest.unlink(missing_ok=True)
        cli = statistics.median(base)
        print(f"7-Zip CLI (-mmt=2) archive: {cli:.2f} s  ({total / cli / 1e6:.0f} MB/s)")
        for backend, runs in rows.items():
            t = statistics.median(r["total_s"] for r in runs)
            a = statistics.median(r["archive_s"] for r in runs)
            v = statistics.median(r["verify_s"] for r in runs)
            peak = max(r["rss_self_mb"] + r["rss_children_mb"] for r in runs)
            print(
                f"ours [{backend}] archive {a:.2f} s + verify {v:.2f} s = {t:.2f} s  "
                f"ratio {t / cli:.2f}x (budget <= 1.5)  peak RSS {peak:.0f} MB "
                f"(self {max(r['rss_self_mb'] for r in runs):.0f} + 7zz "
                f"{max(r['rss_children_mb'] for r in runs):.0f}; budget < 256)  "
                f"size {runs[0]['size'] / 1e6:.1f} MB"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
