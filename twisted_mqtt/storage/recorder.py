"""The ``Recorder`` hook: the broker's events turned into store batches, and ``restore``.

The recorder writes behind the broker's in-memory state.  Each event notes what changed (a
session, a subscription, a delivery's record); the first change of a reactor turn schedules a
flush with ``callLater(0)``, which turns the notes into one ``Batch`` read from the live state,
so that what happens within a turn coalesces (a delivery queued and acknowledged in the same
turn writes nothing).  One batch is committed at a time; changes made meanwhile wait for the
next one, which groups commits under load.

In durable mode the recorder is one of the broker's ``ack_barriers``: a QoS 1/2 PUBLISH is
acknowledged only once the batch holding everything recorded until then is committed.  It also
holds the output of a connection it just recorded a QoS 2 PUBLISH for (``hold_qos2``) until
that record is committed: a broker killed in between would otherwise deliver the message
again, under a new packet identifier, to a client that already has it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mqtt.hooks import Hook
from twisted_mqtt.interfaces import ClientInfo, IStoredState
from twisted_mqtt.packets import Will
from twisted_mqtt.session import Delivery, Message, Session
from twisted_mqtt.stats import Stats
from twisted_mqtt.storage import (
    NEVER,
    Batch,
    SessionHead,
    StoredDelivery,
    StoredMessage,
    StoredSession,
    StoredState,
    StoredSubscription,
    StoreError,
    will_wait,
)
from twisted_mqtt.storage._rows import show

log = Logger()

RETRY_FIRST = 0.5
RETRY_MAX = 30.0


def stored_message(message: Message) -> StoredMessage:
    """The record of a broker ``Message``."""
    return StoredMessage(message.topic, message.payload, message.qos, message.retain,
                         message.properties, message.expires_at, message.origin)


def live_message(stored: StoredMessage) -> Message:
    """A broker ``Message`` from its record."""
    return Message(stored.topic, stored.payload, stored.qos, stored.retain, stored.properties,
                   stored.expires_at, stored.origin)


def stats_snapshot(stats: Stats) -> Dict[str, Any]:
    """The broker's counters, by ``Stats`` field."""
    snapshot: Dict[str, Any] = {}
    for name in Stats.__slots__:
        figure = getattr(stats, name)
        snapshot[name] = list(figure) if isinstance(figure, list) else figure
    return snapshot


class Restored:
    """What ``restore`` did: the sessions it rebuilt and what it dropped as expired."""

    def __init__(self) -> None:
        self.sessions: Dict[str, float] = {}
        """Client id -> when its connection is taken to have ended (the restart for a session
        that was connected when the broker stopped)."""
        self.reconnected: Set[str] = set()
        """Sessions that were connected when the broker stopped."""
        self.dropped_sessions: List[str] = []
        """Sessions that expired while the broker was down."""
        self.dropped_deliveries: Dict[int, str] = {}
        """Expired messages: delivery key -> client id."""
        self.dropped_retained: List[str] = []
        """Topics whose retained message expired, or was a bad row."""
        self.bad_sessions: List[str] = []
        """Sessions not restored because a row of theirs was bad (skipped)."""
        self.due_wills: List[Tuple[ClientInfo, Will]] = []
        """Wills whose time came while the broker was down, to publish now, with the client
        that set them (whose authorisation they still need)."""
        self.deliveries = 0
        self.retained = 0
        self.max_key = 0


