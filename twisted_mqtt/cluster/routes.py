"""Routing between nodes: each node's interest in Redis, the cluster's table in memory, and the
message hand-off (QoS 0 over pub/sub, QoS 1/2 through a stream per node).

Each node owns ``{prefix}routes:{node}``, a hash whose fields are the filters its local
subscriptions hold; only the first local subscriber to a filter and the last one leaving
change it, and each change is announced on ``{prefix}routes``.  Every node mirrors the others'
filters in its own broker: another node is a session (``\\0NODE``, and ``\\0NODE\\0$share/G/F``
per shared subscription) whose delivery target is a ``RemoteTarget``, subscribed to that
node's filters with QoS 2 and Retain As Published, so the broker's one routing step (wildcards,
its topic cache, shared-group round robin) sends each message once to each interested node.
The receiving node routes it to its own sessions with their own subscription options.

What is routed during a reactor turn leaves in one script call, fenced by this node's epoch:
QoS 0 records batched into one ``PUBLISH`` per node on ``{prefix}node:{node}``, QoS 1/2 records
batched into one ``XADD`` per node on the stream ``{prefix}stream:{node}`` (consumer group
``nodes``).  A QoS 1/2 publisher is acknowledged only once its message is in the streams
(``Broker.ack_barriers``).  The receiving node acknowledges (``XACK``) a stream entry once its
messages are in its sessions; the entries of a dead node are claimed by the survivor that
removed it.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from twisted_mqtt.cluster.engine import RedisEngine
from twisted_mqtt.cluster.membership import HEIR_LEASES, Membership
from twisted_mqtt.cluster.wire import (
    RUN,
    decode_record,
    decode_run,
    encode_record,
    encode_run,
    identity,
    pack,
    record_identity,
    unpack,
)
from twisted_mqtt.codec import PublishRun
from twisted_mqtt.errors import AckRefused, CodecError
from twisted_mqtt.packets import ReasonCode, Subscription
from twisted_mqtt.session import Delivery, Message, Session
from twisted_mqtt.targets import ApplicationTarget
from twisted_mqtt.topics import validate_topic_filter

log = Logger()

NEVER = 0xFFFFFFFF
GROUP = "nodes"
"""The consumer group of every node's stream."""
READ_COUNT = 200
"""Stream entries read per command."""
MAX_HELD_RECORDS = 100_000
"""QoS 1/2 records held while the engine is unreachable; beyond it publishers are refused."""

