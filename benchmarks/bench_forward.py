"""Forward budgets in one command: the archive and the SFTP upload of a delivery.

    uv run python benchmarks/bench_forward.py              # 160 files, 1 GB (DESIGN.md's run)
    uv run python benchmarks/bench_forward.py --mb 63      # a quick look

Runs benchmarks/bench_archive.py (archive + verify against the 7-Zip CLI at the same codec
and level, both cores; peak memory) and benchmarks/bench_sftp.py (upload throughput against
OpenSSH's `sftp` client to a loopback sshd), each printing ratios against its baseline
measured in the same run. Both need the interop tools (`7zz`, `sshd`, `sftp`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=1024, help="total size of the returned files")
    parser.add_argument("--files", type=int, default=160, help="how many returned files")
    parser.add_argument("--upload-mb", type=int, default=256, help="size of the upload test")
    args = parser.parse_args()
    status = 0
    for script, extra in (
        ("bench_archive.py", ["--mb", str(args.mb), "--files", str(args.files), "--repeat", "1"]),
        ("bench_sftp.py", ["--mb", str(args.upload_mb)]),
    ):
        print(f"== {script} {' '.join(extra)}", flush=True)
        status |= subprocess.call([sys.executable, str(HERE / script), *extra])
    return status


if __name__ == "__main__":
    sys.exit(main())
