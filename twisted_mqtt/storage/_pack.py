"""Records as bytes: a JSON header line, then the payload as it is (for Redis values and the
wills of SQLite rows); MQTT 5 properties in their wire encoding.  Unpacking checks every field
(``twisted_mqtt.storage._rows``) and raises ``BadField``."""

from __future__ import annotations

import base64
import json
from typing import Any, List, Optional, Tuple

from twisted_mqtt.codec import encode_properties
from twisted_mqtt.packets import Will
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.storage import SessionHead, StoredMessage, StoredSubscription, _rows
from twisted_mqtt.storage._rows import BadField


def pack_properties(props: Properties) -> Optional[bytes]:
    """The wire encoding of ``props`` (with its length), or None when there are none."""
    if props is NO_PROPERTIES or props == NO_PROPERTIES:
        return None
    return encode_properties(props)


def _b64(raw: Optional[bytes]) -> Optional[str]:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def _unb64(text: Any, field: str = "properties") -> Optional[bytes]:
    if text is None:
        return None
    try:
        return base64.b64decode(str(text).encode("ascii"), validate=True)
    except ValueError:
        raise BadField(field, f"{_rows.show(text)} is not base64") from None


def _join(header: List[Any], payload: bytes) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + payload


def _split(raw: bytes, fields: int) -> Tuple[List[Any], bytes]:
    """The header (``fields`` values) and the payload of a record."""
    head, sep, payload = bytes(raw).partition(b"\n")
    if not sep:
        raise BadField("record", "no header line")
    return _header(head, fields), payload


def _header(head: bytes, fields: int) -> List[Any]:
    try:
        header = json.loads(head.decode("utf-8"))
    except ValueError as error:
        raise BadField("record", f"the header is not JSON ({error})") from None
    if not isinstance(header, list) or len(header) != fields:
        raise BadField("record", f"the header is not a list of {fields} values")
    return header


def pack_message(message: StoredMessage) -> bytes:
    """A retained message as bytes."""
    return _join([message.topic, message.qos, message.retain,
                  _b64(pack_properties(message.properties)), message.expires_at,
                  message.origin], message.payload)


def unpack_message(raw: bytes) -> StoredMessage:
    """The inverse of ``pack_message``."""
    header, payload = _split(raw, 6)
    topic, qos, retain, props, expires_at, origin = header
    return _rows.message(topic, payload, qos, retain, _unb64(props), expires_at, origin)


def pack_delivery(message: StoredMessage, qos: int, retain: bool,
                  sub_ids: Tuple[int, ...]) -> bytes:
    """What never changes in a delivery (its message, QoS, retain flag, subscription ids)."""
    return _join([qos, retain, list(sub_ids), message.topic, message.qos, message.retain,
                  _b64(pack_properties(message.properties)), message.expires_at,
                  message.origin], message.payload)


def unpack_delivery(raw: bytes) -> Tuple[StoredMessage, Any, Any, Any]:
    """The inverse of ``pack_delivery``: (message, qos, retain, sub_ids), the last three to be
    checked by ``_rows.delivery``."""
    header, payload = _split(raw, 9)
    qos, retain, sub_ids, topic, mqos, mretain, props, expires_at, origin = header
    message = _rows.message(topic, payload, mqos, mretain, _unb64(props), expires_at, origin,
                            "message_")
    return message, qos, retain, sub_ids


def pack_will(will: Optional[Will]) -> Optional[bytes]:
    """A Will Message as bytes (None for none)."""
    if will is None:
        return None
    return _join([will.topic, will.qos, will.retain,
                  _b64(pack_properties(will.properties))], will.payload)


def unpack_will(raw: Optional[bytes]) -> Optional[Will]:
    """The inverse of ``pack_will``."""
    if raw is None:
        return None
    try:
        header, payload = _split(_rows.blob("will", raw), 4)
    except BadField as error:
        raise BadField("will", error.problem) from None
    topic, qos, retain, props = header
    return _rows.will(topic, payload, qos, retain, _unb64(props, "will properties"))


def pack_head(head: SessionHead) -> bytes:
    """A session head as bytes (its client id is the key it is stored under)."""
    will = pack_will(head.will)
    return _join([head.expiry_interval, head.protocol_level, head.disconnected_at,
                  head.next_id, will is not None, head.username], will or b"")


def unpack_head(client_id: str, raw: bytes) -> SessionHead:
    """The inverse of ``pack_head``."""
    header, rest = _split(raw, 6)
    expiry, level, disconnected_at, next_id, has_will, username = header
    will = unpack_will(rest) if _rows.flag("will", has_will) else None
    return _rows.head(client_id, expiry, level, disconnected_at, will, next_id, username)


def pack_subscription(stored: StoredSubscription) -> bytes:
    """A subscription's options and identifier (its filter is the key it is stored under)."""
    s = stored.subscription
    return json.dumps([s.qos, s.no_local, s.retain_as_published, s.retain_handling,
                       stored.sub_id], separators=(",", ":")).encode("utf-8")


def unpack_subscription(client_id: str, topic_filter: Any, raw: bytes) -> StoredSubscription:
    """The inverse of ``pack_subscription``."""
    qos, no_local, rap, handling, sub_id = _header(bytes(raw), 5)
    return _rows.subscription(client_id, topic_filter, qos, no_local, rap, handling, sub_id)
