"""A missing secret is a configuration error, said before any server is asked: `check`
lists each one the configured features need (exit 2), `check --connect` does not try a
server without its secret, and `watch` refuses to start naming the key and the variable,
instead of a login refused later (exit 1). No secret value is ever shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from seftpilot.adapters.rules_files import default_rules_path
from seftpilot.cli import run
from tests.fixtures.imap_server import ImapTestServer
from tests.fixtures.site_config import NIC, site_config, watch_site
from tests.fixtures.smtp_server import SmtpServer


def _failed(capsys: pytest.CaptureFixture[str]) -> dict[str, list[dict[str, object]]]:
    by_name: dict[str, list[dict[str, object]]] = {}
    for check in json.loads(capsys.readouterr().out)["checks"]:
        if not check["ok"]:
            by_name.setdefault(check["name"], []).append(check)
    return by_name


def test_check_connect_without_the_imap_password_exits_2_and_does_not_try_imap(
    tmp_path: Path,
    imap_server: ImapTestServer,
    smtp_server: SmtpServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = watch_site(tmp_path, imap_server, smtp_server, imap={"password": None})
    assert run(["check", "--connect", "--json", "--config", str(config)]) == 2
    failed = _failed(capsys)
    assert set(failed) == {"secrets", "imap"}
    (secret,) = failed["secrets"]
    assert secret["key"] == "imap.password" and secret["configuration_error"]
    assert "SEFTPILOT_IMAP__PASSWORD" in str(secret["detail"])
    assert "not tried: imap.password missing" in str(failed["imap"][0]["detail"])
    # With the password in the .env beside the settings file, everything passes.
    (tmp_path / ".env").write_text(f"SEFTPILOT_IMAP__PASSWORD={imap_server.password}\n")
    assert run(["check", "--connect", "--config", str(config)]) == 0
    assert imap_server.password not in capsys.readouterr().out


def test_watch_without_the_imap_password_is_a_configuration_error(
    tmp_path: Path,
    imap_server: ImapTestServer,
    smtp_server: SmtpServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = watch_site(tmp_path, imap_server, smtp_server, imap={"password": None})
    assert run(["watch", "--once", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "imap.password is not set" in err and "key imap.password" in err
    assert f"SEFTPILOT_IMAP__PASSWORD=... in {tmp_path / '.env'}" in err
    assert "seftpilot check" in err
    # Refused before anything started: no ledger was opened.
    assert not (tmp_path / "state").exists()


def test_watch_names_every_missing_secret_at_once(
    tmp_path: Path,
    imap_server: ImapTestServer,
    smtp_server: SmtpServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = watch_site(
        tmp_path, imap_server, smtp_server, imap={"password": ""}, smtp={"username": "svc"}
    )
    assert run(["watch", "--once", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "imap.password is empty" in err
    assert "also key smtp.password: smtp.password is not set" in err


def _key(path: Path, encrypted: bool, kind: str = "openssh") -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(b"key-passphrase-never-shown")
        if encrypted
        else serialization.NoEncryption()
    )
    if kind == "openssh":
        data = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
        )
    else:
        fmt = {
            "pem": serialization.PrivateFormat.TraditionalOpenSSL,
            "pkcs8": serialization.PrivateFormat.PKCS8,
        }[kind]
        data = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, fmt, encryption
        )
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("kind", ["openssh", "pem", "pkcs8"])
def test_an_encrypted_key_without_its_passphrase_is_a_missing_secret(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    endpoint = {"host": "partner.example", "username": "drop", "known_hosts": known_hosts}
    plain = _key(tmp_path / "plain_key", encrypted=False, kind=kind)
    locked = _key(tmp_path / "locked_key", encrypted=True, kind=kind)

    def check(**partner_sftp: object) -> int:
        cfg = site_config(
            tmp_path,
            rules=[default_rules_path()],
            imap={"password": "x"},
            agreement=[{"nic": NIC}],
            partner={"sftp": {**endpoint, **partner_sftp}},
        )
        return run(["check", "--json", "--config", str(cfg)])

    assert check(key_file=plain) == 0
    capsys.readouterr()
    assert check(key_file=locked) == 2
    (secret,) = _failed(capsys)["secrets"]
    assert secret["key"] == "partner.sftp.key_passphrase"
    assert f"{locked} is encrypted and partner.sftp.key_passphrase is not set" in str(
        secret["detail"]
    )
    assert "SEFTPILOT_PARTNER__SFTP__KEY_PASSPHRASE" in str(secret["detail"])
    assert check(key_file=locked, key_passphrase="key-passphrase-never-shown") == 0
    assert "key-passphrase-never-shown" not in capsys.readouterr().out
