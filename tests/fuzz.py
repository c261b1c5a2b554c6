"""A network fuzzer: random and mutated MQTT packets over real sockets against a broker process.

Every case is one TCP connection.  It is generated from ``(seed, index)`` alone, so any case can be
shown again or replayed on its own: a CONNECT (usually valid, for level 3, 4 or 5) followed by a
few packets of any type -- those a client may send, those only a server sends, the reserved types
0 and 15, floods of unacknowledged QoS 1/2 messages past the Receive Maximum -- each built with
the codec from random fields (or taken from the byte cases of tests/catalogue.py) and then,
often, mutated: bits flipped, bytes set to edge values, truncated or extended, the remaining
length rewritten (huge, non-minimal, off by one), an invalid UTF-8 string spliced in, the v5
property block replaced by random properties (unknown identifiers, repeated ones, wrong
lengths).  The bytes of a case are split at random points across several writes.

A run sends the cases in batches, ``concurrency`` connections at a time, and checks:

- the broker logs no ``Traceback`` and no ``Unhandled`` error (a batch that makes one is replayed
  case by case to name the cases that cause it);
- no connection hangs: after its bytes and a PINGREQ, each connection gets a PINGRESP or is
  closed, and once the client half-closes it the broker closes within a deadline;
- a fresh valid client is served (CONNECT, SUBSCRIBE, QoS 1 PUBLISH round trip) before, during
  and after every batch;
- what the broker sends to a client whose CONNECT was not mutated decodes without error;
- once the clients have left and the state they made is cleared, the broker's RSS is within
  ``rss_tolerance`` of its value after the warm-up.  The retained messages the cases publish
  (random topics, payloads up to 70 KB) are cleared after every batch, and the broker runs with
  a short ``maximum_session_expiry``, so that the state of the run does not grow with its
  length: what grows is then memory the broker did not give back.

    python -m tests.fuzz --cases 50000              # starts a broker (python -m twisted_mqtt)
    python -m tests.fuzz --seed 7 --show 123        # the bytes of case 123 of seed 7
    python -m tests.fuzz --port 1883 --pid 4242     # against a running broker
    python -m tests.fuzz --broker-arg=--auth-ledger=ledger.yaml --concurrency 200
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tests.catalogue import CATALOGUE
from twisted_mqtt.codec import CodecError, Decoder, encode, encode_string, encode_varint
from twisted_mqtt.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from twisted_mqtt.properties import SPECS, Properties, WireType

HOST = "127.0.0.1"
LEVELS = (3, 4, 5)
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
# A user property whose encoding marks where the v5 property block is, to replace it.
MARK_PAIR = ("\x01fz-mark", "")
MARK_BLOCK = encode_varint(13) + b"\x26" + encode_string(MARK_PAIR[0]) + encode_string("")
# A string whose encoding is replaced by invalid UTF-8 after encoding.
MARK_TEXT = "\x02fz-text"
BAD_UTF8 = (b"\xc0\x80", b"\xed\xa0\x80", b"\xff", b"a\x00b", b"\xf4\x90\x80\x80", b"\xe2\x82",
            b"\xef\xbf\xbf", b"\x7f", b"\xc2\x9f")
CLIENT_IDS = 256
EXCEPTION_LINE = re.compile(r"\s*[\w.]+(Error|Exception|Exit)\b")
SESSION_EXPIRY = 3
WORDS = ("fz", "a", "b", "c", "dev", "", " ", "é", "\ufeff", "\U0001f600")
ODD_WORDS = ("$SYS", "$share", "+", "#", "\x00", "\x01", "\x7f", "\ufffe", "x" * 300)
TOPICS = ("fz/a", "fz/b/c", "fz/d", "fz/a/b/c/d/e")
WILD_TOPICS = ("fz/#", "fz/+/c", "#", "+/+", "$share/g/fz/a", "$SYS/#", "fz/a", "+")
EDGE_BYTES = (0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xC0, 0xFE, 0xFF)
EDGE_INTS = (0, 1, 2, 127, 128, 255, 256, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)


@dataclass(frozen=True)
class FuzzCase:
    """One connection's bytes, in the writes that send them."""

    seed: int
    index: int
    level: int
    chunks: Tuple[bytes, ...]
    notes: Tuple[str, ...]
    connect_intact: bool
    """The first packet is a CONNECT that was not mutated (its level is ``level``)."""

    def describe(self) -> str:
        """The case as text: where it comes from, what was done, and its bytes in hex."""
        data = b"".join(self.chunks)
        splits = ",".join(str(len(c)) for c in self.chunks)
        return (f"case seed={self.seed} index={self.index} level={self.level} "
                f"({len(data)} bytes in writes of {splits})\n  "
                + "\n  ".join(self.notes) + f"\n  hex: {data.hex()}")


