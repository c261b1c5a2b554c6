"""The packet trace (``--trace``, ``trace:`` in the file, ``Broker.trace``): one line per packet in
and out, filtered by client id and topic, switched at run time; the connect, refusal and
disconnect log lines; and a quiet start-up.  The last tests run the real ``python -m
twisted_mqtt --trace`` with a paho client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent
from zope.interface import implementer

import tests.test_trace
from tests.conftest import StartBroker
from tests.hook_helpers import hub, join, subscribe
from tests.paho import V5, V311, MakeClient
from tests.spec import check_cited_labels
from twisted_mqtt.codec import encode
from twisted_mqtt.config import ConfigError
from twisted_mqtt.interfaces import ConnectRequest, IAuthenticator
from twisted_mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    Unsubscribe,
)
from twisted_mqtt.properties import Properties
from twisted_mqtt.tap import Options, makeService
from twisted_mqtt.trace import PacketTrace, describe, filters_overlap


def test_cited_labels() -> None:
    """Every label this module cites exists."""
    check_cited_labels(tests.test_trace)


def lines_of(events: List[dict], namespace: str) -> List[str]:
    """The lines logged in ``namespace``."""
    return [formatEvent(e) or "" for e in events if e.get("log_namespace") == namespace]


def trace_lines(events: List[dict]) -> List[str]:
    """The packet trace's lines."""
    return lines_of(events, "twisted_mqtt.trace")


# -- what a line says ---------------------------------------------------------------------------


def test_every_packet_in_and_out_is_one_line(log_events: List[dict]) -> None:
    """With the trace on, each packet a client sends (->) and each packet it is sent (<-) is
    one line naming the client, the packet type and its fields; payloads are shortened with
    their size and the password is never shown; v3 CONNACK shows its return code, v5
    reason codes their name [MQTT-3.2.2-5 (3.1.1)]."""
    broker = hub()
    broker.broker.trace()
    sub = broker.client(protocol_level=4)
    assert sub.connect("sub", keep_alive=30, username="ann", password=b"secret").reason_code == 0
    subscribe(sub, "a/#", 1)
    pub = join(broker, "pub", 5, properties=Properties(session_expiry_interval=60))
    pub.send(Publish("a/b", b"x" * 100, 1, False, False, 3), PingReq())
    pub.send(Disconnect(0))
    assert [type(p) for p in sub.received()] == [Publish]
    assert trace_lines(log_events) == [
        "sub -> CONNECT(client_id='sub', version=3.1.1, clean_start=1, keep_alive=30, "
        "username='ann', password=(hidden))",
        "sub <- CONNACK(session_present=0, return_code=0 Accepted)",
        "sub -> SUBSCRIBE(packet_id=1, subscriptions=['a/#' (qos=1)])",
        "sub <- SUBACK(packet_id=1, reasons=[0x01 Granted QoS 1])",
        "pub -> CONNECT(client_id='pub', version=5.0, clean_start=1, keep_alive=0, "
        "properties=(session_expiry_interval=60))",
        "pub <- CONNACK(session_present=0, reason=0x00 Success, properties=("
        "receive_maximum=1024, topic_alias_maximum=64, retain_available=1, "
        "maximum_packet_size=1048576, wildcard_subscription_available=1, "
        "subscription_identifier_available=1, shared_subscription_available=1))",
        "pub -> PUBLISH(topic='a/b', qos=1, retain=0, packet_id=3, "
        "payload=b'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… (100 bytes))",
        "sub <- PUBLISH(topic='a/b', qos=1, retain=0, packet_id=1, "
        "payload=b'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… (100 bytes))",
        "pub <- PUBACK(packet_id=3)",
        "pub -> PINGREQ",
        "pub <- PINGRESP",
        "pub -> DISCONNECT(reason=0x00 Normal disconnection)",
    ]


