"""Fixtures for the end-to-end tests (real broker processes on loopback ephemeral ports), and
the log capture other tests share.

A broker is started as ``twistd -n --pidfile= mqtt --listen tcp:0:interface=127.0.0.1 ...`` (or
``python -m twisted_mqtt ...``) with its log in a file; the address the kernel chose is read from
the line each listener logs once it listens ("listening for MQTT on ENDPOINT at HOST:PORT"), so
there is no race for a free port.  On teardown the broker gets SIGTERM and must exit cleanly
within a bound, with no traceback in its log.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from tests.paho import Client, MakeClient

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "tcp:0:interface=127.0.0.1"
READY_LINE = re.compile(r"listening for (\S+) on (\S+) at (\S+)")
LISTENER_OPTIONS = ("--listen", "--tcp", "--ws", "--stats", "--dashboard")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LOG_ERRORS = ("Traceback", "Unhandled Error", "Unhandled error")


def broker_env() -> dict:
    """The environment for a broker process: the repository root on ``sys.path`` (twistd only
    finds the ``mqtt`` plugin through it) and unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def twistd_command() -> List[str]:
    """``twistd`` run by the interpreter running the tests."""
    script = Path(sys.executable).with_name("twistd")
    if not script.exists():
        found = shutil.which("twistd")
        script = Path(found) if found else script
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; "
            "sys.argv[0] = 'twistd'; sys.exit(run())"]


def run_twistd(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``twistd ARGS`` to completion (for --help and bad options)."""
    return subprocess.run([*twistd_command(), *args], env=broker_env(), cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def log_problems(text: str) -> List[str]:
    """Lines of a broker log that show an error the broker did not handle."""
    return [line for line in text.splitlines() if any(e in line for e in LOG_ERRORS)]


class BrokerProcess:
    """A broker running in a child process, its log going to a file."""

    def __init__(self, argv: List[str], log_path: Path, host: str = "127.0.0.1",
                 pass_fds: Tuple[int, ...] = ()) -> None:
        self.argv = argv
        self.log_path = log_path
        self.host = host
        self.ports: List[int] = []
        self.listening: List[Tuple[str, str, str]] = []
        """(kind, endpoint, address) of each listener, in the order they started."""
        self.returncode: Optional[int] = None
        with open(log_path, "wb") as log_file:
            self.proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=broker_env(),
                                         cwd=log_path.parent, pass_fds=pass_fds)

    @property
    def port(self) -> int:
        """The (first) listening port."""
        return self.ports[0]

    def log(self) -> str:
        """Everything the broker logged so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, count: int = 1,
                     timeout: float = START_TIMEOUT) -> List[re.Match]:
        """Poll the log until ``pattern`` matched ``count`` times; fail at the deadline or if
        the process exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            found = list(regex.finditer(text))
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited with {self.proc.returncode} before "
                                     f"logging {pattern!r}:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the broker log within {timeout}s:\n"
                                     f"{text}")
            time.sleep(0.02)

    def port_of(self, kind: str = "MQTT", index: int = 0) -> int:
        """The port of the ``index``-th listener of ``kind`` (MQTT, WebSocket, stats)."""
        addresses = [a for k, _, a in self.listening if k == kind]
        return int(addresses[index].rsplit(":", 1)[1])

    def wait_ready(self, listeners: int = 1) -> None:
        """Wait for every listener's address in the log, then until the first TCP one accepts
        a socket."""
        matches = self.wait_for_log(READY_LINE.pattern, count=listeners)
        self.listening = [(m.group(1), m.group(2), m.group(3)) for m in matches]
        self.ports = [int(a.rsplit(":", 1)[1]) for _, _, a in self.listening
                      if re.search(r":\d+$", a)]
        if not self.ports:
            return
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=2.0).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.02)

    def stop(self) -> str:
        """SIGTERM; the broker must exit cleanly within STOP_TIMEOUT.  Return its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"broker did not exit within {STOP_TIMEOUT}s of SIGTERM:\n"
                                 f"{self.log()}") from None
        return self.log()

    def check_clean_exit(self) -> None:
        """Stop, then check the exit status and that the log shows no unhandled error."""
        text = self.stop()
        # twistd re-raises the signal it stopped for once it has shut down; python -m exits 0.
        assert self.returncode in (0, -signal.SIGTERM), (
            f"broker exited with {self.returncode}:\n{text}")
        assert "Main loop terminated." in text, f"no orderly shutdown:\n{text}"
        problems = log_problems(text)
        assert not problems, f"errors in the broker log:\n{text}"


