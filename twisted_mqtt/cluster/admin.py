"""Administration across the cluster: shared bans, kicks of clients on other nodes, and every
node's figures for the dashboard (docs/cluster.md, "Administration").

Bans live in the hash ``{prefix}bans`` (field ``[kind, value]`` as JSON, value the ban's
``as_dict`` as JSON).  A change made on a node (``Bans.changed``) is written there once per
reactor turn by one script that also publishes the writer's name on ``{prefix}bans``; every
other node then reads the hash and makes its bans the same, disconnecting (v5 DISCONNECT 0x98)
the clients a new ban names.  A node reads the hash when it joins and when its engine comes
back, after writing the changes it could not write while the engine was away.  An expiry is an
absolute time: each node ends the ban on its own clock.

A kick of a client connected on another node goes to the node that owns its session (the
sessions' directory) on that node's control channel ``{prefix}admin:node:NAME``, which answers
on the asking node's channel.

Each node writes its figures to ``{prefix}admin:figures:NAME`` at each $SYS publication and
each lease, with a time to live of a few leases; ``nodes`` lists the nodes whose lease is
alive, with their figures and the cluster's total.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from twisted_mqtt import __version__
from twisted_mqtt.bans import Ban, BanError
from twisted_mqtt.hooks import Hook

log = Logger()

KICK_TIMEOUT = 2.0
"""Seconds a kick waits for the node holding the client to answer."""

FIGURES_TTL = 3
"""A node's figures live this many leases in Redis unless written again."""

SUMMED = ("clients_connected", "sessions", "subscriptions", "inflight", "messages_in",
          "messages_out", "bytes_in", "bytes_out", "memory_bytes")
"""The figures of ``nodes`` whose cluster total is the sum over the nodes (retained messages
are the same on every node: their total is the largest count)."""

PUSH = """
local n = tonumber(ARGV[2])
for i = 3, 2 + 2 * n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = 3 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""
"""Write bans (ARGV[2] of them, field then value) and delete others, then announce the
writer (ARGV[1])."""

NODES = """
local nodes = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #nodes, 2 do
  if redis.call('EXISTS', ARGV[1] .. nodes[i]) == 1 then
    table.insert(out, nodes[i])
    table.insert(out, redis.call('GET', ARGV[2] .. nodes[i]) or '')
  end
end
return out
"""
"""Every member whose lease is alive, with its figures ('' if it has written none)."""

Key = Tuple[str, str]


def field(key: Key) -> str:
    """The hash field of the ban on ``key`` (kind, value)."""
    return json.dumps(list(key))


def read_bans(reply: List[Any]) -> Dict[Key, Ban]:
    """The bans of an ``HGETALL`` reply of the bans hash; an unreadable entry is one log line
    and left out."""
    found: Dict[Key, Ban] = {}
    for index in range(0, len(reply) - 1, 2):
        raw = reply[index + 1]
        try:
            fields = json.loads(raw)
            if not isinstance(fields, dict):
                raise BanError("ban", "not a JSON object")
            ban = Ban.from_dict(fields)
        except (ValueError, RecursionError) as error:
            log.warn("cluster: unreadable ban {field!r} in the engine ({error})",
                     field=_text(reply[index])[:100], error=error)
            continue
        found[(ban.kind, ban.value)] = ban
    return found


def node_figures(broker: Any, node: Any) -> Dict[str, Any]:
    """This node's figures as ``nodes`` lists them."""
    from twisted_mqtt.web.views import memory_bytes

    figures = broker.sys_figures()
    return {
        "node": node.name, "epoch": node.epoch, "serving": bool(node.serving),
        "status": "running" if node.serving else "not serving",
        "version": __version__, "python": f"{sys.implementation.name} {sys.version.split()[0]}",
        "uptime": figures["uptime"], "clients_connected": figures["clients/connected"],
        "sessions": figures["clients/total"], "subscriptions": figures["subscriptions/count"],
        "retained": figures["messages/retained"], "inflight": figures["messages/inflight"],
        "messages_in": figures["messages/received"], "messages_out": figures["messages/sent"],
        "bytes_in": figures["bytes/received"], "bytes_out": figures["bytes/sent"],
        "memory_bytes": memory_bytes(), "bans": len(broker.bans), "at": broker.now,
    }