# ---------------------------------------------------------------------------------------------
# Generation.


class Rng(random.Random):
    """A seeded generator with a case's ``chaos``: the chance of each odd choice (an invalid
    field, a mutation, a packet a client must not send)."""

    chaos = 0.1

    def odd(self) -> bool:
        return self.random() < self.chaos


def _text(rng: Rng, most: int = 4) -> str:
    return "/".join(rng.choice(ODD_WORDS if rng.odd() else WORDS)
                    for _ in range(rng.randint(1, most)))


def _topic(rng: Rng, wild: bool) -> str:
    if rng.odd():
        return rng.choice(("/".join(["l"] * rng.choice((127, 128, 129, 300, 1200))), MARK_TEXT,
                           "t" * rng.choice((0, 1, 1000, 65535)), _text(rng, most=6)))
    if rng.random() < 0.7:
        return rng.choice(WILD_TOPICS if wild else TOPICS)
    return _text(rng, most=6)


def _int(rng: Rng, low: int, high: int) -> int:
    if rng.random() < 0.3:
        fitting = [v for v in EDGE_INTS if low <= v <= high]
        if fitting:
            return rng.choice(fitting)
    return rng.randint(low, high)


def _properties(rng: Rng, kind: str) -> Properties:
    """Properties for a packet of ``kind`` (names of properties.py), odd values by chaos."""
    values: Dict[str, Any] = {}
    for spec in SPECS.values():
        if kind not in spec.packets or rng.random() > 0.25:
            continue
        if spec.name.startswith("authentication") and not rng.odd():
            continue
        wire = spec.wire
        if spec.name == "user_property":
            values["user_properties"] = tuple(
                (_text(rng, most=1), _text(rng, most=1)) for _ in range(rng.randint(1, 3)))
        elif spec.name == "subscription_identifier":
            values["subscription_identifiers"] = tuple(
                _int(rng, 0 if rng.odd() else 1, 268_435_455) for _ in range(rng.randint(1, 2)))
        elif wire is WireType.BYTE:
            values[spec.name] = _int(rng, 0, 255 if rng.odd() else 1)
        elif wire is WireType.TWO_BYTE:
            values[spec.name] = _int(rng, 0 if rng.odd() else 1, 0xFFFF)
        elif wire is WireType.FOUR_BYTE:
            values[spec.name] = _int(rng, 0 if rng.odd() else 1, 0xFFFFFFFF)
        elif wire is WireType.VARINT:
            values[spec.name] = _int(rng, 0, 268_435_455)
        elif wire is WireType.STRING:
            values[spec.name] = _text(rng, most=2)
        else:
            values[spec.name] = rng.randbytes(rng.randint(0, 20))
    return Properties(**values)


def _raw_properties(rng: Rng) -> bytes:
    """A property block of random properties: any identifier, repeated ones, bad values."""
    parts = []
    for _ in range(rng.randint(0, 6)):
        ident = rng.choice(list(SPECS)) if rng.random() < 0.85 else rng.randrange(256)
        spec = SPECS.get(ident)
        wire = spec.wire if spec and rng.random() < 0.85 else rng.choice(list(WireType))
        if wire is WireType.BYTE:
            value = bytes((rng.choice(EDGE_BYTES),))
        elif wire is WireType.TWO_BYTE:
            value = _int(rng, 0, 0xFFFF).to_bytes(2, "big")
        elif wire is WireType.FOUR_BYTE:
            value = _int(rng, 0, 0xFFFFFFFF).to_bytes(4, "big")
        elif wire is WireType.VARINT:
            value = encode_varint(_int(rng, 0, 268_435_455))
            if rng.random() < 0.1:
                value = b"\xff\xff\xff\xff\x01"
        elif wire is WireType.STRING_PAIR:
            value = encode_string(_text(rng, most=1)) * 2
        else:
            raw = rng.choice(BAD_UTF8) if rng.random() < 0.3 else _text(rng, most=2).encode()
            value = len(raw).to_bytes(2, "big") + raw
        entry = bytes((ident,)) + value
        parts.append(entry * (2 if rng.random() < 0.2 else 1))
    body = b"".join(parts)
    if rng.random() < 0.1:
        return encode_varint(max(0, len(body) + rng.choice((-1, 1, 1000)))) + body
    return encode_varint(len(body)) + body


