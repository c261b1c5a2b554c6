"""The Kafka bridge against hostile peers: a Kafka producer whose records' keys and headers
make the MQTT topics of ingress, an MQTT client whose topics and user properties make the
records of egress, and settings or reprs that would leak a secret.  Records are real
confluent-kafka ``Message`` objects; the broker is in memory on a ``task.Clock``."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import pytest
from twisted.internet.defer import Deferred, maybeDeferred

from tests.hook_helpers import Rules, hub, join, publishes, watch
from tests.spec import check_cited_labels
from tests.test_bridge_kafka import NO_CLIENT, unreachable  # noqa: F401
from twisted_mqtt.bridges.kafka import KafkaBridge, bridge_settings, egress_record
from twisted_mqtt.config import ConfigError, load_config, options_in_force
from twisted_mqtt.interfaces import ClientInfo
from twisted_mqtt.packets import Disconnect, Publish, ReasonCode
from twisted_mqtt.properties import Properties
from twisted_mqtt.session import Message
from twisted_mqtt.tap import Options
from twisted_mqtt.testing import InMemoryBroker
from twisted_mqtt.web.views import config_view

CPYTHON = platform.python_implementation() == "CPython"

Headers = Optional[Sequence[Tuple[str, bytes]]]


class Records:
    """A Kafka consumer that hands out given records (its partitions never found: the bridge
    is fed by ``consume`` alone)."""

    def __init__(self) -> None:
        self.waiting: List[Any] = []

    def consume(self, count: int, timeout: float) -> List[Any]:
        """Up to ``count`` of the records given."""
        out, self.waiting = self.waiting[:count], self.waiting[count:]
        return out

    def list_topics(self, topic: str, timeout: float) -> Any:
        """Never found."""
        raise LookupError(topic)

    def close(self) -> None:
        """Nothing to close."""


def ingress(template: str, retain: bool = False, hooks: Sequence[Any] = (),
            username: Optional[str] = None,
            **caps: Any) -> Tuple[KafkaBridge, Records, InMemoryBroker]:
    """An ingress bridge reading Kafka topic ``cmd`` into ``template`` (asking the ACL as
    ``username``), the consumer to feed it, and its in-memory broker with ``hooks``."""
    if not CPYTHON:
        pytest.skip(NO_CLIENT)
    broker = hub(*hooks, **caps)
    settings = bridge_settings({"name": "k", "servers": ["127.0.0.1:1"], "ingress": [
        {"topics": ["cmd"], "mqtt_topic": template, "retain": retain}],
        "ingress_username": username})
    bridge = KafkaBridge(broker.broker, settings, broker.clock, in_thread=maybeDeferred)
    consumer = Records()
    bridge.attach(None, consumer)
    return bridge, consumer, broker


def record(key: Optional[bytes], value: bytes = b"v", headers: Headers = None,
           offset: int = 0) -> Any:
    """A Kafka record of topic ``cmd``."""
    import confluent_kafka

    return confluent_kafka.Message(topic="cmd", partition=0, offset=offset, key=key, value=value,
                                   headers=list(headers) if headers else None, error=None)


# -- ingress: a hostile Kafka producer ------------------------------------------------------------

HOSTILE_KEYS = [
    (b"a+b", "wildcard"), (b"a/#", "wildcard"), (b"a\x00b", "U+0000"), (b"\xff\xfe", "utf-8"),
    (b"$SYS/broker/clients/connected", "starts with $"), (b"$share/g/x", "starts with $"),
    (b"x" * 70_000, "1 to 65535 bytes"), (b"/".join([b"l"] * 200), "levels"),
]


@pytest.mark.parametrize("key, problem", HOSTILE_KEYS, ids=[p for _, p in HOSTILE_KEYS])
def test_ingress_hostile_key_makes_no_topic(key: bytes, problem: str,
                                            logged: List[str]) -> None:
    """A record whose key would make a topic with a wildcard [MQTT-3.3.2-2], U+0000
    [MQTT-1.5.4-2], bytes that are not UTF-8 [MQTT-1.5.4-1], a topic starting with ``$`` (the
    broker's own ``$SYS`` topics, from a template that does not start with ``$``), more bytes
    than a topic holds or more levels than the broker's ``maximum_topic_levels`` is not
    published: it is counted, logged once (cut short), and the next good record goes
    through."""
    bridge, consumer, broker = ingress("{key}", maximum_topic_levels=100)
    watcher = watch(broker, "#")
    sys_watcher = watch(broker, "$SYS/#", client_id="sys")
    consumer.waiting = [record(key), record(key, offset=1), record(b"ok/1", offset=2)]
    bridge.poll()
    assert [p.topic for p in publishes(watcher)] == ["ok/1"]
    assert publishes(sys_watcher) == []
    assert (bridge.invalid, bridge.consumed) == (2, 1)
    lines = [line for line in logged if "not published" in line]
    assert len(lines) == 1 and problem in lines[0] and len(lines[0]) < 400, lines


def test_ingress_template_starting_with_dollar_is_the_operators() -> None:
    """A template that starts with ``$`` itself publishes there (the operator chose it)."""
    bridge, consumer, broker = ingress("$kafka/{key}")
    watcher = watch(broker, "$kafka/#")
    consumer.waiting = [record(b"a")]
    bridge.poll()
    assert [p.topic for p in publishes(watcher)] == ["$kafka/a"]


def test_ingress_header_cannot_make_a_dollar_topic() -> None:
    """A header field at the start of the template is held to the same rule as the key."""
    bridge, consumer, broker = ingress("{header:room}/lamp")
    watcher = watch(broker, "$SYS/#")
    consumer.waiting = [record(None, headers=[("room", b"$SYS")])]
    bridge.poll()
    assert publishes(watcher) == [] and bridge.invalid == 1


def test_ingress_other_headers_may_be_any_bytes() -> None:
    """Only the headers the template uses must be UTF-8: a record with binary headers of
    other names (tracing ids...) is published."""
    bridge, consumer, broker = ingress("in/{header:room}")
    watcher = watch(broker, "in/#")
    consumer.waiting = [record(None, headers=[("trace", b"\xff\x00"), ("room", b"hall"),
                                              ("room", b"\xff")])]
    bridge.poll()
    assert [p.topic for p in publishes(watcher)] == ["in/hall"] and bridge.invalid == 0


def test_ingress_asks_the_acl_as_its_user(logged: List[str]) -> None:
    """With ``ingress_username``, each record's topic is asked of the ACL as that user (client
    id ``$kafka-bridge/NAME``): a record the ACL refuses is not published, counted, logged;
    without it the ACL is not asked."""
    rules = Rules(publish=lambda client, topic: topic.startswith("in/ok"))
    bridge, consumer, broker = ingress("in/{key}", hooks=[rules], username="kafka")
    assert bridge.inline.info.username == "kafka"
    watcher = watch(broker, "in/#")
    consumer.waiting = [record(b"ok1"), record(b"secret", offset=1), record(b"ok2", offset=2)]
    bridge.poll()
    assert [p.topic for p in publishes(watcher)] == ["in/ok1", "in/ok2"]
    assert ("publish", "$kafka-bridge/k", "in/secret") in rules.asked
    assert (bridge.invalid, bridge.consumed) == (1, 2)
    assert any("the ACL does not let 'kafka' publish to 'in/secret'" in line for line in logged)
    unasked = Rules(publish=lambda client, topic: False)
    bridge, consumer, broker = ingress("in/{key}", hooks=[unasked])
    consumer.waiting = [record(b"a")]
    bridge.poll()
    assert bridge.consumed == 1 and not [a for a in unasked.asked if a[0] == "publish"]


def test_ingress_waits_for_an_acl_that_answers_later() -> None:
    """An ACL answering later (a Redis or SQL backend) holds the reading: records are
    published in their order once answered, and nothing more is read meanwhile."""
    answers: List[Deferred[bool]] = []

    def later(client: str, topic: str) -> Deferred[bool]:
        answers.append(Deferred())
        return answers[-1]

    bridge, consumer, broker = ingress("in/{key}", hooks=[Rules(publish=later)],
                                       username="kafka")
    watcher = watch(broker, "in/#")
    consumer.waiting = [record(b"%d" % n, offset=n) for n in range(3)]
    bridge.poll()
    consumer.waiting = [record(b"late", offset=3)]
    bridge.poll()
    assert len(answers) == 1 and len(consumer.waiting) == 1
    answers[0].callback(True)
    bridge.poll()
    answers[1].callback(False)
    bridge.poll()
    answers[2].errback(RuntimeError("backend down"))  # refuses
    bridge.poll()
    answers[3].callback(True)
    assert [p.topic for p in publishes(watcher)] == ["in/0", "in/late"]
    assert (bridge.invalid, bridge.consumed) == (2, 2)


def test_ingress_record_larger_than_the_maximum_packet_size(logged: List[str]) -> None:
    """A record whose PUBLISH would exceed the broker's maximum packet size (which no client
    could have published here) is not published; counted and logged."""
    bridge, consumer, broker = ingress("in/{key}", maximum_packet_size=1000)
    watcher = watch(broker, "#")
    consumer.waiting = [record(b"a", b"x" * 1000), record(b"b", b"x" * 900, offset=1)]
    bridge.poll()
    assert [p.topic for p in publishes(watcher)] == ["in/b"]
    assert bridge.invalid == 1
    assert any("maximum packet size (1000 bytes)" in line for line in logged), logged


def test_ingress_retained_flood_stops_at_the_retained_bound() -> None:
    """Records of distinct keys published retained do not grow the retained store past the
    broker's ``maximum_retained_messages``."""
    bridge, consumer, broker = ingress("in/{key}", retain=True, maximum_retained_messages=10)
    consumer.waiting = [record(b"%d" % n, offset=n) for n in range(50)]
    bridge.poll()
    assert len(broker.broker.retained) == 10


