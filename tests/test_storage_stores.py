"""Store back ends: the same batches give the same state in memory, in SQLite and in Redis;
bad stores (corrupt, foreign, newer schema) are refused with a message naming them.

SQLite runs on a file in the test's temporary directory; Redis on a private ``redis-server``
(``tests.servers.redis_server``), each test on its own key prefix.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any, Callable, List

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from zope.interface.verify import verifyObject

from tests.conftest import log_problems, run_twistd
from tests.servers import RedisServer, redis_server  # noqa: F401
from twisted_mqtt.bans import Ban
from twisted_mqtt.packets import Subscription, Will
from twisted_mqtt.properties import Properties
from twisted_mqtt.storage import (
    NEVER,
    SCHEMA_VERSION,
    BadRow,
    Batch,
    IStore,
    SessionHead,
    StoredDelivery,
    StoredMessage,
    StoredState,
    StoredSubscription,
    StoreError,
    open_store,
    parse_store,
)
from twisted_mqtt.storage.memory import MemoryStore
from twisted_mqtt.storage.redis import RedisStore, parse_redis_url
from twisted_mqtt.storage.sqlite import SQLiteStore

MESSAGE = StoredMessage(
    "a/b", b"\x00\xffbinary payload", 2, False,
    Properties(user_properties=(("k", "v"),), message_expiry_interval=50,
               content_type="text/plain", correlation_data=b"\x01"),
    2e9, "publisher")


def first_batch() -> Batch:
    batch = Batch()
    will = Will("w/t", b"bye", 1, True, Properties(will_delay_interval=5, content_type="x"))
    batch.sessions["c1"] = SessionHead("c1", 3600, 5, 100.5, will, 7, "alice")
    batch.sessions["c2"] = SessionHead("c2", NEVER, 4, None, None, 1)
    batch.sessions["ç/é"] = SessionHead("ç/é", 10, 5, 1.0, None, 65535)
    batch.subscriptions[("c1", "a/#")] = StoredSubscription(
        Subscription("a/#", 2, True, False, 1), 9)
    batch.subscriptions[("c1", "$share/g/b")] = StoredSubscription(Subscription("$share/g/b", 1))
    batch.subscriptions[("c2", "+/x")] = StoredSubscription(Subscription("+/x", 0, False, True))
    batch.deliveries[1] = StoredDelivery(1, "c1", MESSAGE, 2, False, (9,), 5, 1)
    batch.deliveries[2] = StoredDelivery(2, "c1", MESSAGE, 1, True, (), None, 0)
    batch.deliveries[3] = StoredDelivery(3, "c2", MESSAGE, 1, False, (1, 2), 1, 0)
    batch.deliveries[4] = StoredDelivery(4, "c1", StoredMessage("q", b"", 1, False), 1, False)
    batch.inbound[("c1", 4)] = True
    batch.inbound[("c1", 6)] = True
    batch.retained["r/1"] = StoredMessage("r/1", b"ret", 1, True)
    batch.retained["r/2"] = StoredMessage("r/2", b"x", 2, True, Properties(content_type="a"),
                                          1e10, "o")
    batch.sys_info = {"messages_received": 5, "messages_received_by_qos": [1, 2, 3]}
    batch.bans = (Ban("address", "10.0.0.0/8", 2e9, "scan", "admin", 100.0),
                  Ban("client_id", "ç:é"))
    return batch


def second_batch() -> Batch:
    batch = Batch()
    batch.cleared.add("c2")
    batch.subscriptions[("c1", "$share/g/b")] = None
    batch.deleted[1] = "c1"
    batch.moves[2] = ("c1", 8, 0)
    batch.deliveries[5] = StoredDelivery(5, "c1", MESSAGE, 2, False, (), 3, 1)
    batch.inbound[("c1", 4)] = False
    batch.retained["r/1"] = None
    batch.sessions["c1"] = SessionHead("c1", 3600, 5, None, None, 9)
    batch.sys_info = {"messages_received": 6}
    batch.bans = (Ban("username", "mallory"),)
    return batch


def expected_states() -> List[StoredState]:
    """What the memory store (the reference) holds after each batch."""
    store = MemoryStore()
    states = []
    for batch in (first_batch(), second_batch()):
        store.commit(batch)
        states.append(store.state())
    return states


def test_reference_states() -> None:
    """The reference states hold what the batches say."""
    after_first, after_second = expected_states()
    assert [s.client_id for s in after_first.sessions] == ["c1", "c2", "ç/é"]
    c1 = after_second.sessions[0]
    assert [(d.key, d.packet_id, d.state) for d in c1.deliveries] == [
        (2, 8, 0), (4, None, 0), (5, 3, 1)]
    assert c1.inbound_qos2 == (6,)
    assert [s.subscription.topic_filter for s in c1.subscriptions] == ["a/#"]
    assert [s.client_id for s in after_second.sessions] == ["c1", "ç/é"]
    assert [m.topic for m in after_second.retained] == ["r/2"]
    assert after_second.sys_info == {"messages_received": 6}
    assert [b.value for b in after_first.bans] == ["10.0.0.0/8", "ç:é"]
    assert after_second.bans == (Ban("username", "mallory"),)
    assert after_first.sessions[0].expires_at == 3700.5
    assert after_first.sessions[0].will_at == 105.5
    assert after_first.sessions[1].expires_at is None


@inlineCallbacks
def round_trip(make: Callable[[], Any]) -> Any:
    """Commit both batches, reopening the store each time; compare with the reference."""
    after_first, after_second = expected_states()
    store = make()
    assert verifyObject(IStore, store)
    empty = yield store.load()
    assert empty == StoredState()
    yield store.commit(first_batch())
    yield store.close()
    store = make()
    state = yield store.load()
    assert state == after_first
    yield store.commit(second_batch())
    yield store.close()
    store = make()
    state = yield store.load()
    assert state == after_second
    yield store.close()


@pytest_twisted.inlineCallbacks
def test_memory_round_trip() -> Any:
    """The memory store keeps what it was given for as long as the object lives."""
    store = MemoryStore()
    yield round_trip(lambda: store)


@pytest_twisted.inlineCallbacks
def test_sqlite_round_trip(tmp_path: Path) -> Any:
    """SQLite: a file in WAL mode, with the schema version in its meta table."""
    path = tmp_path / "broker.db"
    yield round_trip(lambda: SQLiteStore(str(path), reactor))
    db = sqlite3.connect(str(path))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert dict(db.execute("SELECT key, value FROM meta")) == {
        "application": "twisted_mqtt", "schema_version": str(SCHEMA_VERSION)}
    db.close()


@pytest_twisted.inlineCallbacks
def test_redis_round_trip(redis_server: RedisServer) -> Any:  # noqa: F811
    """Redis: every key under the prefix, one MULTI/EXEC per batch."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    url = redis_server.url(0, prefix)
    yield round_trip(lambda: RedisStore(url, reactor))
    assert redis_server.command("HGET", f"{prefix}meta", "schema_version") == b"$1"
    assert redis_server.command("EXISTS", f"{prefix}sessions") == b":1"


