"""``RedisStore``: the networked store (``--store redis://HOST:PORT/DB``), through txredisapi.

A batch is one MULTI/EXEC transaction, sent as one pipeline.  Every key starts with a prefix
(``?prefix=`` in the URL, by default ``twisted_mqtt:``), so that several brokers, or other
applications, can share a Redis database:

==========================  ================================================================
``PREFIXmeta``              hash: ``application``, ``schema_version``
``PREFIXsessions``          hash: client id -> session head
``PREFIXsubs:CLIENT``       hash: topic filter -> subscription options and identifier
``PREFIXmsgs:CLIENT``       hash: delivery key -> message, QoS, retain flag, subscription ids
``PREFIXflight:CLIENT``     hash: delivery key -> ``packet_id,state`` of those in flight
``PREFIXqos2:CLIENT``       set: inbound QoS 2 packet ids not yet released
``PREFIXretained``          hash: topic -> retained message
``PREFIXcounters``          string: the broker's counters, JSON
==========================  ================================================================

How much survives the loss of the Redis server itself is Redis's configuration (``appendonly
yes`` and ``appendfsync always`` for every commit); docs/storage.md says more.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from zope.interface import implementer

from twisted_mqtt.storage import (
    APPLICATION,
    SCHEMA_VERSION,
    Batch,
    IStore,
    StoredDelivery,
    StoredMessage,
    StoredSession,
    StoredState,
    StoreError,
    _rows,
    stored_schema_version,
)
from twisted_mqtt.storage._pack import (
    pack_delivery,
    pack_head,
    pack_message,
    pack_subscription,
    unpack_delivery,
    unpack_head,
    unpack_message,
    unpack_subscription,
)

DEFAULT_PREFIX = "twisted_mqtt:"
CONNECT_TIMEOUT = 10.0


def parse_redis_url(url: str) -> Tuple[str, int, int, Optional[str], str]:
    """(host, port, database, password, key prefix) of ``redis://[:PASSWORD@]HOST[:PORT][/DB]
    [?prefix=PREFIX]``; raise ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"not a redis:// URL: {url!r}")
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"bad database number {path!r} in {url!r}: use redis://HOST:PORT/DB")
    query = parse_qs(parts.query)
    unknown = set(query) - {"prefix"}
    if unknown:
        raise ValueError(f"unknown parameter {sorted(unknown)[0]!r} in {url!r}")
    prefix = query.get("prefix", [DEFAULT_PREFIX])[-1]
    password = unquote(parts.password) if parts.password else None
    return host, port, int(path or 0), password, prefix


