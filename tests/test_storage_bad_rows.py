"""Stores given bad data: rows that are valid SQL (or Redis values) but hold data no broker
writes are reported in one line naming the table, whose row it is and the field, and start-up
stops (exit status 78), or with ``--store-skip-bad-rows`` the row is skipped, and the session or
retained message it belongs to is neither restored nor kept; an empty SQLite file is
initialised with a log line; a damaged write-ahead log is refused, naming it.

SQLite files are in the test's temporary directory, Redis is a private ``redis-server``; the
end-to-end tests run the real ``python -m twisted_mqtt`` and paho clients.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.conftest import LOOPBACK, ROOT, StartBroker, broker_env, log_problems
from tests.paho import V5, MakeClient
from tests.servers import RedisServer, redis_server  # noqa: F401
from tests.test_storage_restart import session_properties
from tests.test_storage_stores import first_batch, refused
from twisted_mqtt.storage import BadRow, StoredState, StoreError
from twisted_mqtt.storage.recorder import Recorder
from twisted_mqtt.storage.redis import RedisStore
from twisted_mqtt.storage.sqlite import SQLiteStore
from twisted_mqtt.testing import InMemoryBroker

SKIP_HINT = "; repair or delete the row, or skip bad rows with --store-skip-bad-rows"

SQLITE_CASES: Dict[str, Tuple[str, BadRow]] = {
    "blob_topic": (
        "UPDATE deliveries SET topic = CAST(topic AS BLOB) WHERE id = 1",
        BadRow("deliveries", "id 1, client 'c1'", "topic", "a BLOB (b'a/b'), not text", "c1")),
    "qos_7": (
        "UPDATE subscriptions SET qos = 7 WHERE client_id = 'c1' AND topic_filter = 'a/#'",
        BadRow("subscriptions", "client 'c1', filter 'a/#'", "qos", "7 is not 0, 1 or 2",
               "c1")),
    "packet_id_70000": (
        "UPDATE deliveries SET packet_id = 70000 WHERE id = 3",
        BadRow("deliveries", "id 3, client 'c2'", "packet_id", "70000 is not in 1..65535",
               "c2")),
    "sub_ids_x": (
        "UPDATE deliveries SET sub_ids = 'x' WHERE id = 1",
        BadRow("deliveries", "id 1, client 'c1'", "sub_ids",
               "'x' is not a list of subscription identifiers", "c1")),
    "text_payload": (
        "UPDATE retained SET payload = 'text' WHERE topic = 'r/1'",
        BadRow("retained", "topic 'r/1'", "payload", "text ('text'), not a BLOB", None, "r/1")),
    "integer_payload": (
        "UPDATE deliveries SET payload = 42 WHERE id = 2",
        BadRow("deliveries", "id 2, client 'c1'", "payload", "an integer (42), not a BLOB",
               "c1")),
}


def sql(path: Path, *statements: str) -> None:
    """Run ``statements`` on the SQLite file at ``path`` and commit."""
    db = sqlite3.connect(str(path))
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


@pytest_twisted.inlineCallbacks
def write_first_batch(store: Any) -> Any:
    """Create ``store`` and commit ``first_batch`` to it."""
    yield store.load()
    yield store.commit(first_batch())
    yield store.close()


@pytest_twisted.inlineCallbacks
def open_recorder(store: Any, skip: bool) -> Any:
    """A broker restored from ``store`` by a ``Recorder`` (``skip``: skip bad rows); fires
    with (broker, recorder), or fails as ``Recorder.open`` does."""
    hub = InMemoryBroker(start=False)
    hub.clock.advance(5.0)  # before any session of first_batch expires
    recorder = Recorder(hub.broker, store, skip_bad_rows=skip)
    yield recorder.open()
    return hub, recorder


@pytest_twisted.inlineCallbacks
def check_refused_then_skipped(make: Any, expected: BadRow, logged: List[str]) -> Any:
    """Loading lists ``expected`` as the one bad row; a recorder refuses the store with one
    line naming it; with skip, it logs one line, restores everything else and deletes what
    the row belonged to, so that the next start finds no bad row."""
    store = make()
    state = yield store.load()
    yield store.close()
    assert state.bad_rows == (expected,)
    try:
        yield open_recorder(make(), skip=False)
    except StoreError as error:
        location = make().location
        assert str(error) == f"store {location}: {expected}{SKIP_HINT}"
    else:
        raise AssertionError("a store with a bad row was restored")
    hub, recorder = yield open_recorder(make(), skip=True)
    owner = expected.client_id
    others = {s.client_id for s in state.sessions} - {owner}
    assert set(hub.broker.sessions) == others
    assert {s.client_id for s in recorder.stored_sessions()} == others
    if expected.topic is not None:
        assert expected.topic not in hub.broker.retained
    skipped = [line for line in logged if "skipped bad row" in line]
    what = f"; session '{owner}' not restored (deleted)" if owner else "; deleted"
    assert skipped == [f"store {make().location}: skipped {expected}{what}"]
    yield recorder.close()
    again = make()
    state = yield again.load()
    yield again.close()
    assert state.bad_rows == ()
    assert {s.client_id for s in state.sessions} == others


# -- SQLite ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(SQLITE_CASES))
@pytest_twisted.inlineCallbacks
def test_sqlite_bad_row(tmp_path: Path, case: str, logged: List[str]) -> Any:
    """Each bad row of the issue (a topic stored as a BLOB, QoS 7, packet id 70000,
    ``sub_ids='x'``, a TEXT payload, an integer payload) is found when the store is read, named
    in one line, refused, or skipped with the session or retained message it belongs to."""
    path = tmp_path / "bad.db"
    yield write_first_batch(SQLiteStore(str(path), reactor))
    statement, expected = SQLITE_CASES[case]
    sql(path, statement)
    yield check_refused_then_skipped(lambda: SQLiteStore(str(path), reactor), expected, logged)


@pytest_twisted.inlineCallbacks
def test_sqlite_rows_checked_in_every_table(tmp_path: Path) -> Any:
    """Sessions, subscriptions, deliveries, inbound QoS 2 ids, retained messages and counters:
    a bad field in any of them is listed, each once, in the order the tables are read."""
    path = tmp_path / "many.db"
    yield write_first_batch(SQLiteStore(str(path), reactor))
    sql(path,
        "UPDATE sessions SET protocol_level = 9 WHERE client_id = 'ç/é'",
        "UPDATE sessions SET will = X'00' WHERE client_id = 'c1'",
        "UPDATE subscriptions SET topic_filter = 'a/#/b' WHERE client_id = 'c2'",
        "UPDATE deliveries SET state = 1 WHERE id = 3",
        "UPDATE inbound_qos2 SET packet_id = 0 WHERE packet_id = 4",
        "UPDATE retained SET expires_at = -1 WHERE topic = 'r/2'",
        "UPDATE counters SET value = '\"many\"' WHERE name = 'messages_received'",
        "UPDATE deliveries SET client_id = CAST('c1' AS BLOB) WHERE id = 4")
    store = SQLiteStore(str(path), reactor)
    state = yield store.load()
    yield store.close()
    assert [str(row) for row in state.bad_rows] == [
        "bad row in table subscriptions (client 'c2', filter 'a/#/b'): field topic_filter: "
        "not a valid topic filter (misplaced '#' in 'a/#/b')",
        "bad row in table deliveries (id 3, client 'c2'): field state: "
        "1 (PUBREL sent) on a QoS 1 delivery",
        "bad row in table deliveries (id 4, client b'c1'): field client_id: "
        "a BLOB (b'c1'), not text",
        "bad row in table inbound_qos2 (client 'c1'): field packet_id: 0 is not in 1..65535",
        "bad row in table sessions (client 'c1'): field will: no header line",
        "bad row in table sessions (client 'ç/é'): field protocol_level: 9 is not 3, 4 or 5",
        "bad row in table retained (topic 'r/2'): field expires_at: "
        "-1.0 is not a finite number of seconds at or after 0",
        "bad row in table counters (counter 'messages_received'): field value: "
        "'many' is not a count",
    ]
    assert [s.client_id for s in state.sessions] == ["c2"]


@pytest_twisted.inlineCallbacks
def test_sqlite_packet_id_in_flight_twice(tmp_path: Path) -> Any:
    """Two deliveries of one session in flight under the same packet id: the later is a bad
    row (restoring both would lose one)."""
    path = tmp_path / "twice.db"
    yield write_first_batch(SQLiteStore(str(path), reactor))
    sql(path, "UPDATE deliveries SET packet_id = 5 WHERE id = 2")
    store = SQLiteStore(str(path), reactor)
    state = yield store.load()
    yield store.close()
    assert state.bad_rows == (BadRow("deliveries", "id 2, client 'c1'", "packet_id",
                                     "5 is in flight in delivery 1 too", "c1"),)


@pytest_twisted.inlineCallbacks
def test_sqlite_empty_file_initialised(tmp_path: Path, logged: List[str]) -> Any:
    """An existing 0-byte file is made a new, empty store, and the log says so in one line."""
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    store = SQLiteStore(str(path), reactor)
    state = yield store.load()
    yield store.close()
    assert state == StoredState()
    assert [line for line in logged if "initialised" in line] == [
        f"store {path}: an empty file (0 bytes), initialised as a new store"]


@pytest_twisted.inlineCallbacks
def test_sqlite_interrupted_creation(tmp_path: Path) -> Any:
    """A store whose creation stopped after its meta table (schema version 0: what SQLite
    shows when the log lost the transaction after it) is created on, not refused with
    "table meta already exists"."""
    path = tmp_path / "half.db"
    sql(path, "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta VALUES ('application', 'twisted_mqtt'), ('schema_version', '0')")
    yield write_first_batch(SQLiteStore(str(path), reactor))
    store = SQLiteStore(str(path), reactor)
    state = yield store.load()
    yield store.close()
    assert [s.client_id for s in state.sessions] == ["c1", "c2", "ç/é"]


WRITE_AND_DIE = """
import os, sys
from twisted.internet import reactor
from twisted_mqtt.storage.sqlite import SQLiteStore
from tests.test_storage_stores import first_batch
store = SQLiteStore(sys.argv[1], reactor)
store._open_and_load()
store._apply(first_batch())
os._exit(0)  # killed: the write-ahead log is not checkpointed into the database
"""


@pytest_twisted.inlineCallbacks
def test_sqlite_damaged_wal_refused(tmp_path: Path) -> Any:
    """A write-ahead log with a damaged frame before valid ones is refused, naming it: SQLite
    would silently drop every transaction from the damage on."""
    path = tmp_path / "wal.db"
    subprocess.run([sys.executable, "-c", WRITE_AND_DIE, str(path)], check=True, cwd=ROOT,
                   env=broker_env(), timeout=30)
    wal = Path(f"{path}-wal")
    data = bytearray(wal.read_bytes())
    frame = 24 + 4096
    assert len(data) >= 32 + 6 * frame
    data[32 + 2 * frame + 100:32 + 2 * frame + 164] = b"\xa5" * 64  # frame 3's page
    wal.write_bytes(bytes(data))
    message = yield refused(SQLiteStore(str(path), reactor))
    assert message == (
        f"store {path}: damaged write-ahead log {wal} (frame 3 is damaged but frame 4 after it "
        "is valid): SQLite would drop the transactions from there on; move it away to open the "
        "database without them")
    assert wal.read_bytes() == bytes(data)  # left as it was


# -- Redis ----------------------------------------------------------------------------------


REDIS_CASES: Dict[str, Tuple[Tuple[str, ...], BadRow]] = {
    "qos_7": (("HSET", "subs:c1", "a/#", "[7,true,false,1,9]"), SQLITE_CASES["qos_7"][1]),
    "packet_id_70000": (("HSET", "flight:c2", "3", "70000,0"),
                        SQLITE_CASES["packet_id_70000"][1]),
    "sub_ids_x": (("HSET", "msgs:c1", "1",
                   json.dumps([2, False, "x", "a/b", 2, False, None, 2e9, "publisher"]) + "\n"),
                  SQLITE_CASES["sub_ids_x"][1]),
    "topic_not_text": (("HSET", "retained", "r/1", json.dumps([42, 1, True, None, None, None])
                        + "\nret"),
                       BadRow("retained", "topic 'r/1'", "topic", "an integer (42), not text",
                              None, "r/1")),
}


@pytest.mark.parametrize("case", sorted(REDIS_CASES))
@pytest_twisted.inlineCallbacks
def test_redis_bad_row(redis_server: RedisServer, case: str,  # noqa: F811
                       logged: List[str]) -> Any:
    """The Redis store checks its records with the same functions: the same bad data gives
    the same line, refusal and skip as in SQLite."""
    prefix = f"b{uuid.uuid4().hex[:8]}:"
    url = redis_server.url(0, prefix)
    yield write_first_batch(RedisStore(url, reactor))
    (command, key, *args), expected = REDIS_CASES[case]
    redis_server.command(command, prefix + key, *args)
    yield check_refused_then_skipped(lambda: RedisStore(url, reactor), expected, logged)


# -- the real broker ------------------------------------------------------------------------


def make_store(start_broker: StartBroker, clients: MakeClient, path: Path) -> None:
    """A store written by a real broker: sessions ``good`` and ``bad``, each with three QoS 1
    messages queued on ``q``; then ``bad``'s first message is given QoS 7."""
    broker = start_broker("--store", f"sqlite:{path}", "--sys-interval", "0")
    for client_id in ("good", "bad"):
        client = clients(broker.port, V5, client_id)
        client.connect(clean_start=False, properties=session_properties())
        client.subscribe("q", 1)
        client.disconnect()
    publisher = clients(broker.port, V5, "publisher")
    publisher.connect()
    for number in range(3):
        publisher.publish("q", b"%d" % number, 1)
    publisher.disconnect()
    broker.check_clean_exit()
    sql(path, "UPDATE deliveries SET qos = 7 WHERE id = "
        "(SELECT MIN(id) FROM deliveries WHERE client_id = 'bad')")