def test_describe_fields() -> None:
    """Each packet type names its fields: subscription options, v5 reason codes with their
    names, a v3 SUBACK failure as Failure [MQTT-3.9.3-2 (3.1.1)], binary properties
    shortened."""
    assert describe(Subscribe(2, (Subscription("a/+", 2, True, True, 1),))) == (
        "SUBSCRIBE(packet_id=2, subscriptions=['a/+' (qos=2, no_local=1, "
        "retain_as_published=1, retain_handling=1)])")
    assert describe(SubAck(2, (0, 0x80)), 4) == (
        "SUBACK(packet_id=2, reasons=[0x00 Granted QoS 0, 0x80 Failure])")
    assert describe(SubAck(2, (0xA2,)), 5) == (
        "SUBACK(packet_id=2, reasons=[0xA2 Wildcard subscriptions not supported])")
    assert describe(Unsubscribe(4, ("a", "b/#"))) == (
        "UNSUBSCRIBE(packet_id=4, filters=['a', 'b/#'])")
    assert describe(PubAck(9, 0x10)) == "PUBACK(packet_id=9, reason=0x10 No matching subscribers)"
    assert describe(ConnAck(0x86), 5) == (
        "CONNACK(session_present=0, reason=0x86 Bad user name or password)")
    assert describe(Disconnect(0x8E), 5) == "DISCONNECT(reason=0x8E Session taken over)"
    assert describe(Disconnect(), 4) == "DISCONNECT"
    assert describe(Publish("t", b"", 0, True, True, None,
                            Properties(correlation_data=b"c" * 40, content_type="text"))) == (
        "PUBLISH(topic='t', qos=0, retain=1, dup=1, payload=b'' (0 bytes), properties=("
        "content_type='text', correlation_data=b'cccccccccccccccccccccccccccccccc'… (40 bytes)))")


# -- filters ------------------------------------------------------------------------------------


def test_filters_by_client_and_topic(log_events: List[dict]) -> None:
    """Client patterns (globs) and topic filters limit the trace: PUBLISH by its topic,
    SUBSCRIBE and UNSUBSCRIBE by a filter overlapping one; with topic filters, packets that
    carry no topic are left out."""
    broker = hub()
    trace = broker.broker.trace(True, ["sensor-*"], ["alarms/#"])
    assert isinstance(trace, PacketTrace)
    watcher = join(broker, "watcher", 5)
    sensor = join(broker, "sensor-1", 5)
    subscribe(watcher, "#", 0)
    subscribe(sensor, "+/kitchen", 0, packet_id=2)
    subscribe(sensor, "status/#", 0, packet_id=3)
    sensor.send(Publish("alarms/kitchen", b"smoke"), Publish("status/kitchen", b"ok"))
    watcher.send(Publish("alarms/hall", b"smoke"))
    assert trace_lines(log_events) == [
        "sensor-1 -> SUBSCRIBE(packet_id=2, subscriptions=['+/kitchen' (qos=0)])",
        "sensor-1 -> PUBLISH(topic='alarms/kitchen', qos=0, retain=0, payload=b'smoke' "
        "(5 bytes))",
        "sensor-1 <- PUBLISH(topic='alarms/kitchen', qos=0, retain=0, payload=b'smoke' "
        "(5 bytes))",
    ]
    del log_events[:]
    broker.broker.trace(True, ["watch?r"])  # changes the filters of the trace in force
    assert [hook for hook in broker.broker.hooks if isinstance(hook, PacketTrace)] == [trace]
    sensor.send(Publish("alarms/kitchen", b"fire"))
    assert trace_lines(log_events) == [
        "watcher <- PUBLISH(topic='alarms/kitchen', qos=0, retain=0, payload=b'fire' (4 bytes))"]
    with pytest.raises(ValueError):
        broker.broker.trace(True, [], ["a/#/b"])


@pytest.mark.parametrize("first, second, overlap", [
    ("a/#", "a", True), ("a/+", "+/b", True), ("#", "x/y", True), ("a/b", "a/b", True),
    ("a/#", "b", False), ("a/+", "a/b/c", False), ("a/b", "a/c", False),
    ("$share/g/a/+", "a/b", True),
])
def test_filters_overlap(first: str, second: str, overlap: bool) -> None:
    """Two filters overlap when some topic matches both."""
    assert filters_overlap(first, second) is overlap
    assert filters_overlap(second, first) is overlap


# -- switched at run time -----------------------------------------------------------------------