def test_ingress_reads_a_bounded_number_of_records_per_poll() -> None:
    """A burst of records is published over several polls (at most 1000 each), so one reactor
    turn does bounded work."""
    bridge, consumer, broker = ingress("in/{key}")
    consumer.waiting = [record(b"k", offset=n) for n in range(2500)]
    bridge.poll()
    assert (bridge.consumed, len(consumer.waiting)) == (1000, 1500)


def test_ingress_burst_to_a_slow_subscriber_is_bounded() -> None:
    """A burst of records for a subscriber that does not read holds at most the broker's
    ``maximum_pending_bytes`` (plus one message) for it, its QoS 0 messages past that are
    dropped and counted, and another subscriber gets every record: ingress is not paused for
    one slow client (which would stall everyone else's feed)."""
    bridge, consumer, broker = ingress("in/{key}", maximum_pending_bytes=100_000)
    slow = watch(broker, "in/#", qos=0, client_id="slow")
    fast = watch(broker, "in/#", qos=0, client_id="fast")
    slow.connection.pause()
    consumer.waiting = [record(b"k", b"x" * 1000, offset=n) for n in range(3000)]
    got = 0
    for _ in range(3):
        bridge.poll()
        got += len(publishes(fast))
        assert slow.connection._queued <= 100_000 + 1100
    assert (got, bridge.consumed) == (3000, 3000)
    assert broker.broker.stats.dropped >= 2800


