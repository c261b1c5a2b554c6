"""The Kafka bridge's parts: templates, rules, records and headers, comqtt's envelope, the
buffer's bounds, its configuration and its one-line errors, and the ``ack: kafka`` barrier on an
in-memory broker whose Kafka client (a real confluent-kafka producer) cannot reach Kafka."""

from __future__ import annotations

import base64
import json
import platform
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from twisted.internet.defer import maybeDeferred

from tests.hook_helpers import hub, join
from tests.test_command_line import PROGRAMS, one_line, run, without
from twisted_mqtt.bridges.kafka import (
    HEADER_COST,
    MISSING,
    Buffer,
    KafkaBridge,
    KafkaBridgeSettings,
    bridge_settings,
    comqtt_envelope,
    egress_record,
    ingress_topic,
    kafka_topic_name,
)
from twisted_mqtt.config import CONFIG_ERROR_EXIT, ConfigError, load_config
from twisted_mqtt.hooks import Hook
from twisted_mqtt.interfaces import ClientInfo
from twisted_mqtt.packets import Disconnect, PubAck, Publish, PubRec, ReasonCode
from twisted_mqtt.properties import Properties
from twisted_mqtt.session import Message
from twisted_mqtt.tap import Options
from twisted_mqtt.testing import InMemoryBroker

CPYTHON = platform.python_implementation() == "CPython"
NO_CLIENT = ("confluent-kafka (the Kafka bridge's client) has no build for "
             f"{platform.python_implementation()}: it binds librdkafka through the CPython C API")

CLIENT = ClientInfo("sensor-1", "alice")


def rule(**entry: Any) -> Any:
    """The first egress rule of a bridge with this egress entry."""
    return bridge_settings({"name": "k", "servers": ["localhost:9092"],
                            "egress": [{"filters": ["#"], **entry}]}).egress[0]


# -- templates and records ------------------------------------------------------------------------


def test_kafka_topic_names() -> None:
    """An MQTT topic becomes a Kafka topic name: ``/`` is ``.``, other characters Kafka
    refuses are ``_``."""
    assert kafka_topic_name("sensors/1/temp") == "sensors.1.temp"
    assert kafka_topic_name("/a b/ü+x") == ".a_b.__x"


def test_record_topic_key_value_headers() -> None:
    """The default rule: topic ``mqtt.{topic}``, key the client id, value the raw payload, and
    the MQTT metadata (v5 user properties included) as headers."""
    props = Properties(content_type="text/plain", user_properties=(("site", "x"), ("site", "y")))
    message = Message("sensors/1/temp", b"\x00\xff21.5", 1, True, props)
    record = egress_record(rule(), CLIENT, message, 1000.0)
    assert record is not None
    assert (record.topic, record.key, record.value) == ("mqtt.sensors.1.temp", b"sensor-1",
                                                        b"\x00\xff21.5")
    assert record.headers == [("mqtt.topic", b"sensors/1/temp"), ("mqtt.qos", b"1"),
                              ("mqtt.retain", b"1"), ("mqtt.clientid", b"sensor-1"),
                              ("mqtt.username", b"alice"), ("mqtt.content_type", b"text/plain"),
                              ("site", b"x"), ("site", b"y")]
    assert record.size == len(b"\x00\xff21.5") + len(b"sensor-1") + sum(
        len(name) + len(value) + HEADER_COST for name, value in record.headers)


def test_record_templates() -> None:
    """Key templates of ``{clientid}``, ``{topic}`` and ``{username}``; a fixed topic; no key;
    no user name header for a client without one; a topic too long for Kafka gives no
    record."""
    message = Message("a/b", b"x", 0, False)
    by_user = egress_record(rule(topic="fixed", key="{username}:{topic}"), CLIENT, message, 0)
    assert by_user is not None and (by_user.topic, by_user.key) == ("fixed", b"alice:a/b")
    anonymous = ClientInfo("c")
    keyless = egress_record(rule(topic="t-{clientid}", key=None), anonymous, message, 0)
    assert keyless is not None and (keyless.topic, keyless.key) == ("t-c", None)
    assert "mqtt.username" not in dict(keyless.headers)
    assert egress_record(rule(), CLIENT, Message("a" * 250, b"", 0, False), 0) is None


