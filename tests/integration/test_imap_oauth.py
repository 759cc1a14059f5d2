"""OAuth2 for IMAP: the XOAUTH2 string, the AUTHENTICATE exchange with a real server, and
the token logic (flows, rotation persisted atomically at 0600, errors, expiry warnings).

The one stand-in here is ``FakeTokenEndpoint``: Microsoft's token endpoint
(login.microsoftonline.com) cannot run on this machine and nothing may leave loopback, so
the network call msal would make sits behind ``seftpilot.adapters.oauth.TokenEndpoint`` and
is replaced by a small object returning the JSON shapes the endpoint documents. Everything
around it — reading and rotating the stored refresh token, file modes, error mapping, and
the IMAP AUTHENTICATE XOAUTH2 exchange (against the in-process pymap server) — is real.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from seftpilot.adapters.imap import ImapMailbox
from seftpilot.adapters.oauth import (
    OAuthTokenProvider,
    expiry_warnings,
    read_refresh_token,
    write_refresh_token,
    xoauth2_string,
)
from seftpilot.config import ImapSettings, OAuthSettings, Settings
from seftpilot.errors import AuthenticationError, ConfigError, TransientError
from tests.fixtures.imap_server import ImapTestServer

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class FakeTokenEndpoint:
    """Stands in for Microsoft's token endpoint (see module docstring)."""

    def __init__(self, replies: list[dict[str, Any] | Exception]) -> None:
        self.replies = replies
        self.refresh_tokens_seen: list[str] = []
        self.client_calls = 0

    def _next(self) -> dict[str, Any]:
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def for_client(self, scopes: list[str]) -> dict[str, Any]:
        self.client_calls += 1
        return self._next()

    def by_refresh_token(self, refresh_token: str, scopes: list[str]) -> dict[str, Any]:
        self.refresh_tokens_seen.append(refresh_token)
        return self._next()


def refresh_settings(path: Path) -> OAuthSettings:
    return OAuthSettings(
        flow="refresh_token", tenant="example.org", client_id="app-id", refresh_token_file=path
    )


def test_xoauth2_string_is_the_documented_shape() -> None:
    raw = xoauth2_string("study@nhs.net", "ya29.token")
    assert raw == b"user=study@nhs.net\x01auth=Bearer ya29.token\x01\x01"
    # What goes on the wire is its base64 (imaplib encodes it).
    assert base64.b64encode(raw).startswith(b"dXNlcj1zdHVkeUBuaHMubmV0")


def test_xoauth2_refuses_control_characters() -> None:
    with pytest.raises(AuthenticationError):
        xoauth2_string("study@nhs.net", "tok\x01en")


def test_imap_authenticate_xoauth2_with_a_provider_token(imap_server: ImapTestServer) -> None:
    endpoint = FakeTokenEndpoint([{"access_token": "access-1", "expires_in": 3599}])
    provider = OAuthTokenProvider(
        OAuthSettings(client_id="app-id", client_secret="s3cret"), endpoint=endpoint
    )
    imap_server.add_token("access-1")
    settings = imap_server.settings(auth="xoauth2", password=None)
    with ImapMailbox(settings, token_provider=provider) as mailbox:
        assert mailbox.select().name == "INBOX"
    assert endpoint.client_calls == 1


def test_refresh_token_rotation_is_persisted_atomically_0600(tmp_path: Path) -> None:
    path = tmp_path / "oauth" / "refresh-token"
    path.parent.mkdir()
    path.write_text("first-refresh-token\n")  # as pasted by the operator
    endpoint = FakeTokenEndpoint(
        [
            {"access_token": "a1", "refresh_token": "second-refresh-token"},
            {"access_token": "a2", "refresh_token": "third-refresh-token"},
        ]
    )
    old_umask = os.umask(0)
    try:
        provider = OAuthTokenProvider(refresh_settings(path), endpoint=endpoint, now=lambda: NOW)
        assert provider() == "a1"
        assert provider() == "a2"
    finally:
        os.umask(old_umask)
    # Each call used the newest token, and the newest is what is stored.
    assert endpoint.refresh_tokens_seen == ["first-refresh-token", "second-refresh-token"]
    stored = json.loads(path.read_text())
    assert stored == {"refresh_token": "third-refresh-token", "obtained_at": NOW.isoformat()}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["refresh-token"]  # no temp files left


def test_no_rotation_keeps_the_stored_token(tmp_path: Path) -> None:
    path = tmp_path / "rt"
    write_refresh_token(path, "kept", NOW - timedelta(days=3))
    endpoint = FakeTokenEndpoint([{"access_token": "a1"}])
    assert OAuthTokenProvider(refresh_settings(path), endpoint=endpoint)() == "a1"
    assert read_refresh_token(path).token == "kept"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            {"error": "invalid_grant", "error_description": "AADSTS70008: expired"},
            AuthenticationError,
        ),
        (
            {"error": "invalid_client", "error_description": "AADSTS7000222: secret expired"},
            AuthenticationError,
        ),
        ({"error": "temporarily_unavailable"}, TransientError),
        (ConnectionError("login.microsoftonline.com unreachable"), TransientError),
        (TimeoutError("read timed out"), TransientError),
    ],
    ids=["invalid_grant", "invalid_client", "unavailable", "network", "timeout"],
)
def test_token_endpoint_failures_map_to_our_errors(
    tmp_path: Path, reply: dict[str, Any] | Exception, expected: type[Exception]
) -> None:
    path = tmp_path / "rt"
    write_refresh_token(path, "old", NOW)
    provider = OAuthTokenProvider(refresh_settings(path), endpoint=FakeTokenEndpoint([reply]))
    with pytest.raises(expected) as failed:
        provider()
    assert "old" not in str(failed.value)  # the refresh token is never in a message
    assert read_refresh_token(path).token == "old"  # nothing stored on failure


def test_missing_refresh_token_file_is_a_config_error(tmp_path: Path) -> None:
    provider = OAuthTokenProvider(
        refresh_settings(tmp_path / "absent"), endpoint=FakeTokenEndpoint([])
    )
    with pytest.raises(ConfigError) as failed:
        provider()
    assert "absent" in str(failed.value)


def test_expiry_warnings_name_what_expires_soon(tmp_path: Path) -> None:
    path = tmp_path / "rt"
    write_refresh_token(path, "rt", NOW - timedelta(days=80))  # 90-day life: 10 days left
    settings = Settings(
        state_dir=tmp_path / "state",
        imap=ImapSettings(
            auth="xoauth2",
            password_expires=date(2026, 2, 28),  # already expired
            oauth=OAuthSettings(
                flow="refresh_token",
                client_id="app",
                refresh_token_file=path,
                client_secret_expires=date(2026, 6, 1),  # far off: no warning
            ),
        ),
    )
    warnings = expiry_warnings(settings, NOW)
    assert [(w.key, w.days_left) for w in warnings] == [
        ("imap.password_expires", -2),
        ("imap.oauth.refresh_token_max_age_days", 10),
    ]
    assert warnings[0].expired and "expired on 2026-02-28" in warnings[0].message()
    assert "in 10 days" in warnings[1].message()
