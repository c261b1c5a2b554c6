"""``SQLiteStore``: the embedded store, one SQLite file in WAL mode (``--store sqlite:PATH``).

Every SQL statement runs on one worker thread (a one-thread ``ThreadPool``) that owns the
connection, so the reactor thread never waits on the disk.  A batch is one transaction.  In
durable mode the file is synced at every commit (``synchronous=FULL``); in write-behind mode a
commit survives the process being killed but not the machine losing power
(``synchronous=NORMAL``).

The layout is versioned in the ``meta`` table; ``MIGRATIONS`` bring an older file up to
``SCHEMA_VERSION`` when it is opened, and a newer, foreign or corrupt file is refused with a
``StoreError`` naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from twisted_mqtt.packets import Subscription
from twisted_mqtt.storage import (
    APPLICATION,
    SCHEMA_VERSION,
    Batch,
    IStore,
    SessionHead,
    StoredDelivery,
    StoredMessage,
    StoredSession,
    StoredState,
    StoredSubscription,
    StoreError,
    stored_schema_version,
)
from twisted_mqtt.storage._pack import (
    BadRecord,
    pack_properties,
    pack_will,
    unpack_properties,
    unpack_will,
)

"""The ``application`` value of the ``meta`` table, which tells our files from others."""


def _create_v1(db: sqlite3.Connection) -> None:
    _execute_script(db, """
        CREATE TABLE sessions (
            client_id TEXT PRIMARY KEY,
            expiry_interval INTEGER NOT NULL,
            protocol_level INTEGER NOT NULL,
            disconnected_at REAL,
            will BLOB,
            next_id INTEGER NOT NULL,
            username TEXT
        );
        CREATE TABLE subscriptions (
            client_id TEXT NOT NULL,
            topic_filter TEXT NOT NULL,
            qos INTEGER NOT NULL,
            no_local INTEGER NOT NULL,
            retain_as_published INTEGER NOT NULL,
            retain_handling INTEGER NOT NULL,
            sub_id INTEGER,
            PRIMARY KEY (client_id, topic_filter)
        ) WITHOUT ROWID;
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            client_id TEXT NOT NULL,
            packet_id INTEGER,
            state INTEGER NOT NULL,
            qos INTEGER NOT NULL,
            retain INTEGER NOT NULL,
            sub_ids TEXT NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            message_qos INTEGER NOT NULL,
            message_retain INTEGER NOT NULL,
            properties BLOB,
            expires_at REAL,
            origin TEXT
        );
        CREATE INDEX deliveries_client ON deliveries (client_id);
        CREATE TABLE inbound_qos2 (
            client_id TEXT NOT NULL,
            packet_id INTEGER NOT NULL,
            PRIMARY KEY (client_id, packet_id)
        ) WITHOUT ROWID;
        CREATE TABLE retained (
            topic TEXT PRIMARY KEY,
            payload BLOB NOT NULL,
            qos INTEGER NOT NULL,
            properties BLOB,
            expires_at REAL,
            origin TEXT
        );
        CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
    """)


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements inside the current transaction (``executescript``
    would commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


MIGRATIONS: Dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _create_v1,
}
"""Schema version -> the function that brings a file at the version below it to this one
(version 0 is an empty file)."""

TABLES = ("meta", "sessions", "subscriptions", "deliveries", "inbound_qos2", "retained",
          "counters")


@implementer(IStore)
class SQLiteStore:
    """Sessions, messages and retained messages in one SQLite file."""

    def __init__(self, path: str, reactor: Any = None, durable: bool = False) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.path = path
        self.location = path
        self.reactor = reactor
        self.durable = durable
        self._pool: Optional[ThreadPool] = None
        self._db: Optional[sqlite3.Connection] = None  # used on the worker thread only
        self._trigger: Any = None

    # -- on the reactor thread ------------------------------------------------------------------

    def _run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._pool is None:
            self._pool = ThreadPool(1, 1, name=f"sqlite {self.path}")
            self._pool.start()
            self._trigger = self.reactor.addSystemEventTrigger("during", "shutdown",
                                                               self._stop_pool)
        return deferToThreadPool(self.reactor, self._pool, function, *args)

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        if self._trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):
                pass  # it is the trigger running now
            self._trigger = None

    def load(self) -> Deferred[StoredState]:
        """Open (create or migrate) the file and read it."""
        return self._run(self._open_and_load)

    def commit(self, batch: Batch) -> Deferred[None]:
        """Apply ``batch`` in one transaction on the worker thread."""
        return self._run(self._apply, batch)

    def close(self) -> Deferred[None]:
        """Close the connection, then stop the worker thread."""
        if self._pool is None:
            from twisted.internet.defer import succeed

            return succeed(None)
        d = self._run(self._close)

        def stop(result: Any) -> Any:
            self._stop_pool()
            return result

        return d.addBoth(stop)

    # -- on the worker thread -------------------------------------------------------------------

    def _error(self, problem: str) -> StoreError:
        return StoreError(f"store {self.path}: {problem}")

    def _open_and_load(self) -> StoredState:
        try:
            return self._load(self._open())
        except StoreError:
            self._close()
            raise
        except sqlite3.DatabaseError as error:
            self._close()
            raise self._error(f"corrupt or not an SQLite database ({error})") from None
        except BadRecord as error:
            self._close()
            raise self._error(f"corrupt record: {error}") from None

    def _open(self) -> sqlite3.Connection:
        path = self.path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise self._error(f"directory {directory} does not exist")
        if os.path.isdir(path):
            raise self._error("is a directory")
        try:
            db = self._db = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as error:
            raise self._error(f"cannot open ({error})") from None
        try:
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as error:
            raise self._error(f"not an SQLite database ({error})") from None
        check = db.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            problems = "; ".join(str(row[0]) for row in check[:3])
            raise self._error(f"corrupt SQLite database ({problems})")
        version = 0
        if tables:
            if "meta" not in tables:
                raise self._error("not a twisted_mqtt store: it holds other tables ("
                                  + ", ".join(sorted(tables)[:5]) + ")")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            version = stored_schema_version(meta.get("application"), meta.get("schema_version"),
                                            "meta table", "its meta table", "another file",
                                            self._error)
            missing = [t for t in TABLES if t not in tables]
            if version == SCHEMA_VERSION and missing:
                raise self._error("corrupt store: tables missing (" + ", ".join(missing) + ")")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise self._error(f"cannot use WAL mode (journal mode is {mode})")
        db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        self._migrate(db, version)
        return db

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        """Apply each migration above ``version``, each in its own transaction."""
        if version == 0:
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("INSERT INTO meta VALUES ('application', ?), ('schema_version', '0')",
                       (APPLICATION,))
            db.execute("COMMIT")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[target](db)
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                           (str(target),))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _load(self, db: sqlite3.Connection) -> StoredState:
        subscriptions: Dict[str, List[StoredSubscription]] = {}
        for row in db.execute("SELECT client_id, topic_filter, qos, no_local, "
                              "retain_as_published, retain_handling, sub_id "
                              "FROM subscriptions ORDER BY client_id, topic_filter"):
            client_id, topic_filter, qos, no_local, rap, handling, sub_id = row
            subscriptions.setdefault(client_id, []).append(StoredSubscription(
                Subscription(topic_filter, qos, bool(no_local), bool(rap), handling), sub_id))
        deliveries: Dict[str, List[StoredDelivery]] = {}
        for row in db.execute("SELECT id, client_id, packet_id, state, qos, retain, sub_ids, "
                              "topic, payload, message_qos, message_retain, properties, "
                              "expires_at, origin FROM deliveries ORDER BY id"):
            (key, client_id, packet_id, state, qos, retain, sub_ids, topic, payload, mqos,
             mretain, props, expires_at, origin) = row
            message = StoredMessage(topic, bytes(payload), mqos, bool(mretain),
                                    unpack_properties(props), expires_at, origin)
            deliveries.setdefault(client_id, []).append(StoredDelivery(
                key, client_id, message, qos, bool(retain),
                tuple(int(i) for i in sub_ids.split(",") if i), packet_id, state))
        inbound: Dict[str, List[int]] = {}
        for client_id, packet_id in db.execute(
                "SELECT client_id, packet_id FROM inbound_qos2 ORDER BY client_id, packet_id"):
            inbound.setdefault(client_id, []).append(packet_id)
        sessions = []
        for row in db.execute("SELECT client_id, expiry_interval, protocol_level, "
                              "disconnected_at, will, next_id, username FROM sessions "
                              "ORDER BY client_id"):
            client_id, expiry, level, disconnected_at, will, next_id, username = row
            head = SessionHead(client_id, expiry, level, disconnected_at,
                               unpack_will(None if will is None else bytes(will)), next_id,
                               username)
            sessions.append(StoredSession(head, tuple(subscriptions.get(client_id, ())),
                                          tuple(deliveries.get(client_id, ())),
                                          tuple(inbound.get(client_id, ()))))
        retained = tuple(
            StoredMessage(topic, bytes(payload), qos, True, unpack_properties(props),
                          expires_at, origin)
            for topic, payload, qos, props, expires_at, origin in db.execute(
                "SELECT topic, payload, qos, properties, expires_at, origin FROM retained "
                "ORDER BY topic"))
        counters: Optional[Dict[str, Any]] = None
        rows = db.execute("SELECT name, value FROM counters").fetchall()
        if rows:
            counters = {}
            for name, text in rows:
                try:
                    counters[name] = json.loads(text)
                except ValueError:
                    raise BadRecord(f"bad counter {name}") from None
        return StoredState(tuple(sessions), retained, counters)

    def _apply(self, batch: Batch) -> None:
        db = self._db
        if db is None:
            raise self._error("not open")
        db.execute("BEGIN IMMEDIATE")
        try:
            self._write(db, batch)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _write(self, db: sqlite3.Connection, batch: Batch) -> None:
        if batch.cleared:
            cleared = [(client_id,) for client_id in batch.cleared]
            for table in ("sessions", "subscriptions", "deliveries", "inbound_qos2"):
                db.executemany(f"DELETE FROM {table} WHERE client_id = ?", cleared)
        if batch.sessions:
            db.executemany(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(h.client_id, h.expiry_interval, h.protocol_level, h.disconnected_at,
                  pack_will(h.will), h.next_id, h.username) for h in batch.sessions.values()])
        if batch.subscriptions:
            written: List[Tuple[Any, ...]] = []
            removed: List[Tuple[str, str]] = []
            for (client_id, topic_filter), stored in batch.subscriptions.items():
                if stored is None:
                    removed.append((client_id, topic_filter))
                else:
                    s = stored.subscription
                    written.append((client_id, topic_filter, s.qos, int(s.no_local),
                                    int(s.retain_as_published), s.retain_handling,
                                    stored.sub_id))
            db.executemany("DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?",
                           removed)
            db.executemany("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?, ?, ?)",
                           written)
        if batch.deleted:
            db.executemany("DELETE FROM deliveries WHERE id = ?",
                           [(key,) for key in batch.deleted])
        if batch.deliveries:
            props: Dict[int, Optional[bytes]] = {}
            rows = []
            for d in batch.deliveries.values():
                m = d.message
                packed = props.get(id(m))
                if packed is None and id(m) not in props:
                    packed = props[id(m)] = pack_properties(m.properties)
                rows.append((d.key, d.client_id, d.packet_id, d.state, d.qos, int(d.retain),
                             ",".join(map(str, d.sub_ids)), m.topic, m.payload, m.qos,
                             int(m.retain), packed, m.expires_at, m.origin))
            db.executemany("INSERT OR REPLACE INTO deliveries VALUES "
                           "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if batch.moves:
            db.executemany("UPDATE deliveries SET packet_id = ?, state = ? WHERE id = ?",
                           [(packet_id, state, key)
                            for key, (_, packet_id, state) in batch.moves.items()])
        if batch.inbound:
            added = [k for k, received in batch.inbound.items() if received]
            released = [k for k, received in batch.inbound.items() if not received]
            db.executemany("DELETE FROM inbound_qos2 WHERE client_id = ? AND packet_id = ?",
                           released)
            db.executemany("INSERT OR IGNORE INTO inbound_qos2 VALUES (?, ?)", added)
        if batch.retained:
            db.executemany("DELETE FROM retained WHERE topic = ?",
                           [(t,) for t, m in batch.retained.items() if m is None])
            db.executemany("INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?, ?)",
                           [(m.topic, m.payload, m.qos, pack_properties(m.properties),
                             m.expires_at, m.origin)
                            for m in batch.retained.values() if m is not None])
        if batch.sys_info is not None:
            db.execute("DELETE FROM counters")
            db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?)",
                           [(name, json.dumps(v)) for name, v in batch.sys_info.items()])

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
