"""Settings: one TOML file plus ``SEFTPILOT_*`` environment variables (and ``.env``).

Owns the settings model, where it is read from and how a mistake in it is reported.
Must not open connections or create state: ``seftpilot check --connect`` does that.

Precedence, highest first: environment variables (``SEFTPILOT_IMAP__PASSWORD``: nested keys
joined by ``__``), ``.env``, the TOML file, the defaults here. The ``.env`` read is the one
beside the settings file, so ``--config /srv/study/seftpilot.toml`` (or a systemd unit with
no WorkingDirectory) finds its secrets from any directory; only when there is none there is
the working directory's ``.env`` read instead. Exactly one ``.env`` is read, never a mix of
two: when both exist, the one beside the settings file wins whole (``dotenv_file`` and
``dotenv_ignored`` say which, and ``seftpilot check`` prints it). Secrets are ``SecretStr``
so they never print; keep them in ``.env`` or the environment, not in the TOML.
"""

from __future__ import annotations

import difflib
import os
import re
from datetime import date, time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from seftpilot.errors import ConfigError

DEFAULT_CONFIG = Path("seftpilot.toml")
DOTENV = ".env"
NIC_RE = re.compile(r"^NIC-\d{5,6}-[A-Z0-9]{5}$")


class _Section(BaseModel):
    # A typo in a key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class OAuthSettings(_Section):
    """XOAUTH2 for Microsoft 365 / NHSmail (msal)."""

    flow: Literal["client_credentials", "refresh_token"] = "client_credentials"
    tenant: str = "common"
    client_id: str = ""
    client_secret: SecretStr | None = None
    client_secret_expires: date | None = None
    scopes: list[str] = Field(default_factory=lambda: ["https://outlook.office365.com/.default"])
    authority_host: str = "https://login.microsoftonline.com"
    # The refresh token rotates; the newest is persisted here (mode 0600).
    refresh_token_file: Path | None = None
    refresh_token_max_age_days: int = 90


class ImapSettings(_Section):
    host: str = "localhost"
    port: int = 993
    security: Literal["tls", "starttls", "plain"] = "tls"
    ca_file: Path | None = None
    username: str = ""
    password: SecretStr | None = None
    password_expires: date | None = None
    auth: Literal["password", "xoauth2"] = "password"
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)
    folder: str = "INBOX"
    idle: bool = True
    # Servers drop idle connections silently (RFC 9051 allows 30 min, many do less).
    idle_renew_seconds: int = Field(default=540, ge=10, le=1740)
    poll_interval_seconds: int = Field(default=60, ge=1)
    timeout_seconds: float = Field(default=30.0, gt=0)
    after_handling: Literal["none", "flag", "move"] = "none"
    move_to: str = "seftpilot/handled"
    flag: str = "$SeftpilotHandled"


class SmtpSettings(_Section):
    host: str = "localhost"
    port: int = 587
    security: Literal["tls", "starttls", "plain"] = "starttls"
    ca_file: Path | None = None
    username: str = ""
    password: SecretStr | None = None
    password_expires: date | None = None
    from_address: str = "seftpilot@localhost"
    timeout_seconds: float = Field(default=30.0, gt=0)


class SftpEndpoint(_Section):
    """An SFTP server: SEFT's upload or download area, or the partner's drop."""

    host: str = "localhost"
    port: int = 22
    username: str = ""
    password: SecretStr | None = None
    key_file: Path | None = None
    key_passphrase: SecretStr | None = None
    known_hosts: Path = Path("known_hosts")
    remote_dir: str = "."
    timeout_seconds: float = Field(default=30.0, gt=0)


class UploadSettings(_Section):
    transport: Literal["sftp", "manual"] = "manual"
    sftp: SftpEndpoint | None = None
    outbox: Path = Path("outbox")


class DownloadSettings(_Section):
    source: Literal["sftp", "folder"] = "folder"
    sftp: SftpEndpoint | None = None
    drop_folder: Path = Path("inbox-files")
    quiet_seconds: int = 300
    expected_count: int | None = None