StartBroker = Callable[..., BrokerProcess]


def _starter(directory: Path, started: List[BrokerProcess]) -> StartBroker:
    def start(*options: str, module: Union[bool, str] = False,
              listen: Optional[List[str]] = None, host: str = "127.0.0.1",
              wrapper: Optional[List[str]] = None,
              pass_fds: Tuple[int, ...] = (),
              twistd_options: Tuple[str, ...] = ()) -> BrokerProcess:
        """Start ``twistd -n --pidfile= TWISTD_OPTIONS mqtt`` (or ``python -m twisted_mqtt``,
        or ``python -m MODULE`` if ``module`` names one) with ``options``, behind the
        ``wrapper`` command if given (inheriting ``pass_fds``), and wait until every listener
        listens."""
        endpoints = listen if listen is not None else [LOOPBACK]
        args: List[str] = []
        for endpoint in endpoints:
            args += ["--listen", endpoint]
        args += list(options)
        if module:
            name = module if isinstance(module, str) else "twisted_mqtt"
            argv = [sys.executable, "-m", name, *args]
        else:
            argv = [*twistd_command(), "-n", "--pidfile=", *twistd_options, "mqtt", *args]
        log_path = directory / f"broker-{len(started)}.log"
        broker = BrokerProcess([*(wrapper or []), *argv], log_path, host, pass_fds)
        started.append(broker)
        broker.wait_ready(sum(1 for arg in args if arg in LISTENER_OPTIONS))
        return broker

    return start


def _stop_all(started: List[BrokerProcess]) -> None:
    failures = []
    for broker in started:
        try:
            broker.check_clean_exit()
        except AssertionError as error:
            failures.append(str(error))
    assert not failures, "\n\n".join(failures)


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[StartBroker]:
    """Start brokers for one test; each is stopped and checked when the test ends."""
    started: List[BrokerProcess] = []
    yield _starter(tmp_path, started)
    _stop_all(started)


@pytest.fixture(scope="module")
def module_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartBroker]:
    """Start brokers shared by a module's tests; stopped and checked at the module's end."""
    started: List[BrokerProcess] = []
    yield _starter(tmp_path_factory.mktemp("brokers"), started)
    _stop_all(started)


@pytest.fixture(scope="module")
def broker(module_brokers: StartBroker) -> BrokerProcess:
    """A broker with the default options (``twistd -n mqtt``) on a loopback ephemeral port."""
    return module_brokers()


@pytest.fixture(scope="module")
def limited_broker(module_brokers: StartBroker) -> BrokerProcess:
    """A broker started with limits: ``--refuse-subscribe test/nosubscribe --max-keep-alive 60
    --max-packet-size 65536 --receive-maximum 10 --topic-alias-maximum 2 --sys-interval 0``."""
    return module_brokers("--refuse-subscribe", "test/nosubscribe", "--max-keep-alive", "60",
                          "--max-packet-size", "65536", "--receive-maximum", "10",
                          "--topic-alias-maximum", "2", "--sys-interval", "0")


@pytest.fixture
def clients() -> Iterator[MakeClient]:
    """Make paho clients (``tests.paho.Client``); all are disconnected and stopped when the test
    ends."""
    made: List[Client] = []

    def make(*args: Any, **kwargs: Any) -> Client:
        client = Client(*args, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def log_events() -> Iterator[List[dict]]:
    """The log events emitted in this process during the test."""
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def logged() -> Iterator[List[str]]:
    """The log lines (formatted events) emitted in this process during the test."""
    lines: List[str] = []

    def observe(event: Any) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def thread_names_of_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> List[str]:
    """Wrap ``module.name`` for the test so that each call records the name of the thread it
    runs in; the list it returns fills as calls happen."""
    names: List[str] = []
    original = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        names.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return names
