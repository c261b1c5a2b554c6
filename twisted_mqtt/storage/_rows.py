"""Stored records rebuilt from their fields, every field checked: the SQLite and Redis stores
read each row through these functions, so that a row holding data no broker writes (a topic
stored as a BLOB, QoS 7, packet id 70000, an integer payload...) is reported the same way by
both, naming its table, whose row it is and the field, rather than restored into a session
that fails later.

A function that builds a record raises ``BadField``; ``Rows.read`` turns that into a
``BadRow`` (which says where the row is) and leaves the row out."""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from twisted_mqtt.bans import Ban, BanError
from twisted_mqtt.codec import _properties
from twisted_mqtt.errors import CodecError
from twisted_mqtt.packets import Subscription, Will
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.storage import (
    NEVER,
    BadRow,
    SessionHead,
    StoredDelivery,
    StoredMessage,
    StoredSession,
    StoredSubscription,
)
from twisted_mqtt.topics import validate_topic_filter

T = TypeVar("T")

MAX_PACKET_ID = 0xFFFF
MAX_SUBSCRIPTION_ID = 0x0FFFFFFF
"""The largest Subscription Identifier (a Variable Byte Integer) [MQTT-3.8.2.1.2]."""
MAX_STRING = 0xFFFF
"""The most bytes an MQTT UTF-8 string holds."""


class BadField(ValueError):
    """A stored field whose value no broker writes: ``field`` is its name, ``problem`` what
    is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field}: {problem}")
        self.field = field
        self.problem = problem


class NotUTF8(bytes):
    """Stored text that is not valid UTF-8 (what ``decode_text`` gives instead of a string)."""


def decode_text(raw: bytes) -> Any:
    """Stored text as a string, or as ``NotUTF8`` bytes if it does not decode (an SQLite
    ``text_factory``: one bad row then does not fail the whole query)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return NotUTF8(raw)


def show(value: Any) -> str:
    """A short ``repr`` of a stored value, for messages."""
    text = repr(bytes(value) if isinstance(value, NotUTF8) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, NotUTF8):
        return f"text that is not valid UTF-8 ({show(value)})"
    if isinstance(value, bytes):
        return f"a BLOB ({show(value)})"
    if isinstance(value, str):
        return f"text ({show(value)})"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a real number ({value})"
    return f"a {type(value).__name__} ({show(value)})"


def text(field: str, value: Any, empty: bool = False) -> str:
    """``value`` if it is a string an MQTT packet can carry (non-empty unless ``empty``)."""
    if not isinstance(value, str):
        raise BadField(field, f"{_kind(value)}, not text")
    if not value and not empty:
        raise BadField(field, "empty")
    if "\x00" in value:
        raise BadField(field, f"{show(value)} contains U+0000")
    try:
        size = len(value) if value.isascii() else len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadField(field, f"{show(value)} is not valid UTF-8") from None
    if size > MAX_STRING:
        raise BadField(field, f"{size} bytes long, more than {MAX_STRING}")
    return value


def optional_text(field: str, value: Any) -> Optional[str]:
    """``value``: None or a string (see ``text``)."""
    return None if value is None else text(field, value, empty=True)


def integer(field: str, value: Any, low: int, high: int) -> int:
    """``value`` if it is an integer from ``low`` to ``high``."""
    if type(value) is int and low <= value <= high:
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadField(field, f"{_kind(value)}, not an integer")
    if not low <= value <= high:
        if high - low == 2:
            raise BadField(field, f"{value} is not {low}, {low + 1} or {high}")
        raise BadField(field, f"{value} is not in {low}..{high}")
    return value


def qos(field: str, value: Any) -> int:
    """``value`` if it is a QoS level: 0, 1 or 2."""
    return integer(field, value, 0, 2)


def flag(field: str, value: Any) -> bool:
    """``value`` as a boolean: true, false, 1 or 0."""
    if value is True or value is False:
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BadField(field, f"{_kind(value)}, not 0 or 1")


