"""The auth ledger (Mochi MQTT's rule file) driving a broker in memory: who may connect, what they
may publish, subscribe to and receive, hashed passwords, and reloading.

Every test runs an ``InMemoryBroker`` on a ``task.Clock``; no sockets, no sleeping.  A refused
client gets CONNACK with the reason (v5 0x86 bad user name or password, 0x87 not authorised; v3
return codes 4 and 5) and is disconnected [MQTT-3.1.4-2].
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any, List, Optional

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from tests.auth_helpers import FakeReactor, FakeThreadPool
from tests.conftest import thread_names_of_calls
from tests.spec import check_cited_labels
from twisted_mqtt.auth.ledger import Ledger, LedgerError, load_ledger
from twisted_mqtt.auth.passwords import PasswordVerifier, hash_password
from twisted_mqtt.interfaces import ClientInfo, ConnectRequest
from twisted_mqtt.packets import (
    Connect,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)
from twisted_mqtt.service import BrokerService
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient

levels = pytest.mark.parametrize("level", (3, 4, 5))

# Mochi MQTT's own test ledger (hooks/auth/ledger_test.go), in YAML.
MOCHI = """
users:
  mochi-co:
    password: melon
    acl: {"d/+/f": deny, "mochi-co/#": readwrite, "readonly": read}
  suspended-username: {password: any, disallow: true}
  mochi:
    acl: {"special/mochi": read, "secret/mochi": deny, "ignored": readwrite}
auth:
  - {username: banned-user}
  - {remote: 127.0.0.1, allow: true}
  - {remote: 123.123.123.123}
  - {username: not-mochi, remote: 111.144.155.166}
  - {remote: "111.*", allow: true}
  - {username: mochi, password: melon, allow: true}
  - {username: mochi-co, password: melon, allow: false}
acl:
  - username: mochi
    filters: {"a/b/c": 0, "d/+/f": 0, "mochi/#": 3, "updates/#": 2, "readonly": 1, "ignored": 0}
  - {remote: localhost, filters: {"$SYS/#": 1}}
  - {username: admin, filters: {"$SYS/#": 1}}
  - {remote: 001.002.003.004}
  - {filters: {"$SYS/#": 0}}
