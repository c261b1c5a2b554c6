"""The broker core: sessions, routing, retained messages, wills, keep alive sweeps and $SYS.

It never touches sockets: connections are ``Connection`` objects that write to a transport, and
time comes from the injected clock (an ``IReactorTime`` provider such as ``task.Clock``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple, cast

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from twisted_mqtt import __version__
from twisted_mqtt.bans import Ban, BanError, Bans
from twisted_mqtt.capabilities import (
    DEFAULT_CAPABILITIES,
    DEFAULT_COMPATIBILITIES,
    Capabilities,
    Compatibilities,
)
from twisted_mqtt.hooks import Hooks
from twisted_mqtt.interfaces import ClientInfo, IAuthenticator, IAuthorizer
from twisted_mqtt.packets import ReasonCode, Subscription, Will
from twisted_mqtt.properties import NO_PROPERTIES
from twisted_mqtt.session import Delivery, Message, Session, SubscriptionEntry, delivery_size
from twisted_mqtt.stats import LoadAverages, Stats
from twisted_mqtt.targets import is_remote
from twisted_mqtt.topics import RetainedIndex, SharedGroup, SubscriptionTree

if TYPE_CHECKING:
    from twisted_mqtt.codec import AckedRun, PublishRun
    from twisted_mqtt.connection import Connection
    from twisted_mqtt.inline import InlineClient
    from twisted_mqtt.targets import DeliveryTarget
    from twisted_mqtt.trace import PacketTrace

log = Logger()

# One aggregated route to a session: (session, qos, retain_as_published, sub_ids, local), where
# ``local`` is the (qos, rap, sub_ids) to use when the publisher is that same client (None: its
# subscriptions are all No Local).
Route = Tuple[Session, int, bool, Tuple[int, ...], Optional[Tuple[int, bool, Tuple[int, ...]]]]
Routes = Tuple[List[Route], List[SharedGroup]]

NEVER = 0xFFFFFFFF

AckBarrier = Callable[[Optional[Message]], "Optional[Deferred[Any]]"]
"""Called when a QoS 1/2 acknowledgement is due: None to let it go, or a Deferred to hold it."""


def _aggregate(entries: List[SubscriptionEntry]) -> Tuple[int, bool, Tuple[int, ...]]:
    qos = max(e.qos for e in entries)
    rap = any(e.retain_as_published for e in entries)
    sub_ids = tuple(sorted({e.sub_id for e in entries if e.sub_id is not None}))
    return qos, rap, sub_ids


class Broker:
    """The pure core of the MQTT broker, shared by all connections of all listeners."""

    def __init__(
        self,
        clock: Any,
        capabilities: Capabilities = DEFAULT_CAPABILITIES,
        compatibilities: Compatibilities = DEFAULT_COMPATIBILITIES,
        authenticator: Optional[IAuthenticator] = None,
        authorizer: Optional[IAuthorizer] = None,
        enhanced_authenticator: Any = None,
        hooks: Iterable[Any] = (),
    ) -> None:
        self.clock = clock
        self.capabilities = capabilities
        self.compatibilities = compatibilities
        self.hooks = Hooks()
        """The installed hooks; with no authenticator, every client is refused."""
        for hook in (authenticator, authorizer, *hooks):
            if hook is not None:
                self.hooks.add(hook)
        self.enhanced_authenticator = enhanced_authenticator
        self.ack_barriers: List[AckBarrier] = []
        """What QoS 1/2 acknowledgements wait for (a durable store's commit, a bridge's
        delivery): each is called with the routed PUBLISH's ``Message`` (None for a PUBREL or
        PUBCOMP, or a message a hook dropped) and returns None (nothing to wait for) or a
        Deferred; the acknowledgement is sent once all of them fired.  See ``ack_held``."""
        self.sessions: Dict[str, Session] = {}
        self.bans = Bans(capabilities.maximum_bans)
        """Client ids, user names and addresses refused at CONNECT (see ``ban``)."""
        self.node_name: Optional[str] = None
        """This broker's name in its cluster (set by the cluster), shown by the dashboard."""
        self.tree = SubscriptionTree()
        self.retained: RetainedIndex[Message] = RetainedIndex(attrgetter("expires_at"))
        """Retained messages by topic (a mapping), indexed by level for ``retained_for``."""
        self.connections: set[Connection] = set()
        self.hooks.watch(self._hooks_changed)
        self.connected = 0
        """How many connections have completed CONNECT and not yet ended."""
        self.dirty: List[Connection] = []
        self.stats = Stats()
        self.figure_sources: List[Callable[[], Dict[str, Any]]] = []
        """Optional parts' own $SYS figures (a bridge's), by topic suffix, added to
        ``sys_figures``."""
        self.load = LoadAverages()
        """The $SYS load figures, updated at each $SYS publication."""
        self.now: float = clock.seconds()
        self.started_at = self.now
        self.running = False
        self._routes: Dict[str, Routes] = {}
        self._sweep_call: Any = None
        self._sys_call: Any = None
        self._inline: Optional[InlineClient] = None
        self.interest_watchers: List[Callable[[str, bool], None]] = []
        """Called with (filter, True) when the first local subscription to a filter appears
        (a network client's, an offline session's or an inline one; not another node's), and
        (filter, False) when the last one is gone: a cluster publishes this node's interest."""
        self.queue_watchers: List[Callable[[Session, bool], None]] = []
        """Called with (session, True) after a message joined a session's queue and (session,
        False) after ``pump`` sent from it: a cluster stops reading its stream while local
        queues are full."""
        self._interest: Dict[str, int] = {}
        self.session_claim: Optional[Callable[[str, bool], Optional[Deferred[int]]]] = None
        """When set (by a cluster), called with (client id, clean start) when a client is about
        to be accepted: None to accept it now, or a Deferred firing with 0 once its session is
        this broker's to open (a CONNACK reason code to refuse it)."""
        self.coalesce_writes = False
        """Set by the service on a real reactor: see ``flush_soon``."""
        self._flush_call: Any = None

    def ack_held(self, *messages: Optional[Message]) -> Optional[Deferred[Any]]:
        """What the acknowledgements due for ``messages`` (None: a PUBREL or PUBCOMP) wait for:
        None to send them now, else one Deferred firing once every ``ack_barriers`` entry that
        holds one of them fired (failing with the first failure)."""
        barriers = self.ack_barriers
        if not barriers:
            return None
        held: List[Deferred[Any]] = []
        for message in messages:
            for barrier in barriers:
                d = barrier(message)
                if d is not None:
                    held.append(d)
        if not held:
            return None
        if len(held) == 1:
            return held[0]
        return gatherResults(held, consumeErrors=True)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the keep alive sweep and the $SYS publications."""
        if self.running:
            return
        self.running = True
        self.now = self.clock.seconds()
        self.started_at = self.now
        self._sweep_call = self.clock.callLater(self.capabilities.keepalive_sweep_interval,
                                                self._sweep)
        if self.capabilities.sys_interval > 0:
            self._publish_sys()
        if self.hooks.on_started:
            self.hooks.notify(self.hooks.on_started, self)

    @property
    def authenticator(self) -> Optional[IAuthenticator]:
        """The first authenticator installed; setting it replaces every authenticator."""
        found = self.hooks.authenticators
        return found[0] if found else None

    @authenticator.setter
    def authenticator(self, hook: IAuthenticator) -> None:
        self.hooks.replace(IAuthenticator, hook)

    @property
    def authorizer(self) -> Optional[IAuthorizer]:
        """The first authorizer installed; setting it replaces every authorizer."""
        found = self.hooks.authorizers
        return found[0] if found else None

    @authorizer.setter
    def authorizer(self, hook: IAuthorizer) -> None:
        self.hooks.replace(IAuthorizer, hook)
        self.acl_changed()

    @property
    def inline(self) -> InlineClient:
        """The inline client: publish and subscribe from the application (see ``inline.py``)."""
        client = self._inline
        if client is None:
            from twisted_mqtt.inline import InlineClient

            client = self._inline = InlineClient(self)
        return client

    def inject(self, client_id: str, packet: Any) -> None:
        """Handle ``packet`` as if the connected client ``client_id`` had sent it (a local
        client too: ``twisted_mqtt.testing.InMemoryClient``).  Raises ``KeyError`` when no
        such client is connected."""
        session = self.sessions.get(client_id)
        conn = session.connection if session is not None else None
        if conn is None or conn not in self.connections:
            raise KeyError(f"no connected client {client_id!r}")
        self.tick()
        cast("Connection", conn).inject(packet)
        self.flush()

    def trace(self, enabled: bool = True, clients: Iterable[str] = (),
              topics: Iterable[str] = ()) -> Optional[PacketTrace]:
        """Log every packet in and out (``twisted_mqtt.trace``) of the clients whose id matches
        one of ``clients`` (glob patterns; none: every client) and, if ``topics`` are given,
        only packets carrying a topic that matches one of those filters; ``enabled`` False
        removes the trace.  Return the trace in force (None when off); ``ValueError`` for a bad
        topic filter."""
        from twisted_mqtt.trace import PacketTrace

        current = next((hook for hook in self.hooks if isinstance(hook, PacketTrace)), None)
        if not enabled:
            if current is not None:
                self.hooks.remove(current)
                log.info("packet trace off")
            return None
        if current is None:
            current = PacketTrace(clients, topics)
            self.hooks.add(current)
        else:
            current.limit(clients, topics)
        log.info("packet trace on: {filters}", filters=current.describe_filters())
        return current

    # -- administration -------------------------------------------------------------------------

    def ban(self, kind: str, value: str, duration: Optional[float] = None, reason: str = "",
            by: str = "") -> Ban:
        """Refuse at CONNECT (v5: CONNACK 0x8A Banned; v3: return code 5) the clients named by
        ``kind`` (``client_id``, ``username`` or ``address``, an address or CIDR network)
        ``value`` for ``duration`` seconds (None: until lifted), and disconnect those connected
        now (``kick``).  ``by`` names who did it, for the log.  ``BanError`` names a bad
        field."""
        if duration is not None and not duration > 0:
            raise BanError("duration", "must be a positive number of seconds")
        now = self.tick()
        ban = self.bans.add(kind, value, None if duration is None else now + duration, reason,
                            by, now)
        log.info("{kind} {value} banned{until}{who}{why}", kind=kind, value=ban.value,
                 until="" if duration is None else f" for {duration:g}s",
                 who=f" by {by}" if by else "", why=f": {reason}" if reason else "")
        self.disconnect_banned(ban)
        return ban

    def disconnect_banned(self, ban: Ban) -> None:
        """Disconnect the connected clients ``ban`` names (v5: DISCONNECT 0x98 Administrative
        action)."""
        for conn in list(self.connections):
            client = conn.client
            if (conn.session is not None and client is not None
                    and self.bans.matches_client(ban, client.client_id, client.username,
                                                 conn.address)):
                conn.disconnect(ReasonCode.ADMINISTRATIVE_ACTION, "banned")
        self.flush()

    def list_bans(self) -> List[Ban]:
        """The bans in force now, by kind and value."""
        return self.bans.list(self.tick())

    def unban(self, kind: str, value: str, by: str = "") -> bool:
        """Lift a ban; False if there was none."""
        lifted = self.bans.remove(kind, value)
        if lifted:
            log.info("{kind} {value} no longer banned{who}", kind=kind, value=value,
                     who=f" (by {by})" if by else "")
        return lifted

    def kick(self, client_id: str, by: str = "") -> bool:
        """Disconnect the connected client ``client_id`` (v5: DISCONNECT 0x98 Administrative
        action; v3: the connection is closed); its session stays as its expiry says.  False if
        no network client with that id is connected."""
        session = self.sessions.get(client_id)
        target = session.connection if session is not None else None
        if target is None or target not in self.connections:
            return False
        conn = cast("Connection", target)  # a network client's connection
        self.tick()
        log.info("{client_id} kicked{who}", client_id=client_id, who=f" by {by}" if by else "")
        cast("Connection", conn).disconnect(ReasonCode.ADMINISTRATIVE_ACTION)
        self.flush()
        return True

    def _hooks_changed(self) -> None:
        """Connections leave their fast paths while a packet hook is installed, and take them
        again once none is."""
        observed = self.hooks.packets
        for conn in self.connections:
            conn.observe(observed)

    def acl_changed(self) -> None:
        """Forget every remembered delivery decision (``may_receive``): call it when an
        authorizer's rules change."""
        self._routes.clear()

    def stop(self) -> None:
        """Disconnect every client (v5: DISCONNECT 0x8B) and stop the timers."""
        self.running = False
        for call in (self._sweep_call, self._sys_call, self._flush_call):
            if call is not None and call.active():
                call.cancel()
        self._sweep_call = self._sys_call = self._flush_call = None
        for conn in list(self.connections):
            conn.shutdown(ReasonCode.SERVER_SHUTTING_DOWN)
        for session in list(self.sessions.values()):
            self._cancel_timers(session)
        self.flush()
        if self.hooks.on_stopped:
            self.hooks.notify(self.hooks.on_stopped, self)

    def tick(self) -> float:
        """Refresh and return the coarse current time."""
        self.now = now = self.clock.seconds()
        return now

    def _sweep(self) -> None:
        now = self.tick()
        grace = self.capabilities.slow_consumer_grace
        for conn in list(self.connections):
            conn.check_keepalive(now)
            since = conn.blocked_since
            if since is not None and now - since > grace:
                conn.release_held()  # from now on its QoS 0 messages are dropped
        self._expire_retained(now)
        self.flush()
        self._sweep_call = self.clock.callLater(self.capabilities.keepalive_sweep_interval,
                                                self._sweep)

    def flush_soon(self) -> None:
        """Write out what every connection has queued: now, or, with ``coalesce_writes``, once
        the reactor has handled every input of this turn (one write per connection per turn
        however many clients' packets it answers)."""
        if not self.coalesce_writes:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush_turn)

    def _flush_turn(self) -> None:
        self._flush_call = None
        self.flush()

    def flush(self) -> None:
        """Write out what every connection has queued."""
        dirty = self.dirty
        while dirty:
            self.dirty = []
            for conn in dirty:
                conn.flush()
            dirty = self.dirty

    # -- sessions -------------------------------------------------------------------------------

    def assign_client_id(self) -> str:
        """A fresh client identifier for a client that sent an empty one."""
        return "auto-" + uuid.uuid4().hex

    def open_session(self, conn: Connection, client_id: str, clean_start: bool,
                     expiry_interval: int, will: Optional[Will]) -> Tuple[Session, bool]:
        """Attach ``conn`` to the session of ``client_id``; return it and Session Present.

        Only the identity that made a session (its user name; no user name is an identity of
        its own) resumes it: another one ends it as a clean start would and gets a new one."""
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            # may end the session [MQTT-3.1.4-3]
            cast("Connection", session.connection).take_over()
            session = self.sessions.get(client_id)
        if session is not None:
            self._cancel_timers(session)
            owner = session.client.username if session.client is not None else None
            user = conn.client.username if conn.client is not None else None
            if not clean_start and owner != user:
                log.info("client id {client_id}: session of user {owner!r} not resumed by "
                         "user {user!r}; starting a new session", client_id=client_id,
                         owner=owner, user=user)
            if clean_start or owner != user:
                self._end_session(session)  # the session ends: its delayed will goes out
                session = None
            else:
                session.will = None  # continuing the session cancels it [MQTT-3.1.3-9]
        present = session is not None
        if session is None:
            session = self.sessions[client_id] = Session(client_id)
            self.stats.sessions_created += 1
        session.connection = conn
        session.expiry_interval = expiry_interval
        session.will = will
        session.protocol_level = conn.protocol_level
        if conn.client is not None:
            session.client = conn.client
            if self.hooks.may_receive:
                self._routes.clear()  # delivery decisions depend on who the client now is
                if present:
                    self._recheck_pending(session)
        return session, present

    def release_session(self, client_id: str) -> Optional[Session]:
        """Forget the offline session of ``client_id`` without ending it (no will, nothing
        counted as dropped): it goes on elsewhere, on another node of a cluster.  None when
        there is no such offline session."""
        session = self.sessions.get(client_id)
        if session is None or session.connection is not None:
            return None
        self._cancel_timers(session)
        for topic_filter in list(session.subscriptions):
            self.unsubscribe(session, topic_filter)
        del self.sessions[client_id]
        return session

    def _recheck_pending(self, session: Session) -> None:
        """Drop (and count) the queued messages, and those in flight and not yet received,
        that the authorizers no longer let ``session``'s client be sent."""
        hooks = self.hooks
        client_id = session.client_id
        denied = [(packet_id, delivery) for packet_id, delivery in session.inflight.items()
                  if delivery.state == 0
                  and not self._may_receive(session, delivery.message.topic)]
        for packet_id, delivery in denied:
            del session.inflight[packet_id]
            self.dropped(client_id, delivery.message, "not authorized")
            if hooks.on_qos_dropped:
                hooks.notify(hooks.on_qos_dropped, client_id, packet_id, delivery)
        kept: List[Delivery] = []
        for delivery in session.queue:
            if self._may_receive(session, delivery.message.topic):
                kept.append(delivery)
                continue
            self.dropped(client_id, delivery.message, "not authorized")
            if hooks.on_qos_dropped:
                hooks.notify(hooks.on_qos_dropped, client_id, None, delivery)
        session.keep_queued(kept)

    def close_session_connection(self, session: Session, publish_will: bool) -> None:
        """The connection of ``session`` ended; keep, expire or end the session; handle the will.
        The session is kept, expired or ended as its expiry says even when handing its shared
        messages on or publishing its will fails (that error is logged)."""
        session.connection = None
        will = session.will if publish_will else None
        session.will = None
        expiry = session.expiry_interval
        try:
            self._redistribute_shared(session)
            if will is not None:
                delay = will.properties.will_delay_interval or 0
                if delay == 0 or expiry == 0:
                    self._send_will(session.client_id, will, session.client)
                else:
                    session.will = will
                    wait = delay if expiry == NEVER else min(delay, expiry)
                    session.will_timer = self.clock.callLater(wait, self._fire_will, session)
        except Exception:
            log.failure("{client_id}: handing on its messages failed", client_id=session.client_id)
        finally:
            if expiry == 0:
                self._end_session(session)
            elif expiry != NEVER:
                session.expiry_timer = self.clock.callLater(expiry, self._expire_session,
                                                            session)

    def _fire_will(self, session: Session) -> None:
        session.will_timer = None
        will, session.will = session.will, None
        if will is not None and session.connection is None:
            self.tick()
            self._send_will(session.client_id, will, session.client)
            self.flush()

    def _expire_session(self, session: Session) -> None:
        session.expiry_timer = None
        if session.connection is None and self.sessions.get(session.client_id) is session:
            self.tick()
            self.stats.sessions_expired += 1
            self._end_session(session)
            if self.hooks.on_client_expired:
                self.hooks.notify(self.hooks.on_client_expired, session.client_id)
            self.flush()

    def _cancel_timers(self, session: Session) -> None:
        for name in ("will_timer", "expiry_timer"):
            call = getattr(session, name)
            if call is not None and call.active():
                call.cancel()
            setattr(session, name, None)

    def _end_session(self, session: Session) -> None:
        """Discard a session: its subscriptions, queued messages, and publish a pending will."""
        self._cancel_timers(session)
        will, session.will = session.will, None
        if will is not None and session.connection is None:
            self._send_will(session.client_id, will, session.client)
        for topic_filter in list(session.subscriptions):
            if self.tree.remove(topic_filter, session.client_id) and self.interest_watchers:
                self._interest_changed(session, topic_filter, -1)
        if session.subscriptions:
            self._routes.clear()
        session.subscriptions.clear()
        self.stats.dropped += len(session.queue)
        session.queue.clear()
        session.inflight.clear()
        session.inbound_qos2.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def _send_will(self, client_id: str, will: Will, client: Optional[ClientInfo]) -> None:
        """``publish_will``, logging rather than raising an error (a hook's, a route's), so that
        the session's end is not cut short by its will."""
        try:
            self.publish_will(client_id, will, client)
        except Exception:
            log.failure("{client_id}: publishing its will failed", client_id=client_id)

    def will_allowed(self, client: ClientInfo, will: Will) -> Any:
        """Whether ``client``'s will may be published: never to ``$SYS``, else if every
        authorizer lets ``client`` publish to its topic (a bool, or a Deferred firing with
        one)."""
        if will.topic.startswith("$SYS"):
            return False
        return self.hooks.may_publish(client, will.topic)

    def publish_will(self, client_id: str, will: Will,
                     client: Optional[ClientInfo] = None) -> None:
        """Publish a Will Message on behalf of ``client_id`` if the authorizers still let its
        client (``client``; by default one with that client id and no user name) publish to
        its topic (``will_allowed``), now or when they answer; else drop it, counted in
        ``Stats.wills_denied``."""
        allowed = self.will_allowed(client if client is not None else ClientInfo(client_id),
                                    will)
        if isinstance(allowed, Deferred):
            allowed.addCallback(self._will_answered, client_id, will).addErrback(
                self._will_failed, client_id)
        else:
            self._publish_will(allowed, client_id, will)

    def _will_answered(self, allowed: bool, client_id: str, will: Will) -> None:
        self.tick()
        self._publish_will(allowed, client_id, will)
        self.flush()

    def _will_failed(self, failure: Any, client_id: str) -> None:
        log.failure("{client_id}: publishing its will failed", failure, client_id=client_id)

    def _publish_will(self, allowed: bool, client_id: str, will: Will) -> None:
        if not allowed:
            self.stats.wills_denied += 1
            log.info("{client_id}: will to {topic} not authorized; dropped",
                     client_id=client_id, topic=will.topic)
            return
        hooks = self.hooks
        if hooks.on_will:
            changed = hooks.modify(hooks.on_will, client_id, will)
            if not isinstance(changed, Will):
                return
            will = changed
        props = will.properties
        expires_at = None
        if props is not NO_PROPERTIES:
            if props.message_expiry_interval is not None:
                expires_at = self.now + props.message_expiry_interval
            props = replace(props, will_delay_interval=None)
            if props == NO_PROPERTIES:
                props = NO_PROPERTIES
        message = Message(will.topic, will.payload, will.qos, will.retain, props, expires_at,
                          client_id)
        self.stats.wills_sent += 1
        self.publish(message)
        if hooks.on_will_sent:
            hooks.notify(hooks.on_will_sent, client_id, message)

    # -- subscriptions --------------------------------------------------------------------------

    def subscribe(self, session: Session, subscription: Subscription,
                  sub_id: Optional[int]) -> bool:
        """Add or replace a subscription of ``session``; True if it is new."""
        entry = SubscriptionEntry(subscription, sub_id, session.client_id)
        session.open_subscriptions()[subscription.topic_filter] = entry
        new = self.tree.add(subscription.topic_filter, session.client_id, entry)
        self._routes.clear()
        if new and self.interest_watchers:
            self._interest_changed(session, subscription.topic_filter, 1)
        return new

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        """Remove a subscription; True if it existed [MQTT-3.10.4-1]."""
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        if self.tree.remove(topic_filter, session.client_id) and self.interest_watchers:
            self._interest_changed(session, topic_filter, -1)
        self._routes.clear()
        return True

    def _interest_changed(self, session: Session, topic_filter: str, change: int) -> None:
        if is_remote(session.connection):
            return
        interest = self._interest
        count = interest.get(topic_filter, 0) + change
        if count > 0:
            interest[topic_filter] = count
        else:
            interest.pop(topic_filter, None)
        if count == (1 if change > 0 else 0):
            for watcher in list(self.interest_watchers):
                try:
                    watcher(topic_filter, change > 0)
                except Exception:
                    log.failure("interest watcher {watcher!r} failed", watcher=watcher)

    def local_filters(self) -> List[str]:
        """The filters that local subscriptions hold (with ``interest_watchers`` installed)."""
        return list(self._interest)

    def retained_for(self, topic_filter: str) -> List[Message]:
        """Retained messages matching a (non-shared) filter, oldest expiry first dropped."""
        now = self.now
        return [m for m in self.retained.match(topic_filter) if not m.expired(now)]

    def delete_retained(self, topic: str) -> bool:
        """Delete the retained message of ``topic`` (nothing is sent to subscribers); False if
        there is none."""
        message = self.retained.pop(topic, None)
        if message is None:
            return False
        if self.hooks.on_retain_message:
            self.hooks.notify(self.hooks.on_retain_message, message, -1)
        return True

    def _expire_retained(self, now: float) -> None:
        for topic in self.retained.pop_expired(now):
            if self.hooks.on_retained_expired:
                self.hooks.notify(self.hooks.on_retained_expired, topic)

    # -- routing --------------------------------------------------------------------------------

    def _compute_routes(self, topic: str) -> Routes:
        normal, shared = self.tree.match(topic)
        per_client: Dict[str, List[SubscriptionEntry]] = {}
        for client_id, entry in normal:
            per_client.setdefault(client_id, []).append(entry)
        routes: List[Route] = []
        hooks = self.hooks
        for client_id, entries in per_client.items():
            session = self.sessions[client_id]
            if hooks.may_receive and not self._may_receive(session, topic):
                continue
            qos, rap, sub_ids = _aggregate(entries)
            others = [e for e in entries if not e.no_local]
            local = _aggregate(others) if others else None
            routes.append((session, qos, rap, sub_ids, local))
        result = (routes, shared)
        if len(self._routes) > 100_000:
            self._routes.clear()
        self._routes[topic] = result
        return result

    def _may_receive(self, session: Session, topic: str) -> bool:
        """Whether the authorizers let ``session`` be sent ``topic``; an inline client's
        subscriptions are exempt from the ACL."""
        if getattr(session.connection, "acl_exempt", False):
            return True
        return self.hooks.allowed_to_receive(session.client or ClientInfo(session.client_id),
                                             topic)

    def publish(self, message: Message, local_only: bool = False) -> int:
        """Route a message to every matching subscription; return how many sessions get it.

        ``local_only``: a message another node of a cluster routed here: only this node's
        sessions get it, and it is not retained here (retained messages are replicated)."""
        stats = self.stats
        stats.messages_received += 1
        stats.messages_received_by_qos[message.qos] += 1
        if message.retain and not local_only:
            self._retain(message)
        routes = self._routes.get(message.topic)
        if routes is None:
            routes = self._compute_routes(message.topic)
        normal, shared = routes
        if local_only:  # this node's routes only, kept beside the others (no topic holds U+0000)
            here = self._routes.get("\0" + message.topic)
            if here is None:
                here = self._routes["\0" + message.topic] = (
                    [route for route in normal if not is_remote(route[0].connection)], shared)
            normal = here[0]
        if self.hooks.on_select_subscribers:
            normal = self._select(message, normal)
        origin = message.origin
        mqos = message.qos
        retain = message.retain
        count = 0
        deliver = self.deliver
        for session, qos, rap, sub_ids, local in normal:
            if session.client_id == origin:
                if local is None:
                    continue
                qos, rap, sub_ids = local
            count += 1
            if qos and mqos:
                deliver(session, message, qos if qos < mqos else mqos, retain and rap, sub_ids)
                continue
            conn = session.connection  # QoS 0 to a connected client: straight to it
            if conn is not None and (not conn.blocked or self.hold_back(origin, conn)):
                conn.send_qos0(message, retain and rap, sub_ids)
            else:
                deliver(session, message, 0, retain and rap, sub_ids)
        for group in shared:
            if self._deliver_shared(group, message, None, local_only):
                count += 1
        return count

    def publish_shared(self, message: Message, topic_filter: str) -> bool:
        """Deliver a message another node routed here for the shared subscription
        ``topic_filter`` (``$share/GROUP/FILTER``) to one local member; False if there is none."""
        group = self.tree.group(topic_filter)
        return group is not None and self._deliver_shared(group, message, None, True)

    def _select(self, message: Message, routes: List[Route]) -> List[Route]:
        """The routes whose client ids the ``on_select_subscribers`` hooks keep."""
        hooks = self.hooks
        chosen = hooks.modify(hooks.on_select_subscribers, message,
                              frozenset(route[0].client_id for route in routes))
        if not chosen:
            return []
        kept = set(chosen)
        return [route for route in routes if route[0].client_id in kept]

    def hold_back(self, origin: Optional[str], target: DeliveryTarget) -> bool:
        """A message from ``origin`` is for the blocked ``target``: stop reading the publishing
        client until ``target`` drains, and return True (the message is sent all the same);
        False (the message is to be dropped) when the publisher is not a network client,
        ``target`` has been blocked longer than ``slow_consumer_grace`` or is being dropped."""
        since = target.blocked_since
        if target.overflowed or (
                since is not None and self.now - since > self.capabilities.slow_consumer_grace):
            return False
        session = self.sessions.get(origin) if origin is not None else None
        publisher = session.connection if session is not None else None
        if publisher is None or publisher is target or publisher not in self.connections:
            return False
        # only a network client's connection is ever blocked
        cast("Connection", publisher).hold_reading(cast("Connection", target))
        return True

    def dropped(self, client_id: str, message: Message, reason: str) -> None:
        """Count a message that ``client_id`` will not get, and tell the hooks why."""
        self.stats.dropped += 1
        if self.hooks.on_publish_dropped:
            self.hooks.notify(self.hooks.on_publish_dropped, client_id, message, reason)

    def forward_run(self, run: PublishRun, origin: str, local_only: bool = False) -> bool:
        """Send a run of plain QoS 0 packets from ``origin`` as one slice to every subscriber,
        if each one gets them unchanged (same protocol family, no subscription identifier,
        topic alias or smaller packet limit, no shared group); otherwise send nothing and
        return False.  Offline and blocked subscribers lose them, as single QoS 0 messages.
        Another node of a cluster is handed the run whole (``send_run``); ``local_only``: a
        run another node sent here, for this node's subscribers only."""
        routes = self._routes.get(run.topic)
        if routes is None:
            routes = self._compute_routes(run.topic)
        normal, shared = routes
        if shared or self.hooks.on_select_subscribers or self.hooks.on_publish_dropped:
            return False
        targets: List[Any] = []  # network connections (their protocol family matched)
        nodes: List[Any] = []
        for session, _qos, _rap, sub_ids, local in normal:
            if session.client_id == origin:
                if local is None:
                    continue
                sub_ids = local[2]
            conn = session.connection
            if conn is None:
                if self.compatibilities.queue_qos0_offline:
                    return False
                targets.append(None)
                continue
            if conn.remote:
                if not local_only:
                    nodes.append(conn)
                continue
            if (sub_ids or conn.alias_max_out or conn.v5 != run.v5 or (
                    conn.max_packet_out is not None and conn.max_packet_out < run.largest)):
                return False
            targets.append(conn if not conn.blocked or self.hold_back(origin, conn) else None)
        count = run.count
        stats = self.stats
        stats.messages_received += count
        stats.messages_received_by_qos[0] += count
        data = run.data()
        sent = 0
        for conn in targets:
            if conn is None:
                stats.dropped += count
            else:
                conn.write(data)
                sent += count
        for node in nodes:
            node.send_run(run, origin)
        stats.messages_sent += sent
        stats.messages_sent_by_qos[0] += sent
        stats.packets_sent += sent
        return True

    def forward_acked(self, run: AckedRun, origin: str) -> Optional[Tuple[int, List[Message]]]:
        """Route a run of plain QoS 1 messages from ``origin``: each subscriber that can get
        them as received (same protocol family, no subscription identifier, topic alias or
        smaller packet limit) is sent them from their own bytes with its packet identifiers in
        one write, others get them one by one.  Return how many sessions each reached and the
        messages routed (for ``ack_held``), or None (and do nothing) when a hook or a shared
        subscription needs them one at a time."""
        hooks = self.hooks
        if hooks.on_select_subscribers or hooks.on_publish_dropped:
            return None
        topic = run.topic
        routes = self._routes.get(topic)
        if routes is None:
            routes = self._compute_routes(topic)
        normal, shared = routes
        if shared:
            return None
        count = run.count
        stats = self.stats
        stats.messages_received += count
        stats.messages_received_by_qos[1] += count
        v5 = run.v5
        heads = run.heads
        tails = run.tails
        messages = [Message(topic, payload, 1, False, NO_PROPERTIES, None, origin, (head, tail),
                            v5) for payload, head, tail in zip(run.payloads, heads, tails)]
        reached = 0
        for session, qos, _rap, sub_ids, local in normal:
            if session.client_id == origin:
                if local is None:
                    continue
                qos, _rap, sub_ids = local
            reached += 1
            conn = session.connection
            if (not qos or conn is None or sub_ids or conn.blocked or conn.v5 is not v5
                    or conn.alias_max_out or (conn.max_packet_out is not None
                                              and conn.max_packet_out < run.largest)):
                for message in messages:
                    self.deliver(session, message, qos and 1, False, sub_ids)
                continue
            network: Connection = conn  # type: ignore[assignment]  # its protocol family matched
            inflight = session.open_inflight()
            quota = session.send_quota
            out = []
            for index, message in enumerate(messages):
                if session.queue or len(inflight) >= quota:
                    self._enqueue(session, Delivery(message, 1, False, ()))
                    continue
                packet_id = session.allocate_packet_id()
                if packet_id is None:
                    self._enqueue(session, Delivery(message, 1, False, ()))
                    continue
                inflight[packet_id] = Delivery(message, 1, False, ())
                out.append(heads[index] + packet_id.to_bytes(2, "big") + tails[index])
            if out:
                network.write(b"".join(out))
                sent = len(out)
                stats.messages_sent += sent
                stats.messages_sent_by_qos[1] += sent
                stats.packets_sent += sent
                if hooks.on_qos_publish:  # the deliveries sent: the last ones added in flight
                    for packet_id in list(inflight)[-sent:]:
                        hooks.notify(hooks.on_qos_publish, session.client_id, packet_id,
                                     inflight[packet_id], False)
        return reached, messages

    def _retain(self, message: Message) -> None:
        topic = message.topic
        hooks = self.hooks
        if not message.payload:
            if self.retained.pop(topic, None) is not None and hooks.on_retain_message:
                hooks.notify(hooks.on_retain_message, message, -1)
            return  # [MQTT-3.3.1-6]
        if topic not in self.retained and (
            len(self.retained) >= self.capabilities.maximum_retained_messages
        ):
            self.stats.retained_dropped += 1
            log.warn("retained message limit reached; not retaining {topic}", topic=topic)
            if hooks.on_retain_message:
                hooks.notify(hooks.on_retain_message, message, 0)
            return
        expiry = self.capabilities.retained_message_expiry
        if message.expires_at is None and expiry is not None:
            stored = Message(topic, message.payload, message.qos, True, message.properties,
                             self.now + expiry, message.origin)
        else:
            stored = message
        self.retained[topic] = stored
        if hooks.on_retain_message:
            hooks.notify(hooks.on_retain_message, stored, 1)

    def _pick_member(self, group: SharedGroup, exclude: Optional[str],
                     topic: str, local_only: bool = False) -> Optional[Session]:
        members = list(group.members)
        count = len(members)
        fallback = None
        hooks = self.hooks
        for step in range(count):
            client_id = members[(group.cursor + step) % count]
            if client_id == exclude:
                continue
            session = self.sessions.get(client_id)
            if session is None or local_only and is_remote(session.connection):
                continue
            if hooks.may_receive and not self._may_receive(session, topic):
                continue
            if session.connection is not None:
                group.cursor = (group.cursor + step + 1) % count
                return session
            if fallback is None:
                fallback = session
        if fallback is not None:
            group.cursor = (group.cursor + 1) % count
        return fallback

    def _deliver_shared(self, group: SharedGroup, message: Message,
                        exclude: Optional[str], local_only: bool = False) -> bool:
        session = self._pick_member(group, exclude, message.topic, local_only)
        if session is None:
            return False
        entry = group.members[session.client_id]
        qos = entry.qos if entry.qos < message.qos else message.qos
        sub_ids = (entry.sub_id,) if entry.sub_id is not None else ()
        self.deliver(session, message, qos, message.retain and entry.retain_as_published,
                     sub_ids, group)
        return True

    def deliver(self, session: Session, message: Message, qos: int, retain: bool,
                sub_ids: Tuple[int, ...], share: Optional[SharedGroup] = None) -> None:
        """Send or queue one message to one session."""
        conn = session.connection
        if qos == 0:
            if conn is not None:
                if conn.blocked and not self.hold_back(message.origin, conn):
                    self.dropped(session.client_id, message, "slow consumer")
                else:
                    conn.send_qos0(message, retain, sub_ids)
            elif self.compatibilities.queue_qos0_offline:
                self._enqueue(session, Delivery(message, 0, retain, sub_ids, share))
            else:
                self.dropped(session.client_id, message, "offline")
            return
        delivery = Delivery(message, qos, retain, sub_ids, share)
        if (conn is not None and not conn.blocked and not session.queue
                and len(session.inflight) < session.send_quota):
            conn.send_delivery(delivery)
        else:
            if conn is not None and conn.blocked:
                self.hold_back(message.origin, conn)  # so that its queue does not overflow
            self._enqueue(session, delivery)

    def _enqueue(self, session: Session, delivery: Delivery) -> None:
        queue = session.queue
        caps = self.capabilities
        if (len(queue) >= caps.maximum_queued_messages
                or queue.size + delivery_size(delivery) > caps.maximum_queued_bytes):
            self.dropped(session.client_id, delivery.message, "queue full")
            return
        session.pending().append(delivery)
        for watcher in self.queue_watchers:
            watcher(session, True)
        if self.hooks.on_message_queued:
            self.hooks.notify(self.hooks.on_message_queued, session.client_id, delivery)

    def pump(self, session: Session) -> None:
        """Send queued messages while the session's send quota allows."""
        conn = session.connection
        if conn is None or conn.blocked:
            return
        queue = session.queue
        inflight = session.inflight
        quota = session.send_quota
        now = self.now
        while queue and len(inflight) < quota and not conn.blocked:
            delivery = queue.popleft()
            if delivery.message.expired(now):
                self.stats.expired += 1
                if self.hooks.on_publish_dropped:
                    self.hooks.notify(self.hooks.on_publish_dropped, session.client_id,
                                      delivery.message, "expired")
                if self.hooks.on_qos_dropped:
                    self.hooks.notify(self.hooks.on_qos_dropped, session.client_id, None,
                                      delivery)
                continue
            if delivery.qos == 0:
                conn.send_qos0(delivery.message, delivery.retain, delivery.sub_ids)
            else:
                conn.send_delivery(delivery)
        for watcher in self.queue_watchers:
            watcher(session, False)

    def _redistribute_shared(self, session: Session) -> None:
        """Give a leaving member's unsent and unacknowledged QoS 1 shared messages to another
        online member; QoS 2 messages in flight stay with it [MQTT-4.8.2-4]."""
        if not session.queue and not session.inflight:
            return
        # What no other member takes, or has expired (onward delivery to another member would
        # not have started [MQTT-3.3.2-5]), stays: in flight under its packet identifier, to be
        # resent on reconnect [MQTT-4.4.0-1], or queued.
        now = self.now
        exclude = session.client_id
        hooks = self.hooks
        for packet_id, delivery in list(session.inflight.items()):
            group = delivery.share
            if (group is not None and delivery.qos == 1 and not delivery.message.expired(now)
                    and self._deliver_shared(group, delivery.message, exclude)):
                del session.inflight[packet_id]
                if hooks.on_qos_dropped:  # handed over: not this session's any more
                    hooks.notify(hooks.on_qos_dropped, exclude, packet_id, delivery)
        kept: List[Delivery] = []
        for delivery in list(session.queue):
            group = delivery.share
            if (group is None or delivery.message.expired(now)
                    or not self._deliver_shared(group, delivery.message, exclude)):
                kept.append(delivery)
            elif hooks.on_qos_dropped:
                hooks.notify(hooks.on_qos_dropped, exclude, None, delivery)
        session.keep_queued(kept)

    # -- $SYS -----------------------------------------------------------------------------------

    def sys_figures(self) -> Dict[str, Any]:
        """The $SYS figures, by topic suffix."""
        stats = self.stats
        connected = self.connected
        return {
            "version": f"twisted_mqtt {__version__}",
            "uptime": int(self.now - self.started_at),
            "time": int(time.time()),
            "clients/connected": connected,
            "clients/disconnected": len(self.sessions) - connected,
            "clients/total": len(self.sessions),
            "clients/maximum": stats.clients_maximum,
            "messages/received": stats.messages_received,
            "messages/sent": stats.messages_sent,
            "messages/dropped": stats.dropped,
            "messages/inflight": sum(len(s.inflight) for s in self.sessions.values()),
            "messages/retained": len(self.retained),
            "subscriptions/count": self.tree.count,
            "bytes/received": stats.bytes_received,
            "bytes/sent": stats.bytes_sent,
            "packets/received": stats.packets_received,
            "packets/sent": stats.packets_sent,
            **self.load.figures(),
            **{name: figure for source in self.figure_sources
               for name, figure in source().items()},
        }

    def _publish_sys(self) -> None:
        self.tick()
        self.load.update(self.now, self.stats)
        figures = self.sys_figures()
        if self.hooks.on_sys_info_tick:
            self.hooks.notify(self.hooks.on_sys_info_tick, figures)
        for suffix, figure in figures.items():
            message = Message("$SYS/broker/" + suffix, str(figure).encode(), 0, True)
            self.stats.messages_received -= 1  # the broker's own figures are not traffic
            self.stats.messages_received_by_qos[0] -= 1
            self.publish(message)
        self.flush()
        self._sys_call = self.clock.callLater(self.capabilities.sys_interval, self._publish_sys)
