"""The configuration file (``twistd mqtt --config broker.yaml``): its schema, validation messages,
precedence of the command line, the JSON log and levels, SIGHUP reloading and the bounded
shutdown.  The tests at the end run the real ``twistd`` process with real clients."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import pytest_twisted
from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.python.failure import Failure

from tests.conftest import (
    ROOT,
    BrokerProcess,
    StartBroker,
    run_twistd,
    thread_names_of_calls,
    twistd_command,
)
from tests.paho import V5, MakeClient
from twisted_mqtt.capabilities import Capabilities, Compatibilities
from twisted_mqtt.config import (
    CONFIG_ERROR_EXIT,
    KEYS,
    KEYS_BY_PATH,
    WEBSOCKET_KEYS,
    ConfigError,
    ConfigReloader,
    endpoint_files,
    load_config,
    parse_yaml,
)
from twisted_mqtt.logs import LevelFilter, LogOutput, json_line
from twisted_mqtt.service import BrokerService
from twisted_mqtt.tap import Options, makeService

LOOPBACK = "tcp:0:interface=127.0.0.1"
DOCS = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "examples" / "broker.yaml"


def _write(directory: Path, text: str, name: str = "broker.yaml") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def _options(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


# -- the schema ---------------------------------------------------------------------------------


def test_schema_covers_every_capability_and_compatibility() -> None:
    """Every limit and every compatibility switch can be set in the file (``sys_interval``
    is a top-level key)."""
    for value_class, section in ((Capabilities, "capabilities"),
                                 (Compatibilities, "compatibilities")):
        for field in dataclasses.fields(value_class):  # type: ignore[arg-type]
            path = "sys_interval" if field.name == "sys_interval" else f"{section}.{field.name}"
            assert path in KEYS_BY_PATH, f"{path} is not in the schema"
            assert KEYS_BY_PATH[path].check(KEYS_BY_PATH[path].default) is not Ellipsis


def test_every_command_line_setting_has_a_key() -> None:
    """Everything the command line sets can be set in the file (but the file itself, and
    --tcp, which is --listen tcp:PORT; the WebSocket options are per listener)."""
    covered = {name for key in KEYS for name in key.overridden_by}
    covered |= {"config", "tcp", "ws-path", "ws-origin", "ws-trusted-proxy", "log-namespaces"}
    options = Options()
    names = {name.rstrip("=") for name in options.longOpt}
    names -= {"help", "version", "help-auth", "help-auth-type"}
    assert names - covered == set()


def test_defaults_are_the_command_line_defaults() -> None:
    """A file setting every key to its default gives the options of no file at all."""
    plain = _options()
    configured = _options("--config", str(EXAMPLE))
    assert configured.capabilities() == plain.capabilities()
    for name in ("listen", "ws", "stats", "store", "durable", "allow-anonymous", "auth-ledger",
                 "auth-backend", "no-tcp-nodelay", "sys-interval", "log-level", "log-format",
                 "log-file", "shutdown-timeout"):
        assert configured[name] == plain[name], name


def test_every_key_is_documented() -> None:
    """docs/configuration.md names every key with its default."""
    text = DOCS.read_text()
    for key in KEYS:
        assert f"`{key.path}`" in text, f"{key.path} is not documented"
    for name in WEBSOCKET_KEYS:
        assert f"`{name}`" in text


# -- reading and checking -----------------------------------------------------------------------


def test_positions_of_every_key_path() -> None:
    """Every key path has the line of its key and value, lists included."""
    document = parse_yaml("listeners:\n  mqtt:\n    - tcp:1\n    - tcp:2\nlogging: {level: "
                          "warn}\n", "f.yaml")
    assert document.data == {"listeners": {"mqtt": ["tcp:1", "tcp:2"]},
                             "logging": {"level": "warn"}}
    assert document.line_of("listeners.mqtt[1]") == 4
    assert document.line_of("listeners.mqtt", key=True) == 2
    assert document.line_of("logging.level") == 5
    assert document.line_of("logging.level.deeper") == 5


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    """Aliases and merge keys work; a key of the mapping itself wins over a merged one."""
    config = load_config(_write(tmp_path, "listeners:\n  mqtt: &local ['tcp:0']\n"
                                          "  stats: *local\nlogging:\n  <<: {level: debug, "
                                          "format: json}\n  level: warn\n"))
    assert config.values["listeners.stats"] == ["tcp:0"]
    assert (config.values["logging.level"], config.values["logging.format"]) == ("warn", "json")


MISTAKES = [
    ("unknown key", "listeners:\n  mqtt: []\ncapabilities:\n  recieve_maximum: 10\n",
     "line 4: capabilities.recieve_maximum: unknown key; did you mean "
     "capabilities.receive_maximum?"),
    ("key in the wrong section", "capabilities:\n  sys_interval: 5\n",
     "line 2: capabilities.sys_interval: unknown key; did you mean sys_interval?"),
    ("unknown section", "listener:\n  mqtt: []\n",
     "line 1: listener: unknown key; did you mean listeners?"),
    ("wrong type", "capabilities:\n  receive_maximum: ten\n",
     "line 2: capabilities.receive_maximum: expected an integer from 1 to 65535, not 'ten'"),
    ("out of range", "capabilities:\n  maximum_qos: 3\n",
     "line 2: capabilities.maximum_qos: expected an integer from 0 to 2, not 3"),
    ("boolean as text", "tcp_nodelay: 'no'\n",
     "line 1: tcp_nodelay: expected true or false, not 'no'"),
    ("section not a mapping", "logging: json\n",
     "line 1: logging: expected a mapping of logging settings"),
    ("bad endpoint", "listeners:\n  mqtt:\n    - tcp:0\n    - tcpp:1883\n",
     "line 4: listeners.mqtt[1]: bad endpoint 'tcpp:1883': Unknown endpoint type: 'tcpp'; "
     "expected a Twisted server endpoint string"),
    ("unreadable certificate",
     "listeners:\n  mqtt: ['ssl:0:privateKey=/nonexistent/key.pem']\n",
     "line 2: listeners.mqtt[0]: cannot read privateKey=/nonexistent/key.pem: No such file or "
     "directory; expected a readable certificate or key file"),
    ("websocket option", "listeners:\n  websocket:\n    - endpoint: tcp:0\n      pth: /mqtt\n",
     "line 4: listeners.websocket[0].pth: unknown key; did you mean path?"),
    ("websocket path", "listeners:\n  websocket:\n    - endpoint: tcp:0\n      path: mqtt\n",
     "line 4: listeners.websocket[0].path: expected a request path starting with /"),
    ("unreadable ledger", "auth:\n  ledger: /nonexistent/ledger.yaml\n",
     "line 2: auth.ledger: /nonexistent/ledger.yaml: cannot read"),
    ("bad store", "store:\n  url: mongodb://x\n",
     "line 2: store.url: unknown store 'mongodb://x'"),
    ("bad level", "logging:\n  level: loud\n",
     "line 2: logging.level: expected one of debug, info, warn, error, critical, not 'loud'"),
    ("backend setting", "auth:\n  backends:\n    - url: redis://localhost:6379/0\n"
     "      cache_tl: 5\n",
     "line 4: auth.backends[0].cache_tl: unknown key; did you mean cache_ttl?"),
    ("malformed YAML", "listeners:\n  mqtt: [tcp:0\ncapabilities:\n  receive_maximum: 10\n",
     "line 3, column 13: not valid YAML: expected ',' or ']', but got ':' (while parsing a "
     "flow sequence started on line 2, column 9)"),
    ("bad indentation", "logging:\n  level: info\n   format: json\n",
     "line 3, column 10: not valid YAML: mapping values are not allowed here"),
    ("duplicate key", "sys_interval: 1\nsys_interval: 2\n",
     "line 2: sys_interval: appears twice (also on line 1)"),
    ("not a mapping", "- tcp:1883\n",
     "line 1: expected a mapping of settings (key: value), not a list"),
]


@pytest.mark.parametrize("text, message", [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])
def test_mistakes(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake is one message: the file, the line, the key path and what is expected."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}, {message}" or str(error.value).startswith(
        f"{path}, {message}"), str(error.value)
    assert "\n" not in str(error.value)


def test_unreadable_file(tmp_path: Path) -> None:
    """A file that cannot be read is named with the reason."""
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read the configuration file: "
                                          r"No such file or directory"):
        _options("--config", str(tmp_path / "missing.yaml"))


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    """An empty file (or empty sections) changes nothing."""
    assert load_config(_write(tmp_path, "")).values == {}
    assert load_config(_write(tmp_path, "auth:\nlogging:\n")).values == {}


def test_endpoint_files() -> None:
    """The files an endpoint names, with escaped colons and inside wrapping endpoints."""
    assert endpoint_files(r"haproxy:ssl:8883:privateKey=C\:/k.pem:certKey=c.pem:caFile=ca.pem"
                          ":interface=\\:\\:") == [("privateKey", "C:/k.pem"),
                                                   ("certKey", "c.pem"), ("caFile", "ca.pem")]
    assert endpoint_files("tcp:1883") == []


# -- the file and the command line --------------------------------------------------------------


CONFIG = f"""
listeners:
  mqtt: ["{LOOPBACK}"]
  websocket:
    - endpoint: "{LOOPBACK}"
      path: /mqtt
      origins: [https://example.com]
      trusted_proxies: [10.0.0.0/8]
    - "{LOOPBACK}"
capabilities:
  receive_maximum: 10
  maximum_packet_size: 65536
  maximum_qos: 1
  refused_filters: [secret/#]
compatibilities:
  queue_qos0_offline: true
tcp_nodelay: false
sys_interval: 0
shutdown_timeout: 2.5
store:
  durable: true
logging:
  level: warn
  format: json
"""


def test_file_sets_options(tmp_path: Path) -> None:
    """Every section reaches the options, and the service built from them."""
    options = _options("--config", _write(tmp_path, CONFIG))
    capabilities = options.capabilities()
    assert (capabilities.receive_maximum, capabilities.maximum_packet_size,
            capabilities.maximum_qos, capabilities.refused_filters,
            capabilities.sys_interval) == (10, 65536, 1, ("secret/#",), 0.0)
    assert options["listen"] == [LOOPBACK] and options["no-tcp-nodelay"] == 1
    assert options["durable"] == 1 and options["log-format"] == "json"
    assert options["log-output"].filter.level == LogLevel.warn
    service = makeService(options, MemoryReactorClock())
    assert service.broker.compatibilities.queue_qos0_offline is True
    assert service.broker.capabilities.maximum_qos == 1
    assert service.shutdown_timeout == 2.5
    assert [type(hook) for hook in service.broker.hooks][0] is ConfigReloader
    websockets = [child.factory.settings for child in service
                  if getattr(child, "kind", None) == "WebSocket"]
    assert [(s.path, s.origins, len(s.trusted_proxies)) for s in websockets] == [
        ("/mqtt", ("https://example.com",), 1), (None, (), 0)]


def test_command_line_wins(tmp_path: Path) -> None:
    """An option on the command line wins over its key in the file; the file's other keys
    still apply (also for list options and per-listener WebSocket settings)."""
    path = _write(tmp_path, CONFIG)
    options = _options("--receive-maximum", "20", "--config", path, "--tcp", "0",
                       "--log-level", "info", "--ws-path", "/ws", "--refuse-subscribe", "x")
    capabilities = options.capabilities()
    assert (capabilities.receive_maximum, capabilities.maximum_packet_size,
            capabilities.refused_filters) == (20, 65536, ("x",))
    assert options["listen"] == ["tcp:0"]
    assert options["log-output"].filter.level == LogLevel.info
    assert [path for _, path, _, _ in options["ws-listeners"]] == ["/ws", "/ws"]
    assert options["ws-listeners"][0][2] == ["https://example.com"]
    options = _options("--config", path, "--ws", LOOPBACK)
    service = makeService(options, MemoryReactorClock())
    assert [child.kind for child in service if getattr(child, "kind", "") == "WebSocket"] == [
        "WebSocket"]
    assert _options("--config", path, "--no-tcp-nodelay")["no-tcp-nodelay"] == 1


def test_maximum_queued_bytes_from_file_and_command_line(tmp_path: Path) -> None:
    """``capabilities.maximum_queued_bytes`` and ``--max-queued-bytes`` (which wins) set the
    byte bound of session queues; a negative value is refused."""
    assert _options().capabilities().maximum_queued_bytes == 16 * 1024 * 1024
    path = _write(tmp_path, "capabilities:\n  maximum_queued_bytes: 5000\n")
    assert _options("--config", path).capabilities().maximum_queued_bytes == 5000
    options = _options("--config", path, "--max-queued-bytes", "7000")
    assert options.capabilities().maximum_queued_bytes == 7000
    with pytest.raises(usage.UsageError):
        _options("--max-queued-bytes", "-1")


def test_auth_from_the_file(tmp_path: Path) -> None:
    """auth.allow_anonymous, auth.ledger, auth.checkers and auth.backends (a URL, or a url
    with settings of the backend's settings dataclass)."""
    ledger = _write(tmp_path, "auth: [{allow: true}]\n", "ledger.yaml")
    path = _write(tmp_path, f"""
auth:
  allow_anonymous: true
  ledger: {ledger}
  checkers: ["memory:alice:secret"]
  backends:
    - redis://localhost:6379/0
    - url: redis://localhost:6379/1?timeout=2
      cache_ttl: 30
      blacklist: [{{client: evil}}]
""")
    options = _options("--config", path)
    assert options["allow-anonymous"] == 1 and options["auth-ledger"] == ledger
    assert len(options["credCheckers"]) == 1
    plain, (kind, settings) = options["auth-backend"]
    assert plain == "redis://localhost:6379/0" and kind == "redis"
    assert (settings.db, settings.timeout, settings.cache_ttl) == (1, 2.0, 30.0)
    assert options["auth-backend"] == _options("--config", path)["auth-backend"]


def test_logging_options_are_checked() -> None:
    """Bad logging options on the command line are usage errors."""
    with pytest.raises(usage.UsageError, match="--log-level: unknown log level 'loud'"):
        _options("--log-level", "loud")
    with pytest.raises(usage.UsageError, match="--log-format: expected text or json"):
        _options("--log-format", "xml")
    with pytest.raises(usage.UsageError, match="--shutdown-timeout"):
        _options("--shutdown-timeout", "0")
    with pytest.raises(usage.UsageError, match="--log-file: cannot create /nonexistent/x.log"):
        _options("--log-file", "/nonexistent/x.log")


# -- logging ------------------------------------------------------------------------------------


class FakeConnection:
    address = "192.0.2.7"

    class client:
        client_id = "sensor-1"

    def __repr__(self) -> str:
        return "<Connection sensor-1 from 192.0.2.7>"


def test_json_line() -> None:
    """One JSON object: time, level, namespace, text and the structured fields; a connection
    gives client_id and address."""
    event = dict(log_format="{conn!r}: disconnected by the broker, reason 0x{reason:02X}",
                 conn=FakeConnection(), reason=0x8B, log_time=1_700_000_000.5,
                 log_level=LogLevel.info, log_namespace="twisted_mqtt.connection",
                 log_logger=object(), log_source=None, extra={"a": (1, 2)})
    line = json_line(event)
    assert line is not None and line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.500Z", "level": "info",
        "namespace": "twisted_mqtt.connection",
        "text": "<Connection sensor-1 from 192.0.2.7>: disconnected by the broker, reason 0x8B",
        "client_id": "sensor-1", "address": "192.0.2.7", "reason": 139, "extra": {"a": [1, 2]}}
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    record = json.loads(json_line(dict(log_format="failed", log_failure=failure,
                                       log_level=LogLevel.critical)) or "")
    assert record["error"] == "boom" and "ValueError" in record["traceback"]
    assert json_line(dict(log_format="")) is None


def test_level_filter_and_live_change() -> None:
    """Events below the level are dropped, per namespace if asked; events without a level or
    namespace are kept; the level changes live."""
    out = io.StringIO()
    output = LogOutput("text", LogLevel.warn, stream=out,
                       namespaces={"loud": LogLevel.debug})
    observer = output.start()
    assert output.start() is observer

    def emit(text: str, level: Optional[Any], namespace: Optional[str] = "a.b") -> None:
        event: Dict[str, Any] = dict(log_format=text, log_time=0.0)
        if level is not None:
            event["log_level"] = level
        if namespace is not None:
            event["log_namespace"] = namespace
        observer(event)

    emit("info", LogLevel.info)
    emit("warn", LogLevel.warn)
    emit("loud debug", LogLevel.debug, "loud.x")
    emit("no level", None)
    emit("no namespace", LogLevel.debug, None)
    output.set_levels(LogLevel.info)
    emit("info again", LogLevel.info)
    emit("loud debug again", LogLevel.debug, "loud.x")
    text = out.getvalue()
    assert [line.split("] ", 1)[1] for line in text.splitlines()] == [
        "warn", "loud debug", "no level", "no namespace", "info again"]
    assert LevelFilter().level == LogLevel.info
    assert output.reopen() is False


def test_log_file_is_reopened(tmp_path: Path) -> None:
    """A log file is appended to and reopened (after logrotate moved it)."""
    path = tmp_path / "broker.log"
    path.write_text("before\n")
    output = LogOutput("json", LogLevel.info, str(path))
    observer = output.start()
    observer(dict(log_format="one", log_level=LogLevel.info, log_namespace="n", log_time=0.0))
    path.rename(tmp_path / "broker.log.1")
    assert output.reopen() is True
    observer(dict(log_format="two", log_level=LogLevel.info, log_namespace="n", log_time=0.0))
    assert (tmp_path / "broker.log.1").read_text().splitlines()[0] == "before"
    assert json.loads((tmp_path / "broker.log.1").read_text().splitlines()[1])["text"] == "one"
    assert json.loads(path.read_text())["text"] == "two"


# -- SIGHUP -------------------------------------------------------------------------------------


def test_reload_applies_log_levels_and_reports_the_rest(tmp_path: Path,
                                                        logged: List[str]) -> None:
    """Reloading applies logging.level(s), names every other change as needing a restart,
    and keeps the settings in force when the file became unusable."""
    path = _write(tmp_path, "logging:\n  level: info\ncapabilities:\n  receive_maximum: 10\n")
    options = _options("--config", path)
    service = makeService(options, MemoryReactorClock())
    output = options["log-output"]
    Path(path).write_text("logging:\n  level: warn\n  levels: {twisted_mqtt.x: debug}\n"
                          "capabilities:\n  receive_maximum: 20\n")
    results: List[Any] = []
    service.reload().addCallback(results.append)
    assert results == [[f"ConfigReloader({path!r})"]]
    assert output.filter.level == LogLevel.warn
    assert output.filter.predicate.logLevelForNamespace("twisted_mqtt.x.y") == LogLevel.debug
    assert any("applied logging.level 'info' -> 'warn'" in line for line in logged)
    assert any("needs a restart to apply capabilities.receive_maximum 10 -> 20" in line
               for line in logged)
    del logged[:]
    service.reload()
    assert any("needs a restart to apply capabilities.receive_maximum 10 -> 20" in line
               for line in logged)  # still not in force
    del logged[:]
    Path(path).write_text("logging:\n  level: [\n")
    service.reload()
    assert any(line.startswith("configuration not reloaded, keeping the settings in force: "
                               f"{path}, line 3") for line in logged)
    assert output.filter.level == LogLevel.warn


def test_reload_keeps_what_the_command_line_set(tmp_path: Path, logged: List[str]) -> None:
    """A key overridden on the command line is not applied from the file on reload."""
    path = _write(tmp_path, "logging:\n  level: info\n")
    options = _options("--config", path, "--log-level", "error")
    reloader = ConfigReloader(options)
    Path(path).write_text("logging:\n  level: debug\n")
    assert reloader.reload() is True
    assert options["log-output"].filter.level == LogLevel.error
    assert any("not applied logging.level 'info' -> 'debug' (--log-level on the command line "
               "wins)" in line for line in logged)
    assert reloader.reload() is True


@pytest_twisted.inlineCallbacks
def test_reload_reads_the_file_off_the_reactor_thread(tmp_path: Path, logged: List[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> Any:
    """On the process's reactor the configuration file is re-read in a worker thread, and
    what changed is applied on the reactor's."""
    import twisted_mqtt.config as config_module

    path = _write(tmp_path, "logging:\n  level: info\n")
    options = _options("--config", path)
    reloader = ConfigReloader(options, deferToThread)
    readers = thread_names_of_calls(monkeypatch, config_module, "load_config")
    Path(path).write_text("logging:\n  level: warn\n")
    answer = reloader.reload()
    assert isinstance(answer, Deferred)
    assert (yield answer) is True
    assert readers and threading.main_thread().name not in readers, readers
    assert options["log-output"].filter.level == LogLevel.warn


def test_the_command_line_reads_reloads_in_a_thread() -> None:
    """``makeService`` gives the ledger and the configuration reloader ``deferToThread`` on
    the process's reactor (the SIGHUP tests against the real ``twistd`` run that path), and
    nothing on a test's fake reactor."""
    from twisted.internet import reactor

    from twisted_mqtt.tap import _in_thread

    assert _in_thread(reactor) is deferToThread
    assert _in_thread(None) is deferToThread
    assert _in_thread(MemoryReactorClock()) is None


def test_no_reloader_without_a_file() -> None:
    """Without --config or --log-file, the hooks are the authentication hooks only."""
    service = makeService(_options(), MemoryReactorClock())
    assert not any(isinstance(hook, ConfigReloader) for hook in service.broker.hooks)


# -- the bounded stop ---------------------------------------------------------------------------


class Stuck(Service):
    """A child service that never finishes stopping."""

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred()


def test_stop_is_bounded(logged: List[str]) -> None:
    """A stop that takes longer than ``shutdown_timeout`` fires anyway, and says so."""
    clock = task.Clock()
    service = BrokerService(reactor=clock)
    service.shutdown_timeout = 3.0
    Stuck().setServiceParent(service)
    service.startService()
    stopped: List[Any] = []
    service.stopService().addCallback(stopped.append)
    clock.advance(2.9)
    assert stopped == []
    clock.advance(0.1)
    assert stopped == [None]
    assert any("stopping took longer than 3.0s; stopping anyway" in line for line in logged)


def test_prompt_stop_cancels_the_bound() -> None:
    """A stop that finishes in time leaves no timer behind."""
    clock = task.Clock()
    service = BrokerService(reactor=clock)
    service.shutdown_timeout = 3.0
    service.startService()
    stopped: List[Any] = []
    service.stopService().addCallback(stopped.append)
    assert stopped == [None] and clock.getDelayedCalls() == []


# -- the real twistd process --------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("text, message", [m[1:] for m in MISTAKES if m[0] in (
    "unknown key", "wrong type", "bad endpoint", "unreadable certificate", "malformed YAML",
    "unreadable ledger")], ids=["unknown key", "wrong type", "bad endpoint",
                                "unreadable certificate", "malformed YAML", "unreadable ledger"])
def test_mistake_stops_twistd(tmp_path: Path, text: str, message: str) -> None:
    """twistd stops before starting anything: one line on standard error naming the file, the
    line and the key, exit status 78, no traceback, no usage text."""
    path = _write(tmp_path, text)
    result = run_twistd("-n", "--pidfile=", "mqtt", "--config", path)
    assert result.returncode == CONFIG_ERROR_EXIT, result.stdout + result.stderr
    assert result.stderr.startswith(f"twistd mqtt: configuration error: {path}, {message}"), (
        result.stderr)
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_mistake_stops_python_m(tmp_path: Path) -> None:
    """``python -m twisted_mqtt`` reports a mistake the same way."""
    import subprocess
    import sys

    from tests.conftest import broker_env

    path = _write(tmp_path, "capabilities:\n  receive_maximum: ten\n")
    result = subprocess.run([sys.executable, "-m", "twisted_mqtt", "--config", path],
                            env=broker_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == CONFIG_ERROR_EXIT
    assert (f"configuration error: {path}, line 2: capabilities.receive_maximum: expected an "
            "integer from 1 to 65535, not 'ten'") in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_broker_from_a_file(start_broker: StartBroker, clients: MakeClient,
                            tmp_path: Path) -> None:
    """The listeners and limits of the file, visible in a v5 CONNACK, with the command line's
    --receive-maximum winning over the file's."""
    path = _write(tmp_path, f"""
listeners:
  mqtt: ["{LOOPBACK}"]
  stats: ["{LOOPBACK}"]
capabilities:
  receive_maximum: 10
  maximum_packet_size: 65536
  topic_alias_maximum: 3
  maximum_qos: 1
  maximum_keep_alive: 30
""")
    broker = start_broker("--config", path, "--receive-maximum", "20", listen=[])
    broker.wait_ready(2)
    assert [kind for kind, _, _ in broker.listening] == ["MQTT", "stats"]
    client = clients(broker.port_of("MQTT"), V5, "configured").connect(keepalive=60)
    props = client.connack_props
    assert (props.ReceiveMaximum, props.MaximumPacketSize, props.TopicAliasMaximum,
            props.MaximumQoS, props.ServerKeepAlive) == (20, 65536, 3, 1, 30)
    assert client.subscribe("a/b", 2) == [1]
    assert f"configuration: {path}" in broker.log()


def _json_records(broker: BrokerProcess) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in broker.log().splitlines() if line.strip()]


def _wait_json(broker: BrokerProcess, match: Any, timeout: float = 20.0) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for record in _json_records(broker):
            if match(record):
                return record
        if broker.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no such log record:\n{broker.log()}")
        time.sleep(0.02)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Any]:
    """Start broker processes from an argv; each is stopped and checked at the end."""
    started: List[BrokerProcess] = []

    def start(argv: List[str], **kwargs: Any) -> BrokerProcess:
        process = BrokerProcess(argv, tmp_path / f"process-{len(started)}.log", **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.check_clean_exit()


@pytest.mark.e2e
def test_json_log(processes: Any, clients: MakeClient, tmp_path: Path) -> None:
    """With logging.format json every line is one JSON object; a connecting client's line
    has its client_id and address; publishing logs nothing at the default level."""
    path = _write(tmp_path, f"listeners:\n  mqtt: ['{LOOPBACK}']\nlogging:\n  format: json\n")
    broker = processes([*twistd_command(), "-n", "--pidfile=", "mqtt", "--config", path])
    listening = _wait_json(broker, lambda r: r["text"].startswith("listening for MQTT"))
    assert listening["kind"] == "MQTT" and listening["level"] == "info"
    port = int(listening["address"].rsplit(":", 1)[1])
    client = clients(port, V5, "json-client").connect()
    record = _wait_json(broker, lambda r: r.get("client_id") == "json-client")
    assert record["address"] == "127.0.0.1" and record["namespace"] == "twisted_mqtt.connection"
    assert record["time"].endswith("Z") and record["protocol_level"] == 5
    lines = len(broker.log().splitlines())
    assert client.subscribe("t", 1) == [1]
    for index in range(50):
        client.publish("t", b"%d" % index, 1)
    client.expect(50)
    assert len(broker.log().splitlines()) == lines  # no line per message
    client.disconnect()


@pytest.mark.e2e
def test_log_levels_from_the_file(start_broker: StartBroker, clients: MakeClient,
                                  tmp_path: Path) -> None:
    """logging.level warn drops the info lines of connections; logging.levels keeps the
    listeners' info lines."""
    path = _write(tmp_path, "logging:\n  level: warn\n  levels: {twisted_mqtt.listeners: info, "
                            "twisted.internet.base: info}\n")
    broker = start_broker("--config", path)
    clients(broker.port, V5, "quiet-client").connect().disconnect()
    clients(broker.port, V5, "probe").connect()
    assert "quiet-client" not in broker.log() and "listening for MQTT" in broker.log()
    assert "twistd" not in broker.log().split("listening for MQTT")[0]  # info: dropped


@pytest.mark.e2e
def test_sighup_on_the_real_process(start_broker: StartBroker, clients: MakeClient,
                                    tmp_path: Path) -> None:
    """SIGHUP re-reads the file: the log says the level changed (and it applies at once) and
    which change needs a restart; a connected client stays connected throughout."""
    config = tmp_path / "broker.yaml"
    levels = "  levels: {twisted.internet.base: info}\n"  # "Main loop terminated." at the end
    config.write_text(f"logging:\n  level: info\n{levels}capabilities:\n  receive_maximum: 10\n")
    broker = start_broker("--config", str(config))
    client = clients(broker.port, V5, "steady").connect()
    assert client.subscribe("t", 1) == [1]
    config.write_text(f"logging:\n  level: warn\n{levels}capabilities:\n  receive_maximum: 20\n")
    broker.proc.send_signal(signal.SIGHUP)
    broker.wait_for_log(r"applied logging\.level 'info' -> 'warn'")
    broker.wait_for_log(r"needs a restart to apply capabilities\.receive_maximum 10 -> 20")
    clients(broker.port, V5, "after-hup").connect().disconnect()
    client.publish("t", b"still here", 1)
    assert client.expect()[0].payload == b"still here"
    assert client.paho.is_connected() and "after-hup" not in broker.log()


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.e2e
def test_sigterm_stops_within_the_bound(start_broker: StartBroker, clients: MakeClient,
                                        tmp_path: Path) -> None:
    """SIGTERM: a v5 client gets DISCONNECT 0x8B; a client that stopped reading cannot hold
    the stop beyond shutdown_timeout (its connection would linger 2 s)."""
    path = _write(tmp_path, "shutdown_timeout: 0.5\ncapabilities:\n"
                            "  maximum_pending_bytes: 1073741824\n")
    broker = start_broker("--config", path)
    watcher = clients(broker.port, V5, "watcher").connect()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.settimeout(5)
    stalled.connect(("127.0.0.1", broker.port))
    body = b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x07stalled"
    stalled.sendall(bytes([0x10, len(body)]) + body)
    assert _read(stalled, 4) == b"\x20\x02\x00\x00"  # CONNACK
    stalled.sendall(b"\x82\x0a\x00\x01\x00\x05big/#\x00")  # SUBSCRIBE big/# QoS 0
    assert _read(stalled, 5) == b"\x90\x03\x00\x01\x00"  # SUBACK; from now on it reads nothing
    publisher = clients(broker.port, V5, "publisher").connect()
    payload = os.urandom(512 * 1024)
    for _ in range(40):
        publisher.publish("big/data", payload, 1)
    started = time.monotonic()
    text = broker.stop()
    took = time.monotonic() - started
    assert watcher.disconnected.wait(5) and watcher.disconnect_rc.value == 0x8B
    assert "stopping took longer than 0.5s; stopping anyway" in text, text
    assert took < 10.0
    stalled.close()
