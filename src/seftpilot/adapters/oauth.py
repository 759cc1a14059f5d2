"""OAuth2 bearer tokens for IMAP (XOAUTH2), from Microsoft's identity platform via msal.

Owns: obtaining an access token by the client-credentials flow or the refresh-token flow;
persisting the rotated refresh token atomically (mode 0600) to ``oauth.refresh_token_file``;
the XOAUTH2 SASL string; and ``expiry_warnings`` — what expires soon (refresh-token age, the
client secret's end date, IMAP/SMTP password end dates) as values for the monitor to alert on.

Must not: log or print a token or secret, cache access tokens across reconnects (a token is
asked for on every connect, so a revoked grant shows at once), or alert anyone itself.

The network call to the token endpoint sits behind ``TokenEndpoint`` (``MsalEndpoint`` is the
real one) so the persistence and rotation logic is testable here, where Microsoft's endpoint
cannot be reached.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from seftpilot.config import OAuthSettings, Settings
from seftpilot.errors import AuthenticationError, ConfigError, TransientError

log = logging.getLogger(__name__)

# Errors from the token endpoint that will not go away by retrying (RFC 6749 5.2, AADSTS).
_PERMANENT_OAUTH_ERRORS = {
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
    "unsupported_grant_type",
    "invalid_request",
    "interaction_required",
    "consent_required",
}


def xoauth2_string(user: str, access_token: str) -> bytes:
    """The XOAUTH2 initial client response: ``user=U^Aauth=Bearer T^A^A`` (before base64;
    imaplib base64-encodes what the SASL callback returns)."""
    if "\x01" in user or "\x01" in access_token:
        raise AuthenticationError("user name or token contains a control character")
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01".encode()


class TokenEndpoint(Protocol):
    """The one network seam: Microsoft's token endpoint, as msal reaches it."""

    def for_client(self, scopes: list[str]) -> dict[str, Any]: ...

    def by_refresh_token(self, refresh_token: str, scopes: list[str]) -> dict[str, Any]: ...


class MsalEndpoint:
    """The real endpoint: msal against ``{authority_host}/{tenant}``."""

    def __init__(self, oauth: OAuthSettings, *, timeout: float = 30.0) -> None:
        import msal

        authority = f"{oauth.authority_host.rstrip('/')}/{oauth.tenant}"
        secret = oauth.client_secret.get_secret_value() if oauth.client_secret else None
        if secret:
            self._app: Any = msal.ConfidentialClientApplication(
                oauth.client_id, client_credential=secret, authority=authority, timeout=timeout
            )
        else:
            self._app = msal.PublicClientApplication(
                oauth.client_id, authority=authority, timeout=timeout
            )

    def for_client(self, scopes: list[str]) -> dict[str, Any]:
        if not hasattr(self._app, "acquire_token_for_client"):
            raise ConfigError(
                "the client-credentials flow needs a client secret",
                key="imap.oauth.client_secret",
            )
        return dict(self._app.acquire_token_for_client(scopes=scopes))

    def by_refresh_token(self, refresh_token: str, scopes: list[str]) -> dict[str, Any]:
        return dict(self._app.acquire_token_by_refresh_token(refresh_token, scopes=scopes))


@dataclass(frozen=True)
class StoredRefreshToken:
    token: str
    obtained_at: datetime


