"""The broker's text log: Twisted's classic line format, written more cheaply.

``twisted.logger``'s text observer formats every event with ``string.Formatter`` in Python and
converts its timestamp afresh for each line, about 25 µs per line on CPython 3.11 -- a sixth
of what accepting an MQTT connection costs, as the broker logs a line per connection.
``classic_line`` gives the same text with ``str.format_map`` (in C) and a timestamp cached for
the current second, about a third of that; events it cannot format that way (a traceback, a
``{callable()}`` field, a format that fails) go to Twisted's own formatter unchanged.

``json_line`` writes an event as one JSON object per line instead (for log shippers), and
``LogOutput`` is the broker's log as the options set it: text or JSON, filtered by level (per
namespace if asked, changeable live on SIGHUP), to standard output or a file.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any, Dict, Optional

from constantly import NamedConstant
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer


class _Clock:
    """``formatTime`` of the last whole second asked for, reused within that second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second: Optional[int] = None
        self.text = "-"

    def __call__(self, when: Optional[float]) -> str:
        if when is None:
            return formatTime(None)
        second = int(when)
        if second != self.second:
            self.text = formatTime(second)
            self.second = second
        return self.text


_clock = _Clock()


def classic_line(event: Dict[str, Any]) -> Optional[str]:
    """``formatEventAsClassicLogText(event)``: ``TIME [SYSTEM] TEXT`` and a newline."""
    log_format = event.get("log_format")
    if type(log_format) is not str or "()" in log_format or "log_failure" in event:
        return formatEventAsClassicLogText(event)
    try:
        text = log_format.format_map(event)
    except Exception:
        return formatEventAsClassicLogText(event)
    if not text:
        return None
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    elif type(system) is not str:
        return formatEventAsClassicLogText(event)
    line = f"{_clock(event.get('log_time'))} [{system}] {text}"
    return line.replace("\n", "\n\t") + "\n"


def text_log_observer(out: IO[Any]) -> FileLogObserver:
    """What ``textFileLogObserver(out)`` does, with ``classic_line``."""
    return FileLogObserver(out, classic_line)


# -- JSON lines, levels and the broker's log observer -----------------------------------------

LEVELS: Dict[str, NamedConstant] = {
    "debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
    "warning": LogLevel.warn, "error": LogLevel.error, "critical": LogLevel.critical,
}
"""The level names ``--log-level`` and ``logging.level`` accept."""

FORMATS = ("text", "json")
"""The formats ``--log-format`` and ``logging.format`` accept."""

# Keys of an event that are Twisted's bookkeeping (``log_*``) or legacy ``twisted.python.log``
# fields, not the event's own structured fields.
_LEGACY_KEYS = frozenset({"message", "format", "isError", "system", "time", "why", "failure",
                          "printed"})


def parse_level(name: str) -> NamedConstant:
    """The ``LogLevel`` called ``name`` (debug, info, warn or warning, error, critical);
    ValueError for any other name."""
    try:
        return LEVELS[name.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown log level {name!r}; use one of "
                         f"{', '.join(n for n in LEVELS if n != 'warning')}") from None


def _iso_time(when: Optional[float]) -> Optional[str]:
    if when is None:
        return None
    stamp = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
    return stamp[:-6] + "Z"


def _json_value(value: Any) -> Any:
    """``value`` as JSON: scalars as they are, containers of scalars as lists and objects,
    anything else as its ``repr``."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    return repr(value)


def event_fields(event: Dict[str, Any]) -> Dict[str, Any]:
    """The structured fields of a log event, JSON-ready: every field the log call gave, except
    Twisted's own ``log_*`` keys.  A connection (a field with ``client`` and ``address``
    attributes, such as the ``conn`` of the broker's connection lines) gives ``client_id`` and
    ``address`` fields instead of itself."""
    fields: Dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS:
            continue
        if hasattr(value, "client") and hasattr(value, "address"):
            client = value.client
            fields.setdefault("client_id", getattr(client, "client_id", None))
            fields.setdefault("address", _json_value(value.address))
            continue
        fields[key] = _json_value(value)
    return fields


def json_line(event: Dict[str, Any]) -> Optional[str]:
    """One event as one line of JSON: ``time`` (ISO 8601, UTC), ``level``, ``namespace``,
    ``text`` (the line the text log would show), the event's structured fields
    (``event_fields``) and, for a failure, ``error`` and ``traceback``."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if not text and failure is None:
        return None
    level = event.get("log_level")
    record: Dict[str, Any] = {
        "time": _iso_time(event.get("log_time")),
        "level": level.name if level is not None else None,
        "namespace": event.get("log_namespace"),
        "text": text,
    }
    system = event.get("log_system")
    if system is not None and system != "-":
        record["system"] = _json_value(system)
    for key, value in event_fields(event).items():
        record.setdefault(key, value)
    if failure is not None:
        try:
            record["error"] = failure.getErrorMessage()
            record["traceback"] = failure.getTraceback()
        except Exception:  # a broken failure must not lose the line
            record["error"] = repr(failure)
    return json.dumps(record, ensure_ascii=False, default=repr) + "\n"


