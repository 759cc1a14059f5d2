"""``seftpilot check``: validate settings, secrets and rules, optionally probe servers.

Each check is a small function returning (ok, detail); a failing check never stops the
others, so the operator sees everything that is wrong at once. A check that fails with a
ConfigError is a configuration mistake: the command exits 2 for it, as every command does,
and 1 only when every failure is of another kind (a rules file, a refused login).

Also owns which secrets the configured features need (``missing_secrets``), checked
without reaching any server, so that ``check`` reports each missing one and ``watch``
refuses to start without them (``require_secrets``). Secret values are never shown.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from seftpilot.config import DOTENV, Settings, SftpEndpoint, env_name
from seftpilot.errors import ConfigError, SeftpilotError

Check = tuple[str, Callable[[Settings], str]]


def _agreements(cfg: Settings) -> str:
    if not cfg.agreement:
        # A configuration mistake (exit 2), not a problem found: nothing can be sent.
        raise ConfigError(
            "no [[agreement]] configured",
            key="agreement",
            hint="add an [[agreement]] table with the NIC number of the data sharing "
            "agreement (seftpilot init writes a commented example)",
        )
    return ", ".join(a.nic for a in cfg.agreement)


def _dotenv(cfg: Settings) -> str:
    # Which .env the secrets came from is the first question when one seems missing.
    if cfg.dotenv_file is None:
        return "no .env file read (secrets only from the environment)"
    detail = f"read {cfg.dotenv_file}"
    if cfg.dotenv_ignored is not None:
        detail += f"; ignored {cfg.dotenv_ignored} (the one beside the settings file wins)"
    return detail


# -- secrets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MissingSecret:
    """A secret (or where one is kept) that a configured feature needs and does not have."""

    server: str  # whose it is, as the check lines name servers: "imap", "partner drop"
    key: str  # the settings key, e.g. "imap.password"
    message: str
    hint: str

    def error(self) -> ConfigError:
        return ConfigError(self.message, key=self.key, hint=self.hint)


def _unset(value: SecretStr | None) -> str | None:
    """Why ``value`` is no secret: not set, or set to nothing (a .env line left blank)."""
    if value is None:
        return "is not set"
    return "is empty" if not value.get_secret_value() else None


def _where(cfg: Settings, key: str) -> str:
    # Where it belongs, not necessarily the .env read now (a working-directory fallback).
    dotenv = cfg.resolve(Path(DOTENV))
    return (
        f"put {env_name(key)}=... in {dotenv} (beside the settings file, mode 0600) or in "
        "the service's environment"
    )


def _needed(
    cfg: Settings, server: str, key: str, value: SecretStr | None, *, because: str, instead: str
) -> list[MissingSecret]:
    """``key``'s secret as missing when unset or empty: "``key`` is not set, and
    ``because``", with where to put it and ``instead``, the other way out."""
    why = _unset(value)
    if why is None:
        return []
    return [
        MissingSecret(server, key, f"{key} {why}, and {because}", f"{_where(cfg, key)}; {instead}")
    ]


@dataclass(frozen=True)
class SftpUse:
    """An SFTP server the configuration uses: its check name, settings key and table."""

    name: str  # "NIC-402963-P0Y5D upload", "partner drop"
    key: str  # "agreement.0.upload.sftp", "partner.sftp"
    table: str  # where the operator edits it
    endpoint: SftpEndpoint

    @property
    def by_env(self) -> bool:
        # Lists of tables ([[agreement]]) cannot come from the environment.
        return not self.key.startswith("agreement.")