# -- egress: a hostile MQTT client ----------------------------------------------------------------


def test_egress_user_properties_count_in_the_buffer(unreachable: Any) -> None:  # noqa: F811
    """The buffer counts a record's headers (its publisher's user properties), so that large
    user properties, or many empty ones, cannot hold more memory than
    ``max_buffered_bytes``."""
    bridge = unreachable(ack="none", max_buffered_bytes=100_000)
    pub = join(bridge.hub, "pub")
    big = Properties(user_properties=(("n", "x" * 60_000),))
    pub.send(Publish("held/1", b"", 0, properties=big), Publish("held/2", b"", 0, properties=big))
    assert bridge.buffer.messages == 1 and bridge.buffer.bytes > 60_000
    assert bridge.buffer.dropped == 1
    many = Properties(user_properties=(("", ""),) * 2000)  # 5 bytes each on the wire
    other = unreachable(ack="none", max_buffered_bytes=200_000)
    pub = join(other.hub, "pub")
    pub.send(Publish("held/1", b"", 0, properties=many), Publish("held/2", b"", 0,
                                                                   properties=many))
    assert other.buffer.messages == 1 and other.buffer.bytes >= 2000 * 64


def test_egress_topic_not_a_kafka_name_is_not_acknowledged(unreachable: Any,  # noqa: F811
                                                           logged: List[str]) -> None:
    """With ``ack: kafka`` a QoS 1 message whose Kafka topic would not be valid (here more
    than 249 characters) is not produced, and its publisher is not acknowledged as if it were:
    it is disconnected with 0x90 Topic Name invalid; counted, logged once."""
    bridge = unreachable(egress=[{"filters": ["held/#"], "topic": "{topic}"}])
    pub = join(bridge.hub, "pub")
    pub.send(Publish("held/" + "x" * 250, b"x", 1, packet_id=1))
    packets = pub.received()
    assert packets == [Disconnect(ReasonCode.TOPIC_NAME_INVALID, packets[0].properties)]
    assert bridge.invalid == 1 and bridge.buffer.messages == 0
    assert len([line for line in logged if line.startswith("Kafka bridge k: topic")]) == 1


