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
import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from twisted_mqtt.bridges.kafka_settings import (
    MISSING,
    EgressRule,
    IngressRule,
    KafkaBridgeSettings,
    KafkaLog,
    Template,
    bridge_settings,
    client_settings,
    kafka_topic_name,
    load_kafka,
    valid_kafka_topic,
)
from twisted_mqtt.errors import AckRefused
from twisted_mqtt.hooks import Hook
from twisted_mqtt.inline import InlineClient
from twisted_mqtt.interfaces import ClientInfo
from twisted_mqtt.packets import ReasonCode
from twisted_mqtt.session import Message

log = Logger()

STOP_DRAIN = 2.0
"""Seconds a stopping bridge waits for Kafka to acknowledge what it holds."""
REPORT_INTERVAL = 60.0
"""Seconds between two log lines about messages of one kind not passed on."""
HEADER_COST = 64
"""Bytes the buffer counts for each header of a record besides its name and value (what
librdkafka holds for it), so that many empty user properties are not free."""

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
        """Its bytes, as the buffer counts them (key, value and headers, each header
        ``HEADER_COST`` more: a client's user properties can be as large as its payload)."""
        return (len(self.value) + (len(self.key) if self.key is not None else 0)
                + sum(len(name) + len(value) + HEADER_COST for name, value in self.headers))


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
    it uses is not UTF-8, ``ValueError`` if its fields would make a topic starting with ``$``
    (``$SYS/...``) from a template that does not start with ``$`` itself (a record cannot
    reach the broker's own topics).  The other checks of a topic name (wildcards, U+0000,
    length, levels) are the inline client's."""
    named: Dict[str, str] = {}
    if "header" in rule.mqtt_topic.fields:
        wanted = rule.mqtt_topic.headers
        for name, value in headers or ():
            if name in wanted and name not in named:  # other headers may be any bytes
                named[name] = (value or b"").decode("utf-8")
    values = {"kafka_topic": kafka_topic, "partition": str(partition),
              "key": (key or b"").decode("utf-8") if "key" in rule.mqtt_topic.fields else ""}
    topic = rule.mqtt_topic.render(values, named)
    if topic[:1] == "$" and not rule.mqtt_topic.text.startswith("$"):
        raise ValueError(f"topic {topic[:100]!r} starts with $: a record cannot publish to the "
                         "broker's own topics")
    return topic