def test_store_specs() -> None:
    """--store values: memory, sqlite:PATH, redis://HOST:PORT/DB[?prefix=]; others refused."""
    assert parse_store("memory") == ("memory", "")
    assert parse_store("sqlite:/var/lib/x.db") == ("sqlite", "/var/lib/x.db")
    assert parse_store("redis://h:1/2") == ("redis", "redis://h:1/2")
    assert parse_redis_url("redis://h:1/2?prefix=app:") == ("h", 1, 2, None, "app:")
    assert parse_redis_url("redis://:s%40cret@h") == ("h", 6379, 0, "s@cret", "twisted_mqtt:")
    for bad in ("sqlite:", "postgres://x", "redis://h/x", "redis://h:1/0?bogus=1", ""):
        with pytest.raises(ValueError):
            parse_store(bad)
    assert isinstance(open_store("memory"), MemoryStore)
    store = open_store("redis://:pw@h:1/2")
    assert "pw" not in store.location


# -- bad stores -----------------------------------------------------------------------------------


@inlineCallbacks
def refused(store: Any) -> Any:
    """The StoreError message that loading ``store`` fails with."""
    try:
        yield store.load()
    except StoreError as error:
        return str(error)
    finally:
        yield store.close()
    raise AssertionError("the store loaded")