"""


def _request(client_id: str = "c", username: Optional[str] = None,
             password: Optional[bytes] = None, address: Optional[str] = "10.9.9.9") -> Any:
    return ConnectRequest(ClientInfo(client_id, username, address), password)


def _hub(ledger: Ledger) -> InMemoryBroker:
    return InMemoryBroker(authenticator=ledger)


def _join(hub: InMemoryBroker, client_id: str, level: int = 5, address: str = "10.0.0.1",
          **fields: Any) -> InMemoryClient:
    client = hub.client(protocol_level=level, address=address)
    ack = client.connect(client_id, **fields)
    assert ack.reason_code == 0, ack
    return client


@pytest.mark.parametrize("username, password, address, expected", [
    ("mochi-co", b"melon", "10.0.0.1", True),          # users map
    ("suspended-username", b"any", "10.0.0.1", 0x87),  # users map: disallowed
    ("banned-user", b"x", "127.0.0.1", 0x87),           # first rule wins over the next
    ("anyone", None, "127.0.0.1", True),                # allow localhost
    ("anyone", None, "123.123.123.123", 0x87),
    ("not-mochi", None, "111.144.155.166", 0x87),
    ("not-mochi", None, "111.0.0.1", True),             # remote wildcard
    ("mochi", b"melon", "10.0.0.1", True),
    ("mochi", b"wrong", "10.0.0.1", 0x86),              # nothing matched, credentials given
    ("mochi-co", b"wrong", "10.0.0.1", 0x86),           # users map miss falls to the rules
    (None, None, "10.0.0.1", None),                     # no opinion
])
def test_mochi_auth_cases(username: Optional[str], password: Optional[bytes], address: str,
                          expected: Any) -> None:
    """Mochi MQTT's own authentication cases: the users map first, then the first matching
    rule decides; no match refuses (0x86 when credentials were given) [MQTT-3.1.4-2]."""
    ledger = Ledger.from_text(MOCHI)
    assert ledger.authenticate(_request("id", username, password, address)) == expected


@pytest.mark.parametrize("username, address, topic, write, expected", [
    ("mochi", None, "a/b/c", True, False),
    ("mochi", None, "d/j/f", True, False),
    ("mochi", None, "mochi/x", True, True),
    ("mochi", None, "updates/x", True, True),
    ("mochi", None, "updates/x", False, False),        # write only
    ("mochi", None, "readonly", True, False),
    ("mochi", None, "readonly", False, True),
    (None, "localhost", "$SYS/test", False, True),
    ("admin", None, "$SYS/test", False, True),
    ("mochi", None, "$SYS/test", False, False),
    (None, "001.002.003.004", "any/path", True, True),  # a rule without filters allows all
    ("mochi", None, "secret/mochi", True, False),       # the user's own acl first
    ("mochi", None, "special/mochi", True, False),
    ("mochi", None, "special/mochi", False, True),
    ("mochi", None, "ignored", True, True),             # user acl beats the acl rules
    ("mochi", None, "any/mochi", True, True),           # nothing decides: Mochi allows
])
def test_mochi_acl_cases(username: Optional[str], address: Optional[str], topic: str,
                         write: bool, expected: bool) -> None:
    """Mochi MQTT's own ACL cases give Mochi's answers [MQTT-3.1.4-2]."""
    ledger = Ledger.from_text(MOCHI)
    assert ledger.allowed(ClientInfo("id", username, address), topic, write) is expected


def test_json_and_yaml_are_the_same_ledger() -> None:
    """Mochi's JSON and YAML forms of one ledger load to the same rules [MQTT-3.1.4-2]."""
    text = ('{"users":{"mochi":{"password":"peach","acl":{"deny":0,"readonly":1}}},'
            '"auth":[{"client":"*","username":"mochi-co","remote":"192.168.1.*",'
            '"password":"melon","allow":true}],"acl":[{"client":"*","username":"mochi-co",'
            '"remote":"127.*","filters":{"deny":0,"readonly":1,"readwrite":3,"writeonly":2}}]}')
    yaml_text = """
users:
  mochi: {password: peach, acl: {deny: 0, readonly: 1}}
auth:
  - {client: '*', username: mochi-co, remote: 192.168.1.*, password: melon, allow: true}
acl:
  - client: '*'
    username: mochi-co
    remote: 127.*
    filters: {deny: 0, readonly: 1, readwrite: 3, writeonly: 2}
"""
    assert load_ledger(text) == load_ledger(yaml_text)
    assert load_ledger(json.dumps(json.loads(text))).auth[0].allow is True


@levels
@pytest.mark.parametrize("fields, v5_code, v3_code", [
    ({"username": "bob", "password": b"wrong"}, 0x86, 4),
    ({"username": "carol", "password": b"cpw"}, 0x87, 5),
    ({}, 0x87, 5),
])
def test_refusals_reach_the_client(level: int, fields: Any, v5_code: int, v3_code: int) -> None:
    """A wrong password gets v5 0x86 (v3 4), a disallowing rule or no credentials 0x87 (v3 5),
    with Session Present 0, and the connection is closed [MQTT-3.1.4-2, MQTT-3.2.2-6,
    MQTT-3.2.2-5 (3.1.1)]."""
    ledger = Ledger.from_text("""
auth:
  - {username: bob, password: bpw, allow: true}
  - {username: carol, allow: false}
""")
    hub = _hub(ledger)
    client = hub.client(protocol_level=level, address="10.0.0.1")
    ack = client.connect("c1", **fields)
    assert ack.reason_code == (v5_code if level == 5 else v3_code)
    assert not ack.session_present and client.closed
    good = hub.client(protocol_level=level, address="10.0.0.1")
    assert good.connect("c2", username="bob", password=b"bpw").reason_code == 0


