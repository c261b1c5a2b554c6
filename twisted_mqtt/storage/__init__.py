"""Persistence: what a store keeps of the broker's state, and the interface of store back ends.

The broker keeps its state in memory; a ``Recorder`` (``twisted_mqtt.storage.recorder``) observes
the broker's events and writes the changes behind it, one batch (one transaction) per reactor
turn, to an ``IStore`` back end: ``MemoryStore`` (tests), ``SQLiteStore`` (standard library,
WAL mode, on one worker thread) or ``RedisStore`` (txredisapi, MULTI/EXEC).  At start-up the
store is read once and ``restore`` rebuilds the broker's sessions and retained messages.

Only persistent sessions (session expiry interval above 0) are stored; docs/storage.md says
what survives a restart.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Set, Tuple

from zope.interface import Attribute, Interface

from twisted_mqtt._value import value
from twisted_mqtt.bans import Ban
from twisted_mqtt.packets import Subscription, Will
from twisted_mqtt.properties import NO_PROPERTIES, Properties

__all__ = [
    "APPLICATION",
    "NEVER",
    "SCHEMA_VERSION",
    "BadRow",
    "Batch",
    "IStore",
    "SessionHead",
    "StoreError",
    "StoredDelivery",
    "StoredMessage",
    "StoredSession",
    "StoredState",
    "StoredSubscription",
    "open_store",
    "parse_store",
    "stored_schema_version",
]

NEVER = 0xFFFFFFFF
"""A session expiry interval meaning the session never expires."""

SCHEMA_VERSION = 1
"""The version of the stored layout this broker writes (and migrates older stores to)."""

APPLICATION = "twisted_mqtt"
"""What a store's meta record names as the application that wrote it."""


class StoreError(Exception):
    """A store cannot be used: the message names the store (its file or URL) and the problem.

    The broker refuses to start on it rather than starting empty."""


def stored_schema_version(application: Optional[str], version: Optional[str], meta: str,
                          whose: str, elsewhere: str,
                          error: Callable[[str], StoreError]) -> int:
    """The schema version in a store's meta record (its ``application`` and ``version``
    fields), checked: ``error(problem)`` is raised if the record is another application's
    (``whose``: how to name the record), has no version (``meta``: what kind of record it is),
    or has one newer than this broker's (``elsewhere``: the other place to use instead)."""
    if application != APPLICATION:
        raise error(f"not a twisted_mqtt store: {whose} is another application's")
    try:
        number = int(version or "")
    except ValueError:
        raise error(f"corrupt {meta}: no schema version") from None
    if number > SCHEMA_VERSION:
        raise error(f"schema version {number} is newer than this broker's ({SCHEMA_VERSION}); "
                    f"run a newer twisted_mqtt or use {elsewhere}")
    return number


@value
class StoredMessage:
    """An application message as stored: a retained message, or the message of a delivery."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = NO_PROPERTIES
    expires_at: Optional[float] = None
    """When the message expires, on the broker's clock (seconds since the epoch), or None."""
    origin: Optional[str] = None
    """The client id that published it, or None."""


@value
class StoredDelivery:
    """A QoS 1/2 (or queued QoS 0) message on its way to one session."""

    key: int
    """The record's identifier; the session's queue is in the order of these keys."""
    client_id: str
    message: StoredMessage
    qos: int
    retain: bool
    sub_ids: Tuple[int, ...] = ()
    packet_id: Optional[int] = None
    """The packet identifier it was sent under (in flight), or None (queued, not yet sent)."""
    state: int = 0
    """In flight: 0 PUBLISH sent, awaiting PUBACK/PUBREC; 1 PUBREL sent, awaiting PUBCOMP."""


@value
class StoredSubscription:
    """One subscription of a session, with its subscription identifier (MQTT 5)."""

    subscription: Subscription
    sub_id: Optional[int] = None