def total(nodes: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """The cluster's figures from its nodes' (``SUMMED`` summed, retained the largest)."""
    listed = list(nodes)
    summed: Dict[str, Any] = {name: sum(int(n.get(name) or 0) for n in listed)
                              for name in SUMMED}
    summed["retained"] = max((int(n.get("retained") or 0) for n in listed), default=0)
    summed["nodes"] = len(listed)
    return summed


class ClusterAdmin(Hook):
    """The administration of one node of ``cluster`` (a ``twisted_mqtt.cluster.Cluster``)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.broker = cluster.broker
        self.engine = cluster.engine
        self.members = cluster.members
        self.clock = cluster.members.clock
        self.bans_key = self.engine.key("bans")
        self._known: Dict[Key, Ban] = {}
        """The bans this node believes the engine holds (its own writes included)."""
        self._unsent: Dict[Key, Optional[Ban]] = {}
        """Changes made here and not yet taken by the engine (None: lifted)."""
        self._writes = 0
        self._applying = False
        self._push_call: Any = None
        self._figures_call: Any = None
        self._kicks: Dict[int, Deferred[bool]] = {}
        self._next_kick = 0
        self._running = False

    @property
    def node(self) -> Any:
        """This node."""
        return self.members.node

    def channel(self, name: str) -> str:
        """The control channel of node ``name``."""
        return self.engine.key("admin", "node", name)

    def figures_key(self, name: str) -> str:
        """The key of node ``name``'s figures."""
        return self.engine.key("admin", "figures", name)

    def start(self) -> None:
        """Follow the bans, listen on this node's channel, report the figures."""
        self._running = True
        self.broker.node_name = self.node.name
        self.broker.bans.changed.append(self._bans_changed)
        self.broker.hooks.add(self)
        self.engine.subscribe(self.bans_key, self._bans_announced)
        self.engine.subscribe(self.channel(self.node.name), self._received)
        self.members.watch_serving(self._serving)
        self.engine.watch(self._engine_up)
        self._figures_call = self.clock.callLater(self.members.lease, self._report)

    def stop(self) -> None:
        """Stop following the bans and reporting."""
        self._running = False
        if self._bans_changed in self.broker.bans.changed:
            self.broker.bans.changed.remove(self._bans_changed)
        if self in self.broker.hooks:
            self.broker.hooks.remove(self)
        for call in (self._push_call, self._figures_call):
            if call is not None and call.active():
                call.cancel()
        self._push_call = self._figures_call = None

    def _serving(self, serving: bool) -> None:
        if serving:
            self._sync()
            self._report()

    def _engine_up(self, up: bool) -> None:
        if up and self.node.serving:
            self._sync()

    def _sync(self) -> None:
        """Write what could not be written, then read the bans."""
        self._push()
        self._read()

    # -- bans -------------------------------------------------------------------------------------

    def _bans_changed(self) -> None:
        if self._applying or not self._running:
            return
        current = {(ban.kind, ban.value): ban for ban in self.broker.bans}
        for key, ban in current.items():
            if self._known.get(key) != ban:
                self._unsent[key] = ban
        for key in self._known:
            if key not in current:
                self._unsent[key] = None
        self._known = current
        if self._unsent and self._push_call is None:
            self._push_call = self.clock.callLater(0, self._push)

    def _push(self) -> None:
        """Write the changes made here (once per reactor turn)."""
        if self._push_call is not None and self._push_call.active():
            self._push_call.cancel()
        self._push_call = None
        if not self._unsent or not self.engine.up:
            return
        sent = dict(self._unsent)
        written = [(key, ban) for key, ban in sent.items() if ban is not None]
        args: List[Any] = [self.node.name, len(written)]
        for key, ban in written:
            args += [field(key), json.dumps(ban.as_dict())]
        args += [field(key) for key, ban in sent.items() if ban is None]
        self._writes += 1
        self.engine.script(PUSH, [self.bans_key, self.bans_key], args).addCallbacks(
            self._pushed, self._push_failed, callbackArgs=(sent,))

    def _pushed(self, _reply: Any, sent: Dict[Key, Optional[Ban]]) -> None:
        for key, ban in sent.items():
            if key in self._unsent and self._unsent[key] == ban:
                del self._unsent[key]

    def _push_failed(self, failure: Any) -> None:
        log.warn("cluster: the bans changed on node {name} could not be shared ({error}); "
                 "written when the engine is back", name=self.node.name, error=failure.value)

    def _bans_announced(self, message: bytes) -> None:
        if _text(message) != self.node.name and self.node.serving:
            self._read()

    def _read(self) -> None:
        if not self.engine.up:
            return
        self.engine.command("HGETALL", self.bans_key).addCallbacks(
            self._read_done, lambda _: None, callbackArgs=(self._writes,))

    def _read_done(self, reply: List[Any], writes: int) -> None:
        if not self._running:
            return
        if writes != self._writes or self._push_call is not None:
            self._read()  # a change of this node went after the read: read behind it
            return
        self.apply(read_bans(reply))

    def apply(self, remote: Dict[Key, Ban]) -> List[Ban]:
        """Make this node's bans those of the engine, ``remote`` (changes not yet written
        from here kept); disconnect the connected clients a new ban names (v5 DISCONNECT 0x98
        Administrative action).  Return the new bans."""
        broker = self.broker
        bans = broker.bans
        now = broker.tick()
        wanted = dict(remote)
        for key, ban in self._unsent.items():
            if ban is None:
                wanted.pop(key, None)
            else:
                wanted[key] = ban
        local = {(ban.kind, ban.value): ban for ban in bans}
        fresh = [ban for key, ban in sorted(wanted.items())
                 if local.get(key) != ban and not ban.expired(now)]
        room = bans.limit - len(set(local) & set(wanted))
        if len(fresh) > room:
            log.warn("cluster: {count} bans of the cluster left out on node {name} "
                     "(maximum_bans {limit})", count=len(fresh) - room, name=self.node.name,
                     limit=bans.limit)
            fresh = fresh[:max(0, room)]
        self._applying = True
        try:
            for key in local:
                if key not in wanted:
                    bans.remove(*key)
            bans.load(tuple(fresh), now)
        finally:
            self._applying = False
        self._known = {(ban.kind, ban.value): ban for ban in bans}
        for ban in fresh:
            if local.get((ban.kind, ban.value)) is None:
                broker.disconnect_banned(ban)
        return fresh

    # -- kicks ------------------------------------------------------------------------------------

    def kick(self, client_id: str, by: str = "") -> Deferred[bool]:
        """Disconnect ``client_id`` wherever it is connected (v5 DISCONNECT 0x98): fires with
        False if no node has it connected, or its node did not answer within
        ``KICK_TIMEOUT``."""
        if self.broker.kick(client_id, by):
            return succeed(True)
        if not self.engine.up or not self.node.serving:
            return succeed(False)
        return self.cluster.sessions.directory.owner(client_id).addCallbacks(
            self._ask_kick, lambda _: False, callbackArgs=(client_id, by))

    def _ask_kick(self, token: str, client_id: str, by: str) -> Any:
        from twisted_mqtt.cluster.sessions import token_owner

        if not token:
            return False
        epoch, name = token_owner(token)
        if name == self.node.name or self.members.members.get(name) != epoch:
            return False
        self._next_kick += 1
        number = self._next_kick
        answer: Deferred[bool] = Deferred()
        self._kicks[number] = answer
        request = {"op": "kick", "client": client_id, "by": by, "id": number,
                   "reply": self.node.name}
        self.engine.command("PUBLISH", self.channel(name), json.dumps(request)).addErrback(
            lambda _: None)  # unanswered: the timeout decides
        answer.addTimeout(KICK_TIMEOUT, self.clock, onTimeoutCancel=lambda *_: False)
        return answer.addBoth(self._kick_done, number)

    def _kick_done(self, result: Any, number: int) -> bool:
        self._kicks.pop(number, None)
        return result is True

    def _received(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
            op, number = str(message["op"]), int(message["id"])
            if op == "kick":
                client_id, by, reply = (str(message[k]) for k in ("client", "by", "reply"))
            elif op == "kicked":
                kicked = message["ok"] is True
            else:
                raise ValueError(op)
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warn("cluster: unreadable administration message {raw!r}", raw=raw[:100])
            return
        if op == "kicked":
            waiting = self._kicks.get(number)
            if waiting is not None and not waiting.called:
                waiting.callback(kicked)
            return
        done = self.broker.kick(client_id, by)
        self.engine.command("PUBLISH", self.channel(reply), json.dumps(
            {"op": "kicked", "id": number, "ok": done})).addErrback(lambda _: None)

    # -- figures ----------------------------------------------------------------------------------

    def on_sys_info_tick(self, figures: Dict[str, Any]) -> None:
        """Write this node's figures at each $SYS publication."""
        self._write_figures()

    def _report(self) -> None:
        if self._figures_call is not None and self._figures_call.active():
            self._figures_call.cancel()
        self._figures_call = self.clock.callLater(self.members.lease, self._report)
        self._write_figures()

    def _write_figures(self) -> None:
        if not self.engine.up or not self.node.serving:
            return
        mine = json.dumps(node_figures(self.broker, self.node))
        ttl = int(self.members.lease * FIGURES_TTL * 1000)
        self.engine.command("SET", self.figures_key(self.node.name), mine, "PX", ttl
                            ).addErrback(lambda _: None)

    def nodes(self) -> Deferred[Dict[str, Any]]:
        """Every live node with its figures (this one's read now, the others' as last
        written), and the cluster's total."""
        self.broker.tick()
        mine = node_figures(self.broker, self.node)
        mine["self"] = True
        if not self.engine.up or not self.node.serving:
            return succeed({"nodes": [mine], "total": total([mine])})
        engine = self.engine
        return engine.script(
            NODES, [engine.key("nodes")],
            [self.members.lease_key(""), self.figures_key("")]).addCallbacks(
            self._listed, lambda _: [], callbackArgs=(mine,)).addCallback(
            lambda others: {"nodes": [mine, *others],
                            "total": total([mine, *others])})

    def _listed(self, reply: List[Any], mine: Dict[str, Any]) -> List[Dict[str, Any]]:
        others = []
        for index in range(0, len(reply) - 1, 2):
            name = _text(reply[index])
            if name == self.node.name:
                continue
            try:
                figures = json.loads(reply[index + 1]) if reply[index + 1] else {}
                if not isinstance(figures, dict):
                    figures = {}
            except (ValueError, RecursionError):
                figures = {}
            figures["node"], figures["self"] = name, False
            figures.setdefault("status", "running")
            others.append(figures)
        return sorted(others, key=lambda n: n["node"])


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