def test_first_match_wins_and_wildcards() -> None:
    """Auth rules are tried in order and the first matching one decides, with ``*``
    wildcards in client id, username and address, and CIDR addresses [MQTT-3.1.4-2]."""
    ledger = Ledger.from_text("""
auth:
  - {client: "sensor-*", remote: "10.1.0.0/16", allow: true}
  - {client: "sensor-*", allow: false}
  - {username: "ops-*", password: "*", allow: true}
""")
    hub = _hub(ledger)
    assert hub.client(address="10.1.2.3").connect("sensor-7").reason_code == 0
    assert hub.client(address="10.2.0.1").connect("sensor-7").reason_code == 5
    assert hub.client(address="10.2.0.1").connect("sensor-9", username="ops-1",
                                                 password=b"x").reason_code == 5
    assert hub.client(address="10.2.0.1").connect("sensor-", username="ops-1",
                                                 password=b"x").reason_code == 0  # needs 1+
    assert hub.client(address="10.2.0.1").connect("x", username="ops-1",
                                                 password=b"anything").reason_code == 0
    assert hub.client(address="10.2.0.1").connect("y", username="ops-",
                                                 password=b"a").reason_code == 4


@pytest.mark.parametrize("scheme", ["bcrypt", "pbkdf2_sha256"])
def test_hashed_passwords_are_checked_in_the_pool(scheme: str) -> None:
    """A hashed password is checked in the verifier's thread pool: no CONNACK until the pool
    answers, then 0 for the right password and 0x86 for a wrong one [MQTT-3.1.4-2,
    MQTT-3.2.2-6]."""
    pool = FakeThreadPool()
    verifier = PasswordVerifier(FakeReactor(), pool, nice=0)  # (runs in this thread)
    stored = hash_password("s3cret", scheme, rounds=4 if scheme == "bcrypt" else 1000)
    ledger = Ledger.from_text(json.dumps({
        "users": {"alice": {"password": stored}},
        "auth": [{"username": "bob", "password": stored, "allow": True}],
    }), verifier=verifier)
    hub = _hub(ledger)
    clients = {}
    for name, user, password in (("a", "alice", b"s3cret"), ("b", "bob", b"s3cret"),
                                 ("c", "alice", b"nope"), ("d", "bob", b"nope")):
        client = hub.client(protocol_level=5)
        client.send(Connect(name, 5, True, 0, username=user, password=password))
        assert client.received() == []  # waiting for the pool
        clients[name] = client
    while pool.queued:
        pool.run()
    codes = {name: client.received()[0].reason_code for name, client in clients.items()}
    assert codes == {"a": 0, "b": 0, "c": 0x86, "d": 0x86}
    assert set(pool.ran) == {"_in_worker"}


@levels
def test_publish_acl(level: int) -> None:
    """A publish the ACL refuses is not routed: a v5 QoS 1 PUBLISH is answered PUBACK 0x87, a
    v3 one acknowledged as usual [MQTT-3.3.4-1, MQTT-3.3.5-2 (3.1.1)]."""
    ledger = Ledger.from_text("""
auth: [{allow: true}]
acl:
  - username: writer
    filters: {"out/#": write, "in/#": read}
""")
    hub = _hub(ledger)
    routed = hub.record_published()
    writer = _join(hub, "w", level, username="writer")
    writer.send(Publish("out/1", b"ok", 1, packet_id=1), Publish("in/1", b"no", 1, packet_id=2))
    acks = [p for p in writer.received() if isinstance(p, PubAck)]
    assert [a.packet_id for a in acks] == [1, 2]
    if level == 5:
        assert [a.reason_code for a in acks] == [0x10, 0x87]  # no subscribers, not authorised
    assert [m.topic for m in routed] == ["out/1"]
    assert not writer.closed


