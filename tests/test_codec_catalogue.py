"""Drive the byte-exact catalogue of ``tests/catalogue.py`` through the codec.

Every case is fed to a ``Decoder`` (a) whole, (b) one byte at a time [MQTT-6.0.0-2: packets are
not aligned on the boundaries of what the transport delivers] and (c) followed by a further
valid packet (PINGREQ ``c0 00``), and once more through ``decode_all``.  A valid case must give
exactly its packets and, when its form is canonical, encode back to exactly its bytes; an
invalid case must raise exactly its error class with its reason code and label.  The last tests
check the catalogue itself: its size, that it covers every packet type and protocol level, and
that every label it cites, and every label string in the codec's source, is a real normative
label of MQTT 3.1.1 or 5.0.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, List

import pytest

from tests.catalogue import CATALOGUE, Case
from tests.spec import ALL_LABELS
from twisted_mqtt.codec import Decoder, decode_all, encode
from twisted_mqtt.errors import CodecError
from twisted_mqtt.packets import Connect, PacketType, PingReq, PubAck, Publish

PINGREQ = b"\xc0\x00"
ROOT = Path(__file__).resolve().parent.parent
VALID = [c for c in CATALOGUE if c.valid]
INVALID = [c for c in CATALOGUE if not c.valid]


def _ids(cases: List[Case]) -> List[str]:
    return [c.name for c in cases]


all_cases = pytest.mark.parametrize("case", CATALOGUE, ids=_ids(CATALOGUE))
valid_cases = pytest.mark.parametrize("case", VALID, ids=_ids(VALID))
_UNLIMITED = [c for c in CATALOGUE if c.max_packet_size is None]
unlimited_cases = pytest.mark.parametrize("case", _UNLIMITED, ids=_ids(_UNLIMITED))


def _decoder(case: Case, raw_publish: bool = False) -> Decoder:
    if case.max_packet_size is None:
        return Decoder(case.level, raw_publish=raw_publish)
    return Decoder(case.level, max_packet_size=case.max_packet_size, raw_publish=raw_publish)


def _feed_bytewise(decoder: Decoder, data: bytes, out: List[Any]) -> None:
    for i in range(len(data)):
        out.extend(decoder.feed(data[i:i + 1]))


def _assert_error(case: Case, run: Callable[[], Any]) -> CodecError:
    with pytest.raises(CodecError) as info:
        run()
    error = info.value
    assert (type(error), error.reason_code, error.label) == (
        case.error, case.reason_code, case.label), str(error)
    return error


def _levels(case: Case) -> List[int]:
    """The protocol level each packet of a valid case is written in (CONNECT sets it)."""
    level, levels = case.level, []
    for packet in case.packets:
        if isinstance(packet, Connect):
            level = packet.protocol_level
        assert level is not None, "only CONNECT comes before the level is known"
        levels.append(level)
    return levels


# ---------------------------------------------------------------------------------------------
# Decoding.


@all_cases
def test_whole(case: Case) -> None:
    """The case's bytes in one ``feed``: its packets, or its error with the packets decoded
    before it in ``CodecError.decoded``.
    The invalid cases prove the decoder's side of these statements, MQTT 5.0: strings
    [MQTT-1.5.4-1, MQTT-1.5.4-2, MQTT-1.5.4-3, MQTT-1.5.7-1], packet identifier 0
    [MQTT-2.2.1-3], will fields [MQTT-3.1.2-9], DUP at QoS 0 [MQTT-3.3.1-2], topic names
    [MQTT-3.3.2-1, MQTT-4.7.3-1, MQTT-4.7.3-2], topic alias 0 [MQTT-3.3.2-8], response topic
    [MQTT-3.3.2-14], SUBSCRIBE and UNSUBSCRIBE payloads [MQTT-3.8.3-2, MQTT-3.8.3-5,
    MQTT-3.10.3-2], DISCONNECT flags [MQTT-3.14.1-1], filters [MQTT-4.7.1-1, MQTT-4.7.1-2,
    MQTT-4.8.2-1, MQTT-4.8.2-2]; MQTT 3.1.1: strings [MQTT-1.5.3-1 (3.1.1),
    MQTT-1.5.3-2 (3.1.1), MQTT-1.5.3-3 (3.1.1)], CONNECT fields [MQTT-3.1.2-9 (3.1.1),
    MQTT-3.1.2-18 (3.1.1), MQTT-3.1.2-19 (3.1.1), MQTT-3.1.2-21 (3.1.1),
    MQTT-3.1.2-22 (3.1.1)], DUP at QoS 0 [MQTT-3.3.1-2 (3.1.1)], topic names
    [MQTT-3.3.2-1 (3.1.1), MQTT-4.7.3-1 (3.1.1), MQTT-4.7.3-2 (3.1.1)], SUBSCRIBE and
    UNSUBSCRIBE payloads [MQTT-3.8.3-3 (3.1.1), MQTT-3-8.3-4 (3.1.1), MQTT-3.10.3-2 (3.1.1)],
    filters [MQTT-4.7.1-2 (3.1.1), MQTT-4.7.1-3 (3.1.1)]."""
    decoder = _decoder(case)
    if case.valid:
        assert decoder.feed(case.data) == list(case.packets)
    else:
        error = _assert_error(case, lambda: decoder.feed(case.data))
        assert error.decoded == list(case.packets)


@all_cases
def test_byte_at_a_time(case: Case) -> None:
    """One byte per ``feed`` [MQTT-6.0.0-2]: the same packets, or the same error; a decoder
    left with no partial packet then reads a PINGREQ."""
    decoder = _decoder(case)
    out: List[Any] = []
    if case.valid:
        _feed_bytewise(decoder, case.data, out)
        assert out == list(case.packets)
        assert decoder.feed(PINGREQ) == [PingReq()]
    else:
        _assert_error(case, lambda: _feed_bytewise(decoder, case.data, out))
        assert out == list(case.packets)


@all_cases
def test_followed_by_a_further_packet(case: Case) -> None:
    """The case's bytes with a PINGREQ after them, in one ``feed`` and in two: a valid case
    ends exactly where its last packet ends, so the PINGREQ decodes too; an invalid case raises
    the same error."""
    if case.valid:
        assert _decoder(case).feed(case.data + PINGREQ) == [*case.packets, PingReq()]
        decoder = _decoder(case)
        assert decoder.feed(case.data) + decoder.feed(PINGREQ) == [*case.packets, PingReq()]
    else:
        _assert_error(case, lambda: _decoder(case).feed(case.data + PINGREQ))


@unlimited_cases
def test_decode_all(case: Case) -> None:
    """``decode_all`` agrees with ``Decoder.feed`` (it has no Maximum Packet Size, so the cases
    that set one are left out)."""
    if case.valid:
        assert decode_all(case.data, case.level) == list(case.packets)
    else:
        _assert_error(case, lambda: decode_all(case.data, case.level))


@valid_cases
def test_raw_publish(case: Case) -> None:
    """With ``raw_publish`` a PUBLISH is the tuple of the ``Publish`` fields followed, for QoS
    0, by the packet's own bytes (which decode to the same packet), for QoS 1/2 without DUP
    and RETAIN by those bytes split around the packet identifier; a PUBACK with neither reason
    code nor properties is its packet identifier; other packets are unchanged."""
    got = _decoder(case, raw_publish=True).feed(case.data)
    assert len(got) == len(case.packets)
    for raw, packet in zip(got, case.packets):
        if type(raw) is int:
            assert isinstance(packet, PubAck) and raw == packet.packet_id
            assert packet.reason_code == 0 and not packet.properties
            assert case.data.find(b"\x40\x02" + raw.to_bytes(2, "big")) >= 0
            continue
        if not isinstance(packet, Publish):
            assert raw == packet
            continue
        assert raw[:7] == tuple(getattr(packet, f.name) for f in dataclasses.fields(Publish))
        level = case.level or next(p.protocol_level for p in case.packets
                                   if isinstance(p, Connect))
        if packet.qos and (packet.dup or packet.retain):
            assert raw[7] is None
        elif packet.qos:
            head, tail = raw[7]  # the packet split around its packet identifier
            packet_id = packet.packet_id.to_bytes(2, "big")  # type: ignore[union-attr]
            assert Decoder(level).feed(head + packet_id + tail) == [packet]
        else:
            assert Decoder(level).feed(raw[7]) == [packet]


# ---------------------------------------------------------------------------------------------
# Encoding.


@valid_cases
def test_encode(case: Case) -> None:
    """A canonical valid case is exactly what ``encode`` writes for its packets; a
    non-canonical one is not, but its canonical encoding decodes to the same packets.
    The encoder writes the listed fixed-header flags [MQTT-2.1.3-1, MQTT-2.2.2-1 (3.1.1)] and
    a zero Property Length for no properties [MQTT-2.2.2-1]."""
    encoded = b"".join(encode(p, level) for p, level in zip(case.packets, _levels(case)))
    if case.canonical:
        assert encoded.hex(" ") == case.data.hex(" ")
        decoded = _decoder(case).feed(case.data)
        assert b"".join(encode(p, lv) for p, lv in zip(decoded, _levels(case))) == case.data
    else:
        assert encoded != case.data
        assert Decoder(case.level).feed(encoded) == list(case.packets)


# ---------------------------------------------------------------------------------------------
# The catalogue itself.


def test_catalogue_size_and_names() -> None:
    """At least 150 cases, each with a unique identifier-like name and at least one label."""
    assert len(CATALOGUE) >= 150
    names = [c.name for c in CATALOGUE]
    assert len(set(names)) == len(names)
    for case in CATALOGUE:
        assert re.fullmatch(r"[a-z0-9_]+", case.name), case.name
        assert case.labels, case.name
        assert case.level in (None, 3, 4, 5), case.name
        if case.valid:
            assert case.packets and case.reason_code is None and not case.label, case.name
        else:
            assert case.reason_code is not None and case.label in case.labels, case.name


def test_catalogue_covers_every_packet_type() -> None:
    """Every packet type, from CONNECT to AUTH, is the first packet of a valid case and of an
    invalid one."""
    for cases in (VALID, INVALID):
        types = {c.data[0] >> 4 for c in cases}
        assert types >= {int(t) for t in PacketType}, sorted(set(PacketType) - types)
    decoded = {type(p) for c in VALID for p in c.packets}
    assert len(decoded) == len(PacketType)


def test_catalogue_covers_every_level() -> None:
    """Valid and invalid cases at levels 3, 4 and 5 and before CONNECT; and CONNECT packets of
    every level."""
    for cases in (VALID, INVALID):
        assert {c.level for c in cases} == {None, 3, 4, 5}
    connects = {p.protocol_level for c in VALID for p in c.packets if isinstance(p, Connect)}
    assert connects == {3, 4, 5}


def test_catalogue_labels_are_real() -> None:
    """Every label the catalogue cites is a normative label of MQTT 3.1.1 or 5.0 (a section
    number such as "MQTT-2.4" is not)."""
    real = ALL_LABELS
    cited = {label for c in CATALOGUE for label in (*c.labels, c.label) if label}
    assert sorted(cited - real) == []


def test_source_labels_are_real() -> None:
    """Every "MQTT-..." string in the twisted_mqtt source is a real normative label."""
    real = ALL_LABELS
    found: dict[str, str] = {}
    for path in sorted((ROOT / "twisted_mqtt").rglob("*.py")):
        for label in re.findall(r"[\"'](MQTT-[^\"']*)[\"']", path.read_text(encoding="utf-8")):
            found.setdefault(label, path.relative_to(ROOT).as_posix())
    assert found, "no label found in the source"
    assert {label: where for label, where in found.items() if label not in real} == {}