def _props_or_mark(rng: Rng, level: int, kind: str) -> Tuple[Properties, bool]:
    """Properties for a packet: at level 5, by chaos the marker later replaced by random ones."""
    if level == 5 and rng.odd():
        return Properties(user_properties=(MARK_PAIR,)), True
    return _properties(rng, kind) if level == 5 else Properties(), False


def _connect(rng: Rng, level: int) -> Tuple[Connect, bool]:
    props, marked = _props_or_mark(rng, level, "CONNECT")
    if level == 5 and rng.random() < 0.2:
        props = replace(props, session_expiry_interval=_int(rng, 0, 0xFFFFFFFF))
    will = None
    if rng.random() < 0.3:
        will = Will(_topic(rng, wild=rng.odd()), rng.randbytes(rng.randint(0, 30)),
                    rng.randint(0, 3 if rng.odd() else 2), rng.random() < 0.3,
                    _properties(rng, "WILL") if level == 5 else Properties())
    username = password = None
    if rng.random() < 0.2:
        username = MARK_TEXT if rng.odd() else _text(rng, most=1)
        password = rng.randbytes(rng.randint(0, 10)) if rng.random() < 0.5 else None
    elif rng.odd():
        password = b"pw"
    client_id = rng.choice(("", MARK_TEXT, "c" * 300)) if rng.odd() else (
        f"fz{rng.randrange(CLIENT_IDS)}")
    return Connect(client_id, level, rng.random() < 0.6, _int(rng, 0, 600), username, password,
                   will, props), marked


def _subscription(rng: Rng, level: int) -> Subscription:
    odd = rng.odd()
    return Subscription(_topic(rng, wild=True), rng.choice((0, 1, 2, 3) if odd else (0, 1, 2)),
                        level == 5 and rng.random() < 0.2, level == 5 and rng.random() < 0.2,
                        rng.choice((0, 1, 2, 3) if odd else (0, 1, 2)) if level == 5 else 0)


def _packet(rng: Rng, level: int, name: str) -> Tuple[Any, bool]:
    """A packet of type ``name`` with random fields; True if its properties are the marker."""
    def pid() -> int:
        return _int(rng, 0, 0xFFFF) if rng.odd() else rng.randint(1, 8)

    def reason() -> int:
        return rng.randrange(256) if rng.odd() else rng.choice((0, 0x10, 0x80, 0x83, 0x87))

    if name == "CONNECT":
        return _connect(rng, level)
    if name in ("PINGREQ", "PINGRESP"):
        return (PingReq() if name == "PINGREQ" else PingResp()), False
    props, marked = _props_or_mark(rng, level, name)
    if name == "PUBLISH":
        qos = rng.choice((0, 1, 2))
        if level == 5 and rng.random() < 0.3:
            props = replace(props, topic_alias=_int(rng, 0 if rng.odd() else 1, 70),
                            message_expiry_interval=rng.choice((None, 0xFFFFFFFF, 1)))
        payload = rng.randbytes(rng.choice((0, 1, 10, 100, 1000, 70000)) if rng.random() < 0.2
                                else rng.randint(0, 40))
        topic = "" if level == 5 and props.topic_alias and rng.random() < 0.5 else _topic(
            rng, wild=rng.odd())
        return Publish(topic, payload, qos, rng.random() < 0.3, rng.odd(),
                       pid() if qos else None, props), marked
    if name in ("PUBACK", "PUBREC", "PUBREL", "PUBCOMP"):
        cls = {"PUBACK": PubAck, "PUBREC": PubRec, "PUBREL": PubRel, "PUBCOMP": PubComp}[name]
        return cls(pid(), reason(), props), marked
    if name == "SUBSCRIBE":
        count = rng.choice((0, 1, 50)) if rng.odd() else rng.choice((1, 1, 2, 5))
        return Subscribe(pid(), tuple(_subscription(rng, level) for _ in range(count)),
                         props), marked
    if name == "UNSUBSCRIBE":
        count = rng.choice((0, 1, 50)) if rng.odd() else rng.choice((1, 1, 3))
        return Unsubscribe(pid(), tuple(_topic(rng, wild=True) for _ in range(count)),
                           props), marked
    if name == "CONNACK":
        return ConnAck(reason(), rng.random() < 0.5, props), marked
    if name == "SUBACK":
        return SubAck(pid(), tuple(reason() for _ in range(rng.randint(0, 3))), props), marked
    if name == "UNSUBACK":
        return UnsubAck(pid(), tuple(reason() for _ in range(rng.randint(0, 3))), props), marked
    if name == "DISCONNECT":
        if level == 5 and rng.random() < 0.3:
            props = replace(props, session_expiry_interval=_int(rng, 0, 0xFFFFFFFF))
        return Disconnect(reason(), props), marked
    return Auth(rng.choice((0, 0x18, 0x19, reason())), props), marked