def restore_session(broker: Any, stored: StoredSession, now: float,
                    restored: Restored) -> Optional[Session]:
    """Rebuild one persistent session of ``broker`` from ``stored`` at ``now`` (see
    ``restore``), noting in ``restored`` what was rebuilt, dropped or fell due; None (and
    nothing rebuilt) if it expired or ``broker`` already has a session with its client id."""
    head = stored.head
    client_id = head.client_id
    owner = ClientInfo(client_id, head.username, protocol_level=head.protocol_level)
    for record in stored.deliveries:
        restored.max_key = max(restored.max_key, record.key)
    expiry = head.expiry_interval
    since = head.disconnected_at if head.disconnected_at is not None else now
    if expiry == 0 or (expiry != NEVER and since + expiry <= now) or (
            client_id in broker.sessions):
        if head.will is not None and client_id not in broker.sessions:
            restored.due_wills.append((owner, head.will))
        restored.dropped_sessions.append(client_id)
        return None
    session = Session(client_id)
    session.client = owner
    session.expiry_interval = expiry
    session.protocol_level = head.protocol_level
    session.next_id = head.next_id if 1 <= head.next_id <= 65535 else 1
    broker.sessions[client_id] = session
    for subscription in stored.subscriptions:
        broker.subscribe(session, subscription.subscription, subscription.sub_id)
    for record in stored.deliveries:
        message = record.message
        if message.expires_at is not None and message.expires_at <= now:
            restored.dropped_deliveries[record.key] = client_id
            continue
        delivery = Delivery(live_message(message), record.qos, record.retain, record.sub_ids)
        delivery.key = record.key
        if record.packet_id is None:
            session.pending().append(delivery)
        else:
            delivery.state = record.state
            session.open_inflight()[record.packet_id] = delivery
        restored.deliveries += 1
    if stored.inbound_qos2:
        session.open_inbound_qos2().update(stored.inbound_qos2)
    if expiry != NEVER:
        session.expiry_timer = broker.clock.callLater(since + expiry - now,
                                                      broker._expire_session, session)
    if head.will is not None:
        due = since + will_wait(head.will, expiry)
        if due <= now:
            restored.due_wills.append((owner, head.will))
        else:
            session.will = head.will
            session.will_timer = broker.clock.callLater(due - now, broker._fire_will, session)
    restored.sessions[client_id] = since
    if head.disconnected_at is None:
        restored.reconnected.add(client_id)
    return session


def restore(broker: Any, state: StoredState) -> Restored:
    """Rebuild ``broker``'s persistent sessions (offline, with their subscriptions, queued and
    in-flight messages under the same packet ids, inbound QoS 2 ids, expiry and will timers
    with the time that remains), its retained messages and its counters from ``state``.

    A session whose expiry passed while the broker was down is not restored, nor are expired
    messages.  Wills that fell due are returned in ``due_wills``, not published: publish them
    with ``publish_due_wills`` once whatever observes the broker is ready.  A session or
    retained message with a bad row (``state.bad_rows``, skipped) is not restored at all."""
    now = broker.tick()
    restored = Restored()
    bad = {row.client_id for row in state.bad_rows if row.client_id is not None}
    restored.bad_sessions = sorted(bad.difference(broker.sessions))
    restored.dropped_retained = [row.topic for row in state.bad_rows if row.topic is not None]
    for stored in state.sessions:
        if stored.head.client_id not in bad:
            restore_session(broker, stored, now, restored)
    for message in state.retained:
        if message.expires_at is not None and message.expires_at <= now:
            restored.dropped_retained.append(message.topic)
            continue
        broker.retained[message.topic] = live_message(message)
        restored.retained += 1
    broker.bans.load(state.bans, now)
    if state.sys_info:
        stats = broker.stats
        for name, figure in state.sys_info.items():
            if name in Stats.__slots__ and isinstance(figure, (int, list)):
                setattr(stats, name, list(figure) if isinstance(figure, list) else figure)
    return restored


def publish_due_wills(broker: Any, restored: Restored) -> None:
    """Publish the wills ``restore`` found due."""
    if not restored.due_wills:
        return
    broker.tick()
    for owner, will in restored.due_wills:
        broker.publish_will(owner.client_id, will, owner)
    restored.due_wills = []
    broker.flush()