def test_switched_on_and_off_for_open_connections(log_events: List[dict]) -> None:
    """Turning the trace on takes the connections already open off their fast paths, so their
    packets are traced; turning it off puts them back on the fast paths, with no packet hook
    left to call."""
    broker = hub()
    sub = join(broker, "sub", 5)
    subscribe(sub, "t", 0)
    pub = join(broker, "pub", 5)
    assert pub.connection._observed is False
    broker.broker.trace()
    assert pub.connection._observed is True and sub.connection._observed is True
    assert pub.connection.decoder.raw_publish is False
    pub.send(Publish("t", b"1"), Publish("t", b"2"))
    assert [p.payload for p in sub.received()] == [b"1", b"2"]
    assert len(trace_lines(log_events)) == 4
    del log_events[:]
    broker.broker.trace(False)
    assert lines_of(log_events, "twisted_mqtt.broker") == ["packet trace off"]
    hooks = broker.broker.hooks
    assert not hooks.packets and hooks.on_packet_read == () and hooks.on_packet_sent == ()
    assert pub.connection._observed is False and pub.connection.decoder.raw_publish is True
    pub.send(Publish("t", b"3"), Publish("t", b"4"))
    assert [p.payload for p in sub.received()] == [b"3", b"4"]
    assert trace_lines(log_events) == []


@implementer(IAuthenticator)
class Later:
    """An authenticator answering with a Deferred the test fires."""

    def __init__(self) -> None:
        self.answers: List[Deferred[Any]] = []

    def authenticate(self, request: ConnectRequest) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.answers.append(answer)
        return answer


def test_switched_on_while_packets_wait(log_events: List[dict]) -> None:
    """Packets decoded for the fast paths and held while authentication is pending are
    handled, and traced, when the trace was turned on in between."""
    later = Later()
    broker = hub()
    broker.broker.authenticator = later
    sub = broker.client(5)
    sub.send(Connect("sub", 5))
    later.answers[0].callback(True)
    assert [type(p) for p in sub.received()] == [ConnAck]
    subscribe(sub, "t", 1)
    pub = broker.client(5)
    pub.send_bytes(b"".join(encode(p, 5) for p in (
        Connect("pub", 5), Publish("t", b"1"), Publish("t", b"2"),
        Publish("t", b"3", 1, packet_id=7), PubAck(1))))
    broker.broker.trace(True, ["pub"])
    later.answers[1].callback(True)
    assert [(p.payload, p.qos) for p in sub.received()] == [(b"1", 0), (b"2", 0), (b"3", 1)]
    assert [type(p) for p in pub.received()] == [ConnAck, PubAck]
    assert [line.split("(")[0] for line in trace_lines(log_events)] == [
        "pub <- CONNACK", "pub -> PUBLISH", "pub -> PUBLISH", "pub -> PUBLISH", "pub <- PUBACK",
        "pub -> PUBACK"]
    assert not pub.closed


# -- the connection's own log lines -------------------------------------------------------------


def test_connect_refusal_and_disconnect_lines(log_events: List[dict]) -> None:
    """The connected line names the user name, protocol version, keep alive (and what the
    client asked, if the server changed it) and clean start; a refusal gives the reason
    code's name and, for MQTT 3, the return code sent [MQTT-3.2.2-6]; a DISCONNECT's reason
    is named too [MQTT-3.14.0-1]."""
    broker = hub(maximum_keep_alive=60)
    client = broker.client(5)
    client.connect("c1", keep_alive=600, username="ann")
    client.send(Disconnect(0x04))
    v3 = broker.client(4)
    v3.send(Connect("", 4, clean_start=False))
    taken = join(broker, "c2", 4)
    join(broker, "c2", 5)
    assert taken.closed
    assert lines_of(log_events, "twisted_mqtt.connection") == [
        "<Connection c1 from 127.0.0.1>: connected (user 'ann', MQTT 5.0, keep alive 60 "
        "(asked 600), clean start True, session present False)",
        "<Connection c1 from 127.0.0.1>: disconnected, reason 0x04 Disconnect with will message",
        "127.0.0.1: connection refused, reason 0x85 Client identifier not valid "
        "(return code 2)",
        "<Connection c2 from 127.0.0.1>: connected (no user name, MQTT 3.1.1, keep alive 0, "
        "clean start True, session present False)",
        "<Connection c2 from 127.0.0.1>: disconnected by the broker, reason 0x8E Session "
        "taken over",
        "<Connection c2 from 127.0.0.1>: connected (no user name, MQTT 5.0, keep alive 60 "
        "(asked 0), clean start True, session present False)",
    ]


# -- options, the file, SIGHUP ------------------------------------------------------------------


def _service(*argv: str) -> Any:
    options = Options()
    options.parseOptions(list(argv))
    return makeService(options, MemoryReactorClock())