@value
class SessionHead:
    """A session's own fields, written whenever they change."""

    client_id: str
    expiry_interval: int
    protocol_level: int
    disconnected_at: Optional[float] = None
    """When its last connection ended (broker clock), or None if it was connected then."""
    will: Optional[Will] = None
    """The Will Message not yet published: a delayed will once disconnected, or the will of
    the connection it had."""
    next_id: int = 1
    username: Optional[str] = None
    """The user name its client last connected with (what username-based ACLs decide on
    while the client is away)."""


@value
class StoredSession:
    """A persistent session as read from a store."""

    head: SessionHead
    subscriptions: Tuple[StoredSubscription, ...] = ()
    deliveries: Tuple[StoredDelivery, ...] = ()
    """Queued (``packet_id`` None) and in-flight deliveries, in the order of their keys."""
    inbound_qos2: Tuple[int, ...] = ()
    """Packet identifiers of QoS 2 messages received from the client and not yet released."""

    @property
    def client_id(self) -> str:
        """The session's client identifier."""
        return self.head.client_id

    @property
    def expires_at(self) -> Optional[float]:
        """When the session expires if its client stays away: None if it was connected (its
        expiry starts when the broker restarts) or never expires."""
        head = self.head
        if head.disconnected_at is None or head.expiry_interval == NEVER:
            return None
        return head.disconnected_at + head.expiry_interval

    @property
    def will_at(self) -> Optional[float]:
        """When its delayed will is due, if it has one and was disconnected."""
        head = self.head
        if head.will is None or head.disconnected_at is None:
            return None
        return head.disconnected_at + will_wait(head.will, head.expiry_interval)


def will_wait(will: Will, expiry_interval: int) -> int:
    """Seconds from the end of a connection to the publication of its will: the will delay,
    or the session's end if that comes first."""
    delay = will.properties.will_delay_interval or 0
    return delay if expiry_interval == NEVER else min(delay, expiry_interval)


@value
class BadRow:
    """A stored row (record) that holds data no broker writes, found while loading: what it
    is, where, and which field is wrong."""

    table: str
    """The table it is in (the Redis store names its records after the SQLite tables)."""
    owner: str
    """Whose row it is, e.g. ``client 'c1'``, ``id 3, client 'c1'``, ``topic 'a/b'``."""
    field: str
    problem: str
    client_id: Optional[str] = None
    """The session the row belongs to (not restored if the row is skipped), if its client
    id could be read."""
    topic: Optional[str] = None
    """The retained message's topic, if the row is a retained message whose topic could be
    read."""

    def __str__(self) -> str:
        return f"bad row in table {self.table} ({self.owner}): field {self.field}: {self.problem}"


@value
class StoredState:
    """Everything a store holds, as read at start-up."""

    sessions: Tuple[StoredSession, ...] = ()
    retained: Tuple[StoredMessage, ...] = ()
    sys_info: Optional[Dict[str, Any]] = None
    """The broker's counters (``twisted_mqtt.stats.Stats`` fields) when last saved."""
    bad_rows: Tuple[BadRow, ...] = ()
    """Rows left out because they hold bad data (``twisted_mqtt.storage._rows``).  The
    sessions they belong to are listed without them, incomplete: the ``Recorder`` refuses the
    state, or (skipping bad rows) restores neither those sessions nor those retained
    messages."""
    bans: Tuple[Ban, ...] = ()
    """The bans in force when last saved (``twisted_mqtt.bans``); a store written by an
    older broker has none."""