# The packets a client sends after CONNECT, with weights; by chaos, any other type instead.
FOLLOWERS = {"PUBLISH": 30, "SUBSCRIBE": 12, "UNSUBSCRIBE": 6, "PUBACK": 5, "PUBREC": 5,
             "PUBREL": 5, "PUBCOMP": 5, "PINGREQ": 4, "DISCONNECT": 2}
ODD_FOLLOWERS = ("CONNECT", "CONNACK", "SUBACK", "UNSUBACK", "PINGRESP", "AUTH", "RESERVED",
                 "FLOOD")
# QoS 2 messages of a flood: more than the broker's default Receive Maximum (1024).
FLOOD = 1100
CHAOS = (0.01, 0.05, 0.2, 0.5)
# The byte cases of tests/catalogue.py (valid and invalid) by the level of the decoder that
# reads them (None: the first packet of a connection).
CATALOGUE_BYTES: Dict[Optional[int], List[Tuple[str, bytes]]] = {}
for _case in CATALOGUE:
    CATALOGUE_BYTES.setdefault(_case.level, []).append((_case.name, _case.data))


def _reframe(data: bytes, body: bytes) -> bytes:
    """``data``'s first byte with ``body`` and its remaining length."""
    return data[:1] + encode_varint(len(body)) + body


def _body(data: bytes) -> bytes:
    """What follows the fixed header (as far as a possibly damaged length field can tell)."""
    pos = 1
    while pos < min(len(data), 5) and data[pos] & 0x80:
        pos += 1
    return data[pos + 1:]


def _encode(rng: Rng, level: int, name: str) -> Tuple[bytes, str, bool]:
    """One packet's bytes, a note saying what it is, and whether it was encoded unchanged."""
    if name == "FLOOD":
        qos = rng.choice((1, 2))
        return (b"".join(encode(Publish("fz/flood", b"f", qos, packet_id=number), level)
                         for number in range(1, FLOOD + 1)),
                f"{FLOOD} QoS {qos} PUBLISH to fz/flood, never acknowledged", False)
    if name == "RESERVED":
        first = rng.choice((0x00, 0xF0)) | rng.randrange(16)
        body = rng.randbytes(rng.randint(0, 8))
        return (bytes((first,)) + encode_varint(len(body)) + body, f"reserved type {first:#04x}",
                False)
    packet, marked = _packet(rng, level, name)
    try:
        data = encode(packet, level)
    except (ValueError, OverflowError, UnicodeEncodeError) as error:
        body = rng.randbytes(rng.randint(0, 16))
        return (bytes((0x30,)) + encode_varint(len(body)) + body, f"PUBLISH random ({error})",
                False)
    note, unchanged = repr(packet), True
    if len(note) > 300:
        note = note[:300] + "..."
    if marked and MARK_BLOCK in data:
        raw = _raw_properties(rng)
        data = _reframe(data, _body(data).replace(MARK_BLOCK, raw, 1))
        note += f" with properties {raw.hex()}"
        unchanged = False
    text = encode_string(MARK_TEXT)
    while text in data:
        bad = rng.choice(BAD_UTF8)
        data = _reframe(data, _body(data).replace(text, len(bad).to_bytes(2, "big") + bad, 1))
        note += f" with string {bad.hex()}"
        unchanged = False
    return data, note, unchanged


def _length_field(rng: Rng, length: int) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return b"\xff\xff\xff\x7f"
    if choice == 1:
        return b"\xff\xff\xff\xff\x01"
    if choice == 2:
        return encode_varint(length)[:-1] + b"\x80" + encode_varint(length)[-1:]
    if choice == 3:
        return encode_varint(max(0, length + rng.choice((-2, -1, 1, 2))))
    if choice == 4:
        return encode_varint(_int(rng, 0, 268_435_455))
    return b"\x80\x80\x80\x80"


