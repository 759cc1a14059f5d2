"""SFTP upload budget: seftpilot's SftpClient vs OpenSSH's `sftp` client, same sshd, same run.

    sudo uv run python benchmarks/bench_sftp.py            # 256 MB file, 3 rounds
    sudo uv run python benchmarks/bench_sftp.py --mb 64    # quicker

Starts OpenSSH's sshd as root on a loopback high port (config and keys in a tmp dir, see
tests/fixtures/sftp_server.py), then alternates uploads of one random file with
`sftp -b` (the baseline) and with SftpClient.upload (temp name + size check + rename
included), and for reference paramiko's own `put` with its default transport settings.
Reports median throughput and the ratio (DESIGN.md budget: ours >= 0.75x OpenSSH).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.fixtures.sftp_server import OpenSshd  # noqa: E402

from seftpilot.adapters.sftp import SftpClient  # noqa: E402


def openssh_upload(server: OpenSshd, local: Path) -> None:
    subprocess.run(
        [
            "sftp",
            "-q",
            "-b",
            "-",
            "-i",
            str(server.client_key_file),
            "-o",
            f"UserKnownHostsFile={server.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-P",
            str(server.port),
            f"{server.username}@{server.host}",
        ],
        input=f"put {local} {server.root}/openssh.bin\n".encode(),
        check=True,
        capture_output=True,
    )


def ours_upload(server: OpenSshd, local: Path) -> None:
    with SftpClient(server.endpoint()) as client:
        client.upload(local, "ours.bin", overwrite=True)


def paramiko_defaults(server: OpenSshd, local: Path) -> None:
    # The starting point DESIGN.md measured: paramiko's Transport defaults and put().
    with SftpClient(
        server.endpoint(),
        window_size=2 * 1024 * 1024,
        max_packet_size=32 * 1024,
        ciphers=("aes128-ctr",),
    ) as client:
        client.sftp.put(str(local), str(server.root / "paramiko.bin"))


def ours_ctr(server: OpenSshd, local: Path) -> None:
    with SftpClient(server.endpoint(), ciphers=("aes128-ctr",)) as client:
        client.upload(local, "ctr.bin", overwrite=True)


def ours_small_window(server: OpenSshd, local: Path) -> None:
    with SftpClient(server.endpoint(), window_size=2 * 1024 * 1024) as client:
        client.upload(local, "win.bin", overwrite=True)


def paramiko_put_gcm(server: OpenSshd, local: Path) -> None:
    with SftpClient(server.endpoint()) as client:
        client.sftp.put(str(local), str(server.root / "putgcm.bin"))


def timed(fn: Callable[[OpenSshd, Path], None], server: OpenSshd, local: Path) -> float:
    start = time.perf_counter()
    fn(server, local)  # connection setup included for every client alike
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--ablation", action="store_true", help="also time each tuning choice on its own"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark starts its own sshd")
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    work = Path(tempfile.mkdtemp(prefix="bench-sftp-"))
    server = OpenSshd(sshd, work / "sshd")
    server.start()
    try:
        local = work / "payload.bin"
        with local.open("wb") as out:
            for _ in range(args.mb):
                out.write(os.urandom(1024 * 1024))
        size = local.stat().st_size
        clients = {
            "openssh sftp": openssh_upload,
            "seftpilot": ours_upload,
            "paramiko defaults": paramiko_defaults,
        }
        if args.ablation:
            clients |= {
                "ours, aes128-ctr": ours_ctr,
                "ours, 2 MiB window": ours_small_window,
                "paramiko put, tuned transport": paramiko_put_gcm,
            }
        times: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, fn in clients.items():
                times[name].append(timed(fn, server, local))
        rate = {name: size / statistics.median(t) / 1e6 for name, t in times.items()}
        base = rate["openssh sftp"]
        print(f"upload of {size / 1e6:.0f} MB to OpenSSH sshd on loopback, {args.rounds} rounds")
        for name, mbps in rate.items():
            print(f"  {name:30s} {mbps:7.1f} MB/s  ratio {mbps / base:.2f}x")
        print(f"budget: seftpilot >= 0.75x -> {rate['seftpilot'] / base:.2f}x")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
