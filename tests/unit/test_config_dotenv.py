"""Where `.env` is read from: beside the settings file, whatever the working directory
(an operator's `--config /srv/study/seftpilot.toml`, or systemd without WorkingDirectory);
the working directory's only when there is none there; never a mix of two files. The
precedence stays environment > .env > TOML > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from seftpilot.config import load_settings
from seftpilot.errors import ConfigError
from tests.fixtures.site_config import NIC, site_config


@pytest.fixture
def site(tmp_path: Path) -> Path:
    directory = tmp_path / "site"
    directory.mkdir()
    return site_config(directory, imap={"port": 1000}, agreement=[{"nic": NIC}])


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


def _secret(value: object) -> str | None:
    return None if value is None else value.get_secret_value()  # type: ignore[attr-defined]


def test_the_env_file_beside_the_settings_file_is_read_from_any_directory(
    site: Path, elsewhere: Path
) -> None:
    (site.parent / ".env").write_text("SEFTPILOT_IMAP__PASSWORD=beside-the-toml\n")
    cfg = load_settings(site)
    assert _secret(cfg.imap.password) == "beside-the-toml"
    assert cfg.dotenv_file == site.parent / ".env"
    assert cfg.dotenv_ignored is None


def test_when_both_exist_the_one_beside_the_settings_file_wins_whole(
    site: Path, elsewhere: Path
) -> None:
    (site.parent / ".env").write_text("SEFTPILOT_IMAP__PASSWORD=beside-the-toml\n")
    # Another site's secrets in the working directory must not fill the gaps.
    (elsewhere / ".env").write_text(
        "SEFTPILOT_IMAP__PASSWORD=from-the-cwd\nSEFTPILOT_SMTP__PASSWORD=cwd-smtp\n"
    )
    cfg = load_settings(site)
    assert _secret(cfg.imap.password) == "beside-the-toml"
    assert cfg.smtp.password is None
    assert cfg.dotenv_ignored == elsewhere / ".env"


def test_the_working_directory_env_is_read_when_none_is_beside_the_settings_file(
    site: Path, elsewhere: Path
) -> None:
    (elsewhere / ".env").write_text("SEFTPILOT_IMAP__PASSWORD=from-the-cwd\n")
    cfg = load_settings(site)
    assert _secret(cfg.imap.password) == "from-the-cwd"
    assert cfg.dotenv_file == elsewhere / ".env"


def test_environment_beats_env_file_beats_toml(
    site: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(site).imap.port == 1000
    (site.parent / ".env").write_text("SEFTPILOT_IMAP__PORT=2000\n")
    assert load_settings(site).imap.port == 2000
    monkeypatch.setenv("SEFTPILOT_IMAP__PORT", "3000")
    assert load_settings(site).imap.port == 3000


def test_a_bad_value_in_the_env_file_names_that_file(site: Path, elsewhere: Path) -> None:
    env_file = site.parent / ".env"
    env_file.write_text("SEFTPILOT_IMAP__PORT=not-a-port\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(site)
    assert f"set by SEFTPILOT_IMAP__PORT in {env_file}" in caught.value.message
    assert caught.value.key == "imap.port"
