"""Bans and kicks: a banned client is refused at CONNECT with 0x8A Banned (v3: return code 5);
``Broker.kick`` and a new ban disconnect with 0x98 Administrative action; bans expire on the
broker's clock and survive a restart with a store.

A refusing CONNACK has Session Present 0 [MQTT-3.2.2-6] and is followed by the close of the
connection [MQTT-3.2.2-7] (MQTT 3.1.1: [MQTT-3.2.2-4 (3.1.1)], [MQTT-3.2.2-5 (3.1.1)])."""

from __future__ import annotations

import sys
from typing import Any, List

import pytest
from twisted.internet.defer import Deferred

from tests.spec import check_cited_labels
from tests.test_broker_sessions import Answer
from tests.test_storage_recorder import start, turn
from twisted_mqtt.bans import Ban, BanError, Bans
from twisted_mqtt.capabilities import Capabilities
from twisted_mqtt.packets import ConnAck, Connect, Disconnect, ReasonCode
from twisted_mqtt.storage.memory import MemoryStore
from twisted_mqtt.testing import InMemoryBroker

V5 = 5
V311 = 4


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__])


def test_banned_client_id_v5(logged: List[str]) -> None:
    """A v5 client whose client id is banned gets CONNACK 0x8A with Session Present 0
    [MQTT-3.2.2-6] and the connection is closed [MQTT-3.2.2-7]; one log line says why."""
    hub = InMemoryBroker()
    hub.broker.ban("client_id", "spammer", reason="flood", by="admin")
    client = hub.client(V5)
    ack = client.connect("spammer", clean_start=False)
    assert ack == ConnAck(ReasonCode.BANNED, False)
    assert client.closed
    refusals = [line for line in logged if "connection refused" in line]
    assert len(refusals) == 1 and "0x8A Banned" in refusals[0] and "spammer" in refusals[0]
    assert hub.client(V5).connect("other").reason_code == 0


def test_banned_user_name_v311() -> None:
    """An MQTT 3.1.1 client whose user name is banned gets return code 5 (not authorized)
    with Session Present 0 [MQTT-3.2.2-4 (3.1.1)] and is closed [MQTT-3.2.2-5 (3.1.1)]."""
    hub = InMemoryBroker()
    hub.broker.ban("username", "mallory")
    client = hub.client(V311)
    assert client.connect("c1", username="mallory") == ConnAck(5, False)
    assert client.closed
    assert hub.client(V311).connect("c1", username="alice").reason_code == 0


@pytest.mark.parametrize("ban, address, banned", [
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/8", "11.1.2.3", False),
    ("10.1.2.3", "10.1.2.3", True),
    ("10.0.0.0/8", "::ffff:10.9.9.9", True),
    ("2001:db8::/32", "2001:db8::1", True),
    ("2001:db8::/32", "10.1.2.3", False),
])
def test_banned_address(ban: str, address: str, banned: bool) -> None:
    """An address ban is an address or a CIDR network (an IPv4-mapped IPv6 peer is its IPv4
    address): a client from it is refused with 0x8A [MQTT-3.2.2-7]."""
    hub = InMemoryBroker()
    hub.broker.ban("address", ban)
    ack = hub.client(V5, address=address).connect("c")
    assert ack.reason_code == (ReasonCode.BANNED if banned else 0)


def test_ban_expires_on_the_broker_clock() -> None:
    """A ban with a duration ends then: the client is accepted again, and the ban is no longer
    listed [MQTT-3.2.2-7]."""
    hub = InMemoryBroker()
    hub.broker.ban("client_id", "c", duration=60)
    assert hub.client(V5).connect("c").reason_code == ReasonCode.BANNED
    hub.advance(61)
    assert hub.client(V5).connect("c").reason_code == 0
    assert hub.broker.list_bans() == []


def test_unban() -> None:
    """A lifted ban lets the client in; lifting an unknown ban answers False."""
    hub = InMemoryBroker()
    hub.broker.ban("address", "192.168.0.0/16")
    assert hub.broker.unban("address", "192.168.1.1/16")  # the same network, normalised
    assert not hub.broker.unban("address", "192.168.0.0/16")
    assert not hub.broker.unban("address", "not an address")
    assert hub.client(V5, address="192.168.3.4").connect("c").reason_code == 0


def test_ban_disconnects_connected_clients() -> None:
    """Banning a connected client disconnects it: v5 with DISCONNECT 0x98 Administrative
    action, a valid DISCONNECT reason code [MQTT-3.14.2-1] sent after its CONNACK
    [MQTT-3.14.0-1]; a v3 client is closed without a DISCONNECT; others stay."""
    hub = InMemoryBroker()
    v5, v3, other = hub.client(V5), hub.client(V311), hub.client(V5)
    v5.connect("a", username="bob")
    v3.connect("b", username="bob")
    other.connect("c", username="carol")
    hub.broker.ban("username", "bob")
    assert [type(p) for p in v5.received()] == [Disconnect]
    assert v5.closed and v3.closed and not other.closed
    assert v3.received() == []