@levels
def test_subscribe_acl_per_filter(level: int) -> None:
    """Each refused filter gets its own failure code, in order: v5 0x87, v3 0x80; the allowed
    ones are granted [MQTT-3.9.3-1, MQTT-3.8.4-6, MQTT-3.8.4-5 (3.1.1)]."""
    ledger = Ledger.from_text("""
auth: [{allow: true}]
acl:
  - filters: {"public/#": read, "private/#": deny}
""")
    hub = _hub(ledger)
    client = _join(hub, "s", level)
    client.send(Subscribe(1, (Subscription("public/#", 1), Subscription("private/x", 1),
                              Subscription("public/a/+", 0))))
    (suback,) = [p for p in client.received() if isinstance(p, SubAck)]
    refused = 0x87 if level == 5 else 0x80
    assert suback.reason_codes == (1, refused, 0)


@levels
def test_a_client_holding_hash_never_receives_what_it_may_not_read(level: int) -> None:
    """A subscription to ``#`` (allowed, since ``#`` is readable) still never delivers a topic
    the ACL denies the client, live or retained, whoever publishes it [MQTT-3.1.4-2]."""
    ledger = Ledger.from_text("""
auth: [{allow: true}]
acl:
  - {username: admin}
  - username: reader
    filters: {"#": read, "secret/#": deny, "secret/shared": read}
""")
    hub = _hub(ledger)
    admin = _join(hub, "admin", 5, username="admin")
    admin.send(Publish("secret/retained", b"r", 0, retain=True))
    reader = _join(hub, "reader", level, username="reader")
    reader.send(Subscribe(1, (Subscription("#", 0),)))
    assert [p.reason_codes for p in reader.received() if isinstance(p, SubAck)] == [(0,)]
    for topic in ("news", "secret/a", "secret/b/c", "secret/shared", "secret", "secretive"):
        admin.send(Publish(topic, topic.encode(), 0))
    got = [p.topic for p in reader.received() if isinstance(p, Publish)]
    assert got == ["news", "secret/shared", "secretive"]  # secret/# covers secret too


def test_reload_applies_new_rules_without_dropping_clients(tmp_path: Path,
                                                           logged: List[str]) -> None:
    """``BrokerService.reload`` re-reads the ledger: a connected client stays connected, and
    its next publish and deliveries follow the new rules [MQTT-3.1.4-2, MQTT-3.3.4-1]."""
    path = tmp_path / "ledger.yaml"
    path.write_text("auth: [{allow: true}]\nacl: [{filters: {'a/#': readwrite}}]\n")
    ledger = Ledger.from_file(path)
    hub = _hub(ledger)
    service = BrokerService(broker=hub.broker, reactor=hub.clock)
    routed = hub.record_published()
    client = _join(hub, "c")
    client.send(Subscribe(1, (Subscription("a/#", 0),)))
    client.send(Publish("a/1", b"1", 1, packet_id=1))
    before = client.received()
    assert [p.topic for p in before if isinstance(p, Publish)] == ["a/1"]
    path.write_text("auth: [{allow: true}]\nacl: [{filters: {'a/#': read}}]\n")
    results: List[Any] = []
    service.reload().addCallback(results.append)
    assert results == [[repr(ledger)]]
    client.send(Publish("a/2", b"2", 1, packet_id=2))
    acks = [p for p in client.received() if isinstance(p, PubAck)]
    assert [(a.packet_id, a.reason_code) for a in acks] == [(2, 0x87)]
    assert [m.topic for m in routed] == ["a/1"] and not client.closed
    path.write_text("auth: [{allow: true}]\nacl: [{filters: {'a/#': write}}]\n")
    service.reload()
    client.send(Publish("a/3", b"3", 1, packet_id=3))
    assert [p.topic for p in client.received() if isinstance(p, Publish)] == []  # not readable
    assert any("ledger" in line and "reloaded" in line for line in logged)