def moment(field: str, value: Any) -> Optional[float]:
    """``value``: None, or a finite, non-negative number of seconds."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise BadField(field, f"{_kind(value)}, not a number")
    if not math.isfinite(value) or value < 0:
        raise BadField(field, f"{value} is not a finite number of seconds at or after 0")
    return float(value)


def blob(field: str, value: Any) -> bytes:
    """``value`` if it is bytes (a BLOB), not text or a number."""
    if not isinstance(value, bytes) or isinstance(value, NotUTF8):
        raise BadField(field, f"{_kind(value)}, not a BLOB")
    return bytes(value)


def topic_name(field: str, value: Any) -> str:
    """``value`` if it is a topic name: text without wildcards."""
    topic = text(field, value)
    if "+" in topic or "#" in topic:
        raise BadField(field, f"{show(topic)} has a wildcard; a topic name has none")
    return topic


def topic_filter(field: str, value: Any) -> str:
    """``value`` if it is a valid topic filter (shared or not)."""
    found = text(field, value)
    try:
        validate_topic_filter(found)
    except CodecError as error:
        raise BadField(field, f"not a valid topic filter ({error.message})") from None
    return found


def properties(field: str, value: Any, where: str = "PUBLISH") -> Properties:
    """MQTT 5 properties from their wire encoding (with its length), None for none;
    ``where``: PUBLISH or WILL."""
    if value is None:
        return NO_PROPERTIES
    raw = blob(field, value)
    if not raw:
        return NO_PROPERTIES
    try:
        props, end = _properties(raw, 0, len(raw), where)
    except Exception as error:
        raise BadField(field, f"not {where} properties ({error})") from None
    if end != len(raw):
        raise BadField(field, f"{len(raw) - end} bytes after the properties")
    return props


def sub_ids(field: str, value: Any) -> Tuple[int, ...]:
    """Subscription identifiers (each 1..268435455), from a list or comma-separated text."""
    ids: Sequence[Any]
    if isinstance(value, str):
        try:
            ids = tuple(map(int, value.split(","))) if value else ()
        except ValueError:
            raise BadField(field, f"{show(value)} is not a list of subscription identifiers"
                           ) from None
        if not ids or 1 <= min(ids) and max(ids) <= MAX_SUBSCRIPTION_ID:
            return tuple(ids)
    elif not isinstance(value, (list, tuple)):
        raise BadField(field, f"{_kind(value)}, not a list of subscription identifiers")
    else:
        ids = value
    return tuple(integer(field, part, 1, MAX_SUBSCRIPTION_ID) for part in ids)


def packet_id(field: str, value: Any) -> int:
    """``value`` if it is a packet identifier: 1..65535."""
    return integer(field, value, 1, MAX_PACKET_ID)


# -- records ---------------------------------------------------------------------------------


def will(topic: Any, payload: Any, will_qos: Any, retain: Any, props: Any) -> Will:
    """A Will Message from its fields (``props``: wire-encoded properties or None)."""
    return Will(topic_name("will topic", topic), blob("will payload", payload),
                qos("will qos", will_qos), flag("will retain", retain),
                properties("will properties", props, "WILL"))


def head(client_id: Any, expiry: Any, level: Any, disconnected_at: Any,
         the_will: Optional[Will], next_id: Any, username: Any) -> SessionHead:
    """A session head from its fields."""
    return SessionHead(text("client_id", client_id), integer("expiry_interval", expiry, 0, NEVER),
                       integer("protocol_level", level, 3, 5),
                       moment("disconnected_at", disconnected_at), the_will,
                       packet_id("next_id", next_id), optional_text("username", username))


def subscription(client_id: Any, filter_text: Any, sub_qos: Any, no_local: Any, rap: Any,
                 handling: Any, sub_id: Any) -> StoredSubscription:
    """A session's subscription from its fields."""
    text("client_id", client_id)
    return StoredSubscription(
        Subscription(topic_filter("topic_filter", filter_text), qos("qos", sub_qos),
                     flag("no_local", no_local), flag("retain_as_published", rap),
                     integer("retain_handling", handling, 0, 2)),
        None if sub_id is None else integer("sub_id", sub_id, 1, MAX_SUBSCRIPTION_ID))


