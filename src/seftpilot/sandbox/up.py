"""``seftpilot sandbox up``: the sandbox on the real clock, for rehearsing by hand.

Owns starting the servers and the NHS England simulator on the system clock, writing a
ready-to-use ``seftpilot.toml`` (+ ``.env`` with the IMAP password, 0600; SFTP by the
generated client keys; host keys pinned in ``known_hosts``) and a synthetic study export
beside it, telling the operator how to use them, and stepping the simulator every
second until ``stop`` is set (SIGTERM / Ctrl-C in the CLI).

The service is *not* run here: the operator runs ``seftpilot watch`` against the written
settings, as on a real site. ``speed`` shortens NHS England's delays only (its answer
"the next working morning" comes after delay/speed); the service's own timers (upload
window, verdict deadline, digest) keep real time.

Must not listen beyond loopback or write outside its directory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from seftpilot.sandbox.demo import write_study_export
from seftpilot.sandbox.simulator import SimulatorConfig
from seftpilot.sandbox.world import DEFAULT_NIC, OPERATOR, PARTNER_CONTACTS, WATCHED, Sandbox

Echo = Callable[[str], None]
TICK_SECONDS = 1.0


@dataclass(frozen=True)
class UpOptions:
    mode: str = "legacy"
    returned_files: int = 3
    speed: float = 1.0
    stuck_delete_rate: float = 0.0
    study_rows: int = 40


def instructions(sandbox: Sandbox, directory: Path, toml: Path) -> list[str]:
    return [
        "Sandbox ready: every server is on 127.0.0.1 and holds synthetic data only.",
        f"  IMAP          127.0.0.1:{sandbox.imap.port}  user {WATCHED} (password in "
        f"{directory / '.env'}); folders INBOX (watched), Operator, Partner, Other",
        f"  SMTP          127.0.0.1:{sandbox.smtp.port}  files mail by recipient: {WATCHED} -> "
        f"INBOX, {OPERATOR} -> Operator, {', '.join(PARTNER_CONTACTS)} -> Partner",
        f"  SEFT upload   127.0.0.1:{sandbox.seft_upload.port}  user {sandbox.seft_upload.username}"
        f", key {sandbox.seft_upload.client_key_file}",
        f"  SEFT download 127.0.0.1:{sandbox.seft_download.port}  user "
        f"{sandbox.seft_download.username}, key {sandbox.seft_download.client_key_file}",
        f"  partner drop  127.0.0.1:{sandbox.partner.port}  user {sandbox.partner.username}, "
        f"files land in {sandbox.partner.root}",
        f"  host keys pinned in {sandbox.known_hosts}",
        f"  NHS England ({sandbox.sim_config.mode} mode) collects files from the upload area, "
        "answers the next working morning"
        + (f" (x{sandbox.sim_config.speed:g} faster)" if sandbox.sim_config.speed > 1 else ""),
        "",
        "Rehearse (seftpilot reads the .env beside the settings file):",
        f"  cd {directory}",
        f"  seftpilot rules check --config {toml.name}",
        f"  seftpilot plan study-export.csv --apply --config {toml.name}",
        f"  seftpilot submit --config {toml.name}",
        f"  seftpilot watch --config {toml.name}      # the service; Ctrl-C to stop",
        f"  seftpilot status --config {toml.name}",
        "",
        "Stop the sandbox with Ctrl-C (or SIGTERM).",
    ]


def serve(directory: Path, options: UpOptions, stop: threading.Event, echo: Echo) -> int:
    """Run the sandbox until ``stop`` is set; returns the exit status (0)."""
    config = SimulatorConfig(
        nic=DEFAULT_NIC,
        to=WATCHED,
        mode="pve" if options.mode == "pve" else "legacy",
        returned_files=options.returned_files,
        speed=options.speed,
        stuck_delete_rate=options.stuck_delete_rate,
    )
    with Sandbox(directory / "servers", simulator=config) as sandbox:
        files = sandbox.write_config(directory)
        write_study_export(directory / "study-export.csv", options.study_rows)
        for line in instructions(sandbox, directory, files.toml):
            echo(line)
        filed = 0
        while not stop.is_set():
            now = datetime.now(UTC)
            for line in sandbox.simulator.step():
                echo(f"{now:%H:%M:%S} nhs   {line}")
            items = sandbox.router.filed
            for item in items[filed:]:
                where = "lost" if item.dropped else item.folder
                echo(f"{item.at:%H:%M:%S} mail  -> {where}: {item.subject}")
            filed = len(items)
            stop.wait(TICK_SECONDS)
        echo("Stopping the sandbox.")
    return 0
