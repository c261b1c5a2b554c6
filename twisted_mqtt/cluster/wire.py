"""How messages travel between nodes: records packed many to a Redis command (sans-IO).

A record is one message for one node: flags (QoS, RETAIN), the origin client id (for No
Local on the receiving node), the shared subscription it is for (empty: the node's plain
subscriptions), the time it has left to live in milliseconds (0xFFFFFFFF: no expiry), the
topic, the v5 property block and the payload; a QoS 1/2 record then ends with the message's
identity (flag 0x08; 16 bytes: the epoch of the node where it entered the cluster and its
number there), the same in every copy, so that a session reached by two copies of it (one
forwarded by the node it moved from) keeps one.  A batch is records one after another, each
prefixed with its length.

A run record (flag 0x10) carries a run of plain QoS 0 PUBLISH packets to one topic as their
publisher sent them (``codec.PublishRun``): the origin, the topic, the packet count, the size of
the largest packet, the bytes before each payload, then the packets, so that the receiving node
sends them on to its subscribers as one slice, as a single broker does.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

from twisted_mqtt.codec import PublishRun, _properties, encode_properties
from twisted_mqtt.properties import NO_PROPERTIES
from twisted_mqtt.session import Message

NO_EXPIRY = 0xFFFFFFFF
IDENTIFIED = 0x08
"""The flag of a record that ends with an identity."""
RUN = 0x10
"""The flag of a run record."""
RUN_V5 = 0x20
"""The flag of a run record whose packets are MQTT 5 ones."""


def identity(epoch: int, number: int) -> bytes:
    """The identity of message ``number`` entering the cluster at the node of ``epoch``."""
    return epoch.to_bytes(8, "big") + number.to_bytes(8, "big")


def encode_record(message: Message, retain: bool, share: str, now: float,
                  ident: bytes = b"") -> Optional[bytes]:
    """One record for ``message`` (None when it has expired), ending with the identity
    ``ident`` (16 bytes, or none)."""
    expires_at = message.expires_at
    if expires_at is None:
        left = NO_EXPIRY
    else:
        left = int((expires_at - now) * 1000)
        if left <= 0:
            return None
        left = min(left, NO_EXPIRY - 1)
    origin = (message.origin or "").encode("utf-8")
    shared = share.encode("utf-8")
    topic = message.topic.encode("utf-8")
    return b"".join((
        bytes(((message.qos << 1) | retain | (IDENTIFIED if ident else 0),)),
        len(origin).to_bytes(2, "big"), origin,
        len(shared).to_bytes(2, "big"), shared,
        left.to_bytes(4, "big"),
        len(topic).to_bytes(2, "big"), topic,
        encode_properties(message.properties),
        message.payload,
        ident,
    ))


def encode_run(run: PublishRun, origin: str) -> bytes:
    """The run record of ``run``, published by client ``origin``."""
    sender = origin.encode("utf-8")
    topic = run.topic.encode("utf-8")
    return b"".join((
        bytes((RUN | (RUN_V5 if run.v5 else 0),)),
        len(sender).to_bytes(2, "big"), sender,
        len(topic).to_bytes(2, "big"), topic,
        run.count.to_bytes(4, "big"), run.largest.to_bytes(4, "big"), run.head.to_bytes(2, "big"),
        run.data(),
    ))


def decode_run(record: bytes) -> Tuple[PublishRun, str]:
    """The run of a run record and the client id that published it; ValueError for a record
    whose fields do not add up."""
    stop = 3 + ((record[1] << 8) | record[2])
    origin = record[3:stop].decode("utf-8")
    pos = stop + 2 + ((record[stop] << 8) | record[stop + 1])
    topic = record[stop + 2:pos].decode("utf-8")
    count = int.from_bytes(record[pos:pos + 4], "big")
    largest = int.from_bytes(record[pos + 4:pos + 8], "big")
    head = (record[pos + 8] << 8) | record[pos + 9]
    start = pos + 10
    if not topic or count < 2 or not largest or start + count * 2 > len(record):
        raise ValueError("bad run record")
    run = PublishRun(topic, record, start, len(record), largest, head,
                     bool(record[0] & RUN_V5))
    run.count = count
    return run, origin


def pack(records: List[bytes]) -> bytes:
    """A batch of records."""
    return b"".join(len(record).to_bytes(4, "big") + record for record in records)


def decode_record(record: bytes, now: float) -> Tuple[Message, str]:
    """The message of a record (its expiry counted from ``now``) and its shared
    subscription ("" for none); ValueError (or a codec error) for a bad record."""
    flags = record[0]
    stop = 3 + ((record[1] << 8) | record[2])
    origin = record[3:stop].decode("utf-8")
    pos = stop + 2 + ((record[stop] << 8) | record[stop + 1])
    share = record[stop + 2:pos].decode("utf-8") if pos > stop + 2 else ""
    left = int.from_bytes(record[pos:pos + 4], "big")
    stop = pos + 6 + ((record[pos + 4] << 8) | record[pos + 5])
    topic = record[pos + 6:stop].decode("utf-8")
    if record[stop] == 0:  # no properties
        props, pos = NO_PROPERTIES, stop + 1
    else:
        props, pos = _properties(record, stop, len(record), "PUBLISH")
    expires_at = None if left == NO_EXPIRY else now + left / 1000
    payload = record[pos:-16] if flags & IDENTIFIED else record[pos:]
    message = Message(topic, payload, (flags >> 1) & 3, bool(flags & 1), props, expires_at,
                      origin or None)
    return message, share


def record_identity(record: bytes) -> bytes:
    """The identity a record ends with (b"" for none)."""
    return record[-16:] if record[0] & IDENTIFIED else b""


def unpack(batch: bytes) -> Iterator[bytes]:
    """The records of a batch."""
    pos = 0
    end = len(batch)
    while pos + 4 <= end:
        stop = pos + 4 + int.from_bytes(batch[pos:pos + 4], "big")
        if stop > end:
            raise ValueError("truncated cluster batch")
        yield batch[pos + 4:stop]
        pos = stop
