"""The Kafka bridge end to end: a real ``twistd mqtt`` broker configured with ``kafka_bridges``,
a private Tansu (a Kafka-compatible server) and real clients on both sides: confluent-kafka
reading what the bridge produced and producing what it reads, MQTT clients over sockets."""

from __future__ import annotations

import json
import platform
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import pytest

from tests.conftest import LOOPBACK, BrokerProcess, MakeClient, StartBroker
from tests.paho import V5
from tests.servers import TansuServer, free_port, tansu  # noqa: F401
from tests.test_stats import Samples, get, scrape, value
from twisted_mqtt.codec import Decoder, encode
from twisted_mqtt.packets import Connect, Disconnect, PubAck, Publish

if platform.python_implementation() != "CPython":
    pytest.skip("confluent-kafka (the Kafka bridge's client) has no build for "
                f"{platform.python_implementation()}: it binds librdkafka through the CPython "
                "C API", allow_module_level=True)

import confluent_kafka  # noqa: E402

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0
V5_LEVEL = 5


def bridge_config(tmp_path: Path, servers: str, *lines: str) -> str:
    """A configuration file with one Kafka bridge named ``k`` to ``servers`` (its other keys
    are ``lines``, YAML at the bridge's indentation); its path."""
    path = tmp_path / "broker.yaml"
    body = "\n".join("    " + line for line in lines)
    path.write_text(f"kafka_bridges:\n  - name: k\n    servers: [{servers}]\n{body}\n")
    return str(path)


def start(start_broker: StartBroker, tmp_path: Path, servers: str,
          *lines: str) -> BrokerProcess:
    """A broker with a stats listener and the bridge of ``bridge_config``."""
    return start_broker("--config", bridge_config(tmp_path, servers, *lines), "--stats",
                        LOOPBACK, "--sys-interval", "0", "--allow-anonymous")


class RawClient:
    """An MQTT 5 client over a plain socket, which pipelines its PUBLISH packets."""

    def __init__(self, port: int, client_id: str, clean: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.decoder = Decoder(V5_LEVEL)
        self.sock.sendall(encode(Connect(client_id, V5_LEVEL, clean, 0), V5_LEVEL))
        assert self.read(1)[0].reason_code == 0

    def read(self, count: int, timeout: float = TIMEOUT) -> List[Any]:
        """The next ``count`` packets; fails if they do not come within ``timeout``."""
        packets: List[Any] = []
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while len(packets) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(packets)} of {count} packets")
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed after {len(packets)} packets")
            packets.extend(self.decoder.feed(data))
        return packets

    def nothing_within(self, seconds: float) -> None:
        """Check that nothing arrives for ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        raise AssertionError(f"unexpected {self.decoder.feed(data)}")

    def publish(self, packets: Sequence[Publish], batch: int = 500) -> None:
        """Send the PUBLISH packets in batches, reading the acknowledgements as they come."""
        for first in range(0, len(packets), batch):
            chunk = packets[first:first + batch]
            self.sock.sendall(b"".join(encode(p, V5_LEVEL) for p in chunk))
            acks = self.read(sum(1 for p in chunk if p.qos))
            assert all(isinstance(a, PubAck) for a in acks), acks[:3]

    def close(self) -> None:
        """DISCONNECT and close."""
        self.sock.sendall(encode(Disconnect(0), V5_LEVEL))
        self.sock.close()


def read_kafka(servers: str, topics: Sequence[str], count: int,
               timeout: float = TIMEOUT) -> List[Any]:
    """``count`` records of ``topics`` (every partition, from the beginning), as confluent-kafka
    messages; fails if fewer arrive in time."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": servers, "group.id": "tests",
                                         "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + timeout
        partitions: List[Any] = []
        for topic in topics:
            while True:
                found = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if found is not None and found.error is None and found.partitions:
                    break
                assert time.monotonic() < deadline, f"no Kafka topic {topic}"
                time.sleep(0.1)
            partitions += [confluent_kafka.TopicPartition(topic, p,
                                                          confluent_kafka.OFFSET_BEGINNING)
                           for p in found.partitions]
        consumer.assign(partitions)
        records: List[Any] = []
        while len(records) < count:
            assert time.monotonic() < deadline, f"read {len(records)} of {count} records"
            for record in consumer.consume(1000, 0.5):
                assert record.error() is None, record.error()
                records.append(record)
        return records
    finally:
        consumer.close()


