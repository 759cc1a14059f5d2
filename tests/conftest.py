"""Shared test configuration. Server fixtures live in tests/fixtures/, one module each."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.tls",
    "tests.fixtures.imap_server",
    "tests.fixtures.smtp_server",
    "tests.fixtures.sftp_server",
]

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run tests marked slow (long reliability and load runs); so does "
        "SEFTPILOT_SLOW=1 or a -m expression naming slow",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` are skipped unless asked for, so `uv run pytest` stays fast."""
    wanted = (
        config.getoption("--run-slow")
        or os.environ.get("SEFTPILOT_SLOW") == "1"
        or "slow" in (config.getoption("markexpr", default="") or "")
    )
    if wanted:
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow, SEFTPILOT_SLOW=1 or -m slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _no_retry_waits() -> None:
    """Retries happen at once in tests (the stamina habit): behaviour, not waiting."""
    from seftpilot.adapters import retry

    retry.set_testing(True)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A CLI run in-process (`watch --once`) configures the seftpilot logger for a real
    process; put it back so later tests' stderr and JSON stdout stay clean."""
    logger = logging.getLogger("seftpilot")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's own settings or .env."""
    for key in list(os.environ):
        if key.startswith("SEFTPILOT_") and key != "SEFTPILOT_REQUIRE_INTEROP":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
