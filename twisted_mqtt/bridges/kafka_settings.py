"""The Kafka bridge's settings: the ``kafka_bridges`` entries of the configuration file, their
templates and checks, and the librdkafka settings of its clients.  Importing it does not import
confluent-kafka (``load_kafka`` does)."""

from __future__ import annotations

import importlib
import platform
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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
from twisted_mqtt.topics import matches

log = Logger()

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
        self.headers = frozenset(header for _, name, header in self.parts if name == "header")
        """The names of the ``{header:NAME}`` fields."""

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
    """Whether Kafka accepts ``name`` as a topic name, and it is not one of Kafka's internal
    topics (``__consumer_offsets``, ``__transaction_state``...: names starting with ``__``)."""
    return (bool(_KAFKA_TOPIC.fullmatch(name)) and name not in (".", "..")
            and not name.startswith("__"))


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
    max_kafka_topics: int = 10_000
    ingress_username: Optional[str] = None
    """If set, ingress asks the ACL whether this user may publish each record's topic."""
    """Distinct Kafka topics egress produces to, at most (a topic template of ``{topic}`` or
    ``{clientid}`` would otherwise let clients make Kafka create topics without end)."""
    poll_interval: float = 0.01
    client: Dict[str, Any] = field(default_factory=dict)
    """librdkafka settings passed as they are (``compression.type``, ``security.protocol``...)."""

    def __repr__(self) -> str:
        shown = {name: MASK if secret_setting(name) else value
                 for name, value in self.client.items()}
        return (f"KafkaBridgeSettings(name={self.name!r}, servers={self.servers!r}, "
                f"egress={self.egress!r}, ingress={self.ingress!r}, ack={self.ack!r}, "
                f"max_buffered_messages={self.max_buffered_messages!r}, "
                f"max_buffered_bytes={self.max_buffered_bytes!r}, "
                f"max_kafka_topics={self.max_kafka_topics!r}, "
                f"ingress_username={self.ingress_username!r}, "
                f"poll_interval={self.poll_interval!r}, client={shown!r})")


MASK = "********"
SECRET_WORDS = ("password", "secret", "key", "token", "oauthbearer.config")
"""A librdkafka setting whose name contains one of these is never shown (``sasl.password``,
``ssl.key.password``, ``ssl.key.pem``, ``sasl.oauthbearer.client.secret``...)."""


def secret_setting(name: str) -> bool:
    """Whether the librdkafka setting ``name`` holds a secret."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


BRIDGE_OWNED = {
    "queue.buffering.max.messages": "the buffer's bound: set max_buffered_messages",
    "queue.buffering.max.kbytes": "the buffer's bound: set max_buffered_bytes",
    "enable.auto.commit": "ingress commits no offsets",
    "enable.auto.offset.store": "ingress commits no offsets",
}
"""librdkafka settings the bridge sets itself, and why a ``client`` entry may not change them."""

DEBUG_LEAKS = frozenset({"all", "msg", "protocol", "conf", "security", "sasl"})
"""librdkafka ``debug`` contexts that log records, requests or settings."""


def check_settings(settings: KafkaBridgeSettings) -> None:
    """``Invalid`` (at ``.client.NAME``) for a ``client`` setting that would break what the
    bridge promises: its memory bounds, ``ack: kafka`` (``acks`` other than ``all``), or its
    logs (a ``debug`` context that logs records or settings)."""
    for name, value in settings.client.items():
        if name in BRIDGE_OWNED:
            raise Invalid(f"set by the bridge ({BRIDGE_OWNED[name]})", f".client.{name}")
        if name in ("acks", "request.required.acks") and settings.ack == "kafka" \
                and str(value).lower() not in ("all", "-1"):
            raise Invalid(f"ack: kafka needs acks: all (every in-sync replica), not {value!r}",
                          f".client.{name}")
        if name == "debug":
            leaks = sorted(DEBUG_LEAKS.intersection(
                part.strip().lower() for part in str(value).split(",")))
            if leaks:
                raise Invalid(f"debug contexts {', '.join(leaks)} log records, requests or "
                              "settings (secrets included); choose others (broker, topic, "
                              "queue...)", f".client.{name}")


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
    "max_kafka_topics": (Integer(1), KafkaBridgeSettings.max_kafka_topics,
                         "distinct Kafka topics egress produces to, at most (a message for "
                         "another one is not produced)"),
    "ingress_username": (Maybe(Text()), None,
                         "ask the ACL whether this user may publish each ingress record's "
                         "topic; null: the ACL is not asked"),
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
    settings = KafkaBridgeSettings(**values)
    check_settings(settings)
    return settings


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
        values = dict(client_settings(settings, kind), logger=KafkaLog(settings.name))
        del values["bootstrap.servers"]
        try:
            client = make(values)
        except (kafka.KafkaException, ValueError, TypeError) as error:
            reason = error.args[0].str() if error.args and hasattr(error.args[0], "str") \
                else str(error)
            raise Invalid(f"librdkafka refuses it: {reason}", ".client") from None
        if kind == "consumer":
            client.close()


class KafkaLog:
    """librdkafka's log lines, into the broker's log (at debug level: the bridge logs state
    changes itself)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def log(self, level: int, text: str, *args: Any) -> None:
        """The ``logging.Logger`` method librdkafka calls."""
        log.debug("Kafka bridge {name}: {text}", name=self.name, text=text % args if args else text)
