"""Every program in ``examples/`` runs, and does what its docstring says, with real clients."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from tests.conftest import LOOPBACK, ROOT, BrokerProcess, twistd_command
from tests.paho import V5, MakeClient

EXAMPLES = ROOT / "examples"


@pytest.fixture
def run_example(tmp_path: Path) -> Iterator[object]:
    """Start ``examples/NAME`` with arguments; stopped with SIGTERM and checked at the end."""
    started: List[BrokerProcess] = []

    def run(argv: List[str], listeners: int = 1, pass_fds: Tuple[int, ...] = ()) -> BrokerProcess:
        process = BrokerProcess(argv, tmp_path / f"example-{len(started)}.log",
                                pass_fds=pass_fds)
        started.append(process)
        process.wait_ready(listeners)
        return process

    yield run
    for process in started:
        process.check_clean_exit()


def _script(name: str, *args: str) -> List[str]:
    return [sys.executable, str(EXAMPLES / name), *args]


def test_every_example_is_run_by_a_test() -> None:
    """No example goes untested: each file in examples/ is named in this module."""
    source = Path(__file__).read_text()
    for path in EXAMPLES.iterdir():
        if path.suffix in (".py", ".tac"):
            assert f'"{path.name}"' in source, f"{path.name} is not run by a test"


def test_minimal_embed(run_example, clients: MakeClient) -> None:
    """The minimal embedding accepts a local client and routes its messages."""
    broker = run_example(_script("minimal_embed.py", LOOPBACK))
    subscriber = clients(broker.port, V5, "sub").connect()
    assert subscriber.subscribe("greetings/#", 1) == [1]
    clients(broker.port, V5, "pub").connect().publish("greetings/world", b"hello", 1)
    (message,) = subscriber.expect()
    assert (message.topic, message.payload) == ("greetings/world", b"hello")


def test_tac_file(run_example, clients: MakeClient, monkeypatch: pytest.MonkeyPatch,
                  tmp_path: Path) -> None:
    """``twistd -ny examples/broker.tac`` runs the broker the file describes."""
    monkeypatch.setenv("MQTT_LISTEN", LOOPBACK)
    broker = run_example([*twistd_command(), "-n", "--pidfile=", "-y",
                          str(EXAMPLES / "broker.tac")])
    subscriber = clients(broker.port, V5, "sub").connect()
    assert subscriber.subscribe("tac", 0) == [0]
    clients(broker.port, V5, "pub").connect().publish("tac", b"from a tac file")
    assert subscriber.expect()[0].payload == b"from a tac file"


def test_auth_hook(run_example, clients: MakeClient) -> None:
    """The custom hook refuses a wrong password (v5 0x86), and confines a user to its own tree:
    a publish elsewhere is refused with PUBACK 0x87 and a subscription elsewhere with SUBACK
    0x87 [MQTT-3.2.2-6, MQTT-3.9.3-1]."""
    broker = run_example(_script("auth_hook.py", LOOPBACK))
    intruder = clients(broker.port, V5, "intruder")
    intruder.paho.username_pw_set("alice", "guess")
    intruder.connect(expect_success=False)
    assert intruder.connack_rc.value == 0x86
    alice = clients(broker.port, V5, "alice")
    alice.paho.username_pw_set("alice", "wonderland")
    alice.connect()
    assert alice.subscribe("users/#", 1) == [0x87]
    assert alice.subscribe("users/alice/#", 1) == [1]
    bob = clients(broker.port, V5, "bob")
    bob.paho.username_pw_set("bob", "builder")
    bob.connect()
    bob.publish("users/alice/inbox", b"not allowed", 1)
    bob.publish("users/bob/status", b"fine", 1)
    alice.publish("users/alice/status", b"mine", 1)
    assert [m.payload for m in alice.expect()] == [b"mine"]
    assert "publish to users/alice/inbox refused, reason 0x87" in broker.log()


def test_inline_pubsub(run_example, clients: MakeClient) -> None:
    """The inline subscriber sees a temperature over the limit and publishes a retained alert,
    which a client subscribing later still gets."""
    broker = run_example(_script("inline_pubsub.py", LOOPBACK))
    sensor = clients(broker.port, V5, "sensor").connect()
    sensor.publish("sensors/kitchen/temperature", b"21.0", 1)
    sensor.publish("sensors/kitchen/temperature", b"31.5", 1)
    watcher = clients(broker.port, V5, "watcher").connect()
    assert watcher.subscribe("alerts/#", 1) == [1]
    (alert,) = watcher.expect()
    assert (alert.topic, alert.payload, alert.retain) == ("alerts/kitchen", b"too hot: 31.5",
                                                          True)


def test_rewrite_hook(run_example, clients: MakeClient) -> None:
    """The rewriting hook routes ``legacy/`` messages under ``v2/`` and grants QoS 1 to a QoS 2
    subscription."""
    broker = run_example(_script("rewrite_hook.py", LOOPBACK))
    subscriber = clients(broker.port, V5, "sub").connect()
    assert subscriber.subscribe("v2/#", 2) == [1]
    clients(broker.port, V5, "old").connect().publish("legacy/meter", b"42", 2)
    (message,) = subscriber.expect()
    assert (message.topic, message.payload, message.qos) == ("v2/meter", b"42", 1)


@pytest.mark.parametrize("version", ["5", "4"])
def test_client_pubsub(broker: BrokerProcess, version: str) -> None:
    """The client example, against a broker, gets its three messages back at QoS 0, 1 and 2
    with their acknowledgements, then disconnects."""
    done = subprocess.run(_script("client_pubsub.py", f"tcp:127.0.0.1:{broker.port}", version),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["connected, session present: False", "subscribed, granted QoS 2"]
    assert sorted(lines[2:8]) == sorted([
        "published at QoS 0: sent", "published at QoS 1: PubAck", "published at QoS 2: PubComp",
        *(f"received greetings/world hello {qos} qos {qos}" for qos in (0, 1, 2))])
    assert lines[8:] == ["disconnected"]


def test_web_publish(run_example, clients: MakeClient) -> None:
    """A POST to the web endpoint is published (retained, QoS 1) to an MQTT subscriber; a bad
    topic gets 400."""
    broker = run_example(_script("web_publish.py", LOOPBACK, LOOPBACK), listeners=2)
    http_port = broker.port_of("HTTP")
    subscriber = clients(broker.port_of("MQTT"), V5, "sub").connect()
    assert subscriber.subscribe("sensors/#", 1) == [1]
    url = f"http://127.0.0.1:{http_port}/publish/sensors/hall?qos=1&retain=1"
    with urllib.request.urlopen(urllib.request.Request(url, b"21.5", method="POST")) as reply:
        assert json.loads(reply.read()) == {"topic": "sensors/hall", "routed": 1}
    (message,) = subscriber.expect()
    assert (message.topic, message.payload, message.qos) == ("sensors/hall", b"21.5", 1)
    bad = f"http://127.0.0.1:{http_port}/publish/sensors/%2B"
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(urllib.request.Request(bad, b"x", method="POST"))
    assert error.value.code == 400


def test_broker_yaml_sets_every_key_to_its_default() -> None:
    """``examples/broker.yaml`` is valid and documents every key of the schema with its
    default value (and every key of a WebSocket listener, in its comment)."""
    from twisted_mqtt.config import KEYS, WEBSOCKET_KEYS, load_config

    config = load_config(str(EXAMPLES / "broker.yaml"))
    for key in KEYS:
        assert key.path in config.values, f"{key.path} is not in examples/broker.yaml"
        assert config.values[key.path] == key.check(key.default), key.path
    text = (EXAMPLES / "broker.yaml").read_text()
    for name in WEBSOCKET_KEYS:
        assert f"{name}:" in text


def test_tac_file_from_yaml(run_example, clients: MakeClient, monkeypatch: pytest.MonkeyPatch,
                            tmp_path: Path) -> None:
    """``MQTT_CONFIG=broker.yaml twistd -ny examples/broker_yaml.tac`` runs the broker the YAML
    file describes: its listener, its limits (in a v5 CONNACK) and its log format."""
    config = tmp_path / "broker.yaml"
    config.write_text(f"listeners:\n  mqtt: ['{LOOPBACK}']\ncapabilities:\n"
                      "  receive_maximum: 7\nlogging:\n  level: info\n")
    monkeypatch.setenv("MQTT_CONFIG", str(config))
    broker = run_example([*twistd_command(), "-n", "--pidfile=", "-y",
                          str(EXAMPLES / "broker_yaml.tac")])
    subscriber = clients(broker.port, V5, "sub").connect()
    assert subscriber.connack_props.ReceiveMaximum == 7
    assert subscriber.subscribe("tac", 0) == [0]
    clients(broker.port, V5, "pub").connect().publish("tac", b"from yaml")
    assert subscriber.expect()[0].payload == b"from yaml"
    assert f"configuration: {config}" in broker.log()


def test_tac_file_refuses_a_bad_yaml(tmp_path: Path) -> None:
    """A mistake in the YAML file stops the .tac with the one-line message and status 78."""
    import subprocess

    from tests.conftest import broker_env
    from twisted_mqtt.config import CONFIG_ERROR_EXIT

    config = tmp_path / "broker.yaml"
    config.write_text("capabilities:\n  receive_maximum: -1\n")
    result = subprocess.run([*twistd_command(), "-n", "--pidfile=", "-y",
                             str(EXAMPLES / "broker_yaml.tac")],
                            env={**broker_env(), "MQTT_CONFIG": str(config)}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == CONFIG_ERROR_EXIT
    assert result.stderr == (f"configuration error: {config}, line 2: "
                             "capabilities.receive_maximum: expected an integer from 1 to "
                             "65535, not -1\n")


def _unit(name: str) -> Dict[str, str]:
    """The ``Key=Value`` settings of a systemd unit file in examples/ (the last of each)."""
    settings = {}
    for line in (EXAMPLES / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def test_unit_documentation_and_license() -> None:
    """The service unit's Documentation= names something installed (a man page or a web
    address), not a file nothing installs; the MIT licence setup.cfg declares is a file that
    ships with the distribution (license_files)."""
    import configparser

    for uri in _unit("twisted-mqtt.service")["Documentation"].split():
        assert uri.startswith(("man:", "https://", "http://")), uri
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["license"] == "MIT"
    [name] = setup["metadata"]["license_files"].split()
    text = (ROOT / name).read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the twisted_mqtt authors\n")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


# Runs the command after its two arguments as systemd runs a socket-activated service: the
# socket at fd N becomes fd 3, LISTEN_FDS=1, LISTEN_FDNAMES the socket's FileDescriptorName,
# LISTEN_PID the pid of the process (exec keeps it).
SYSTEMD = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
           "os.environ.update(LISTEN_FDS='1', LISTEN_FDNAMES=sys.argv[2], "
           "LISTEN_PID=str(os.getpid())); os.execv(sys.argv[3], sys.argv[3:])")


def test_systemd_units(run_example, clients: MakeClient, tmp_path: Path) -> None:
    """The service unit's exact ExecStart, started as systemd starts it with the socket of the
    socket unit, adopts that socket and applies the configuration file; the unit reloads
    with SIGHUP, and does not restart after a configuration mistake."""
    import shlex
    import socket

    from twisted_mqtt.config import CONFIG_ERROR_EXIT, DEFAULT_SHUTDOWN_TIMEOUT

    service, sockets = _unit("twisted-mqtt.service"), _unit("twisted-mqtt.socket")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["RestartPreventExitStatus"] == str(CONFIG_ERROR_EXIT)
    assert float(service["TimeoutStopSec"]) > DEFAULT_SHUTDOWN_TIMEOUT
    assert sockets["Service"] == "twisted-mqtt.service"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/twistd") and "systemd:domain=INET:index=0" in argv
    config = tmp_path / "broker.yaml"
    config.write_text("capabilities:\n  receive_maximum: 9\n")
    argv[argv.index("--config") + 1] = str(config)
    argv = [*twistd_command(), *argv[1:]]
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(int(sockets["Backlog"]))
        port = listening.getsockname()[1]
        fd = listening.fileno()
        wrapper = [sys.executable, "-c", SYSTEMD, str(fd), sockets["FileDescriptorName"]]
        broker = run_example([*wrapper, *argv], pass_fds=(fd,))
    assert broker.port == port
    client = clients(port, V5, "activated").connect()
    assert client.connack_props.ReceiveMaximum == 9
    assert client.subscribe("units", 1) == [1]
    client.publish("units", b"socket activated", 1)
    assert client.expect()[0].payload == b"socket activated"