def _glob_escape(text: str) -> str:
    """``text`` as a Redis glob pattern that matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _text(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def _number(raw: Any) -> Any:
    """A decimal number stored as text, as an int; other text as it is (for ``_rows`` to
    report), sorted after the numbers."""
    text = _rows.decode_text(raw) if isinstance(raw, bytes) else raw
    return int(text) if isinstance(text, str) and text.isdigit() and text.isascii() else text


def _in_order(raw: Any) -> Tuple[int, int, bytes]:
    """A sort key of delivery keys and packet ids: numbers in order, then anything else."""
    number = _number(raw)
    return (0, number, b"") if isinstance(number, int) else (1, 0, bytes(raw))


def _delivery(client_id: str, field: Any, raw: bytes, flying: Any) -> StoredDelivery:
    """A delivery from its record in ``msgs`` and, if in flight, ``flight``."""
    message, qos, retain, sub_ids = unpack_delivery(raw)
    packet_id: Any = None
    state: Any = 0
    if flying is not None:
        parts = str(_rows.decode_text(flying)).split(",")
        if len(parts) != 2:
            raise _rows.BadField("packet_id", f"{_rows.show(flying)} is not PACKET_ID,STATE")
        packet_id, state = (_number(part) for part in parts)
    return _rows.delivery(_number(field), client_id, message, qos, retain, sub_ids, packet_id,
                          state)


def _retained(topic: Any, raw: bytes) -> StoredMessage:
    """A retained message, stored under its topic."""
    message = unpack_message(raw)
    if message.topic != topic:
        raise _rows.BadField("topic", f"{_rows.show(message.topic)} is stored under "
                             f"{_rows.show(topic)}")
    return message


def _counters(raw: bytes) -> Dict[str, Any]:
    """The saved counters."""
    try:
        figures = json.loads(_text(raw))
    except ValueError:
        raise _rows.BadField("value", f"{_rows.show(raw)} is not JSON") from None
    if not isinstance(figures, dict):
        raise _rows.BadField("value", f"{_rows.show(figures)} is not a JSON object")
    return dict(_rows.counter(name, figure) for name, figure in figures.items())


def read_session(rows: _rows.Rows, client_id: str, head_raw: bytes, subs: Dict[bytes, bytes],
                 msgs: Dict[bytes, bytes], flight: Dict[bytes, bytes],
                 qos2: Any) -> Optional[StoredSession]:
    """A session from its records (its head, and the ``subs``, ``msgs``, ``flight`` hashes and
    ``qos2`` set as Redis returns them), or None if its head is bad; bad records are noted in
    ``rows`` and left out."""
    head = rows.read("sessions", _rows.owner(client_id), unpack_head, client_id, head_raw,
                     client_id=client_id)
    if head is None:
        return None
    subscriptions = []
    for raw in sorted(subs):
        topic_filter = _rows.decode_text(raw)
        subscription = rows.read("subscriptions", f"{_rows.owner(client_id)}, filter "
                                 f"{_rows.show(topic_filter)}", unpack_subscription,
                                 client_id, topic_filter, subs[raw],
                                 client_id=client_id)
        if subscription is not None:
            subscriptions.append(subscription)
    deliveries: List[StoredDelivery] = []
    for field in sorted(msgs, key=_in_order):
        delivery = rows.read("deliveries", _rows.owner(client_id, _text(field)),
                             _delivery, client_id, field, msgs[field],
                             flight.get(field), client_id=client_id)
        if delivery is not None:
            deliveries.append(delivery)
    inbound = []
    for raw in sorted(qos2 or (), key=_in_order):
        packet_id = rows.read("inbound_qos2", _rows.owner(client_id), _rows.packet_id,
                              "packet_id", _number(raw), client_id=client_id)
        if packet_id is not None:
            inbound.append(packet_id)
    return rows.session(head, subscriptions, deliveries, inbound)


@implementer(IStore)
class RedisStore:
    """Sessions, messages and retained messages in a Redis database."""

    def __init__(self, url: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.url = url
        self.reactor = reactor
        self.host, self.port, self.db, self._password, self.prefix = parse_redis_url(url)
        self.location = url.split("@")[-1] if "@" in url else url
        if "@" in url:
            self.location = "redis://" + self.location
        self._redis: Any = None

    def _key(self, name: str, client_id: Optional[str] = None) -> str:
        return self.prefix + name if client_id is None else f"{self.prefix}{name}:{client_id}"

    def _error(self, problem: str) -> StoreError:
        return StoreError(f"store {self.location}: {problem}")

    # -- loading --------------------------------------------------------------------------------

    def load(self) -> Deferred[StoredState]:
        """Connect, check or create the meta hash, and read everything."""
        return self._load()

    @inlineCallbacks
    def _load(self) -> Any:
        import txredisapi

        self._redis = txredisapi.lazyConnection(
            self.host, self.port, self.db, reconnect=True, charset=None,
            password=self._password, connectTimeout=CONNECT_TIMEOUT, convertNumbers=False)
        connected: Deferred[Any] = Deferred()
        self._redis._connected.chainDeferred(connected)
        connected.addTimeout(CONNECT_TIMEOUT, self.reactor)
        try:
            yield connected
        except Exception as error:
            yield self._disconnect()
            raise self._error(f"cannot connect to Redis ({error or type(error).__name__})"
                              ) from None
        try:
            state = yield self._read()
        except StoreError:
            yield self._disconnect()
            raise
        except Exception as error:
            yield self._disconnect()
            raise self._error(f"cannot read ({error})") from None
        return state

    @inlineCallbacks
    def _read(self) -> Any:
        redis = self._redis
        meta = yield redis.hgetall(self._key("meta"))
        if not meta:
            pattern = _glob_escape(self.prefix) + "*"
            cursor, found = yield redis.scan(0, pattern, 1000)
            while not found and int(cursor) != 0:
                cursor, found = yield redis.scan(int(cursor), pattern, 1000)
            if found:
                raise self._error(f"not a twisted_mqtt store: keys with prefix {self.prefix!r} "
                                  f"exist (e.g. {_text(found[0])!r}) but no "
                                  f"{self._key('meta')!r}")
            yield redis.execute_command("HSET", self._key("meta"), "application", APPLICATION,
                                        "schema_version", str(SCHEMA_VERSION))
            return StoredState()
        stored_schema_version(meta.get(b"application", b"").decode("utf-8", "replace"),
                              meta.get(b"schema_version", b"").decode("utf-8", "replace"),
                              "meta hash", repr(self._key("meta")), "another database or prefix",
                              self._error)
        # (Versions below SCHEMA_VERSION would be migrated here; 1 is the first.)
        heads = yield redis.hgetall(self._key("sessions"))
        rows = _rows.Rows()
        client_ids = []
        for raw in sorted(heads):
            client_id = _rows.decode_text(raw)
            if rows.read("sessions", _rows.owner(client_id), _rows.text, "client_id",
                         client_id) is not None:
                client_ids.append(client_id)
        reads = []
        for client_id in client_ids:
            reads += [redis.hgetall(self._key("subs", client_id)),
                      redis.hgetall(self._key("msgs", client_id)),
                      redis.hgetall(self._key("flight", client_id)),
                      redis.smembers(self._key("qos2", client_id))]
        reads += [redis.hgetall(self._key("retained")), redis.get(self._key("counters")),
                  redis.hgetall(self._key("bans"))]
        results = yield gatherResults(reads, consumeErrors=True)
        sessions: List[StoredSession] = []
        for index, client_id in enumerate(client_ids):
            subs, msgs, flight, qos2 = results[4 * index:4 * index + 4]
            session = read_session(rows, client_id, heads[client_id.encode("utf-8")], subs,
                                   msgs, flight, qos2)
            if session is not None:
                sessions.append(session)
        retained_hash, counters, bans_hash = results[-3], results[-2], results[-1]
        retained = []
        for raw in sorted(retained_hash):
            topic = _rows.decode_text(raw)
            message = rows.read("retained", f"topic {_rows.show(topic)}", _retained, topic,
                                retained_hash[raw], topic=topic)
            if message is not None:
                retained.append(message)
        sys_info: Optional[Dict[str, Any]] = None
        if counters:
            sys_info = rows.read("counters", "all counters", _counters, counters)
        bans = []
        for raw in sorted(bans_hash or ()):
            ban = rows.read("bans", f"ban {_rows.show(_rows.decode_text(raw))}", _rows.ban,
                            bans_hash[raw])
            if ban is not None:
                bans.append(ban)
        return StoredState(tuple(sessions), tuple(retained), sys_info, tuple(rows.bad),
                           tuple(bans))

    # -- writing --------------------------------------------------------------------------------

    def commands(self, batch: Batch) -> List[Tuple[Any, ...]]:
        """The Redis commands that apply ``batch``: first the sessions cleared, then one HSET,
        HDEL, SADD or SREM per key with all of that key's fields (a batch never names one
        field twice, so their order does not matter)."""
        key = self._key
        out: List[Tuple[Any, ...]] = []
        if batch.cleared:
            names: List[Any] = []
            for client_id in batch.cleared:
                names += [key("subs", client_id), key("msgs", client_id),
                          key("flight", client_id), key("qos2", client_id)]
            out.append(("DEL", *names))
            out.append(("HDEL", key("sessions"), *batch.cleared))
        grouped: Dict[Tuple[str, str], List[Any]] = {}

        def add(command: str, name: str, *args: Any) -> None:
            found = grouped.get((command, name))
            if found is None:
                grouped[(command, name)] = list(args)
            else:
                found += args

        for head in batch.sessions.values():
            add("HSET", key("sessions"), head.client_id, pack_head(head))
        for (client_id, topic_filter), stored in batch.subscriptions.items():
            if stored is None:
                add("HDEL", key("subs", client_id), topic_filter)
            else:
                add("HSET", key("subs", client_id), topic_filter, pack_subscription(stored))
        for record_key, client_id in batch.deleted.items():
            add("HDEL", key("msgs", client_id), record_key)
            add("HDEL", key("flight", client_id), record_key)
        packed: Dict[Tuple[int, int, bool, Tuple[int, ...]], bytes] = {}
        for d in batch.deliveries.values():
            variant = (id(d.message), d.qos, d.retain, d.sub_ids)
            value = packed.get(variant)
            if value is None:
                value = packed[variant] = pack_delivery(d.message, d.qos, d.retain, d.sub_ids)
            add("HSET", key("msgs", d.client_id), d.key, value)
            if d.packet_id is not None:
                add("HSET", key("flight", d.client_id), d.key, f"{d.packet_id},{d.state}")
        for record_key, (client_id, packet_id, state) in batch.moves.items():
            if packet_id is None:
                add("HDEL", key("flight", client_id), record_key)
            else:
                add("HSET", key("flight", client_id), record_key, f"{packet_id},{state}")
        for (client_id, packet_id), received in batch.inbound.items():
            add("SADD" if received else "SREM", key("qos2", client_id), packet_id)
        for topic, message in batch.retained.items():
            if message is None:
                add("HDEL", key("retained"), topic)
            else:
                add("HSET", key("retained"), topic, pack_message(message))
        for (command, name), args in grouped.items():
            out.append((command, name, *args))
        if batch.sys_info is not None:
            out.append(("SET", key("counters"), json.dumps(batch.sys_info)))
        if batch.bans is not None:
            out.append(("DEL", key("bans")))
            if batch.bans:
                fields: List[Any] = []
                for ban in batch.bans:
                    fields += [f"{ban.kind}:{ban.value}", json.dumps(ban.as_dict())]
                out.append(("HSET", key("bans"), *fields))
        return out

    @inlineCallbacks
    def commit(self, batch: Batch) -> Any:
        """Apply ``batch`` in one MULTI/EXEC transaction, sent as one pipeline."""
        commands = self.commands(batch)
        if not commands:
            return None
        pipeline = yield self._redis.pipeline()
        pipeline.execute_command("MULTI")
        for command in commands:
            pipeline.execute_command(*command)
        pipeline.execute_command("EXEC")
        replies = yield pipeline.execute_pipeline()
        result = replies[-1]
        if not isinstance(result, list):
            raise self._error(f"transaction not applied: {result!r}")
        for reply in result:
            if isinstance(reply, Exception):
                raise self._error(f"command failed in transaction: {reply}")
        return None

    def close(self) -> Deferred[None]:
        """Disconnect."""
        return self._disconnect()

    def _disconnect(self) -> Deferred[None]:
        redis, self._redis = self._redis, None
        if redis is None:
            from twisted.internet.defer import succeed

            return succeed(None)
        d: Deferred[Any] = redis.disconnect()
        return d.addBoth(lambda _: None)
