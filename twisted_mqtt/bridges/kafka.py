"""The Kafka bridge: MQTT messages produced to Kafka (egress), Kafka records published into MQTT
(ingress), through confluent-kafka (the ``[kafka]`` extra, imported when a bridge starts).

Egress: a message a client publishes that matches a rule's topic filters is produced to the
Kafka topic of the rule's template with the key of its key template; the value is the raw
payload (or comqtt's JSON envelope), and the MQTT metadata travels as Kafka headers.  With
``ack: kafka`` a matching QoS 1/2 PUBLISH is acknowledged to its publisher only once Kafka
acknowledged the record (the bridge is one of the broker's ``ack_barriers``).

Ingress: the partitions of the configured Kafka topics are assigned (no consumer group) and
each record is published into the broker under the topic of a template.

confluent-kafka is driven from the reactor thread without ever blocking it: ``produce`` only
queues, and a ``LoopingCall`` calls ``Producer.poll(0)`` (which runs the delivery, error and
statistics callbacks) and ``Consumer.consume(timeout=0)`` (which returns what librdkafka's own
threads already fetched).  Only the metadata lookup that finds a topic's partitions blocks, so it
runs in the reactor's thread pool.  What is produced and not yet acknowledged by Kafka is held
in a buffer bounded in messages and bytes.
"""

from __future__ import annotations

import base64
import importlib
import json
import platform
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from twisted_mqtt.config import (
    Boolean,
    Check,
    Integer,
    Invalid,
    ListOf,
    Maybe,
    Number,
    OneOf,
    Text,
    TopicFilter,
    _unknown,
)
from twisted_mqtt.errors import AckRefused
from twisted_mqtt.hooks import Hook
from twisted_mqtt.inline import InlineClient
from twisted_mqtt.interfaces import ClientInfo
from twisted_mqtt.packets import ReasonCode
from twisted_mqtt.session import Message
from twisted_mqtt.topics import matches

log = Logger()

STOP_DRAIN = 2.0
"""Seconds a stopping bridge waits for Kafka to acknowledge what it holds."""

KAFKA_MODULE = "confluent_kafka"
MISSING = ("the Kafka bridge needs confluent-kafka: pip install 'twisted-mqtt-broker[kafka]'"
           + (" (it has no build for PyPy: run the broker on CPython)"
              if platform.python_implementation() == "PyPy" else ""))

MAX_KAFKA_TOPIC = 249
_KAFKA_TOPIC_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")

EGRESS_FIELDS = ("topic", "clientid", "username")
INGRESS_FIELDS = ("kafka_topic", "key", "partition", "header")


def load_kafka() -> Any:
    """The confluent_kafka module; ``ImportError`` with the one-line ``MISSING`` without it."""
    try:
        return importlib.import_module(KAFKA_MODULE)
    except ImportError:
        raise ImportError(MISSING) from None


# -- templates --------------------------------------------------------------------------------


class Template:
    """A text with ``{field}`` places, checked once and rendered per message.  ``{header:NAME}``
    (ingress) is the value of the Kafka header ``NAME``."""

    def __init__(self, text: str, allowed: Sequence[str]) -> None:
        self.text = text
        self.parts: List[Tuple[str, Optional[str], str]] = []
        """(literal text, field name or None, header name)."""
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as error:
            raise Invalid(f"bad template {text!r}: {error}") from None
        for literal, name, spec, conversion in parsed:
            if name is not None and name not in allowed:
                raise Invalid(f"unknown field {{{name}}} in {text!r}; expected "
                              + ", ".join(f"{{{a}:NAME}}" if a == "header" else f"{{{a}}}"
                                          for a in allowed))
            if name == "header" and not spec:
                raise Invalid(f"{{header}} needs a header name in {text!r}: {{header:NAME}}")
            if conversion or (spec and name != "header"):
                raise Invalid(f"no conversion or format in {text!r}; expected plain {{field}}")
            self.parts.append((literal, name, spec or ""))
        self.fields = frozenset(name for _, name, _ in self.parts if name is not None)

    def render(self, values: Dict[str, str], headers: Optional[Dict[str, str]] = None) -> str:
        """The text with each field replaced by its value (a missing header: empty)."""
        out = []
        for literal, name, header in self.parts:
            out.append(literal)
            if name == "header":
                out.append((headers or {}).get(header, ""))
            elif name is not None:
                out.append(values[name])
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def kafka_topic_name(mqtt_topic: str) -> str:
    """An MQTT topic as a Kafka topic name: ``/`` becomes ``.`` and any character Kafka does not
    allow (outside ``A-Z a-z 0-9 . _ -``) becomes ``_``."""
    return _KAFKA_TOPIC_CHAR.sub("_", mqtt_topic.replace("/", "."))


