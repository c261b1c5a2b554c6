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
import struct
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from twisted_mqtt.storage import (
    APPLICATION,
    SCHEMA_VERSION,
    Batch,
    IStore,
    SessionHead,
    StoredDelivery,
    StoredState,
    StoredSubscription,
    StoreError,
    _rows,
    stored_schema_version,
)
from twisted_mqtt.storage._pack import pack_properties, pack_will, unpack_will

log = Logger()


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


BANS_TABLE = """
    CREATE TABLE IF NOT EXISTS bans (
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        fields TEXT NOT NULL,
        PRIMARY KEY (kind, value)
    ) WITHOUT ROWID"""
"""Bans (one JSON object each): a table a store of schema version 1 gains when opened, which
a broker that does not know it ignores."""


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements inside the current transaction (``executescript``
    would commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _delivery(key: Any, client_id: Any, packet_id: Any, state: Any, qos: Any, retain: Any,
              sub_ids: Any, topic: Any, payload: Any, mqos: Any, mretain: Any, props: Any,
              expires_at: Any, origin: Any) -> StoredDelivery:
    """A row of ``deliveries``, checked."""
    message = _rows.message(topic, payload, mqos, mretain, props, expires_at, origin,
                            "message_")
    return _rows.delivery(key, client_id, message, qos, retain, sub_ids, packet_id, state)


def _head(client_id: Any, expiry: Any, level: Any, disconnected_at: Any, will: Any,
          next_id: Any, username: Any) -> SessionHead:
    """A row of ``sessions``, checked."""
    return _rows.head(client_id, expiry, level, disconnected_at, unpack_will(will), next_id,
                      username)


def _counter(name: Any, text: Any) -> Tuple[str, Any]:
    """A row of ``counters``, checked."""
    try:
        figure = json.loads(_rows.text("value", text))
    except ValueError:
        raise _rows.BadField("value", f"{_rows.show(text)} is not JSON") from None
    return _rows.counter(name, figure)


MIGRATIONS: Dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _create_v1,
}
"""Schema version -> the function that brings a file at the version below it to this one
(version 0 is an empty file)."""

TABLES = ("meta", "sessions", "subscriptions", "deliveries", "inbound_qos2", "retained",
          "counters")


WAL_MAGIC = (0x377F0682, 0x377F0683)
"""The first word of a write-ahead log: checksums in little-endian, or big-endian, words."""