def json_log_observer(out: IO[Any]) -> FileLogObserver:
    """An observer writing each event to ``out`` as one line of JSON (``json_line``), for log
    shippers that read JSON lines."""
    return FileLogObserver(out, json_line)


@implementer(ILogFilterPredicate)
class LevelFilter:
    """Drops events below the level set for their namespace (``LogLevelFilterPredicate``),
    keeping events that carry no level or namespace (Twisted's own predicate drops those)."""

    def __init__(self, level: NamedConstant = LogLevel.info,
                 namespaces: Optional[Dict[str, NamedConstant]] = None) -> None:
        self.predicate = LogLevelFilterPredicate(level)
        self.namespaces: Dict[str, NamedConstant] = {}
        self.set_levels(level, namespaces or {})

    @property
    def level(self) -> NamedConstant:
        """The level of every namespace without a level of its own."""
        return self.predicate.logLevelForNamespace("")

    def set_levels(self, level: NamedConstant,
                   namespaces: Optional[Dict[str, NamedConstant]] = None) -> None:
        """Use ``level`` from now on, and ``namespaces``' levels for those namespaces (and
        the namespaces below them)."""
        self.predicate.defaultLogLevel = level
        self.predicate.clearLogLevels()
        self.namespaces = dict(namespaces or {})
        for namespace, namespace_level in self.namespaces.items():
            self.predicate.setLogLevelForNamespace(namespace, namespace_level)

    def __call__(self, event: Dict[str, Any]) -> NamedConstant:
        if event.get("log_level") is None or not event.get("log_namespace"):
            return PredicateResult.maybe
        return self.predicate(event)


class LogOutput:
    """The broker's log: text or JSON lines, filtered by level, to a file or a stream.

    A ``path`` is appended to; it is not rotated unless ``rotate_length`` (bytes) is given,
    as twistd rotates its ``--logfile``.  ``start()`` opens the output and returns the
    observer to begin logging to (twistd calls it as its ``--logger`` factory;
    ``python -m twisted_mqtt`` and .tac files call it themselves).  The levels change live
    with ``set_levels``; ``reopen`` reopens the file (after logrotate moved it; SIGHUP does
    this).
    """

    def __init__(self, format: str = "text", level: NamedConstant = LogLevel.info,
                 path: Optional[str] = None, stream: Optional[IO[Any]] = None,
                 namespaces: Optional[Dict[str, NamedConstant]] = None,
                 rotate_length: Optional[int] = None) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown log format {format!r}; use text or json")
        self.format = format
        self.path = path
        self.filter = LevelFilter(level, namespaces)
        self._stream = stream
        self.rotate_length = rotate_length
        self._file: Optional[LogFile] = None
        self.observer: Optional[FilteringLogObserver] = None

    def start(self) -> FilteringLogObserver:
        """Open the output (once) and return the filtering observer that writes to it."""
        if self.observer is None:
            out = self._open()
            write = json_log_observer(out) if self.format == "json" else text_log_observer(out)
            self.observer = FilteringLogObserver(write, [self.filter])
        return self.observer

    def _open(self) -> IO[Any]:
        if self.path is not None:
            directory, name = os.path.split(os.path.abspath(self.path))
            self._file = LogFile(name, directory,
                                 rotateLength=self.rotate_length)  # type: ignore[arg-type]
            return self._file  # type: ignore[return-value]  # a LogFile writes str and bytes
        return self._stream if self._stream is not None else sys.stdout

    def set_levels(self, level: NamedConstant,
                   namespaces: Optional[Dict[str, NamedConstant]] = None) -> None:
        """Filter by ``level`` (and per-namespace ``namespaces`` levels) from now on."""
        self.filter.set_levels(level, namespaces)

    def reopen(self) -> bool:
        """Reopen the log file (a no-op for a stream); whether there was one to reopen."""
        if self._file is None:
            return False
        self._file.reopen()
        return True


_twistd_output: Optional[LogOutput] = None


def use_with_twistd(output: LogOutput) -> str:
    """Make ``output`` the log of this twistd process: returns the name to give twistd as its
    ``--logger`` (it names a factory, which twistd imports and calls once it starts logging)."""
    global _twistd_output
    _twistd_output = output
    return f"{__name__}.twistd_observer"


def twistd_observer() -> FilteringLogObserver:
    """twistd's ``--logger`` factory: the observer of the output ``use_with_twistd`` chose."""
    output = _twistd_output if _twistd_output is not None else LogOutput()
    return output.start()
