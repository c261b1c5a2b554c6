"""Mosquitto password files: ``--auth file:PATH`` reads those the real ``mosquitto_passwd``
writes, and ``python -m twisted_mqtt.passwd`` (run as a command here) writes files the real
``mosquitto`` accepts.  Refused clients get 0x86 (v3 4) [MQTT-3.1.4-2, MQTT-3.2.2-6]."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from twisted.cred import strcred

from tests.auth_helpers import FakeReactor, FakeThreadPool
from tests.conftest import ROOT, StartBroker, broker_env
from tests.paho import V5, V311, MakeClient
from tests.servers import die_with_parent, free_port
from tests.spec import check_cited_labels
from twisted_mqtt.auth.cred import CredAuthenticator
from twisted_mqtt.auth.passwords import PasswordVerifier, check_password
from twisted_mqtt.packets import Connect
from twisted_mqtt.testing import InMemoryBroker

COMMAND = [sys.executable, "-m", "twisted_mqtt.passwd"]


def _need(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"{program} is missing: it comes with Debian's mosquitto, which .ci/run "
                    "installs", pytrace=False)
    return found


def mosquitto_passwd(*args: str) -> None:
    """Run the real ``mosquitto_passwd``."""
    subprocess.run([_need("mosquitto_passwd"), *args], check=True, capture_output=True,
                   timeout=30)


def passwd(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m twisted_mqtt.passwd ARGS``."""
    return subprocess.run([*COMMAND, *args], env=broker_env(), cwd=ROOT, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60)