def test_user_properties_cannot_forge_the_metadata() -> None:
    """A v5 user property named like the bridge's own headers (``mqtt.*``) is left out, so that
    a client cannot pass for another in Kafka (consumers often read the last header of a
    name)."""
    props = Properties(user_properties=(("mqtt.clientid", "admin"), ("MQTT.topic", "x"),
                                        ("mqttish", "kept")))
    record = egress_record(rule(), CLIENT, Message("a", b"", 0, False, props), 0)
    assert record is not None
    assert [name for name, _ in record.headers if name.lower().startswith("mqtt")] == [
        "mqtt.topic", "mqtt.qos", "mqtt.retain", "mqtt.clientid", "mqtt.username", "mqttish"]
    assert dict(record.headers)["mqtt.clientid"] == b"sensor-1"


def test_topic_template_fields_are_made_valid() -> None:
    """Every field of a Kafka topic template is mapped to a valid name (a client id or user
    name with characters Kafka refuses, ``/`` included)."""
    odd = ClientInfo("dev/1 é", "a@b")
    record = egress_record(rule(topic="in.{username}.{clientid}"), odd,
                           Message("a", b"", 0, False), 0)
    assert record is not None and record.topic == "in.a_b.dev.1__"
    assert record.key == b"dev/1 \xc3\xa9"  # the key keeps the client id as it is


def test_comqtt_envelope() -> None:
    """comqtt's JSON envelope: its field names, the payload in base64, the time in seconds."""
    record = egress_record(rule(envelope="comqtt"), CLIENT, Message("a/b", b"\x01hi", 0, False),
                           1700000000.7)
    assert record is not None
    assert json.loads(record.value) == {"action": "publish", "clientid": "sensor-1",
                                        "username": "alice", "topics": ["a/b"],
                                        "payload": base64.b64encode(b"\x01hi").decode(),
                                        "ts": 1700000000}
    assert record.value == comqtt_envelope(CLIENT, Message("a/b", b"\x01hi", 0, False),
                                           1700000000.7)


def test_rules_match_their_filters() -> None:
    """A rule matches the topics of its filters (wildcards as MQTT subscriptions)."""
    assert rule(filters=["a/+/c", "d/#"]).matches("a/b/c")
    assert rule(filters=["a/+/c", "d/#"]).matches("d")
    assert not rule(filters=["a/+/c"]).matches("a/b/c/d")


def test_ingress_topic() -> None:
    """The MQTT topic of a Kafka record: ``{kafka_topic}``, ``{key}``, ``{partition}`` and
    ``{header:NAME}`` (empty when missing); a key that is not UTF-8 cannot make one."""
    settings = bridge_settings({"name": "k", "servers": ["h:1"], "ingress": [
        {"topics": ["cmd"], "mqtt_topic": "in/{kafka_topic}/{partition}/{key}/{header:room}"}]})
    ingress = settings.ingress[0]
    assert ingress_topic(ingress, "cmd", 3, b"lamp", [("room", b"hall"), ("room", b"x")]) == \
        "in/cmd/3/lamp/hall"
    assert ingress_topic(ingress, "cmd", 0, None, None) == "in/cmd/0//"
    with pytest.raises(UnicodeDecodeError):
        ingress_topic(ingress, "cmd", 0, b"\xff", None)


# -- the buffer ------------------------------------------------------------------------------------


def test_buffer_bounds_messages_and_bytes(logged: List[str]) -> None:
    """The buffer holds at most its messages and its bytes; what does not fit is counted.  The
    log says once that it is full, and once that it has room again when it drained below 90%
    of both bounds (not at each record taken and released at the bound)."""
    buffer = Buffer("k", max_messages=10, max_bytes=100)
    assert buffer.take(95) and buffer.take(5)
    assert not buffer.take(1)  # bytes
    buffer.release(5)
    assert buffer.full and buffer.take(5)
    assert not buffer.take(1)
    for _ in range(8):
        assert buffer.take(0)
    assert not buffer.take(0)  # messages
    assert (buffer.messages, buffer.bytes, buffer.dropped, buffer.full) == (10, 100, 3, True)
    buffer.release(0)
    buffer.release(5)
    assert buffer.full
    buffer.release(95)
    assert not buffer.full and (buffer.messages, buffer.bytes) == (7, 0)
    lines = [line for line in logged if "Kafka bridge k: buffer" in line]
    assert len(lines) == 2, lines
    assert "full (2 records, 100 bytes" in lines[0]
    assert "room again (3 messages refused" in lines[1]


# -- configuration ---------------------------------------------------------------------------------

