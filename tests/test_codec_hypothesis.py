"""Property-based tests of the sans-IO codec (``twisted_mqtt.codec``) for MQTT 3.1, 3.1.1 and 5.0.

The strategies below build every control packet type with every valid combination of its fields
for each protocol level: MQTT 5 properties only where section 2.2.2.2 allows them (the table in
``properties.SPECS``), MQTT 5 reason codes only where section 2.4 allows them
(``packets.VALID_REASON_CODES``), and MQTT 3.1/3.1.1 forms without reason codes or properties.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_mqtt.codec import (
    MAX_PACKET_SIZE,
    CodecError,
    Decoder,
    Run,
    encode,
    encode_properties,
    encode_publish,
    encode_varint,
    encode_within,
    publish_template,
)
from twisted_mqtt.errors import MalformedPacket, PacketTooLarge
from twisted_mqtt.packets import (
    VALID_REASON_CODES,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    PubAckRun,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from twisted_mqtt.properties import (
    ATTRIBUTE,
    BOOLEAN_BYTES,
    DROPPABLE,
    NO_PROPERTIES,
    NONZERO,
    SPECS,
    Properties,
    PropertyId,
    WireType,
)

LEVELS = (3, 4, 5)
MAX_REMAINING_LENGTH = 268_435_455

# Hypothesis budgets: enough to explore, small enough for the whole module to stay well under the
# time limit of the suite.
ROUND_TRIP = settings(max_examples=40, deadline=None)
FUZZ = settings(max_examples=300, deadline=None)
SOME = settings(max_examples=100, deadline=None)
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# Field strategies.

# UTF-8 Encoded Strings: well-formed (no surrogates) and without U+0000 [MQTT-1.5.4-1, -2].
_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
_NAME_CHARS = st.characters(codec="utf-8", exclude_characters="\x00+#")
_LEVEL_CHARS = st.characters(codec="utf-8", exclude_characters="\x00+#/")


def texts(min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(_CHARS, min_size=min_size, max_size=max_size)


binaries = st.binary(max_size=24)
packet_ids = st.integers(1, 0xFFFF)  # non-zero [MQTT-2.2.1-3]
qos_levels = st.integers(0, 2)

# Topic names: non-empty [MQTT-4.7.3-1], no wildcards [MQTT-3.3.2-2]; "/" is common.
topic_names = st.lists(st.text(_NAME_CHARS, max_size=6), min_size=1, max_size=4).map(
    "/".join
).filter(bool)

# Topic filters: levels that are "+" or plain text, optionally ending in "#" [MQTT-4.7.1-1, -2].
_filter_levels = st.lists(
    st.one_of(st.just("+"), st.text(_LEVEL_CHARS, max_size=5)), min_size=1, max_size=4
)


@st.composite
def plain_filters(draw: st.DrawFn) -> str:
    levels = draw(_filter_levels)
    if draw(st.booleans()):
        levels = [*levels, "#"] if draw(st.booleans()) else ["#"]
    topic_filter = "/".join(levels)
    if not topic_filter or topic_filter.startswith("$share/"):
        return "#"
    return topic_filter


# Shared subscriptions: $share/{ShareName}/{filter}, ShareName without "/", "+", "#" [MQTT-4.8.2-1].
shared_filters = st.builds(
    lambda group, plain: f"$share/{group}/{plain}", st.text(_LEVEL_CHARS, min_size=1, max_size=5),
    plain_filters(),
)
topic_filters = st.one_of(plain_filters(), shared_filters)


def _value_of(ident: int) -> st.SearchStrategy[Any]:
    """Valid values of one property: booleans 0/1, non-zero where 0 is a Protocol Error."""
    spec = SPECS[ident]
    low = 1 if ident in NONZERO else 0
    wire = spec.wire
    if wire is WireType.BYTE:
        assert ident in BOOLEAN_BYTES
        return st.integers(0, 1)
    if wire is WireType.TWO_BYTE:
        return st.integers(low, 0xFFFF)
    if wire is WireType.FOUR_BYTE:
        return st.integers(low, 0xFFFF_FFFF)
    if wire is WireType.VARINT:
        return st.integers(max(low, 1), MAX_REMAINING_LENGTH)
    if ident == PropertyId.RESPONSE_TOPIC:
        return topic_names  # a topic name: no wildcards [MQTT-3.3.2-14]
    if wire is WireType.STRING:
        return texts()
    if wire is WireType.BINARY:
        return binaries
    assert wire is WireType.STRING_PAIR
    return st.tuples(texts(max_size=6), texts(max_size=6))


_PROPERTY_CACHE: Dict[str, st.SearchStrategy[Properties]] = {}


def _properties(found: Dict[str, Any]) -> Properties:
    found = dict(found)
    if "authentication_method" not in found:
        # Authentication Data only with an Authentication Method [3.1.2.11.10].
        found.pop("authentication_data", None)
    return Properties(**found) if found else NO_PROPERTIES


def properties(where: str) -> st.SearchStrategy[Properties]:
    """Property sets allowed in ``where`` (a packet name, or "WILL" for the Will Properties)."""
    if where not in _PROPERTY_CACHE:
        optional: Dict[str, st.SearchStrategy[Any]] = {}
        for ident, spec in SPECS.items():
            if where not in spec.packets:
                continue
            values = _value_of(ident)
            if spec.repeatable:
                # A SUBSCRIBE carries at most one Subscription Identifier [3.8.2.1.2].
                once = where == "SUBSCRIBE" and ident == PropertyId.SUBSCRIPTION_IDENTIFIER
                values = st.lists(values, min_size=1, max_size=1 if once else 3).map(tuple)
            optional[ATTRIBUTE[ident]] = values
        _PROPERTY_CACHE[where] = st.fixed_dictionaries({}, optional=optional).map(_properties)
    return _PROPERTY_CACHE[where]


def reason_codes(ptype: PacketType) -> st.SearchStrategy[int]:
    return st.sampled_from(sorted(VALID_REASON_CODES[ptype]))


# ---------------------------------------------------------------------------------------------
# Packet strategies, one per packet type, each taking the protocol level.


@st.composite
def connects(draw: st.DrawFn, level: int) -> Connect:
    v5 = level == 5
    username = draw(st.none() | texts())
    password = draw(st.none() | binaries)
    if not v5 and username is None:
        password = None  # a password needs a user name before MQTT 5 [MQTT-3.1.2-22]
    will = None
    if draw(st.booleans()):
        will = Will(
            draw(topic_names), draw(binaries), draw(qos_levels), draw(st.booleans()),
            draw(properties("WILL")) if v5 else NO_PROPERTIES,
        )
    return Connect(
        draw(texts(max_size=23)), level, draw(st.booleans()), draw(st.integers(0, 0xFFFF)),
        username, password, will, draw(properties("CONNECT")) if v5 else NO_PROPERTIES,
    )


@st.composite
def connacks(draw: st.DrawFn, level: int) -> ConnAck:
    if level == 5:
        code = draw(reason_codes(PacketType.CONNACK))
        props = draw(properties("CONNACK"))
    else:
        code, props = draw(st.integers(0, 5)), NO_PROPERTIES
    # Session Present is 0 with a non-zero code [MQTT-3.2.2-4 (3.1.1), MQTT-3.2.2-6 (5.0)].
    present = draw(st.booleans()) if code == 0 else False
    return ConnAck(code, present, props)


@st.composite
def publishes(draw: st.DrawFn, level: int, qos: Optional[st.SearchStrategy[int]] = None,
              dup: bool = True) -> Publish:
    v5 = level == 5
    props = draw(properties("PUBLISH")) if v5 else NO_PROPERTIES
    topic = draw(topic_names)
    if props.topic_alias is not None and draw(st.booleans()):
        topic = ""  # the topic comes from the alias [3.3.2.3.4]
    q = draw(qos if qos is not None else qos_levels)
    return Publish(
        topic, draw(st.binary(max_size=64)), q, draw(st.booleans()),
        draw(st.booleans()) if q and dup else False,  # no DUP at QoS 0 [MQTT-3.3.1-2]
        draw(packet_ids) if q else None, props,
    )


def acks(cls: Any, ptype: PacketType) -> Callable[[int], st.SearchStrategy[Any]]:
    @st.composite
    def strategy(draw: st.DrawFn, level: int) -> Any:
        if level == 5:
            return cls(draw(packet_ids), draw(reason_codes(ptype)), draw(properties(ptype.name)))
        return cls(draw(packet_ids))

    return strategy


@st.composite
def subscriptions(draw: st.DrawFn, level: int) -> Subscription:
    topic_filter = draw(topic_filters)
    if level != 5:
        return Subscription(topic_filter, draw(qos_levels))
    shared = topic_filter.startswith("$share/")
    return Subscription(
        topic_filter, draw(qos_levels),
        False if shared else draw(st.booleans()),  # no No Local on shared [MQTT-3.8.3-4]
        draw(st.booleans()), draw(st.integers(0, 2)),
    )


@st.composite
def subscribes(draw: st.DrawFn, level: int) -> Subscribe:
    subs = draw(st.lists(subscriptions(level), min_size=1, max_size=4))
    props = draw(properties("SUBSCRIBE")) if level == 5 else NO_PROPERTIES
    return Subscribe(draw(packet_ids), tuple(subs), props)


@st.composite
def subacks(draw: st.DrawFn, level: int) -> SubAck:
    codes = reason_codes(PacketType.SUBACK) if level == 5 else st.sampled_from((0, 1, 2, 0x80))
    props = draw(properties("SUBACK")) if level == 5 else NO_PROPERTIES
    return SubAck(draw(packet_ids), tuple(draw(st.lists(codes, min_size=1, max_size=5))), props)


@st.composite
def unsubscribes(draw: st.DrawFn, level: int) -> Unsubscribe:
    filters = tuple(draw(st.lists(topic_filters, min_size=1, max_size=4)))
    props = draw(properties("UNSUBSCRIBE")) if level == 5 else NO_PROPERTIES
    return Unsubscribe(draw(packet_ids), filters, props)


@st.composite
def unsubacks(draw: st.DrawFn, level: int) -> UnsubAck:
    if level != 5:
        return UnsubAck(draw(packet_ids))
    codes = draw(st.lists(reason_codes(PacketType.UNSUBACK), min_size=1, max_size=5))
    return UnsubAck(draw(packet_ids), tuple(codes), draw(properties("UNSUBACK")))


def _reasoned(cls: Any, ptype: PacketType) -> Callable[[int], st.SearchStrategy[Any]]:
    @st.composite
    def strategy(draw: st.DrawFn, level: int) -> Any:
        if level != 5:
            return cls()
        return cls(draw(reason_codes(ptype)), draw(properties(ptype.name)))

    return strategy


STRATEGIES: Dict[str, Callable[[int], st.SearchStrategy[Any]]] = {
    "CONNECT": connects,
    "CONNACK": connacks,
    "PUBLISH": publishes,
    "PUBACK": acks(PubAck, PacketType.PUBACK),
    "PUBREC": acks(PubRec, PacketType.PUBREC),
    "PUBREL": acks(PubRel, PacketType.PUBREL),
    "PUBCOMP": acks(PubComp, PacketType.PUBCOMP),
    "SUBSCRIBE": subscribes,
    "SUBACK": subacks,
    "UNSUBSCRIBE": unsubscribes,
    "UNSUBACK": unsubacks,
    "PINGREQ": lambda level: st.just(PingReq()),
    "PINGRESP": lambda level: st.just(PingResp()),
    "DISCONNECT": _reasoned(Disconnect, PacketType.DISCONNECT),
    "AUTH": _reasoned(Auth, PacketType.AUTH),  # AUTH exists in MQTT 5 only
}
assert set(STRATEGIES) == {t.name for t in PacketType}
CASES = [(level, name) for level in LEVELS for name in STRATEGIES
         if level == 5 or name != "AUTH"]


def any_packet(level: int, connect: bool = False) -> st.SearchStrategy[Any]:
    """Any packet of ``level``; CONNECT only when ``connect`` (it would switch the level)."""
    return st.one_of(*(STRATEGIES[name](level) for lvl, name in CASES
                       if lvl == level and (connect or name != "CONNECT")))


# ---------------------------------------------------------------------------------------------
# Helpers.


def chunked(data: st.DataObject, blob: bytes) -> List[bytes]:
    """Split ``blob`` at points drawn by hypothesis: byte by byte, or at random cuts (possibly
    producing empty chunks)."""
    if len(blob) > 1 and data.draw(st.integers(0, 4), label="byte by byte") == 0:
        return [blob[i:i + 1] for i in range(len(blob))]
    cuts = data.draw(
        st.lists(st.integers(0, len(blob)), max_size=min(24, len(blob) + 1)), label="cuts"
    )
    bounds = [0, *sorted(cuts), len(blob)]
    return [blob[a:b] for a, b in zip(bounds, bounds[1:])]


def feed_all(decoder: Decoder, chunks: Sequence[bytes]) -> List[Any]:
    """Every packet the chunks decode to, a ``Run`` taken apart into its packets and a
    ``PubAckRun`` into its packet identifiers."""
    out: List[Any] = []
    for chunk in chunks:
        for item in decoder.feed(chunk):
            if isinstance(item, Run):
                out += item.publishes()
            elif type(item) is PubAckRun:
                out += item
            else:
                out.append(item)
    return out


def feed_only_codec_errors(decoder: Decoder, chunks: Sequence[bytes]) -> Optional[List[Any]]:
    """Feed ``chunks``; return the packets, or None after a CodecError.  Anything else raised
    is a bug and propagates."""
    try:
        return feed_all(decoder, chunks)
    except CodecError as exc:
        assert isinstance(exc.reason_code, ReasonCode)
        assert exc.reason_code >= 0x80
        assert isinstance(exc.label, str)
        return None


def encode_stream(packets: Sequence[Any], level: Optional[int]) -> bytes:
    """Encode ``packets`` the way a peer sends them: a CONNECT sets the level of what follows."""
    parts = []
    for packet in packets:
        if isinstance(packet, Connect):
            level = packet.protocol_level
        parts.append(encode(packet, level if level is not None else 4))
    return b"".join(parts)


def publish_fields(p: Publish) -> tuple:
    return tuple(getattr(p, f.name) for f in dataclasses.fields(Publish))


# ---------------------------------------------------------------------------------------------
# (a) decode(encode(p)) == p for every packet type and level, whole and in random chunkings.


def _round_trip_test(level: int, name: str) -> Callable[[], None]:
    # One test function per (level, packet type) rather than ``pytest.mark.parametrize``:
    # pytest-twisted wraps the inner test of a hypothesis test once per item, so parametrized
    # hypothesis tests share (and re-wrap) one function and fail from the second item on.
    @ROUND_TRIP
    @given(data=st.data())
    def test(data: st.DataObject) -> None:
        packet = data.draw(STRATEGIES[name](level), label="packet")
        blob = encode(packet, level)
        assert Decoder(level).feed(blob) == [packet]
        decoder = Decoder(level)
        assert feed_all(decoder, chunked(data, blob)) == [packet]
        assert not decoder._pending

    test.__name__ = test.__qualname__ = f"test_round_trip_{name.lower()}_level{level}"
    return test  # type: ignore[no-any-return]


for _level, _name in CASES:
    globals()[f"test_round_trip_{_name.lower()}_level{_level}"] = _round_trip_test(_level, _name)


@SOME
@given(data=st.data(), level=st.sampled_from(LEVELS))
def test_round_trip_streams(data: st.DataObject, level: int) -> None:
    """A CONNECT then any packets, to the pre-CONNECT decoder (which learns the level) and to a
    decoder told the level; whole and in random chunks."""
    connect = data.draw(connects(level), label="connect")
    packets = [connect, *data.draw(st.lists(any_packet(level), max_size=6), label="packets")]
    blob = encode_stream(packets, level)
    for decoder in (Decoder(), Decoder(level)):
        assert decoder.feed(blob) == packets
        assert decoder.protocol_level == level
    decoder = Decoder()
    assert feed_all(decoder, chunked(data, blob)) == packets
    assert not decoder._pending


# ---------------------------------------------------------------------------------------------
# (b) random bytes never raise anything but a CodecError.

decoder_levels = st.sampled_from([None, 3, 4, 5])


@FUZZ
@given(level=decoder_levels, blob=st.binary(max_size=200), data=st.data())
def test_random_bytes(level: Optional[int], blob: bytes, data: st.DataObject) -> None:
    feed_only_codec_errors(Decoder(level), [blob])
    feed_only_codec_errors(Decoder(level), chunked(data, blob))


@st.composite
def framed_garbage(draw: st.DrawFn) -> bytes:
    """A well-framed packet with a random first byte and a random body, so that the body
    decoders (not just the fixed-header parser) see random input."""
    body = draw(st.binary(max_size=80))
    return bytes((draw(st.integers(0, 255)),)) + encode_varint(len(body)) + body


@FUZZ
@given(level=st.sampled_from(LEVELS), frames=st.lists(framed_garbage(), min_size=1, max_size=4),
       limit=st.sampled_from([MAX_PACKET_SIZE, 2, 16, 64]), data=st.data())
def test_random_framed_bodies(level: int, frames: List[bytes], limit: int,
                              data: st.DataObject) -> None:
    blob = b"".join(frames)
    feed_only_codec_errors(Decoder(level, max_packet_size=limit), [blob])
    feed_only_codec_errors(Decoder(level, raw_publish=True), chunked(data, blob))


@FUZZ
@given(data=st.data(), level=st.sampled_from(LEVELS))
def test_random_bytes_after_connect(data: st.DataObject, level: int) -> None:
    """The pre-CONNECT decoder: a valid CONNECT followed by random frames and bytes."""
    connect = encode(data.draw(connects(level), label="connect"))
    tail = b"".join(data.draw(st.lists(framed_garbage(), max_size=3), label="frames"))
    tail += data.draw(st.binary(max_size=40), label="bytes")
    feed_only_codec_errors(Decoder(), [connect + tail])
    feed_only_codec_errors(Decoder(), chunked(data, connect + tail))


# ---------------------------------------------------------------------------------------------
# (c) mutated valid encodings: a CodecError or packets that survive re-encoding.


@st.composite
def mutations(draw: st.DrawFn, blob: bytes) -> bytes:
    out = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "insert", "delete")))
        if op == "insert":
            out.insert(draw(st.integers(0, len(out))), draw(st.integers(0, 255)))
        elif out and op == "flip":
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
        elif out:
            del out[draw(st.integers(0, len(out) - 1))]
    return bytes(out)


def _check_mutant(level: Optional[int], mutant: bytes, chunks: List[bytes]) -> None:
    decoded = feed_only_codec_errors(Decoder(level), [mutant])
    again = feed_only_codec_errors(Decoder(level), chunks)
    assert again == decoded
    if decoded:
        # Whatever a mutant decodes to is a valid packet: it survives encode and decode.
        assert Decoder(level).feed(encode_stream(decoded, level)) == decoded


@FUZZ
@given(data=st.data(), level=st.sampled_from(LEVELS))
def test_mutated_encodings(data: st.DataObject, level: int) -> None:
    packets = data.draw(st.lists(any_packet(level), min_size=1, max_size=3), label="packets")
    mutant = data.draw(mutations(encode_stream(packets, level)), label="mutant")
    _check_mutant(level, mutant, chunked(data, mutant))


@SOME
@given(data=st.data(), level=st.sampled_from(LEVELS))
def test_mutated_connect(data: st.DataObject, level: int) -> None:
    """Mutated CONNECT (plus one more packet) to the decoder that has not seen CONNECT yet."""
    packets = [data.draw(connects(level), label="connect"), data.draw(any_packet(level))]
    mutant = data.draw(mutations(encode_stream(packets, level)), label="mutant")
    _check_mutant(None, mutant, chunked(data, mutant))


# ---------------------------------------------------------------------------------------------
# (d) remaining-length edges of the fixed header [MQTT-1.5.5-1, 2.1.4].


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize(
    ("remaining", "length_bytes"),
    [(127, 1), (128, 2), (16_383, 2), (16_384, 3), (2_097_151, 3), (2_097_152, 4)],
)
def test_remaining_length_edges(level: int, remaining: int, length_bytes: int) -> None:
    """At each boundary of the remaining length the encoder uses the fewest bytes
    [MQTT-1.5.5-1], and the decoder reads the packet back, whole or split after its header."""
    topic = "t/e"
    overhead = 2 + len(topic) + (1 if level == 5 else 0)  # topic, and an empty property block
    packet = Publish(topic, bytes(range(256)) * (remaining // 256 + 1), 0)
    packet = dataclasses.replace(packet, payload=packet.payload[:remaining - overhead])
    blob = encode(packet, level)
    assert blob[1:1 + length_bytes] == encode_varint(remaining)
    assert len(blob) == 1 + length_bytes + remaining
    assert Decoder(level).feed(blob) == [packet]
    decoder = Decoder(level, raw_publish=True)
    assert decoder.feed(blob[:1 + length_bytes]) == []  # header alone: waits for the body
    assert decoder.feed(blob[1 + length_bytes:]) == [(*publish_fields(packet), blob)]
    # The exact packet size counts against the limit: one byte less is too large.
    assert Decoder(level, max_packet_size=len(blob)).feed(blob) == [packet]
    with pytest.raises(PacketTooLarge):
        Decoder(level, max_packet_size=len(blob) - 1).feed(blob[:1 + length_bytes])


MAX_HEADER = b"\x30\xff\xff\xff\x7f"  # PUBLISH declaring the largest remaining length


def test_largest_remaining_length_is_checked_before_buffering() -> None:
    """268,435,455 parses; with a small limit the header alone is rejected at once with 0x95,
    so nothing of the body is ever buffered; with the default limit the decoder waits."""
    decoder = Decoder(4, max_packet_size=1024)
    with pytest.raises(PacketTooLarge) as info:
        decoder.feed(MAX_HEADER)
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE == 0x95
    assert not decoder._pending
    waiting = Decoder(4)
    assert waiting.feed(MAX_HEADER) == []
    assert waiting._need == MAX_PACKET_SIZE == len(MAX_HEADER) + MAX_REMAINING_LENGTH
    assert waiting.feed(b"\x00\x01t") == []  # and keeps waiting, buffering only what came
    assert Decoder(4, max_packet_size=MAX_PACKET_SIZE - 1).feed(MAX_HEADER[:4]) == []
    with pytest.raises(PacketTooLarge):
        Decoder(4, max_packet_size=MAX_PACKET_SIZE - 1).feed(MAX_HEADER)


@pytest.mark.parametrize("level", [None, 3, 4, 5])
@pytest.mark.parametrize(
    "header",
    [b"\x30\xff\xff\xff\xff", b"\x30\xff\xff\xff\xff\x01", b"\x30\x80\x80\x80\x80\x01",
     b"\xc0\xff\xff\xff\xff\x7f"],
)
def test_fifth_remaining_length_byte_is_malformed(level: Optional[int], header: bytes) -> None:
    """A fourth length byte with its continuation bit set declares more than 268,435,455."""
    if level is None:
        header = header[:1].replace(b"\x30", b"\x10").replace(b"\xc0", b"\x10") + header[1:]
    with pytest.raises(MalformedPacket) as info:
        Decoder(level).feed(header)
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET
    decoder = Decoder(level)
    with pytest.raises(MalformedPacket):
        feed_all(decoder, [header[i:i + 1] for i in range(len(header))])


@pytest.mark.parametrize("header", [b"\xc0\x80\x00", b"\xc0\x80\x80\x00", b"\xc0\xff\x80\x00"])
def test_non_minimal_remaining_length_is_malformed(header: bytes) -> None:
    with pytest.raises(MalformedPacket):
        Decoder(4).feed(header)


@SOME
@given(remaining=st.integers(1, MAX_REMAINING_LENGTH))
def test_fixed_header_parses_every_length(remaining: int) -> None:
    """Each remaining length is read exactly: the packet size is 1 + len(varint) + remaining."""
    header = b"\xc0" + encode_varint(remaining)
    assert len(header) - 1 == 1 + (remaining >= 128) + (remaining >= 16_384) + (
        remaining >= 2_097_152
    )
    size = len(header) + remaining
    assert Decoder(4, max_packet_size=size).feed(header) == []
    with pytest.raises(PacketTooLarge):
        Decoder(4, max_packet_size=size - 1).feed(header)


# ---------------------------------------------------------------------------------------------
# (e) raw_publish tuples carry the fields of Publish in order.


@SOME
@given(data=st.data(), level=st.sampled_from(LEVELS))
def test_raw_publish_equals_dataclass(data: st.DataObject, level: int) -> None:
    """The broker's form of the packets (tuples, runs taken apart, PUBACK packet identifiers)
    says exactly what the dataclasses say [MQTT-2.2.1-5]."""
    packets = data.draw(st.lists(any_packet(level), min_size=1, max_size=5), label="packets")
    blob = encode_stream(packets, level)
    objects = Decoder(level).feed(blob)
    raw = feed_all(Decoder(level, raw_publish=True), chunked(data, blob))
    assert objects == packets
    assert len(raw) == len(objects)
    for got, obj in zip(raw, objects):
        if isinstance(obj, Publish):
            assert type(got) is tuple
            assert got[:7] == publish_fields(obj)
            assert Publish(*got[:7]) == obj
            frame = got[7]
            if obj.qos and (obj.dup or obj.retain):
                assert frame is None
            elif obj.qos:  # split around the packet identifier
                packet_id = obj.packet_id.to_bytes(2, "big")  # type: ignore[union-attr]
                assert Decoder(level).feed(frame[0] + packet_id + frame[1]) == [obj]
            else:
                assert Decoder(level).feed(frame) == [obj]
        elif type(got) is int:  # a PUBACK without reason code or properties
            assert isinstance(obj, PubAck) and got == obj.packet_id
            assert obj.reason_code == 0 and not obj.properties
        else:
            assert got == obj


# ---------------------------------------------------------------------------------------------
# (f) publish_template: head + packet id + tail is the PUBLISH.


@SOME
@given(data=st.data(), level=st.sampled_from([4, 5]))
def test_publish_template(data: st.DataObject, level: int) -> None:
    p = data.draw(publishes(level, qos=st.integers(1, 2), dup=False), label="publish")
    props = encode_properties(p.properties) if level == 5 else None
    head, tail = publish_template(p.topic.encode(), p.payload, p.qos, p.retain, props)
    assert p.packet_id is not None
    assert head + p.packet_id.to_bytes(2, "big") + tail == encode(p, level)
    assert encode_publish(p.topic.encode(), p.payload, p.qos, p.retain, False, p.packet_id,
                          props) == encode(p, level)
    for pid in (1, 0xFFFF, p.packet_id):
        decoded = Decoder(level).feed(head + pid.to_bytes(2, "big") + tail)
        assert decoded == [dataclasses.replace(p, packet_id=pid)]


# ---------------------------------------------------------------------------------------------
# (g) encode_within: leave out Reason String, then User Properties, to fit the peer's Maximum
# Packet Size [MQTT-3.4.2-2, MQTT-3.4.2-3]; never alter a PUBLISH [MQTT-3.1.2-25].

_DROPPING = [case for case in CASES if case[0] == 5 and case[1] not in (
    "PUBLISH", "CONNECT", "PINGREQ", "PINGRESP")]


def _lighter(packet: Any, names: Sequence[str]) -> Any:
    props = dataclasses.replace(
        packet.properties, **{n: (None if n == "reason_string" else ()) for n in names}
    )
    # The encoders use the short forms for the NO_PROPERTIES singleton only, as encode_within.
    props = NO_PROPERTIES if props == NO_PROPERTIES else props
    return dataclasses.replace(packet, properties=props)


@FUZZ
@given(data=st.data(), case=st.sampled_from(_DROPPING))
def test_encode_within_drops_reason_string_then_user_properties(
    data: st.DataObject, case: tuple
) -> None:
    """``encode_within``, through which the broker sends every packet that can carry
    properties (PUBLISH aside), leaves out the Reason String, then the User Properties, when the
    packet would otherwise exceed the peer's Maximum Packet Size: CONNACK [MQTT-3.2.2-19,
    MQTT-3.2.2-20], PUBACK [MQTT-3.4.2-2, MQTT-3.4.2-3], PUBREC [MQTT-3.5.2-2, MQTT-3.5.2-3],
    PUBREL [MQTT-3.6.2-2, MQTT-3.6.2-3], PUBCOMP [MQTT-3.7.2-2, MQTT-3.7.2-3], SUBACK
    [MQTT-3.9.2-1, MQTT-3.9.2-2], UNSUBACK [MQTT-3.11.2-1, MQTT-3.11.2-2], DISCONNECT
    [MQTT-3.14.2-3, MQTT-3.14.2-4] and AUTH [MQTT-3.15.2-2, MQTT-3.15.2-3]; a packet that
    cannot fit is not sent at all."""
    level, name = case
    packet = data.draw(STRATEGIES[name](level), label="packet")
    if data.draw(st.booleans(), label="force droppables"):
        props = dataclasses.replace(
            packet.properties,
            **({"reason_string": data.draw(texts(1, 40))}
               if "reason_string" in {ATTRIBUTE[i] for i, s in SPECS.items() if name in s.packets}
               else {}),
            user_properties=tuple(data.draw(st.lists(st.tuples(texts(1, 8), texts(1, 8)),
                                                     min_size=1, max_size=4))),
        )
        packet = dataclasses.replace(packet, properties=props)
    full = encode(packet, level)
    maximum = data.draw(st.integers(2, len(full) + 4), label="maximum")
    got = encode_within(packet, level, maximum)
    assert encode_within(packet, level, None) == full
    candidates = [packet, _lighter(packet, DROPPABLE[:1]), _lighter(packet, DROPPABLE)]
    fitting = [c for c in candidates if len(encode(c, level)) <= maximum]
    if not fitting:
        assert got is None
        return
    assert got is not None and len(got) <= maximum
    (decoded,) = Decoder(level).feed(got)
    assert decoded == fitting[0]  # the first that fits: drop as little as possible
    if decoded != packet:
        assert len(full) > maximum
        # Only the droppable properties differ.
        assert _lighter(decoded, DROPPABLE) == _lighter(packet, DROPPABLE)


@SOME
@given(data=st.data(), level=st.sampled_from(LEVELS))
def test_encode_within_never_alters_publish(data: st.DataObject, level: int) -> None:
    p = data.draw(publishes(level), label="publish")
    full = encode(p, level)
    maximum = data.draw(st.integers(2, len(full) * 2), label="maximum")
    got = encode_within(p, level, maximum)
    assert got == (full if len(full) <= maximum else None)


def test_encode_within_examples() -> None:
    ack = PubAck(7, 0x80, Properties(reason_string="x" * 50, user_properties=(("k", "v"),)))
    full = encode(ack, 5)
    assert encode_within(ack, 5, len(full)) == full
    no_reason = encode_within(ack, 5, len(full) - 1)
    assert no_reason is not None
    user_only = Properties(user_properties=(("k", "v"),))
    assert Decoder(5).feed(no_reason) == [PubAck(7, 0x80, user_only)]
    assert encode_within(ack, 5, 5) == encode(PubAck(7, 0x80), 5) == b"\x40\x03\x00\x07\x80"
    assert encode_within(ack, 5, 4) is None
    assert encode_within(PingResp(), 4, 1) is None
    big = Publish("t", b"x" * 100)
    assert encode_within(big, 5, 50) is None
    assert encode_within(big, 5, 200) == encode(big, 5)


_INTEGER_RANGES = {WireType.BYTE: 0xFF, WireType.TWO_BYTE: 0xFFFF,
                   WireType.FOUR_BYTE: 0xFFFFFFFF, WireType.VARINT: MAX_REMAINING_LENGTH}


@pytest.mark.parametrize("spec", [s for s in SPECS.values() if s.wire in _INTEGER_RANGES],
                         ids=lambda s: s.name)
def test_integer_property_out_of_range_is_named(spec: Any) -> None:
    """An integer property one past its wire type's range, or negative, is refused with a
    ``ValueError`` that names the property (no nameless ``OverflowError``, no silent clamping);
    the largest value that fits is encoded."""
    largest = _INTEGER_RANGES[spec.wire]

    def props(number: int) -> Properties:
        value = (number,) if spec.repeatable else number
        return Properties(**{ATTRIBUTE[spec.ident]: value})

    assert encode_properties(props(largest))
    for wrong in (largest + 1, -1):
        with pytest.raises(ValueError, match=f"property {spec.name} = {wrong} does not fit"):
            encode_properties(props(wrong))


# ---------------------------------------------------------------------------------------------
# (h) large packets fed in many small chunks.


@FEW
@given(size=st.integers(0, 200_000), step=st.integers(1, 4096), level=st.sampled_from(LEVELS))
def test_large_packet_in_small_chunks(size: int, step: int, level: int) -> None:
    packet = Publish("big/one", (bytes(range(256)) * (size // 256 + 1))[:size], 1, packet_id=9)
    blob = encode(packet, level) + encode(PingReq(), level)
    decoder = Decoder(level)
    out: List[Any] = []
    for start in range(0, len(blob), step):
        out += decoder.feed(blob[start:start + step])
    assert out == [packet, PingReq()]
    assert not decoder._pending


def test_one_megabyte_publish_in_1k_chunks_is_joined_once() -> None:
    """Chunks are only appended to ``_pending`` while the packet is incomplete (its length grows
    by one per chunk, so it is never joined early), and joined once when the packet is whole:
    total work is linear in the packet size."""
    packet = Publish("big/file", bytes(range(256)) * 4096, 2, packet_id=77)  # 1 MiB payload
    blob = encode(packet, 4)
    chunks = [blob[i:i + 1024] for i in range(0, len(blob), 1024)]
    assert len(chunks) > 1024
    decoder = Decoder(4)
    for count, chunk in enumerate(chunks[:-1], 1):
        assert decoder.feed(chunk) == []
        assert len(decoder._pending) == count
        assert decoder._pending_len == count * 1024
    assert decoder.feed(chunks[-1]) == [packet]
    assert not decoder._pending


@SOME
@given(ids=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40), data=st.data(),
       level=st.sampled_from(LEVELS))
def test_runs_of_plain_pubacks(ids: List[int], data: st.DataObject, level: int) -> None:
    """Plain PUBACKs back to back decode, whole or in any chunks, to their packet identifiers
    in order, up to the first with identifier 0, which is refused [MQTT-2.2.1-5]; a PUBACK
    with a reason code in between is a ``PubAck`` of its own."""
    blob = b"".join(b"\x40\x02" + i.to_bytes(2, "big") for i in ids)
    good = ids[:ids.index(0)] if 0 in ids else ids
    decoder = Decoder(level, raw_publish=True)
    out: List[Any] = []
    try:
        for chunk in chunked(data, blob):
            out += decoder.feed(chunk)
    except CodecError as error:
        assert 0 in ids and "identifier 0" in str(error)
        out += error.decoded
    else:
        assert 0 not in ids
    for item in out:  # a run of them is a PubAckRun of two or more, else an int
        assert type(item) is int or (type(item) is PubAckRun and len(item) > 1), item
    assert [i for item in out for i in ([item] if type(item) is int else item)] == good
    if level == 5 and len(good) > 2:
        coded = encode(PubAck(good[1], 0x10), 5)
        middle = blob[:4] + coded + blob[4:4 * len(good)]
        assert Decoder(5, raw_publish=True).feed(middle) == [good[0], PubAck(good[1], 0x10),
                                                              PubAckRun(good[1:])]


@SOME
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=30),
       ids=st.lists(st.integers(1, 0xFFFF), min_size=30, max_size=30),
       qos=st.lists(st.sampled_from([0, 1, 1, 1]), min_size=30, max_size=30),
       data=st.data(), level=st.sampled_from(LEVELS))
def test_runs_of_plain_publishes(sizes: List[int], ids: List[int], qos: List[int],
                                 data: st.DataObject, level: int) -> None:
    """PUBLISH packets to one topic, QoS 0 and 1 mixed, short and long (one- and two-byte
    remaining lengths), back to back: decoded in raw form (runs) whole or in any chunks, they
    are the packets decoded one at a time [MQTT-3.3.2-1] [MQTT-2.2.1-3]."""
    packets = [Publish("run/t", bytes(size), q, packet_id=i if q else None)
               for size, i, q in zip(sizes, ids, qos)]
    blob = b"".join(encode(p, level) for p in packets)
    expected = [Publish(*f[:7]) for p in packets
                for f in Decoder(level, raw_publish=True).feed(encode(p, level))]
    assert expected == packets
    got = [Publish(*f[:7]) for f in feed_all(Decoder(level, raw_publish=True),
                                             chunked(data, blob))]
    assert got == packets