class KafkaTopicTemplate(Check):
    """A Kafka topic template: ``{topic}`` (the MQTT topic, ``/`` as ``.``), ``{clientid}``,
    ``{username}``; a name without fields must be a valid Kafka topic."""

    expected = "a Kafka topic or a template such as mqtt.{topic}"

    def __call__(self, value: Any) -> Template:
        template = Template(Text()(value), EGRESS_FIELDS)
        if not template.fields and not valid_kafka_topic(value):
            raise Invalid(f"{value!r} is not a Kafka topic name (1 to {MAX_KAFKA_TOPIC} of "
                          "A-Z a-z 0-9 . _ -)")
        return template


class TemplateOf(Check):
    """A template with the given fields."""

    def __init__(self, allowed: Sequence[str], example: str) -> None:
        self.allowed = allowed
        self.expected = f"a template such as {example}"

    def __call__(self, value: Any) -> Template:
        return Template(Text()(value), self.allowed)


def valid_kafka_topic(name: str) -> bool:
    """Whether Kafka accepts ``name`` as a topic name."""
    return bool(_KAFKA_TOPIC.fullmatch(name)) and name not in (".", "..")


# -- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EgressRule:
    """Which MQTT messages go to Kafka, and as what."""

    filters: Tuple[str, ...]
    topic: Template
    key: Optional[Template]
    envelope: str = "raw"
    """``raw`` (the payload as the value) or ``comqtt`` (comqtt's JSON envelope)."""

    def matches(self, topic: str) -> bool:
        """Whether a message published to ``topic`` goes to Kafka by this rule."""
        return any(matches(f, topic) for f in self.filters)


@dataclass(frozen=True)
class IngressRule:
    """Which Kafka records come into MQTT, and as what."""

    topics: Tuple[str, ...]
    mqtt_topic: Template
    qos: int = 0
    retain: bool = False
    start: str = "end"
    """Where reading starts in each partition when the bridge starts: ``end`` (only new
    records) or ``beginning``."""


@dataclass(frozen=True)
class KafkaBridgeSettings:
    """One Kafka bridge (a ``bridges.kafka`` entry of the configuration file)."""

    name: str
    servers: Tuple[str, ...]
    egress: Tuple[EgressRule, ...] = ()
    ingress: Tuple[IngressRule, ...] = ()
    ack: str = "none"
    """``none`` (fire and forget) or ``kafka`` (QoS 1/2 PUBLISH acknowledged after Kafka)."""
    max_buffered_messages: int = 100_000
    max_buffered_bytes: int = 64 * 1024 * 1024
    poll_interval: float = 0.01
    client: Dict[str, Any] = field(default_factory=dict)
    """librdkafka settings passed as they are (``compression.type``, ``security.protocol``...)."""


def _fields(entry: Any, keys: Dict[str, Tuple[Check, Any, str]], what: str) -> Dict[str, Any]:
    """The checked values of a mapping of ``keys`` (check, default (``...``: required),
    meaning)."""
    if not isinstance(entry, dict):
        raise Invalid(f"expected a mapping of {what} settings, not {entry!r}")
    for key in entry:
        if key not in keys:
            raise _unknown(str(key), list(keys))
    values = {}
    for key, (check, default, _) in keys.items():
        if key not in entry and default is ...:
            raise Invalid(f"missing {key} ({check.expected})")
        try:
            values[key] = check(entry.get(key, default))
        except Invalid as error:
            raise Invalid(error.problem, f".{key}{error.path}", error.key) from None
    return values


class Entries(Check):
    """A list of mappings (``items`` says what they are), each turned into an object by
    ``build``."""

    def __init__(self, build: Callable[[Any], Any], items: str) -> None:
        self.items = ListOf(_Built(build, items), items)
        self.expected = self.items.expected

    def __call__(self, value: Any) -> Tuple[Any, ...]:
        return tuple(self.items(value))


class _Built(Check):
    def __init__(self, build: Callable[[Any], Any], expected: str) -> None:
        self.build = build
        self.expected = expected

    def __call__(self, value: Any) -> Any:
        return self.build(value)


class Settings(Check):
    """librdkafka settings: a mapping of names to text, numbers or booleans."""

    expected = "a mapping of librdkafka settings, e.g. {compression.type: lz4}"

    def __call__(self, value: Any) -> Dict[str, Any]:
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, (str, int, float, bool))
                for k, v in value.items()):
            self.refuse(value)
        return dict(value)


class Name(Text):
    """A bridge's name: letters, digits, ``_``, ``-`` and ``.``."""

    expected = "a name of letters, digits, _, - and ."

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or not _KAFKA_TOPIC.fullmatch(value):
            self.refuse(value)
        return value