def _trace_of(service: Any) -> Any:
    return next((h for h in service.broker.hooks if isinstance(h, PacketTrace)), None)


def test_options_and_file_switch_it(tmp_path: Path) -> None:
    """``--trace`` with ``--trace-client``/``--trace-topic`` (repeatable) installs the trace;
    ``trace:`` in the file does too; SIGHUP applies the file's changes; an option given on the
    command line wins; a bad topic filter is a configuration error."""
    assert _trace_of(_service()) is None
    trace = _trace_of(_service("--trace", "--trace-client", "a*", "--trace-client", "b",
                               "--trace-topic", "x/#"))
    assert (trace.clients, trace.topics) == (("a*", "b"), ("x/#",))
    with pytest.raises(ConfigError, match="--trace-topic: bad topic filter 'x/#/y'"):
        _service("--trace", "--trace-topic", "x/#/y")
    path = tmp_path / "broker.yaml"
    path.write_text("trace:\n  enabled: true\n  clients: [s-*]\n")
    service = _service("--config", str(path))
    assert _trace_of(service).clients == ("s-*",)
    path.write_text("trace:\n  enabled: true\n  topics: [alarms/#]\n")
    service.reload()
    assert (_trace_of(service).clients, _trace_of(service).topics) == ((), ("alarms/#",))
    path.write_text("trace:\n  enabled: false\n")
    service.reload()
    assert _trace_of(service) is None and not service.broker.hooks.packets
    pinned = _service("--config", str(path), "--trace-client", "only")
    assert _trace_of(pinned) is None
    path.write_text("trace:\n  enabled: true\n  clients: [other]\n")
    pinned.reload()
    assert _trace_of(pinned).clients == ("only",)


# -- the real process ---------------------------------------------------------------------------


def test_real_broker_traces_a_paho_client(start_broker: StartBroker,
                                          clients: MakeClient) -> None:
    """``python -m twisted_mqtt --trace --trace-client 'paho-*'`` logs the exact lines of a
    paho client's session, and nothing of another client; start-up logs no "Starting
    factory" line."""
    broker = start_broker("--trace", "--trace-client", "paho-*", module=True)
    other = clients(broker.port, V311, "quiet").connect(keepalive=20)
    client = clients(broker.port, V5, "paho-1").connect(keepalive=20)
    assert client.subscribe("demo/#", 1) == [1]
    client.publish("demo/x", b"hello", qos=1)
    assert client.expect(1)[0].payload == b"hello"
    broker.wait_for_log(r"paho-1 -> PUBACK\(packet_id=1\)")  # paho may answer after the next
    other.publish("demo/y", b"q", qos=0)
    client.expect(1)
    client.disconnect()
    broker.wait_for_log(r"paho-1 -> DISCONNECT")
    text = broker.stop()
    traced = [line.split("[twisted_mqtt.trace#info] ", 1)[1] for line in text.splitlines()
              if "[twisted_mqtt.trace#info] " in line]
    assert traced == [
        "paho-1 -> CONNECT(client_id='paho-1', version=5.0, clean_start=1, keep_alive=20)",
        "paho-1 <- CONNACK(session_present=0, reason=0x00 Success, properties=("
        "receive_maximum=1024, topic_alias_maximum=64, retain_available=1, "
        "maximum_packet_size=1048576, wildcard_subscription_available=1, "
        "subscription_identifier_available=1, shared_subscription_available=1))",
        "paho-1 -> SUBSCRIBE(packet_id=1, subscriptions=['demo/#' (qos=1)])",
        "paho-1 <- SUBACK(packet_id=1, reasons=[0x01 Granted QoS 1])",
        "paho-1 -> PUBLISH(topic='demo/x', qos=1, retain=0, packet_id=2, payload=b'hello' "
        "(5 bytes))",
        "paho-1 <- PUBLISH(topic='demo/x', qos=1, retain=0, packet_id=1, payload=b'hello' "
        "(5 bytes))",
        "paho-1 <- PUBACK(packet_id=2)",
        "paho-1 -> PUBACK(packet_id=1)",
        "paho-1 <- PUBLISH(topic='demo/y', qos=0, retain=0, payload=b'q' (1 byte))",
        "paho-1 -> DISCONNECT(reason=0x00 Normal disconnection)",
    ]
    assert "Starting factory" not in text
    assert "packet trace on: paho-*" in text
