"""A whole delivery through OpenSSH's sshd (the partner's drop) with the 7-Zip CLI as the
archive backend: what lands under ``isaric-*`` passes ``7zz t`` with the passphrase from the
passphrase mail and is refused with another one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from seftpilot.adapters.clock import FakeClock
from seftpilot.config import Settings
from seftpilot.service.forward import forward_now
from seftpilot.service.runtime import Runtime
from tests.fixtures.interop import require_tool
from tests.fixtures.sftp_server import OpenSshd
from tests.fixtures.smtp_server import SmtpServer
from tests.integration.forward_support import KEYS, NIC, START, put_files

pytestmark = pytest.mark.interop


def test_delivery_to_openssh_with_7zz_opens_with_the_mailed_passphrase(
    tmp_path: Path, openssh_server: OpenSshd, smtp_server: SmtpServer
) -> None:
    sevenzip = require_tool("7zz", "7-Zip CLI interop")
    source = tmp_path / "returned"
    source.mkdir()
    put_files(source, 3)
    settings = Settings(
        state_dir=tmp_path / "state",
        agreement=[{"nic": NIC}],
        partner={
            "sftp": openssh_server.endpoint(),
            "passphrase_recipients": [KEYS],
            "backend": "7zz",
        },
        smtp=smtp_server.settings(),
        canary={"enabled": False},
    )
    with Runtime(settings, FakeClock(START)) as runtime:
        outcome = forward_now(runtime, from_dir=source)
    assert outcome.status == "delivered", outcome.message
    final = openssh_server.root / "isaric-2025-07-02-1.7z"
    assert sorted(p.name for p in openssh_server.root.iterdir()) == [final.name]

    (mail,) = [m.message for m in smtp_server.messages]
    phrase = next(ln.strip() for ln in mail.get_content().splitlines() if ln.startswith("    "))

    def test_with(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sevenzip, "t", str(final)],
            input=f"{password}\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = test_with(phrase)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Files: 3" in ok.stdout
    assert test_with("WRONG-WRONG-WRONG").returncode != 0