def wait_for_sample(broker: BrokerProcess, name: str, expected: float,
                    timeout: float = TIMEOUT) -> Samples:
    """Scrape /metrics until bridge ``k``'s ``name`` is ``expected``; the samples."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(broker.port_of("stats"))
        if value(samples, name, bridge="k") == expected:
            return samples
        assert time.monotonic() < deadline, f"{name} is {value(samples, name, bridge='k')}"
        time.sleep(0.1)


Headers = List[Tuple[str, Union[str, bytes, None]]]


def produce(servers: str, records: Sequence[Tuple[str, bytes, bytes, Headers]]) -> None:
    """Produce (topic, key, value, headers) records and wait for Kafka's acknowledgements."""
    producer = confluent_kafka.Producer({"bootstrap.servers": servers, "acks": "all"})
    failed: List[Any] = []

    def delivered(error: Any, _: Any) -> None:
        if error is not None:
            failed.append(error)

    for topic, key, data, headers in records:
        producer.produce(topic, data, key, headers=headers, on_delivery=delivered)
    assert producer.flush(TIMEOUT) == 0 and not failed, failed


def test_egress_ten_thousand(tansu: TansuServer, start_broker: StartBroker,  # noqa: F811
                             tmp_path: Path) -> None:
    """10,000 QoS 1 messages from four publishers all reach Kafka once: on the topic of the
    template, keyed by client id, the payload as the value, the MQTT metadata as headers, and
    in order per key."""
    broker = start(start_broker, tmp_path, tansu.servers,
                   "egress:", "  - filters: [load/#]", "    topic: mqtt.{topic}",
                   "    key: '{clientid}'")
    publishers = [RawClient(broker.port, f"pub{i}") for i in range(4)]
    per_client = 2500
    for index, client in enumerate(publishers):
        client.publish([Publish(f"load/{index}", b"%d" % n, 1, packet_id=n % 65535 + 1)
                        for n in range(per_client)])
    for client in publishers:
        client.close()
    records = read_kafka(tansu.servers, [f"mqtt.load.{i}" for i in range(4)], 4 * per_client)
    assert len(records) == 4 * per_client
    seen: Dict[bytes, List[int]] = {}
    for record in records:
        headers = dict(record.headers())
        index = int(record.topic().rsplit(".", 1)[1])
        assert record.key() == f"pub{index}".encode()
        assert headers["mqtt.topic"] == f"load/{index}".encode()
        assert headers["mqtt.qos"] == b"1" and headers["mqtt.retain"] == b"0"
        assert headers["mqtt.clientid"] == record.key()
        seen.setdefault(record.key(), []).append(int(record.value()))
    assert sorted(seen) == [b"pub0", b"pub1", b"pub2", b"pub3"]
    for numbers in seen.values():
        assert numbers == list(range(per_client))  # once each, in order per key
    samples = wait_for_sample(broker, "mqtt_kafka_bridge_produced_total", 4 * per_client)
    assert value(samples, "mqtt_kafka_bridge_connected", bridge="k") == 1
    figures = json.loads(get(broker.port_of("stats"), "/")[2])
    assert figures["bridges/kafka/k/produced"] == 4 * per_client
    assert figures["bridges/kafka/k/buffered/messages"] == 0


def test_ack_kafka_holds_publishers_while_kafka_is_down(
        tansu: TansuServer, start_broker: StartBroker, tmp_path: Path) -> None:  # noqa: F811
    """With ``ack: kafka`` a matching QoS 1/2 PUBLISH is acknowledged only once Kafka has the
    record: with Kafka killed, publishers get no PUBACK/PUBREC (messages on other topics are
    acknowledged at once); when it returns, every held message reaches Kafka and its publisher
    is released."""
    broker = start(start_broker, tmp_path, tansu.servers, "ack: kafka",
                   "egress:", "  - filters: [acked/#]", "    topic: acked")
    first = RawClient(broker.port, "first")
    first.publish([Publish("acked/0", b"before", 1, packet_id=1)])
    assert [r.value() for r in read_kafka(tansu.servers, ["acked"], 1)] == [b"before"]
    tansu.kill()
    broker.wait_for_log("Kafka bridge k: Kafka unavailable")
    second = RawClient(broker.port, "second")
    first.sock.sendall(b"".join(encode(Publish("acked/1", b"%d" % n, 1, packet_id=n), V5_LEVEL)
                                for n in range(2, 12)))
    second.sock.sendall(encode(Publish("acked/2", b"qos2", 2, packet_id=7), V5_LEVEL))
    first.nothing_within(3.0)
    second.nothing_within(0.1)
    second.publish([Publish("elsewhere", b"x", 1, packet_id=8)])  # not bridged: not held
    samples = scrape(broker.port_of("stats"))
    assert value(samples, "mqtt_kafka_bridge_connected", bridge="k") == 0
    assert value(samples, "mqtt_kafka_bridge_buffered_messages", bridge="k") == 11
    tansu.restart()
    acks = first.read(10)
    assert [a.packet_id for a in acks] == list(range(2, 12))
    assert second.read(1)[0].packet_id == 7  # PUBREC
    values = sorted(r.value() for r in read_kafka(tansu.servers, ["acked"], 11))
    assert values == sorted([b"%d" % n for n in range(2, 12)] + [b"qos2"])
    broker.wait_for_log("Kafka bridge k: connected to Kafka", count=2)
    assert len(broker.wait_for_log("Kafka bridge k: Kafka unavailable")) == 1
    first.close()
    second.close()