def test_egress_client_named_like_the_bridge_is_produced(unreachable: Any) -> None:  # noqa: F811
    """A network client taking the client id of the bridge's ingress (``$kafka-bridge/k``)
    is not mistaken for it: with ``ack: kafka`` its message is produced and held, not
    acknowledged without being in Kafka."""
    bridge = unreachable()
    pub = join(bridge.hub, "$kafka-bridge/k")
    pub.send(Publish("held/1", b"x", 1, packet_id=1))
    assert pub.received() == [] and bridge.buffer.messages == 1


def test_egress_kafka_topics_are_bounded(unreachable: Any) -> None:  # noqa: F811
    """A client publishing to ever new MQTT topics under a ``{topic}`` template cannot make
    the bridge produce to (and Kafka create) topics without end: past ``max_kafka_topics``
    a message for a new Kafka topic is not produced, counted; with ``ack: kafka`` its
    publisher is disconnected (0x97 Quota exceeded), never acknowledged."""
    bridge = unreachable(ack="none", max_kafka_topics=3)
    pub = join(bridge.hub, "pub")
    pub.send(*[Publish(f"held/{n}", b"x", 0) for n in range(10)], Publish("held/0", b"x", 0))
    assert (bridge.buffer.messages, bridge.invalid) == (4, 7)
    held = unreachable(max_kafka_topics=1)
    pub = join(held.hub, "pub")
    pub.send(Publish("held/a", b"x", 1, packet_id=1), Publish("held/b", b"x", 1, packet_id=2))
    packets = pub.received()
    assert packets == [Disconnect(ReasonCode.QUOTA_EXCEEDED, packets[0].properties)]


def test_egress_never_produces_to_kafka_internal_topics() -> None:
    """A topic template cannot reach Kafka's internal topics (``__consumer_offsets``...) from
    an MQTT topic or client id; a fixed internal topic is refused in the settings."""
    settings = bridge_settings({"name": "k", "servers": ["h:1"],
                                "egress": [{"filters": ["#"], "topic": "{clientid}"}]})
    message = Message("t", b"x", 0, False)
    assert egress_record(settings.egress[0], ClientInfo("__consumer_offsets"), message,
                         0.0) is None
    assert egress_record(settings.egress[0], ClientInfo("c"), message, 0.0) is not None
    with pytest.raises(Exception, match="not a Kafka topic name"):
        bridge_settings({"name": "k", "servers": ["h:1"],
                         "egress": [{"filters": ["#"], "topic": "__transaction_state"}]})


def test_ack_kafka_held_messages_count_against_receive_maximum(
        unreachable: Any) -> None:  # noqa: F811
    """QoS 1 messages whose PUBACKs Kafka holds count against the broker's Receive Maximum,
    with the QoS 2 messages not yet released: a client sending more is disconnected with 0x93
    Receive Maximum exceeded [MQTT-3.3.4-7], so one client cannot take the whole buffer."""
    bridge = unreachable(caps={"receive_maximum": 5})
    broker: InMemoryBroker = bridge.hub
    pub = join(broker, "pub")
    pub.send(*[Publish("held/1", b"x", 1, packet_id=n) for n in range(1, 4)],
             Publish("held/2", b"x", 2, packet_id=4), Publish("other", b"x", 1, packet_id=5),
             Publish("held/0", b"x", 0))
    assert [p.packet_id for p in pub.received()] == [5]
    pub.send(Publish("held/1", b"x", 1, packet_id=6))
    assert pub.received() == []
    pub.send(Publish("held/1", b"x", 1, packet_id=7))
    packets = pub.received()
    assert packets == [Disconnect(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, packets[0].properties)]
    assert bridge.buffer.messages == 6  # and the QoS 0 message, produced, not held
    calm = join(broker, "calm")
    calm.send(*[Publish("held/1", b"x", 1, packet_id=n) for n in range(1, 6)])
    assert calm.received() == []  # its own five: within its Receive Maximum


