"""Records as bytes: a JSON header line, then the payload as it is (for Redis values and the
wills of SQLite rows); MQTT 5 properties in their wire encoding."""

from __future__ import annotations

import base64
import json
from typing import Any, List, Optional, Tuple

from twisted_mqtt.codec import _properties, encode_properties
from twisted_mqtt.packets import Subscription, Will
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.storage import SessionHead, StoredMessage, StoredSubscription


class BadRecord(ValueError):
    """Stored bytes that do not decode as the record they should be."""


def pack_properties(props: Properties) -> Optional[bytes]:
    """The wire encoding of ``props`` (with its length), or None when there are none."""
    if props is NO_PROPERTIES or props == NO_PROPERTIES:
        return None
    return encode_properties(props)


def unpack_properties(raw: Optional[bytes], where: str = "PUBLISH") -> Properties:
    """Properties from ``pack_properties`` output (``where``: PUBLISH or WILL)."""
    if not raw:
        return NO_PROPERTIES
    try:
        props, end = _properties(raw, 0, len(raw), where)
    except Exception as error:
        raise BadRecord(f"bad properties: {error}") from None
    if end != len(raw):
        raise BadRecord("bad properties: trailing bytes")
    return props


def _b64(raw: Optional[bytes]) -> Optional[str]:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def _unb64(text: Optional[str]) -> Optional[bytes]:
    return None if text is None else base64.b64decode(text.encode("ascii"), validate=True)


def _join(header: List[Any], payload: bytes) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + payload


def _split(raw: bytes) -> Tuple[List[Any], bytes]:
    head, sep, payload = bytes(raw).partition(b"\n")
    if not sep:
        raise BadRecord("no header line")
    try:
        header = json.loads(head.decode("utf-8"))
    except ValueError as error:
        raise BadRecord(f"bad header: {error}") from None
    if not isinstance(header, list):
        raise BadRecord("bad header: not a list")
    return header, payload


def pack_message(message: StoredMessage) -> bytes:
    """A retained message as bytes."""
    return _join([message.topic, message.qos, message.retain,
                  _b64(pack_properties(message.properties)), message.expires_at,
                  message.origin], message.payload)


def unpack_message(raw: bytes) -> StoredMessage:
    """The inverse of ``pack_message``."""
    header, payload = _split(raw)
    try:
        topic, qos, retain, props, expires_at, origin = header
        return StoredMessage(str(topic), payload, int(qos), bool(retain),
                             unpack_properties(_unb64(props)),
                             None if expires_at is None else float(expires_at),
                             None if origin is None else str(origin))
    except BadRecord:
        raise
    except (TypeError, ValueError) as error:
        raise BadRecord(f"bad message: {error}") from None


def pack_delivery(message: StoredMessage, qos: int, retain: bool,
                  sub_ids: Tuple[int, ...]) -> bytes:
    """What never changes in a delivery (its message, QoS, retain flag, subscription ids)."""
    return _join([qos, retain, list(sub_ids), message.topic, message.qos, message.retain,
                  _b64(pack_properties(message.properties)), message.expires_at,
                  message.origin], message.payload)


def unpack_delivery(raw: bytes) -> Tuple[StoredMessage, int, bool, Tuple[int, ...]]:
    """The inverse of ``pack_delivery``: (message, qos, retain, sub_ids)."""
    header, payload = _split(raw)
    try:
        qos, retain, sub_ids, topic, mqos, mretain, props, expires_at, origin = header
        message = StoredMessage(str(topic), payload, int(mqos), bool(mretain),
                                unpack_properties(_unb64(props)),
                                None if expires_at is None else float(expires_at),
                                None if origin is None else str(origin))
        return message, int(qos), bool(retain), tuple(int(i) for i in sub_ids)
    except BadRecord:
        raise
    except (TypeError, ValueError) as error:
        raise BadRecord(f"bad delivery: {error}") from None


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
    header, payload = _split(raw)
    try:
        topic, qos, retain, props = header
        return Will(str(topic), payload, int(qos), bool(retain),
                    unpack_properties(_unb64(props), "WILL"))
    except BadRecord:
        raise
    except (TypeError, ValueError) as error:
        raise BadRecord(f"bad will: {error}") from None


def pack_head(head: SessionHead) -> bytes:
    """A session head as bytes (its client id is the key it is stored under)."""
    will = pack_will(head.will)
    return _join([head.expiry_interval, head.protocol_level, head.disconnected_at,
                  head.next_id, will is not None, head.username], will or b"")


def unpack_head(client_id: str, raw: bytes) -> SessionHead:
    """The inverse of ``pack_head``."""
    header, rest = _split(raw)
    try:
        expiry, level, disconnected_at, next_id, has_will, username = header
        if username is not None and not isinstance(username, str):
            raise BadRecord("bad session: user name not a string")
        return SessionHead(client_id, int(expiry), int(level),
                           None if disconnected_at is None else float(disconnected_at),
                           unpack_will(rest) if has_will else None, int(next_id), username)
    except BadRecord:
        raise
    except (TypeError, ValueError) as error:
        raise BadRecord(f"bad session: {error}") from None


def pack_subscription(stored: StoredSubscription) -> bytes:
    """A subscription's options and identifier (its filter is the key it is stored under)."""
    s = stored.subscription
    return json.dumps([s.qos, s.no_local, s.retain_as_published, s.retain_handling,
                       stored.sub_id], separators=(",", ":")).encode("utf-8")


def unpack_subscription(topic_filter: str, raw: bytes) -> StoredSubscription:
    """The inverse of ``pack_subscription``."""
    try:
        qos, no_local, rap, handling, sub_id = json.loads(bytes(raw).decode("utf-8"))
        return StoredSubscription(
            Subscription(topic_filter, int(qos), bool(no_local), bool(rap), int(handling)),
            None if sub_id is None else int(sub_id))
    except (TypeError, ValueError) as error:
        raise BadRecord(f"bad subscription: {error}") from None
