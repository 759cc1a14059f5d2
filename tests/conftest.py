"""Shared test configuration. Server fixtures live in tests/fixtures/, one module each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.tls",
    "tests.fixtures.imap_server",
    "tests.fixtures.smtp_server",
    "tests.fixtures.sftp_server",
]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _no_retry_waits() -> None:
    """Retries happen at once in tests (the stamina habit): behaviour, not waiting."""
    from seftpilot.adapters import retry

    retry.set_testing(True)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's own settings or .env."""
    for key in list(os.environ):
        if key.startswith("SEFTPILOT_") and key != "SEFTPILOT_REQUIRE_INTEROP":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