EGRESS_KEYS: Dict[str, Tuple[Check, Any, str]] = {
    "filters": (ListOf(TopicFilter(), "MQTT topic filters"), ...,
                "MQTT topic filters of the messages produced to Kafka (required)"),
    "topic": (KafkaTopicTemplate(), "mqtt.{topic}",
              "the Kafka topic: a name, or a template of {topic} (the MQTT topic with / as .), "
              "{clientid}, {username}"),
    "key": (Maybe(TemplateOf(EGRESS_FIELDS, "{clientid}")), "{clientid}",
            "the record key: a template of {clientid}, {topic}, {username}; null: no key"),
    "envelope": (OneOf("raw", "comqtt"), "raw",
                 "raw: the payload is the value; comqtt: comqtt's JSON envelope"),
}
"""The keys of an egress rule: (check, default, meaning)."""

INGRESS_KEYS: Dict[str, Tuple[Check, Any, str]] = {
    "topics": (ListOf(KafkaTopicTemplate(), "Kafka topic names"), ...,
               "the Kafka topics read (required)"),
    "mqtt_topic": (TemplateOf(INGRESS_FIELDS, "kafka/{kafka_topic}"), "kafka/{kafka_topic}",
                   "the MQTT topic: a template of {kafka_topic}, {key}, {partition}, "
                   "{header:NAME}"),
    "qos": (Integer(0, 2), 0, "the QoS of the MQTT messages"),
    "retain": (Boolean(), False, "publish them retained"),
    "start": (OneOf("end", "beginning"), "end",
              "where reading starts in each partition: end (new records) or beginning"),
}
"""The keys of an ingress rule."""


def _egress(entry: Any) -> EgressRule:
    values = _fields(entry, EGRESS_KEYS, "egress rule")
    return EgressRule(tuple(values["filters"]), values["topic"], values["key"],
                      values["envelope"])


def _ingress(entry: Any) -> IngressRule:
    values = _fields(entry, INGRESS_KEYS, "ingress rule")
    topics = []
    for index, template in enumerate(values["topics"]):
        if template.fields:
            raise Invalid("expected a Kafka topic name, not a template", f".topics[{index}]")
        topics.append(template.text)
    return IngressRule(tuple(topics), values["mqtt_topic"], values["qos"], values["retain"],
                       values["start"])


BRIDGE_KEYS: Dict[str, Tuple[Check, Any, str]] = {
    "name": (Name(), ..., "the bridge's name, in logs, $SYS and /metrics (required)"),
    "servers": (ListOf(Text(), "host:port"), ..., "Kafka bootstrap servers (required)"),
    "egress": (Entries(_egress, "egress rules {filters, topic, key, envelope}"), [],
               "rules for MQTT messages produced to Kafka"),
    "ingress": (Entries(_ingress, "ingress rules {topics, mqtt_topic, qos, retain, start}"), [],
                "rules for Kafka records published into MQTT"),
    "ack": (OneOf("none", "kafka"), "none",
            "none: fire and forget; kafka: a QoS 1/2 PUBLISH matching an egress rule is "
            "acknowledged once Kafka acknowledged it"),
    "max_buffered_messages": (Integer(1), KafkaBridgeSettings.max_buffered_messages,
                              "records produced and not yet acknowledged by Kafka, at most"),
    "max_buffered_bytes": (Integer(1), KafkaBridgeSettings.max_buffered_bytes,
                           "bytes (keys and values) of those records, at most"),
    "poll_interval": (Number(0.001), KafkaBridgeSettings.poll_interval,
                      "seconds between two polls of the Kafka client"),
    "client": (Settings(), {}, "librdkafka settings, passed as they are"),
}
"""The keys of a ``bridges.kafka`` entry."""


def bridge_settings(entry: Any) -> KafkaBridgeSettings:
    """The settings of one bridge from its mapping; ``Invalid`` (with the path below the
    entry) for a mistake."""
    values = _fields(entry, BRIDGE_KEYS, "Kafka bridge")
    if not values["servers"]:
        raise Invalid("expected at least one server", ".servers")
    if not values["egress"] and not values["ingress"]:
        raise Invalid("a bridge needs egress or ingress rules")
    values["servers"] = tuple(values["servers"])
    return KafkaBridgeSettings(**values)