MISTAKES = [
    ("    servres: [h:1]\n", "kafka_bridges[0].servres: unknown key; did you mean servers?"),
    ("    egress: [{filters: ['#']}]\n", "kafka_bridges[0]: missing servers"),
    ("    servers: [h:1]\n    egress: [{filters: ['#'], topic: 'x.{qos}'}]\n",
     "kafka_bridges[0].egress[0].topic: unknown field {qos} in 'x.{qos}'; expected {topic}, "
     "{clientid}, {username}"),
    ("    servers: [h:1]\n    egress: [{filters: ['#'], topic: 'bad topic'}]\n",
     "kafka_bridges[0].egress[0].topic: 'bad topic' is not a Kafka topic name"),
    ("    servers: [h:1]\n    egress: [{filters: ['a/#/b']}]\n",
     "kafka_bridges[0].egress[0].filters[0]:"),
    ("    servers: [h:1]\n", "kafka_bridges[0]: a bridge needs egress or ingress rules"),
    ("    servers: [h:1]\n    ingress: [{topics: [t], mqtt_topic: 'a/{header}'}]\n",
     "kafka_bridges[0].ingress[0].mqtt_topic: {header} needs a header name"),
    ("    servers: [h:1]\n    ack: always\n    egress: [{filters: ['#']}]\n",
     "kafka_bridges[0].ack: expected one of none, kafka, not 'always'"),
    ("    servers: [h:1]\n    egress: [{filters: ['#']}]\n  - name: k\n    servers: [h:1]\n"
     "    egress: [{filters: ['#']}]\n", "kafka_bridges[1].name: a second bridge named 'k'"),
]


@pytest.mark.parametrize("text, message", MISTAKES, ids=[m[1].split(":")[0] + str(i)
                                                         for i, m in enumerate(MISTAKES)])
def test_mistakes(tmp_path: Path, text: str, message: str) -> None:
    """A mistake in a Kafka bridge stops start-up with one line: file, line, key path, what
    is expected."""
    path = tmp_path / "broker.yaml"
    path.write_text("kafka_bridges:\n  - name: k\n" + text)
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    text = str(error.value)
    assert text.startswith(f"{path}, line ") and message in text, text
    assert "\n" not in text


def test_client_settings_are_checked(tmp_path: Path) -> None:
    """librdkafka settings it refuses stop start-up with one line, as other mistakes do."""
    if not CPYTHON:
        pytest.skip(NO_CLIENT)
    path = tmp_path / "broker.yaml"
    path.write_text("kafka_bridges:\n  - name: k\n    servers: [h:1]\n"
                    "    egress: [{filters: ['#']}]\n    client:\n      compresion.type: lz4\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert str(error.value) == (f"{path}, line 6: kafka_bridges[0].client: librdkafka refuses "
                                'it: No such configuration property: "compresion.type"')


def test_documented_example(tmp_path: Path) -> None:
    """The YAML example of docs/bridges.md's Kafka section is a valid configuration."""
    if not CPYTHON:
        pytest.skip(NO_CLIENT)
    text = (Path(__file__).parent.parent / "docs" / "bridges.md").read_text()
    section = text[text.index("## Kafka bridge"):]
    example = section[section.index("```yaml\n") + 8:section.index("\n```", section.index(
        "```yaml"))]
    path = tmp_path / "broker.yaml"
    path.write_text(example + "\n")
    settings = load_config(str(path)).values["kafka_bridges"][0]
    assert settings.name == "analytics" and settings.ack == "kafka"
    assert [r.topic.text for r in settings.egress] == ["mqtt.{topic}", "audit"]
    assert settings.ingress[0].mqtt_topic.text == "devices/{key}/{header:command}"


def test_ingress_refuses_workers(tmp_path: Path) -> None:
    """Ingress in every worker would publish each record once per worker: refused, while
    egress rules alone may run in every worker."""
    if not CPYTHON:
        pytest.skip(NO_CLIENT)
    path = tmp_path / "broker.yaml"
    path.write_text("kafka_bridges:\n  - name: k\n    servers: [h:1]\n"
                    "    ingress: [{topics: [t]}]\n")
    workers = ["--workers", "2", "--cluster", "redis://127.0.0.1:1/0"]
    with pytest.raises(ConfigError) as error:
        Options().parseOptions(["--config", str(path), *workers])
    assert str(error.value).startswith("--workers: Kafka ingress runs in one process")
    path.write_text("kafka_bridges:\n  - name: k\n    servers: [h:1]\n"
                    "    egress: [{filters: ['#']}]\n")
    Options().parseOptions(["--config", str(path), *workers])


