"""One configuration file for the broker: ``twistd -n mqtt --config broker.yaml``.

The file is YAML.  ``KEYS`` is its schema, one row per key: the key's path, what it accepts,
its default, what it means and which command-line option it stands for.  Everything the command
line sets can be set in the file; an option given on the command line wins over the same key in
the file.  ``apply_config_file`` (called first thing in ``Options.postOptions``) reads the file,
checks every key before anything starts, and fills only the options the command line did not
give.  A mistake stops start-up with one ``ConfigError`` naming the file, the line, the key path
and what is expected; twistd then prints that one line and exits with status 78 (``EX_CONFIG``).
The command-line options that stand for a key go through the same check (``OptionValue``).

The file is read again on SIGHUP (``ConfigReloader``): what can change live (log levels; the auth
ledger's and backends' rules, which their own hooks reload) changes, and the log says which
other changes need a restart.  docs/configuration.md describes every key.
"""

from __future__ import annotations

import difflib
import getopt
import os
import sys
from dataclasses import dataclass, field, fields
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    FrozenSet,
    List,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from twisted_mqtt.capabilities import (
    DEFAULT_CAPABILITIES,
    DEFAULT_COMPATIBILITIES,
    Compatibilities,
)
from twisted_mqtt.dashboard_limits import DEFAULT_DASHBOARD_LIMITS
from twisted_mqtt.logs import FORMATS, LEVELS, LogOutput, parse_level, use_with_twistd

if TYPE_CHECKING:
    from twisted_mqtt.service import BrokerService

log = Logger()

CONFIG_ERROR_EXIT = 78
"""The exit status of a configuration mistake: ``EX_CONFIG`` of sysexits.h (a systemd unit can
name it in ``RestartPreventExitStatus=`` so that a broken file is not restarted in a loop)."""

USAGE_ERROR_EXIT = 64
"""The exit status of a command line that cannot be parsed (an unknown option, a missing
argument): ``EX_USAGE`` of sysexits.h, the same for ``twistd mqtt`` and ``python -m
twisted_mqtt``.  A value an option refuses is a configuration mistake (78), as in the file."""

DEFAULT_SHUTDOWN_TIMEOUT = 10.0


class OptionValue:
    """The coerce function of a command-line option: the text is read as YAML reads a scalar
    (``-5`` an integer, ``0.5`` a number, ``null`` none) and checked by ``check``, else by the
    check of the key the option stands for (``Key.option``), so that the command line and the
    file accept the same values.  ``ConfigError`` naming the option and what it accepts."""

    def __init__(self, option: str, check: Optional[Check] = None) -> None:
        self.option = option
        self._check = check

    @property
    def check(self) -> Check:
        """What the option accepts."""
        if self._check is not None:
            return self._check
        return next(key.check for key in KEYS if key.option == self.option)

    @property
    def coerceDoc(self) -> str:
        """Appended to the option's help (after ". ")."""
        return f"Expected: {self.check.expected}."

    def __call__(self, text: str) -> Any:
        try:
            return self.check(_scalar(text))
        except Invalid as error:
            raise ConfigError(error.problem, path=f"--{self.option}") from None


def _scalar(text: str) -> Any:
    """An integer, a number, None (``null``, ``~``) or the text itself."""
    if text in ("null", "~"):
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


OPTION_PARAMETERS: List[List[Any]] = [
    ["config", "c", None,
     "Read settings from this YAML file (docs/configuration.md); options given on the command "
     "line win over the file.  SIGHUP reads it again."],
    ["log-level", None, "info",
     "Log events at this level and above: debug, info, warn, error or critical."],
    ["log-format", None, "text",
     "text (Twisted's classic lines) or json (one JSON object per line, for log shippers)."],
    ["log-file", None, None,
     "Append the log to this file (reopened on SIGHUP, for logrotate); default: twistd's "
     "--logfile, or standard output with -n."],
    ["shutdown-timeout", None, DEFAULT_SHUTDOWN_TIMEOUT,
     "Seconds a graceful stop (SIGTERM) may take before the broker stops anyway",
     OptionValue("shutdown-timeout")],
]
"""The options this module adds to ``twistd mqtt`` (``tap.Options``)."""


class ConfigError(usage.UsageError):
    """A configuration that cannot be used.  Its text is one line: the file, the line (and
    column, for YAML syntax), the key path, the problem and what is expected."""

    def __init__(self, problem: str, source: Optional[str] = None, line: Optional[int] = None,
                 path: Optional[str] = None, column: Optional[int] = None) -> None:
        self.problem = problem
        self.source = source
        self.line = line
        self.column = column
        self.path = path
        where = source or ""
        if line is not None:
            where += f", line {line}" if where else f"line {line}"
            if column is not None:
                where += f", column {column}"
        text = f"{path}: {problem}" if path else problem
        super().__init__(f"{where}: {text}" if where else text)


# -- reading YAML with positions ---------------------------------------------------------------

MERGE_TAG = "tag:yaml.org,2002:merge"


class Document:
    """A YAML document as plain Python values, with the line of every key path in it
    (``listeners.mqtt[0]``, ``capabilities.receive_maximum``)."""

    def __init__(self, source: str, data: Any,
                 lines: Dict[str, Tuple[int, int]], key_lines: Dict[str, int]) -> None:
        self.source = source
        self.data = data
        self.lines = lines
        """Line and column of each key path's value."""
        self.key_lines = key_lines
        """Line of each key path's key (where a mapping names it)."""

    def line_of(self, path: str, key: bool = False) -> Optional[int]:
        """The line of ``path``'s key (``key``) or value; else of its closest parent."""
        while True:
            if key and path in self.key_lines:
                return self.key_lines[path]
            if path in self.lines:
                return self.lines[path][0]
            if not path:
                return None
            path = _parent(path)

    def error(self, path: str, problem: str, key: bool = False) -> ConfigError:
        """A ``ConfigError`` about ``path`` in this document."""
        return ConfigError(problem, self.source, self.line_of(path, key), path or None)


