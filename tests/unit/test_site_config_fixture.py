"""The test helper tests/fixtures/site_config.py: what it writes is the TOML it was given,
and its watch site is a configuration seftpilot loads as the tests expect."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from seftpilot.adapters.rules_files import default_rules_path
from seftpilot.config import load_settings
from seftpilot.sandbox.servers import ImapServer, SmtpServer
from tests.fixtures.site_config import (
    NIC,
    OPERATOR,
    merged,
    site_config,
    toml_text,
    watch_site,
)


def test_values_round_trip_through_tomllib(tmp_path: Path) -> None:
    awkward = 'a "quoted" C:\\path\twith\ncontrol \x7f and ünïcode 🙂'
    values = {
        "state_dir": tmp_path / "state",
        "rules": [Path("/r/one.yaml"), "two.yaml"],
        "flag": False,
        "ratio": 0.25,
        "text": awkward,
        "imap": {"port": 993, "password": None, "odd key": "x"},
        "agreement": [
            {"nic": "A", "upload": {"transport": "sftp", "sftp": {"port": 22}}},
            {"nic": "B", "download": {"source": "manual"}},
        ],
        "empty": [],
    }
    path = site_config(tmp_path, name="x.toml", **values)
    assert path == tmp_path / "x.toml"
    assert tomllib.loads(path.read_text(encoding="utf-8")) == {
        "state_dir": str(tmp_path / "state"),
        "rules": ["/r/one.yaml", "two.yaml"],
        "flag": False,
        "ratio": 0.25,
        "text": awkward,
        "imap": {"port": 993, "odd key": "x"},  # None: left out
        "agreement": [
            {"nic": "A", "upload": {"transport": "sftp", "sftp": {"port": 22}}},
            {"nic": "B", "download": {"source": "manual"}},
        ],
        "empty": [],
    }


def test_a_value_toml_cannot_hold_is_refused() -> None:
    with pytest.raises(TypeError, match="object"):
        toml_text({"imap": {"port": object()}})


def test_merged_merges_tables_and_replaces_the_rest() -> None:
    base = {"imap": {"host": "h", "idle": True}, "rules": ["a"]}
    out = merged(base, {"imap": {"idle": False, "port": 1}, "rules": ["b"]})
    assert out == {"imap": {"host": "h", "idle": False, "port": 1}, "rules": ["b"]}
    assert base == {"imap": {"host": "h", "idle": True}, "rules": ["a"]}  # not changed


def test_watch_site_is_the_site_the_watch_tests_describe(tmp_path: Path) -> None:
    imap = ImapServer(port=1143)  # not started: only its address and login are read
    smtp = SmtpServer()
    try:
        config = watch_site(tmp_path, imap, smtp, imap={"poll_interval_seconds": 1})
    finally:
        smtp.stop()
    settings = load_settings(config)
    assert settings.state_dir == tmp_path / "state"
    assert settings.rules == [default_rules_path()]
    assert (settings.imap.host, settings.imap.port, settings.imap.security) == (
        imap.host,
        1143,
        "plain",
    )
    assert settings.imap.username == imap.username
    assert settings.imap.password is not None
    assert settings.imap.password.get_secret_value() == imap.password
    assert settings.imap.idle is True and settings.imap.poll_interval_seconds == 1
    assert (settings.smtp.port, settings.smtp.security) == (smtp.port, "plain")
    assert settings.operator.emails == [OPERATOR]
    assert settings.canary.enabled is False
    (agreement,) = settings.agreement
    assert (agreement.nic, agreement.upload.transport) == (NIC, "manual")