def _wal_checksum(data: bytes, endian: str, s0: int, s1: int) -> Tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes) continuing from (s0, s1)."""
    words = struct.unpack(f"{endian}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def wal_damage(wal: bytes) -> Optional[str]:
    """What is wrong with the write-ahead log ``wal``, if it is damaged rather than torn.

    SQLite reads a log up to its first frame that fails its checksum or is not of this log
    (other salts), and ignores the rest, as it must after a crash that tore the last
    transaction, or when the rest is an earlier log's; so a damaged log silently loses the
    transactions from the damage on.  Such a frame followed by a valid frame of this log, or
    a header that fails its own checksum, is damage, not a torn end."""
    if len(wal) < 32:
        return None if not wal else f"{len(wal)} bytes, too short for its header"
    magic, _, page_size, _, salt1, salt2, sum1, sum2 = struct.unpack(">8I", wal[:32])
    if magic not in WAL_MAGIC or page_size & (page_size - 1) or not 512 <= page_size <= 65536:
        return "its header is not a write-ahead log header"
    endian = ">" if magic & 1 else "<"
    if _wal_checksum(wal[:24], endian, 0, 0) != (sum1, sum2):
        return "its header fails its checksum"
    frame = 24 + page_size
    previous = (sum1, sum2)
    bad: Optional[int] = None
    for number, offset in enumerate(range(32, len(wal) - frame + 1, frame), 1):
        header = wal[offset:offset + 24]
        _, _, frame_salt1, frame_salt2, check1, check2 = struct.unpack(">6I", header)
        start = _wal_checksum(header[:8], endian, *previous)
        if (frame_salt1, frame_salt2) != (salt1, salt2) or _wal_checksum(
                wal[offset + 24:offset + frame], endian, *start) != (check1, check2):
            bad = number if bad is None else bad
        elif bad is not None:
            return f"frame {bad} is damaged but frame {number} after it is valid"
        previous = (check1, check2)
    return None


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
        self.created: Optional[str] = None
        """What the file was if ``load`` made a new store in it: a new file, an empty file..."""
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
        """Open (create or migrate) the file and read it; say so if it was made a new store."""
        return self._run(self._open_and_load).addCallback(self._loaded)

    def _loaded(self, state: StoredState) -> StoredState:
        if self.created is not None:
            log.info("store {path}: {created}, initialised as a new store", path=self.path,
                     created=self.created)
        return state

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

    def _open(self) -> sqlite3.Connection:
        path = self.path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise self._error(f"directory {directory} does not exist")
        if os.path.isdir(path):
            raise self._error("is a directory")
        size = os.path.getsize(path) if os.path.exists(path) else None
        wal = path + "-wal"
        if os.path.exists(wal):
            with open(wal, "rb") as log_file:
                damage = wal_damage(log_file.read())
            if damage is not None:
                raise self._error(f"damaged write-ahead log {wal} ({damage}): SQLite would drop "
                                  "the transactions from there on; move it away to open the "
                                  "database without them")
        try:
            db = self._db = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as error:
            raise self._error(f"cannot open ({error})") from None
        db.text_factory = _rows.decode_text  # a row of bad text is one bad row, not an error
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
        if not tables:
            self.created = "a new file" if size is None else (
                "an empty file (0 bytes)" if size == 0 else "a database without tables")
        self._migrate(db, version, "meta" in tables)
        db.execute(BANS_TABLE)
        return db

    def _migrate(self, db: sqlite3.Connection, version: int, has_meta: bool) -> None:
        """Apply each migration above ``version``, each in its own transaction (the meta table
        first if there is none: a store whose creation was interrupted has one at 0)."""
        if not has_meta:
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
        """Read every row, each checked (``_rows``); bad rows are left out and listed."""
        rows = _rows.Rows()
        read = rows.read
        subscriptions: Dict[Any, List[StoredSubscription]] = {}
        for row in db.execute("SELECT client_id, topic_filter, qos, no_local, "
                              "retain_as_published, retain_handling, sub_id "
                              "FROM subscriptions ORDER BY client_id, topic_filter"):
            client_id, topic_filter = row[0], row[1]
            subscription = read("subscriptions", f"{_rows.owner(client_id)}, filter "
                                f"{_rows.show(topic_filter)}", _rows.subscription, *row,
                                client_id=client_id)
            if subscription is not None:
                subscriptions.setdefault(client_id, []).append(subscription)
        deliveries: Dict[Any, List[StoredDelivery]] = {}
        for row in db.execute("SELECT id, client_id, packet_id, state, qos, retain, sub_ids, "
                              "topic, payload, message_qos, message_retain, properties, "
                              "expires_at, origin FROM deliveries ORDER BY id"):
            delivery = read("deliveries", _rows.owner(row[1], row[0]), _delivery, *row,
                            client_id=row[1])
            if delivery is not None:
                deliveries.setdefault(delivery.client_id, []).append(delivery)
        inbound: Dict[Any, List[int]] = {}
        for client_id, packet_id in db.execute(
                "SELECT client_id, packet_id FROM inbound_qos2 ORDER BY client_id, packet_id"):
            if read("inbound_qos2", _rows.owner(client_id), _rows.packet_id, "packet_id",
                    packet_id, client_id=client_id) is not None:
                inbound.setdefault(client_id, []).append(packet_id)
        sessions = []
        for row in db.execute("SELECT client_id, expiry_interval, protocol_level, "
                              "disconnected_at, will, next_id, username FROM sessions "
                              "ORDER BY client_id"):
            head = read("sessions", _rows.owner(row[0]), _head, *row, client_id=row[0])
            if head is not None:
                client_id = head.client_id
                sessions.append(rows.session(head, subscriptions.get(client_id, ()),
                                             deliveries.get(client_id, ()),
                                             inbound.get(client_id, ())))
        retained = []
        for row in db.execute("SELECT topic, payload, qos, properties, expires_at, origin "
                              "FROM retained ORDER BY topic"):
            topic, payload, qos, props, expires_at, origin = row
            message = read("retained", f"topic {_rows.show(topic)}", _rows.message, topic,
                           payload, qos, True, props, expires_at, origin, topic=topic)
            if message is not None:
                retained.append(message)
        counters: Optional[Dict[str, Any]] = None
        for name, text in db.execute("SELECT name, value FROM counters"):
            found = read("counters", f"counter {_rows.show(name)}", _counter, name, text)
            if found is not None:
                counters = counters or {}
                counters[found[0]] = found[1]
        bans = []
        for kind, text, fields in db.execute("SELECT kind, value, fields FROM bans "
                                             "ORDER BY kind, value"):
            ban = read("bans", f"ban {_rows.show(kind)} {_rows.show(text)}", _rows.ban, fields)
            if ban is not None:
                bans.append(ban)
        return StoredState(tuple(sessions), tuple(retained), counters, tuple(rows.bad),
                           tuple(bans))

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
        if batch.bans is not None:
            db.execute("DELETE FROM bans")
            db.executemany("INSERT INTO bans VALUES (?, ?, ?)",
                           [(b.kind, b.value, json.dumps(b.as_dict())) for b in batch.bans])

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