def _mutate(rng: Rng, data: bytes) -> Tuple[bytes, str]:
    """``data`` changed once, and what was done."""
    buf = bytearray(data)
    kind = rng.randrange(8)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            bit = rng.randrange(len(buf) * 8)
            buf[bit // 8] ^= 1 << (bit % 8)
        return bytes(buf), "bits flipped"
    if kind == 1:
        at = rng.randrange(len(buf))
        buf[at] = rng.choice(EDGE_BYTES)
        return bytes(buf), f"byte {at} set"
    if kind == 2:
        return data[:rng.randrange(len(data))], "truncated"
    if kind == 3:
        return data + rng.randbytes(rng.randint(1, 20)), "extended"
    if kind == 4:
        return data[:1] + _length_field(rng, len(_body(data))) + _body(data), "length rewritten"
    if kind == 5:
        return bytes(((data[0] & 0xF0) | rng.randrange(16),)) + data[1:], "flags changed"
    if kind == 6:
        return bytes((rng.randrange(16) << 4 | (data[0] & 0x0F),)) + data[1:], "type changed"
    at = rng.randrange(len(buf))
    del buf[at:at + rng.randint(1, 8)]
    return bytes(buf), "slice removed"


def make_case(seed: int, index: int) -> FuzzCase:
    """Case ``index`` of ``seed`` (the same every time)."""
    rng = Rng(f"{seed}:{index}")
    rng.chaos = rng.choice(CHAOS)
    level = rng.choice(LEVELS)
    packets: List[bytes] = []
    notes: List[str] = [f"chaos {rng.chaos}"]
    connect_intact = False
    for position in range(rng.choice((1, 2, 3, 4, 6, 10))):
        if rng.odd() and (position or rng.random() < 0.5):
            name = rng.choice(ODD_FOLLOWERS)
        elif position == 0:
            name = "CONNECT"
        else:
            name = rng.choices(list(FOLLOWERS), list(FOLLOWERS.values()))[0]
        data, note, unchanged = _encode(rng, level, name)
        if rng.random() < 0.05:
            title, data = rng.choice(CATALOGUE_BYTES[level if position else None])
            note, unchanged = f"catalogue case {title}", False
        if rng.odd() and data:
            unchanged = False
            for _ in range(rng.randint(1, 3)):
                if not data:
                    break
                data, how = _mutate(rng, data)
                note += "; " + how
        if position == 0:
            connect_intact = name == "CONNECT" and unchanged
        packets.append(data)
        notes.append(note)
    stream = b"".join(packets)
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 5)))) \
        if len(stream) > 1 else []
    if len(stream) < 64 and rng.random() < 0.1:
        cuts = list(range(1, len(stream)))
    chunks = tuple(stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)]))
    return FuzzCase(seed, index, level, chunks, tuple(notes), connect_intact)


# ---------------------------------------------------------------------------------------------
# Running.


@dataclass
class Outcome:
    """What happened on one connection."""

    case: FuzzCase
    answered: bool = False
    closed: bool = False
    """Closed by the broker before the client half-closed."""
    hang: bool = False
    error: str = ""
    bad_output: str = ""


@dataclass
class Report:
    """Figures and failures of a run."""

    cases: int = 0
    seconds: float = 0.0
    answered: int = 0
    closed: int = 0
    quiet: int = 0
    failures: List[str] = field(default_factory=list)
    probe_seconds: List[float] = field(default_factory=list)
    rss_cold_kb: int = 0
    rss_start_kb: int = 0
    rss_peak_kb: int = 0
    rss_end_kb: int = 0

    def summary(self) -> str:
        probe = max(self.probe_seconds, default=0.0)
        return (f"{self.cases} cases in {self.seconds:.1f} s: {self.answered} answered PINGREQ, "
                f"{self.closed} closed by the broker, {self.quiet} waited for more bytes; "
                f"{len(self.failures)} failures; slowest fresh-client probe {probe * 1000:.0f} ms;"
                f" RSS cold {self.rss_cold_kb} kB, start (after the warm-up) "
                f"{self.rss_start_kb} kB, peak {self.rss_peak_kb} kB, "
                f"end {self.rss_end_kb} kB")


