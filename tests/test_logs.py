"""``twisted_mqtt.logs``: the broker's log lines are exactly Twisted's classic text lines."""

from __future__ import annotations

import io
import threading
from typing import Any, Dict, List, cast

import pytest
import twisted.logger
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, formatEventAsClassicLogText
from twisted.python import threadable
from twisted.python.failure import Failure

from twisted_mqtt.logs import Logger, LogOutput, classic_line, text_log_observer


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


class Recording(io.StringIO):
    """A stream that counts its writes and flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


def _lines(out: io.StringIO) -> List[str]:
    """The texts of the lines written (a traceback's lines, which start with a tab, left out)."""
    return [line.split("] ", 1)[1] for line in out.getvalue().splitlines()
            if not line.startswith("\t")]


def _event(text: str, level: Any = LogLevel.info, **fields: Any) -> Dict[str, Any]:
    return dict(log_format=text, log_level=level, log_namespace="twisted_mqtt.x",
                log_time=0.0, **fields)


def test_a_turns_lines_are_written_together() -> None:
    """While the reactor runs, a turn's lines wait for the end of the turn and go out with one
    write and one flush; a warning, an error or a failure goes out at once, after the lines
    before it; from the start of the shutdown every line goes out at once."""
    threadable.registerAsIOThread()  # as a reactor does when it starts
    out, reactor = Recording(), MemoryReactorClock()
    observer = LogOutput("text", stream=out).start(reactor)
    observer(_event("before the reactor runs"))
    assert (_lines(out), out.writes, out.flushes) == (["before the reactor runs"], 1, 1)
    reactor.running = True
    for n in range(3):
        observer(_event(f"info {n}"))
    assert out.writes == 1
    reactor.advance(0)
    assert _lines(out)[1:] == ["info 0", "info 1", "info 2"]
    assert (out.writes, out.flushes) == (2, 2)
    reactor.advance(0)
    assert out.writes == 2  # nothing waited: no write
    observer(_event("info 3"))
    observer(_event("a warning", LogLevel.warn))
    assert _lines(out)[4:] == ["info 3", "a warning"]
    observer(_event("info 4"))
    observer(_event("a failure", LogLevel.info, log_failure=_failure()))
    assert _lines(out)[6] == "info 4" and "a failure" in _lines(out)[7]
    written = out.getvalue()
    observer(_event("info 5"))
    reactor.triggers["before"]["shutdown"][0][0]()  # the reactor begins to shut down
    observer(_event("info 6"))
    assert _lines(io.StringIO(out.getvalue()[len(written):])) == ["info 5", "info 6"]
    reactor.advance(0)
    assert _lines(io.StringIO(out.getvalue()[len(written):])) == ["info 5", "info 6"]


def test_lines_from_other_threads_are_written_at_once() -> None:
    """A line logged outside the reactor's thread is written at once, after the lines that
    waited before it."""
    threadable.registerAsIOThread()
    out, reactor = Recording(), MemoryReactorClock()
    observer = LogOutput("json", stream=out).start(reactor)
    reactor.running = True
    observer(_event("in the reactor"))
    thread = threading.Thread(target=observer, args=(_event("in a thread"),))
    thread.start()
    thread.join()
    assert out.writes == 1
    assert [line.count("in the reactor") for line in out.getvalue().splitlines()] == [1, 0]
    assert "in a thread" in out.getvalue().splitlines()[1]


def test_level_decisions_follow_live_changes() -> None:
    """The level decided for a namespace and level is kept until the levels change."""
    out = io.StringIO()
    output = LogOutput("text", LogLevel.warn, stream=out, namespaces={"a": LogLevel.debug})
    observer = output.start()
    for namespace in ("a.b", "c", "a.b", "c"):
        observer(dict(_event(f"{namespace} info"), log_namespace=namespace))
    output.set_levels(LogLevel.info, {"a": LogLevel.error})
    for namespace in ("a.b", "c"):
        observer(dict(_event(f"{namespace} info"), log_namespace=namespace))
    assert _lines(out) == ["a.b info", "a.b info", "c info"]


def test_logger_events_are_twisteds() -> None:
    """``Logger`` gives observers the event Twisted's ``Logger`` gives, and reports an invalid
    level as Twisted does."""
    events: List[Dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    ours, theirs = Logger("n", observer=observer), twisted.logger.Logger("n", observer=observer)
    for logger in (ours, theirs):
        logger.info("x {y}", y=1)
        logger.emit("no level", "z")  # type: ignore[arg-type]
    for event in events:
        event.pop("log_time")
        event.pop("log_logger")
        event.pop("log_failure", None)
        event.pop("logger", None)
    assert events[:2] == events[2:] and len(events) == 4


def test_outputs_sharing_a_file_keep_every_line(tmp_path: Any) -> None:
    """Two outputs appending to one file (a supervisor and its workers with one --log-file)
    keep each other's lines, before and after a reopen: none writes over another's."""
    path = str(tmp_path / "broker.log")
    outputs = [LogOutput("text", path=path), LogOutput("text", path=path)]
    observers = [output.start() for output in outputs]
    for turn in range(3):
        for index, observer in enumerate(observers):
            observer({"log_format": "line {n} of {w}", "n": turn, "w": index,
                      "log_level": LogLevel.info, "log_namespace": "t", "log_time": 0.0})
    (tmp_path / "broker.log").rename(tmp_path / "broker.log.1")
    for output in outputs:
        assert output.reopen()
    for index, observer in enumerate(observers):
        observer({"log_format": "after {w}", "w": index, "log_level": LogLevel.info,
                  "log_namespace": "t", "log_time": 0.0})
    before = (tmp_path / "broker.log.1").read_text().splitlines()
    assert sorted(line.split("] ", 1)[1] for line in before) == sorted(
        f"line {n} of {w}" for n in range(3) for w in range(2))
    after = (tmp_path / "broker.log").read_text().splitlines()
    assert sorted(line.split("] ", 1)[1] for line in after) == ["after 0", "after 1"]