SEND = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local heirs = {}
for i = 6, #ARGV, 4 do
  if ARGV[i + 1] == '' then
    redis.call('PUBLISH', ARGV[i], ARGV[i + 2])
  else
    local node, dead = ARGV[i + 3], nil
    for _ = 1, 8 do
      if redis.call('HEXISTS', KEYS[1], node) == 1 then break end
      local heir = redis.call('GET', ARGV[3] .. node)
      if not heir then break end
      dead, node = node, heir
    end
    if dead then
      heirs[#heirs + 1] = {node, dead, ARGV[i + 2]}
    else
      redis.call('XADD', ARGV[i + 1], '*', 'b', ARGV[i + 2])
      redis.call('PUBLISH', ARGV[i], '')
    end
  end
end
for _, h in ipairs(heirs) do
  redis.call('XADD', ARGV[4] .. h[1], '*', 'b', h[3], 'd', h[2])
  redis.call('PUBLISH', ARGV[5] .. h[1], '')
end
return 1
"""
"""Send a turn's batches (channel, stream or '' for pub/sub, batch, node) if this node's epoch
is still the member's: 0 (nothing sent) for a fenced, stale node.  ``ARGV[3..5]`` are the
prefixes of the heir keys, the streams and the channels: a QoS 1/2 batch for a node that was
removed goes to its heir's stream (following heirs that were removed too), marked with the
removed node's name (field ``d``), so that it reaches the sessions the heir adopted from it
rather than a stream nobody reads any more; after the direct batches, so that a copy of a
message routed to the heir directly comes first (the heir keeps one)."""

ROUTES = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then
  local kept = redis.call('HGET', KEYS[2], '\\0v') or '0'
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], '\\0v', kept)
end
local version = redis.call('HINCRBY', KEYS[2], '\\0v', 1)
for i = 4, #ARGV do
  local op = string.sub(ARGV[i], 1, 1)
  local f = string.sub(ARGV[i], 2)
  if op == '+' then redis.call('HSET', KEYS[2], f, '1') else redis.call('HDEL', KEYS[2], f) end
end
local ops = {}
for i = 4, #ARGV do ops[#ops + 1] = ARGV[i] end
redis.call('PUBLISH', KEYS[3], cjson.encode({ARGV[1], ARGV[3], ops, ARGV[2], version}))
return 1
"""
"""Change this node's routes (``ARGV[3]`` 1: replace them all), fenced by its epoch, and
announce the change as JSON ``[node, "1" or "0", ["+filter" or "-filter", ...], epoch,
version]`` (a filter may hold any character but U+0000, a line break too).  The version, the
hash's field ``\\0v``, grows by one with each change of the node's routes."""

ADOPTED = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""
"""Record that the sessions of the removed node ``KEYS[1]`` is about were adopted (for as
long as its heir is known) and announce it as JSON ``[node, "adopted", [], 0, 0]``: every
node then drops the routes it kept for the removed node."""

READ = """
return {redis.call('HGET', KEYS[1], ARGV[1]) or '0', redis.call('HKEYS', KEYS[2]),
        redis.call('HGET', KEYS[2], '\\0v') or '0'}
"""
"""A member's epoch, its route hash's fields and version, read at once."""

Version = Tuple[int, int]
"""(epoch, version) of a node's routes: later ones compare greater."""


class RemoteTarget(ApplicationTarget):
    """Another node as the delivery target of the session that stands for its subscriptions
    (``share``: the one shared subscription it stands for, "" for its plain ones)."""

    remote = True

    def __init__(self, router: Router, node: str, share: str) -> None:
        self.router = router
        self.node = node
        self.share = share

    def send_qos0(self, message: Message, retain: bool, sub_ids: Tuple[int, ...]) -> None:
        """Hand a QoS 0 message to the node (pub/sub, batched per turn)."""
        self.router.send(self.node, message, retain, self.share, 0)

    def send_delivery(self, delivery: Delivery) -> None:
        """Hand a QoS 1/2 message to the node (its stream, batched per turn)."""
        self.router.send(self.node, delivery.message, delivery.retain, self.share,
                         delivery.qos)

    def send_run(self, run: PublishRun, origin: str) -> None:
        """Hand a run of plain QoS 0 packets from client ``origin`` to the node whole
        (``Broker.forward_run``)."""
        self.router.send_run(self.node, run, origin)

    def __repr__(self) -> str:
        return f"<node {self.node}{' ' + self.share if self.share else ''}>"


class _Peer:
    """What this node mirrors of another: the sessions standing for its filters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.filters: Set[str] = set()
        self.sessions: Dict[str, Session] = {}
        """By shared filter ("" for the session of its plain filters)."""


class Router:
    """This node's part of cluster routing (see the module's docstring)."""

    def __init__(self, broker: Any, engine: RedisEngine, members: Membership) -> None:
        self.broker = broker
        self.engine = engine
        self.members = members
        self.node = members.node
        self.peers: Dict[str, _Peer] = {}
        self._versions: Dict[str, Version] = {}
        """The version of each node's routes applied here."""
        self.claim_handler: Optional[Callable[[str, Message, str, bytes], None]] = None
        """Called with (dead node, message, shared filter, identity) for each message claimed
        from a dead node's stream or routed to it after its removal; by default the message
        goes to the current subscribers of its topic."""
        self.ack_writer: Optional[Callable[[List[Tuple[Any, ...]]],
                                           Optional[Deferred[bool]]]] = None
        """Called with the commands acknowledging the stream entries just routed (``XACK``,
        ``XDEL``) when their acknowledgement waits for a write of the sessions: a Deferred
        firing True once they went in that write (atomic with it), or None/False to send them
        after it (``ClusterSessions.acknowledge_with_write``)."""
        self.forward_handler: Optional[Callable[[str, Message, bytes], None]] = None
        """Called with (client id, message, identity) for each message another node forwarded
        to one session here (the shared filter of its record is U+0000 + client id)."""
        self.identity_watcher: Optional[Callable[[Message, bytes], None]] = None
        """When set, called with (message, identity) for each QoS 1/2 message received for
        this node's subscriptions, before it is routed (identity b"" for a record without
        one)."""
        self._numbered: Dict[int, bytes] = {}
        """The identity of each QoS 1/2 message routed now (by the message's ``id``)."""
        self._number = 0
        self._forwards: Dict[str, List[bytes]] = {}
        self.stats: Dict[str, int] = {"sent": 0, "received": 0, "dropped": 0, "batches": 0,
                                      "claimed": 0}
        """Messages sent to and received from other nodes, QoS 0 messages dropped while the
        engine was unreachable, batches sent."""
        self._qos0: Dict[str, List[bytes]] = {}
        self._qos12: Dict[str, List[bytes]] = {}
        self._held: Dict[int, Deferred[Any]] = {}
        self._turn: List[Deferred[Any]] = []
        self._waiting: List[Deferred[Any]] = []
        self._pending_changes: List[str] = []
        self._full = False
        self._flush_call: Any = None
        self._reading = False
        self._woken = False
        """A wake-up came while a read of this node's stream was under way: read again once
        it is answered (its reply may have been sent before the new entries)."""
        self._unacknowledged: List[Tuple[str, List[Any]]] = []
        self._full_queues: Set[Session] = set()
        """Connected local sessions whose queue is above half its bound: this node's stream
        is not read (its entries wait in Redis) until they are down to a quarter."""
        self._backlog: Optional[Tuple[str, str, str, List[Any]]] = None
        """(node, stream, start, entries) read but not yet routed when a queue filled up."""
        self._poll_call: Any = None
        self._kept: Dict[str, Any] = {}
        """Removed node -> the call that drops its routes if its heir never announces that
        it adopted its sessions."""
        self._claimed: Dict[str, int] = {}
        """Messages claimed so far from each dead node's stream being claimed."""
        self._adopted: List[str] = []
        """Removed nodes whose sessions this node adopted, announced with its next routes."""
        self.routes_channel = engine.key("routes")

    # -- keys -----------------------------------------------------------------------------------

    def channel(self, node: str) -> str:
        """The pub/sub channel of ``node``."""
        return self.engine.key("node", node)

    def stream(self, node: str) -> str:
        """The stream of QoS 1/2 messages for ``node``."""
        return self.engine.key("stream", node)

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Watch the broker's interest, the members and the channels."""
        broker = self.broker
        broker.interest_watchers.append(self._interest)
        broker.ack_barriers.append(self._barrier)
        broker.queue_watchers.append(self._queue_changed)
        self.members.watch(self._member)
        self.members.watch_serving(self._serving)
        self.engine.watch(self._engine)
        self.engine.subscribe(self.routes_channel, self._routes_changed)
        self.engine.subscribe(self.channel(self.node.name), self._inbox)
        self._poll_call = self.members.clock.callLater(self.members.lease, self._poll)

    def stop(self) -> None:
        """Stop watching the broker."""
        broker = self.broker
        if self._interest in broker.interest_watchers:
            broker.interest_watchers.remove(self._interest)
        if self._barrier in broker.ack_barriers:
            broker.ack_barriers.remove(self._barrier)
        if self._queue_changed in broker.queue_watchers:
            broker.queue_watchers.remove(self._queue_changed)
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        self._poll_call = None
        for call in self._kept.values():
            if call.active():
                call.cancel()
        self._kept.clear()
        for name in list(self.peers):
            self._forget(name)

    def _serving(self, serving: bool) -> None:
        if not serving:
            for name in list(self.peers):
                self._forget(name)
            self._fail_held("this node is not part of the cluster",
                            ReasonCode.SERVER_SHUTTING_DOWN)
            return
        engine = self.engine
        engine.command("XGROUP", "CREATE", self.stream(self.node.name), GROUP, "0",
                       "MKSTREAM").addErrback(lambda _: None).addCallback(
            lambda _: self._read_stream(self.node.name, "0"))
        self._pending_changes = ["+" + f for f in self.broker.local_filters()]
        self._full = True
        self._schedule()
        for name in self.members.members:
            if name != self.node.name:
                self._load(name)

    def _engine(self, up: bool) -> None:
        if not up or not self.node.serving:
            return
        # Announcements made while the channels were down are lost: read every member's
        # routes again, and write this node's whole list again.
        for name in self.members.members:
            if name != self.node.name:
                self._load(name)
        self._pending_changes = ["+" + f for f in self.broker.local_filters()]
        self._full = True
        self._schedule()
        unacknowledged, self._unacknowledged = self._unacknowledged, []
        for stream, ids in unacknowledged:
            self._acknowledge(stream, ids)
        self._read_stream(self.node.name, ">")

    # -- this node's interest -------------------------------------------------------------------

    def _interest(self, topic_filter: str, present: bool) -> None:
        self._pending_changes.append(("+" if present else "-") + topic_filter)
        self._schedule()

    # -- the other nodes' interest --------------------------------------------------------------

    def _member(self, event: str, name: str) -> None:
        if name == self.node.name:
            if event == "claimed":
                self._claim(name)
            return
        if event == "up":
            self._load(name)
        elif event == "down":
            self._removed(name)
        elif event == "claimed":
            self._claim(name)

    def _removed(self, name: str) -> None:
        """``name`` left: its routes are dropped at once after a clean leave; after its
        removal they are kept (what is routed there goes to its heir, for the sessions it
        adopts) until its heir announces the adoption, or its heir is forgotten."""
        engine = self.engine
        engine.command("MGET", engine.key("heir", name), engine.key("adopted", name)
                       ).addCallbacks(self._heir_read, lambda _: self._retire(name),
                                      callbackArgs=(name,))

    def _heir_read(self, reply: Any, name: str) -> None:
        heir, adopted = reply
        if heir is None or adopted is not None:
            self._retire(name)
        elif name not in self._kept:
            self._kept[name] = self.members.clock.callLater(
                self.members.lease * HEIR_LEASES, self._retire, name)

    def _retire(self, name: str) -> None:
        """Drop the routes of ``name``, unless it came back meanwhile."""
        call = self._kept.pop(name, None)
        if call is not None and call.active():
            call.cancel()
        if name not in self.members.members and name != self.node.name:
            self._forget(name)

    def adopted(self, name: str) -> None:
        """This node adopted the sessions of the removed node ``name`` (and routes to them):
        drop its routes here, and announce it after this node's new routes."""
        if name == self.node.name:
            return
        self._retire(name)
        self._adopted.append(name)
        self._schedule()

    def _announce_adopted(self) -> None:
        engine = self.engine
        adopted, self._adopted = self._adopted, []
        for name in adopted:
            engine.script(ADOPTED, [engine.key("adopted", name), self.routes_channel],
                          [json.dumps([name, "adopted", [], 0, 0]),
                           int(self.members.lease * HEIR_LEASES * 1000)]
                          ).addErrback(lambda _: None)  # else dropped with the heir

    def _load(self, name: str) -> None:
        engine = self.engine
        engine.script(READ, [engine.key("nodes"), self.members.route_key(name)],
                      [name]).addCallbacks(self._loaded, lambda _: None, callbackArgs=(name,))

    def _loaded(self, reply: List[Any], name: str) -> None:
        try:
            version = (int(reply[0]), int(reply[2]))
            filters = {f.decode("utf-8") for f in reply[1] if f != b"\0v"}
        except (TypeError, ValueError, IndexError, AttributeError):
            log.warn("cluster: unreadable routes of node {name} ignored", name=name)
            return
        if name not in self.members.members or version < self._versions.get(name, (0, 0)):
            return  # a newer announcement was applied meanwhile
        self._versions[name] = version
        self._replace(name, filters)

    def _routes_changed(self, message: bytes) -> None:
        try:
            name, full, ops, epoch, number = json.loads(message)
            version = (int(epoch), int(number))
        except (ValueError, TypeError):
            log.warn("cluster: bad route announcement ignored")
            return
        if not isinstance(ops, list):
            ops = []  # Lua's cjson encodes an empty list as {}
        if full == "adopted":
            if isinstance(name, str):
                self._retire(name)
            return
        if name == self.node.name or name not in self.members.members:
            return
        known = self._versions.get(name, (0, 0))
        if version <= known:
            return
        follows = version == (known[0], known[1] + 1) or (version[0] > known[0]
                                                          and version[1] == 1)
        if full != "1" and not follows:
            self._load(name)  # an announcement was missed: read the whole list
            return
        self._versions[name] = version
        if full == "1":
            self._replace(name, {op[1:] for op in ops if op[:1] == "+"})
            return
        for op in ops:
            if op[:1] == "+":
                self._add(name, op[1:])
            elif op[:1] == "-":
                self._remove(name, op[1:])

    def _replace(self, name: str, filters: Set[str]) -> None:
        peer = self.peers.get(name)
        current = set(peer.filters) if peer is not None else set()
        for topic_filter in current - filters:
            self._remove(name, topic_filter)
        for topic_filter in filters - current:
            self._add(name, topic_filter)

    def _add(self, name: str, topic_filter: str) -> None:
        peer = self.peers.get(name)
        if peer is not None and topic_filter in peer.filters:
            return
        try:
            validate_topic_filter(topic_filter)
        except CodecError as error:
            log.warn("cluster: node {node} holds a bad filter {filter!r}, ignored ({error})",
                     node=name, filter=topic_filter, error=error)
            return
        if peer is None:
            peer = self.peers[name] = _Peer(name)
        peer.filters.add(topic_filter)
        share = topic_filter if topic_filter.startswith("$share/") else ""
        session = peer.sessions.get(share)
        if session is None:
            session = Session(f"\x00{name}\x00{share}" if share else f"\x00{name}")
            session.expiry_interval = NEVER
            session.connection = RemoteTarget(self, name, share)
            peer.sessions[share] = session
            self.broker.sessions[session.client_id] = session
        self.broker.subscribe(session, Subscription(topic_filter, 2, retain_as_published=True),
                              None)

    def _remove(self, name: str, topic_filter: str) -> None:
        peer = self.peers.get(name)
        if peer is None or topic_filter not in peer.filters:
            return
        peer.filters.discard(topic_filter)
        share = topic_filter if topic_filter.startswith("$share/") else ""
        session = peer.sessions[share]
        self.broker.unsubscribe(session, topic_filter)
        if not session.subscriptions:
            del peer.sessions[share]
            self.broker.sessions.pop(session.client_id, None)
        if not peer.filters:
            del self.peers[name]

    def _forget(self, name: str) -> None:
        self._versions.pop(name, None)
        peer = self.peers.get(name)
        if peer is not None:
            for topic_filter in list(peer.filters):
                self._remove(name, topic_filter)

    def remote_filters(self, name: str) -> Set[str]:
        """The filters this node knows ``name`` holds."""
        peer = self.peers.get(name)
        return set(peer.filters) if peer is not None else set()

    # -- sending --------------------------------------------------------------------------------

    def send(self, node: str, message: Message, retain: bool, share: str, qos: int) -> None:
        """Queue ``message`` for ``node`` (sent at the end of this reactor turn); ``$SYS``
        messages stay on their node (each node publishes its own figures)."""
        if message.topic.startswith("$SYS"):
            return
        ident = b""
        if qos:
            ident = self._numbered.get(id(message), b"")
            if not ident:
                self._number += 1
                ident = self._numbered[id(message)] = identity(self.node.epoch, self._number)
        record = encode_record(message, retain, share, self.broker.now, ident)
        if record is None:
            return
        if qos == 0:
            if not self.engine.up:
                self.stats["dropped"] += 1
                return
            self._qos0.setdefault(node, []).append(record)
        else:
            # A message forwarded to one session goes after this turn's other messages for
            # that node, so that a copy routed there directly arrives first.
            records = self._forwards if share[:1] == "\0" else self._qos12
            records.setdefault(node, []).append(record)
            if id(message) not in self._held:
                waiter: Deferred[Any] = Deferred()
                self._held[id(message)] = waiter
                self._turn.append(waiter)
        self.stats["sent"] += 1
        self._schedule()

    def send_run(self, node: str, run: PublishRun, origin: str) -> None:
        """Queue a run of plain QoS 0 packets for ``node`` as one record (the publishing
        connection keeps ``$SYS`` topics out of runs)."""
        if not self.engine.up:
            self.stats["dropped"] += run.count
            return
        self._qos0.setdefault(node, []).append(encode_run(run, origin))
        self.stats["sent"] += run.count
        self._schedule()

    def _barrier(self, message: Optional[Message]) -> Optional[Deferred[Any]]:
        """Hold the acknowledgement of a QoS 1/2 message routed to other nodes until it is in
        their streams."""
        if message is None:
            return None
        waiter = self._held.pop(id(message), None)
        if waiter is None:
            return None
        held: Deferred[Any] = Deferred()
        waiter.chainDeferred(held)
        return held

    def _schedule(self) -> None:
        if self._flush_call is None:
            self._flush_call = self.members.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Send what this turn routed to other nodes, and this node's route changes."""
        self._flush_call = None
        self._held.clear()
        self._numbered.clear()
        for node, records in self._forwards.items():
            self._qos12.setdefault(node, []).extend(records)
        self._forwards = {}
        engine = self.engine
        if self._pending_changes and engine.up and self.node.serving:
            self._send_routes()
        if self._adopted and engine.up:
            self._announce_adopted()
        qos0, self._qos0 = self._qos0, {}
        if not (qos0 or self._qos12):
            return
        if not engine.up or not self.members.check():
            self.stats["dropped"] += sum(len(records) for records in qos0.values())
            if len(self._qos12) and sum(map(len, self._qos12.values())) > MAX_HELD_RECORDS:
                self._fail_held("too many messages held while the cluster engine is down",
                                ReasonCode.QUOTA_EXCEEDED)
            self._waiting.extend(self._turn)
            self._turn = []
            return
        qos12, self._qos12 = self._qos12, {}
        waiters = self._waiting + self._turn
        self._waiting, self._turn = [], []
        args: List[Any] = [self.node.name, self.node.epoch, engine.key("heir", ""),
                           self.stream(""), self.channel("")]
        for node, records in qos0.items():
            args += [self.channel(node), "", pack(records), ""]
        for node, records in qos12.items():
            args += [self.channel(node), self.stream(node), pack(records), node]
        self.stats["batches"] += 1
        engine.script(SEND, [engine.key("nodes")], args).addCallbacks(
            self._sent, self._not_sent, callbackArgs=(waiters,), errbackArgs=(qos12, waiters))

    def pending(self) -> Optional[Deferred[Any]]:
        """What fires once the QoS 1/2 messages routed to other nodes in this turn are in
        their streams (None: there are none)."""
        if not self._turn:
            return None
        waiter: Deferred[Any] = Deferred()
        self._turn.append(waiter)
        return waiter

    def _sent(self, reply: Any, waiters: List[Deferred[Any]]) -> None:
        if int(reply) == 1:
            for waiter in waiters:
                waiter.callback(None)
            self.broker.flush()  # the acknowledgements just released
            return
        log.warn("cluster node {name}: messages refused, epoch {epoch} is no longer a member",
                 name=self.node.name, epoch=self.node.epoch)
        refused = AckRefused("this node was fenced off the cluster",
                             ReasonCode.SERVER_SHUTTING_DOWN)
        for waiter in waiters:
            waiter.errback(refused)
        self.broker.flush()
        self.members.fenced()

    def _not_sent(self, failure: Any, qos12: Dict[str, List[bytes]],
                  waiters: List[Deferred[Any]]) -> None:
        for node, records in qos12.items():
            self._qos12.setdefault(node, [])[:0] = records
        self._waiting[:0] = waiters
        log.debug("cluster: batch not sent ({error}); held until the engine is back",
                  error=failure.value)

    def _fail_held(self, reason: str, code: int) -> None:
        waiters = self._waiting + self._turn
        self._waiting, self._turn, self._qos12 = [], [], {}
        self._held.clear()
        refused = AckRefused(reason, code)
        for waiter in waiters:
            waiter.errback(refused)
        self.broker.flush()

    def _send_routes(self) -> None:
        changes, self._pending_changes = self._pending_changes, []
        full, self._full = self._full, False
        engine = self.engine
        engine.script(ROUTES, [engine.key("nodes"), self.members.route_key(self.node.name),
                               self.routes_channel],
                      [self.node.name, self.node.epoch, "1" if full else "0", *changes]
                      ).addErrback(self._routes_not_sent, changes, full)

    def _routes_not_sent(self, failure: Any, changes: List[str], full: bool) -> None:
        if full:
            self._full = True
            self._pending_changes = ["+" + f for f in self.broker.local_filters()]
        else:
            self._pending_changes[:0] = changes

    # -- receiving ------------------------------------------------------------------------------

    def _inbox(self, batch: bytes) -> None:
        if not batch:
            self._read_stream(self.node.name, ">")
            return
        if not self.members.check():  # a node paused past its lease learns it here first
            return
        self._deliver(batch)
        self.broker.flush()

    def _deliver(self, batch: bytes) -> None:
        broker = self.broker
        now = broker.tick()
        for record in unpack(batch):
            if record[:1] and record[0] & RUN:
                self._deliver_run(record)
                continue
            try:
                message, share = decode_record(record, now)
            except Exception as error:
                log.warn("cluster: bad record dropped ({error})", error=error)
                continue
            self.stats["received"] += 1
            ident = record_identity(record)
            if ident:  # copies of it forwarded from here keep it
                self._numbered[id(message)] = ident
            if share[:1] == "\0":
                if self.forward_handler is not None:
                    self.forward_handler(share[1:], message, ident)
            elif share:
                if not broker.publish_shared(message, share):
                    broker.dropped(share, message, "no member of the shared group here")
            else:
                if message.qos and self.identity_watcher is not None:
                    self.identity_watcher(message, ident)
                broker.publish(message, local_only=True)
            if ident:
                del self._numbered[id(message)]

    def _deliver_run(self, record: bytes) -> None:
        """Send a run another node handed over to this node's subscribers: as one slice where
        they all take it unchanged, else one message at a time."""
        try:
            run, origin = decode_run(record)
        except (ValueError, IndexError, UnicodeDecodeError) as error:
            log.warn("cluster: bad record dropped ({error})", error=error)
            return
        self.stats["received"] += run.count
        broker = self.broker
        if broker.forward_run(run, origin, local_only=True):
            return
        try:
            publishes = run.publishes()
        except CodecError as error:
            log.warn("cluster: bad record dropped ({error})", error=error)
            return
        for fields in publishes:
            broker.publish(Message(run.topic, fields[1], 0, False, origin=origin or None,
                                   frame=fields[7], frame_v5=run.v5), local_only=True)

    def _queue_changed(self, session: Session, grew: bool) -> None:
        """Note a connected session's queue going above half its bound, and read again once
        every such queue is down to a quarter of it."""
        queue = session.queue
        caps = self.broker.capabilities
        if grew:
            if session.connection is not None and (
                    len(queue) * 2 > caps.maximum_queued_messages
                    or queue.size * 2 > caps.maximum_queued_bytes):
                self._full_queues.add(session)
        elif session in self._full_queues and (
                len(queue) * 4 <= caps.maximum_queued_messages
                and queue.size * 4 <= caps.maximum_queued_bytes):
            self._full_queues.discard(session)
            if not self._full_queues:
                self.members.clock.callLater(0, self._resume)

    def _resume(self) -> None:
        """Route the entries left when a queue filled up, then read the stream again."""
        if self._full_queues or self._reading:
            return
        backlog, self._backlog = self._backlog, None
        if backlog is not None and self.members.check():  # else they wait for the heir
            node, stream, start, entries = backlog
            self._stream_read([(stream, entries)], node, stream, start)
        elif self._woken:
            self._read_stream(self.node.name, ">")

    def _read_stream(self, node: str, start: str) -> None:
        if self._reading or self._full_queues or self._backlog is not None:
            self._woken = True
            return
        if not self.members.check():
            return
        self._reading = True
        self._woken = False
        stream = self.stream(node)
        self.engine.command("XREADGROUP", "GROUP", GROUP, self.node.name, "COUNT", READ_COUNT,
                            "STREAMS", stream, start).addCallbacks(
            self._stream_read, self._stream_failed, callbackArgs=(node, stream, start))

    def _stream_failed(self, failure: Any) -> None:
        self._reading = False

    def _stream_read(self, reply: Any, node: str, stream: str, start: str) -> None:
        self._reading = False
        try:
            entries = reply[0][1] if reply else []
        except (TypeError, IndexError, KeyError):
            log.warn("cluster: unreadable reply from stream {stream} ignored (read again at "
                     "the next poll)", stream=stream)
            return
        if not entries:
            if start == "0" or self._woken:
                self._read_stream(node, ">")
            return
        ids = []
        claimed = 0
        for index, (entry_id, fields) in enumerate(entries):
            if self._full_queues:  # the rest waits until the local queues drain
                self._backlog = (node, stream, start, entries[index:])
                break
            ids.append(entry_id)
            if len(fields) > 3:  # routed to a node this one removed: for its sessions
                dead = _text(fields[3])
                count = self._route_claimed(dead, fields[1])
                claimed += count
                log.info("cluster: {count} messages routed to node {dead} after its removal "
                         "came to its heir", count=count, dead=dead)
            elif fields:
                self._deliver(fields[1])
        if claimed:
            self.stats["claimed"] += claimed
        self.broker.flush()
        held = self.broker.ack_held(None)  # e.g. the sessions' write of these deliveries
        if held is None:
            self._acknowledge(stream, ids)
        else:
            writer = self.ack_writer
            went = writer([("XACK", stream, GROUP, *ids), ("XDEL", stream, *ids)]
                          ) if writer is not None else None
            held.addBoth(lambda _: went).addCallback(
                lambda done: None if done else self._acknowledge(stream, ids))
        if self._backlog is None:
            self._read_stream(node, start if start == "0" else ">")

    def _acknowledge(self, stream: str, ids: List[Any]) -> None:
        """Acknowledge and delete stream entries whose messages are in the sessions; kept to
        try again if the engine does not answer (read again, they would be delivered twice)."""
        engine = self.engine
        engine.command("XACK", stream, GROUP, *ids).addCallbacks(
            lambda _: engine.command("XDEL", stream, *ids), self._not_acknowledged,
            errbackArgs=(stream, ids)).addErrback(lambda _: None)

    def _not_acknowledged(self, failure: Any, stream: str, ids: List[Any]) -> None:
        self._unacknowledged.append((stream, ids))

    def _poll(self) -> None:
        """Read this node's stream once a lease, in case a wake-up message was lost."""
        self._poll_call = self.members.clock.callLater(self.members.lease, self._poll)
        self._full_queues.clear()  # a client that stopped reading holds it a lease at most
        if self._backlog is not None:
            self._resume()
        elif self.engine.up and self.node.serving:
            self._read_stream(self.node.name, ">")

    def _claim(self, dead: str) -> None:
        """Take over the stream of a dead node: its entries not yet acknowledged, those it
        had read (pending) and those it had not, ``READ_COUNT`` at a time, each batch once
        the local queues have room; then delete the stream."""
        stream = self.stream(dead)
        self.engine.command("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM").addErrback(
            lambda _: None).addCallback(lambda _: self._claim_pending(dead, stream, "0-0"))

    def _claim_step(self, step: Callable[..., None], *args: Any) -> bool:
        """Whether the claim may go on now; if local queues are full, or the engine failed,
        ``step(*args)`` is tried again later (while this node serves)."""
        if not self.members.check():
            return False
        if self._full_queues:
            self.members.clock.callLater(self.members.lease / 8, step, *args)
            return False
        return True

    def _claim_failed(self, failure: Any, step: Callable[..., None], *args: Any) -> None:
        log.warn("cluster: claiming the stream of dead node {dead} failed ({error}); trying "
                 "again", dead=args[0], error=failure.value)
        self.members.clock.callLater(self.members.lease, step, *args)

    def _claim_pending(self, dead: str, stream: str, cursor: str) -> None:
        if not self._claim_step(self._claim_pending, dead, stream, cursor):
            return
        self.engine.command("XAUTOCLAIM", stream, GROUP, self.node.name, 0, cursor,
                            "COUNT", READ_COUNT).addCallbacks(
            self._claimed_pending, self._claim_failed, callbackArgs=(dead, stream),
            errbackArgs=(self._claim_pending, dead, stream, cursor))

    def _claimed_pending(self, reply: Any, dead: str, stream: str) -> None:
        entries = [entry for entry in reply[1] if entry] if reply else []
        self._hand_over(dead, stream, entries)
        cursor = _text(reply[0]) if reply else "0-0"
        if cursor != "0-0":
            self._claim_pending(dead, stream, cursor)
        else:
            self._claim_unread(dead, stream)

    def _claim_unread(self, dead: str, stream: str) -> None:
        if not self._claim_step(self._claim_unread, dead, stream):
            return
        self.engine.command("XREADGROUP", "GROUP", GROUP, self.node.name, "COUNT", READ_COUNT,
                            "STREAMS", stream, ">").addCallbacks(
            self._claimed_unread, self._claim_failed, callbackArgs=(dead, stream),
            errbackArgs=(self._claim_unread, dead, stream))

    def _claimed_unread(self, reply: Any, dead: str, stream: str) -> None:
        entries = reply[0][1] if reply else []
        if entries:
            self._hand_over(dead, stream, entries)
            self._claim_unread(dead, stream)
            return
        log.info("cluster: {count} messages of dead node {dead} claimed",
                 count=self._claimed.pop(dead, 0), dead=dead)
        self.engine.command("DEL", stream).addErrback(lambda _: None)

    def _hand_over(self, dead: str, stream: str, entries: List[Any]) -> None:
        if not entries:
            return
        count = 0
        for _entry_id, fields in entries:
            if fields:
                count += self._route_claimed(dead, fields[1])
        self.stats["claimed"] += count
        self._claimed[dead] = self._claimed.get(dead, 0) + count
        self.broker.flush()

    def _route_claimed(self, dead: str, batch: bytes) -> int:
        """Route the messages of a batch meant for the dead node ``dead`` as it would have
        (``claim_handler``); return how many there were."""
        broker = self.broker
        now = broker.tick()
        handler = self.claim_handler
        count = 0
        for record in unpack(batch):
            message, share = decode_record(record, now)
            count += 1
            if handler is not None:
                handler(dead, message, share, record_identity(record))
            else:
                broker.publish(Message(message.topic, message.payload, message.qos, False,
                                       message.properties, message.expires_at,
                                       message.origin))
        return count


def _text(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
