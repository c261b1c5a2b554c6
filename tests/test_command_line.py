"""The command line of the real ``twistd mqtt`` and ``python -m twisted_mqtt`` processes: what
an operator sees when start-up fails (one line, a documented exit status, no traceback and no
usage text), the numbers both check as the configuration file does, and ``--version``."""

from __future__ import annotations

import os
import platform
import re
import select
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest
from twisted.copyright import version as twisted_version

from tests.conftest import ROOT, broker_env, twistd_command
from twisted_mqtt import __version__
from twisted_mqtt.auth.backends.sql import POSTGRESQL_MODULE
from twisted_mqtt.config import CONFIG_ERROR_EXIT, USAGE_ERROR_EXIT
from twisted_mqtt.service import LISTEN_ERROR_EXIT

pytestmark = pytest.mark.e2e

PROGRAMS = ["twistd mqtt", "python -m twisted_mqtt"]
LOOPBACK = "127.0.0.1"


def run(program: str, *args: str, env: Optional[Dict[str, str]] = None,
        prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run ``program ARGS`` (in the foreground) to completion."""
    if program == "twistd mqtt":
        command = [*twistd_command(), "-n", "--pidfile=", "mqtt"]
    else:
        command = [sys.executable, "-m", "twisted_mqtt"]
    return subprocess.run([*prefix, *command, *args], env=env or broker_env(), cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The only line on standard error (nothing on standard output)."""
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stdout + result.stderr
    return result.stderr.rstrip("\n")


def start_failure(result: subprocess.CompletedProcess) -> str:
    """The one log line saying why the broker could not start."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "Usage:" not in output, output
    lines = [line for line in output.splitlines() if "cannot" in line]
    assert len(lines) == 1, output
    return lines[0].split("] ", 1)[1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- listeners that cannot listen ---------------------------------------------------------------


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("kind, option", [("MQTT", "--listen"), ("WebSocket", "--ws"),
                                          ("stats", "--stats")])
def test_port_in_use(program: str, kind: str, option: str, busy_port: int) -> None:
    """A port in use: one line naming the listener, exit status 71 (EX_OSERR)."""
    endpoint = f"tcp:{busy_port}:interface={LOOPBACK}"
    result = run(program, option, endpoint)
    assert start_failure(result) == (f"cannot start: cannot listen for {kind} on {endpoint}: "
                                     "Address already in use")
    assert result.returncode == LISTEN_ERROR_EXIT


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_port_in_use_from_a_file(busy_port: int, tmp_path: Path, store: str) -> None:
    """The same from a configuration file, also when the listeners start once a persistent
    store is loaded."""
    endpoint = f"tcp:{busy_port}:interface={LOOPBACK}"
    url = "memory" if store == "memory" else f"sqlite:{tmp_path / 'broker.db'}"
    config = tmp_path / "broker.yaml"
    config.write_text(f"listeners:\n  mqtt: ['{endpoint}']\nstore:\n  url: '{url}'\n")
    result = run("twistd mqtt", "--config", str(config))
    assert start_failure(result) == (f"cannot start: cannot listen for MQTT on {endpoint}: "
                                     "Address already in use")
    assert result.returncode == LISTEN_ERROR_EXIT


def test_port_in_use_daemonised(busy_port: int, tmp_path: Path) -> None:
    """Daemonised (no ``-n``), twistd's parent process says which listener and why, and the
    pid file is removed; it does not wait for ever for a child that is gone."""
    endpoint = f"tcp:{busy_port}:interface={LOOPBACK}"
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    result = subprocess.run([*twistd_command(), f"--pidfile={pidfile}", f"--logfile={logfile}",
                             "mqtt", "--listen", endpoint], env=broker_env(), cwd=ROOT,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=60)
    problem = f"cannot listen for MQTT on {endpoint}: Address already in use"
    assert result.stderr.splitlines()[0] == f"An error has occurred: b'{problem}'", result.stderr
    assert result.returncode == 1
    assert f"cannot start: {problem}" in logfile.read_text()
    assert not pidfile.exists()


def unprivileged() -> List[str]:
    """A command prefix that runs a process without privileges: nothing for a normal user;
    for root, ``setpriv`` with an empty capability bounding set (no CAP_NET_BIND_SERVICE, no
    CAP_DAC_OVERRIDE), or skip."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv to drop the capabilities")
    prefix = [setpriv, "--bounding-set", "-all"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    return prefix


@pytest.mark.parametrize("program", PROGRAMS)
def test_privileged_port(program: str) -> None:
    """A port below 1024 without the privilege: one line naming the listener and what would
    allow it, exit status 71."""
    endpoint = f"tcp:883:interface={LOOPBACK}"
    result = run(program, "--listen", endpoint, prefix=unprivileged())
    assert start_failure(result) == (
        f"cannot start: cannot listen for MQTT on {endpoint}: Permission denied (a port "
        "below 1024 needs root or CAP_NET_BIND_SERVICE, or a systemd socket unit: "
        "docs/listeners.md)")
    assert result.returncode == LISTEN_ERROR_EXIT


@pytest.mark.parametrize("program", PROGRAMS)
def test_unix_socket_in_a_read_only_directory(program: str, tmp_path: Path) -> None:
    """A Unix socket whose directory the broker cannot write: one line, exit status 71."""
    prefix = unprivileged()
    directory = tmp_path / "read-only"
    directory.mkdir(mode=0o555)
    endpoint = f"unix:{directory / 'mqtt.sock'}"
    result = run(program, "--listen", endpoint, prefix=prefix)
    assert start_failure(result) == (f"cannot start: cannot listen for MQTT on {endpoint}: "
                                     "Permission denied")
    assert result.returncode == LISTEN_ERROR_EXIT


# -- optional extras ----------------------------------------------------------------------------

EXTRAS = [  # (URL, backend, package, extra)
    ("redis://localhost:6379/0", "Redis", "txredisapi", "redis"),
    ("http://localhost:8080/comqtt", "HTTP", "treq", "http"),
    ("postgresql://mqtt@localhost/mqtt", "postgresql", POSTGRESQL_MODULE, "postgresql"),
    ("mysql://mqtt@localhost/mqtt", "mysql", "pymysql", "mysql"),
]


def without(package: str, directory: Path) -> Dict[str, str]:
    """The broker's environment with ``package`` failing to import, as when its extra is not
    installed."""
    blocked = directory / "blocked" / package
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text(f"raise ImportError('no {package}')\n")
    env = broker_env()
    env["PYTHONPATH"] = os.pathsep.join((str(blocked.parent), env["PYTHONPATH"]))
    return env


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("url, backend, package, extra", EXTRAS,
                         ids=[extra for *_, extra in EXTRAS])
def test_backend_without_its_extra(program: str, url: str, backend: str, package: str,
                                   extra: str, tmp_path: Path) -> None:
    """``--auth-backend`` whose client library is missing: one line naming the extra to
    install, exit status 78."""
    result = run(program, "--auth-backend", url, env=without(package, tmp_path))
    assert one_line(result) == (f"{program}: configuration error: --auth-backend: the "
                                f"{backend} backend needs {package}: pip install "
                                f"'twisted-mqtt-broker[{extra}]'")
    assert result.returncode == CONFIG_ERROR_EXIT


@pytest.mark.parametrize("program", PROGRAMS)
def test_backend_in_a_file_without_its_extra(program: str, tmp_path: Path) -> None:
    """The same for ``auth.backends`` in the configuration file, with its line."""
    config = tmp_path / "broker.yaml"
    config.write_text("auth:\n  backends:\n    - url: redis://localhost:6379/0\n"
                      "      cache_ttl: 5\n")
    result = run(program, "--config", str(config), env=without("txredisapi", tmp_path))
    assert one_line(result) == (f"{program}: configuration error: {config}, line 3: "
                                "auth.backends[0].url: the Redis backend needs txredisapi: "
                                "pip install 'twisted-mqtt-broker[redis]'")
    assert result.returncode == CONFIG_ERROR_EXIT


# -- numbers ------------------------------------------------------------------------------------

NUMBERS = [  # (option, value, what it accepts)
    ("--max-packet-size", "-5", "an integer from 1 to 268435460"),
    ("--max-packet-size", "0", "an integer from 1 to 268435460"),
    ("--receive-maximum", "0", "an integer from 1 to 65535"),
    ("--receive-maximum", "70000", "an integer from 1 to 65535"),
    ("--topic-alias-maximum", "-1", "an integer from 0 to 65535"),
    ("--max-keep-alive", "99999", "an integer from 0 to 65535"),
    ("--sys-interval", "-1", "a number >= 0"),
    ("--shutdown-timeout", "0", "a number > 0"),
    ("--tcp", "notaport", "an integer from 0 to 65535"),
]


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("option, value, accepted", NUMBERS,
                         ids=[f"{option}={value}" for option, value, _ in NUMBERS])
def test_numbers_are_checked(program: str, option: str, value: str, accepted: str) -> None:
    """A number out of range on the command line is refused before anything starts, as the
    same key in the file is: one line naming the option and what it accepts, status 78."""
    result = run(program, option, value)
    shown = repr(value) if value == "notaport" else value
    assert one_line(result) == (f"{program}: configuration error: {option}: expected "
                                f"{accepted}, not {shown}")
    assert result.returncode == CONFIG_ERROR_EXIT


# -- usage errors and --version -----------------------------------------------------------------


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("args, error", [
    (["--no-such-option"], "option --no-such-option not recognized"),
    (["--max-packet-size"], "option --max-packet-size requires argument"),
    (["extra"], "Wrong number of arguments."),
])
def test_usage_error(program: str, args: List[str], error: str) -> None:
    """A command line that cannot be parsed: the error and where the help is, in one line,
    status 64 (EX_USAGE) from both commands."""
    result = run(program, *args)
    assert one_line(result) == f"{program}: error: {error}; see '{program} --help'"
    assert result.returncode == USAGE_ERROR_EXIT


@pytest.mark.parametrize("program, reactor", [
    ("twistd mqtt", r"twisted\.internet\.\w+\.\w+Reactor"),
    ("python -m twisted_mqtt", r"twisted_mqtt\.reactor\.MQTTReactor"
     if hasattr(select, "epoll") else r"[\w.]+Reactor"),
])
def test_version(program: str, reactor: str) -> None:
    """``--version``: this package's version, then Twisted's, Python's and the reactor."""
    result = run(program, "--version")
    assert result.returncode == 0, result.stdout + result.stderr
    expected = (f"twisted_mqtt {re.escape(__version__)} \\(Twisted "
                f"{re.escape(twisted_version)}, {platform.python_implementation()} "
                f"{re.escape(platform.python_version())}, reactor {reactor}\\)\n")
    assert re.fullmatch(expected, result.stdout), result.stdout
