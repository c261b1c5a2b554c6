"""The network fuzzer (tests/fuzz.py) in a bounded run against a real broker process, and the
failures it found, each as a test of its minimal bytes.

The long run is ``python -m tests.fuzz --cases 50000``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.conftest import StartBroker
from tests.fuzz import Target, broker_options, fuzz, make_case
from tests.spec import check_cited_labels
from twisted_mqtt.codec import Decoder
from twisted_mqtt.errors import ProtocolError
from twisted_mqtt.packets import Disconnect
from twisted_mqtt.properties import Properties
from twisted_mqtt.testing import InMemoryBroker

# Seeds of the bounded run; each runs CASES cases.
SEEDS = (20261204,)
CASES = 3000

# Found by the fuzzer's first version (seed 3, case 8565): after a valid CONNECT, a PUBLISH whose
# type nibble was changed to CONNECT, so a second CONNECT with protocol name "a".
SECOND_CONNECT = bytes.fromhex("1004 000161 04".replace(" ", ""))


def test_cases_are_reproducible() -> None:
    """A case is a function of its seed and index alone (so a failure can be shown again)."""
    assert make_case(3, 8565) == make_case(3, 8565)
    assert make_case(3, 8565) != make_case(3, 8566)
    kinds = {note.split("(")[0].split()[0] for index in range(500)
             for note in make_case(1, index).notes[1:]}
    assert kinds >= {"Connect", "ConnAck", "Publish", "PubAck", "PubRec", "PubRel", "PubComp",
                     "Subscribe", "SubAck", "Unsubscribe", "UnsubAck", "PingReq", "PingResp",
                     "Disconnect", "Auth", "reserved", "1100"}, kinds


def test_second_connect_is_a_protocol_error_whatever_it_holds() -> None:
    """A second CONNECT is a Protocol Error [MQTT-3.1.0-2], even one whose protocol name or
    level is wrong: it is refused before its body is read, so the broker does not answer with
    0x84 (Unsupported Protocol Version), a reason code DISCONNECT may not carry."""
    decoder = Decoder()
    decoder.feed(bytes.fromhex("100e00044d5154540502000000000163"))
    with pytest.raises(ProtocolError) as raised:
        decoder.feed(SECOND_CONNECT)
    assert raised.value.reason_code == 0x82


def test_second_connect_gets_disconnect_0x82() -> None:
    """Through the broker: a v5 client sending a malformed second CONNECT gets DISCONNECT
    0x82 (Protocol Error) [MQTT-3.1.0-2] and is closed."""
    broker = InMemoryBroker()
    client = broker.client(protocol_level=5)
    client.connect("c", properties=Properties(session_expiry_interval=0))
    client.send_bytes(SECOND_CONNECT)
    assert client.received() == [Disconnect(0x82)]
    assert client.closed


@pytest.mark.parametrize("seed", SEEDS)
def test_bounded_fuzz(start_broker: StartBroker, tmp_path: Path, seed: int) -> None:
    """CASES random and mutated cases, 50 connections at a time: no traceback or unhandled
    error in the broker's log (the fixture checks it again at exit), no hang, a fresh client
    served throughout, and the broker's RSS after the clients leave within 20 % of the RSS
    after the first half (a leak grows with the cases; the allocator keeping the peak of
    the first half does not)."""
    broker = start_broker(*broker_options(tmp_path), module=True)
    target = Target(broker.port, broker.proc.pid, broker.log)
    report = asyncio.run(fuzz(target, seed, CASES, concurrency=50, batch=500, warmup=3))
    assert report.failures == [], "\n".join(report.failures)
    assert report.cases == CASES
    assert report.answered > CASES // 10


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__])