@implementer(IStoredState)
class Recorder(Hook):
    """Records a broker's persistent state in an ``IStore``, write-behind or durable.

    Install it with ``broker.hooks.add(recorder)`` (``open`` does), read the store with
    ``open`` before clients connect, and ``close`` it after they are disconnected."""

    def __init__(self, broker: Any, store: Any, durable: bool = False,
                 clock: Any = None, skip_bad_rows: bool = False) -> None:
        self.broker = broker
        self.store = store
        self.durable = durable
        self.skip_bad_rows = skip_bad_rows
        """Whether rows holding bad data are skipped (logged) rather than refused."""
        self.clock = clock if clock is not None else broker.clock
        self.state: Optional[StoredState] = None
        """What the store held when it was opened."""
        self._stored: Set[str] = set()
        self._disconnected_at: Dict[str, float] = {}
        self._next_key = 1
        self._call: Any = None
        self._retry: Any = None
        self._retry_batch: Optional[Batch] = None
        self._retry_delay = RETRY_FIRST
        self._committing = False
        self._closing = False
        self._waiters: List[Deferred[None]] = []
        self._commit_waiters: List[Deferred[None]] = []
        self.commits = 0
        """Batches committed so far."""
        self.hold_qos2 = durable
        """Whether a QoS 2 PUBLISH to a stored session is sent only once its record is
        committed (exactly once across a crash)."""
        self._holding: Dict[Any, Any] = {}
        """Connection -> its ``OutputHold`` (see ``Connection.hold_output``) for the next
        commit."""
        self._commit_holding: Dict[Any, Any] = {}
        """Connection -> its ``OutputHold`` for the commit under way."""
        self._reset()

    def _reset(self) -> None:
        self._pending = False
        self._cleared: Set[str] = set()
        self._heads: Set[str] = set()
        self._subs: Set[Tuple[str, str]] = set()
        self._new: Dict[int, List[Any]] = {}
        self._moves: Dict[int, Tuple[str, Optional[int], int]] = {}
        self._deleted: Dict[int, str] = {}
        self._inbound: Dict[Tuple[str, int], bool] = {}
        self._retained: Dict[str, Optional[Message]] = {}
        self._sys: Optional[Dict[str, Any]] = None
        self._bans = False

    # -- opening and closing --------------------------------------------------------------------

    def open(self) -> Deferred[StoredState]:
        """Read the store, restore the broker from it, install this hook (and, in durable
        mode, the broker's ``ack_barrier``); fires with what was read, or fails with
        ``StoreError``.  Call it before the broker accepts clients."""
        d: Deferred[StoredState] = self.store.load()
        return d.addCallback(self._check_rows).addCallback(self.restore)

    def _check_rows(self, state: StoredState) -> Any:
        """``state`` if it has no bad rows; if they are to be skipped, ``state`` without the
        sessions they belong to (one log line each); otherwise close the store and fail with
        a ``StoreError`` naming the first."""
        bad = state.bad_rows
        location = self.store.location
        if not bad:
            return state
        if self.skip_bad_rows:
            for row in bad:
                log.warn("store {location}: skipped {row}{what}", location=location, row=row,
                         what=f"; session {show(row.client_id)} not restored (deleted)"
                         if row.client_id is not None else
                         "; deleted" if row.topic is not None else "")
            dropped = {row.client_id for row in bad}
            return replace(state, sessions=tuple(
                s for s in state.sessions if s.client_id not in dropped))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        error = StoreError(f"store {location}: {bad[0]}{more}; repair or delete the row, or "
                           "skip bad rows with --store-skip-bad-rows")
        return maybeDeferred(self.store.close).addBoth(lambda _: Failure(error))

    def restore(self, state: StoredState) -> StoredState:
        """Restore the broker from ``state`` (see ``restore``) and start recording."""
        broker = self.broker
        self.state = state
        restored = restore(broker, state)
        self._stored = set(restored.sessions)
        self._disconnected_at = dict(restored.sessions)
        self._next_key = max(self._next_key, restored.max_key + 1)
        for client_id in restored.dropped_sessions + restored.bad_sessions:
            self._clear(client_id)
        self._deleted.update(restored.dropped_deliveries)
        for topic in restored.dropped_retained:
            self._retained[topic] = None
        self._heads.update(restored.reconnected)
        if broker.hooks is not None and self not in list(broker.hooks):
            broker.hooks.add(self)
        if self._bans_changed not in broker.bans.changed:
            broker.bans.changed.append(self._bans_changed)
        if self.durable and self.barrier not in broker.ack_barriers:
            broker.ack_barriers.append(self.barrier)
        publish_due_wills(broker, restored)
        if (self._cleared or self._deleted or self._retained or self._heads):
            self._touch()
        log.info("store {location}: restored {sessions} sessions with {deliveries} queued or "
                 "in-flight messages and {retained} retained messages; {expired} sessions "
                 "expired while the broker was down", location=self.store.location,
                 sessions=len(restored.sessions), deliveries=restored.deliveries,
                 retained=restored.retained, expired=len(restored.dropped_sessions))
        return state

    def close(self) -> Deferred[None]:
        """Commit what is left (once: a failure is logged, not retried), then close the
        store."""
        self._closing = True
        if self._bans_changed in self.broker.bans.changed:
            self.broker.bans.changed.remove(self._bans_changed)
        if self.barrier in self.broker.ack_barriers:
            self.broker.ack_barriers.remove(self.barrier)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
            self._retry = None
            batch, self._retry_batch = self._retry_batch, None
            assert batch is not None
            self._commit(batch)
        d = self.flush()
        d.addCallback(lambda _: self.store.close())
        return d.addCallback(lambda _: None)

    # -- IStoredState ---------------------------------------------------------------------------

    def stored_sessions(self) -> Any:
        """The sessions read at start-up."""
        return list(self.state.sessions) if self.state is not None else []

    def stored_retained(self) -> Any:
        """The retained messages read at start-up."""
        return list(self.state.retained) if self.state is not None else []

    def stored_sys_info(self) -> Any:
        """The counters read at start-up, or None."""
        return self.state.sys_info if self.state is not None else None

    # -- batching -------------------------------------------------------------------------------

    def barrier(self, _message: Optional[Message] = None) -> Deferred[None]:
        """A Deferred firing once everything recorded so far is committed (in durable mode, one
        of the broker's ``ack_barriers``)."""
        if self._pending:
            d: Deferred[None] = Deferred()
            self._waiters.append(d)
            return d
        if self._committing:
            d = Deferred()
            self._commit_waiters.append(d)
            return d
        return succeed(None)

    def flush(self) -> Deferred[None]:
        """Start committing what was recorded now rather than at the end of the turn; fires
        once it is committed."""
        d = self.barrier()
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None
        if self._pending:
            self._flush()
        return d

    def _touch(self) -> None:
        self._pending = True
        if self._call is None and not self._committing:
            self._call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        if self._committing or not self._pending:
            return
        batch = self._build()
        if not batch:  # what was noted cancelled out (sent and acknowledged in one turn)
            waiters, self._waiters = self._waiters, []
            held, self._holding = self._holding, {}
            self._let_go(waiters, held)
            return
        self._commit_waiters, self._waiters = self._waiters, []
        self._commit_holding, self._holding = self._holding, {}
        self._committing = True
        self._commit(batch)

    def _commit(self, batch: Batch) -> None:
        try:
            d = self.store.commit(batch)
        except Exception as error:
            from twisted.internet.defer import fail

            d = fail(error)
        d.addCallbacks(self._committed, self._failed, errbackArgs=(batch,))

    def _committed(self, _: Any) -> None:
        self.commits += 1
        self._retry_delay = RETRY_FIRST
        self._committing = False
        waiters, self._commit_waiters = self._commit_waiters, []
        held, self._commit_holding = self._commit_holding, {}
        self._let_go(waiters, held)
        if self._pending:
            self._flush()

    def _let_go(self, waiters: List[Deferred[None]], held: Dict[Any, Any]) -> None:
        """What waited for a commit goes on: the acknowledgements of ``waiters`` and the
        output of the ``held`` connections, sent with one write per connection."""
        for d in waiters:
            d.callback(None)
        for connection, hold in held.items():
            connection.release_output(hold)
        if waiters or held:
            self.broker.flush()

    def _hold(self, client_id: str) -> None:
        """Hold the output of ``client_id``'s connection until what is recorded now is
        committed."""
        if self._pending:
            holding = self._holding
        elif self._committing:
            holding = self._commit_holding
        else:
            return
        session = self.broker.sessions.get(client_id)
        connection = session.connection if session is not None else None
        hold = getattr(connection, "hold_output", None)
        if hold is not None and connection not in holding:
            holding[connection] = hold()

    def _failed(self, failure: Any, batch: Batch) -> None:
        location = self.store.location
        if self._closing:
            log.failure("store {location}: the last changes could not be committed",
                        failure, location=location)
            self._committed(None)
            return
        delay = self._retry_delay
        self._retry_delay = min(delay * 2, RETRY_MAX)
        if failure.check(StoreError):  # an error the store explains: one line
            log.warn("store {location}: commit failed ({error}); retrying in {delay}s "
                     "(acknowledgements in durable mode wait)", location=location,
                     error=failure.value, delay=delay)
        else:
            log.failure("store {location}: commit failed; retrying in {delay}s "
                        "(acknowledgements in durable mode wait)", failure, location=location,
                        delay=delay)
        self._retry_batch = batch
        self._retry = self.clock.callLater(delay, self._retry_commit)

    def _retry_commit(self) -> None:
        self._retry = None
        batch, self._retry_batch = self._retry_batch, None
        if batch is not None:
            self._commit(batch)

    def _build(self) -> Batch:
        """The batch of what was recorded since the last one, read from the live state."""
        batch = Batch()
        sessions = self.broker.sessions
        batch.cleared = self._cleared
        stored = self._stored
        for client_id in self._heads:
            session = sessions.get(client_id)
            if session is not None and client_id in stored:
                batch.sessions[client_id] = self._head(session)
        for client_id, topic_filter in self._subs:
            session = sessions.get(client_id)
            entry = session.subscriptions.get(topic_filter) if session is not None else None
            batch.subscriptions[(client_id, topic_filter)] = (
                None if entry is None else StoredSubscription(entry.subscription, entry.sub_id))
        messages: Dict[int, StoredMessage] = {}
        deliveries = batch.deliveries
        for key, (client_id, delivery, packet_id) in self._new.items():
            message = delivery.message
            record = messages.get(id(message))
            if record is None:
                record = messages[id(message)] = stored_message(message)
            deliveries[key] = StoredDelivery(
                key, client_id, record, delivery.qos, delivery.retain, delivery.sub_ids,
                packet_id, delivery.state if packet_id is not None else 0)
        batch.moves = self._moves
        batch.deleted = self._deleted
        batch.inbound = self._inbound
        for topic, retained in self._retained.items():
            batch.retained[topic] = None if retained is None else stored_message(retained)
        batch.sys_info = self._sys
        if self._bans:
            batch.bans = tuple(self.broker.bans)
        self._reset()
        return batch

    def _head(self, session: Session) -> SessionHead:
        disconnected_at = None
        if session.connection is None:
            disconnected_at = self._disconnected_at.get(session.client_id)
            if disconnected_at is None:
                disconnected_at = self._disconnected_at[session.client_id] = self.clock.seconds()
        client = session.client
        return SessionHead(session.client_id, session.expiry_interval, session.protocol_level,
                           disconnected_at, session.will, session.next_id,
                           client.username if client is not None else None)

    def _clear(self, client_id: str) -> None:
        """Forget everything of ``client_id`` noted in this batch; delete its stored state."""
        self._cleared.add(client_id)
        self._forget_notes(client_id)
        self._touch()

    def _forget_notes(self, client_id: str) -> None:
        """Forget the changes of ``client_id`` noted in this batch."""
        self._heads.discard(client_id)
        if self._subs:
            self._subs = {k for k in self._subs if k[0] != client_id}
        for notes in (self._new, self._moves, self._deleted):
            for key in [k for k, v in notes.items() if v[0] == client_id]:
                del notes[key]
        if self._inbound:
            self._inbound = {k: v for k, v in self._inbound.items() if k[0] != client_id}

    def _snapshot(self, session: Session) -> None:
        """Note everything of a session that was not stored until now."""
        client_id = session.client_id
        for topic_filter in session.subscriptions:
            self._subs.add((client_id, topic_filter))
        for delivery in session.queue:
            key = delivery.key = self._next_key
            self._next_key += 1
            self._new[key] = [client_id, delivery, None]
        for packet_id, delivery in session.inflight.items():
            key = delivery.key = self._next_key
            self._next_key += 1
            self._new[key] = [client_id, delivery, packet_id]
        for packet_id in session.inbound_qos2:
            self._inbound[(client_id, packet_id)] = True

    # -- events ---------------------------------------------------------------------------------

    def on_session_established(self, client: ClientInfo, packet: Any,
                               session_present: bool) -> None:
        """A session opened: store it if it is persistent; a clean start deletes what was
        stored of the client id."""
        client_id = client.client_id
        session = self.broker.sessions.get(client_id)
        if session is None:
            return
        persistent = session.expiry_interval > 0
        stored = self._stored
        if client_id in stored and (not session_present or not persistent):
            self._clear(client_id)
            stored.discard(client_id)
        self._disconnected_at.pop(client_id, None)
        if not persistent:
            return
        if client_id not in stored:
            stored.add(client_id)
            if session_present:
                self._snapshot(session)
        self._heads.add(client_id)
        self._touch()

    def on_disconnect(self, client: ClientInfo, reason_code: Optional[int],
                      session_kept: bool) -> None:
        """A connection ended: note when (its expiry and delayed will count from then), or
        delete the session if it ended too."""
        client_id = client.client_id
        if client_id not in self._stored:
            return
        if not session_kept:
            self._stored.discard(client_id)
            self._disconnected_at.pop(client_id, None)
            self._clear(client_id)
            return
        session = self.broker.sessions.get(client_id)
        if session is None or session.connection is not None:
            return
        self._disconnected_at[client_id] = self.clock.seconds()
        self._heads.add(client_id)
        self._touch()

    def on_client_expired(self, client_id: str) -> None:
        """A session expired: delete it."""
        if client_id in self._stored:
            self._stored.discard(client_id)
            self._disconnected_at.pop(client_id, None)
            self._clear(client_id)

    def on_will_sent(self, client_id: str, message: Any) -> None:
        """A will was published: the session no longer holds it."""
        if client_id in self._stored and client_id in self.broker.sessions:
            self._heads.add(client_id)
            self._touch()

    def on_subscribed(self, client: ClientInfo, packet: Any,
                      reason_codes: Tuple[int, ...]) -> None:
        """Subscriptions were added or replaced."""
        client_id = client.client_id
        if client_id in self._stored:
            for subscription in packet.subscriptions:
                self._subs.add((client_id, subscription.topic_filter))
            self._touch()

    def on_unsubscribed(self, client: ClientInfo, packet: Any,
                        reason_codes: Tuple[int, ...]) -> None:
        """Subscriptions were removed."""
        client_id = client.client_id
        if client_id in self._stored:
            for topic_filter in packet.topic_filters:
                self._subs.add((client_id, topic_filter))
            self._touch()

    def on_message_queued(self, client_id: str, delivery: Any) -> None:
        """A delivery was queued: a new record."""
        if client_id in self._stored and delivery.key is None:
            key = delivery.key = self._next_key
            self._next_key += 1
            self._new[key] = [client_id, delivery, None]
            self._touch()

    on_packet_ids_exhausted = on_message_queued

    def on_qos_publish(self, client_id: str, packet_id: int, delivery: Any,
                       resend: bool) -> None:
        """A delivery was sent under ``packet_id``: a new record, or its record moves from the
        queue to the messages in flight."""
        if client_id not in self._stored:
            return
        key = delivery.key
        if key is None:
            key = delivery.key = self._next_key
            self._next_key += 1
            self._new[key] = [client_id, delivery, packet_id]
        else:
            note = self._new.get(key)
            if note is not None:
                note[2] = packet_id
            elif resend:
                if delivery.qos == 2 and self.hold_qos2:
                    self._hold(client_id)  # its record may be in the commit under way
                return
            else:
                self._moves[key] = (client_id, packet_id, delivery.state)
        if not self._pending:
            self._touch()
        if delivery.qos == 2 and self.hold_qos2:
            self._hold(client_id)

    def on_qos_progress(self, client_id: str, packet_id: int, delivery: Any) -> None:
        """A QoS 2 delivery reached its PUBREL phase."""
        key = delivery.key
        if key is None or client_id not in self._stored:
            return
        if key not in self._new:
            self._moves[key] = (client_id, packet_id, 1)
        if not self._pending:
            self._touch()

    def on_qos_complete(self, client_id: str, packet_id: Optional[int], delivery: Any) -> None:
        """A delivery ended: delete its record (nothing if it was not yet written)."""
        key = delivery.key
        if key is None or client_id not in self._stored:
            return
        if self._new.pop(key, None) is None:
            self._moves.pop(key, None)
            self._deleted[key] = client_id
            if not self._pending:
                self._touch()

    on_qos_dropped = on_qos_complete

    def on_inbound_qos2(self, client_id: str, packet_id: int, received: bool) -> None:
        """An inbound QoS 2 packet id was added or released."""
        if client_id in self._stored:
            self._inbound[(client_id, packet_id)] = received
            if not self._pending:
                self._touch()

    def on_retain_message(self, message: Any, change: int) -> None:
        """A retained message was stored or cleared ($SYS topics are not stored)."""
        topic = message.topic
        if change == 0 or topic.startswith("$SYS/"):
            return
        self._retained[topic] = self.broker.retained.get(topic) if change > 0 else None
        if not self._pending:
            self._touch()

    def on_retained_expired(self, topic: str) -> None:
        """A retained message expired."""
        self._retained[topic] = None
        self._touch()

    def _bans_changed(self) -> None:
        """A ban was added, lifted or expired: the bans are written with the next batch."""
        self._bans = True
        self._touch()

    def on_sys_info_tick(self, figures: Dict[str, Any]) -> None:
        """Save the counters with each $SYS publication."""
        self._sys = stats_snapshot(self.broker.stats)
        self._touch()

    def on_stopped(self, broker: Any) -> None:
        """Save the counters once more."""
        self._sys = stats_snapshot(self.broker.stats)
        self._touch()