def test_kick() -> None:
    """``kick`` sends a v5 client DISCONNECT 0x98 [MQTT-3.14.2-1] and keeps its session as its
    expiry says; an unknown or offline client id answers False."""
    hub = InMemoryBroker()
    client = hub.client(V5)
    client.connect("k", clean_start=False)
    assert hub.broker.kick("k", by="admin")
    packets = client.received()
    assert len(packets) == 1 and packets[0].reason_code == ReasonCode.ADMINISTRATIVE_ACTION
    assert client.closed
    assert not hub.broker.kick("k")
    assert not hub.broker.kick("nobody")
    assert hub.client(V5).connect("k").reason_code == 0


@pytest.mark.parametrize("kind, value, duration, field", [
    ("ip", "x", None, "kind"),
    ("client_id", "", None, "value"),
    ("address", "300.1.1.1", None, "value"),
    ("address", "10.0.0.0/33", None, "value"),
    ("username", "u", 0, "duration"),
    ("username", "u", -5, "duration"),
])
def test_bad_ban(kind: str, value: str, duration: Any, field: str) -> None:
    """A bad ban raises ``BanError`` naming the field, and nothing is banned
    [MQTT-3.2.2-7]."""
    hub = InMemoryBroker()
    with pytest.raises(BanError) as raised:
        hub.broker.ban(kind, value, duration)
    assert raised.value.field == field
    assert len(hub.broker.bans) == 0


def test_maximum_bans() -> None:
    """``maximum_bans`` bounds the bans in force; banning the same value again replaces it,
    and an expired ban makes room [MQTT-3.2.2-7]."""
    hub = InMemoryBroker(Capabilities(sys_interval=0, maximum_bans=2))
    hub.broker.ban("client_id", "a", duration=10)
    hub.broker.ban("client_id", "b")
    hub.broker.ban("client_id", "b", reason="again")
    with pytest.raises(BanError, match="maximum_bans"):
        hub.broker.ban("client_id", "c")
    hub.advance(11)
    hub.broker.ban("client_id", "c")
    assert [b.value for b in hub.broker.list_bans()] == ["b", "c"]


def test_ban_record_round_trip() -> None:
    """A ban's stored form gives the same ban back; bad stored fields are named."""
    ban = Ban("address", "10.0.0.0/8", 5.0, "why", "admin", 1.0)
    assert Ban.from_dict(ban.as_dict()) == ban
    with pytest.raises(BanError) as raised:
        Ban.from_dict({**ban.as_dict(), "expires_at": "soon"})
    assert raised.value.field == "expires_at"


def test_bans_observers() -> None:
    """Observers hear of each add, removal and expiry."""
    bans = Bans()
    calls: List[int] = []
    bans.changed.append(lambda: calls.append(len(bans)))
    bans.add("client_id", "a", expires_at=5.0, now=0.0)
    bans.add("username", "u", now=0.0)
    bans.remove("username", "u")
    assert bans.match("a", None, None, 6.0) is None
    bans.purge(6.0)
    assert calls == [1, 2, 1, 0]


def test_bans_survive_a_restart() -> None:
    """Bans are written to the store and restored by the next broker, expired ones left out:
    the banned client is refused after the restart [MQTT-3.2.2-7]."""
    store = MemoryStore()
    hub, recorder = start(store, at=1000.0)
    hub.broker.ban("client_id", "forever", by="admin")
    hub.broker.ban("address", "10.0.0.0/8", duration=30)
    turn(hub)
    assert {b.value for b in store.bans} == {"forever", "10.0.0.0/8"}
    recorder.close()
    hub, recorder = start(store, at=1010.0)
    assert hub.client(V5).connect("forever").reason_code == ReasonCode.BANNED
    assert hub.client(V5, address="10.0.0.1").connect("x").reason_code == ReasonCode.BANNED
    assert hub.broker.unban("client_id", "forever")
    turn(hub)
    assert [b.value for b in store.bans] == ["10.0.0.0/8"]
    recorder.close()
    hub, _ = start(store, at=1100.0)
    assert len(hub.broker.bans) == 0


def test_ban_while_authenticating() -> None:
    """A client banned while its authentication is pending is refused with 0x8A once the
    authenticator answers [MQTT-3.2.2-7]."""
    pending: Deferred[Any] = Deferred()
    hub = InMemoryBroker(authenticator=Answer(pending))
    client = hub.client(V5)
    client.send(Connect("slow", V5, True, 0))
    assert client.received() == []
    hub.broker.ban("client_id", "slow")
    pending.callback(True)
    assert client.received() == [ConnAck(ReasonCode.BANNED, False)]
    assert client.closed