def test_kafka_down_at_start(tansu: TansuServer, start_broker: StartBroker,  # noqa: F811
                             tmp_path: Path) -> None:
    """A broker whose Kafka is not there when it starts serves MQTT clients anyway, holds what
    it is to produce in its buffer (counted in /metrics and $SYS), says so once, and delivers
    it once Kafka comes."""
    tansu.kill()
    broker = start(start_broker, tmp_path, tansu.servers,
                   "egress:", "  - filters: [early/#]", "    topic: early", "    key: null")
    client = RawClient(broker.port, "early")
    client.publish([Publish("early/x", b"%d" % n, 0) for n in range(5)])
    broker.wait_for_log("Kafka bridge k: Kafka unavailable")
    samples = scrape(broker.port_of("stats"))
    assert value(samples, "mqtt_kafka_bridge_buffered_messages", bridge="k") == 5
    assert value(samples, "mqtt_kafka_bridge_connected", bridge="k") == 0
    tansu.restart()
    records = read_kafka(tansu.servers, ["early"], 5)
    assert sorted(r.value() for r in records) == [b"%d" % n for n in range(5)]
    assert all(r.key() is None for r in records)
    broker.wait_for_log("Kafka bridge k: connected to Kafka")
    assert len(broker.wait_for_log("Kafka bridge k: Kafka unavailable")) == 1
    client.close()


def test_ingress(tansu: TansuServer, start_broker: StartBroker, tmp_path: Path,  # noqa: F811
                 clients: MakeClient) -> None:
    """Records of an assigned Kafka topic are published into MQTT under the topic of the
    template (Kafka topic, key, a header), with the rule's QoS; a record whose topic would not
    be a valid MQTT topic name is counted and skipped."""
    produce(tansu.servers, [("commands", b"k", b"old", [])])  # the topic exists, read from its end
    broker = start(start_broker, tmp_path, tansu.servers,
                   "ingress:", "  - topics: [commands]",
                   "    mqtt_topic: 'kafka/{kafka_topic}/{key}/{header:room}'", "    qos: 1")
    broker.wait_for_log("Kafka bridge k: reading 4 partitions of commands")
    subscriber = clients(broker.port, V5, "sub")
    subscriber.connect()
    subscriber.subscribe("kafka/#", 1)
    produce(tansu.servers, [("commands", b"lamp", b"on", [("room", b"hall")]),
                            ("commands", b"bad+key", b"x", []),
                            ("commands", b"lamp", b"off", [("room", b"hall")])])
    got = subscriber.expect(2)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("kafka/commands/lamp/hall", b"on", 1), ("kafka/commands/lamp/hall", b"off", 1)]
    samples = wait_for_sample(broker, "mqtt_kafka_bridge_invalid_total", 1)
    assert value(samples, "mqtt_kafka_bridge_consumed_total", bridge="k") == 2


def test_ingress_hostile_records(tansu: TansuServer, start_broker: StartBroker,  # noqa: F811
                                 tmp_path: Path, clients: MakeClient) -> None:
    """A Kafka producer whose keys would make a ``$SYS`` topic, a wildcard topic or no UTF-8,
    and whose value is larger than the broker's maximum packet size, publishes none of them
    (each counted as invalid); its good record goes through, and the broker serves on."""
    produce(tansu.servers, [("raw", b"k", b"old", [])])
    config = bridge_config(tmp_path, tansu.servers, "ingress:", "  - topics: [raw]",
                           "    mqtt_topic: '{key}'")
    broker = start_broker("--config", config, "--stats", LOOPBACK, "--sys-interval", "0",
                          "--allow-anonymous", "--max-packet-size", "4096")
    broker.wait_for_log("Kafka bridge k: reading 4 partitions of raw")
    subscriber = clients(broker.port, V5, "sub")
    subscriber.connect()
    subscriber.subscribe("#", 0)
    subscriber.subscribe("$SYS/#", 0)
    produce(tansu.servers, [("raw", b"$SYS/broker/clients/connected", b"666", []),
                            ("raw", b"a/#", b"x", []), ("raw", b"\xff", b"x", []),
                            ("raw", b"big", b"x" * 5000, []), ("raw", b"ok/1", b"fine", [])])
    got = subscriber.expect(1)
    assert [(m.topic, m.payload) for m in got] == [("ok/1", b"fine")]
    wait_for_sample(broker, "mqtt_kafka_bridge_invalid_total", 4)
    produce(tansu.servers, [("raw", b"ok/end", b"", [])])
    assert subscriber.expect_until("ok/end") == []  # nothing else came
