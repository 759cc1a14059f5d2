"""A mailbox connection cut at any byte of connecting and logging in is a transient
failure (reconnect later), never "login refused".

Found by the sustained chaos run (seed 15): a connection reset while the LOGIN command was
in flight reached the service as ``AuthenticationError`` ("login refused: socket error:
EOF"), which stops the mailbox intake for good, as a wrong password must; one network
glitch would have left the study deaf until someone restarted the service. imapclient
wraps the connection's ``abort`` in a ``LoginError``; the adapter now looks at the cause.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from seftpilot.adapters.imap import ImapMailbox
from seftpilot.errors import AuthenticationError, TransientError
from seftpilot.sandbox.servers import ImapServer
from tests.reliability.chaos_proxy import ChaosProxy


@pytest.fixture
def imap() -> Iterator[ImapServer]:
    server = ImapServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_cut_anywhere_in_connect_and_login_is_transient(imap: ImapServer) -> None:
    outcomes: Counter[str] = Counter()
    with ChaosProxy(imap.port, name="imap", seed=3) as proxy:
        settings = imap.settings(port=proxy.port, timeout_seconds=5.0)
        # Every offset from the greeting to past the LOGIN reply, both drop and reset.
        for offset in [*range(1, 120, 7), *range(120, 700, 23)]:
            for fault in ("drop", "reset"):
                proxy.force_next(fault, offset=offset)
                mailbox = ImapMailbox(settings)
                try:
                    mailbox.connect()
                    mailbox.select("INBOX")
                    outcomes["connected"] += 1
                except AuthenticationError as exc:
                    pytest.fail(f"{fault} after {offset} bytes became 'login refused': {exc}")
                except TransientError:
                    outcomes["transient"] += 1
                finally:
                    mailbox.close()
    assert outcomes["transient"] > 20, outcomes  # the cuts did land in the exchange

    # And a wrong password is still refused for good.
    wrong = ImapMailbox(imap.settings(password="not the password"))
    with pytest.raises(AuthenticationError):
        wrong.connect()
    wrong.close()