class KafkaBridges(Check):
    """The ``bridges.kafka`` list; confluent-kafka must be installed."""

    expected = "a list of Kafka bridges {name, servers, egress, ...}"

    def __call__(self, value: Any) -> List[KafkaBridgeSettings]:
        bridges = list(Entries(bridge_settings, "Kafka bridges {name, servers, egress, ...}")(
            value))
        names = [b.name for b in bridges]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise Invalid(f"a second bridge named {name!r}", f"[{index}].name")
        if bridges:
            try:
                kafka = load_kafka()
            except ImportError as error:
                raise Invalid(str(error)) from None
            for index, bridge in enumerate(bridges):
                try:
                    check_client_settings(kafka, bridge)
                except Invalid as error:
                    raise Invalid(error.problem, f"[{index}]{error.path}") from None
        return bridges


def client_settings(settings: KafkaBridgeSettings, kind: str) -> Dict[str, Any]:
    """The librdkafka settings of a bridge's ``producer`` or ``consumer``: acks from all
    replicas, no time limit on a delivery (the buffer bounds what waits), librdkafka's queue
    bounded a little above the buffer; no consumer group, no commits; the ``client`` settings
    last."""
    common = {"bootstrap.servers": ",".join(settings.servers),
              "client.id": f"twisted_mqtt-{settings.name}"}
    if kind == "producer":
        specific: Dict[str, Any] = {
            "acks": "all", "linger.ms": 5, "message.timeout.ms": 0,
            "queue.buffering.max.messages": min(settings.max_buffered_messages + 1,
                                                2_147_483_647),
            "queue.buffering.max.kbytes": min(settings.max_buffered_bytes // 1024 + 1024,
                                              2_147_483_647)}
    else:
        specific = {"group.id": f"twisted_mqtt-{settings.name}", "enable.auto.commit": False,
                    "enable.auto.offset.store": False}
    return {**common, **specific, **settings.client}


def check_client_settings(kafka: Any, settings: KafkaBridgeSettings) -> None:
    """``Invalid`` if librdkafka refuses the settings of the bridge's clients (checked by
    making each without servers: nothing connects)."""
    for kind, make, needed in (("producer", kafka.Producer, settings.egress),
                               ("consumer", kafka.Consumer, settings.ingress)):
        if not needed:
            continue
        values = dict(client_settings(settings, kind), logger=_KafkaLog(settings.name))
        del values["bootstrap.servers"]
        try:
            client = make(values)
        except (kafka.KafkaException, ValueError, TypeError) as error:
            reason = error.args[0].str() if error.args and hasattr(error.args[0], "str") \
                else str(error)
            raise Invalid(f"librdkafka refuses it: {reason}", ".client") from None
        if kind == "consumer":
            client.close()


# -- egress records ------------------------------------------------------------------------------


def record_headers(client: ClientInfo, message: Message) -> List[Tuple[str, bytes]]:
    """The MQTT metadata of ``message`` as Kafka headers: ``mqtt.topic``, ``mqtt.qos``,
    ``mqtt.retain``, ``mqtt.clientid``, ``mqtt.username`` (if any), ``mqtt.content_type`` (if
    any), then each v5 user property under its own name, but those named ``mqtt.*`` (in any
    case), which would let a client forge the metadata."""
    headers = [("mqtt.topic", message.topic.encode()), ("mqtt.qos", b"%d" % message.qos),
               ("mqtt.retain", b"1" if message.retain else b"0"),
               ("mqtt.clientid", client.client_id.encode())]
    if client.username is not None:
        headers.append(("mqtt.username", client.username.encode()))
    props = message.properties
    if props.content_type is not None:
        headers.append(("mqtt.content_type", props.content_type.encode()))
    headers.extend((name, text.encode()) for name, text in props.user_properties
                   if not name[:5].lower() == "mqtt.")
    return headers