async def _read_until(reader: asyncio.StreamReader, received: bytearray, done: Callable[[], bool],
                      timeout: float) -> bool:
    """Read into ``received`` until ``done()``, EOF (True) or ``timeout`` (False: still open)."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            data = await asyncio.wait_for(reader.read(65536), left)
        except asyncio.TimeoutError:
            return False
        except OSError:
            return True
        if not data:
            return True
        received += data
    return False


def _check_output(case: FuzzCase, received: bytearray) -> str:
    """A decoding error in what the broker sent, if its CONNECT was intact."""
    if not case.connect_intact or not received:
        return ""
    decoder = Decoder(protocol_level=case.level)
    try:
        decoder.feed(bytes(received))
    except CodecError as error:
        return f"broker output does not decode: {error!r}: {bytes(received[:200]).hex()}"
    return ""


class _Pong:
    """Whether the PINGREQ was answered: a PINGRESP decoded from what the broker sent when the
    CONNECT was intact (messages may follow it), else the last two bytes."""

    def __init__(self, case: FuzzCase, received: bytearray) -> None:
        self.decoder: Optional[Decoder] = Decoder(case.level) if case.connect_intact else None
        self.received = received
        self.seen = 0
        self.found = False

    def __call__(self) -> bool:
        if self.decoder is not None and not self.found:
            fresh, self.seen = bytes(self.received[self.seen:]), len(self.received)
            try:
                self.found = any(isinstance(p, PingResp) for p in self.decoder.feed(fresh))
            except CodecError:
                self.decoder = None
        return self.found or self.received.endswith(PINGRESP)


async def run_case(case: FuzzCase, port: int, quiet: float, deadline: float) -> Outcome:
    """Send one case; wait for PINGRESP or close, then half-close and wait for the close."""
    outcome = Outcome(case)
    received = bytearray()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), deadline)
    except (OSError, asyncio.TimeoutError) as error:
        outcome.error = f"cannot connect: {error!r}"
        return outcome
    try:
        for chunk in case.chunks:
            writer.write(chunk)
            await writer.drain()
        writer.write(PINGREQ)
        await writer.drain()
    except OSError:
        outcome.closed = True
    if not outcome.closed:
        pong = _Pong(case, received)
        outcome.closed = await _read_until(reader, received, pong, quiet)
        outcome.answered = pong()
    if not outcome.closed:
        try:
            writer.write_eof()
        except OSError:
            pass
        outcome.hang = not await _read_until(reader, received, lambda: False, deadline)
    writer.transport.abort()
    outcome.bad_output = _check_output(case, received)
    return outcome


async def _expect(reader: asyncio.StreamReader, decoder: Decoder, pending: List[Any],
                  kind: type, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for packet in pending:
            if isinstance(packet, kind):
                pending.remove(packet)
                return packet
        data = await asyncio.wait_for(reader.read(65536), max(0.0, deadline - time.monotonic()))
        if not data:
            raise ConnectionError(f"closed while waiting for {kind.__name__}")
        pending += decoder.feed(data)


async def probe(port: int, name: str, timeout: float) -> float:
    """A fresh valid client: CONNECT, SUBSCRIBE, QoS 1 PUBLISH to itself; the seconds it took."""
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        decoder = Decoder(protocol_level=4)
        pending: List[Any] = []
        topic = f"fzprobe/{name}"
        writer.write(encode(Connect(f"fzprobe-{name}", 4, True, 60), 4))
        connack = await _expect(reader, decoder, pending, ConnAck, timeout)
        assert connack.reason_code == 0, connack
        writer.write(encode(Subscribe(1, (Subscription(topic, 1),)), 4))
        await _expect(reader, decoder, pending, SubAck, timeout)
        writer.write(encode(Publish(topic, b"probe", 1, packet_id=2), 4))
        await _expect(reader, decoder, pending, PubAck, timeout)
        message = await _expect(reader, decoder, pending, Publish, timeout)
        assert message.payload == b"probe", message
        writer.write(encode(Disconnect(), 4))
    finally:
        writer.transport.abort()
    return time.monotonic() - started


async def clear_retained(port: int, quiet: float = 0.5, timeout: float = 10.0) -> int:
    """Remove the retained messages the cases left (read through ``#``, each then replaced by
    an empty one); return how many."""
    reader, writer = await asyncio.open_connection(HOST, port)
    decoder = Decoder(protocol_level=4)
    pending: List[Any] = []
    writer.write(encode(Connect("fz-clear", 4, True, 0), 4))
    await _expect(reader, decoder, pending, ConnAck, timeout)
    writer.write(encode(Subscribe(1, (Subscription("#", 0),)), 4))
    await _expect(reader, decoder, pending, SubAck, timeout)
    while True:
        try:
            data = await asyncio.wait_for(reader.read(1 << 20), quiet)
        except asyncio.TimeoutError:
            break
        if not data:
            break
        pending += decoder.feed(data)
    topics = {p.topic for p in pending if isinstance(p, Publish) and p.retain}
    for topic in topics:
        writer.write(encode(Publish(topic, b"", 0, True), 4))
    writer.write(PINGREQ)
    await writer.drain()
    await _expect(reader, decoder, pending, PingResp, timeout)
    writer.transport.abort()
    return len(topics)


async def settle(port: int, timeout: float = 10.0) -> None:
    """Clear what the cases left -- retained messages, the sessions of the fuzzer's client
    ids -- and wait until the sessions of other vanished clients expired."""
    await clear_retained(port)
    for number in range(CLIENT_IDS):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(encode(Connect(f"fz{number}", 4, True, 0), 4) + encode(Disconnect(), 4))
        await _read_until(reader, bytearray(), lambda: False, timeout)
        writer.transport.abort()
    await asyncio.sleep(SESSION_EXPIRY + 2.0)


def rss_kb(pid: int) -> int:
    """VmRSS of a process, kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Target:
    """The broker under test: its port, its process id (for RSS) and a way to read its log."""

    def __init__(self, port: int, pid: Optional[int], log: Callable[[], str]) -> None:
        self.port = port
        self.pid = pid
        self.log = log
        self._seen = 0

    def new_problems(self) -> List[str]:
        """The unhandled errors logged since the last call, each as the line before it (which
        names the connection), its first line and the exception it ends with."""
        text = self.log()
        fresh, self._seen = text[self._seen:], len(text)
        lines = fresh.splitlines()
        problems = []
        for index, line in enumerate(lines):
            if "Traceback" in line or "Unhandled" in line:
                ending = next((later.strip() for later in lines[index + 1:]
                               if EXCEPTION_LINE.match(later)), "")
                before = lines[index - 1].strip() if index else ""
                problems.append(" / ".join((before, line.strip(), ending)))
        return problems

    def rss(self) -> int:
        return rss_kb(self.pid) if self.pid else 0


