"""``twisted_mqtt.logs``: the broker's log lines are exactly Twisted's classic text lines."""

from __future__ import annotations

import io
from typing import Any, Dict, List

import pytest
from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure

from twisted_mqtt.logs import classic_line, text_log_observer


class Conn:
    def __repr__(self) -> str:
        return "<Connection c1 from 127.0.0.1>"

    name = "c1"


def _failure() -> Failure:
    try:
        raise ValueError("boom")
    except ValueError:
        return Failure()


EVENTS: List[Dict[str, Any]] = [
    dict(log_format="{conn!r}: connected (MQTT level {protocol_level}, clean start {clean})",
         conn=Conn(), protocol_level=4, clean=True, log_time=1_700_000_000.25,
         log_namespace="twisted_mqtt.connection", log_level=LogLevel.info),
    dict(log_format="listening on {endpoint} at {address}", endpoint="tcp:0",
         address="127.0.0.1:1883", log_time=1_700_000_000.75, log_system="-"),
    dict(log_format="code 0x{code:02X}, {c.name}, {items[1]}", code=0x8E, c=Conn(),
         items=["a", "b"], log_time=1_700_000_001.0, log_namespace="n",
         log_level=LogLevel.warn),
    dict(log_format="two\nlines", log_time=1_700_000_002.0),
    dict(log_format="no time, no namespace"),
    dict(log_format="missing {field}", log_time=1_700_000_003.0),
    dict(log_format="call {f()}", f=lambda: 42, log_time=1_700_000_003.0),
    dict(log_format="failed: {why}", why="x", log_failure=_failure(),
         log_time=1_700_000_004.0, log_namespace="n", log_level=LogLevel.critical),
    dict(log_format="", log_time=1_700_000_005.0),
    dict(log_time=1_700_000_005.0, message=("legacy",)),
    dict(log_format="system {x}", x=1, log_system=42, log_time=1_700_000_006.0),
    dict(log_format="{log_io}", log_io="printed", log_time=1_700_000_006.5,
         log_namespace="stdout", log_level=LogLevel.info),
]


@pytest.mark.parametrize("event", EVENTS)
def test_same_text_as_twisted(event: Dict[str, Any]) -> None:
    """Every kind of event gives Twisted's own line (or None), twice in a row (the cached
    timestamp) and after an event of another second."""
    expected = formatEventAsClassicLogText(event)
    assert classic_line(event) == expected
    assert classic_line(dict(EVENTS[0], log_time=1_600_000_000.0)) is not None
    assert classic_line(event) == expected
    assert classic_line(event) == expected


def test_observer_writes_lines() -> None:
    """The observer writes each formatted event to the file."""
    out = io.StringIO()
    observer = text_log_observer(out)
    for event in EVENTS[:2]:
        observer(event)
    assert out.getvalue() == "".join(formatEventAsClassicLogText(e) or "" for e in EVENTS[:2])
