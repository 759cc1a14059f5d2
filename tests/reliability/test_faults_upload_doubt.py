"""An upload interrupted by a crash, when SEFT's upload folder no longer shows the file.

Found by the SIGKILL runs: seftpilot died right after its file reached SEFT (before the
ledger recorded it) and stayed down long enough for NHS England's intake to collect the
file. On restart the listing showed nothing, reconciliation took that as proof nothing
arrived, and the file went a second time the same day; NHS rejected it ("more than one
file was received today") and the failure notice made the verdict ``failed`` although the
first file had been processed.

Now an absent file proves nothing arrived only while the half-sent temporary file is still
there (the rename that hands the file to NHS never happened). With neither, the service
asks the operator once and uploads nothing until `seftpilot submission confirm ID --at`
(it arrived) or `--not-sent` (it did not).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from seftpilot.adapters.sftp import DEFAULT_TEMP_TEMPLATE
from seftpilot.cli import run as cli
from seftpilot.errors import TransientError
from seftpilot.service.runtime import Runtime
from seftpilot.service.submit import BLOCKED, UPLOADED, confirm_upload, make_transport, submit_next
from tests.reliability.world import START, Scenario, World, final_renames, running_world


class SimulatedCrash(BaseException):
    """The process dies here (BaseException: nothing in the workflow catches it)."""


class CrashAround:
    """The agreement's real transport, dying just before or just after ``put``."""

    def __init__(self, real: Any, when: str) -> None:
        self.real, self.when = real, when
        self.name, self.listable = real.name, real.listable

    def put(self, *args: Any, **kwargs: Any) -> None:
        if self.when == "before":
            raise SimulatedCrash
        self.real.put(*args, **kwargs)
        raise SimulatedCrash

    def find(self, name: str) -> Any:
        return self.real.find(name)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running_world(tmp_path) as w:
        w.clock.set(START + timedelta(minutes=45))  # Monday 09:15, inside the upload window
        yield w


def crash_upload(world: World, when: str) -> tuple[Runtime, str]:
    runtime = Runtime(world.settings(), clock=world.clock)
    Scenario(world).begin(runtime)
    agreement = runtime.settings.agreement_for(None)
    with pytest.raises(SimulatedCrash):
        submit_next(
            runtime, agreement, transport=CrashAround(make_transport(runtime, agreement), when)
        )
    name = runtime.ledger.list_submissions()[0].file_name or ""
    runtime.close()
    return Runtime(world.settings(), clock=world.clock), name  # the restarted service


def test_file_gone_after_a_crash_asks_the_operator_and_never_resends(world: World) -> None:
    runtime, name = crash_upload(world, "after")
    (world.sandbox.seft_upload.root / name).unlink()  # NHS England's intake collected it
    agreement = runtime.settings.agreement_for(None)
    for _ in range(3):
        outcome = submit_next(runtime, agreement)
        assert outcome.status == BLOCKED, outcome.message
        world.clock.advance(timedelta(minutes=15))
    assert len(final_renames(world.sandbox.seft_upload)) == 1  # sent once, never again
    asked = [m for m in world.sandbox.mail("Operator") if "did NHS England receive" in m.subject]
    assert len(asked) == 1  # asked once, not every pass

    sub = confirm_upload(runtime, outcome.submission_id or 0, at=START + timedelta(minutes=45))
    assert str(sub.state) == "uploaded"
    assert submit_next(runtime, agreement).status != UPLOADED
    assert len(final_renames(world.sandbox.seft_upload)) == 1


def test_nothing_sent_before_the_crash_goes_again_once_the_operator_says_so(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime, _ = crash_upload(world, "before")  # claimed, then died: no byte left
    agreement = runtime.settings.agreement_for(None)
    outcome = submit_next(runtime, agreement)
    assert outcome.status == BLOCKED, outcome.message  # it cannot tell this from "collected"
    config = world.base / "seftpilot.toml"
    config.write_text(
        f'state_dir = "{world.state_dir}"\n\n[[agreement]]\nnic = "{agreement.nic}"\n'
    )
    code = cli(
        ["submission", "confirm", str(outcome.submission_id), "--not-sent", "--config", str(config)]
    )
    assert code == 0, capsys.readouterr().err
    assert "due again" in capsys.readouterr().out
    assert submit_next(runtime, agreement).status == UPLOADED
    assert len(final_renames(world.sandbox.seft_upload)) == 1


def test_a_half_sent_temporary_file_proves_nothing_arrived(world: World) -> None:
    runtime, name = crash_upload(world, "before")
    partial = world.sandbox.seft_upload.root / DEFAULT_TEMP_TEMPLATE.format(name=name)
    partial.write_bytes(b"UNIQUE_REFERENCE,")  # what a connection cut mid-file leaves
    agreement = runtime.settings.agreement_for(None)
    outcome = submit_next(runtime, agreement)
    assert outcome.status == UPLOADED, outcome.message  # settled without asking anyone
    assert len(final_renames(world.sandbox.seft_upload)) == 1
    assert not [m for m in world.sandbox.mail("Operator") if "receive" in m.subject]


class DropAfterRename:
    """The transfer finished (the rename happened) but the connection died before the
    answer came back, and the listing that follows fails too: the fate is unknown."""

    def __init__(self, real: Any) -> None:
        self.real, self.dropped = real, False
        self.name, self.listable = real.name, real.listable

    def put(self, *args: Any, **kwargs: Any) -> None:
        self.real.put(*args, **kwargs)
        self.dropped = True
        raise TransientError("connection reset by peer", server="seft")

    def find(self, name: str) -> Any:
        if self.dropped:  # the server stays unreachable for the listing right after
            raise TransientError("connection reset by peer", server="seft")
        return self.real.find(name)


def test_upload_in_doubt_after_a_drop_is_not_resent_when_the_file_is_gone(world: World) -> None:
    runtime = Runtime(world.settings(), clock=world.clock)
    Scenario(world).begin(runtime)
    agreement = runtime.settings.agreement_for(None)
    first = submit_next(
        runtime, agreement, transport=DropAfterRename(make_transport(runtime, agreement))
    )
    assert first.status != UPLOADED
    (sub,) = runtime.ledger.list_submissions()
    assert str(sub.state) == "upload_unknown"
    (world.sandbox.seft_upload.root / (sub.file_name or "")).unlink()  # NHS collected it
    for _ in range(3):
        world.clock.advance(timedelta(minutes=15))
        outcome = submit_next(runtime, agreement)
        assert outcome.status == BLOCKED, outcome.message
    assert len(final_renames(world.sandbox.seft_upload)) == 1  # never a second file
    runtime.close()