def _parent(path: str) -> str:
    """``a.b[2]`` -> ``a.b``; ``a.b`` -> ``a``; ``a`` -> ``""``."""
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def _child(path: str, key: Union[str, int]) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def parse_yaml(text: Union[str, bytes], source: str) -> Document:
    """Parse one YAML document safely (no Python tags), keeping the line of every key path;
    ``ConfigError`` with the line and column of a syntax error, a duplicate key or a key that
    is not text."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        raise ConfigError("reading a configuration file needs PyYAML (pip install pyyaml)",
                          source) from None
    loader = yaml.SafeLoader(text)
    lines: Dict[str, Tuple[int, int]] = {}
    key_lines: Dict[str, int] = {}

    def build(node: Any, path: str, seen: FrozenSet[int]) -> Any:
        lines[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if id(node) in seen:
            raise ConfigError("an alias refers to itself", source, lines[path][0], path or None)
        seen = seen | {id(node)}
        if isinstance(node, yaml.MappingNode):
            own = sum(1 for key_node, _ in node.value if key_node.tag != MERGE_TAG)
            loader.flatten_mapping(node)  # merge keys (<<: *defaults) come first, then own keys
            merged = len(node.value) - own
            result: Dict[str, Any] = {}
            own_keys: Set[str] = set()
            for index, (key_node, value_node) in enumerate(node.value):
                key = loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise ConfigError(f"keys must be text, not {key!r}", source, line,
                                      path or None)
                child = _child(path, key)
                if index >= merged:  # a key of this mapping (not merged from an alias)
                    if key in own_keys:
                        raise ConfigError(f"appears twice (also on line {key_lines[child]})",
                                          source, line, child)
                    own_keys.add(key)
                key_lines[child] = line
                result[key] = build(value_node, child, seen)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [build(item, _child(path, index), seen)
                    for index, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    try:
        root = loader.get_single_node()
        data = None if root is None else build(root, "", frozenset())
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "cannot parse"
        started = error.context_mark
        if error.context and error.problem and started is not None:
            problem += (f" ({error.context} started on line {started.line + 1}, column "
                        f"{started.column + 1})")
        raise ConfigError(f"not valid YAML: {problem}", source,
                          mark.line + 1 if mark else None, None,
                          mark.column + 1 if mark else None) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {error}", source) from None
    finally:
        loader.dispose()
    return Document(source, data, lines, key_lines)


# -- what each key accepts ---------------------------------------------------------------------


class Invalid(Exception):
    """A value a checker refuses: ``problem`` says why (the path and line are added by the
    caller), ``path`` is the key path below the checked one, if the problem is deeper."""

    def __init__(self, problem: str, path: str = "", key: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path
        self.key = key


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return repr(value)


class Check:
    """What a key accepts: ``expected`` says it in words; calling it returns the value to use
    or raises ``Invalid``."""

    expected = "a value"

    def __call__(self, value: Any) -> Any:
        return value

    def refuse(self, value: Any) -> NoReturn:
        """Raise ``Invalid``: expected this, not ``value``."""
        raise Invalid(f"expected {self.expected}, not {_shown(value)}")


class Integer(Check):
    """An integer within bounds (``true``/``false`` are not integers here)."""

    def __init__(self, minimum: int = 0, maximum: Optional[int] = None) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.expected = (f"an integer from {minimum} to {maximum}" if maximum is not None
                         else f"an integer >= {minimum}")

    def __call__(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.refuse(value)
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            self.refuse(value)
        return value


class Number(Check):
    """A number of seconds (an integer or a decimal) at least ``minimum`` (above it if
    ``strict``)."""

    def __init__(self, minimum: float = 0.0, strict: bool = False) -> None:
        self.minimum, self.strict = minimum, strict
        self.expected = f"a number {'>' if strict else '>='} {minimum:g}"

    def __call__(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.refuse(value)
        number = float(value)
        if not number == number or number < self.minimum or (self.strict
                                                             and number == self.minimum):
            self.refuse(value)
        return number


class Boolean(Check):
    """``true`` or ``false``."""

    expected = "true or false"

    def __call__(self, value: Any) -> bool:
        if not isinstance(value, bool):
            self.refuse(value)
        return value


class Text(Check):
    """A non-empty string."""

    expected = "text"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            self.refuse(value)
        return value


class OneOf(Check):
    """One of a few words."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.expected = f"one of {', '.join(choices)}"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in self.choices:
            self.refuse(value)
        return value.lower()


class Maybe(Check):
    """``null`` (not set) or what ``inner`` accepts."""

    def __init__(self, inner: Check) -> None:
        self.inner = inner
        self.expected = f"{inner.expected}, or null"

    def __call__(self, value: Any) -> Any:
        return None if value is None else self.inner(value)


class ListOf(Check):
    """A list of what ``item`` accepts; each item is checked at ``path[index]``."""

    def __init__(self, item: Check, items: Optional[str] = None) -> None:
        self.item = item
        self.expected = f"a list of {items or item.expected}"

    def __call__(self, value: Any) -> List[Any]:
        if not isinstance(value, list):
            self.refuse(value)
        checked = []
        for index, entry in enumerate(value):
            try:
                checked.append(self.item(entry))
            except Invalid as error:
                raise Invalid(error.problem, f"[{index}]{error.path}", error.key) from None
        return checked


class Level(OneOf):
    """A log level name."""

    def __init__(self) -> None:
        super().__init__(*LEVELS)
        self.expected = "one of debug, info, warn, error, critical"


class LevelsByNamespace(Check):
    """A mapping of logging namespace (``twisted_mqtt.connection``) to level."""

    expected = "a mapping of logging namespace to level"

    def __call__(self, value: Any) -> Dict[str, str]:
        if not isinstance(value, dict):
            self.refuse(value)
        level = Level()
        result = {}
        for namespace, name in value.items():
            try:
                result[namespace] = level(name)
            except Invalid as error:
                raise Invalid(error.problem, f".{namespace}") from None
        return result


_FILE_ARGUMENTS = ("privateKey", "certKey", "extraCertChain", "caFile", "dhParameters")


def endpoint_files(endpoint: str,
                   arguments: Sequence[str] = _FILE_ARGUMENTS) -> List[Tuple[str, str]]:
    """The (argument, path) of every certificate, key or CA file an endpoint string names
    (``arguments``; by default a server endpoint's ``privateKey=``, ``certKey=``,
    ``extraCertChain=``, ``caFile=``, ``dhParameters=``, also inside ``haproxy:`` and other
    wrapping endpoints)."""
    parts: List[str] = []
    current = []
    escaped = False
    for char in endpoint:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    found = []
    for part in parts:
        name, equals, value = part.partition("=")
        if equals and name in arguments and value:
            found.append((name, value))
    return found


def check_endpoint(endpoint: str) -> None:
    """Refuse (ValueError) an endpoint string that names a certificate or key file that cannot
    be read, or that Twisted cannot parse (checked with the real reactor, listening nowhere)."""
    for name, path in endpoint_files(endpoint):
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise ValueError(f"cannot read {name}={path}: {error.strerror or error}; expected "
                             "a readable certificate or key file") from None
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, endpoint)
    except (IndexError, KeyError) as error:
        if "systemd:" not in endpoint:
            raise ValueError(f"bad endpoint {endpoint!r}: {error!r}") from None
        raise ValueError(f"bad endpoint {endpoint!r}: systemd passed no such socket "
                         f"({error!r}; LISTEN_FDS={os.environ.get('LISTEN_FDS')}, "
                         f"LISTEN_FDNAMES={os.environ.get('LISTEN_FDNAMES')}); expected "
                         "to be started by a systemd .socket unit") from None
    except Exception as error:
        raise ValueError(f"bad endpoint {endpoint!r}: {error}; expected a Twisted server "
                         "endpoint string such as tcp:1883 or ssl:8883:privateKey=key.pem "
                         "(docs/listeners.md)") from None


