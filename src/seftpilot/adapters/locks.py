"""One runner per mailbox: an exclusive file lock in the state directory.

Owns the lock file's name (account + folder, made safe for a file name) and taking it
without waiting: a second ``seftpilot watch`` on the same mailbox gets ``AlreadyRunning``
at once instead of handling the same messages twice. The lock is an OS lock (flock), so
it is released when the process dies, however it dies.

Must not decide anything else about the mailbox.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from filelock import FileLock, Timeout

from seftpilot.errors import AlreadyRunning, StateDirError


def lock_path(state_dir: Path, account: str, folder: str) -> Path:
    """``state_dir/locks/mailbox-<readable>-<hash>.lock``; the hash keeps distinct
    mailboxes apart when their readable forms collide."""
    readable = re.sub(r"[^A-Za-z0-9._@-]+|\.{2,}", "_", f"{account}-{folder}")[:80]
    digest = hashlib.sha256(f"{account}\x00{folder}".encode()).hexdigest()[:12]
    return Path(state_dir) / "locks" / f"mailbox-{readable}-{digest}.lock"


class MailboxLock:
    """``with MailboxLock(state_dir, account, folder):`` — held for the runner's life."""

    def __init__(self, state_dir: Path, account: str, folder: str) -> None:
        self.path = lock_path(state_dir, account, folder)
        self._lock: FileLock | None = None

    def acquire(self) -> MailboxLock:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(
                f"cannot create lock directory {self.path.parent}: {exc.strerror or exc}",
                hint="check the state directory exists and is writable by this user",
            ) from None
        # is_singleton=False: a second MailboxLock in this process must be refused too.
        lock = FileLock(self.path, timeout=0, mode=0o600, thread_local=False, is_singleton=False)
        try:
            lock.acquire()
        except Timeout:
            raise AlreadyRunning(str(self.path)) from None
        except OSError as exc:
            raise StateDirError(
                f"cannot take lock {self.path}: {exc.strerror or exc}",
                hint="check the state directory is writable by this user",
            ) from None
        self._lock = lock
        # Who holds it, for the operator looking at the file (not used for locking).
        try:
            with open(self.path, "w", encoding="ascii") as handle:
                handle.write(f"{os.getpid()}\n")
        except OSError:
            pass
        return self

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.is_locked

    def __enter__(self) -> MailboxLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
