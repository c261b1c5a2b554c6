"""The broker's text log: Twisted's classic line format, written more cheaply.

``twisted.logger``'s text observer formats every event with ``string.Formatter`` in Python and
converts its timestamp afresh for each line, about 25 µs per line on CPython 3.11 -- a sixth
of what accepting an MQTT connection costs, as the broker logs a line per connection.
``classic_line`` gives the same text with ``str.format_map`` (in C) and a timestamp cached for
the current second, about a third of that; events it cannot format that way (a traceback, a
``{callable()}`` field, a format that fails) go to Twisted's own formatter unchanged.

``json_line`` writes an event as one JSON object per line instead (for log shippers), and
``LogOutput`` is the broker's log as the options set it: text or JSON, filtered by level (per
namespace if asked, changeable live on SIGHUP), to standard output or a file.  Its observer,
``LineWriter``, decides an event's level once per namespace and level (until the levels
change) and, while the reactor runs, writes the turn's lines with one write and one flush at
the end of the turn; a warning, an error or a failure is written at once, with every line
before it, and whatever is pending is written when the reactor shuts down or the process
exits.  ``Logger`` is Twisted's with a cheaper ``emit``.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from datetime import datetime, timezone
from threading import RLock
from time import time
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

import twisted.logger
from constantly import NamedConstant
from twisted.logger import (
    FileLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.logfile import LogFile
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

_LEVELS = frozenset(LogLevel.iterconstants())
_INFO = LogLevel.info


class Logger(twisted.logger.Logger):
    """``twisted.logger.Logger`` whose ``emit`` checks the level with one set look-up (Twisted's
    iterates over ``LogLevel``'s constants in Python for every event), and whose ``info``
    passes its fields on without packing them again."""

    def emit(self, level: NamedConstant, format: Optional[str] = None,
             **kwargs: object) -> None:
        if level not in _LEVELS:  # Twisted's own answer to a bad level
            super().emit(level, format, **kwargs)  # type: ignore[arg-type]
            return
        self._send(level, format, kwargs)

    def info(self, format: Optional[str] = None, **kwargs: object) -> None:
        self._send(_INFO, format, kwargs)

    def _send(self, level: NamedConstant, format: Optional[str],
              event: Dict[str, object]) -> None:
        event.update(log_logger=self, log_level=level, log_namespace=self.namespace,
                     log_source=self.source, log_format=format, log_time=time())
        if "log_trace" in event:
            event["log_trace"].append((self, self.observer))  # type: ignore[attr-defined]
        self.observer(event)


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


@implementer(ILogFilterPredicate)
class LevelFilter:
    """Drops events below the level set for their namespace (``LogLevelFilterPredicate``),
    keeping events that carry no level or namespace (Twisted's own predicate drops those)."""

    def __init__(self, level: NamedConstant = LogLevel.info,
                 namespaces: Optional[Dict[str, NamedConstant]] = None) -> None:
        self.predicate = LogLevelFilterPredicate(level)
        self.namespaces: Dict[str, NamedConstant] = {}
        self.decisions: Dict[Tuple[str, NamedConstant], bool] = {}
        """Whether an event of (namespace, level) passes, as decided so far for the levels in
        force (``allows`` fills it, ``set_levels`` empties it)."""
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
        self.decisions = {}

    def allows(self, namespace: str, level: NamedConstant) -> bool:
        """Whether an event of ``level`` in ``namespace`` (not empty) passes."""
        allowed = level >= self.predicate.logLevelForNamespace(namespace)
        if len(self.decisions) >= _MAX_DECISIONS:  # namespaces are a program's, but bound it
            self.decisions.clear()
        self.decisions[namespace, level] = allowed
        return allowed

    def __call__(self, event: Dict[str, Any]) -> NamedConstant:
        level = event.get("log_level")
        namespace = event.get("log_namespace")
        if level is None or not namespace:
            return PredicateResult.maybe
        allowed = self.decisions.get((namespace, level))
        if allowed is None:
            allowed = self.allows(namespace, level)
        return PredicateResult.maybe if allowed else PredicateResult.no


_MAX_DECISIONS = 4096
_URGENT = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


@implementer(ILogObserver)
class LineWriter:
    """Writes the events ``level_filter`` lets through to ``out``, each as the line ``format``
    gives (events it gives nothing for are skipped), in the order they come.

    Given a ``reactor``: while it runs and is not shutting down, a line logged in its thread
    waits for the end of the reactor turn, when the turn's lines are written with one
    ``write`` and one ``flush``.  Otherwise, and for a warning, an error, a critical line or a
    failure, the line and every line waiting before it are written at once.  ``flush`` writes
    what waits; it runs when the reactor begins to shut down and when the process exits.
    """

    def __init__(self, out: IO[Any], format: Callable[[Dict[str, Any]], Optional[str]],
                 level_filter: LevelFilter, reactor: Any = None) -> None:
        self.out = out
        self.format = format
        self.filter = level_filter
        self._pending: List[str] = []
        self._scheduled = False
        self._reactor = reactor
        self._lock = RLock()  # events may come from threads
        if reactor is not None:
            reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)
            atexit.register(self.flush)

    def __call__(self, event: Dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None:
            namespace = event.get("log_namespace")
            if namespace:
                level_filter = self.filter
                allowed = level_filter.decisions.get((namespace, level))
                if allowed is None:
                    allowed = level_filter.allows(namespace, level)
                if not allowed:
                    return
        text = self.format(event)
        if not text:
            return
        with self._lock:
            self._pending.append(text)
            if level in _URGENT or "log_failure" in event or not self._deferring():
                self._write()

    def _deferring(self) -> bool:
        """Whether the lines can wait for the end of this reactor turn (a flush is then due)."""
        reactor = self._reactor
        if reactor is None or not reactor.running or not isInIOThread():
            return False
        if not self._scheduled:
            reactor.callLater(0, self.flush)
            self._scheduled = True
        return True

    def _shutting_down(self) -> None:
        self._reactor = None  # from now on every line is written at once
        self.flush()

    def flush(self) -> None:
        """Write the lines that wait, if any."""
        with self._lock:
            self._scheduled = False
            if self._pending:
                self._write()

    def _write(self) -> None:
        pending = self._pending
        text = pending[0] if len(pending) == 1 else "".join(pending)
        pending.clear()
        self.out.write(text)
        self.out.flush()


class AppendingLogFile(LogFile):
    """Twisted's ``LogFile``, opened for appending: several processes (``--workers``) may write
    one file, and each line lands after the others' instead of over them (Twisted's opens for
    writing at the end it saw, so another process's later lines overwrite)."""

    def _openFile(self) -> None:
        self.closed = False
        self._file = open(self.path, "ab", 0)  # O_APPEND: each write goes to the current end
        if self.defaultMode is not None:
            try:
                os.chmod(self.path, self.defaultMode)
            except OSError:
                pass  # not a regular file (/dev/null)
        self.size = self._file.tell()


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
        self.observer: Optional[LineWriter] = None

    def start(self, reactor: Any = None) -> LineWriter:
        """Open the output (once) and return the observer that writes to it; given a
        ``reactor``, the observer writes a turn's lines together (see ``LineWriter``)."""
        if self.observer is None:
            line = json_line if self.format == "json" else classic_line
            self.observer = LineWriter(self._open(), line, self.filter, reactor)
        return self.observer

    def _open(self) -> IO[Any]:
        if self.path is not None:
            directory, name = os.path.split(os.path.abspath(self.path))
            self._file = AppendingLogFile(name, directory,
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
        if self.observer is not None:
            self.observer.flush()  # the lines of before go to the file of before
        self._file.reopen()
        return True


_twistd_output: Optional[LogOutput] = None


def use_with_twistd(output: LogOutput) -> str:
    """Make ``output`` the log of this twistd process: returns the name to give twistd as its
    ``--logger`` (it names a factory, which twistd imports and calls once it starts logging)."""
    global _twistd_output
    _twistd_output = output
    return f"{__name__}.twistd_observer"


def twistd_observer() -> LineWriter:
    """twistd's ``--logger`` factory: the observer of the output ``use_with_twistd`` chose,
    writing the lines of a turn of twistd's reactor together."""
    from twisted.internet import reactor

    output = _twistd_output if _twistd_output is not None else LogOutput()
    return output.start(reactor)
