"""The world the fault tests run in: the sandbox's servers and NHS England simulator, a chaos
proxy in front of every server the service talks to, and the scenario both the chaos run
and the SIGKILL run play through (uploads, NHS silence, new data, deliveries, stray mail).

Owns what the tests check at the end (``Verdict``): one upload per NHS day seen by the SEFT
server, one ``isaric-*`` archive per delivery that opens and matches NHS's files, one
passphrase mail per delivery, a handled ledger row for every message in the mailbox, no
submission or delivery stuck without a way forward, and an intact ledger.

Also plays the operator where the service, by design, asks one (a passphrase mail whose
fate is unknown): it answers from what really happened on the servers, as a person
reading their mail would, and counts each question.

Uses only the sandbox's public pieces (``seftpilot.sandbox``); never edits them.
"""

from __future__ import annotations

import email
import hashlib
import random
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import py7zr

from seftpilot.adapters.clock import FakeClock
from seftpilot.adapters.delivery_store import DeliveryStore
from seftpilot.config import Settings
from seftpilot.sandbox.demo import apply_plan, write_study_export
from seftpilot.sandbox.servers import LOOPBACK, SftpServer, known_hosts_line
from seftpilot.sandbox.simulator import SimulatorConfig
from seftpilot.sandbox.world import DEFAULT_NIC, PASSPHRASE_RE, WATCHED, Sandbox
from seftpilot.service.forward import resolve_delivery
from seftpilot.service.runtime import Runtime
from seftpilot.service.submit import asked_if_received, confirm_upload
from seftpilot.service.verdicts import resolve_submission
from tests.reliability.chaos_proxy import ChaosProxy, Rates

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_mail"
# A Monday in January (London = UTC): the upload window opens at 09:00.
START = datetime(2026, 1, 5, 8, 30, tzinfo=UTC)
STEP = timedelta(minutes=15)
ROWS = 30
RETURNED_FILES = 3
# Mail that reaches the watched mailbox besides NHS's own, none of it about a submission
# (an unrelated NHS-looking mail would rightly make a verdict "unknown").
STRAY_MAIL = (
    "unrelated-colleague.eml",
    "unrelated-newsletter.eml",
    "auto-reply-header-only.eml",
    "auto-reply-out-of-office.eml",
    "bounce-dsn.eml",
    "bounce-exchange-plain.eml",
    "spoofed-success-outside-nhs.eml",
)
SERVERS = ("imap", "smtp", "seft_upload", "seft_download", "partner")
FINISHED_DELIVERY = frozenset({"announced", "cleaned"})
SUCCESS = frozenset({"presumed_success", "confirmed_success"})


def stray_mail(rng: random.Random) -> bytes:
    """One of the harmless samples, with a fresh Message-ID (each is a distinct message)."""
    name = rng.choice(STRAY_MAIL)
    message = email.message_from_bytes((SAMPLES / name).read_bytes(), policy=policy.compat32)
    del message["Message-ID"]
    message["Message-ID"] = make_msgid(domain="stray.example")
    return message.as_bytes()


@dataclass
class World:
    """Sandbox + proxies + the settings that reach the servers through the proxies."""

    base: Path
    clock: FakeClock
    sandbox: Sandbox
    proxies: dict[str, ChaosProxy]
    known_hosts: Path
    timeout: float

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    def _endpoint(self, server: SftpServer, proxy: ChaosProxy) -> dict[str, Any]:
        return {
            "host": LOOPBACK,
            "port": proxy.port,
            "username": server.username,
            "key_file": str(server.client_key_file),
            "known_hosts": str(self.known_hosts),
            "remote_dir": "/",
            "timeout_seconds": self.timeout,
        }

    def settings_values(self) -> dict[str, Any]:
        """Plain values (JSON-able: the SIGKILL harness reads them in another process)."""
        sb = self.sandbox
        values = sb.settings_values(self.state_dir)
        values["state_dir"] = str(self.state_dir)
        values["rules"] = [str(p) for p in values["rules"]]
        values["imap"] = {
            **values["imap"],
            "port": self.proxies["imap"].port,
            "password": sb.imap_password,
            "timeout_seconds": self.timeout,
        }
        values["smtp"] = {
            **values["smtp"],
            "port": self.proxies["smtp"].port,
            "timeout_seconds": self.timeout,
        }
        agreement = values["agreement"][0]
        agreement["upload"]["sftp"] = self._endpoint(sb.seft_upload, self.proxies["seft_upload"])
        agreement["download"]["sftp"] = self._endpoint(
            sb.seft_download, self.proxies["seft_download"]
        )
        values["partner"]["sftp"] = self._endpoint(sb.partner, self.proxies["partner"])
        return values

    def settings(self) -> Settings:
        return Settings(_env_file=None, **self.settings_values())  # type: ignore[call-arg]

    def set_rates(self, rates: Rates, only: tuple[str, ...] = SERVERS) -> None:
        for name in only:
            self.proxies[name].set_rates(rates)

    def proxy_stats(self) -> dict[str, dict[str, int]]:
        return {name: dict(p.stats) for name, p in self.proxies.items()}


