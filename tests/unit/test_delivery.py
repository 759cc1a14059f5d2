"""The delivery decisions, pure: the state table, crash meaning, new files, drop-folder
quiet, upload reconciliation, names, retention and the two partner mails."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from seftpilot.core.delivery import (
    ACTIVE,
    RESOLUTIONS,
    RETRY_EVENT,
    STEP_FOR_STATE,
    TRANSITIONS,
    ArchivePart,
    DeliveryEvent,
    DeliveryState,
    SeenFile,
    after_crash,
    announcement_mail,
    archive_name,
    clean_due,
    folder_decision,
    is_partial,
    new_remote_files,
    next_state,
    part_names,
    passphrase_mail,
    retry_at,
    staging_name,
    upload_decision,
)
from seftpilot.errors import IllegalTransition

T0 = datetime(2025, 7, 2, 14, 0, tzinfo=UTC)
D = DeliveryState
E = DeliveryEvent


def test_happy_path_walks_the_table() -> None:
    state = str(D.WAITING)
    for event in (
        "collect_done",
        "archive_done",
        "verify_done",
        "upload_done",
        "passphrase_done",
        "announce_done",
        "clean_done",
    ):
        state = next_state(state, event)
    assert state == D.CLEANED


@pytest.mark.parametrize("state", list(DeliveryState))
@pytest.mark.parametrize("event", list(DeliveryEvent))
def test_every_pair_outside_the_table_is_refused(state: D, event: E) -> None:
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) == TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalTransition):
            next_state(state, event)


def test_nothing_leaves_cleaned_and_only_upload_and_passphrase_block() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0] == D.CLEANED]
    assert {s for (s, e) in TRANSITIONS if e == E.BLOCK} == {D.VERIFIED, D.UPLOADED}
    assert set(RESOLUTIONS) == {D.VERIFIED, D.UPLOADED}


def test_every_active_state_has_a_step_and_a_way_back_from_failure() -> None:
    for state in ACTIVE:
        assert state in STEP_FOR_STATE
        back = next_state(D.FAILED, RETRY_EVENT[state])
        assert back in ACTIVE


def test_a_crash_redoes_repeatable_steps_and_never_resends_the_passphrase() -> None:
    assert after_crash("upload") == "reconcile_upload"
    assert after_crash("passphrase") == "block_passphrase"
    for step in ("collect", "archive", "verify", "announce", "clean"):
        assert after_crash(step) == "redo"


def test_retry_backoff_grows_and_is_capped() -> None:
    assert retry_at(T0, 1) == T0 + timedelta(minutes=1)
    assert retry_at(T0, 3) == T0 + timedelta(minutes=4)
    assert retry_at(T0, 30) == T0 + timedelta(hours=1)


@pytest.mark.parametrize(
    ("name", "partial"),
    [
        ("a.csv", False),
        ("a.csv.crdownload", True),
        ("a.csv.part", True),
        ("a.tmp", True),
        (".~lock.a.csv#", True),
        (".hidden", True),
        ("part.csv", False),
    ],
)
def test_unfinished_downloads(name: str, partial: bool) -> None:
    assert is_partial(name) is partial


def test_new_remote_files_by_name_size_and_time() -> None:
    seen = [SeenFile("a.csv", 10, 100)]
    listing = [
        SeenFile("a.csv", 10, 100),  # collected before
        SeenFile("b.csv", 5, 100),
        SeenFile("c.csv.part", 1, 100),  # still being written
    ]
    assert new_remote_files(listing, seen) == [SeenFile("b.csv", 5, 100)]
    replaced = [SeenFile("a.csv", 12, 200)]  # NHS replaced it: new again
    assert new_remote_files(replaced, seen) == replaced


def test_folder_quiet_is_measured_between_looks() -> None:
    files = [SeenFile("a.csv", 10, 1), SeenFile("b.csv.crdownload", 3, 1)]
    first = folder_decision(files, None, None, T0, 300, None)
    assert not first.ready and first.quiet_since == T0
    assert first.partial == ("b.csv.crdownload",)
    grown = [SeenFile("a.csv", 10, 1), SeenFile("b.csv.crdownload", 9, 2)]
    second = folder_decision(
        grown, files, first.quiet_since, T0 + timedelta(seconds=299), 300, None
    )
    assert not second.ready and second.quiet_since == T0 + timedelta(seconds=299)
    later = T0 + timedelta(seconds=299 + 300)
    third = folder_decision(grown, grown, second.quiet_since, later, 300, None)
    assert third.ready
    assert [f.name for f in third.complete] == ["a.csv"]  # the partial is never collected


def test_folder_expected_count_needs_no_unfinished_download() -> None:
    done = [SeenFile("a.csv", 1, 1), SeenFile("b.csv", 1, 1)]
    assert folder_decision(done, None, None, T0, 3600, 2).ready
    busy = [*done, SeenFile("c.csv.part", 1, 1)]
    assert not folder_decision(busy, None, None, T0, 3600, 2).ready
    assert not folder_decision([], None, None, T0, 0, None).ready


def test_archive_names_from_the_template() -> None:
    day = date(2025, 7, 2)
    assert archive_name("isaric-{date}-{delivery}.7z", day, 7, "NIC-1") == "isaric-2025-07-02-7.7z"
    assert (
        archive_name("{nic}_{delivery}.7z", day, 3, "NIC-402963-P0Y5D") == "NIC-402963-P0Y5D_3.7z"
    )
    with pytest.raises(ValueError, match="unknown field"):
        archive_name("isaric-{day}-{delivery}.7z", day, 1, "N")
    with pytest.raises(ValueError, match="delivery"):
        archive_name("isaric-{date}.7z", day, 1, "N")
    with pytest.raises(ValueError, match="must start"):
        archive_name("../{delivery}.7z", day, 1, "N")


def test_part_names_and_staging() -> None:
    assert part_names("isaric-x.7z", ["isaric-x.7z"]) == ["isaric-x.7z"]
    assert part_names("isaric-x.7z", ["isaric-x.7z.001", "isaric-x.7z.002"]) == [
        "isaric-x.7z.001",
        "isaric-x.7z.002",
    ]
    staged = staging_name("isaric-x.7z")
    assert staged.startswith(".") and not staged.startswith("isaric-")


@pytest.mark.parametrize(
    ("final", "staged", "recorded", "expected"),
    [
        (100, None, False, "done"),
        (100, 100, True, "done"),
        (99, None, True, "block_mismatch"),
        (None, 100, False, "rename"),
        (None, 100, True, "rename"),
        (None, 40, False, "upload"),
        (None, None, False, "upload"),
        (None, None, True, "block_vanished"),
        (None, 40, True, "block_vanished"),
    ],
)
def test_upload_decision(
    final: int | None, staged: int | None, recorded: bool, expected: str
) -> None:
    assert upload_decision(100, final, staged, recorded) == expected


def test_retention() -> None:
    assert not clean_due(None, 7, T0, False)
    assert not clean_due(T0, 7, T0 + timedelta(days=6, hours=23), False)
    assert clean_due(T0, 7, T0 + timedelta(days=7), False)
    assert not clean_due(T0, 7, T0 + timedelta(days=70), True)


def test_the_passphrase_travels_alone() -> None:
    secret = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23"
    subject, body = passphrase_mail(7, "NIC-402963-P0Y5D", "0123456789abcdef", secret)
    assert secret in body and secret not in subject
    assert "isaric" not in subject + body and ".7z" not in body
    parts = [ArchivePart("isaric-2025-07-02-7.7z", 1234, "f" * 64)]
    a_subject, a_body = announcement_mail(
        7, "NIC-402963-P0Y5D", parts, 3, "sftp://p:22/in", "0123456789abcdef"
    )
    assert secret not in a_subject + a_body
    assert "isaric-2025-07-02-7.7z" in a_body and "1234" in a_body and "f" * 64 in a_body
    assert "Files inside: 3" in a_body and "0123456789abcdef" in a_body