def entries(path: Path) -> Dict[str, str]:
    """User name to stored password, from the file's user lines."""
    return dict(line.split(":", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


def _codes(path: Path, level: int) -> List[int]:
    """CONNACK codes through ``--auth file:PATH`` for: alice right, carol ($6$) right, dave
    (plain text) right, alice wrong, an unknown user."""
    pool = FakeThreadPool()
    threadpool: Any = pool  # (runs in this thread when told)
    verifier = PasswordVerifier(FakeReactor(), threadpool, nice=0)
    checker = strcred.makeChecker(f"file:{path}")
    hub = InMemoryBroker(authenticator=CredAuthenticator([checker], verifier))
    codes = []
    for user, password in (("alice", b"wonderland"), ("carol", b"c4rol"), ("dave", b"dpw"),
                           ("alice", b"wonder"), ("mallory", b"wonderland")):
        client = hub.client(level)
        client.send(Connect("c", level, True, 0, username=user, password=password))
        pool.run()
        codes.append(client.received()[0].reason_code)
    return codes


@pytest.mark.parametrize("level, refused", [(5, 0x86), (4, 4), (3, 4)])
def test_auth_file_reads_mosquitto_passwd_files(tmp_path: Path, level: int,
                                                refused: int) -> None:
    """``--auth file:`` accepts the ``$7$`` (PBKDF2-SHA512) and ``$6$`` (salted SHA-512)
    lines mosquitto_passwd writes, plain-text lines as before, and skips comments and blank
    lines; a wrong password or an unknown user gets 0x86 (v3 4) [MQTT-3.1.4-2,
    MQTT-3.2.2-6]."""
    path = tmp_path / "passwd"
    mosquitto_passwd("-c", "-b", str(path), "alice", "wonderland")
    mosquitto_passwd("-H", "sha512", "-b", str(path), "carol", "c4rol")
    with path.open("a") as file:
        file.write("# plain text, as Twisted's file: checker reads it\n\ndave:dpw\n")
    stored = entries(path)
    assert stored["alice"].startswith("$7$101$") and stored["carol"].startswith("$6$")
    assert _codes(path, level) == [0, 0, 0, refused, refused]


def test_the_command_manages_a_file_as_mosquitto_passwd_does(tmp_path: Path) -> None:
    """``-c -b`` creates (mode 0600, ``$7$`` with 101 iterations and a 12-byte salt), ``-b``
    adds and replaces a user keeping the other lines, ``-D`` deletes, ``-H sha512`` writes
    ``$6$``, ``-I`` sets the iterations; ``--auth file:`` accepts the result
    [MQTT-3.1.4-2]."""
    path = tmp_path / "passwd"
    assert passwd("-c", "-b", str(path), "alice", "old").returncode == 0
    assert (path.stat().st_mode & 0o777) == 0o600
    with path.open("a") as file:
        file.write("# kept\n")
    assert passwd("-b", str(path), "bob", "bpw").returncode == 0
    assert passwd("-b", str(path), "alice", "wonderland").returncode == 0
    assert passwd("-H", "sha512", "-b", str(path), "carol", "c4rol").returncode == 0
    assert passwd("-I", "2000", "-b", str(path), "dave", "dpw").returncode == 0
    assert passwd("-D", str(path), "bob").returncode == 0
    assert "# kept" in path.read_text()
    stored = entries(path)
    assert list(stored) == ["alice", "carol", "dave"]
    parts = stored["alice"].split("$")
    assert parts[:3] == ["", "7", "101"] and len(parts[3]) == 16 and len(parts[4]) == 88
    assert stored["carol"].startswith("$6$") and stored["dave"].startswith("$7$2000$")
    assert check_password(stored["alice"], b"wonderland")
    assert not check_password(stored["alice"], b"old")
    assert _codes(path, 5) == [0, 0, 0, 0x86, 0x86]


def test_the_command_hashes_a_plain_text_file(tmp_path: Path) -> None:
    """``-U`` hashes every plain-text password and leaves hashed lines and comments as they
    are, so running it twice changes nothing [MQTT-3.1.4-2]."""
    path = tmp_path / "passwd"
    mosquitto_passwd("-c", "-b", str(path), "alice", "wonderland")
    hashed = path.read_text()
    with path.open("a") as file:
        file.write("# users\ncarol:c4rol\ndave:dpw\n")
    result = passwd("-U", str(path))
    assert result.returncode == 0, result.stderr
    once = path.read_text()
    assert once.startswith(hashed) and "# users\n" in once
    stored = entries(path)
    assert all(value.startswith("$7$101$") for value in stored.values())
    assert check_password(stored["carol"], b"c4rol") and check_password(stored["dave"], b"dpw")
    assert passwd("-U", str(path)).returncode == 0 and path.read_text() == once


def _prompted(tmp_path: Path, *answers: str) -> subprocess.CompletedProcess:
    """Run ``-c FILE alice`` on a terminal, typing ``answers`` at its prompts."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        os.chdir(ROOT)
        os.execve(sys.executable, [*COMMAND, "-c", str(tmp_path / "passwd"), "alice"],
                  broker_env())
    output = b""
    try:
        for answer in answers:
            output += _read_until(terminal, b"assword: ")
            os.write(terminal, answer.encode() + b"\n")
        output += _read_until(terminal, None)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(terminal)
    return subprocess.CompletedProcess([], os.waitstatus_to_exitcode(status),
                                       output.decode(errors="replace"), "")


def _read_until(terminal: int, marker: object, timeout: float = 30.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker is None or not data.endswith(marker):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, f"no prompt: {data!r}"
        try:
            chunk = os.read(terminal, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        data += chunk
    return data


def test_the_command_asks_the_password_twice(tmp_path: Path) -> None:
    """Without ``-b`` the password is asked twice on the terminal, without echo; two
    different answers are an error and write nothing [MQTT-3.1.4-2]."""
    typed = _prompted(tmp_path, "wonderland", "wonderland")
    assert typed.returncode == 0, typed.stdout
    assert "Password: " in typed.stdout and "Reenter password: " in typed.stdout
    assert "wonderland" not in typed.stdout  # not echoed
    assert check_password(entries(tmp_path / "passwd")["alice"], b"wonderland")
    (tmp_path / "passwd").unlink()
    mistyped = _prompted(tmp_path, "wonderland", "wonderlnad")
    assert mistyped.returncode == 1 and "Error: passwords do not match" in mistyped.stdout
    assert not (tmp_path / "passwd").exists()


@pytest.mark.parametrize("argv, message", [
    (["-D", "{file}", "nobody"], "user nobody not found"),
    (["-b", "{missing}", "u", "p"], "cannot open"),
    (["-b", "{file}", "a:b", "p"], "must not contain ':'"),
    (["-b", "{file}", "u", ""], "password is empty"),
    (["-c", "-D", "{file}", "u"], "-c and -D cannot be used together"),
    (["-H", "md5", "-b", "{file}", "u", "p"], "unknown hash"),
    (["-I", "0", "-b", "{file}", "u", "p"], "iterations > 0"),
    (["-b", "{file}", "u"], "expected 3 arguments"),
    (["-U"], "expected 1 argument"),
    (["--bogus"], "unknown option --bogus"),
    (["-c", "-b", "{tmp}/no/such/dir/passwd", "u", "p"], "cannot write beside"),
])
def test_command_errors_are_one_line(tmp_path: Path, argv: List[str], message: str) -> None:
    """Every error is one line on standard error and exit status 1, never a traceback, and
    the file is left as it was [MQTT-3.1.4-2]."""
    path = tmp_path / "passwd"
    mosquitto_passwd("-c", "-b", str(path), "alice", "wonderland")
    before = path.read_bytes()
    values = {"file": str(path), "missing": str(tmp_path / "missing"), "tmp": str(tmp_path)}
    result = passwd(*(arg.format(**values) for arg in argv))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert path.read_bytes() == before


# -- the real mosquitto accepts what the command writes --------------------------------------------


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """Nothing yet: ``_start_mosquitto`` starts it; this stops it."""
    started: List[subprocess.Popen] = []
    yield started  # type: ignore[misc]
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def _start_mosquitto(tmp_path: Path, password_file: Path,
                     started: List[subprocess.Popen]) -> int:
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                      f"password_file {password_file}\npersistence false\n"
                      # (as root it would become user mosquitto, who cannot read a 0600 file)
                      + ("user root\n" if os.geteuid() == 0 else ""))
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([_need("mosquitto"), "-c", str(config), "-v"], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=die_with_parent(15))
    started.append(proc)
    deadline = time.monotonic() + 10
    while b"running" not in (tmp_path / "mosquitto.log").read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, (
            (tmp_path / "mosquitto.log").read_text())
        time.sleep(0.05)
    return port


@pytest.mark.parametrize("version", [V5, V311])
def test_mosquitto_accepts_the_files_the_command_writes(
        tmp_path: Path, mosquitto: List[subprocess.Popen], clients: MakeClient,
        version: int) -> None:
    """The real mosquitto, given a file the command wrote (``$7$`` by default, ``$6$`` with
    ``-H sha512``, and lines ``-U`` hashed), lets in the right passwords and refuses a wrong
    one [MQTT-3.1.4-2, MQTT-3.2.2-6]."""
    path = tmp_path / "passwd"
    assert passwd("-c", "-b", str(path), "alice", "wonderland").returncode == 0
    assert passwd("-H", "sha512", "-b", str(path), "carol", "c4rol").returncode == 0
    with path.open("a") as file:
        file.write("dave:dpw\n")
    assert passwd("-U", str(path)).returncode == 0
    port = _start_mosquitto(tmp_path, path, mosquitto)
    for user, password in (("alice", "wonderland"), ("carol", "c4rol"), ("dave", "dpw")):
        client = clients(port, version)
        client.paho.username_pw_set(user, password)
        client.connect()
    intruder = clients(port, version)
    intruder.paho.username_pw_set("alice", "wonder")
    intruder.connect(expect_success=False)
    assert intruder.connack_rc.is_failure


def test_a_running_broker_reads_a_mosquitto_password_file(
        tmp_path: Path, start_broker: StartBroker, clients: MakeClient) -> None:
    """``twistd mqtt --auth file:PATH`` with a mosquitto_passwd file: the right password is
    let in, a wrong one and an unknown user get 0x86; after the command changes the password
    and SIGHUP, the new one is let in and the old one refused [MQTT-3.1.4-2,
    MQTT-3.2.2-6]."""
    path = tmp_path / "passwd"
    mosquitto_passwd("-c", "-b", str(path), "alice", "wonderland")
    broker = start_broker("--auth", f"file:{path}")

    def code(user: str, password: str) -> int:
        client = clients(broker.port, V5)
        client.paho.username_pw_set(user, password)
        client.connect(expect_success=False)
        return int(client.connack_rc.value)

    assert [code("alice", "wonderland"), code("alice", "wonder"),
            code("mallory", "wonderland")] == [0, 0x86, 0x86]
    assert passwd("-b", str(path), "alice", "looking-glass").returncode == 0
    broker.proc.send_signal(1)  # SIGHUP
    broker.wait_for_log("reload: reloaded .*CredAuthenticator")
    assert [code("alice", "looking-glass"), code("alice", "wonderland")] == [0, 0x86]
    broker.check_clean_exit()


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__], every_test=True)