async def _batch(target: Target, cases: List[FuzzCase], concurrency: int, quiet: float,
                 deadline: float) -> List[Outcome]:
    gate = asyncio.Semaphore(concurrency)

    async def one(case: FuzzCase) -> Outcome:
        async with gate:
            return await run_case(case, target.port, quiet, deadline)

    return list(await asyncio.gather(*(one(case) for case in cases)))


async def _replay(target: Target, cases: List[FuzzCase], quiet: float,
                  deadline: float) -> List[str]:
    """Run ``cases`` one at a time; describe each after which the log shows an error."""
    culprits = []
    target.new_problems()
    for case in cases:
        await run_case(case, target.port, quiet, deadline)
        await asyncio.sleep(0.05)
        problems = target.new_problems()
        if problems:
            culprits.append(case.describe() + "\n  log: " + " | ".join(problems[:3]))
    return culprits


async def fuzz(target: Target, seed: int, cases: int, concurrency: int = 50, batch: int = 500,
               quiet: float = 0.3, deadline: float = 10.0, probe_timeout: float = 10.0,
               rss_tolerance: float = 0.2, indices: Optional[Sequence[int]] = None,
               warmup: int = 1, out: Any = None) -> Report:
    """Run ``cases`` cases of ``seed`` (or the cases ``indices``) against ``target``.

    The RSS the end is compared with is taken after the first ``warmup`` batches, once the
    state they made is cleared: the broker's first cases import the modules it loads lazily,
    fill its caches and size the allocator's pools, a cost paid once (``rss_cold_kb`` is the
    RSS before any case).
    """
    report = Report()
    started = time.monotonic()
    numbers = list(indices) if indices is not None else list(range(cases))
    await probe(target.port, "start", probe_timeout)
    target.new_problems()
    report.rss_cold_kb = report.rss_start_kb = report.rss_peak_kb = target.rss()
    for number, first in enumerate(range(0, len(numbers), batch)):
        if number == warmup:
            await settle(target.port)
            report.rss_start_kb = target.rss()
        made = [make_case(seed, n) for n in numbers[first:first + batch]]
        during = asyncio.ensure_future(probe(target.port, f"during{first}", probe_timeout * 3))
        outcomes = await _batch(target, made, concurrency, quiet, deadline)
        for label, waiter in (("during", during), ("after", None)):
            try:
                took = await (waiter if waiter is not None else
                              probe(target.port, f"after{first}", probe_timeout))
                report.probe_seconds.append(took)
            except (OSError, asyncio.TimeoutError, AssertionError, ConnectionError,
                    CodecError) as error:
                report.failures.append(f"fresh client not served {label} batch at case "
                                       f"{numbers[first]}: {error!r}")
        report.cases += len(made)
        for outcome in outcomes:
            report.answered += outcome.answered
            report.closed += outcome.closed and not outcome.answered
            report.quiet += not outcome.closed and not outcome.answered
            if outcome.hang or outcome.error or outcome.bad_output:
                what = ("hang: not closed within the deadline after EOF" if outcome.hang else
                        outcome.error or outcome.bad_output)
                report.failures.append(f"{what}\n{outcome.case.describe()}")
        await asyncio.sleep(0.2)
        problems = target.new_problems()
        if problems:
            culprits = await _replay(target, made, quiet, deadline) or [
                "(not reproduced one case at a time: it needs other connections of the batch; "
                "the line before the traceback names the client)"]
            report.failures.append(
                f"broker log errors in batch {numbers[first]}..{numbers[first] + len(made) - 1}"
                f": {' | '.join(problems[:3])}\n" + "\n".join(culprits))
        report.rss_peak_kb = max(report.rss_peak_kb, target.rss())
        await clear_retained(target.port)
        if out is not None:
            print(f"{report.cases} cases, {len(report.failures)} failures, "
                  f"RSS {target.rss()} kB, {time.monotonic() - started:.0f} s", file=out,
                  flush=True)
    await settle(target.port)
    report.rss_end_kb = target.rss()
    if target.pid and report.rss_end_kb > report.rss_start_kb * (1 + rss_tolerance):
        report.failures.append(f"RSS {report.rss_end_kb} kB after the clients left, more than "
                               f"{rss_tolerance:.0%} over {report.rss_start_kb} kB at the start")
    report.seconds = time.monotonic() - started
    return report