def test_a_bad_file_keeps_the_rules_in_force(tmp_path: Path, logged: List[str]) -> None:
    """A ledger that cannot be used is not loaded: the rules in force stay, and the log says
    which file, where and why [MQTT-3.1.4-2]."""
    path = tmp_path / "ledger.yaml"
    path.write_text("auth: [{username: u, password: p, allow: true}]\n")
    ledger = Ledger.from_file(path)
    for text, problem in (("auth: [{username: u, allow: maybe}]\n",
                           "auth[0].allow: expected true or false, got 'maybe'"),
                          ("acl: [{filters: {'#': 7}}]\n", "acl[0].filters.#: access must be"),
                          ("auth: [{user: u}]\n", "auth[0]: unknown keys ['user']"),
                          ("auth: [\n", "not valid YAML")):
        path.write_text(text)
        logged.clear()
        assert ledger.reload() is False
        assert ledger.authenticate(_request(username="u", password=b"p")) is True
        errors = [line for line in logged if "not reloaded" in line]
        assert len(errors) == 1 and str(path) in errors[0] and problem in errors[0], errors
    path.unlink()
    assert ledger.reload() is False
    assert any("cannot read" in line for line in logged)


@pytest_twisted.inlineCallbacks
def test_reload_reads_the_file_off_the_reactor_thread(tmp_path: Path, logged: List[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> Any:
    """With ``in_thread`` (``twistd mqtt`` passes ``deferToThread``), SIGHUP's re-read of the
    ledger happens in a worker thread; the new rules are used for authentication, and logged,
    on the reactor's [MQTT-3.1.4-2]."""
    import twisted_mqtt.auth.ledger as ledger_module

    path = tmp_path / "ledger.yaml"
    path.write_text("auth: [{username: u, password: old, allow: true}]\n")
    ledger = Ledger.from_file(path, in_thread=deferToThread)
    readers = thread_names_of_calls(monkeypatch, ledger_module, "read_ledger")
    path.write_text("auth: [{username: u, password: new, allow: true}]\n")
    answer = ledger.reload()
    assert isinstance(answer, Deferred)
    assert (yield answer) is True
    assert readers and threading.main_thread().name not in readers, readers
    assert ledger.authenticate(_request(username="u", password=b"new")) is True
    path.write_text("auth: [\n")
    assert (yield ledger.reload()) is False
    assert ledger.authenticate(_request(username="u", password=b"new")) is True
    assert any("not reloaded" in line for line in logged)


def test_plaintext_passwords_are_warned_about(logged: List[str]) -> None:
    """Plaintext passwords work but are named in a warning; hashed ones are not
    [MQTT-3.1.4-2]."""
    Ledger.from_text(json.dumps({
        "users": {"alice": {"password": "plain"},
                  "bob": {"password": hash_password("x", "pbkdf2_sha256", rounds=10)}},
        "auth": [{"username": "carol", "password": "plain2", "allow": True},
                 {"username": "dave", "password": "*", "allow": True}],
    }))
    (warning,) = [line for line in logged if "plaintext" in line]
    assert "users.alice" in warning and "auth[0]" in warning
    assert "bob" not in warning and "auth[1]" not in warning


def test_acl_default_deny() -> None:
    """``acl_default: deny`` refuses what no rule decides (Mochi's default allows it)
    [MQTT-3.1.4-2]."""
    ledger = Ledger.from_text("acl_default: deny\nacl: [{username: u, filters: {'u/#': 3}}]\n")
    assert ledger.allowed(ClientInfo("c", "u"), "u/x", True)
    assert not ledger.allowed(ClientInfo("c", "u"), "other", True)
    assert not ledger.allowed(ClientInfo("c", "v"), "u/x", False)
    with pytest.raises(LedgerError, match="acl_default"):
        load_ledger("acl_default: maybe\n")


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__], every_test=True)