def sftp_endpoints(cfg: Settings) -> list[SftpUse]:
    """Every SFTP server the configuration uses."""
    found: list[SftpUse] = []
    for i, agreement in enumerate(cfg.agreement):
        for what, endpoint, used in (
            ("upload", agreement.upload.sftp, agreement.upload.transport == "sftp"),
            ("download", agreement.download.sftp, agreement.download.source == "sftp"),
        ):
            if used and endpoint is not None:
                found.append(
                    SftpUse(
                        f"{agreement.nic} {what}",
                        f"agreement.{i}.{what}.sftp",
                        f"[agreement.{what}.sftp] of {agreement.nic}",
                        endpoint,
                    )
                )
    if cfg.partner.sftp is not None:
        found.append(SftpUse("partner drop", "partner.sftp", "[partner.sftp]", cfg.partner.sftp))
    return found


def _key_is_encrypted(text: str) -> bool:
    """Whether a private key file's text (PEM or OpenSSH) is protected by a passphrase.

    Read from the format here rather than by loading the key with paramiko: the watch
    runs this at start-up and must not import paramiko before its first transfer.
    """
    if "BEGIN ENCRYPTED PRIVATE KEY" in text or "Proc-Type: 4,ENCRYPTED" in text:
        return True
    begin, end = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
    if begin not in text or end not in text:
        return False
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        data = base64.b64decode("".join(body.split()), validate=True)
    except ValueError:
        return False
    magic = b"openssh-key-v1\x00"
    if not data.startswith(magic):
        return False
    # After the magic: the cipher's name as an SSH string (uint32 length, bytes).
    length = int.from_bytes(data[len(magic) : len(magic) + 4], "big")
    return data[len(magic) + 4 : len(magic) + 4 + length] != b"none"


def _sftp_secrets(cfg: Settings, use: SftpUse) -> list[MissingSecret]:
    name, prefix, table, ep, by_env = use.name, use.key, use.table, use.endpoint, use.by_env
    who = f"{ep.username}@{ep.host}" if ep.username else ep.host
    if ep.key_file is None and _unset(ep.password) is not None:
        return [
            MissingSecret(
                name,
                f"{prefix}.key_file",
                f"{name}: no credential for {who}: neither key_file nor password is set",
                f"set key_file (a private key, mode 0600) in {table}, or "
                + (_where(cfg, f"{prefix}.password") if by_env else f"password in {table}"),
            )
        ]
    if ep.key_file is None:
        return []
    try:
        text = ep.key_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [
            MissingSecret(
                name,
                f"{prefix}.key_file",
                f"{name}: the private key file {ep.key_file} does not exist",
                f"check key_file in {table}; the path is read relative to the settings file",
            )
        ]
    except OSError as exc:
        return [
            MissingSecret(
                name,
                f"{prefix}.key_file",
                f"{name}: cannot read the private key file {ep.key_file}: {exc.strerror}",
                "it must be readable by the user seftpilot runs as (and by nobody else)",
            )
        ]
    why = _unset(ep.key_passphrase)
    if why is not None and _key_is_encrypted(text):
        key = f"{prefix}.key_passphrase"
        return [
            MissingSecret(
                name,
                key,
                f"{name}: {ep.key_file} is encrypted and {key} {why}",
                _where(cfg, key) if by_env else f"set key_passphrase in {table}",
            )
        ]
    return []