class Endpoint(Text):
    """A Twisted server endpoint string whose files can be read."""

    expected = "a Twisted server endpoint string, e.g. tcp:1883"

    def __call__(self, value: Any) -> str:
        endpoint = super().__call__(value)
        try:
            check_endpoint(endpoint)
        except ValueError as error:
            raise Invalid(str(error)) from None
        return endpoint


class Network(Text):
    """An address or network that X-Forwarded-For is believed from."""

    expected = "an address or network, e.g. 10.0.0.0/8"

    def __call__(self, value: Any) -> str:
        from twisted_mqtt.websocket import parse_network

        text = super().__call__(value)
        try:
            parse_network(text)
        except ValueError as error:
            raise Invalid(str(error)) from None
        return text


class RequestPath(Text):
    """A WebSocket request path."""

    expected = "a request path starting with /"

    def __call__(self, value: Any) -> str:
        text = super().__call__(value)
        if not text.startswith("/"):
            self.refuse(value)
        return text


class TopicFilter(Text):
    """A valid MQTT topic filter."""

    expected = "a topic filter"

    def __call__(self, value: Any) -> str:
        from twisted_mqtt.topics import validate_topic_filter

        text = super().__call__(value)
        try:
            validate_topic_filter(text)
        except Exception as error:
            raise Invalid(f"bad topic filter {text!r}: {error}") from None
        return text


def _unknown(key: str, known: Sequence[str], where: str = "") -> Invalid:
    """``Invalid`` for an unknown ``key``, suggesting the closest of ``known``."""
    close = difflib.get_close_matches(key, known, 1, 0.6)
    hint = (f"did you mean {_child(where, close[0])}?" if close
            else f"known keys here: {', '.join(sorted(known))}")
    return Invalid(f"unknown key; {hint}", f".{key}", key=True)


@dataclass(frozen=True)
class WebSocketListener:
    """One ``listeners.websocket`` entry."""

    endpoint: str
    path: Optional[str] = None
    origins: Tuple[str, ...] = ()
    trusted_proxies: Tuple[str, ...] = ()


WEBSOCKET_KEYS: Dict[str, Tuple[Check, Any, str]] = {
    "endpoint": (Endpoint(), None,
                 "the endpoint string to listen on (required), e.g. tcp:8080"),
    "path": (Maybe(RequestPath()), None,
             "accept this request path only (others get 404); null: any path"),
    "origins": (ListOf(Text(), "origins, e.g. [https://example.com]"), [],
                "accept browsers from these Origins only (others get 403); []: any origin"),
    "trusted_proxies": (ListOf(Network(), "addresses or networks, e.g. [10.0.0.0/8]"), [],
                        "believe X-Forwarded-For from these peer addresses or networks"),
}
"""The keys of a ``listeners.websocket`` entry: (check, default, meaning)."""


class WebSocketListeners(Check):
    """A list of WebSocket listeners: each an endpoint string or a mapping of
    ``WEBSOCKET_KEYS``."""

    expected = "a list of endpoint strings or {endpoint, path, origins, trusted_proxies}"

    def __call__(self, value: Any) -> List[WebSocketListener]:
        if not isinstance(value, list):
            self.refuse(value)
        listeners = []
        for index, entry in enumerate(value):
            try:
                listeners.append(self.entry(entry))
            except Invalid as error:
                raise Invalid(error.problem, f"[{index}]{error.path}", error.key) from None
        return listeners

    def entry(self, entry: Any) -> WebSocketListener:
        """One listener from an endpoint string or a mapping."""
        if isinstance(entry, str):
            return WebSocketListener(Endpoint()(entry))
        if not isinstance(entry, dict):
            self.refuse(entry)
        for key in entry:
            if key not in WEBSOCKET_KEYS:
                raise _unknown(key, list(WEBSOCKET_KEYS))
        if "endpoint" not in entry:
            raise Invalid("missing endpoint; expected e.g. endpoint: tcp:8080")
        values: Dict[str, Any] = {}
        for key, (check, default, _) in WEBSOCKET_KEYS.items():
            try:
                values[key] = check(entry.get(key, default))
            except Invalid as error:
                raise Invalid(error.problem, f".{key}{error.path}") from None
        return WebSocketListener(values["endpoint"], values["path"], tuple(values["origins"]),
                                 tuple(values["trusted_proxies"]))


class BridgeList(Check):
    """``bridges:``, the MQTT bridges (``twisted_mqtt.bridges.mqtt_settings.Bridges``)."""

    expected = "a list of bridges, each a mapping of name, address, topics..."

    def __call__(self, value: Any) -> List[Any]:
        from twisted_mqtt.bridges.mqtt_settings import Bridges

        return Bridges()(value)


class KafkaBridgeList(Check):
    """``kafka_bridges:``, the Kafka bridges (checked by
    ``twisted_mqtt.bridges.kafka_settings.KafkaBridges``; confluent-kafka must be
    installed)."""

    expected = "a list of Kafka bridges, each a mapping of name, servers, egress, ingress..."

    def __call__(self, value: Any) -> List[Any]:
        from twisted_mqtt.bridges.kafka_settings import KafkaBridges

        return KafkaBridges()(value)


class LedgerFile(Text):
    """An auth ledger file that can be read and used."""

    expected = "a readable ledger file"

    def __call__(self, value: Any) -> str:
        from twisted_mqtt.auth.ledger import LedgerError, read_ledger

        path = super().__call__(value)
        try:
            read_ledger(path)
        except LedgerError as error:
            raise Invalid(str(error)) from None
        return path


class CredChecker(Text):
    """A twisted.cred checker description, as ``--auth`` takes (``file:PATH``,
    ``memory:USER:PASSWORD``, ...)."""

    expected = "a checker description such as file:/etc/mqtt/passwd (twistd --help-auth)"

    def __call__(self, value: Any) -> str:
        from twisted.cred import strcred

        text = super().__call__(value)
        try:
            strcred.makeChecker(text)
        except Exception as error:
            raise Invalid(f"bad checker {text!r}: {error}") from None
        return text


BackendSpec = Union[str, Tuple[str, Any]]
"""A backend as ``--auth-backend`` takes it (a URL), or (kind, settings) from a mapping."""