class Agreement(_Section):
    """One Data Sharing Agreement with NHS England."""

    nic: str
    profile: str = "mps-legacy-24"
    # Source column -> profile field, for study exports whose headers are not NHS names.
    column_mapping: dict[str, str] = Field(default_factory=dict)
    upload: UploadSettings = Field(default_factory=UploadSettings)
    download: DownloadSettings = Field(default_factory=DownloadSettings)
    nhs_senders: list[str] = Field(
        default_factory=lambda: ["nhsdigital.nhs.uk", "nhs.net", "england.nhs.uk"]
    )
    max_retries: int = 3

    @field_validator("nic")
    @classmethod
    def _nic_shape(cls, value: str) -> str:
        if not NIC_RE.match(value):
            raise ValueError(
                f"{value!r} is not a NIC number like NIC-402963-P0Y5D "
                "(NIC-, digits, -, five capital letters or digits)"
            )
        return value


class SubmissionSettings(_Section):
    upload_window_start: time = time(9, 0)
    upload_window_end: time = time(16, 0)
    # The evidence window closes at this Europe/London time on the next NHS working day.
    verdict_deadline: time = time(12, 0)
    max_listening_gap_minutes: int = 30


class PartnerSettings(_Section):
    sftp: SftpEndpoint | None = None
    name_template: str = "isaric-{date}-{delivery}.7z"
    passphrase_recipients: list[str] = Field(default_factory=list)
    announce_recipients: list[str] = Field(default_factory=list)
    retention_days: int = 7
    codec: Literal["lzma2", "zstd", "copy"] = "lzma2"
    level: int = Field(default=1, ge=0, le=9)
    backend: Literal["auto", "py7zr", "7zz"] = "auto"
    volume_size_mb: int | None = None


class OperatorSettings(_Section):
    emails: list[str] = Field(default_factory=list)
    digest_time: time = time(7, 30)
    alert_reminder_hours: int = 24


class HeartbeatSettings(_Section):
    url: str | None = None
    timeout_seconds: float = 10.0
    # Listening is stale (a /fail ping, an alert) when no cycle was recorded for one
    # expected cycle (poll interval, or IDLE renewal) plus this much.
    grace_seconds: int = Field(default=300, ge=0)


class CanarySettings(_Section):
    enabled: bool = True
    send_time: time = time(10, 0)
    max_delay_minutes: int = 30
    # Where canaries go: the watched mailbox's address (default: imap.username).
    address: str = ""


class WatchdogSettings(_Section):
    new_data_within_days: int = 60
    nhs_silence_days: int = 45
    expiry_warning_days: int = 14