def missing_secrets(cfg: Settings) -> list[MissingSecret]:
    """Every secret the configured features need and do not have, without reaching any
    server: the IMAP password or OAuth2 settings, the SMTP password when SMTP AUTH is on
    (smtp.username set), and each SFTP endpoint's key, passphrase or password."""
    missing: list[MissingSecret] = []
    imap = cfg.imap
    if imap.auth == "password":
        missing += _needed(
            cfg,
            "imap",
            "imap.password",
            imap.password,
            because="imap.auth = 'password' needs it",
            instead="Microsoft 365 and NHSmail use imap.auth = 'xoauth2' instead",
        )
    else:
        oauth = imap.oauth
        if not oauth.client_id:
            missing.append(
                MissingSecret(
                    "imap",
                    "imap.oauth.client_id",
                    "imap.oauth.client_id is empty, and imap.auth = 'xoauth2' needs it",
                    "set it in [imap.oauth]: the application (client) ID registered in "
                    "Entra ID for this mailbox",
                )
            )
        if oauth.flow == "client_credentials":
            missing += _needed(
                cfg,
                "imap",
                "imap.oauth.client_secret",
                oauth.client_secret,
                because="the client_credentials flow needs it",
                instead="or use imap.oauth.flow = 'refresh_token'",
            )
        elif oauth.refresh_token_file is None:
            missing.append(
                MissingSecret(
                    "imap",
                    "imap.oauth.refresh_token_file",
                    "imap.oauth.refresh_token_file is not set, and the refresh_token flow needs it",
                    "set it in [imap.oauth] to a file (mode 0600) holding a refresh token "
                    "obtained once by device-code sign-in",
                )
            )
        elif not oauth.refresh_token_file.exists():
            missing.append(
                MissingSecret(
                    "imap",
                    "imap.oauth.refresh_token_file",
                    f"the refresh token file {oauth.refresh_token_file} does not exist",
                    "obtain a refresh token once (device-code sign-in) and save it there",
                )
            )
    if cfg.smtp.username:
        missing += _needed(
            cfg,
            "smtp",
            "smtp.password",
            cfg.smtp.password,
            because="smtp.username is set (SMTP AUTH)",
            instead="or clear smtp.username for no AUTH",
        )
    for use in sftp_endpoints(cfg):
        missing.extend(_sftp_secrets(cfg, use))
    return missing


def require_secrets(cfg: Settings) -> None:
    """Raise a ConfigError (exit 2) naming every missing secret: what ``watch`` runs before
    it starts, so a missing password is a configuration error at once, not a login refused
    later."""
    missing = missing_secrets(cfg)
    if not missing:
        return
    error = missing[0].error()
    for other in missing[1:]:
        error.message += f"\n  also key {other.key}: {other.message}"
    error.hint = f"{missing[0].hint}; `seftpilot check` lists each missing secret"
    raise error


def _raiser(error: ConfigError) -> Callable[[Settings], str]:
    def check(_cfg: Settings) -> str:
        raise error

    return check


def secret_checks(cfg: Settings) -> list[Check]:
    """One failing line per missing secret, or one line naming those that are set."""
    missing = missing_secrets(cfg)
    if missing:
        return [("secrets", _raiser(m.error())) for m in missing]
    needed = ["imap.password" if cfg.imap.auth == "password" else "imap.oauth"]
    if cfg.smtp.username:
        needed.append("smtp.password")
    needed += [f"{use.name} credentials" for use in sftp_endpoints(cfg)]
    return [("secrets", lambda _cfg: "set: " + ", ".join(needed))]


def _checks(cfg: Settings, connect: bool) -> list[Check]:
    checks: list[Check] = [("agreements", _agreements), (".env", _dotenv)]
    checks.extend(secret_checks(cfg))
    # Later capabilities register their checks here (rules, profiles, servers).
    from seftpilot.service import checks_extra

    checks.extend(checks_extra.offline_checks())
    if connect:
        checks.extend(checks_extra.connect_checks(cfg))
    return checks


def run_checks(cfg: Settings, *, connect: bool = False) -> dict[str, Any]:
    results = []
    for name, check in _checks(cfg, connect):
        try:
            detail = check(cfg)
            results.append({"name": name, "ok": True, "detail": detail})
        except ConfigError as exc:
            results.append(
                {
                    "name": name,
                    "ok": False,
                    "detail": str(exc),
                    "configuration_error": True,
                    "key": exc.key,
                }
            )
        except SeftpilotError as exc:
            results.append({"name": name, "ok": False, "detail": str(exc)})
    failed = [r for r in results if not r["ok"]]
    # 2 for a configuration mistake (a missing secret, a bad key), else 1: as the CLI exits.
    code = 2 if any(r.get("configuration_error") for r in failed) else 1 if failed else 0
    return {"ok": not failed, "exit_code": code, "checks": results}