class Backends(Check):
    """A list of auth backends: each a URL (as ``--auth-backend`` takes) or a mapping with a
    ``url`` and any settings of that backend's settings dataclass (``password_hash``,
    ``cache_ttl``, ``blacklist``...; see docs/auth.md)."""

    expected = "a list of backend URLs or {url: URL, SETTING: VALUE...}"

    def __call__(self, value: Any) -> List[BackendSpec]:
        if not isinstance(value, list):
            self.refuse(value)
        backends = []
        for index, entry in enumerate(value):
            try:
                backends.append(self.entry(entry))
            except Invalid as error:
                raise Invalid(error.problem, f"[{index}]{error.path}", error.key) from None
        return backends

    def entry(self, entry: Any) -> BackendSpec:
        """A URL, or (kind, settings) for a mapping with settings beyond its URL."""
        from twisted_mqtt.auth.backends import backend_settings

        if isinstance(entry, str):
            try:
                backend_settings(entry)
            except (ValueError, ImportError) as error:
                raise Invalid(str(error)) from None
            return entry
        if not isinstance(entry, dict):
            self.refuse(entry)
        url = entry.get("url")
        if not isinstance(url, str):
            raise Invalid("missing url; expected e.g. url: redis://localhost:6379/0")
        try:
            kind, settings = backend_settings(url)
        except (ValueError, ImportError) as error:
            raise Invalid(str(error), ".url") from None
        known = [f.name for f in fields(settings)] + ["auth_mode", "acl_mode"]
        for key in entry:
            if key != "url" and str(key).replace("-", "_") not in known:
                raise _unknown(key, ["url", *known])
        if len(entry) == 1:
            return url
        values = {f.name: getattr(settings, f.name) for f in fields(settings)}
        values.update((key, item) for key, item in entry.items() if key != "url")
        try:
            return kind, type(settings).from_dict(values)
        except ValueError as error:
            raise Invalid(str(error)) from None


class Store(Text):
    """A store specification: memory, sqlite:PATH or redis://HOST:PORT/DB."""

    expected = "memory, sqlite:PATH or redis://HOST:PORT/DB"

    def __call__(self, value: Any) -> str:
        from twisted_mqtt.storage import parse_store

        text = super().__call__(value)
        try:
            parse_store(text)
        except ValueError as error:
            raise Invalid(str(error)) from None
        return text


class ClusterUrl(Text):
    """The Redis database of a cluster: redis://[:PASSWORD@]HOST[:PORT][/DB][?prefix=P]."""

    expected = "redis://HOST:PORT/DB"

    def __call__(self, value: Any) -> str:
        from twisted_mqtt.storage.redis import parse_redis_url

        text = super().__call__(value)
        try:
            parse_redis_url(text)
        except ValueError as error:
            raise Invalid(str(error)) from None
        try:
            import txredisapi  # noqa: F401
        except ImportError:
            raise Invalid("the cluster needs txredisapi: pip install "
                          "'twisted-mqtt-broker[redis]'") from None
        return text


class NodeName(Text):
    """The name of a cluster node."""

    expected = "1 to 128 printable characters without spaces, ':' or '/'"

    def __call__(self, value: Any) -> str:
        from twisted_mqtt.cluster.membership import check_node_name

        text = super().__call__(value)
        try:
            return check_node_name(text)
        except ValueError as error:
            raise Invalid(str(error)) from None


class WritableFile(Text):
    """A file the broker can append to (created if missing)."""

    expected = "a file path the broker can write"

    def __call__(self, value: Any) -> str:
        path = super().__call__(value)
        problem = writable_problem(path)
        if problem:
            raise Invalid(problem)
        return path


def writable_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be appended to, or None."""
    if os.path.isdir(path):
        return f"{path} is a directory; expected a file"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else f"cannot write {path}: permission denied"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"cannot create {path}: no directory {directory}"
    if not os.access(directory, os.W_OK):
        return f"cannot create {path}: directory {directory} is not writable"
    return None


# -- the schema --------------------------------------------------------------------------------

Apply = Callable[[usage.Options, Any], None]


@dataclass(frozen=True)
class Key:
    """One key of the configuration file."""

    path: str
    """Its dotted path, e.g. ``capabilities.receive_maximum``."""
    check: Check
    """What it accepts."""
    default: Any
    """The value used when neither the file nor the command line gives one."""
    help: str
    """What it means, for the documentation."""
    option: Optional[str] = None
    """The ``tap.Options`` key it sets (and the command-line option that wins over it)."""
    cli: Tuple[str, ...] = ()
    """Command-line options that win over it (default: ``option``)."""
    apply: Optional[Apply] = None
    """How it sets the options, if not by ``options[option] = value``."""
    live: bool = False
    """Whether a change takes effect on SIGHUP (else at the next start)."""

    @property
    def overridden_by(self) -> Tuple[str, ...]:
        """The command-line options that win over this key."""
        return self.cli or ((self.option,) if self.option else ())

    def set(self, options: usage.Options, value: Any) -> None:
        """Set the options from this key's (checked) value."""
        if self.apply is not None:
            self.apply(options, value)
        elif self.option is not None:
            options[self.option] = value


def _into(name: str, field_name: str) -> Apply:
    """Set ``options[name][field_name]`` (a dict of Capabilities/Compatibilities fields)."""
    def apply(options: usage.Options, value: Any) -> None:
        settings = options.get(name)
        if settings is None:
            settings = options[name] = {}
        settings[field_name] = value
    return apply


def _set(name: str) -> Apply:
    """Set ``options[name]`` (a setting with no command-line option)."""
    def apply(options: usage.Options, value: Any) -> None:
        options[name] = value
    return apply


def _flag(option: str, invert: bool = False) -> Apply:
    def apply(options: usage.Options, value: Any) -> None:
        options[option] = int(bool(value) != invert)
    return apply


def _websocket(options: usage.Options, listeners: List[WebSocketListener]) -> None:
    given = options.get("command-line", frozenset())
    options["ws"] = [listener.endpoint for listener in listeners]
    options["ws-listeners"] = [
        (listener.endpoint,
         options["ws-path"] if "ws-path" in given else listener.path,
         list(options["ws-origin"] if "ws-origin" in given else listener.origins),
         list(options["ws-trusted-proxy"] if "ws-trusted-proxy" in given
              else listener.trusted_proxies))
        for listener in listeners]


def _checkers(options: usage.Options, descriptions: List[str]) -> None:
    add = options.opt_auth  # type: ignore[attr-defined]  # twisted.cred's AuthOptionMixin
    for description in descriptions:
        add(description)


def _capability(name: str, check: Check, help: str, option: Optional[str] = None) -> Key:
    default = getattr(DEFAULT_CAPABILITIES, name)
    return Key(f"capabilities.{name}", check,
               list(default) if isinstance(default, tuple) else default, help, option,
               apply=None if option else _into("capability-settings", name))


def _dashboard(name: str, check: Check, help: str, option: Optional[str] = None) -> Key:
    default = getattr(DEFAULT_DASHBOARD_LIMITS, name)
    return Key(f"dashboard.{name}", check,
               list(default) if isinstance(default, tuple) else default, help, option,
               apply=None if option else _into("dashboard-limits", name))


def _compatibility(name: str, help: str) -> Key:
    return Key(f"compatibilities.{name}", Boolean(), getattr(DEFAULT_COMPATIBILITIES, name),
               help, apply=_into("compatibility-settings", name))


ENDPOINTS = "Twisted server endpoint strings, e.g. [tcp:1883]"
U16 = Integer(0, 65535)
U32 = Integer(0, 0xFFFFFFFF)