def publish_size(topic: str, payload: bytes, qos: int) -> int:
    """Bytes of the MQTT 5 PUBLISH packet of a message without properties."""
    remaining = 2 + len(topic.encode("utf-8")) + (2 if qos else 0) + 1 + len(payload)
    return 1 + (1 if remaining < 128 else 2 if remaining < 16_384
                else 3 if remaining < 2_097_152 else 4) + remaining


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

    RETRY = 5.0
    """Seconds between two look-ups of the partitions to read, while they fail."""
    LOOKUP_TIMEOUT = 5.0
    """Seconds a look-up of the partitions waits for Kafka."""

    def __init__(self, broker: Any, settings: KafkaBridgeSettings, reactor: Any = None,
                 in_thread: Optional[Callable[[Callable[[], Any]], Deferred[Any]]] = None
                 ) -> None:
        """``in_thread`` runs a blocking call and fires with its result (default: in the
        reactor's thread pool)."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.broker = broker
        self.settings = settings
        self.reactor = reactor
        self._in_thread = in_thread or self._in_pool
        self.name = f"kafka:{settings.name}"
        self.buffer = Buffer(settings.name, settings.max_buffered_messages,
                             settings.max_buffered_bytes)
        self.inline = InlineClient(broker, f"$kafka-bridge/{settings.name}")
        """What ingress publishes through (its messages are not sent back to Kafka)."""
        self.inline.info = ClientInfo(self.inline.client_id, settings.ingress_username,
                                      listener="inline", protocol_level=5)
        self._waiting: List[Any] = []
        """Records fetched and not yet published (while the ACL is asked)."""
        self._asking: Optional[Deferred[Any]] = None
        """The ACL's answer awaited about a record, if any."""
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
        self._topics: Set[str] = set()
        """The Kafka topics produced to (at most ``max_kafka_topics``)."""
        self._ingress: Dict[str, IngressRule] = {}
        self._lookups_failed = 0
        self._reported: Dict[str, Tuple[Optional[float], int]] = {}
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
                                     "logger": KafkaLog(self.settings.name)}
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

    def _in_pool(self, work: Callable[[], Any]) -> Deferred[Any]:
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
        if self.producer is None or client is self.inline.info:  # not a client of that id
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
            self._report("topic", "topic {topic!r} makes no valid Kafka topic name; message "
                         "not produced", topic=message.topic[:200])
            if hold:  # not in Kafka: never acknowledged as if it were
                self._held = (message, fail(AckRefused(
                    f"Kafka bridge {self.settings.name}: the topic makes no valid Kafka topic "
                    "name", ReasonCode.TOPIC_NAME_INVALID)))
            return
        topics = self._topics
        if record.topic not in topics:
            if len(topics) >= self.settings.max_kafka_topics:
                self.invalid += 1
                self._report("topics", "already {count} Kafka topics (max_kafka_topics); "
                             "message for a new one, {topic!r}, not produced",
                             count=len(topics), topic=record.topic)
                if hold:
                    self._held = (message, fail(AckRefused(
                        f"Kafka bridge {self.settings.name}: too many Kafka topics")))
                return
            topics.add(record.topic)
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
        except load_kafka().KafkaException as error:  # refused at once (too large...)
            self.buffer.release(size)
            self._delivered(error.args[0], 0, done, counted=False)
            if done is not None:
                self._held = (message, done)
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

    def _delivered(self, error: Any, size: int, done: Optional[Deferred[Any]],
                   counted: bool = True) -> None:
        """Kafka acknowledged a record (``error`` None) or gave it up: free its place and
        answer its publisher (``ack: kafka``).  The first failure of a run is logged, and the
        run's length when a record goes through again."""
        if counted:
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
                self._report("refused", "Kafka refused a record: {error}", error=error.str())
            self._failing += 1
        if done is None:
            return
        if error is None:
            done.callback(None)
        else:  # never acknowledged: the publisher is told (v5) and disconnected
            too_large = error.code() == load_kafka().KafkaError.MSG_SIZE_TOO_LARGE
            done.errback(AckRefused(f"Kafka refused the message: {error.str()}",
                                    ReasonCode.PACKET_TOO_LARGE if too_large
                                    else ReasonCode.UNSPECIFIED_ERROR))

    # -- ingress --------------------------------------------------------------------------------

    def _assign(self) -> None:
        """Look the ingress topics' partitions up (in a thread: it blocks) and assign them;
        retried every ``RETRY`` seconds while Kafka does not answer (the first failure is
        logged, and the success after failures)."""
        consumer = self.consumer
        kafka = load_kafka()
        topics = list(self._ingress)

        def look_up() -> List[Any]:
            partitions: List[Any] = []
            for topic in topics:
                metadata = consumer.list_topics(topic, timeout=self.LOOKUP_TIMEOUT)
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
                log.info("Kafka bridge {name}: reading {count} partitions of {topics}{after}",
                         name=self.settings.name, count=len(partitions),
                         topics=", ".join(topics), after=f" (after {self._lookups_failed} "
                         "failed look-ups)" if self._lookups_failed else "")

        def again(failure: Any) -> None:
            if self.consumer is consumer and self.running:
                if not self._lookups_failed:
                    log.warn("Kafka bridge {name}: cannot find the partitions to read "
                             "({error}); trying again every {retry:g} s",
                             name=self.settings.name, error=failure.getErrorMessage(),
                             retry=self.RETRY)
                self._lookups_failed += 1
                self._retry = self.reactor.callLater(self.RETRY, self._assign)

        self._in_thread(look_up).addCallbacks(assign, again)

    def _consume(self) -> None:
        """Publish the records fetched (at most 1000 a poll).  With ``ingress_username`` set
        and authorizers installed, each record's topic is first asked of the ACL as that user;
        while an answer is awaited, reading waits too (records stay in order)."""
        if self._asking is not None:
            return
        records = self._waiting or self.consumer.consume(1000, 0)
        self._waiting = []
        maximum_packet_size = self.broker.capabilities.maximum_packet_size
        hooks = self.broker.hooks
        ask = self.settings.ingress_username is not None and bool(hooks.authorizers)
        for index, record in enumerate(records):
            error = record.error()
            if error is not None:
                if not error.code() == load_kafka().KafkaError._PARTITION_EOF:
                    self._report("consume", "{error}", error=error.str())
                continue
            rule = self._ingress.get(record.topic())
            if rule is None:
                continue
            try:
                topic = ingress_topic(rule, record.topic(), record.partition(), record.key(),
                                      record.headers())
                value = record.value() or b""
                if publish_size(topic, value, rule.qos) > maximum_packet_size:
                    raise ValueError(f"{len(value)} bytes: larger than the broker's maximum "
                                     f"packet size ({maximum_packet_size} bytes)")
            except (UnicodeDecodeError, ValueError) as problem:
                self._not_published(record, problem)
                continue
            allowed = hooks.may_publish(self.inline.info, topic) if ask else True
            if isinstance(allowed, Deferred):
                self._waiting = records[index + 1:]
                self._asking = allowed
                allowed.addErrback(lambda _: False)  # an authorizer failing refuses
                allowed.addCallback(self._answered, rule, record, topic, value)
                return
            self._publish(rule, record, topic, value, allowed)

    def _answered(self, allowed: bool, rule: IngressRule, record: Any, topic: str,
                  value: bytes) -> None:
        """The ACL answered about a record: publish it if allowed; reading goes on."""
        self._asking = None
        if self.consumer is None:  # stopped meanwhile
            return
        self._publish(rule, record, topic, value, allowed)
        self.broker.flush()

    def _publish(self, rule: IngressRule, record: Any, topic: str, value: bytes,
                 allowed: bool) -> None:
        """Publish a record's message here, if the ACL allowed it and its topic is valid."""
        if not allowed:
            self._not_published(record, PermissionError(
                f"the ACL does not let {self.settings.ingress_username!r} publish to "
                f"{topic[:100]!r}"))
            return
        try:
            self.inline.publish(topic, value, rule.qos, rule.retain)
        except ValueError as problem:
            self._not_published(record, problem)
            return
        self.consumed += 1

    def _not_published(self, record: Any, problem: Exception) -> None:
        """Count a record not published (and log it, at most once a minute)."""
        self.invalid += 1
        self._report("record", "record {topic}[{partition}]@{offset} not published: "
                     "{problem}", topic=record.topic(), partition=record.partition(),
                     offset=record.offset(), problem=str(problem)[:200])

    def _report(self, kind: str, text: str, **fields: Any) -> None:
        """Log a message or record the bridge could not pass on, at most once per
        ``REPORT_INTERVAL`` for each ``kind``, saying how many were not logged meanwhile."""
        now = self.reactor.seconds()
        last, unsaid = self._reported.get(kind, (None, 0))
        if last is not None and now - last < REPORT_INTERVAL:
            self._reported[kind] = (last, unsaid + 1)
            return
        self._reported[kind] = (now, 0)
        log.warn("Kafka bridge {name}: " + text + (" ({unsaid} more since the last such line)"
                                                    if unsaid else ""),
                 name=self.settings.name, unsaid=unsaid, **fields)

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
        connections is a change of state (logged once), other errors are logged at most once a
        minute (a server refusing each attempt would otherwise fill the log)."""
        errors = load_kafka().KafkaError
        code = error.code()
        if code == errors._ALL_BROKERS_DOWN:
            self._state(False, error.str())
        elif code not in (errors._TRANSPORT, errors._RESOLVE):  # each try: in the state
            self._report("error", "{error}", error=error.str())

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


__all__ = ["KafkaBridge", "KafkaBridgeSettings", "EgressRule", "IngressRule", "Template",
           "bridge_settings", "egress_record", "record_headers", "comqtt_envelope",
           "ingress_topic", "kafka_topic_name", "Buffer", "MISSING"]