@pytest_twisted.inlineCallbacks
def test_sqlite_corrupt_file(tmp_path: Path) -> Any:
    """A file that is not an SQLite database is refused, naming it."""
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database\n" * 100)
    message = yield refused(SQLiteStore(str(path), reactor))
    assert str(path) in message and "not an SQLite database" in message
    assert path.read_bytes() == b"this is not a database\n" * 100  # left as it was


@pytest_twisted.inlineCallbacks
def test_sqlite_damaged_database(tmp_path: Path) -> Any:
    """A store whose pages were damaged is refused as corrupt."""
    path = tmp_path / "damaged.db"
    store = SQLiteStore(str(path), reactor)
    yield store.load()
    yield store.commit(first_batch())
    yield store.close()
    data = bytearray(path.read_bytes())
    for offset in range(4096, len(data), 512):  # every page after the first
        data[offset:offset + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    message = yield refused(SQLiteStore(str(path), reactor))
    assert str(path) in message and "corrupt" in message


@pytest_twisted.inlineCallbacks
def test_sqlite_foreign_database(tmp_path: Path) -> Any:
    """Another application's SQLite database is refused, not written to."""
    path = tmp_path / "other.db"
    db = sqlite3.connect(str(path))
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.commit()
    db.close()
    message = yield refused(SQLiteStore(str(path), reactor))
    assert str(path) in message and "not a twisted_mqtt store" in message
    assert "customers" in message
    db = sqlite3.connect(str(path))
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["customers"]
    db.close()


@pytest_twisted.inlineCallbacks
def test_sqlite_newer_schema(tmp_path: Path) -> Any:
    """A store written by a newer broker (higher schema version) is refused."""
    path = tmp_path / "newer.db"
    store = SQLiteStore(str(path), reactor)
    yield store.load()
    yield store.close()
    db = sqlite3.connect(str(path))
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
               (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    message = yield refused(SQLiteStore(str(path), reactor))
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 1} is newer" in message


@pytest_twisted.inlineCallbacks
def test_sqlite_missing_directory(tmp_path: Path) -> Any:
    """A path in a directory that does not exist is refused (not created)."""
    path = tmp_path / "nowhere" / "broker.db"
    message = yield refused(SQLiteStore(str(path), reactor))
    assert str(path) in message and "does not exist" in message


@pytest_twisted.inlineCallbacks
def test_sqlite_migrations_from_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Migrations run in order, each in its own transaction, from the version found: a store
    at version 1 is brought to a (pretend) version 2."""
    from twisted_mqtt.storage import sqlite as module

    path = tmp_path / "old.db"
    store = SQLiteStore(str(path), reactor)
    yield store.load()
    yield store.commit(first_batch())
    yield store.close()
    ran: List[int] = []

    def to_v2(db: sqlite3.Connection) -> None:
        ran.append(2)
        db.execute("ALTER TABLE sessions ADD COLUMN note TEXT")

    monkeypatch.setattr(module, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(module.MIGRATIONS, 2, to_v2)
    store = SQLiteStore(str(path), reactor)
    state = yield store.load()
    yield store.close()
    assert ran == [2]
    assert state == expected_states()[0]
    db = sqlite3.connect(str(path))
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    db.close()


@pytest_twisted.inlineCallbacks
def test_redis_foreign_keys(redis_server: RedisServer) -> Any:  # noqa: F811
    """Keys under the prefix that are not ours (no meta hash) are refused."""
    prefix = f"f{uuid.uuid4().hex[:8]}:"
    redis_server.command("SET", f"{prefix}something", "else")
    url = redis_server.url(0, prefix)
    message = yield refused(RedisStore(url, reactor))
    assert url in message and "not a twisted_mqtt store" in message
    assert redis_server.command("EXISTS", f"{prefix}meta") == b":0"  # nothing written


@pytest_twisted.inlineCallbacks
def test_redis_newer_schema(redis_server: RedisServer) -> Any:  # noqa: F811
    """A Redis store written by a newer broker is refused."""
    prefix = f"n{uuid.uuid4().hex[:8]}:"
    redis_server.command("HSET", f"{prefix}meta", "application", "twisted_mqtt",
                         "schema_version", str(SCHEMA_VERSION + 1))
    url = redis_server.url(0, prefix)
    message = yield refused(RedisStore(url, reactor))
    assert url in message and f"schema version {SCHEMA_VERSION + 1} is newer" in message


@pytest_twisted.inlineCallbacks
def test_redis_corrupt_record(redis_server: RedisServer) -> Any:  # noqa: F811
    """A record that does not decode is left out of the state and listed as a bad row."""
    prefix = f"c{uuid.uuid4().hex[:8]}:"
    url = redis_server.url(0, prefix)
    store = RedisStore(url, reactor)
    yield store.load()
    yield store.commit(first_batch())
    yield store.close()
    redis_server.command("HSET", f"{prefix}retained", "r/1", "garbage")
    store = RedisStore(url, reactor)
    state = yield store.load()
    yield store.close()
    assert state.bad_rows == (
        BadRow("retained", "topic 'r/1'", "record", "no header line", None, "r/1"),)
    assert [m.topic for m in state.retained] == ["r/2"]


@pytest_twisted.inlineCallbacks
def test_redis_unreachable(monkeypatch: pytest.MonkeyPatch) -> Any:
    """No Redis server at the address: start-up fails with a message, within a bound."""
    from tests.servers import free_port
    from twisted_mqtt.storage import redis as module

    monkeypatch.setattr(module, "CONNECT_TIMEOUT", 1.0)
    url = f"redis://127.0.0.1:{free_port()}/0"
    message = yield refused(RedisStore(url, reactor))
    assert url in message and "cannot connect" in message


def test_twistd_refuses_bad_store(tmp_path: Path) -> None:
    """The real ``twistd mqtt`` on a corrupt store exits non-zero with one line naming the
    file and the problem, and no traceback."""
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"garbage" * 1000)
    done = run_twistd("-n", "--pidfile=", "mqtt", "--listen", "tcp:0:interface=127.0.0.1",
                      "--store", f"sqlite:{path}")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output and not log_problems(output), output
    lines = [line for line in output.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and str(path) in lines[0] and "not an SQLite database" in lines[0]
    assert "listening for" not in output


def test_twistd_refuses_bad_store_spec() -> None:
    """A --store value that is not understood is a usage error."""
    done = run_twistd("-n", "--pidfile=", "mqtt", "--store", "mongodb://x")
    assert done.returncode != 0
    assert "--store: unknown store" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest_twisted.inlineCallbacks
def test_sqlite_store_without_bans_table(tmp_path: Path) -> Any:
    """A store written by a broker that kept no bans (no bans table) opens, gains the table,
    and keeps the bans committed from then on."""
    path = str(tmp_path / "broker.db")
    store = SQLiteStore(path, reactor)
    yield store.load()
    yield store.commit(first_batch())
    yield store.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE bans")
    db.commit()
    db.close()
    store = SQLiteStore(path, reactor)
    state = yield store.load()
    assert state.bans == () and len(state.sessions) == 3
    batch = Batch()
    batch.bans = (Ban("username", "mallory"),)
    yield store.commit(batch)
    yield store.close()
    store = SQLiteStore(path, reactor)
    state = yield store.load()
    assert state.bans == (Ban("username", "mallory"),)
    yield store.close()