def test_settings_from_the_file(tmp_path: Path) -> None:
    """A bridge from the file: its rules and settings, defaults for the rest."""
    if not CPYTHON:
        pytest.skip(NO_CLIENT)
    path = tmp_path / "broker.yaml"
    path.write_text("kafka_bridges:\n  - name: k\n    servers: [a:1, b:2]\n    ack: kafka\n"
                    "    max_buffered_messages: 10\n    client: {compression.type: lz4}\n"
                    "    egress:\n      - filters: ['s/#']\n        key: '{topic}'\n"
                    "    ingress:\n      - topics: [cmd]\n        qos: 2\n        retain: true\n")
    settings = load_config(str(path)).values["kafka_bridges"][0]
    assert isinstance(settings, KafkaBridgeSettings)
    assert (settings.servers, settings.ack, settings.max_buffered_messages,
            settings.max_buffered_bytes, settings.client) == (
        ("a:1", "b:2"), "kafka", 10, 64 * 1024 * 1024, {"compression.type": "lz4"})
    key = settings.egress[0].key
    assert settings.egress[0].filters == ("s/#",) and key is not None and key.text == "{topic}"
    ingress = settings.ingress[0]
    assert (ingress.topics, ingress.mqtt_topic.text, ingress.qos, ingress.retain,
            ingress.start) == (("cmd",), "kafka/{kafka_topic}", 2, True, "end")


def test_missing_client_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without confluent-kafka, a file naming a Kafka bridge is refused with one line naming
    the extra."""
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    path = tmp_path / "broker.yaml"
    path.write_text("kafka_bridges:\n  - {name: k, servers: [h:1], egress: [{filters: ['#']}]}\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert str(error.value) == f"{path}, line 2: kafka_bridges: {MISSING}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_missing_client_stops_start_up(program: str, tmp_path: Path) -> None:
    """The same from the command line: one line, exit status 78."""
    config = tmp_path / "broker.yaml"
    config.write_text("kafka_bridges:\n  - name: k\n    servers: [h:1]\n"
                      "    egress: [{filters: ['#']}]\n")
    result = run(program, "--config", str(config), env=without("confluent_kafka", tmp_path))
    assert one_line(result) == (f"{program}: configuration error: {config}, line 2: "
                                f"kafka_bridges: {MISSING}")
    assert MISSING.startswith("the Kafka bridge needs confluent-kafka: pip install "
                              "'twisted-mqtt-broker[kafka]'")
    assert result.returncode == CONFIG_ERROR_EXIT


# -- ack: kafka on an in-memory broker ------------------------------------------------------------


@pytest.fixture
def unreachable() -> Iterator[Any]:
    """Make a bridge on an in-memory broker whose Kafka cannot be reached (a real producer
    to a closed port: what it produces waits in its buffer)."""
    if not CPYTHON:
        pytest.skip(NO_CLIENT)
    import confluent_kafka

    made: List[KafkaBridge] = []

    def make(caps: Optional[Dict[str, Any]] = None, **settings: Any) -> KafkaBridge:
        broker = hub(**(caps or {}))
        entry = {"name": "k", "servers": ["127.0.0.1:1"], "ack": "kafka",
                 "egress": [{"filters": ["held/#"]}], **settings}
        bridge = KafkaBridge(broker.broker, bridge_settings(entry), broker.clock)
        bridge.attach(confluent_kafka.Producer(bridge.client_settings("producer")))
        bridge.hub = broker  # type: ignore[attr-defined]
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        if bridge.producer is not None:  # None once stopped
            bridge.producer.purge()


def test_ack_kafka_holds_only_matching_messages(unreachable: Any) -> None:
    """With ``ack: kafka``, a QoS 1/2 PUBLISH matching a rule waits for Kafka (here, never);
    QoS 0 and other topics are not held, and the bridge's own ingress messages are not sent
    back to Kafka."""
    bridge = unreachable()
    broker: InMemoryBroker = bridge.hub
    pub = join(broker, "pub")
    pub.send(Publish("held/1", b"x", 1, packet_id=1), Publish("held/2", b"x", 2, packet_id=2),
             Publish("other", b"x", 1, packet_id=3), Publish("held/0", b"x", 0))
    assert pub.received() == [PubAck(3, ReasonCode.NO_MATCHING_SUBSCRIBERS)]
    assert bridge.buffer.messages == 3
    bridge.inline.publish("held/loop", b"x", 1)
    assert bridge.buffer.messages == 3
    bridge.poll()
    assert pub.received() == []


class Echo(Hook):
    """Publishes through the inline client whenever a client publishes to ``held/trigger``."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def on_published(self, client: ClientInfo, message: Any, count: int) -> None:
        if message.topic == "held/trigger":
            self.broker.inline.publish("held/echo", b"echo", 1)