KEYS: Tuple[Key, ...] = (
    # listeners
    Key("listeners.mqtt", ListOf(Endpoint(), ENDPOINTS), ["tcp:1883"],
        "MQTT listeners, each a Twisted endpoint string (tcp:1883, "
        "ssl:8883:privateKey=key.pem:certKey=cert.pem, unix:/run/mqtt.sock, "
        "systemd:domain=INET:index=0, haproxy:tcp:1883); tcp:1883 if no listener is given",
        "listen", cli=("listen", "tcp")),
    Key("listeners.websocket", WebSocketListeners(), [],
        "MQTT over WebSocket listeners, each an endpoint string or a mapping of endpoint, path, "
        "origins and trusted_proxies (ssl: and mqtts: endpoints give wss)", "ws",
        apply=_websocket),
    Key("listeners.stats", ListOf(Endpoint(), ENDPOINTS), [],
        "HTTP listeners serving /, /healthcheck and /metrics", "stats"),
    Key("listeners.dashboard", ListOf(Endpoint(), ENDPOINTS), [],
        "HTTP listeners serving the dashboard and the admin API (a bare port or a tcp: "
        "endpoint without interface= listens on 127.0.0.1 only)", "dashboard"),
    Key("dashboard.users_file", Maybe(Text()), None,
        "the dashboard users: a password file of user:hash lines (python -m "
        "twisted_mqtt.passwd, or bcrypt hashes)", "dashboard-users"),
    Key("dashboard.api_keys_file", Maybe(Text()), None,
        "the admin API keys: a file of name:key lines, each key of 24 characters or more",
        "dashboard-api-keys"),
    _dashboard("max_body", Integer(1), "the largest request body the dashboard accepts, bytes"),
    _dashboard("max_streams", Integer(0), "dashboard event streams open at once, in all"),
    _dashboard("max_streams_per_user", Integer(0),
               "dashboard event streams one user or API key may hold open at once"),
    _dashboard("stream_stall", Number(0.0, strict=True),
               "seconds an event stream's reader may leave its events unread before the "
               "stream is closed"),
    _dashboard("max_sessions", Integer(1), "dashboard browser sessions kept at once"),
    _dashboard("session_idle", Number(0.0, strict=True),
               "seconds a dashboard browser session lasts without a request",
               "dashboard-session-idle"),
    _dashboard("idle_timeout", Number(0.0, strict=True),
               "seconds a dashboard HTTP connection may stay idle"),
    _dashboard("sign_in_attempts", Integer(1),
               "failed dashboard sign-ins in a row allowed from one address or for one user "
               "before each further attempt waits a doubling back-off",
               "dashboard-sign-in-attempts"),
    _dashboard("sign_in_backoff", Number(0.0, strict=True),
               "the longest dashboard sign-in back-off, seconds"),
    _dashboard("payload_view_bytes", Integer(1),
               "payload bytes one retained message's dashboard view shows (the rest is cut, "
               "and the view says so)"),
    _dashboard("allowed_hosts", ListOf(Text(), "host names"),
               "Host header names a loopback dashboard listener accepts besides loopback ones "
               "(a reverse proxy's name; other names are refused against DNS rebinding)"),
    # capabilities (limits, advertised in CONNACK)
    _capability("maximum_packet_size", Integer(1, 268435460),
                "largest packet accepted from a client, bytes", "max-packet-size"),
    _capability("receive_maximum", Integer(1, 65535),
                "unacknowledged QoS 1/2 messages a client may send at once", "receive-maximum"),
    _capability("topic_alias_maximum", U16,
                "highest topic alias a client may use (0 disables them)",
                "topic-alias-maximum"),
    _capability("maximum_qos", Integer(0, 2), "highest QoS granted and accepted"),
    _capability("retain_available", Boolean(), "whether retained messages are supported"),
    _capability("wildcard_subscription_available", Boolean(),
                "whether subscriptions may use + and #"),
    _capability("subscription_identifier_available", Boolean(),
                "whether subscription identifiers are supported"),
    _capability("shared_subscription_available", Boolean(),
                "whether $share/GROUP/ subscriptions are supported"),
    _capability("maximum_keep_alive", Maybe(U16),
                "longest keep alive allowed, seconds; a client asking for more (or none) gets "
                "this one; null: no limit", "max-keep-alive"),
    _capability("maximum_session_expiry", U32,
                "longest session expiry interval granted, seconds (4294967295: never)"),
    _capability("maximum_inflight", Integer(1),
                "unacknowledged QoS 1/2 messages sent to one client"),
    _capability("maximum_pending_bytes", Integer(1),
                "bytes queued for a client and not yet taken by its transport beyond which it "
                "is blocked (publishers held back, QoS 1/2 queued, QoS 0 dropped after the "
                "grace); at twice this it is disconnected"),
    _capability("slow_consumer_grace", Number(0.0),
                "seconds a blocked client may hold back the clients publishing to it (they are "
                "not read until it drains); then its QoS 0 messages are dropped"),
    _capability("maximum_queued_messages", Integer(0),
                "messages held per session beyond the inflight window"),
    _capability("maximum_queued_bytes", Integer(0),
                "topic and payload bytes of the messages held per session beyond the inflight "
                "window", "max-queued-bytes"),
    _capability("maximum_subscriptions", Integer(0),
                "subscriptions one session may hold; a new filter beyond it is refused with "
                "SUBACK 0x97 (MQTT 3: 0x80)"),
    _capability("maximum_retained_messages", Integer(0), "retained messages kept"),
    _capability("retained_lookup_per_turn", Integer(1),
                "levels of the retained index the lookups of one SUBSCRIBE may visit in one "
                "reactor turn; further filters get their retained messages on later turns"),
    _capability("maximum_bans", Integer(0),
                "bans (client ids, user names, addresses) in force at once"),
    _capability("maximum_client_id_length", Integer(1, 65535),
                "longest client identifier accepted"),
    _capability("maximum_topic_levels", Integer(1), "most levels in a topic name or filter"),
    _capability("refused_filters", ListOf(TopicFilter(), "topic filters"),
                "topic filters a subscription to which is refused with SUBACK 0x80",
                "refuse-subscribe"),
    _capability("response_information", Maybe(Text()),
                "returned in CONNACK to a client requesting response information; "
                "{client_id} is replaced; null: none"),
    _capability("connect_timeout", Number(0.0, strict=True),
                "seconds a new connection may take to complete CONNECT (authentication "
                "included) before it is closed"),
    _capability("keepalive_sweep_interval", Number(0.0, strict=True),
                "seconds between checks of keep alive deadlines"),
    _capability("retained_message_expiry", Maybe(U32),
                "seconds after which retained messages without their own expiry expire; "
                "null: never"),
    # compatibility switches
    _compatibility("queue_qos0_offline",
                   "queue QoS 0 messages for an offline client with a persistent session"),
    _compatibility("allow_empty_client_id_v31",
                   "accept a zero-length client id from MQTT 3.1 clients"),
    _compatibility("disconnect_v3_on_refused_publish",
                   "close an MQTT 3 connection that publishes where it may not"),
    # the broker
    Key("sys_interval", Number(0.0), DEFAULT_CAPABILITIES.sys_interval,
        "seconds between $SYS publications (0 disables them)", "sys-interval"),
    Key("tcp_nodelay", Boolean(), True,
        "turn Nagle's algorithm off on MQTT connections over TCP", "no-tcp-nodelay",
        apply=_flag("no-tcp-nodelay", invert=True)),
    Key("shutdown_timeout", Number(0.0, strict=True), DEFAULT_SHUTDOWN_TIMEOUT,
        "seconds a graceful stop (SIGTERM) may take before the broker stops anyway",
        "shutdown-timeout"),
    Key("workers", Integer(0, 256), 0,
        "broker processes sharing the listeners, each a cluster node joined through the "
        "cluster's Redis, which it needs; 0: one process is the broker", "workers"),
    # authentication
    Key("auth.allow_anonymous", Boolean(), False,
        "accept clients without credentials from any address (default: from loopback and Unix "
        "sockets only, when nothing else authenticates)", "allow-anonymous",
        apply=_flag("allow-anonymous")),
    Key("auth.ledger", Maybe(LedgerFile()), None,
        "authenticate and authorise by this YAML or JSON ledger file (Mochi MQTT's format; its "
        "content is reloaded on SIGHUP)", "auth-ledger"),
    Key("auth.backends", Backends(), [],
        "authentication and ACL backends: URLs as --auth-backend takes them, or mappings of a "
        "url and that backend's settings (docs/auth.md)", "auth-backend"),
    Key("auth.checkers", ListOf(CredChecker(), "checker descriptions (twistd --help-auth)"), [],
        "twisted.cred checkers as --auth takes them, e.g. file:/etc/mqtt/passwd", "auth",
        apply=_checkers),
    # persistence
    Key("store.url", Store(), "memory",
        "where sessions and messages are kept: memory, sqlite:PATH or redis://HOST:PORT/DB",
        "store"),
    Key("store.durable", Boolean(), False,
        "commit each QoS 1/2 message before acknowledging it (with a persistent store)",
        "durable", apply=_flag("durable")),
    Key("store.skip_bad_rows", Boolean(), False,
        "start even if the store holds rows of bad data, skipping each (logged) and the session "
        "or retained message it belongs to (default: refuse to start)", "store-skip-bad-rows",
        apply=_flag("store-skip-bad-rows")),
    # bridges
    Key("bridges", BridgeList(), [],
        "MQTT bridges to other brokers, each a mapping of name, address, topics and the "
        "connection's settings (docs/bridges.md); --bridge, --bridge-topic and --bridge-option "
        "replace the whole list", "bridges", cli=("bridge", "bridge-topic", "bridge-option")),
    Key("kafka_bridges", KafkaBridgeList(), [],
        "Kafka bridges, each a mapping of name, servers, egress and ingress rules and delivery "
        "settings (docs/bridges.md); needs the kafka extra (confluent-kafka)",
        apply=_set("kafka-bridges")),
    # cluster
    Key("cluster.url", Maybe(ClusterUrl()), None,
        "join the cluster of brokers sharing this Redis database (docs/cluster.md); null: a "
        "single node", "cluster"),
    Key("cluster.node_name", Maybe(NodeName()), None,
        "this node's name in the cluster, unique among its nodes; null: HOSTNAME-PID",
        "node-name"),
    Key("cluster.lease", Number(0.5), 3.0,
        "seconds a node's lease lasts unrenewed: a dead node is detected within it, and a node "
        "that cannot renew it stops serving", "cluster-lease"),
    Key("cluster.handover_timeout", Number(0.1), 2.0,
        "seconds a node waits for another to hand over the session of a client id connecting "
        "here before taking it (the other node's later writes of it are then refused)",
        "cluster-handover-timeout"),
    # logging
    Key("logging.level", Level(), "info",
        "log events at this level and above: debug, info, warn, error, critical",
        "log-level", live=True),
    Key("logging.levels", LevelsByNamespace(), {},
        "levels for some logging namespaces (and those below them), e.g. "
        "twisted_mqtt.connection: warn", apply=_set("log-namespaces"), live=True),
    Key("logging.format", OneOf(*FORMATS), "text",
        "text (Twisted's classic lines) or json (one JSON object per line)", "log-format"),
    Key("logging.file", Maybe(WritableFile()), None,
        "append the log to this file, reopened on SIGHUP; null: twistd's --logfile, or "
        "standard output", "log-file"),
    # the packet trace
    Key("trace.enabled", Boolean(), False,
        "log every packet in and out: client id, direction, type and fields (payloads "
        "shortened), in the logging namespace twisted_mqtt.trace", "trace",
        apply=_flag("trace"), live=True),
    Key("trace.clients", ListOf(Text(), "client id patterns, e.g. [sensor-*]"), [],
        "trace only the clients whose id matches one of these glob patterns; []: every client",
        "trace-client", live=True),
    Key("trace.topics", ListOf(TopicFilter(), "topic filters"), [],
        "trace only PUBLISH packets whose topic matches one of these filters, and SUBSCRIBE "
        "and UNSUBSCRIBE packets with a filter overlapping one; []: every packet",
        "trace-topic", live=True),
)
"""The configuration file's schema: every key, in the order docs and examples list them."""