def message(topic: Any, payload: Any, message_qos: Any, retain: Any, props: Any,
            expires_at: Any, origin: Any, prefix: str = "") -> StoredMessage:
    """An application message from its fields (``props``: wire-encoded properties or None);
    ``prefix`` goes before the field names (``message_`` for a delivery's message)."""
    return StoredMessage(topic_name("topic", topic), blob("payload", payload),
                         qos(prefix + "qos", message_qos), flag(prefix + "retain", retain),
                         properties("properties", props), moment("expires_at", expires_at),
                         optional_text("origin", origin))


def delivery(key: Any, client_id: Any, the_message: StoredMessage, delivery_qos: Any,
             retain: Any, ids: Any, packet: Any, state: Any) -> StoredDelivery:
    """A queued (``packet`` None) or in-flight delivery from its fields."""
    integer("id", key, 1, 2 ** 63 - 1)
    text("client_id", client_id)
    found_qos = qos("qos", delivery_qos)
    found_state = integer("state", state, 0, 1)
    if packet is None:
        if found_state:
            raise BadField("state", "1 (PUBREL sent) but no packet id")
    else:
        packet_id("packet_id", packet)
        if found_qos == 0:
            raise BadField("packet_id", f"{packet} on a QoS 0 delivery")
        if found_state and found_qos != 2:
            raise BadField("state", f"1 (PUBREL sent) on a QoS {found_qos} delivery")
    return StoredDelivery(key, client_id, the_message, found_qos, flag("retain", retain),
                          sub_ids("sub_ids", ids), packet, found_state)


def counter(name: Any, figure: Any) -> Tuple[str, Any]:
    """A saved counter: its name and its value (a number or a list of numbers)."""
    text("name", name)
    numbers = figure if isinstance(figure, list) else [figure]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise BadField("value", f"{show(figure)} is not a count")
    return name, figure


# -- reading rows ----------------------------------------------------------------------------


class Rows:
    """The bad rows a store found while reading: ``read`` builds a record or notes why the
    row is left out."""

    def __init__(self) -> None:
        self.bad: List[BadRow] = []

    def read(self, table: str, owner: str, build: Callable[..., T], *fields: Any,
             client_id: Any = None, topic: Any = None) -> Optional[T]:
        """``build(*fields)``, or None (and a ``BadRow`` noted) if a field is bad; the row
        belongs to ``client_id``'s session or is ``topic``'s retained message."""
        try:
            return build(*fields)
        except BadField as error:
            self.bad.append(BadRow(
                table, owner, error.field, error.problem,
                client_id if isinstance(client_id, str) else None,
                topic if isinstance(topic, str) else None))
            return None

    def session(self, the_head: SessionHead, subscriptions: Sequence[StoredSubscription],
                deliveries: Sequence[StoredDelivery],
                inbound: Sequence[int]) -> StoredSession:
        """A session from its checked rows, noting an in-flight delivery whose packet id is
        another's too (the later is left out)."""
        flying: Dict[int, int] = {}
        kept = []
        for record in deliveries:
            other = flying.setdefault(record.packet_id, record.key) if record.packet_id else None
            if other is not None and other != record.key:
                self.bad.append(BadRow("deliveries", owner(record.client_id, record.key),
                                       "packet_id", f"{record.packet_id} is in flight in "
                                       f"delivery {other} too", record.client_id))
                continue
            kept.append(record)
        return StoredSession(the_head, tuple(subscriptions), tuple(kept), tuple(inbound))


def owner(client_id: Any, key: Any = None) -> str:
    """How a message names the session row of ``client_id`` (delivery ``key``)."""
    return f"client {show(client_id)}" if key is None else f"id {key}, client {show(client_id)}"


def ban(text: Any) -> Ban:
    """A ban from its stored JSON fields."""
    try:
        fields = json.loads(text)
    except (TypeError, ValueError):
        raise BadField("ban", "not JSON") from None
    if not isinstance(fields, dict):
        raise BadField("ban", "not a JSON object")
    try:
        return Ban.from_dict(fields)
    except BanError as error:
        raise BadField(error.field, error.problem) from None