class Settings(BaseSettings):
    """Everything seftpilot reads from its configuration."""

    model_config = SettingsConfigDict(
        env_prefix="SEFTPILOT_",
        env_nested_delimiter="__",
        # No .env unless load_settings() names one (dotenv_for): which file it is depends
        # on where the settings file is, not on the directory seftpilot happens to run in.
        env_file=None,
        extra="forbid",
        frozen=True,
    )

    # Set by load_settings() before construction; not a setting itself.
    _toml_path: ClassVar[Path | None] = None
    # The settings file's directory, set by load_settings(): relative paths in the file
    # (rules, ...) are read against it, so `--config site/seftpilot.toml` works from anywhere.
    _base_dir: Path | None = PrivateAttr(default=None)
    # The .env that was read, and one that was not because the other won (both absolute).
    _dotenv: Path | None = PrivateAttr(default=None)
    _dotenv_ignored: Path | None = PrivateAttr(default=None)

    state_dir: Path = Path("state")
    rules: list[Path] = Field(default_factory=lambda: [Path("rules")])
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    imap: ImapSettings = Field(default_factory=ImapSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    agreement: list[Agreement] = Field(default_factory=list)
    submission: SubmissionSettings = Field(default_factory=SubmissionSettings)
    partner: PartnerSettings = Field(default_factory=PartnerSettings)
    operator: OperatorSettings = Field(default_factory=OperatorSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    watchdogs: WatchdogSettings = Field(default_factory=WatchdogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)

    @property
    def dotenv_file(self) -> Path | None:
        """The ``.env`` these settings were read with, if any (absolute)."""
        return self._dotenv

    @property
    def dotenv_ignored(self) -> Path | None:
        """The working directory's ``.env``, when it exists but the one beside the settings
        file was read instead."""
        return self._dotenv_ignored

    def resolve(self, path: Path) -> Path:
        """``path`` as written in the settings, read relative to the settings file."""
        if path.is_absolute() or self._base_dir is None:
            return path
        return self._base_dir / path

    def agreement_for(self, nic: str | None) -> Agreement:
        """The agreement named ``nic``, or the only one when ``nic`` is None."""
        if nic is None:
            if len(self.agreement) == 1:
                return self.agreement[0]
            if not self.agreement:
                raise ConfigError(
                    "no [[agreement]] is configured",
                    key="agreement",
                    hint="add an [[agreement]] section with its nic, or pass --nic",
                )
            raise ConfigError(
                "several agreements are configured; say which with --nic",
                key="agreement",
            )
        for agreement in self.agreement:
            if agreement.nic == nic:
                return agreement
        known = ", ".join(a.nic for a in self.agreement) or "none"
        raise ConfigError(f"no agreement {nic!r} (configured: {known})", key="agreement.nic")


def config_path(explicit: Path | None = None) -> Path:
    """The config file to read: ``--config``, else ``$SEFTPILOT_CONFIG``, else ./seftpilot.toml."""
    if explicit is not None:
        return explicit
    env = os.environ.get("SEFTPILOT_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def dotenv_for(toml_file: Path | None) -> tuple[Path | None, Path | None]:
    """(the ``.env`` to read, the one left unread), both absolute.

    The ``.env`` beside the settings file; if there is none, the working directory's (what
    seftpilot read before, and the same file when run from the site's directory). Only one
    is ever read: merging two would let another site's secret fill a gap unnoticed.
    """
    # Normalised but not resolved: "beside" means the same directory that the file's
    # relative paths are read against, even when the settings file is a symlink.
    here = Path(os.path.abspath(DOTENV))
    beside = Path(os.path.abspath(toml_file.parent / DOTENV)) if toml_file is not None else here
    if beside.is_file():
        other = here.is_file() and not os.path.samefile(here, beside)
        return beside, (here if other else None)
    return (here if here.is_file() else None), None


def _absolute_paths(value: Any, base: Path) -> Any:
    """``value`` with every relative Path (in nested sections and lists) made absolute."""
    if isinstance(value, Path):
        return value if value.is_absolute() else base / value.expanduser()
    if isinstance(value, BaseModel):
        updates = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _absolute_paths(old, base)
            if new is not old:
                updates[name] = new
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, list):
        items = [_absolute_paths(v, base) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def load_settings(
    path: Path | None = None, *, required: bool = False, **overrides: Any
) -> Settings:
    """Read settings, turning every mistake into a ConfigError naming the key and the file.

    A missing file is fine unless ``required`` (commands that need servers say so): the
    defaults and the environment still apply.
    """
    toml_path = config_path(path)
    if not toml_path.exists():
        if required or path is not None:
            # The absolute path: "seftpilot.toml" alone does not say which directory the
            # command was run from, the usual mistake.
            raise ConfigError(
                "configuration file not found",
                file=str(toml_path.absolute()),
                hint="run seftpilot from the site's directory, pass --config PATH or set "
                "SEFTPILOT_CONFIG; `seftpilot init` writes a new one",
            )
        toml_file: Path | None = None
    else:
        toml_file = toml_path
    Settings._toml_path = toml_file
    dotenv, ignored = dotenv_for(toml_file)
    try:
        loaded = Settings(**{"_env_file": dotenv, **overrides})
        loaded._dotenv, loaded._dotenv_ignored = dotenv, ignored
        if toml_file is None:
            return loaded
        # Every relative path in the settings means "beside the settings file", so that
        # `--config site/seftpilot.toml` works from any directory, for every command.
        base = toml_file.parent.absolute()
        resolved = _absolute_paths(loaded, base)
        assert isinstance(resolved, Settings)
        resolved._base_dir = base
        resolved._dotenv, resolved._dotenv_ignored = dotenv, ignored
        return resolved
    except ValidationError as exc:
        raise _validation_error(exc, toml_file, dotenv) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read: {exc.strerror or exc}",
            # The settings file, or the .env beside it: say which.
            file=str(exc.filename or toml_path),
            hint="check that the path names the settings file and that this user may read it",
        ) from None
    except ValueError as exc:  # tomllib.TOMLDecodeError: the message names line and column
        raise ConfigError(
            f"not valid TOML: {exc}",
            file=str(toml_path),
            hint="fix that line: a key written twice, a missing quote or bracket, or a "
            'value without quotes (text needs "...")',
        ) from None
    finally:
        Settings._toml_path = None


def env_name(key: str) -> str:
    """The environment variable that sets ``key``: imap.oauth.client_secret ->
    SEFTPILOT_IMAP__OAUTH__CLIENT_SECRET."""
    return "SEFTPILOT_" + key.upper().replace(".", "__")


def _env_source(loc: tuple[str | int, ...], dotenv: Path | None) -> str | None:
    """Where the value at ``loc`` came from if not the file: the environment or the
    ``.env`` that was read (``dotenv``)."""
    if any(isinstance(p, int) for p in loc):
        return None  # lists of tables ([[agreement]]) only come from the file
    name = env_name(".".join(str(p) for p in loc))
    if any(k.upper() == name for k in os.environ):
        return f"environment variable {name}"
    if dotenv is None:
        return None
    try:
        lines = dotenv.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if any(line.split("=", 1)[0].strip().upper() == name for line in lines):
        return f"{name} in {dotenv}"
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings section a field holds: ``X``, ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _known_keys(loc: tuple[str | int, ...]) -> list[str]:
    """The keys allowed in the section that holds ``loc[-1]``."""
    model: type[BaseModel] | None = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an index into [[agreement]]: same section
        field = model.model_fields.get(part) if model is not None else None
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _describe(error: Any) -> tuple[str, str | None]:
    """One pydantic error as (message, key), in the operator's words."""
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or None
    if error["type"] == "extra_forbidden" and loc:
        name = str(loc[-1])
        section = ".".join(str(p) for p in loc[:-1] if not isinstance(p, int))
        where = f"in [{section}]" if section else "at the top level"
        message = f"unknown key {name!r} {where}"
        close = difflib.get_close_matches(name, _known_keys(loc), n=1)
        if close:
            message += f": did you mean {close[0]!r}?"
        return message, key
    message = str(error["msg"]).removeprefix("Value error, ")
    return message, key


def _validation_error(
    exc: ValidationError, toml_file: Path | None, dotenv: Path | None
) -> ConfigError:
    """Every mistake at once, the first in full; each names its key, and its source when
    that is the environment rather than the file. Input values are never shown: they may
    be secrets."""
    errors = exc.errors()
    message, key = _describe(errors[0])
    source = _env_source(tuple(errors[0]["loc"]), dotenv)
    if source:
        message += f" (set by {source})"
    unknown = errors[0]["type"] == "extra_forbidden"
    error = ConfigError(
        message,
        key=key,
        file=str(toml_file) if toml_file else "(no file: defaults and environment)",
        hint=(
            "check the spelling; docs/configuration.md lists every key"
            if unknown
            else "fix the value; docs/configuration.md gives every key's type and default"
        ),
    )
    for other in errors[1:6]:
        text, where = _describe(other)
        error.message += f"\n  also key {where}: {text}"
    if len(errors) > 6:
        error.message += f"\n  and {len(errors) - 6} more"
    return error