KEYS_BY_PATH: Dict[str, Key] = {key.path: key for key in KEYS}
SECTIONS = ("listeners", "capabilities", "compatibilities", "auth", "store", "cluster",
            "logging", "trace", "dashboard")


# -- reading a file ----------------------------------------------------------------------------


@dataclass
class Config:
    """A checked configuration file: the value of every key it sets."""

    source: str
    values: Dict[str, Any] = field(default_factory=dict)
    """Checked value by key path, for the keys the file sets."""
    document: Optional[Document] = None


def check_document(document: Document) -> Config:
    """Check every key of a parsed file against ``KEYS``; ``ConfigError`` for the first
    mistake (unknown key, with the closest known key; wrong type; unusable value)."""
    config = Config(document.source, document=document)
    data = document.data
    if data is None:
        return config
    if not isinstance(data, dict):
        raise document.error("", f"expected a mapping of settings (key: value), not "
                                 f"{_shown(data)}")
    top = [path for path in KEYS_BY_PATH if "." not in path] + list(SECTIONS)
    for name, value in data.items():
        if name in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise document.error(name, f"expected a mapping of {name} settings, not "
                                           f"{_shown(value)}")
            for sub, sub_value in value.items():
                _check_key(document, config, f"{name}.{sub}", sub_value)
        elif name in KEYS_BY_PATH:
            _check_key(document, config, name, value)
        else:
            raise _unknown_key(document, name, top)
    return config


def _unknown_key(document: Document, path: str, siblings: Sequence[str]) -> ConfigError:
    """The error for an unknown key: suggest a key of the same name elsewhere, else the
    closest key here, else the closest key anywhere."""
    leaf = path.rsplit(".", 1)[-1]
    same = [known for known in KEYS_BY_PATH if known.rsplit(".", 1)[-1] == leaf]
    close = same or difflib.get_close_matches(leaf, siblings, 1, 0.6) or \
        difflib.get_close_matches(path, list(KEYS_BY_PATH), 1, 0.6)
    if close:
        suggestion = close[0]
        if suggestion in siblings and "." in path and "." not in suggestion:
            suggestion = f"{_parent(path)}.{suggestion}"
        hint = f"did you mean {suggestion}?"
    else:
        hint = "known keys here: " + ", ".join(sorted(siblings))
    return document.error(path, f"unknown key; {hint}", key=True)