def read_refresh_token(path: Path) -> StoredRefreshToken:
    """The stored refresh token. A bare token pasted by the operator is accepted too
    (its age is then the file's modification time)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        raise ConfigError(
            "refresh token file not found",
            file=str(path),
            key="imap.oauth.refresh_token_file",
            hint="obtain a refresh token once (device-code sign-in) and save it there",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read refresh token: {exc.strerror}", file=str(path)) from None
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return StoredRefreshToken(
                token=str(data["refresh_token"]),
                obtained_at=datetime.fromisoformat(data["obtained_at"]),
            )
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                "refresh token file is not valid (expected JSON with refresh_token and "
                "obtained_at, or the bare token)",
                file=str(path),
            ) from None
    if not text:
        raise ConfigError("refresh token file is empty", file=str(path))
    return StoredRefreshToken(token=text, obtained_at=mtime)


def write_refresh_token(path: Path, token: str, obtained_at: datetime) -> None:
    """Replace the stored token atomically: temp file 0600 in the same folder, fsync,
    rename. A crash leaves either the old token or the new one, never half of one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    payload = json.dumps(
        {"refresh_token": token, "obtained_at": obtained_at.astimezone(UTC).isoformat()}
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class OAuthTokenProvider:
    """Callable returning a fresh access token; pass it to ``ImapMailbox(token_provider=)``.

    ``now`` is a function so the service can hand in its Clock.
    """

    def __init__(
        self,
        oauth: OAuthSettings,
        *,
        endpoint: TokenEndpoint | None = None,
        now: Callable[[], datetime] | None = None,
        server: str = "login.microsoftonline.com",
    ) -> None:
        self.oauth = oauth
        self._endpoint = endpoint
        self._now = now or (lambda: datetime.now(UTC))
        self.server = server

    @property
    def endpoint(self) -> TokenEndpoint:
        if self._endpoint is None:
            self._endpoint = MsalEndpoint(self.oauth)
        return self._endpoint

    def __call__(self) -> str:
        return self.access_token()

    def access_token(self) -> str:
        oauth = self.oauth
        if not oauth.client_id:
            raise ConfigError(
                "imap.oauth.client_id is empty",
                key="imap.oauth.client_id",
                hint="the application (client) ID registered in Entra ID for this mailbox",
            )
        try:
            if oauth.flow == "client_credentials":
                result = self.endpoint.for_client(oauth.scopes)
            else:
                if oauth.refresh_token_file is None:
                    raise ConfigError(
                        "the refresh_token flow needs a refresh_token_file",
                        key="imap.oauth.refresh_token_file",
                    )
                stored = read_refresh_token(oauth.refresh_token_file)
                result = self.endpoint.by_refresh_token(stored.token, oauth.scopes)
        except (ConfigError, AuthenticationError):
            raise
        except (OSError, ValueError) as exc:
            # msal's HTTP client (requests) raises OSError/ValueError subclasses on
            # network failures and garbled replies.
            raise TransientError(
                f"token endpoint unreachable: {type(exc).__name__}", server=self.server
            ) from None
        return self._accept(result)

    def _accept(self, result: dict[str, Any]) -> str:
        if "access_token" not in result:
            error = str(result.get("error", "unknown_error"))
            # error_description names the AADSTS code; it holds no secret.
            detail = str(result.get("error_description", "")).splitlines()[0:1]
            message = f"token request refused: {error}" + (f" ({detail[0]})" if detail else "")
            if error in _PERMANENT_OAUTH_ERRORS:
                raise AuthenticationError(
                    message,
                    server=self.server,
                    hint="the grant or client secret is no longer valid: obtain a new "
                    "refresh token or secret and update the configuration",
                )
            raise TransientError(message, server=self.server)
        rotated = result.get("refresh_token")
        path = self.oauth.refresh_token_file
        if self.oauth.flow == "refresh_token" and rotated and path is not None:
            # Microsoft rotates refresh tokens: keep only the newest, or the next
            # reconnect after the old one expires fails.
            write_refresh_token(path, str(rotated), self._now())
            log.info("stored the rotated refresh token in %s", path)
        return str(result["access_token"])


# -- expiry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpiryWarning:
    what: str  # e.g. "imap.oauth refresh token"
    key: str  # the setting that names it
    expires_on: date
    days_left: int  # negative once expired

    @property
    def expired(self) -> bool:
        return self.days_left < 0

    def message(self) -> str:
        if self.expired:
            return f"{self.what} expired on {self.expires_on} ({-self.days_left} days ago)"
        return f"{self.what} expires on {self.expires_on} (in {self.days_left} days)"


def expiry_warnings(settings: Settings, now: datetime) -> list[ExpiryWarning]:
    """Everything that expires within ``watchdogs.expiry_warning_days`` of ``now`` (or has
    expired), soonest first. Reads the refresh-token file for its age; never raises for a
    missing one (``seftpilot check`` reports that)."""
    today = now.astimezone(UTC).date()
    horizon = settings.watchdogs.expiry_warning_days
    candidates: list[tuple[str, str, date | None]] = [
        ("IMAP password", "imap.password_expires", settings.imap.password_expires),
        ("SMTP password", "smtp.password_expires", settings.smtp.password_expires),
    ]
    oauth = settings.imap.oauth
    if settings.imap.auth == "xoauth2":
        candidates.append(
            (
                "OAuth2 client secret",
                "imap.oauth.client_secret_expires",
                oauth.client_secret_expires,
            )
        )
        if oauth.flow == "refresh_token" and oauth.refresh_token_file is not None:
            try:
                stored = read_refresh_token(oauth.refresh_token_file)
            except ConfigError:
                stored = None
            if stored is not None:
                ends = stored.obtained_at + timedelta(days=oauth.refresh_token_max_age_days)
                candidates.append(
                    (
                        "OAuth2 refresh token",
                        "imap.oauth.refresh_token_max_age_days",
                        ends.astimezone(UTC).date(),
                    )
                )
    warnings = [
        ExpiryWarning(what=what, key=key, expires_on=when, days_left=(when - today).days)
        for what, key, when in candidates
        if when is not None and (when - today).days <= horizon
    ]
    return sorted(warnings, key=lambda w: w.expires_on)