def test_ack_kafka_held_publisher_disconnects_then_broker_stops(
        unreachable: Any, logged: List[str]) -> None:  # noqa: F811
    """A publisher whose messages are held may go away; a stop then gives up the held records
    (logged once) without a traceback or a write to the closed connection."""
    bridge = unreachable()
    broker: InMemoryBroker = bridge.hub
    pub = join(broker, "pub")
    pub.send(*[Publish("held/1", b"x", 1, packet_id=n) for n in range(1, 11)])
    assert pub.received() == [] and bridge.buffer.messages == 10
    pub.transport.loseConnection()
    stopped = bridge.stopService()
    broker.clock.pump([0.01] * 300)
    assert stopped.called and bridge.buffer.messages == 0
    assert not [line for line in logged if "Traceback" in line or "Unhandled" in line], logged
    assert len([line for line in logged if "not delivered" in line]) == 1


def test_kafka_errors_are_logged_once_a_minute(logged: List[str]) -> None:
    """A Kafka server refusing each attempt (authentication, authorisation) or sending record
    errors does not fill the log: one line a minute per kind, saying how many were not
    logged meanwhile."""
    bridge, consumer, broker = ingress("in/{key}")  # skipped without confluent-kafka
    import confluent_kafka

    refused = confluent_kafka.KafkaError(confluent_kafka.KafkaError._AUTHENTICATION,
                                         "SASL authentication failed")
    failed = confluent_kafka.Message(topic="cmd", partition=0, offset=0, error=refused)
    for _ in range(100):
        bridge._on_error(refused)
        consumer.waiting = [failed]
        bridge.poll()
    broker.clock.advance(61)
    bridge._on_error(refused)
    lines = [line for line in logged if "SASL authentication failed" in line]
    assert len(lines) == 3, lines
    assert "99 more since the last such line" in lines[-1]


# -- settings and secrets -------------------------------------------------------------------------

REFUSED = [
    ({"ack": "kafka", "client": {"acks": 1}}, "client.acks: ack: kafka needs acks: all"),
    ({"client": {"queue.buffering.max.messages": 10_000_000}},
     "client.queue.buffering.max.messages: set by the bridge"),
    ({"client": {"debug": "broker,msg"}}, "client.debug: debug contexts msg log records"),
    ({"client": {"debug": "all"}}, "client.debug: debug contexts all log"),
]


@pytest.mark.parametrize("entry, message", REFUSED, ids=[m.split(":")[0] for _, m in REFUSED])
def test_client_settings_that_break_guarantees(tmp_path: Path, entry: Any, message: str) -> None:
    """librdkafka settings that would break ``ack: kafka``, the buffer's bounds or the logs'
    discretion are refused at start-up with one line."""
    import yaml

    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump({"kafka_bridges": [
        {"name": "k", "servers": ["h:1"], "egress": [{"filters": ["#"]}], **entry}]}))
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert f"kafka_bridges[0].{message}" in str(error.value)


def test_secrets_never_shown() -> None:
    """A bridge's settings shown (a reload's log line says what changed by their repr) mask
    librdkafka's secrets, and only them."""
    settings = bridge_settings({"name": "k", "servers": ["h:1"], "egress": [{"filters": ["#"]}],
                                "client": {"sasl.password": "hunter2", "sasl.username": "u",
                                           "ssl.key.password": "pw2",
                                           "sasl.oauthbearer.client.secret": "s3",
                                           "compression.type": "lz4"}})
    shown = repr(settings)
    assert not any(secret in shown for secret in ("hunter2", "pw2", "s3"))
    assert "'sasl.username': 'u'" in shown and "'compression.type': 'lz4'" in shown



def test_dashboard_configuration_shows_no_kafka_secret(tmp_path: Path) -> None:
    """The dashboard's configuration view of a broker with a Kafka bridge holds none of its
    librdkafka secrets."""
    if not CPYTHON:
        pytest.skip(NO_CLIENT)
    path = tmp_path / "broker.yaml"
    path.write_text("kafka_bridges:\n  - name: k\n    servers: [h:1]\n"
                    "    egress: [{filters: ['#']}]\n"
                    "    client: {sasl.password: hunter2, ssl.key.pem: PEMDATA}\n")
    options = Options()
    options.parseOptions(["--config", str(path)])
    assert options["kafka-bridges"][0].client["sasl.password"] == "hunter2"
    shown = json.dumps(config_view(options_in_force(options)), default=str)
    assert "hunter2" not in shown and "PEMDATA" not in shown


check_cited_labels(sys.modules[__name__])