def _check_key(document: Document, config: Config, path: str, value: Any) -> None:
    key = KEYS_BY_PATH.get(path)
    if key is None:
        section = path.split(".", 1)[0]
        siblings = [known.split(".", 1)[1] for known in KEYS_BY_PATH
                    if known.startswith(section + ".")]
        raise _unknown_key(document, path, siblings)
    try:
        config.values[path] = key.check(value)
    except Invalid as error:
        raise document.error(path + error.path, error.problem, error.key) from None


def load_config(path: str) -> Config:
    """Read and check a configuration file; ``ConfigError`` if it cannot be read, is not valid
    YAML, or any key is unknown, of the wrong type or unusable."""
    try:
        with open(path, "rb") as config_file:
            text = config_file.read()
    except OSError as error:
        raise ConfigError(f"cannot read the configuration file: {error.strerror or error}",
                          path) from None
    return check_document(parse_yaml(text, path))


# -- the command line and the file -------------------------------------------------------------


def command_line_options(options: usage.Options, argv: Optional[Sequence[str]]) -> Set[str]:
    """The names (``listen``, ``max-packet-size``...) of the options ``argv`` gives."""
    if not argv:
        return set()
    try:
        given, _ = getopt.getopt(list(argv), options.shortOpt, options.longOpt)
    except getopt.error:
        return set()
    names = set()
    for flag, _ in given:
        name = flag[2:] if flag.startswith("--") else flag[1:]
        mangled = name if name in options.synonyms else name.replace("-", "_")
        names.add(options.synonyms.get(mangled, name))
    return names


def apply_config_file(options: usage.Options) -> Optional[Config]:
    """Fill the options the command line did not give from ``--config FILE`` (if given), check
    the logging options, and set up the log output (under twistd, as its log observer).
    ``ConfigError`` for a file or a logging option that cannot be used.  Called first thing
    in ``Options.postOptions``."""
    given = command_line_options(options, getattr(options, "argv", None))
    options["command-line"] = frozenset(given)
    config = None
    if options.get("config"):
        config = load_config(options["config"])
        for path, value in config.values.items():
            key = KEYS_BY_PATH[path]
            if not given.intersection(key.overridden_by):
                key.set(options, value)
    options["config-file"] = config
    options["log-output"] = _log_output(options)
    return config


def _log_output(options: usage.Options) -> LogOutput:
    """The ``LogOutput`` of the logging options; under twistd (without its own ``--logger`` or
    ``--syslog``) also twistd's log observer factory."""
    try:
        level = parse_level(str(options["log-level"]))
        namespaces = {name: parse_level(value)
                      for name, value in (options.get("log-namespaces") or {}).items()}
    except ValueError as error:
        raise ConfigError(str(error), path="--log-level") from None
    if options["log-format"] not in FORMATS:
        raise ConfigError(f"expected text or json, not {options['log-format']!r}",
                          path="--log-format")
    path = options["log-file"]
    if path is not None and "log-file" in options["command-line"]:
        problem = writable_problem(path)
        if problem:
            raise ConfigError(problem, path="--log-file")
    rotate = None
    twistd = _twistd_options(options)
    if path is None and twistd is not None:
        logfile = twistd.get("logfile")
        if logfile and logfile != "-":
            path, rotate = logfile, 1_000_000  # as twistd rotates its --logfile
        elif not logfile and not twistd.get("nodaemon"):
            path, rotate = "twistd.log", 1_000_000
    output = LogOutput(options["log-format"], level, path, namespaces=namespaces,
                       rotate_length=rotate)
    options["log-takeover"] = False
    if twistd is not None and not twistd.get("logger") and not twistd.get("syslog"):
        twistd["logger"] = use_with_twistd(output)  # a name: twistd imports it
        options["log-takeover"] = True
    return output


def _twistd_options(options: usage.Options) -> Optional[usage.Options]:
    """twistd's own options, when ``options`` are those of its ``mqtt`` subcommand."""
    parent = getattr(options, "parent", None)
    if parent is None:  # ``python -m twisted_mqtt``: no need to import twistd's machinery
        return None
    from twisted.application.app import ServerOptions

    return parent if isinstance(parent, ServerOptions) else None


def option_error(error: usage.UsageError, program: str = "twistd mqtt") -> Tuple[str, int]:
    """The one line to print for options that cannot be used, and the exit status: a value
    refused (``ConfigError``, from the file or the command line) is a configuration error,
    ``CONFIG_ERROR_EXIT``; a command line that cannot be parsed is a usage error,
    ``USAGE_ERROR_EXIT``, whose line says where the help is."""
    if isinstance(error, ConfigError):
        return f"{program}: configuration error: {error}", CONFIG_ERROR_EXIT
    return f"{program}: error: {error}; see '{program} --help'", USAGE_ERROR_EXIT


