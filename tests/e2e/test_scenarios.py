"""End-to-end scenarios: the real service and the simulated NHS England on one fake clock.

Each scenario runs days of simulated time through real loopback servers (IMAP, SMTP,
three SFTP servers) in a few seconds and checks what a study would care about: verdicts,
the pool NHS holds versus the one seftpilot believes, what the operator and the partner
received, and that nothing is sent twice after a crash.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from seftpilot.adapters.delivery_store import DeliveryStore
from seftpilot.sandbox.demo import apply_plan
from seftpilot.sandbox.simulator import SimulatorConfig
from seftpilot.sandbox.world import DEFAULT_NIC, WATCHED
from tests.e2e.support import SimulatedCrash, scenario, subjects, write_export


def test_failure_mail_then_corrected_retry(tmp_path: Path) -> None:
    export, refs = write_export(tmp_path / "export.csv", 40, seed=11)
    refused = {
        refs[3]: "insufficient_information",
        refs[17]: "insufficient_information",
        refs[29]: "invalid_nhs_number",
    }
    sim = SimulatorConfig(nic=DEFAULT_NIC, to=WATCHED, reject_refs=dict(refused))
    with scenario(tmp_path, sim) as world:
        apply_plan(world.runtime, world.agreement, export)
        world.run_until(lambda: world.decided(1), days=3)

        [first] = world.submissions()
        assert first.verdict == "failed"
        # NHS's morning mail, with its error report, reached the operator as an alert...
        assert any("submission #1 failed" in s for s in subjects(world.sandbox, "Operator"))
        assert world.sandbox.simulator.received[0].outcome == "rejected"
        assert world.sandbox.simulator.pool == {}
        assert len(world.runtime.ledger.pool(DEFAULT_NIC)) == 0
        # ...and the ledger knows exactly which rows NHS refused (from the attached CSV).
        rejected = world.runtime.store.query(
            "SELECT unique_reference FROM submission_refs WHERE submission_id=?"
            " AND outcome='rejected'",
            (first.id,),
        )
        assert {r[0] for r in rejected} == set(refused)

        # The operator corrects the three participants' details with NHS, closes the failed
        # campaign (a failed campaign stays open until resumed or cancelled) and plans again.
        world.sandbox.simulator.config.reject_refs.clear()
        [failed] = world.runtime.ledger.list_campaigns(DEFAULT_NIC, active=True)
        assert failed.state == "failed"
        world.runtime.ledger.cancel_campaign(
            failed, at=world.clock.now(), reason="details corrected; planned again"
        )
        apply_plan(world.runtime, world.agreement, export)
        world.run_until(lambda: world.decided(2), days=4)

        second = world.submissions()[1]
        assert second.verdict == "presumed_success"
        assert second.nhs_day is not None and first.nhs_day is not None
        assert second.nhs_day > first.nhs_day
        assert set(world.sandbox.simulator.pool) == set(refs)
        assert set(world.runtime.ledger.pool(DEFAULT_NIC)) == set(refs)


def test_cohort_replacement_deletes_then_adds_after_the_delete_verdict(tmp_path: Path) -> None:
    old, old_refs = write_export(tmp_path / "old.csv", 20, seed=21)
    new, new_refs = write_export(tmp_path / "new.csv", 15, seed=22)
    stuck = {old_refs[4], old_refs[9]}
    sim = SimulatorConfig(nic=DEFAULT_NIC, to=WATCHED, stuck_refs=set(stuck))
    with scenario(tmp_path, sim) as world:
        apply_plan(world.runtime, world.agreement, old)
        world.run_until(lambda: world.decided(1), days=3)
        assert world.submissions()[0].verdict == "presumed_success"

        apply_plan(world.runtime, world.agreement, new, strategy="replace")
        world.run_until(lambda: world.decided(3), days=6)

        _, delete, add = world.submissions()
        assert (delete.action, delete.row_count) == ("DELETE", 20)
        assert (add.action, add.row_count) == ("ADD", 15)
        assert delete.verdict == add.verdict == "presumed_success"
        # The ADD left only after the DELETE's verdict, on a later NHS day.
        assert add.uploaded_at is not None and delete.verdict_at is not None
        assert add.uploaded_at >= delete.verdict_at
        assert add.nhs_day is not None and delete.nhs_day is not None
        assert add.nhs_day > delete.nhs_day
        # NHS England really holds the new cohort plus the records its DELETE failed to
        # remove; seftpilot believes the new cohort (NHS cannot say what it holds).
        assert set(world.sandbox.simulator.pool) == set(new_refs) | stuck
        assert set(world.runtime.ledger.pool(DEFAULT_NIC)) == set(new_refs)


def test_lost_canary_makes_the_window_unknown_and_alerts(tmp_path: Path) -> None:
    export, _ = write_export(tmp_path / "export.csv", 10, seed=31)
    with scenario(tmp_path) as world:
        world.sandbox.router.drop_canaries()  # a quarantine eats the canaries
        apply_plan(world.runtime, world.agreement, export)
        world.run_until(lambda: world.decided(1), days=3)

        [sub] = world.submissions()
        # NHS accepted the file and said nothing (legacy): silence without proof of
        # listening is not success.
        assert world.sandbox.simulator.received[0].outcome == "accepted"
        assert sub.verdict == "unknown"
        operator = subjects(world.sandbox, "Operator")
        assert any("canary did not arrive" in s for s in operator), operator
        assert any("verdict unknown for submission #1" in s for s in operator), operator
        assert len(world.runtime.ledger.pool(DEFAULT_NIC)) == 0


def test_pve_summary_notice_confirms_success(tmp_path: Path) -> None:
    export, refs = write_export(tmp_path / "export.csv", 10, seed=41)
    sim = SimulatorConfig(nic=DEFAULT_NIC, to=WATCHED, mode="pve")
    with scenario(tmp_path, sim) as world:
        apply_plan(world.runtime, world.agreement, export)
        world.run_until(lambda: world.decided(1), days=3)
        assert world.submissions()[0].verdict == "confirmed_success"
        assert set(world.runtime.ledger.pool(DEFAULT_NIC)) == set(refs)


@pytest.mark.parametrize("crash_at", ["done:upload", "done:passphrase"])
def test_killed_mid_delivery_resumes_without_sending_twice(tmp_path: Path, crash_at: str) -> None:
    export, _ = write_export(tmp_path / "export.csv", 10, seed=51)
    sim = SimulatorConfig(nic=DEFAULT_NIC, to=WATCHED, returned_files=3)
    with scenario(tmp_path, sim) as world:
        apply_plan(world.runtime, world.agreement, export)
        crashed: list[str] = []

        def crash(name: str) -> None:
            if name == crash_at and not crashed:
                crashed.append(name)
                raise SimulatedCrash(name)

        world.driver.job("forward").forwarder.checkpoint = crash  # type: ignore[attr-defined]
        with pytest.raises(SimulatedCrash):
            world.driver.run_until(lambda: False, within=timedelta(days=4))
        assert crashed == [crash_at]

        # The process is gone; a new one starts over the same ledger and servers.
        world.restart()
        deliveries = DeliveryStore(world.runtime.store)
        final = {"done:upload": "announced", "done:passphrase": "blocked"}[crash_at]
        world.run_until(lambda: [d.state for d in deliveries.list_deliveries()] == [final], days=1)

        # Exactly one archive ever reached its final name at the partner's, one
        # passphrase mail ever went out, and the archive is there.
        assert len(world.sandbox.partner.renamed_to("isaric-")) == 1
        assert len(world.sandbox.partner_files()) == 1
        passphrase_mails = [s for s in subjects(world.sandbox, "Partner") if "passphrase" in s]
        assert len(passphrase_mails) == 1
        if crash_at == "done:passphrase":
            # Sent but not recorded: seftpilot cannot know, so it asks instead of resending.
            # (alerts raised in the first pass after a restart go as one summary mail)
            texts = [
                str(f.message.get_body(("plain",)).get_content())  # type: ignore[union-attr]
                for f in world.sandbox.mail("Operator")
                if "restart" in f.subject or "ALERT" in f.subject
            ]
            assert any("passphrase mail may or may not have gone" in t for t in texts), texts


def test_dropped_connections_are_survived(tmp_path: Path) -> None:
    export, refs = write_export(tmp_path / "export.csv", 10, seed=61)
    with scenario(tmp_path) as world:
        apply_plan(world.runtime, world.agreement, export)
        cut = 0
        while not world.decided(1):
            world.driver.step()
            if world.driver.steps % 9 == 0:  # every 2h15 of simulated time
                cut += world.sandbox.drop_connections()
            assert world.driver.steps < 400, "\n".join(world.lines)
        # The mailbox reconnected each time and caught up; the gaps stayed short, so the
        # silence still counts as listened to.
        assert cut > 0 and world.driver.mail_errors > 0
        assert world.submissions()[0].verdict == "presumed_success"
        assert set(world.runtime.ledger.pool(DEFAULT_NIC)) == set(refs)