def test_ack_kafka_holds_through_nested_publishes(unreachable: Any) -> None:
    """A hook publishing (through the inline client) while a PUBLISH is being routed does not
    release that PUBLISH's acknowledgement; the inline message is produced, not held."""
    bridge = unreachable()
    broker: InMemoryBroker = bridge.hub
    broker.broker.hooks.add(Echo(broker.broker))
    pub = join(broker, "pub")
    pub.send(Publish("held/trigger", b"x", 1, packet_id=1))
    assert pub.received() == []
    assert bridge.buffer.messages == 2


def test_ack_kafka_full_buffer_disconnects_the_publisher(unreachable: Any) -> None:
    """A QoS 1 PUBLISH that does not fit the buffer is not acknowledged: its v5 publisher is
    disconnected with 0x97 Quota exceeded (a client keeping its session sends it again);
    QoS 0 messages that do not fit are dropped and counted."""
    bridge = unreachable(max_buffered_messages=2)
    broker: InMemoryBroker = bridge.hub
    quiet = join(broker, "quiet")
    quiet.send(Publish("held/0", b"x", 0), Publish("held/0", b"x", 0), Publish("held/0", b"x", 0))
    assert bridge.buffer.dropped == 1
    pub = join(broker, "pub")
    pub.send(Publish("held/1", b"x", 1, packet_id=1))
    packets = pub.received()
    assert packets == [Disconnect(ReasonCode.QUOTA_EXCEEDED, packets[0].properties)]
    assert packets[0].properties.reason_string == "Kafka bridge k: buffer full"
    assert bridge.figures()["bridges/kafka/k/dropped"] == 2


def test_record_too_large_for_kafka(unreachable: Any, logged: List[str]) -> None:
    """A message larger than librdkafka's ``message.max.bytes`` is refused when produced: it is
    counted as failed, holds no place in the buffer, and its ``ack: kafka`` publisher is
    disconnected with 0x95 Packet too large; the log says it once, not per message."""
    bridge = unreachable()
    broker: InMemoryBroker = bridge.hub
    big = b"x" * 1_000_001
    quiet = join(broker, "quiet")
    quiet.send(Publish("held/0", big, 0), Publish("held/0", big, 0))
    assert (bridge.failed, bridge.buffer.messages, bridge.buffer.bytes) == (2, 0, 0)
    pub = join(broker, "pub")
    pub.send(Publish("held/1", big, 1, packet_id=1))
    packets = pub.received()
    assert packets == [Disconnect(ReasonCode.PACKET_TOO_LARGE, packets[0].properties)]
    assert "Message size too large" in packets[0].properties.reason_string
    assert len([line for line in logged if line.startswith("Kafka bridge k: Kafka refused")]) == 1


def test_fire_and_forget_acknowledges_at_once(unreachable: Any) -> None:
    """Without ``ack: kafka`` publishers are acknowledged at once, Kafka reachable or not."""
    bridge = unreachable(ack="none")
    pub = join(bridge.hub, "pub")
    pub.send(Publish("held/1", b"x", 1, packet_id=1), Publish("held/2", b"x", 2, packet_id=2))
    assert pub.received() == [PubAck(1, ReasonCode.NO_MATCHING_SUBSCRIBERS),
                              PubRec(2, ReasonCode.NO_MATCHING_SUBSCRIBERS)]
    assert bridge.buffer.messages == 2


def test_ingress_look_up_failures_are_logged_once(logged: List[str]) -> None:
    """While the partitions to read cannot be looked up (Kafka unreachable), the bridge tries
    again every 5 s and says so once, not at each try."""
    if not CPYTHON:
        pytest.skip(NO_CLIENT)
    broker = hub()
    settings = bridge_settings({"name": "k", "servers": ["127.0.0.1:1"],
                                "ingress": [{"topics": ["t"]}]})
    bridge = KafkaBridge(broker.broker, settings, broker.clock, in_thread=maybeDeferred)
    bridge.LOOKUP_TIMEOUT = 0.05
    bridge.startService()
    for _ in range(3):
        broker.clock.advance(bridge.RETRY)
    stopped = bridge.stopService()
    assert stopped.called
    lines = [line for line in logged if "partitions" in line]
    assert len(lines) == 1 and "trying again every 5 s" in lines[0], lines

