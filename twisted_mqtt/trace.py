"""The packet trace: one log line per packet in and out, for operators (``--trace``).

``PacketTrace`` is a packet hook (``IPacketHook``): installed, it logs every packet a client sends
(``on_packet_read``) and every packet sent to it (``on_packet_sent``) in the namespace
``twisted_mqtt.trace``, at level info::

    sensor-1 -> PUBLISH(topic='a/b', qos=1, retain=0, packet_id=3, payload=b'hello' (5 bytes))
    sensor-1 <- PUBACK(packet_id=3)

The arrow points the way the packet goes: ``->`` from the client to the broker, ``<-`` from the
broker to the client.  The trace can be limited to clients (glob patterns on the client id) and
to topic filters (a PUBLISH whose topic matches one, a SUBSCRIBE or UNSUBSCRIBE with a filter
that overlaps one).  Removed, it costs nothing: connections go back to their fast paths.
``Broker.trace`` installs, changes and removes it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from twisted.logger import Logger

from twisted_mqtt.errors import CodecError
from twisted_mqtt.hooks import Hook
from twisted_mqtt.interfaces import ClientInfo
from twisted_mqtt.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PacketType,
    ProtocolLevel,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    connect_return_code_name,
    reason_name,
    version_name,
)
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.topics import matches, split_shared, validate_topic_filter

log = Logger(namespace="twisted_mqtt.trace")

PAYLOAD_SHOWN = 32
"""Bytes of a payload (or other binary field) shown; longer ones are cut, with their size."""

IN, OUT = "->", "<-"
"""The arrows of a packet from the client, and of one to the client."""

def shortened(data: Optional[bytes]) -> str:
    """Binary data as its first ``PAYLOAD_SHOWN`` bytes and its size: ``b'hello' (5 bytes)``;
    cut data ends with an ellipsis: ``b'hello…' (1024 bytes)``."""
    if data is None:
        return "None"
    size = len(data)
    unit = "byte" if size == 1 else "bytes"
    if size <= PAYLOAD_SHOWN:
        return f"{bytes(data)!r} ({size} {unit})"
    return f"{bytes(data[:PAYLOAD_SHOWN])!r}… ({size} {unit})"


def _reason(code: int, kind: PacketType) -> str:
    return f"0x{code:02X} {reason_name(code, kind)}"


def _properties(props: Properties) -> str:
    if props is NO_PROPERTIES or not props:
        return ""
    shown = []
    for name in props.__slots__:  # type: ignore[attr-defined]
        value = getattr(props, name)
        if value is None or value == ():
            continue
        if isinstance(value, bytes):
            shown.append(f"{name}={shortened(value)}")
        else:
            shown.append(f"{name}={value!r}")
    return ", properties=(" + ", ".join(shown) + ")"


def _will(will: Will) -> str:
    return (f", will=(topic={will.topic!r}, qos={will.qos}, retain={int(will.retain)}, "
            f"payload={shortened(will.payload)}{_properties(will.properties)})")


def _connect(packet: Connect, level: int) -> str:
    text = (f"client_id={packet.client_id!r}, version={version_name(packet.protocol_level)}, "
            f"clean_start={int(packet.clean_start)}, keep_alive={packet.keep_alive}")
    if packet.username is not None:
        text += f", username={packet.username!r}"
    if packet.password is not None:
        text += ", password=(hidden)"
    if packet.will is not None:
        text += _will(packet.will)
    return text + _properties(packet.properties)


def _connack(packet: ConnAck, level: int) -> str:
    if level == ProtocolLevel.MQTT_5:
        reason = f"reason={_reason(packet.reason_code, PacketType.CONNACK)}"
    else:
        reason = (f"return_code={packet.reason_code} "
                  f"{connect_return_code_name(packet.reason_code)}")
    return (f"session_present={int(packet.session_present)}, {reason}"
            f"{_properties(packet.properties)}")


def _publish(packet: Publish, level: int) -> str:
    text = f"topic={packet.topic!r}, qos={packet.qos}, retain={int(packet.retain)}"
    if packet.dup:
        text += ", dup=1"
    if packet.packet_id is not None:
        text += f", packet_id={packet.packet_id}"
    return text + f", payload={shortened(packet.payload)}{_properties(packet.properties)}"


def _ack(kind: PacketType) -> Callable[[Any, int], str]:
    def describe(packet: Any, level: int) -> str:
        text = f"packet_id={packet.packet_id}"
        if packet.reason_code:
            text += f", reason={_reason(packet.reason_code, kind)}"
        return text + _properties(packet.properties)
    return describe


def _subscribe(packet: Subscribe, level: int) -> str:
    shown = []
    for sub in packet.subscriptions:
        options = f"qos={sub.qos}"
        if sub.no_local:
            options += ", no_local=1"
        if sub.retain_as_published:
            options += ", retain_as_published=1"
        if sub.retain_handling:
            options += f", retain_handling={sub.retain_handling}"
        shown.append(f"{sub.topic_filter!r} ({options})")
    return (f"packet_id={packet.packet_id}, subscriptions=[{', '.join(shown)}]"
            f"{_properties(packet.properties)}")


def _suback(packet: SubAck, level: int) -> str:
    if level == ProtocolLevel.MQTT_5:
        codes = [_reason(code, PacketType.SUBACK) for code in packet.reason_codes]
    else:
        codes = ["0x80 Failure" if code == 0x80 else _reason(code, PacketType.SUBACK)
                 for code in packet.reason_codes]
    return (f"packet_id={packet.packet_id}, reasons=[{', '.join(codes)}]"
            f"{_properties(packet.properties)}")


def _unsubscribe(packet: Unsubscribe, level: int) -> str:
    filters = ", ".join(repr(topic_filter) for topic_filter in packet.topic_filters)
    return f"packet_id={packet.packet_id}, filters=[{filters}]{_properties(packet.properties)}"


def _unsuback(packet: UnsubAck, level: int) -> str:
    text = f"packet_id={packet.packet_id}"
    if packet.reason_codes:
        codes = ", ".join(_reason(code, PacketType.UNSUBACK) for code in packet.reason_codes)
        text += f", reasons=[{codes}]"
    return text + _properties(packet.properties)


def _reason_only(kind: PacketType) -> Callable[[Any, int], str]:
    def describe(packet: Any, level: int) -> str:
        if level != ProtocolLevel.MQTT_5:
            return ""
        return f"reason={_reason(packet.reason_code, kind)}{_properties(packet.properties)}"
    return describe


_DESCRIBE: Dict[type, Callable[[Any, int], str]] = {
    Connect: _connect,
    ConnAck: _connack,
    Publish: _publish,
    PubAck: _ack(PacketType.PUBACK),
    PubRec: _ack(PacketType.PUBREC),
    PubRel: _ack(PacketType.PUBREL),
    PubComp: _ack(PacketType.PUBCOMP),
    Subscribe: _subscribe,
    SubAck: _suback,
    Unsubscribe: _unsubscribe,
    UnsubAck: _unsuback,
    Disconnect: _reason_only(PacketType.DISCONNECT),
    Auth: _reason_only(PacketType.AUTH),
}


def packet_type_name(packet: Any) -> str:
    """The packet's type as the specification names it: CONNECT, PUBLISH, PINGREQ..."""
    return type(packet).__name__.upper()


