"""The exception tree of seftpilot, and nothing else.

Every error a user can see is one of these. Adapters translate the exceptions of the
libraries they wrap (imaplib/imapclient, smtplib, paramiko, py7zr, sqlite3, OSError) into
this tree at their boundary, so the service and the CLI only ever catch ours.

    SeftpilotError                      base; ``hint`` says what to do next
    ├── ConfigError                     settings or a file they name are wrong (exit 2)
    ├── InputError                      a file the operator gave cannot be used (exit 1)
    │   ├── CohortSourceError           the study export cannot be read or mapped
    │   ├── ProfileError                a cohort profile file is malformed
    │   └── RulesError                  a rules file is malformed (file, line, rule)
    ├── LedgerError                     the ledger refused a change
    │   ├── IllegalTransition           (machine, state, event) not in the table; nothing changed
    │   ├── ClaimLost                   another worker claimed the step first
    │   ├── DailyLimitReached           an upload already happened this NHS day
    │   └── StateDirError               state directory unusable (read-only, full, wrong mode)
    ├── TransportError                  a server could not do what we asked (``server``)
    │   ├── TransientError              worth retrying: timeouts, resets, 4xx SMTP, busy
    │   └── PermanentError              retrying will not help
    │       ├── AuthenticationError     credentials refused or token cannot be obtained
    │       ├── HostKeyError            SFTP host key unknown or changed
    │       └── TLSVerificationError    certificate not trusted or wrong name
    ├── ArchiveError                    7z creation failed
    │   └── ArchiveVerificationError    archive does not match its manifest
    └── AlreadyRunning                  another process holds the lock (``lock_path``)

``TransportError.permanent`` lets retry policies ask one question: only
``TransientError`` is retried, bounded by attempts and total time (see ``retry``).
"""

from __future__ import annotations


class SeftpilotError(Exception):
    """Base of every seftpilot error. ``hint`` is the next step for the operator."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(SeftpilotError):
    """The configuration (or a file it points to) is wrong. Always exit status 2."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        file: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ", ".join(
            p for p in (f"file {file}" if file else "", f"key {key}" if key else "") if p
        )
        super().__init__(f"{message} ({where})" if where else message, hint=hint)
        self.key = key
        self.file = file


class InputError(SeftpilotError):
    """A file the operator handed us cannot be used as it is."""


class CohortSourceError(InputError):
    """The study's export cannot be read or mapped onto the profile's fields."""


class ProfileError(InputError):
    """A cohort profile file is malformed."""


class RulesError(InputError):
    """A rules file is malformed. Names the file, the line and the rule where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        rule: str | None = None,
        hint: str | None = None,
    ) -> None:
        parts = []
        if file:
            parts.append(f"{file}:{line}" if line else file)
        if rule:
            parts.append(f"rule {rule!r}")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message, hint=hint)
        self.file = file
        self.line = line
        self.rule = rule


class LedgerError(SeftpilotError):
    """The ledger refused a change."""


class IllegalTransition(LedgerError):
    """An (state, event) pair that is not in a machine's transition table."""

    def __init__(self, machine: str, state: str, event: str) -> None:
        super().__init__(
            f"{machine}: event {event!r} is not allowed in state {state!r}; nothing was changed",
        )
        self.machine = machine
        self.state = state
        self.event = event


class ClaimLost(LedgerError):
    """Another worker claimed the step first (the conditional UPDATE matched no row)."""


class DailyLimitReached(LedgerError):
    """An upload for this agreement already happened on this NHS day."""


class StateDirError(LedgerError):
    """The state directory cannot be used: read-only, full, or unsafe permissions."""

    exit_code = 2


class TransportError(SeftpilotError):
    """A server could not do what we asked. ``server`` names it (host:port)."""

    permanent = False

    def __init__(self, message: str, *, server: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{server}: {message}" if server else message, hint=hint)
        self.server = server


class TransientError(TransportError):
    """Worth retrying later: timeouts, resets, temporary refusals."""

    permanent = False


class PermanentError(TransportError):
    """Retrying will not help until someone changes something."""

    permanent = True


class AuthenticationError(PermanentError):
    """Credentials were refused, or a token could not be obtained."""


class HostKeyError(PermanentError):
    """The SFTP server's host key is unknown or has changed."""


class TLSVerificationError(PermanentError):
    """The server's certificate is not trusted or does not match its name."""


class ArchiveError(SeftpilotError):
    """The archive could not be built."""


class ArchiveVerificationError(ArchiveError):
    """The archive does not match its manifest (or will not open with the passphrase)."""


class AlreadyRunning(SeftpilotError):
    """Another seftpilot process holds the lock."""

    exit_code = 1

    def __init__(self, lock_path: str) -> None:
        super().__init__(
            f"another seftpilot process holds {lock_path}",
            hint="stop the other `seftpilot watch` first, or point --config at another state_dir",
        )
        self.lock_path = lock_path
