"""The codec compiled with mypyc: built when the install asked for it, and the same codec.

``TWISTED_MQTT_COMPILE=1`` at install time compiles ``twisted_mqtt/codec.py`` on CPython
(setup.py); ``tests/run.sh`` installs that way on CPython, so the whole suite runs there against
the compiled codec, and on PyPy against the pure-Python one.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path
from types import ModuleType
from typing import Any, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_mqtt import codec
from twisted_mqtt.errors import CodecError
from twisted_mqtt.packets import PubAck, PubAckRun, Publish

ROOT = Path(__file__).resolve().parent.parent


def test_the_codec_is_compiled_when_the_install_asked_for_it() -> None:
    """With ``TWISTED_MQTT_COMPILE=1`` on CPython the codec imported is the extension module,
    not the source beside it (a build that fell back to pure Python is seen here), and a
    compiled codec is never older than its source (an editable install's stale build)."""
    if platform.python_implementation() != "CPython":
        assert not codec.compiled(), "only CPython builds the compiled codec"
        return
    if codec.compiled():
        source = ROOT / "twisted_mqtt" / "codec.py"
        assert Path(codec.__file__).stat().st_mtime >= source.stat().st_mtime, (
            f"{codec.__file__} is older than {source}: bash tests/run.sh compiles it again")
    elif os.environ.get("TWISTED_MQTT_COMPILE") == "1":
        pytest.fail(f"{codec.__file__} is the source: the compilation failed (pip install -v)")
    else:
        pytest.skip("installed without TWISTED_MQTT_COMPILE=1: the pure-Python codec runs")


def _pure_codec() -> ModuleType:
    """``twisted_mqtt/codec.py`` loaded from its source, whatever ``twisted_mqtt.codec`` is."""
    spec = importlib.util.spec_from_file_location("twisted_mqtt_pure_codec",
                                                  ROOT / "twisted_mqtt" / "codec.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PURE = _pure_codec()

PACKETS = [Publish(f"t/{i % 3}", bytes([i]) * i, qos=i % 3, packet_id=i if i % 3 else None)
           for i in range(1, 12)] + [PubAck(i) for i in range(1, 6)]


def _plain(items: List[Any]) -> str:
    """The decoded items as text, a run as its class name and packets."""
    return repr([(type(item).__name__, item.publishes()) if hasattr(item, "publishes") else
                 ("PubAckRun", list(item)) if type(item) is PubAckRun else item
                 for item in items])


def _outcome(module: ModuleType, data: bytes, level: Optional[int], piece: int) -> object:
    """What a decoder of ``module`` makes of ``data`` fed ``piece`` bytes at a time: the
    packets, or the error's class, text and the packets decoded before it."""
    decoder = module.Decoder(level, raw_publish=True)
    out: List[Any] = []
    try:
        for at in range(0, len(data), piece):
            out += decoder.feed(data[at:at + piece])
    except CodecError as error:
        return (type(error).__name__, str(error), _plain(out + error.decoded))
    return _plain(out)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PACKETS), max_size=12), st.binary(max_size=40),
       st.sampled_from([None, 4, 5]), st.integers(1, 64))
def test_compiled_and_pure_decode_alike(packets: List[Any], tail: bytes, level: Optional[int],
                                        piece: int) -> None:
    """The codec in use (compiled on CPython under tests/run.sh) and the pure-Python source
    decode the same bytes the same way: valid packets, runs, then arbitrary bytes, cut
    anywhere, before and after CONNECT's level is known."""
    data = b"".join(codec.encode(p, level or 4) for p in packets) + tail
    assert _outcome(codec, data, level, piece) == _outcome(PURE, data, level, piece)


@given(st.sampled_from(PACKETS), st.sampled_from([4, 5]))
def test_compiled_and_pure_encode_alike(packet: Any, level: int) -> None:
    """Both encode a packet to the same bytes."""
    assert codec.encode(packet, level) == PURE.encode(packet, level)