def comqtt_envelope(client: ClientInfo, message: Message, now: float) -> bytes:
    """comqtt's JSON envelope of a published message: ``action``, ``clientid``, ``username``,
    ``topics`` (one), ``payload`` (base64, as Go encodes bytes) and ``ts`` (Unix seconds)."""
    return json.dumps({
        "action": "publish", "clientid": client.client_id, "username": client.username or "",
        "topics": [message.topic], "payload": base64.b64encode(message.payload).decode(),
        "ts": int(now)}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Record:
    """What is produced to Kafka for one MQTT message."""

    topic: str
    key: Optional[bytes]
    value: bytes
    headers: List[Tuple[str, bytes]]

    @property
    def size(self) -> int:
        """Its bytes, as the buffer counts them (key and value)."""
        return len(self.value) + (len(self.key) if self.key is not None else 0)


def egress_record(rule: EgressRule, client: ClientInfo, message: Message,
                  now: float) -> Optional[Record]:
    """The Kafka record of ``message`` by ``rule``, or None if its Kafka topic would not be a
    valid name (each field of the topic template is mapped by ``kafka_topic_name``)."""
    values = {"topic": message.topic, "clientid": client.client_id,
              "username": client.username or ""}
    topic = rule.topic.render({name: kafka_topic_name(values[name]) for name in rule.topic.fields})
    if not valid_kafka_topic(topic):
        return None
    key = rule.key.render(values).encode() if rule.key is not None else None
    value = (comqtt_envelope(client, message, now) if rule.envelope == "comqtt"
             else message.payload)
    return Record(topic, key, value, record_headers(client, message))


# -- ingress messages ---------------------------------------------------------------------------


def ingress_topic(rule: IngressRule, kafka_topic: str, partition: int, key: Optional[bytes],
                  headers: Optional[Sequence[Tuple[str, Optional[bytes]]]]) -> str:
    """The MQTT topic of a Kafka record by ``rule``; ``UnicodeDecodeError`` if a key or header
    it uses is not UTF-8."""
    named: Dict[str, str] = {}
    if "header" in rule.mqtt_topic.fields:
        for name, value in headers or ():
            named.setdefault(name, (value or b"").decode("utf-8"))
    values = {"kafka_topic": kafka_topic, "partition": str(partition),
              "key": (key or b"").decode("utf-8") if "key" in rule.mqtt_topic.fields else ""}
    return rule.mqtt_topic.render(values, named)


# -- the buffer ------------------------------------------------------------------------------------


class Buffer:
    """Records produced and not yet acknowledged by Kafka, bounded in messages and bytes.  A
    record that does not fit is refused and counted.  The log says once when the buffer
    becomes full, and once when it has drained below ``ROOM`` of both bounds again (so that a
    buffer at its bound does not log each record)."""

    ROOM = 0.9

    def __init__(self, name: str, max_messages: int, max_bytes: int) -> None:
        self.name = name
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages = 0
        self.bytes = 0
        self.dropped = 0
        self.full = False
        self._dropped_at_full = 0

    def take(self, size: int) -> bool:
        """Hold a record of ``size`` bytes, if it fits."""
        if self.messages >= self.max_messages or self.bytes + size > self.max_bytes:
            self.dropped += 1
            if not self.full:
                self.full = True
                self._dropped_at_full = self.dropped - 1
                log.warn("Kafka bridge {name}: buffer full ({messages} records, {bytes} bytes "
                         "awaiting Kafka): refusing messages", name=self.name,
                         messages=self.messages, bytes=self.bytes)
            return False
        self.messages += 1
        self.bytes += size
        return True

    def release(self, size: int) -> None:
        """A held record was acknowledged by Kafka, or failed."""
        self.messages -= 1
        self.bytes -= size
        if (self.full and self.messages <= self.max_messages * self.ROOM
                and self.bytes <= self.max_bytes * self.ROOM):
            self.full = False
            log.info("Kafka bridge {name}: buffer has room again ({dropped} messages refused "
                     "while it was full)", name=self.name,
                     dropped=self.dropped - self._dropped_at_full)


# -- the bridge ------------------------------------------------------------------------------------


class KafkaBridge(Service, Hook):
    """One Kafka bridge: a hook of the broker (egress) and a service started and stopped with
    the broker service (the Kafka client, ingress)."""

    def __init__(self, broker: Any, settings: KafkaBridgeSettings, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.broker = broker
        self.settings = settings
        self.reactor = reactor
        self.name = f"kafka:{settings.name}"
        self.buffer = Buffer(settings.name, settings.max_buffered_messages,
                             settings.max_buffered_bytes)
        self.inline = InlineClient(broker, f"$kafka-bridge/{settings.name}")
        """What ingress publishes through (its messages are not sent back to Kafka)."""
        self.up = False
        """Whether the Kafka client holds a connection to a Kafka broker."""
        self.produced = 0
        """Records Kafka acknowledged."""
        self.failed = 0
        """Records Kafka refused (or that timed out, with a ``message.timeout.ms``)."""
        self.invalid = 0
        """Messages whose Kafka topic (egress) or MQTT topic (ingress) was not valid."""
        self.consumed = 0
        """Records published into MQTT."""
        self.producer: Any = None
        self.consumer: Any = None
        self._poll: Optional[LoopingCall] = None
        self._held: Optional[Tuple[Message, Deferred[Any]]] = None
        self._rules: Dict[str, Optional[EgressRule]] = {}
        self._ingress: Dict[str, IngressRule] = {}
        self._assigning: Optional[Deferred[Any]] = None
        self._retry: Any = None
        self._known = False
        self._failing = 0
        self._stopping = False

    def __repr__(self) -> str:
        return f"<KafkaBridge {self.settings.name} {','.join(self.settings.servers)}>"

    # -- start and stop ----------------------------------------------------------------------

    def startService(self) -> None:
        """Create the Kafka clients, install the hook (and the ack barrier), start polling."""
        kafka = load_kafka()
        super().startService()
        settings = self.settings
        producer = kafka.Producer(self.client_settings("producer")) if settings.egress else None
        consumer = kafka.Consumer(self.client_settings("consumer")) if settings.ingress else None
        self.attach(producer, consumer)
        self._poll = LoopingCall(self.poll)
        self._poll.clock = self.reactor
        self._poll.start(settings.poll_interval, now=False)
        log.info("Kafka bridge {name}: {servers}, {egress} egress and {ingress} ingress rules, "
                 "ack: {ack}", name=settings.name, servers=",".join(settings.servers),
                 egress=len(settings.egress), ingress=len(settings.ingress), ack=settings.ack)

    def client_settings(self, kind: str) -> Dict[str, Any]:
        """The librdkafka settings of the ``producer`` or ``consumer`` (``client_settings``),
        with its callbacks into this bridge."""
        callbacks: Dict[str, Any] = {"error_cb": self._on_error,
                                     "logger": _KafkaLog(self.settings.name)}
        if kind == "producer" or not self.settings.egress:  # one client tells the state
            callbacks.update({"statistics.interval.ms": 1000, "stats_cb": self._on_stats})
        return {**client_settings(self.settings, kind), **callbacks}

    def attach(self, producer: Any, consumer: Any = None) -> None:
        """Bridge through these confluent-kafka clients (a Producer for egress, a Consumer for
        ingress): install the hook, the ack barrier (``ack: kafka``) and the $SYS figures.
        ``poll`` must then be called often."""
        self.producer, self.consumer = producer, consumer
        broker = self.broker
        if producer is not None:
            broker.hooks.add(self)
            if self.settings.ack == "kafka":
                broker.ack_barriers.append(self.barrier)
        if consumer is not None:
            self._ingress = {topic: rule for rule in self.settings.ingress
                             for topic in rule.topics}
            self._assign()
        broker.figure_sources.append(self.figures)

    def stopService(self) -> Deferred[None]:
        """Stop taking messages and reading records; let the producer deliver what it holds for
        up to ``STOP_DRAIN`` seconds (polled on the reactor, which runs the delivery callbacks),
        then drop what is left (logged)."""
        super().stopService()
        broker = self.broker
        if self in list(broker.hooks):
            broker.hooks.remove(self)
        if self.barrier in broker.ack_barriers:
            broker.ack_barriers.remove(self.barrier)
        if self.figures in broker.figure_sources:
            broker.figure_sources.remove(self.figures)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.consumer is not None:
            self.consumer.close()  # no consumer group to leave: it does not wait
            self.consumer = None
        stopped: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + STOP_DRAIN

        def drain() -> None:
            self.poll()
            if self.buffer.messages and self.reactor.seconds() < deadline:
                self.reactor.callLater(0.01, drain)
                return
            if self._poll is not None and self._poll.running:
                self._poll.stop()
            if self.buffer.messages:
                log.warn("Kafka bridge {name}: stopped with {count} records not delivered",
                         name=self.settings.name, count=self.buffer.messages)
                self.producer.purge(in_queue=True, in_flight=True, blocking=False)
                self.poll()
            self.producer = None
            stopped.callback(None)

        if self.producer is None:
            if self._poll is not None and self._poll.running:
                self._poll.stop()
            stopped.callback(None)
        else:
            self._stopping = True
            drain()
        return stopped

    def _in_thread(self, work: Callable[[], Any]) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), work)

    # -- egress ---------------------------------------------------------------------------------

    def rule_for(self, topic: str) -> Optional[EgressRule]:
        """The first egress rule whose filters match ``topic`` (remembered per topic)."""
        rules = self._rules
        try:
            return rules[topic]
        except KeyError:
            pass
        if len(rules) >= 10_000:
            rules.clear()
        found = rules[topic] = next((r for r in self.settings.egress if r.matches(topic)), None)
        return found

    def on_published(self, client: ClientInfo, message: Message, count: int) -> None:
        """Produce a message a client published, if a rule matches it (in ``ack: kafka`` mode,
        keep what its acknowledgement waits for)."""
        if self.producer is None or client.client_id == self.inline.client_id:
            return
        rule = self.rule_for(message.topic)
        if rule is None:
            return
        record = egress_record(rule, client, message, self.broker.now)
        # An inline client's message is never acknowledged, and may be published by a hook
        # while a client's PUBLISH is routed: only network clients' messages are held.
        hold = message.qos > 0 and self.settings.ack == "kafka" and client.listener != "inline"
        if record is None:
            self.invalid += 1
            log.warn("Kafka bridge {name}: topic {topic!r} makes no valid Kafka topic name; "
                     "message not produced", name=self.settings.name, topic=message.topic)
            return
        if not self.buffer.take(record.size):
            if hold:
                self._held = (message, fail(AckRefused(
                    f"Kafka bridge {self.settings.name}: buffer full")))
            return
        done: Optional[Deferred[Any]] = Deferred() if hold else None
        size = record.size

        def delivered(error: Any, _: Any) -> None:
            self._delivered(error, size, done)

        try:
            self.producer.produce(record.topic, record.value, record.key, headers=record.headers,
                                  on_delivery=delivered)
        except BufferError:
            self.buffer.release(size)
            self.buffer.take(self.buffer.max_bytes + 1)  # counted and logged as full
            if done is not None:
                self._held = (message, fail(AckRefused(
                    f"Kafka bridge {self.settings.name}: buffer full")))
            return
        if done is not None:
            self._held = (message, done)

    def barrier(self, message: Optional[Message]) -> Optional[Deferred[Any]]:
        """In ``ack: kafka`` mode, what the acknowledgement of ``message`` waits for: Kafka's
        acknowledgement of its record (None for a message no rule produced)."""
        held = self._held
        if held is None or held[0] is not message:
            return None
        self._held = None
        return held[1]

    def _delivered(self, error: Any, size: int, done: Optional[Deferred[Any]]) -> None:
        """Kafka acknowledged a record (``error`` None) or gave it up: free its place and
        answer its publisher (``ack: kafka``).  The first failure of a run is logged, and the
        run's length when a record goes through again."""
        self.buffer.release(size)
        if error is None:
            self.produced += 1
            if not self.up:
                self._state(True)
            if self._failing:
                log.info("Kafka bridge {name}: records go through again ({count} failed)",
                         name=self.settings.name, count=self._failing)
                self._failing = 0
        else:
            self.failed += 1
            if not self._failing and not self._stopping:
                log.warn("Kafka bridge {name}: Kafka refused a record: {error}",
                         name=self.settings.name, error=error.str())
            self._failing += 1
        if done is None:
            return
        if error is None:
            done.callback(None)
        else:  # never acknowledged: the publisher is told (v5) and disconnected
            done.errback(AckRefused(f"Kafka refused the message: {error.str()}",
                                    ReasonCode.UNSPECIFIED_ERROR))

    # -- ingress --------------------------------------------------------------------------------

    def _assign(self) -> None:
        """Look the ingress topics' partitions up (in a thread: it blocks) and assign them;
        retried every few seconds while Kafka does not answer."""
        consumer = self.consumer
        kafka = load_kafka()
        topics = list(self._ingress)

        def look_up() -> List[Any]:
            partitions: List[Any] = []
            for topic in topics:
                metadata = consumer.list_topics(topic, timeout=5.0)
                found = metadata.topics.get(topic)
                if found is None or found.error is not None or not found.partitions:
                    raise LookupError(f"topic {topic}: "
                                      f"{found.error if found is not None else 'not found'}")
                start = (kafka.OFFSET_END if self._ingress[topic].start == "end"
                         else kafka.OFFSET_BEGINNING)
                partitions.extend(kafka.TopicPartition(topic, p, start)
                                  for p in sorted(found.partitions))
            return partitions

        def assign(partitions: List[Any]) -> None:
            if self.consumer is consumer and self.running:
                consumer.assign(partitions)
                log.info("Kafka bridge {name}: reading {count} partitions of {topics}",
                         name=self.settings.name, count=len(partitions),
                         topics=", ".join(topics))

        def again(failure: Any) -> None:
            if self.consumer is consumer and self.running:
                log.warn("Kafka bridge {name}: cannot find the partitions to read ({error}); "
                         "trying again in 5 s", name=self.settings.name,
                         error=failure.getErrorMessage())
                self._retry = self.reactor.callLater(5.0, self._assign)

        self._assigning = self._in_thread(look_up).addCallbacks(assign, again)

    def _consume(self) -> None:
        records = self.consumer.consume(1000, 0)
        for record in records:
            error = record.error()
            if error is not None:
                if not error.code() == load_kafka().KafkaError._PARTITION_EOF:
                    log.warn("Kafka bridge {name}: {error}", name=self.settings.name,
                             error=error.str())
                continue
            rule = self._ingress.get(record.topic())
            if rule is None:
                continue
            try:
                topic = ingress_topic(rule, record.topic(), record.partition(), record.key(),
                                      record.headers())
                self.inline.publish(topic, record.value() or b"", rule.qos, rule.retain)
            except (UnicodeDecodeError, ValueError) as problem:
                self.invalid += 1
                log.warn("Kafka bridge {name}: record {topic}[{partition}]@{offset} not "
                         "published: {problem}", name=self.settings.name,
                         topic=record.topic(), partition=record.partition(),
                         offset=record.offset(), problem=problem)
                continue
            self.consumed += 1

    # -- driving the client ---------------------------------------------------------------------

    def poll(self) -> None:
        """Serve the clients' callbacks and fetched records without waiting."""
        if self.producer is not None:
            self.producer.poll(0)
        if self.consumer is not None:
            self._consume()
        self.broker.flush()

    def _on_error(self, error: Any) -> None:
        """librdkafka's errors (called from ``poll``, on the reactor thread): losing the
        connections is a change of state (logged once), other errors are logged."""
        errors = load_kafka().KafkaError
        code = error.code()
        if code == errors._ALL_BROKERS_DOWN:
            self._state(False, error.str())
        elif code not in (errors._TRANSPORT, errors._RESOLVE):  # each try: in the state
            log.warn("Kafka bridge {name}: {error}", name=self.settings.name, error=error.str())

    def _on_stats(self, text: str) -> None:
        """librdkafka's statistics (each second): whether a Kafka broker is connected."""
        try:
            brokers = json.loads(text).get("brokers", {})
        except ValueError:
            return
        up = any(b.get("state") == "UP" for b in brokers.values())
        if up or self._known:
            self._state(up, "no connection to any Kafka broker")

    def _state(self, up: bool, why: str = "") -> None:
        """Note whether Kafka is reachable; log a change (and the first state known)."""
        if self._known and up == self.up:
            return
        self._known = True
        self.up = up
        if up:
            log.info("Kafka bridge {name}: connected to Kafka", name=self.settings.name)
        else:
            log.warn("Kafka bridge {name}: Kafka unavailable ({why}); {messages} records "
                     "buffered (at most {max_messages} or {max_bytes} bytes)",
                     name=self.settings.name, why=why, messages=self.buffer.messages,
                     max_messages=self.buffer.max_messages, max_bytes=self.buffer.max_bytes)

    # -- figures ----------------------------------------------------------------------------------

    def figures(self) -> Dict[str, Any]:
        """Its $SYS figures, by topic suffix (``bridges/kafka/NAME/produced``...)."""
        prefix = f"bridges/kafka/{self.settings.name}/"
        return {prefix + name: read(self) for name, _, _, read in FIGURES}

    @classmethod
    def collect_metrics(cls, bridges: Iterable[KafkaBridge]) -> Iterator[Any]:
        """Prometheus families for ``bridges`` (``mqtt_kafka_bridge_*``), labelled by bridge
        name."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        bridges = list(bridges)
        for name, help_text, counter, read in FIGURES:
            kind = CounterMetricFamily if counter else GaugeMetricFamily
            family = kind("mqtt_kafka_bridge_" + name.replace("/", "_"), help_text,
                          labels=["bridge"])
            for bridge in bridges:
                family.add_metric([bridge.settings.name], read(bridge))
            yield family


FIGURES: Tuple[Tuple[str, str, bool, Callable[[KafkaBridge], int]], ...] = (
    ("connected", "1 while the Kafka client is connected to a Kafka broker", False,
     lambda bridge: int(bridge.up)),
    ("produced", "Records Kafka acknowledged", True, lambda bridge: bridge.produced),
    ("failed", "Records Kafka refused", True, lambda bridge: bridge.failed),
    ("dropped", "Messages not produced, the buffer full", True,
     lambda bridge: bridge.buffer.dropped),
    ("invalid", "Messages not bridged, their topic invalid on the other side", True,
     lambda bridge: bridge.invalid),
    ("consumed", "Kafka records published into MQTT", True, lambda bridge: bridge.consumed),
    ("buffered/messages", "Records produced, awaiting Kafka's acknowledgement", False,
     lambda bridge: bridge.buffer.messages),
    ("buffered/bytes", "Bytes (keys and values) of those records", False,
     lambda bridge: bridge.buffer.bytes),
)
"""Each figure: $SYS suffix, meaning, whether it is a counter, how to read it."""


class _KafkaLog:
    """librdkafka's log lines, into the broker's log (at debug level: the bridge logs state
    changes itself)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def log(self, level: int, text: str, *args: Any) -> None:
        """The ``logging.Logger`` method librdkafka calls."""
        log.debug("Kafka bridge {name}: {text}", name=self.name, text=text % args if args else text)


__all__ = ["KafkaBridge", "KafkaBridgeSettings", "EgressRule", "IngressRule", "bridge_settings",
           "egress_record", "record_headers", "comqtt_envelope", "kafka_topic_name", "Buffer",
           "Template"]