@contextmanager
def running_world(
    base: Path,
    *,
    seed: int = 0,
    rates: Rates | None = None,
    timeout: float = 2.0,
    returned_files: int = RETURNED_FILES,
) -> Iterator[World]:
    """Start the sandbox on a fake clock with a chaos proxy in front of each server."""
    clock = FakeClock(START)
    sim = SimulatorConfig(
        nic=DEFAULT_NIC, to=WATCHED, returned_files=returned_files, seed=seed, match_delay_days=1
    )
    with ExitStack() as stack:
        sandbox = stack.enter_context(Sandbox(base / "sandbox", clock=clock, simulator=sim))
        upstream = {
            "imap": sandbox.imap.port,
            "smtp": sandbox.smtp.port,
            "seft_upload": sandbox.seft_upload.port,
            "seft_download": sandbox.seft_download.port,
            "partner": sandbox.partner.port,
        }
        proxies = {
            name: stack.enter_context(ChaosProxy(port, name=name, seed=seed * 31 + i, rates=rates))
            for i, (name, port) in enumerate(upstream.items())
        }
        known_hosts = base / "known_hosts-via-proxy"
        known_hosts.write_text(
            "".join(
                known_hosts_line(LOOPBACK, proxies[name].port, server.host_key)
                for name, server in (
                    ("seft_upload", sandbox.seft_upload),
                    ("seft_download", sandbox.seft_download),
                    ("partner", sandbox.partner),
                )
            )
        )
        yield World(base, clock, sandbox, proxies, known_hosts, timeout)