def test_cli_refuses_bad_row(tmp_path: Path, start_broker: StartBroker,
                             clients: MakeClient) -> None:
    """``python -m twisted_mqtt`` on a store with a bad row logs exactly one line naming the
    table, the client id and the field, opens no listener and exits with status 78."""
    path = tmp_path / "broker.db"
    make_store(start_broker, clients, path)
    db = sqlite3.connect(str(path))
    key = db.execute("SELECT MIN(id) FROM deliveries WHERE client_id = 'bad'").fetchone()[0]
    db.close()
    done = subprocess.run([sys.executable, "-m", "twisted_mqtt", "--listen", LOOPBACK,
                           "--store", f"sqlite:{path}"], cwd=ROOT, env=broker_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    output = done.stdout + done.stderr
    assert done.returncode == 78, output
    assert "Traceback" not in output and not log_problems(output), output
    lines = [line for line in output.splitlines() if "cannot start" in line]
    assert len(lines) == 1, output
    assert lines[0].endswith(
        f"cannot start: store {path}: bad row in table deliveries (id {key}, client 'bad'): "
        f"field qos: 7 is not 0, 1 or 2{SKIP_HINT}"), output
    assert "listening for" not in output


def test_cli_skips_bad_row(tmp_path: Path, start_broker: StartBroker,
                           clients: MakeClient) -> None:
    """With ``--store-skip-bad-rows`` the broker starts, says which row it skipped, restores
    the valid session next to it (a paho client gets its queued messages), and the client of
    the skipped session starts afresh (Session Present 0) and is served normally."""
    path = tmp_path / "broker.db"
    make_store(start_broker, clients, path)
    broker = start_broker("--store", f"sqlite:{path}", "--store-skip-bad-rows", "--sys-interval",
                          "0", module=True)
    skipped = [line for line in broker.log().splitlines() if "skipped bad row" in line]
    assert len(skipped) == 1 and "client 'bad'" in skipped[0] and "field qos" in skipped[0]
    assert skipped[0].endswith("; session 'bad' not restored (deleted)")
    good = clients(broker.port, V5, "good")
    good.connect(clean_start=False, properties=session_properties())
    assert good.connack_flags.session_present
    assert [m.payload for m in good.expect(3)] == [b"0", b"1", b"2"]
    bad = clients(broker.port, V5, "bad")
    bad.connect(clean_start=False, properties=session_properties())
    assert not bad.connack_flags.session_present
    bad.subscribe("again", 1)
    good.publish("again", b"served", 1)
    assert [m.payload for m in bad.expect(1)] == [b"served"]
    bad.disconnect()
    good.disconnect()
    broker.check_clean_exit()
    db = sqlite3.connect(str(path))
    assert db.execute("SELECT COUNT(*) FROM deliveries WHERE qos = 7").fetchone() == (0,)
    db.close()
