"""The two ACL holes of wills and client-id takeover, end to end: the raw CONNECT packets of
the reports, sent over a real socket to ``twistd mqtt`` with an auth ledger, next to paho
clients.

A will on a topic its client may not publish to refuses the connection (v3 return code 5)
[MQTT-3.1.4-2]; another user's Clean Start 0 with alice's client id gets a fresh session
(Session Present 0) and none of her queued messages [MQTT-3.2.2-3].
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import BrokerProcess, StartBroker, log_problems
from tests.paho import TIMEOUT, V311, Client, MakeClient
from tests.spec import check_cited_labels
from tests.test_listeners import read_until_closed

pytestmark = pytest.mark.e2e

LEDGER = """
auth:
  - {username: mallory, password: m-pw, allow: true}
  - {username: alice, password: a-pw, allow: true}
  - {username: bob, password: bob-pw, allow: true}
acl_default: deny
acl:
  - username: mallory
    filters: {"public/#": write}
  - username: alice
    filters: {"alice/#": readwrite, "secret/#": read, "public/#": read}
  - username: bob
    filters: {"bob/#": readwrite}
"""

MALLORY_WILL = bytes.fromhex(
    "102e00044d51545404c6003c00036d616c000b7365637265742f77696c6c00015700076d616c6c6f7279"
    "00046d2d7077")
"""MQTT 3.1.1 CONNECT, client id "mal", user mallory (password m-pw), will on secret/will."""

BOB_AS_PHONE = bytes.fromhex(
    "101e00044d51545404c0003c000570686f6e650003626f620006626f622d7077")
"""MQTT 3.1.1 CONNECT, client id "phone" (alice's), clean session 0, user bob (bob-pw)."""


def _broker(tmp_path: Path, start_broker: StartBroker) -> BrokerProcess:
    ledger = tmp_path / "ledger.yaml"
    ledger.write_text(LEDGER)
    return start_broker("--auth-ledger", str(ledger))


def _user(clients: MakeClient, port: int, user: str, password: str, client_id: str,
          clean: bool = True) -> Client:
    client = clients(port, V311, client_id, clean=clean)
    client.paho.username_pw_set(user, password)
    return client.connect()


def test_will_on_forbidden_topic_refused(tmp_path: Path, start_broker: StartBroker,
                                         clients: MakeClient) -> None:
    """mallory, who may write only public/#, is refused (CONNACK return code 5, connection
    closed) for a will on secret/will, and alice, reading secret/#, gets no will
    [MQTT-3.1.4-2, MQTT-3.2.2-4 (3.1.1)]."""
    broker = _broker(tmp_path, start_broker)
    alice = _user(clients, broker.port, "alice", "a-pw", "alice-reader")
    assert alice.subscribe("secret/#", 1) == [1]
    assert alice.subscribe("public/#", 1) == [1]
    with socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT) as sock:
        sock.sendall(MALLORY_WILL)
        assert read_until_closed(sock, 5) == b"\x20\x02\x00\x05"
    broker.wait_for_log(r"will to secret/will not authorized")
    _user(clients, broker.port, "mallory", "m-pw", "mal").publish("public/barrier", b"", 1)
    assert alice.expect_until("public/barrier") == []
    assert not log_problems(broker.log()), broker.log()


def test_other_user_with_the_client_id_gets_a_fresh_session(
        tmp_path: Path, start_broker: StartBroker, clients: MakeClient) -> None:
    """alice leaves a persistent session "phone" with three QoS 1 messages queued; bob's
    CONNECT with that client id and clean session 0 gets Session Present 0 and nothing of
    hers; alice's session is gone too [MQTT-3.2.2-3 (3.1.1), MQTT-3.1.2-6 (3.1.1)]."""
    broker = _broker(tmp_path, start_broker)
    phone = _user(clients, broker.port, "alice", "a-pw", "phone", clean=False)
    assert phone.subscribe("alice/inbox", 1) == [1]
    phone.disconnect()
    sender = _user(clients, broker.port, "alice", "a-pw", "alice-sender")
    for number in range(3):
        sender.publish("alice/inbox", b"private %d" % number, 1)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT) as sock:
        sock.sendall(BOB_AS_PHONE + b"\xc0\x00")  # then PINGREQ: what came before it, came
        assert read_until_closed(sock, 6) == b"\x20\x02\x00\x00\xd0\x00"
        sock.sendall(b"\xe0\x00")
    broker.wait_for_log(r"session of user 'alice' not resumed by user 'bob'")
    again = _user(clients, broker.port, "alice", "a-pw", "phone", clean=False)
    assert again.connack_flags.session_present is False
    assert not log_problems(broker.log()), broker.log()


def test_cited_labels() -> None:
    """Every label cited here exists [MQTT-3.1.4-2]."""
    check_cited_labels(sys.modules[__name__], every_test=True)