# -- the scenario ----------------------------------------------------------------------------
@dataclass
class Scenario:
    """The loop both fault runs play: campaign 1 (ADD), its verdict and NHS's release, then
    (``long``) campaign 2 replacing the pool (DELETE, then ADD on later days) and its
    release. Stray mail lands in the mailbox on ``mail_rate`` of the steps."""

    world: World
    seed: int = 0
    long: bool = False
    mail_rate: float = 0.1
    rng: random.Random = field(init=False)
    appended: int = 0
    campaigns: list[int] = field(default_factory=list)
    operator_answers: list[str] = field(default_factory=list)
    export: Path | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def expected_uploads(self) -> int:
        return 3 if self.long else 1

    @property
    def expected_deliveries(self) -> int:
        return 2 if self.long else 1

    def begin(self, runtime: Runtime) -> None:
        agreement = runtime.settings.agreement_for(None)
        self.export = write_study_export(self.world.base / "study-export.csv", ROWS, seed=3)
        self.campaigns.append(apply_plan(runtime, agreement, self.export))

    def before_pass(self) -> None:
        """Stray mail lands (before the pass, so the last one is read before the end)."""
        if self.rng.random() < self.mail_rate:
            self.world.sandbox.imap.append(
                stray_mail(self.rng), "INBOX", when=self.world.clock.now()
            )
            self.appended += 1

    def between_steps(self, runtime: Runtime) -> None:
        """What the operator does between two service passes."""
        subs = runtime.ledger.list_submissions()
        delivered = [
            d
            for d in DeliveryStore(runtime.store).list_deliveries()
            if d.state in FINISHED_DELIVERY
        ]
        # Campaign 2 once the first release is delivered (NHS matches a day after a file
        # changes its pool; a DELETE before that match would leave nothing to return).
        if (
            self.long
            and len(self.campaigns) == 1
            and subs
            and all(s.verdict in SUCCESS for s in subs)
            and delivered
        ):
            assert self.export is not None
            agreement = runtime.settings.agreement_for(None)
            self.campaigns.append(apply_plan(runtime, agreement, self.export, "replace"))
        self.answer_operator(runtime)

    def answer_operator(self, runtime: Runtime) -> None:
        """Answer what the service asks, from the truth: whether a passphrase arrived (a
        blocked delivery), what NHS made of a file (an ``unknown`` verdict: the service was
        down, so it could not prove it listened)."""
        accepted = {
            str(r.nhs_day) for r in self.world.sandbox.simulator.received if r.outcome == "accepted"
        }
        received = {str(r.nhs_day) for r in self.world.sandbox.simulator.received}
        for sub in runtime.ledger.list_submissions():
            if str(sub.state) == "upload_unknown" and asked_if_received(runtime, sub):
                claims = [
                    e
                    for e in runtime.store.events("submission", sub.id)
                    if e["kind"] == "submission.claim"
                ]
                arrived = str(sub.nhs_day) in received
                at = datetime.fromisoformat(claims[-1]["at"]) if arrived else None
                confirm_upload(runtime, sub.id, at=at, sent=arrived)
                self.operator_answers.append(
                    f"submission {sub.id}: {'it arrived' if arrived else 'not sent'}"
                )
            if str(sub.state) == "unknown":
                ok = str(sub.nhs_day) in accepted
                resolve_submission(
                    runtime, sub.id, success=ok, note="NHS England's record, read by the test"
                )
                self.operator_answers.append(
                    f"submission {sub.id}: {'success' if ok else 'failed'}"
                )
        arrived = self.world.sandbox.passphrases()
        for d in DeliveryStore(runtime.store).list_deliveries(states=["blocked"]):
            if d.held_from == "uploaded":
                answer = "passphrase-arrived" if d.id in arrived else "resend-passphrase"
            else:  # staged and gone: nothing here takes files away, so it never arrived
                has_it = (
                    d.remote_name is not None
                    and (self.world.sandbox.partner.root / d.remote_name).exists()
                )
                answer = "partner-has-it" if has_it else "upload-again"
            resolve_delivery(runtime, d.id, answer)
            self.operator_answers.append(f"delivery {d.id}: {answer}")

    def snapshot(self, runtime: Runtime) -> dict[str, Any]:
        """Where the loop stands (for a report when it did not finish)."""
        return {
            "campaigns": self.campaigns,
            "submissions": [
                (s.id, s.action, str(s.state), s.verdict, str(s.nhs_day))
                for s in runtime.ledger.list_submissions()
            ],
            "deliveries": [
                (d.id, d.state, d.last_error)
                for d in DeliveryStore(runtime.store).list_deliveries()
            ],
            "nhs": [
                (r.file_name, str(r.nhs_day), r.outcome)
                for r in self.world.sandbox.simulator.received
            ],
        }

    def complete(self, runtime: Runtime) -> bool:
        subs = runtime.ledger.list_submissions()
        if len(subs) < self.expected_uploads or any(s.verdict is None for s in subs):
            return False
        if self.long and len(self.campaigns) < 2:
            return False
        done = [
            d
            for d in DeliveryStore(runtime.store).list_deliveries()
            if d.state in FINISHED_DELIVERY
        ]
        return len(done) >= self.expected_deliveries