class Batch:
    """The changes of one or more reactor turns, applied by a store in one transaction, in
    this order: ``cleared``, ``sessions``, ``subscriptions``, ``deleted``, ``deliveries``,
    ``moves``, ``inbound``, ``retained``, ``sys_info``, ``bans``."""

    __slots__ = ("cleared", "sessions", "subscriptions", "deliveries", "moves", "deleted",
                 "inbound", "retained", "sys_info", "bans")

    def __init__(self) -> None:
        self.cleared: Set[str] = set()
        """Client ids whose stored session, with everything in it, is deleted first."""
        self.sessions: Dict[str, SessionHead] = {}
        """Session heads to write (insert or replace)."""
        self.subscriptions: Dict[Tuple[str, str], Optional[StoredSubscription]] = {}
        """(client id, topic filter) -> the subscription to write, or None to delete it."""
        self.deliveries: Dict[int, StoredDelivery] = {}
        """New delivery records, by key."""
        self.moves: Dict[int, Tuple[str, Optional[int], int]] = {}
        """Stored deliveries whose packet id or state changed: key -> (client id, packet id,
        state)."""
        self.deleted: Dict[int, str] = {}
        """Stored deliveries to delete: key -> client id."""
        self.inbound: Dict[Tuple[str, int], bool] = {}
        """(client id, packet id) -> True to add an inbound QoS 2 packet id, False to remove."""
        self.retained: Dict[str, Optional[StoredMessage]] = {}
        """Topic -> the retained message to write, or None to delete it."""
        self.sys_info: Optional[Dict[str, Any]] = None
        """The counters to save, if they are to be saved."""
        self.bans: Optional[Tuple[Ban, ...]] = None
        """If not None, every ban in force: the stored bans are replaced by these."""

    def __bool__(self) -> bool:
        return bool(self.cleared or self.sessions or self.subscriptions or self.deliveries
                    or self.moves or self.deleted or self.inbound or self.retained
                    or self.sys_info is not None or self.bans is not None)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(getattr(self, name))}" for name in self.__slots__
                          if name not in ("sys_info", "bans") and getattr(self, name))
        return (f"<Batch {sizes}{' sys_info' if self.sys_info is not None else ''}"
                f"{' bans' if self.bans is not None else ''}>")


class IStore(Interface):
    """A store back end: read once at start-up, then written one batch at a time.

    Calls never overlap: ``commit`` is not called again before the Deferred of the previous
    call fired, and ``close`` comes last."""

    location = Attribute("What the store is, for messages: its file path or URL.")

    def load() -> Any:
        """Open the store (creating or migrating it) and read it: a Deferred firing with a
        ``StoredState``, or failing with ``StoreError``."""

    def commit(batch: Batch) -> Any:
        """Apply ``batch`` in one transaction: a Deferred firing (with None) once it is
        committed."""

    def close() -> Any:
        """Release the store (connections, threads): a Deferred."""


def parse_store(spec: str) -> Tuple[str, str]:
    """Check a ``--store`` value and return (kind, location): ("memory", ""),
    ("sqlite", PATH) or ("redis", URL); raise ValueError saying what is wrong."""
    if spec == "memory":
        return "memory", ""
    if spec.startswith("sqlite:"):
        path = spec[len("sqlite:"):]
        if not path:
            raise ValueError("sqlite: needs a file path, e.g. sqlite:/var/lib/mqtt/broker.db")
        return "sqlite", path
    if spec.startswith("redis://"):
        from twisted_mqtt.storage.redis import parse_redis_url

        parse_redis_url(spec)
        try:
            import txredisapi  # noqa: F401
        except ImportError:
            raise ValueError("the Redis store needs txredisapi: "
                             "pip install 'twisted-mqtt-broker[redis]'") from None
        return "redis", spec
    raise ValueError(f"unknown store {spec!r}: use memory, sqlite:PATH or "
                     "redis://HOST:PORT/DB")


def open_store(spec: str, reactor: Any = None, durable: bool = False) -> Any:
    """The ``IStore`` for a ``--store`` value (see ``parse_store``); nothing is opened until
    its ``load`` is called.  ``durable`` asks SQLite to sync every commit to disk."""
    kind, location = parse_store(spec)
    if kind == "memory":
        from twisted_mqtt.storage.memory import MemoryStore

        return MemoryStore()
    if kind == "sqlite":
        from twisted_mqtt.storage.sqlite import SQLiteStore

        return SQLiteStore(location, reactor, durable)
    from twisted_mqtt.storage.redis import RedisStore

    return RedisStore(location, reactor)