def exit_on_option_error(error: usage.UsageError, program: str = "twistd mqtt") -> NoReturn:
    """Print ``option_error``'s line on standard error and exit with its status (twistd would
    print its whole usage first, and exit with 1)."""
    line, status = option_error(error, program)
    print(line, file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(status)


def log_output(options: usage.Options) -> LogOutput:
    """The log output parsed options ask for (``python -m twisted_mqtt`` begins logging to
    ``log_output(options).start()``)."""
    output = options.get("log-output")
    return output if output is not None else LogOutput()


def capability_settings(options: usage.Options) -> Dict[str, Any]:
    """The ``Capabilities`` fields the file sets that have no command-line option."""
    return dict(options.get("capability-settings") or {})


def compatibilities(options: usage.Options) -> Compatibilities:
    """The compatibility switches the options (the file) set."""
    return Compatibilities(**(options.get("compatibility-settings") or {}))


def websocket_listeners(options: usage.Options
                        ) -> List[Tuple[str, Optional[str], List[str], List[str]]]:
    """(endpoint, path, origins, trusted proxies) of every WebSocket listener: the file's, each
    with its own settings, or the command line's ``--ws``, sharing ``--ws-path``,
    ``--ws-origin`` and ``--ws-trusted-proxy``."""
    listeners = options.get("ws-listeners")
    if listeners is not None:
        return list(listeners)
    return [(endpoint, options["ws-path"], options["ws-origin"], options["ws-trusted-proxy"])
            for endpoint in options["ws"]]


def options_from_file(path: str, argv: Sequence[str] = ()) -> usage.Options:
    """``tap.Options`` parsed as ``mqtt --config PATH ARGV`` (for .tac files and programs that
    build the broker from the same YAML); ``usage.UsageError`` (``ConfigError`` for the file)
    if they cannot be used."""
    from twisted_mqtt.tap import Options

    options = Options()
    options.parseOptions(["--config", path, *argv])
    return options


# -- the running broker ------------------------------------------------------------------------


def configure_service(service: BrokerService, options: usage.Options,
                      in_thread: Optional[Callable[..., Deferred[Any]]] = None) -> None:
    """Give the service what the configuration sets beyond its listeners and hooks: the bound
    on a graceful stop, and (with a configuration or log file) the reloader SIGHUP runs, which
    re-reads the file through ``in_thread`` if given."""
    service.shutdown_timeout = float(options.get("shutdown-timeout") or
                                     DEFAULT_SHUTDOWN_TIMEOUT)
    config = options.get("config-file")
    output = options.get("log-output")
    if config is not None:
        log.info("configuration: {path}", path=config.source)
    twistd = _twistd_options(options)
    asked = (options.get("log-level") != "info" or options.get("log-format") != "text"
             or options.get("log-file") or options.get("log-namespaces"))
    if twistd is not None and not options.get("log-takeover") and asked:
        log.warn("twistd's --logger or --syslog is in use: --log-level, --log-format and "
                 "--log-file (logging.*) do not apply")
    if config is not None or (output is not None and output.path is not None):
        service.broker.hooks.add(ConfigReloader(options, in_thread, service.broker),
                                 first=True)


def options_in_force(options: usage.Options) -> Dict[str, Any]:
    """The value of every configuration key that has an option, as the options hold it (from
    the command line, the file, or the default), by key."""
    return {key.path: options.get(key.option) for key in KEYS if key.option is not None}


def _shown_value(value: Any) -> str:
    if isinstance(value, WebSocketListener):
        return value.endpoint
    if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], tuple):
        return f"{value[0]} backend"
    if isinstance(value, list):
        return "[" + ", ".join(_shown_value(item) for item in value) + "]"
    return repr(value)


class ConfigReloader:
    """Re-reads the configuration file when the service reloads (SIGHUP, through
    ``BrokerService.reload``, which calls ``reload()`` on every hook that has one): applies the
    keys that can change live (``logging.level``, ``logging.levels``, and ``trace.*`` when
    given the ``broker``), says in the log what changed and which changes need a restart, and
    reopens the log file.  A file that cannot be used is logged and the settings in force are
    kept."""

    def __init__(self, options: usage.Options,
                 in_thread: Optional[Callable[..., Deferred[Any]]] = None,
                 broker: Any = None) -> None:
        self.broker = broker
        """The broker whose packet trace the ``trace`` keys switch (None: they need a
        restart)."""
        self.trace_options: Dict[str, Any] = {
            "trace.enabled": bool(options.get("trace")),
            "trace.clients": list(options.get("trace-client") or ()),
            "trace.topics": list(options.get("trace-topic") or ())}
        """The trace's settings as the options give them (the command line's win)."""
        self.in_thread = in_thread
        """How ``reload`` reads the file off the reactor thread (``deferToThread``, say); None
        reads it at once."""
        config = options.get("config-file")
        self.source: Optional[str] = config.source if config is not None else None
        self.command_line: FrozenSet[str] = options.get("command-line", frozenset())
        self.output: Optional[LogOutput] = options.get("log-output")
        self.in_force: Dict[str, Any] = self._effective(config)

    def __repr__(self) -> str:
        return f"ConfigReloader({self.source!r})"

    @staticmethod
    def _effective(config: Optional[Config]) -> Dict[str, Any]:
        values = {key.path: key.default for key in KEYS}
        if config is not None:
            values.update(config.values)
        return values

    def reload(self) -> Any:
        """Reopen the log file; read the configuration file again (through ``in_thread`` if
        set) and apply what can change live.  Whether the file could be used: a bool, or a
        Deferred firing with one."""
        if self.output is not None and self.output.reopen():
            log.info("log file {path} reopened", path=self.output.path)
        if self.source is None:
            return True
        if self.in_thread is None:
            return self._apply(self._attempt(self.source))
        return self.in_thread(self._attempt, self.source).addCallback(self._apply)

    def _attempt(self, source: str) -> Union[Dict[str, Any], ConfigError]:
        """Every key's value in the file, or why it cannot be used (no logging: this may run
        in a thread)."""
        try:
            return self._effective(load_config(source))
        except ConfigError as error:
            return error

    def _apply(self, new: Union[Dict[str, Any], ConfigError]) -> bool:
        if isinstance(new, ConfigError):
            log.error("configuration not reloaded, keeping the settings in force: {error}",
                      error=str(new))
            return False
        applied, ignored, restart = [], [], []
        for key in KEYS:
            old, value = self.in_force[key.path], new[key.path]
            if old == value:
                continue
            change = f"{key.path} {_shown_value(old)} -> {_shown_value(value)}"
            winners = self.command_line.intersection(key.overridden_by)
            if winners:
                ignored.append(f"{change} (--{sorted(winners)[0]} on the command line wins)")
            elif key.live and (self.broker is not None or not key.path.startswith("trace.")):
                self.in_force[key.path] = value
                applied.append(change)
            else:
                restart.append(change)
        quieter = False
        if applied and self.output is not None:
            level = (self.output.filter.level if "log-level" in self.command_line
                     else parse_level(self.in_force["logging.level"]))
            quieter = level > self.output.filter.level
            if quieter:  # say so while the old, more verbose level is in force
                self._applied(applied)
            self.output.set_levels(level, {name: parse_level(name_level) for name, name_level
                                           in self.in_force["logging.levels"].items()})
        if any(change.startswith("trace.") for change in applied):
            self._switch_trace()
        if not (applied or ignored or restart):
            log.info("configuration {path} re-read: nothing changed", path=self.source)
        if applied and not quieter:
            self._applied(applied)
        if ignored:
            log.info("configuration {path} re-read: not applied {changes}", path=self.source,
                     changes="; ".join(ignored))
        if restart:
            log.warn("configuration {path} re-read: needs a restart to apply {changes}",
                     path=self.source, changes="; ".join(restart))
        return True

    def _switch_trace(self) -> None:
        """Switch the packet trace as the keys in force say (an option given on the command
        line wins over its key)."""
        def setting(path: str) -> Any:
            if self.command_line.intersection(KEYS_BY_PATH[path].overridden_by):
                return self.trace_options[path]
            return self.in_force[path]

        self.broker.trace(setting("trace.enabled"), setting("trace.clients"),
                          setting("trace.topics"))

    def _applied(self, changes: List[str]) -> None:
        log.info("configuration {path} re-read: applied {changes}", path=self.source,
                 changes="; ".join(changes))


def describe_key(key: Key) -> Mapping[str, str]:
    """The documentation of a key: what it accepts, its default, the option that wins over
    it, and whether it changes on SIGHUP."""
    options = ", ".join(f"--{name}" for name in key.overridden_by)
    return {"key": key.path, "accepts": key.check.expected, "default": _shown_value(key.default),
            "option": options, "live": "yes" if key.live else "restart", "help": key.help}