# -- the checks ------------------------------------------------------------------------------
def archive_contents(archive: Path, passphrase: str) -> dict[str, str]:
    """Name -> SHA-256 of the archive's files, opened with ``passphrase`` as the partner does."""
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=archive.parent.parent) as tmp:
        with py7zr.SevenZipFile(archive, mode="r", password=passphrase) as z:
            z.extractall(path=tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def passphrase_mails(world: World) -> dict[int, int]:
    """Delivery id -> how many passphrase mails the partner's contacts received."""
    counts: dict[int, int] = {}
    for filed in world.sandbox.mail("Partner"):
        message = filed.message
        delivery = message.get("X-Seftpilot-Delivery")
        body = message.get_body(("plain",))
        if delivery is None or body is None:
            continue
        if PASSPHRASE_RE.search(str(body.get_content())):
            counts[int(str(delivery))] = counts.get(int(str(delivery)), 0) + 1
    return counts


def final_renames(server: SftpServer, prefix: str = "") -> list[tuple[str, str]]:
    with server.lock:
        return [
            (old, new)
            for old, new in server.renames
            if Path(new).name.startswith(prefix) and not Path(new).name.startswith(".")
        ]


def ledger_problems(state_dir: Path, world: World) -> list[str]:
    """Everything wrong with the ledger and the servers at the end of a run (empty: all held)."""
    problems: list[str] = []
    db = state_dir / "seftpilot.sqlite3"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity}")
        # Every message in the mailbox has exactly one row, handled.
        uids = set(world.sandbox.imap.folder_uids("INBOX"))
        rows = conn.execute("SELECT uid, state, attempts FROM mail_messages").fetchall()
        by_uid: dict[int, list[str]] = {}
        for row in rows:
            by_uid.setdefault(int(row["uid"]), []).append(str(row["state"]))
        lost = sorted(uids - set(by_uid))
        if lost:
            problems.append(f"{len(lost)} message(s) with no ledger row: UIDs {lost[:10]}")
        unhandled = {u: s for u, s in by_uid.items() if s != ["handled"]}
        if unhandled:
            problems.append(f"messages not handled exactly once: {dict(list(unhandled.items()))}")
        # Submissions: every one settled, one upload per NHS day.
        subs = conn.execute(
            "SELECT id, state, verdict, nhs_day FROM submissions ORDER BY id"
        ).fetchall()
        for s in subs:
            if s["state"] not in SUCCESS:
                problems.append(f"submission #{s['id']} ended {s['state']}")
        days = [s["nhs_day"] for s in subs]
        if len(days) != len(set(days)):
            problems.append(f"two submissions on one NHS day: {days}")
        deliveries = conn.execute("SELECT id, state, remote_name FROM deliveries").fetchall()
        for d in deliveries:
            if d["state"] not in FINISHED_DELIVERY:
                problems.append(f"delivery #{d['id']} ended {d['state']}")
    finally:
        conn.close()

    # The SEFT server: one file reached its final name per upload, NHS took each once.
    uploads = final_renames(world.sandbox.seft_upload)
    if len(uploads) != len(subs):
        problems.append(f"SEFT saw {len(uploads)} upload(s) for {len(subs)} submission(s)")
    received = world.sandbox.simulator.received
    per_day: dict[Any, int] = {}
    for receipt in received:
        per_day[receipt.nhs_day] = per_day.get(receipt.nhs_day, 0) + 1
        if receipt.outcome != "accepted":
            problems.append(f"NHS {receipt.outcome} {receipt.file_name}: {receipt.reason}")
    if any(n > 1 for n in per_day.values()):
        problems.append(f"NHS received more than one file on a day: {per_day}")

    # The partner: one archive per delivery, whole, opening with the one passphrase mailed.
    arrived = world.sandbox.passphrases()
    mails = passphrase_mails(world)
    for delivery_id, n in mails.items():
        if n != 1:
            problems.append(f"delivery {delivery_id}: {n} passphrase mails")
    placed = world.sandbox.simulator.files_placed()
    names = [d["remote_name"] for d in deliveries]
    router = sorted(p.name for p in world.sandbox.partner_files())
    if router != sorted(n for n in names if n):
        problems.append(f"partner's isaric-* files {router} != deliveries' {names}")
    for old, new in final_renames(world.sandbox.partner, "isaric-"):
        if not Path(old).name.startswith("."):
            problems.append(f"{new} was renamed from a visible name {old}")
    if len(final_renames(world.sandbox.partner, "isaric-")) != len(deliveries):
        problems.append(
            f"partner saw {len(final_renames(world.sandbox.partner, 'isaric-'))} renames to "
            f"isaric-* for {len(deliveries)} deliveries"
        )
    for d in deliveries:
        if d["remote_name"] is None or d["id"] not in arrived:
            problems.append(f"delivery #{d['id']}: no archive or no passphrase")
            continue
        inside = archive_contents(world.sandbox.partner.root / d["remote_name"], arrived[d["id"]])
        if not inside or any(placed.get(n) != h for n, h in inside.items()):
            problems.append(f"delivery #{d['id']}: archive does not match NHS's files")
    return problems


@dataclass
class RouterWatch:
    """Looks at the partner's ``isaric-*`` files after every step: a file seen under a
    router name must never change afterwards (a half file would be seen, then grow)."""

    world: World
    seen: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)

    def look(self) -> None:
        for path in self.world.sandbox.partner_files():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            before = self.seen.setdefault(path.name, digest)
            if before != digest:
                self.changed.append(path.name)