def broker_options(directory: Path) -> List[str]:
    """Options for the broker under test: its own options, and a configuration file in
    ``directory`` that lets the sessions of vanished clients expire after SESSION_EXPIRY
    seconds (cases make persistent sessions under mutated client ids; without a bound, the
    messages queued for them are state that rightly stays, and the RSS check would count it)."""
    config = directory / "fuzz-broker.yaml"
    config.write_text(f"capabilities:\n  maximum_session_expiry: {SESSION_EXPIRY}\n")
    return ["--config", str(config)]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=5,
                        help="batches run before the RSS the end is compared with is taken")
    parser.add_argument("--show", type=int, nargs="*", help="print these cases and stop")
    parser.add_argument("--only", type=int, nargs="*", help="run only these case indices")
    parser.add_argument("--port", type=int, help="a running broker's port (default: start one)")
    parser.add_argument("--pid", type=int, help="the running broker's process id (for RSS)")
    parser.add_argument("--log", help="the running broker's log file")
    parser.add_argument("--broker-arg", action="append", default=[],
                        help="an option for the broker started (repeatable), e.g. "
                             "--broker-arg=--store=sqlite:fuzz.db")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    if args.show is not None:
        for index in args.show:
            print(make_case(seed, index).describe())
        return 0
    print(f"seed {seed}", flush=True)
    broker = None
    if args.port:
        log_path = Path(args.log) if args.log else None
        target = Target(args.port, args.pid,
                        lambda: log_path.read_text(errors="replace") if log_path else "")
    else:
        from tests.conftest import BrokerProcess

        workdir = Path(tempfile.mkdtemp(prefix="fuzz-"))
        broker = BrokerProcess([sys.executable, "-m", "twisted_mqtt", "--listen",
                                "tcp:0:interface=127.0.0.1", *broker_options(workdir),
                                *args.broker_arg],
                               workdir / "broker.log")
        broker.wait_ready()
        print(f"broker log: {broker.log_path}", flush=True)
        target = Target(broker.port, broker.proc.pid, broker.log)
    try:
        report = asyncio.run(fuzz(target, seed, args.cases, args.concurrency, args.batch,
                                  indices=args.only, warmup=args.warmup, out=sys.stderr))
    finally:
        if broker is not None:
            broker.stop()
    for failure in report.failures:
        print("FAILURE: " + failure)
    print(f"seed {seed}: " + report.summary())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
