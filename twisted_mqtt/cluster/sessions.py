"""Cluster-wide sessions: a directory of session owners in Redis, fenced writes of session
state, hand-over of a client id between nodes, and adoption of a dead node's sessions.

Every session is owned by one node.  The directory (``sessions:owner``) maps each client id
connected or kept anywhere to a *token* ``REVISION:EPOCH:NODE``; it changes only through the
scripts below, each a compare-and-set on the token, so a node that lost a session (taken over,
adopted while it was paused) can never write it again: every write of session state carries
the writer's token and is refused by the script when the token is no longer the owner's.

A session's state is written behind by a ``Recorder`` (``twisted_mqtt.storage.recorder``) whose
store, ``FencedStore``, turns each batch into one script call that applies each session's
records only if its token is current, in the Redis store's layout (``session:subs:CLIENT``,
``session:msgs:CLIENT``...; ``twisted_mqtt.storage.redis``).  A session moves by being read
back (``read_session``) and restored (``restore_session``), as a restart restores it.

Hand-over (client id C owned by live node A connects on node B): B asks A on A's channel; A
takes over its connection (v5 DISCONNECT 0x8E), commits C's last changes, and moves the token
to B in one script; B, told so (or at the timeout, by setting the token itself: A's later
writes are then refused), reads C's state and opens the session as a single broker would.
For a lease after that, A keeps C's subscriptions as a *forwarder*: what other nodes still
route to A for C goes to B, addressed to C, and B keeps one copy of a message that reaches C
both ways (the message's identity, ``wire.record_identity``).
docs/cluster.md ("Sessions") describes it with its timings.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.logger import Logger

from twisted_mqtt.hooks import Hook
from twisted_mqtt.interfaces import ClientInfo
from twisted_mqtt.packets import ReasonCode
from twisted_mqtt.session import Delivery, Message, Session
from twisted_mqtt.storage import (
    Batch,
    StoredDelivery,
    StoredSession,
    StoredState,
    StoreError,
    _rows,
)
from twisted_mqtt.storage._pack import pack_head
from twisted_mqtt.storage.recorder import (
    Recorder,
    Restored,
    publish_due_wills,
    restore_session,
    stored_message,
)
from twisted_mqtt.storage.redis import RedisStore, read_session
from twisted_mqtt.targets import ApplicationTarget
from twisted_mqtt.topics import matches

log = Logger()

HANDOVER_TIMEOUT = 2.0
"""Seconds a node waits for the owner of a client id to hand its session over before taking
it by force (the owner's later writes are then refused)."""

CLAIM_ATTEMPTS = 5
"""How many times a CONNECT tries to become its session's owner when other nodes change the
directory under it (each attempt reads the owner again); then it is refused with 0x88."""

MAX_SCRIPT_ARGS = 512
"""The most arguments one command carries inside a script (Lua's ``unpack`` has a limit)."""

# -- the scripts ---------------------------------------------------------------------------------

CLAIM = """
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if cur ~= ARGV[2] then return {0, cur} end
local rev = 0
if cur ~= '' then
  local r, e, n = string.match(cur, '^(%d+):(%d+):(.*)$')
  rev = tonumber(r)
  redis.call('SREM', ARGV[4] .. n, ARGV[1])
end
local token = (rev + 1) .. ':' .. ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], token)
local e, n = string.match(ARGV[3], '^(%d+):(.*)$')
redis.call('SADD', ARGV[4] .. n, ARGV[1])
if ARGV[5] ~= '' then redis.call('HDEL', ARGV[5], ARGV[1]) end
for i = 6, #ARGV do redis.call('DEL', ARGV[i]) end
return {1, token}
"""
"""Make ``EPOCH:NODE`` (ARGV[3]) the owner of client id ARGV[1] if its token is ARGV[2] ('':
none): {1, new token} or {0, the token found}.  ARGV[4] prefixes the per-node sets of client
ids; ARGV[5] (a heads hash, or '') and ARGV[6...] (keys) are the records to delete with it (a
session that ended on the node handing it over)."""

END = """
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local r, e, n = string.match(ARGV[2], '^(%d+):(%d+):(.*)$')
redis.call('SREM', ARGV[3] .. n, ARGV[1])
redis.call('HDEL', ARGV[4], ARGV[1])
for i = 5, #ARGV do redis.call('DEL', ARGV[i]) end
return 1
"""
"""A session ended on its owner (token ARGV[2]): its directory entry and records go."""

WRITE = """
local refused = {}
local i = 2
for g = 1, tonumber(ARGV[1]) do
  local client, token, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local ok = (redis.call('HGET', KEYS[1], client) or '') == token
  if not ok then table.insert(refused, client) end
  for c = 1, count do
    local argc = tonumber(ARGV[i])
    if ok then redis.call(unpack(ARGV, i + 1, i + argc)) end
    i = i + 1 + argc
  end
end
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + argc))
  i = i + 1 + argc
end
return refused
"""
"""Apply groups of commands (ARGV[1] groups: client id, token, command count, then each
command as its argument count and arguments), each group only if its client id's token is the
one given, then the commands that follow the groups, whatever the tokens (the ``XACK`` of the
stream entries whose messages the groups record); the client ids refused."""

READ = """
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return false end
return {redis.call('HGET', KEYS[2], ARGV[1]) or '', redis.call('HGETALL', KEYS[3]),
        redis.call('HGETALL', KEYS[4]), redis.call('HGETALL', KEYS[5]),
        redis.call('SMEMBERS', KEYS[6])}
"""
"""The records of client id ARGV[1] (head, subs, msgs, flight, qos2), if its owner's token is
ARGV[2]."""

ADOPT = """
local members = redis.call('SMEMBERS', ARGV[4] .. ARGV[1])
local out = {}
local e0, me = string.match(ARGV[3], '^(%d+):(.*)$')
for _, client in ipairs(members) do
  local cur = redis.call('HGET', KEYS[1], client) or ''
  local r, e, n = string.match(cur, '^(%d+):(%d+):(.*)$')
  if r and n == ARGV[1] and e ~= ARGV[2] then
    local token = (tonumber(r) + 1) .. ':' .. ARGV[3]
    redis.call('HSET', KEYS[1], client, token)
    redis.call('SADD', ARGV[4] .. me, client)
    table.insert(out, client)
    table.insert(out, token)
  end
  if not r or n ~= ARGV[1] or e ~= ARGV[2] then
    redis.call('SREM', ARGV[4] .. ARGV[1], client)
  end
end
return out
"""
"""Take every session of node ARGV[1] not of its live epoch ARGV[2] ('0': none) for
``EPOCH:NODE`` ARGV[3]: client id, new token, ... ."""


def token_owner(token: str) -> Tuple[int, str]:
    """The (epoch, node name) of a directory token."""
    _rev, epoch, node = token.split(":", 2)
    return int(epoch), node


def _text(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def _pairs(flat: List[Any]) -> Dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


# -- session state that moves ---------------------------------------------------------------------


def install(broker: Any, stored: StoredSession) -> Tuple[Optional[Session], Restored]:
    """Restore ``stored`` as an offline session of ``broker`` (as a restart would: a session
    whose client was connected is taken to have disconnected now); wills that fell due, or of
    a session that ended with its connection, are published (with the identity that set them,
    checked by the authorizers)."""
    restored = Restored()
    session = restore_session(broker, stored, broker.tick(), restored)
    publish_due_wills(broker, restored)
    return session, restored


class Forwarder(ApplicationTarget):
    """The target of a session handed over to node ``node``, kept here for a while: the QoS
    1/2 messages routed here for it go to that node, addressed to its client id."""

    def __init__(self, router: Any, node: str, client_id: str) -> None:
        self.router = router
        self.node = node
        self.client_id = client_id

    def send_qos0(self, message: Message, retain: bool, sub_ids: Tuple[int, ...]) -> None:
        """QoS 0 (at most once) is not forwarded."""

    def send_delivery(self, delivery: Delivery) -> None:
        """Send a QoS 1/2 message to the session's node (its stream, this turn)."""
        self.router.send(self.node, delivery.message, delivery.retain, "\0" + self.client_id,
                         delivery.qos)


def deliver_to(broker: Any, session: Session, message: Message) -> bool:
    """Deliver ``message`` to ``session`` alone, as its own (non-shared) subscriptions take it;
    False if none of them does."""
    topic = message.topic
    entries = [entry for topic_filter, entry in session.subscriptions.items()
               if not topic_filter.startswith("$share/") and matches(topic_filter, topic)]
    if message.origin == session.client_id:
        entries = [entry for entry in entries if not entry.no_local]
    if not entries or (broker.hooks.may_receive and not broker._may_receive(session, topic)):
        return False
    qos = min(max(entry.qos for entry in entries), message.qos)
    rap = any(entry.retain_as_published for entry in entries)
    sub_ids = tuple(sorted({e.sub_id for e in entries if e.sub_id is not None}))
    broker.deliver(session, message, qos, message.retain and rap, sub_ids)
    return True


# -- Redis -----------------------------------------------------------------------------------------


class Directory:
    """The session directory and records on the cluster's engine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.owners = engine.key("sessions", "owner")
        self.sets = engine.key("sessions", "of", "")
        self.records = RedisStore(engine.url, engine.reactor)
        self.records.prefix = engine.key("session", "")
        self.heads = self.records._key("sessions")

    def record_keys(self, client_id: str) -> List[str]:
        """The keys holding ``client_id``'s records (beside its head)."""
        key = self.records._key
        return [key(name, client_id) for name in ("subs", "msgs", "flight", "qos2")]

    def owner(self, client_id: str) -> Deferred[str]:
        """The token of ``client_id``'s owner ('' for none)."""
        return self.engine.command("HGET", self.owners, client_id).addCallback(
            lambda raw: _text(raw) if raw else "")

    def claim(self, client_id: str, expected: str, owner: str,
              drop: bool = False) -> Deferred[Tuple[bool, str]]:
        """Make ``owner`` (``EPOCH:NODE``) own ``client_id`` if its token is ``expected``;
        (True, new token) or (False, the token found).  ``drop`` deletes its records."""
        extra = [self.heads, *self.record_keys(client_id)] if drop else [""]
        return self.engine.script(CLAIM, [self.owners], [
            client_id, expected, owner, self.sets, *extra]).addCallback(
            lambda reply: (int(reply[0]) == 1, _text(reply[1])))

    def end(self, client_id: str, token: str) -> Deferred[bool]:
        """Delete ``client_id``'s entry and records if ``token`` still owns it."""
        return self.engine.script(END, [self.owners], [
            client_id, token, self.sets, self.heads, *self.record_keys(client_id)]
        ).addCallback(lambda reply: int(reply) == 1)

    def write(self, groups: Dict[str, Tuple[str, List[Tuple[Any, ...]]]],
              then: Sequence[Tuple[Any, ...]] = ()) -> Deferred[List[str]]:
        """Apply each client id's commands if its token is current, then the commands
        ``then``, in one script; the client ids refused."""
        args: List[Any] = [len(groups)]
        for client_id, (token, commands) in groups.items():
            split = [part for command in commands for part in _split(command)]
            args += [client_id, token, len(split)]
            for command in split:
                args += [len(command), *command]
        for command in then:
            args += [len(command), *command]
        return self.engine.script(WRITE, [self.owners], args).addCallback(
            lambda reply: [_text(raw) for raw in reply or ()])

    def read(self, client_id: str, token: str) -> Deferred[Optional[StoredSession]]:
        """``client_id``'s session as stored, if ``token`` owns it (None: none, or not
        owned); a record no broker writes is logged and left out."""
        keys = [self.owners, self.heads, *self.record_keys(client_id)]
        return self.engine.script(READ, keys, [client_id, token]).addCallback(
            self._parse, client_id)

    def _parse(self, reply: Any, client_id: str) -> Optional[StoredSession]:
        if not reply or not reply[0]:
            return None
        head, subs, msgs, flight, qos2 = reply
        rows = _rows.Rows()
        stored = read_session(rows, client_id, head, _pairs(subs), _pairs(msgs),
                              _pairs(flight), qos2)
        for row in rows.bad:
            log.warn("cluster: session {client_id}: left out {row}", client_id=client_id,
                     row=row)
        return stored

    def adopt(self, node: str, live_epoch: int, owner: str) -> Deferred[Dict[str, str]]:
        """Take the sessions of ``node`` (all but those of its live epoch, if any) for
        ``owner``: client id -> new token."""
        return self.engine.script(ADOPT, [self.owners], [
            node, str(live_epoch), owner, self.sets]).addCallback(
            lambda reply: {_text(reply[i]): _text(reply[i + 1])
                           for i in range(0, len(reply), 2)})


def _in_order(session: Optional[Session]) -> List[Delivery]:
    """The deliveries of ``session``: those in flight, then those queued."""
    if session is None:
        return []
    return [*session.inflight.values(), *session.queue]


def _split(command: Tuple[Any, ...]) -> List[Tuple[Any, ...]]:
    """``command`` as several of at most ``MAX_SCRIPT_ARGS`` arguments (HSET keeps its pairs
    together)."""
    name, key, *rest = command
    if len(rest) <= MAX_SCRIPT_ARGS or name not in ("HSET", "HDEL", "SADD", "SREM", "DEL"):
        return [command]
    step = MAX_SCRIPT_ARGS - MAX_SCRIPT_ARGS % 2
    if name == "DEL":
        parts = [key, *rest]
        return [(name, *parts[i:i + step]) for i in range(0, len(parts), step)]
    return [(name, key, *rest[i:i + step]) for i in range(0, len(rest), step)]


class FencedStore:
    """The store of a ``Recorder`` that writes each session's changes only while this node
    owns it (``ClusterSessions.tokens``); ``ClusterSessions.lost`` hears of writes refused."""

    def __init__(self, directory: Directory, sessions: ClusterSessions) -> None:
        self.directory = directory
        self.sessions = sessions
        self.location = f"cluster {directory.engine.location}"
        self.then: List[Tuple[Any, ...]] = []
        """Commands that go with the next commit, after its writes (``ClusterSessions.
        acknowledge_with_write``)."""
        self._retried: Optional[Tuple[Batch, List[Tuple[Any, ...]]]] = None
        """A batch not written and the commands that went with it (again with it only)."""
        self.writing: Set[int] = set()
        """The keys of the delivery records of the batch being written."""

    def load(self) -> Deferred[StoredState]:
        """Nothing is read at start: sessions are read when they move here."""
        return succeed(StoredState())

    def commit(self, batch: Batch) -> Deferred[None]:
        """Apply ``batch``, session by session, each fenced by its token."""
        per_client: Dict[str, Batch] = {}

        def part(client_id: str) -> Batch:
            found = per_client.get(client_id)
            if found is None:
                found = per_client[client_id] = Batch()
            return found

        for client_id in batch.cleared:
            part(client_id).cleared.add(client_id)
        for client_id, head in batch.sessions.items():
            part(client_id).sessions[client_id] = head
        for (client_id, topic_filter), stored in batch.subscriptions.items():
            part(client_id).subscriptions[(client_id, topic_filter)] = stored
        for key, delivery in batch.deliveries.items():
            part(delivery.client_id).deliveries[key] = delivery
        for key, move in batch.moves.items():
            part(move[0]).moves[key] = move
        for key, client_id in batch.deleted.items():
            part(client_id).deleted[key] = client_id
        for (client_id, packet_id), received in batch.inbound.items():
            part(client_id).inbound[(client_id, packet_id)] = received
        tokens = self.sessions.tokens
        groups = {client_id: (tokens[client_id], self.directory.records.commands(changes))
                  for client_id, changes in per_client.items() if client_id in tokens}
        retried, self._retried = self._retried, None
        if retried is not None and retried[0] is batch:
            then = retried[1]
        else:  # a batch given up takes its commands with it
            then, self.then = self.then, []
        if not (groups or then):
            return succeed(None)
        self.writing = set(batch.deliveries)
        return self.directory.write(groups, then).addCallbacks(
            self._written, self._not_written, callbackArgs=(groups,),
            errbackArgs=(batch, then))

    def _not_written(self, failure: Any, batch: Batch, then: List[Tuple[Any, ...]]) -> None:
        self.writing = set()
        self._retried = (batch, then)
        raise StoreError(f"cannot write sessions ({failure.value or type(failure.value)})")

    def went(self, commands: List[Tuple[Any, ...]]) -> bool:
        """Whether ``commands`` (added to ``then``) went with a commit: if not, they are taken
        back."""
        for i, queued in enumerate(self.then):
            if queued is commands[0]:
                del self.then[i:i + len(commands)]
                return False
        return True

    def _written(self, refused: List[str], groups: Dict[str, Any]) -> None:
        self.writing = set()
        if refused:
            self.sessions.lost(refused, {c: groups[c][0] for c in refused})

    def close(self) -> Deferred[None]:
        """Nothing to release: the engine is the cluster's."""
        return succeed(None)


class _Recorder(Recorder):
    """The write-behind of this node's sessions into the cluster's Redis."""

    def take(self, client_id: str, session: Optional[Session]) -> None:
        """Replace what is stored of ``client_id`` with ``session`` (just restored here; None:
        it ended) and record it from now on."""
        self._clear(client_id)
        if session is not None and session.expiry_interval > 0:
            self._stored.add(client_id)
            self._snapshot(session)
            self._heads.add(client_id)

    def new_key(self) -> int:
        """A delivery record key not used yet."""
        key = self._next_key
        self._next_key += 1
        return key

    def forget(self, client_id: str) -> None:
        """Write nothing more of ``client_id`` (another node owns it now)."""
        self._stored.discard(client_id)
        self._disconnected_at.pop(client_id, None)
        self._cleared.discard(client_id)
        self._forget_notes(client_id)


class ClusterSessions(Hook):
    """This node's part of the cluster-wide sessions: it makes the node a session's owner
    before its CONNECT is accepted (``claim``, the broker's ``session_claim``), writes its
    sessions behind, hands them over when asked, and adopts those of dead nodes."""

    def __init__(self, broker: Any, engine: Any, members: Any, clock: Any,
                 handover_timeout: float = HANDOVER_TIMEOUT) -> None:
        self.broker = broker
        self.engine = engine
        self.members = members
        self.clock = clock
        self.handover_timeout = handover_timeout
        self.directory = Directory(engine)
        self.tokens: Dict[str, str] = {}
        """Client id -> the token with which this node owns its session."""
        self.recorder = _Recorder(broker, FencedStore(self.directory, self), clock=clock)
        self.recorder.hold_qos2 = True  # a QoS 2 message goes out once its record is in Redis
        self._claims: Dict[str, List[Deferred[int]]] = {}
        self._handing: Set[str] = set()
        self._waiting: Dict[str, Deferred[None]] = {}
        self._adopting: Dict[str, List[Tuple[Message, str, bytes]]] = {}
        self._routed_while_adopting: Dict[str, List[Tuple[Message, bytes]]] = {}
        """Dead node being adopted -> the QoS 1/2 messages routed here meanwhile for this
        node's own subscriptions (and identity), for the sessions adopted from it."""
        self._adopted_from: Dict[str, List[str]] = {}
        """Dead node -> the client ids of the sessions adopted from it (its last adoption)."""
        self._unopened: Set[str] = set()
        self._older: Set[str] = set()
        self._sweep_call: Any = None
        self.router: Any = None
        """The cluster's ``Router`` (``attach``): forwarding between nodes."""
        self._forwarders: Dict[str, Session] = {}
        """Client id -> the session forwarding to the node it was handed over to."""
        self._arrivals: Dict[str, Set[bytes]] = {}
        self._early: Dict[str, List[Tuple[Message, bytes]]] = {}
        """Client id being claimed here -> messages forwarded to it before its session is."""
        """Client id of a session just handed over here -> the identities of the messages
        it got routed here (a copy of them forwarded by its last node is not kept)."""
        self.handovers = 0
        """Sessions handed over to other nodes."""
        self.adopted = 0
        """Persistent sessions adopted from dead nodes."""
        self.taken = 0
        """Sessions taken from other nodes when a client connected here."""

    @property
    def node(self) -> Any:
        """This node (name, epoch, serving)."""
        return self.members.node

    def attach(self, router: Any) -> None:
        """Forward through ``router`` the messages for sessions handed over from here, and
        take those forwarded to this node's sessions."""
        self.router = router
        router.forward_handler = self.forwarded
        router.identity_watcher = self._routed_here

    def _me(self) -> str:
        return f"{self.node.epoch}:{self.node.name}"

    def _channel(self, name: str) -> str:
        return self.engine.key("sessions", "node", name)

    def start(self) -> None:
        """Install the hooks and listen for requests from other nodes."""
        self.broker.hooks.add(self.recorder)
        self.broker.hooks.add(self)
        self.broker.session_claim = self.claim
        self.broker.ack_barriers.append(self.written)
        self.broker.figure_sources.append(self.figures)
        self.engine.subscribe(self._channel(self.node.name), self._received)
        self.members.watch(self._member_event)
        self.members.watch_serving(self._serving)

    def stop(self) -> None:
        """Stop claiming sessions (the broker's own stop disconnects its clients)."""
        if self.broker.session_claim == self.claim:
            self.broker.session_claim = None
        if self.written in self.broker.ack_barriers:
            self.broker.ack_barriers.remove(self.written)
        if self.figures in self.broker.figure_sources:
            self.broker.figure_sources.remove(self.figures)
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None

    def figures(self) -> Dict[str, Any]:
        """This node's session figures for $SYS (``$SYS/broker/cluster/sessions/...``)."""
        return {"cluster/sessions/owned": len(self.tokens),
                "cluster/sessions/handed_over": self.handovers,
                "cluster/sessions/taken_over": self.taken,
                "cluster/sessions/adopted": self.adopted}

    def written(self, message: Optional[Message] = None) -> Optional[Deferred[Any]]:
        """One of the broker's ``ack_barriers``: a QoS 1/2 message is acknowledged (to its
        publisher, or to the node that handed it over) once what it changed in this node's
        persistent sessions is in Redis, so that a node killed then loses none of it."""
        recorder = self.recorder
        held = recorder.barrier() if recorder._pending or recorder._committing else None
        if self._forwarders and message is None:  # a stream entry forwarded on
            sent = self.router.pending()
            if sent is not None:
                return sent if held is None else gatherResults([held, sent],
                                                               consumeErrors=True)
        return held

    def acknowledge_with_write(self, commands: List[Tuple[Any, ...]]) -> Optional[Deferred[bool]]:
        """Run ``commands`` (the ``XACK`` of stream entries whose messages were just routed
        into this node's sessions) in the script that writes what those messages changed in
        the persistent sessions, so that a node killed in between leaves both or neither:
        a survivor claims an entry only if no adopted session holds its messages.  None when
        nothing is to be written; else a Deferred firing once that write is done, with False
        if nothing was written after all (the caller runs ``commands`` itself)."""
        recorder = self.recorder
        if not (recorder._pending or recorder._committing):
            return None
        store = recorder.store
        store.then.extend(commands)
        return recorder.barrier().addCallback(lambda _: store.went(commands))

    # -- CONNECT ----------------------------------------------------------------------------------

    def claim(self, client_id: str, clean_start: bool) -> Optional[Deferred[int]]:
        """None when this node already owns ``client_id`` (the CONNECT goes on at once), else a
        Deferred firing with 0 once it does (the session, moved here, is then in
        ``broker.sessions``) or with a CONNACK reason code refusing the client."""
        if client_id in self._handing:
            return succeed(ReasonCode.SERVER_UNAVAILABLE)  # moving to another node
        if client_id in self.tokens:
            return None
        waiting = self._claims.get(client_id)
        d: Deferred[int] = Deferred()
        if waiting is not None:
            waiting.append(d)  # a CONNECT on this node already claims it: after that one
            return d.addCallback(lambda _: self._again(client_id, clean_start))
        self._claims[client_id] = []
        self._acquire(client_id).addBoth(self._claimed, client_id, d)
        return d

    def _again(self, client_id: str, clean_start: bool) -> Any:
        return self.claim(client_id, clean_start) or 0

    def _claimed(self, result: Any, client_id: str, d: Deferred[int]) -> None:
        waiting = self._claims.pop(client_id, [])
        for message, _ident in self._early.pop(client_id, []):
            self.broker.dropped(client_id, message, "forwarded to a session not here")
        if not isinstance(result, int):
            log.warn("cluster: client id {client_id}: cannot become its session's owner "
                     "({error}); refused", client_id=client_id,
                     error=getattr(result, "value", result))
            result = ReasonCode.SERVER_UNAVAILABLE
        elif not result:
            self._unopened.add(client_id)
            if self._sweep_call is None:
                self._sweep_call = self.clock.callLater(
                    self.broker.capabilities.connect_timeout, self._sweep_unopened)
        d.callback(result)
        for other in waiting:
            other.callback(0)

    def _sweep_unopened(self) -> None:
        """Give up the client ids this node became the owner of for a CONNECT that opened no
        session (the client left or was refused meanwhile) at least ``connect_timeout`` ago."""
        self._sweep_call = None
        for client_id in self._older:
            self._ended(client_id)  # nothing if a session of that id is here
        self._older, self._unopened = self._unopened, set()
        if self._older:
            self._sweep_call = self.clock.callLater(self.broker.capabilities.connect_timeout,
                                                    self._sweep_unopened)

    @inlineCallbacks
    def _acquire(self, client_id: str) -> Any:
        if not self.members.check():
            return ReasonCode.SERVER_UNAVAILABLE
        directory = self.directory
        ok, current = yield directory.claim(client_id, "", self._me())
        if ok:  # a client id no node holds: nothing stored to read
            self._fresh(client_id, current)
            return 0
        for _attempt in range(CLAIM_ATTEMPTS):
            if current:
                epoch, node = token_owner(current)
                alive = (node != self.node.name or epoch != self.node.epoch) and (
                    self.members.members.get(node) == epoch)
                if alive:
                    yield self._ask(node, client_id, current)
                    found = yield directory.owner(client_id)
                    if found and found != current:
                        if token_owner(found) == (self.node.epoch, self.node.name):
                            self.taken += 1
                            yield self._arrived(client_id, found)
                            return 0
                        current = found
                        continue  # someone else's now: ask again
            ok, found = yield directory.claim(client_id, current, self._me())
            if ok:
                self.taken += bool(current)
                if current:  # taken without a hand-over: its last owner drops its copy
                    self._tell(token_owner(current)[1], client_id, "taken", current)
                yield self._arrived(client_id, found)
                return 0
            current = found
        return ReasonCode.SERVER_UNAVAILABLE

    def _fresh(self, client_id: str, token: str) -> None:
        """This node owns ``client_id``, which no node held: a session here is a stale copy."""
        self.tokens[client_id] = token
        self._end_forwarder(client_id)
        if client_id in self.broker.sessions:
            self.recorder.forget(client_id)
            self.broker.release_session(client_id)

    def _ask(self, node: str, client_id: str, token: str) -> Deferred[None]:
        """Ask ``node`` to hand ``client_id`` over; fires when it says it did, or at the
        timeout."""
        d: Deferred[None] = Deferred()
        self._waiting[client_id] = d
        request = {"op": "handover", "client": client_id, "token": token, "to": self._me(),
                   "reply": self.node.name}
        self.engine.command("PUBLISH", self._channel(node), json.dumps(request)).addErrback(
            lambda _: None)  # unanswered: the timeout decides
        d.addTimeout(self.handover_timeout, self.clock, onTimeoutCancel=lambda *_: None)
        d.addBoth(self._answered, client_id)
        return d

    def _answered(self, _result: Any, client_id: str) -> None:
        self._waiting.pop(client_id, None)

    @inlineCallbacks
    def _arrived(self, client_id: str, token: str) -> Any:
        """This node owns ``client_id`` under ``token``: restore what is stored of it."""
        stored = yield self.directory.read(client_id, token)
        self._fresh(client_id, token)
        broker = self.broker
        early = self._early.pop(client_id, [])
        if stored is not None:
            session, _restored = install(broker, stored)
            self.recorder.take(client_id, session)
            if session is not None and self.router is not None:
                self._arrived_from_elsewhere(client_id)
            for message, ident in early:  # routed to its last node after the records
                self.forwarded(client_id, message, ident)
            broker.flush()
        return None

    # -- forwarding during a move ------------------------------------------------------------------

    def _arrived_from_elsewhere(self, client_id: str) -> None:
        """``client_id``'s session was just handed over here: for two leases (the forwarder
        on its last node lives one), remember the messages routed here for it."""
        self._arrivals[client_id] = set()
        self.clock.callLater(2 * self.members.lease, self._settled, client_id)

    def _settled(self, client_id: str) -> None:
        self._arrivals.pop(client_id, None)

    def _routed_here(self, message: Message, ident: bytes) -> None:
        """A QoS 1/2 message from another node is routed here: note it for the sessions just
        handed over here that it reaches, and keep it for the sessions being adopted."""
        for dead in self._adopting:
            self._routed_while_adopting.setdefault(dead, []).append((message, ident))
        if not ident:
            return
        topic = message.topic
        for client_id, seen in self._arrivals.items():
            session = self.broker.sessions.get(client_id)
            if session is not None and any(
                    matches(f, topic) for f in session.subscriptions
                    if not f.startswith("$share/")):
                seen.add(ident)

    def _forward(self, client_id: str, session: Optional[Session], node: str) -> None:
        """``client_id``'s session was handed over to ``node``: for a lease, until every node
        routes its messages there, what is still routed here for it is forwarded there."""
        if session is None or self.router is None:
            return
        filters = [(f, e) for f, e in session.subscriptions.items()
                   if not f.startswith("$share/")]
        if not filters:
            return
        self._end_forwarder(client_id)
        forwarder = Session("\0\0" + client_id)
        forwarder.expiry_interval = 0xFFFFFFFF
        forwarder.connection = Forwarder(self.router, node, client_id)
        self.broker.sessions[forwarder.client_id] = forwarder
        for _topic_filter, entry in filters:
            self.broker.subscribe(forwarder, entry.subscription, entry.sub_id)
        self._forwarders[client_id] = forwarder
        self.clock.callLater(self.members.lease, self._end_forwarder, client_id, forwarder)

    def _end_forwarder(self, client_id: str, forwarder: Optional[Session] = None) -> None:
        """Stop forwarding ``client_id``'s messages (only ``forwarder``, if given)."""
        current = self._forwarders.get(client_id)
        if current is None or (forwarder is not None and current is not forwarder):
            return
        del self._forwarders[client_id]
        for topic_filter in list(current.subscriptions):
            self.broker.unsubscribe(current, topic_filter)
        self.broker.sessions.pop(current.client_id, None)

    def forwarded(self, client_id: str, message: Message, ident: bytes) -> None:
        """The node that handed ``client_id``'s session over forwarded ``message`` to it
        (the router's ``forward_handler``): delivered once to the session here, forwarded on
        if it moved on again."""
        forwarder = self._forwarders.get(client_id)
        if forwarder is not None:
            deliver_to(self.broker, forwarder, message)
            return
        session = self.broker.sessions.get(client_id)
        if session is None or client_id not in self.tokens:
            if client_id in self._claims:  # its records are being read: after them
                self._early.setdefault(client_id, []).append((message, ident))
            else:
                self.broker.dropped(client_id, message, "forwarded to a session not here")
            return
        seen = self._arrivals.get(client_id)
        if ident and seen is not None and ident in seen:
            return  # it was routed here for the session already
        if seen is not None and ident:
            seen.add(ident)
        deliver_to(self.broker, session, message)

    # -- hand-over to another node -----------------------------------------------------------------

    def _received(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
            op, client_id, token = (str(message[k]) for k in ("op", "client", "token"))
            if op == "handover":
                to, reply = str(message["to"]), str(message["reply"])
        except (ValueError, KeyError, TypeError):
            log.warn("cluster: unreadable session message {raw!r}", raw=raw[:100])
            return
        if op == "handover":
            self._hand_over(client_id, token, to, reply)
        elif op == "handed":
            waiting = self._waiting.get(client_id)
            if waiting is not None and not waiting.called:
                waiting.callback(None)
        elif op == "taken":
            self.lost([client_id], {client_id: token})

    def _hand_over(self, client_id: str, token: str, to: str, reply: str) -> None:
        """Another node asks for ``client_id``: take over its connection here, commit its last
        changes and move its token there."""
        if self.tokens.get(client_id) != token or client_id in self._handing:
            self._tell(reply, client_id)  # not ours (any more): the asking node reads again
            return
        self._handing.add(client_id)
        broker = self.broker
        broker.tick()
        session = broker.sessions.get(client_id)
        if session is not None and session.connection is not None:
            session.connection.take_over()  # [MQTT-3.1.4-3]
        broker.flush()
        self.recorder.flush().addCallback(
            lambda _: self.directory.claim(client_id, token, to,
                                           drop=client_id not in broker.sessions)
        ).addCallback(self._handed, client_id, reply).addErrback(
            self._hand_over_failed, client_id)

    def _unwritten(self, session: Optional[Session]) -> List[Delivery]:
        """The deliveries of ``session`` whose records were not written before its token
        moved (those written since are refused): noted but not written yet, or in the write
        under way (the claim's answer came first, so that write comes after it)."""
        if session is None:
            return []
        client_id = session.client_id
        recorder = self.recorder
        keys = {key for key, note in recorder._new.items() if note[0] == client_id}
        keys |= recorder.store.writing
        return [d for d in _in_order(session) if d.key is None or d.key in keys]

    def _handed(self, result: Tuple[bool, str], client_id: str, reply: str) -> None:
        self._handing.discard(client_id)
        handed, token = result
        session = self.broker.sessions.get(client_id)
        late = self._unwritten(session) if handed else []
        if handed:
            self._forward(client_id, session, token_owner(token)[1])
        self._drop_local(client_id)  # handed over, or taken at the timeout: not ours
        if handed:
            self.handovers += 1
            log.info("cluster: session {client_id} handed over to node {node}",
                     client_id=client_id, node=reply)
        if late:  # routed here since the last commit: written for the new owner to read
            batch = Batch()
            for delivery in late:
                key = self.recorder.new_key()
                batch.deliveries[key] = StoredDelivery(
                    key, client_id, stored_message(delivery.message), delivery.qos,
                    delivery.retain, delivery.sub_ids)
            self.directory.write({client_id: (token, self.directory.records.commands(batch))}
                                 ).addErrback(self._write_failed, client_id)
            log.info("cluster: session {client_id}: {count} messages routed here during its "
                     "hand-over written for node {node}", client_id=client_id,
                     count=len(late), node=reply)
        self._tell(reply, client_id)

    def _tell(self, node: str, client_id: str, op: str = "handed", token: str = "") -> None:
        """Tell ``node`` that ``client_id`` changed owner: ``handed`` (to the node that asked
        for it: read the owner again) or ``taken`` (from the node that held it under
        ``token``: drop your copy)."""
        if node == self.node.name and op == "taken":
            return
        self.engine.command("PUBLISH", self._channel(node), json.dumps(
            {"op": op, "client": client_id, "token": token})).addErrback(lambda _: None)

    def _hand_over_failed(self, failure: Any, client_id: str) -> None:
        self._handing.discard(client_id)
        log.warn("cluster: handing session {client_id} over failed ({error})",
                 client_id=client_id, error=failure.value)

    def _drop_local(self, client_id: str) -> None:
        """Forget ``client_id`` here without ending its session (it goes on elsewhere)."""
        self.tokens.pop(client_id, None)
        self.recorder.forget(client_id)
        session = self.broker.sessions.get(client_id)
        if session is not None and session.connection is not None:
            session.will = None  # its owner publishes it now
            session.connection.take_over()
        self.broker.release_session(client_id)
        self.broker.flush()

    def lost(self, client_ids: List[str], tokens: Dict[str, str]) -> None:
        """Other nodes own ``client_ids`` now (their writes were refused, or a node took them
        without a hand-over), which this node held under ``tokens``: drop them here."""
        for client_id in client_ids:
            if self.tokens.get(client_id) != tokens[client_id]:
                continue
            log.warn("cluster: session {client_id} is owned by another node now; dropped here",
                     client_id=client_id)
            self._drop_local(client_id)

    # -- the hooks ---------------------------------------------------------------------------------

    def on_session_established(self, client: ClientInfo, packet: Any,
                               session_present: bool) -> None:
        """A session that ends with its connection stores its head (user name, will) only,
        for the node that adopts it if this one dies."""
        client_id = client.client_id
        self._unopened.discard(client_id)
        self._older.discard(client_id)
        session = self.broker.sessions.get(client_id)
        token = self.tokens.get(client_id)
        if session is None or token is None or session.expiry_interval > 0:
            return
        if session.will is None:
            return
        head = pack_head(self.recorder._head(session))
        command: Tuple[Any, ...] = ("HSET", self.directory.heads, client_id, head)
        self.directory.write({client_id: (token, [command])}).addCallback(
            self.store_refused, {client_id: token}).addErrback(self._write_failed, client_id)

    def store_refused(self, refused: List[str], tokens: Dict[str, str]) -> None:
        """Drop the sessions whose writes were refused."""
        if refused:
            self.lost(refused, tokens)

    def _write_failed(self, failure: Any, client_id: str) -> None:
        log.warn("cluster: session {client_id}: writing its head failed ({error})",
                 client_id=client_id, error=failure.value)

    def on_disconnect(self, client: ClientInfo, reason_code: Optional[int],
                      session_kept: bool) -> None:
        """A session that ended with its connection leaves the directory (unless it is being
        handed over)."""
        if not session_kept:
            self._ended(client.client_id)

    def on_client_expired(self, client_id: str) -> None:
        """An expired session leaves the directory."""
        self._ended(client_id)

    def _ended(self, client_id: str) -> None:
        if client_id in self._handing or client_id in self.broker.sessions:
            return
        token = self.tokens.pop(client_id, None)
        if token is None:
            return
        self.recorder.forget(client_id)
        if self.members.check():  # else its record (its will) is for the node adopting it
            self.directory.end(client_id, token).addErrback(self._write_failed, client_id)

    def on_will(self, client_id: str, will: Any) -> Any:
        """A node that is not serving (its sessions may be adopted) publishes no will: the
        node that adopts the session does."""
        return will if self.members.check() else None

    # -- dead nodes --------------------------------------------------------------------------------

    def _member_event(self, event: str, name: str) -> None:
        if event == "claimed":
            self.adopt(name)

    def claimed_message(self, dead: str, message: Message, share: str,
                        ident: bytes = b"") -> None:
        """A message taken from the stream of the dead node ``dead``, or routed to it after
        its removal (the router's ``claim_handler``): routed, once the sessions adopted from
        ``dead`` are here, to them only (or to one member of its shared group), as ``dead``
        would have; not to an adopted session that a copy routed here directly reached."""
        if share[:1] == "\0":  # forwarded to a session of the dead node
            self.forwarded(share[1:], message, b"")
            return
        waiting = self._adopting.get(dead)
        if waiting is None and dead not in self._adopted_from:
            # routed here as the heir of ``dead`` before this node heard that it removed it
            waiting = self._adopting[dead] = []
        if waiting is not None:
            waiting.append((message, share, ident))
            return
        broker = self.broker
        broker.tick()
        message = message.evolve(retain=False)
        if share:  # for one member of the group: any member now
            group = broker.tree.group(share)
            if group is None or not broker._deliver_shared(group, message, None):
                broker.dropped(share, message, "no member of the shared group")
        else:  # for the sessions of ``dead``: the other nodes' sessions had their own copies
            for client_id in self._adopted_from.get(dead, ()):
                session = broker.sessions.get(client_id)
                seen = self._arrivals.get(client_id)
                if ident and seen is not None:
                    if ident in seen:
                        continue  # a copy routed here directly reached it
                    seen.add(ident)
                if session is not None and client_id in self.tokens:
                    deliver_to(broker, session, message)
        broker.flush()

    @inlineCallbacks
    def adopt(self, name: str) -> Any:
        """Take the sessions of node ``name``'s dead incarnations: persistent ones go on here
        (collecting their messages) until their client connects anywhere; the wills of the
        others, and those that fall due, are published (once: the script moves each session
        to one node)."""
        live = self.node.epoch if name == self.node.name else self.members.members.get(name, 0)
        claimed = self._adopting.setdefault(name, [])
        try:
            taken = yield self.directory.adopt(name, live, self._me())
            reads = yield gatherResults([
                self.directory.read(client_id, token).addErrback(self._unread, client_id)
                for client_id, token in taken.items()])
        except Exception as error:
            log.warn("cluster: adopting the sessions of node {node} failed ({error})",
                     node=name, error=error)
            taken, reads = {}, []
        broker = self.broker
        wills = kept = 0
        for (client_id, token), stored in zip(taken.items(), reads):
            if stored is False:
                continue  # not read: restored when its client connects
            self._fresh(client_id, token)
            session: Optional[Session] = None
            if stored is not None:
                session, restored = install(broker, stored)
                wills += len(restored.due_wills)
            if session is None:
                self._ended(client_id)
                continue
            kept += 1
            self.recorder.take(client_id, session)
            if self.router is not None:  # copies routed to the removed node may follow
                self._arrived_from_elsewhere(client_id)
        self.adopted += kept
        del self._adopting[name]
        self._adopted_from[name] = list(taken)
        # Routed here directly first (a copy also routed to ``name`` then reaches them once).
        for message, ident in self._routed_while_adopting.pop(name, []):
            self.claimed_message(name, message, "", ident)
        for message, share, ident in claimed:
            self.claimed_message(name, message, share, ident)
        broker.flush()
        if self.router is not None:  # after the routes of the sessions installed here
            self.router.adopted(name)
        log.info("cluster: adopted {kept} persistent sessions of node {node} ({count} client "
                 "ids; {wills} wills due at once)", kept=kept, node=name, count=len(taken),
                 wills=wills)
        return None

    def _unread(self, failure: Any, client_id: str) -> bool:
        log.warn("cluster: reading session {client_id} failed ({error}); it is read when its "
                 "client connects", client_id=client_id, error=failure.value)
        return False

    def _serving(self, serving: bool) -> None:
        if not serving:  # once the cluster has dropped this node's clients
            self.clock.callLater(0, self._forget_all)

    def _forget_all(self) -> None:
        """Not serving: the sessions here may be adopted by other nodes (which publish their
        wills); nothing more is written with the old tokens and they are dropped here."""
        if self.node.serving:
            return
        for client_id in list(self.tokens):
            self._drop_local(client_id)
        for client_id, session in list(self.broker.sessions.items()):
            if session.connection is None:
                self.broker.release_session(client_id)
