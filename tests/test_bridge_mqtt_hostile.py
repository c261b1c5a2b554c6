"""The MQTT bridge against a hostile or careless remote, and its credentials: in memory, the
remote scripted byte for byte through the bridge's own client."""

from __future__ import annotations

import json
import sys
from typing import Any, List, Tuple

import pytest
from twisted.internet.testing import MemoryReactorClock

from tests.spec import check_cited_labels
from tests.test_client import Peer
from twisted_mqtt.bridges.mqtt import MqttBridge
from twisted_mqtt.bridges.mqtt_settings import Bridges, BridgeSettings, parse_rule
from twisted_mqtt.capabilities import Capabilities
from twisted_mqtt.config import Invalid
from twisted_mqtt.inline import InlineMessage
from twisted_mqtt.packets import ConnAck, Connect, Disconnect, Publish, SubAck, Subscribe
from twisted_mqtt.testing import InMemoryBroker

V5 = 5


def start_bridge(level: int = V5, capabilities: Any = None, rules: Tuple[str, ...] = (
        "# in 1 here/ there/",), **settings: Any
                 ) -> Tuple[InMemoryBroker, MqttBridge, MemoryReactorClock]:
    """A started bridge on an in-memory broker (``settings``: more ``BridgeSettings``); its
    client connects through the reactor."""
    broker = InMemoryBroker(capabilities or Capabilities(sys_interval=0))
    reactor = MemoryReactorClock()
    bridge = MqttBridge(broker.broker, BridgeSettings(
        "b", "tcp:host=127.0.0.1:port=1883", tuple(parse_rule(rule) for rule in rules),
        protocol="5" if level == V5 else "3.1.1", **settings), reactor=reactor)
    bridge.startService()
    return broker, bridge, reactor


def accepted(reactor: MemoryReactorClock, level: int = V5) -> Tuple[Peer, Connect]:
    """The scripted remote of the bridge's connection: it accepts the CONNECT and the
    subscriptions."""
    remote = Peer(reactor, level)
    connect = remote.accept()
    remote.send(*(SubAck(packet.packet_id, (1,)) for packet in remote.received()
                  if isinstance(packet, Subscribe)))
    return remote, connect


def test_password_is_never_shown_in_a_configuration_error() -> None:
    """A password the configuration cannot take (a YAML number, a list) is refused without
    showing it."""
    for password in (123456, ["hunter2"], 1.5):
        with pytest.raises(Invalid) as refused:
            Bridges()([{"name": "m", "address": "tcp:127.0.0.1:1883", "password": password,
                        "topics": ["# out 1"]}])
        shown = f"{refused.value} {refused.value.problem}"
        assert "password" in str(refused.value.path) + shown
        assert "123456" not in shown and "hunter2" not in shown and "1.5" not in shown


def test_password_is_never_logged_nor_published(logged: List[str]) -> None:
    """The password goes in CONNECT and nowhere else: not in the log lines of a connection, a
    refusal (CONNACK 0x86) or a loss, not in the bridge's status or its ``repr``."""
    broker, bridge, reactor = start_bridge(username="site1", password="pw-8d1f3")
    remote = Peer(reactor, V5)
    (connect,) = remote.received()
    assert isinstance(connect, Connect) and connect.password == b"pw-8d1f3"
    remote.send(ConnAck(reason_code=0x86))
    remote.lose()
    reactor.advance(60)
    remote, _connect = accepted(reactor)
    remote.lose()
    assert len(logged) > 3
    assert not [line for line in logged if "pw-8d1f3" in line]
    assert "pw-8d1f3" not in repr(bridge) + json.dumps(bridge.status())
    bridge.stopService()


def test_remote_is_told_the_local_maximum_packet_size() -> None:
    """The bridge takes from the remote no message larger than this broker takes from its own
    clients: its CONNECT states this broker's Maximum Packet Size, which a v5 remote must
    respect [MQTT-3.1.2-24], and a larger packet is answered with DISCONNECT 0x95."""
    _broker, bridge, reactor = start_bridge(
        capabilities=Capabilities(sys_interval=0, maximum_packet_size=4096))
    remote, connect = accepted(reactor)
    assert connect.properties.maximum_packet_size == 4096
    remote.send(Publish("there/big", b"x" * 5000))
    assert remote.received() == [Disconnect(0x95)] and remote.closed
    bridge.stopService()


def test_a_flood_from_the_remote_is_published_here_in_order() -> None:
    """A remote pouring QoS 1 messages on an ``in`` rule: each is published here and
    acknowledged in its order, in one pass over what was read; nothing is held per message."""
    broker, bridge, reactor = start_bridge()
    remote, _connect = accepted(reactor)
    got: List[InlineMessage] = []
    broker.broker.inline.subscribe("here/#", got.append)
    remote.send(*(Publish("there/t", b"%d" % n, 1, packet_id=n % 65535 + 1)
                  for n in range(5000)))
    assert [message.payload for message in got] == [b"%d" % n for n in range(5000)]
    assert len(remote.received()) == 5000
    assert bridge.counters.received == 5000
    bridge.stopService()


def test_retained_flood_at_subscribe_is_bounded_here() -> None:
    """A remote answering the bridge's SUBSCRIBE with more retained messages than this broker
    keeps: the retained store stops at its bound, the rest are still published, and the
    connection to the remote stays up."""
    broker, bridge, reactor = start_bridge(
        capabilities=Capabilities(sys_interval=0, maximum_retained_messages=100))
    remote, _connect = accepted(reactor)
    remote.send(*(Publish(f"there/r/{n}", b"v", 1, retain=True, packet_id=n + 1)
                  for n in range(300)))
    assert len(remote.received()) == 300 and not remote.closed
    assert len(broker.broker.retained) == 100 and bridge.counters.received == 300
    bridge.stopService()


def test_connack_never_sent_by_the_remote() -> None:
    """A remote that accepts the connection and never answers CONNECT is given up after the
    client's connect timeout, and tried again after the back-off; the bridge stays
    disconnected meanwhile."""
    _broker, bridge, reactor = start_bridge()
    remote = Peer(reactor, V5)
    reactor.advance(30)
    assert remote.transport.disconnected and bridge.state == "disconnected"
    remote.lose()
    reactor.advance(2)
    assert len(reactor.tcpClients) == 2
    bridge.stopService()


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