def describe(packet: Any, protocol_level: int = ProtocolLevel.MQTT_5) -> str:
    """One packet as its type and fields, payloads and other binary data shortened, the
    password hidden: ``PUBLISH(topic='a/b', qos=0, retain=0, payload=b'on' (2 bytes))``."""
    describe_fields = _DESCRIBE.get(type(packet))
    name = packet_type_name(packet)
    if describe_fields is None:
        return name
    fields = describe_fields(packet, protocol_level)
    return f"{name}({fields})" if fields else name


def filters_overlap(first: str, second: str) -> bool:
    """Whether some topic matches both topic filters (``a/+`` and ``+/b`` do; ``a/#`` and
    ``b`` do not).  A shared subscription's filter is the filter after its group."""
    first_levels = split_shared(first)[1].split("/")
    second_levels = split_shared(second)[1].split("/")
    for one, other in zip(first_levels, second_levels):
        if one == "#" or other == "#":
            return True
        if one != other and one != "+" and other != "+":
            return False
    if len(first_levels) == len(second_levels):
        return True
    longer = first_levels if len(first_levels) > len(second_levels) else second_levels
    return longer[min(len(first_levels), len(second_levels))] == "#"  # a/# covers a


class PacketTrace(Hook):
    """Logs every packet in and out, of the clients matching ``clients`` (glob patterns on the
    client id, e.g. ``sensor-*``; none: every client) and, if ``topics`` are given, only the
    packets carrying a topic that matches one of those filters (PUBLISH by its topic,
    SUBSCRIBE and UNSUBSCRIBE by a filter that overlaps one).  ``ValueError`` for a bad topic
    filter."""

    def __init__(self, clients: Iterable[str] = (), topics: Iterable[str] = ()) -> None:
        self.clients: Tuple[str, ...] = ()
        self.topics: Tuple[str, ...] = ()
        self.limit(clients, topics)

    def __repr__(self) -> str:
        return f"PacketTrace(clients={list(self.clients)!r}, topics={list(self.topics)!r})"

    def limit(self, clients: Iterable[str] = (), topics: Iterable[str] = ()) -> None:
        """Trace only these clients and topics (none: all); ``ValueError`` for a bad topic
        filter."""
        topics = tuple(topics)
        for topic_filter in topics:
            try:
                validate_topic_filter(topic_filter)
            except CodecError as error:
                raise ValueError(f"bad topic filter {topic_filter!r}: {error}") from None
        self.clients = tuple(clients)
        self.topics = topics

    def describe_filters(self) -> str:
        """The filters in force, in words."""
        clients = ", ".join(self.clients) if self.clients else "every client"
        return clients + (f"; topics {', '.join(self.topics)}" if self.topics else "")

    def on_packet_read(self, client: ClientInfo, packet: Any) -> Any:
        """Log a packet from the client; it is processed unchanged."""
        self._trace(client, packet, IN)
        return packet

    def on_packet_sent(self, client: ClientInfo, packet: Any, data: bytes) -> None:
        """Log a packet to the client."""
        self._trace(client, packet, OUT)

    def _trace(self, client: ClientInfo, packet: Any, arrow: str) -> None:
        client_id = client.client_id
        if not client_id and type(packet) is Connect:
            client_id = packet.client_id
        if self.clients and not any(fnmatchcase(client_id, pattern)
                                    for pattern in self.clients):
            return
        if self.topics and not self._topic_matches(packet):
            return
        who = client_id or f"({client.address or 'unknown address'})"
        log.info("{who} {arrow} {packet_text}", who=who, arrow=arrow,
                 packet_text=describe(packet, client.protocol_level), client_id=client_id,
                 direction="in" if arrow == IN else "out", packet_type=packet_type_name(packet))

    def _topic_matches(self, packet: Any) -> bool:
        kind = type(packet)
        if kind is Publish:
            return any(matches(topic_filter, packet.topic) for topic_filter in self.topics)
        filters: List[str]
        if kind is Subscribe:
            filters = [sub.topic_filter for sub in packet.subscriptions]
        elif kind is Unsubscribe:
            filters = list(packet.topic_filters)
        else:
            return False
        return any(filters_overlap(mine, theirs) for mine in self.topics for theirs in filters)
