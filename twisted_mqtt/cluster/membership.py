"""Membership of the cluster: node leases, epochs, and the detection of dead nodes.

Each node holds a lease in Redis, ``{prefix}lease:{name}`` = its epoch with a time to live of
``lease`` seconds, renewed every ``lease / 4``.  Every membership command goes on the engine's
control connection, so a renewal never waits behind the message batches a loaded node has
pipelined on its commands connection.  A renewal proves the lease from the time it was sent
(never from its answer): a late answer can only shorten what this node believes it holds.
The epoch comes from ``INCR {prefix}epoch`` at each join, so it grows with every (re)join
cluster-wide; ``{prefix}nodes`` maps each member's name to the epoch it joined with.

A node serves (``node.serving``) only while its lease is proven: when a renewal has not been
answered within the lease (Redis unreachable, the process paused), the node stops serving and
``watch_serving`` callbacks hear it; it serves again only once it has rejoined with a new epoch.
Every node checks the others' leases on each heartbeat: a member whose lease is gone is
removed by one survivor, atomically (the ``claimed`` event fires on that survivor only), and
every node hears ``down``.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Dict, List, Optional

from twisted.logger import Logger

from twisted_mqtt.cluster.engine import RedisEngine

log = Logger()

DEFAULT_LEASE = 3.0
"""Seconds a node's lease lasts without renewal: the bound on detecting a dead node."""

JOIN = """
local lease = KEYS[1]
if redis.call('EXISTS', lease) == 1 then return {-1, 0} end
local epoch = redis.call('INCR', KEYS[2])
local previous = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('SET', lease, epoch, 'PX', ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], epoch)
redis.call('DEL', KEYS[4])
redis.call('PUBLISH', KEYS[5], 'up ' .. ARGV[1] .. ' ' .. epoch)
return {epoch, previous or 0}
"""
"""Join: refused (-1) while a live node holds the name; else a new epoch, with the epoch of
this name's previous incarnation (0: none) whose routes are dropped."""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

SURVEY = """
local nodes = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #nodes, 2 do
  local alive = redis.call('EXISTS', ARGV[1] .. nodes[i])
  table.insert(out, nodes[i])
  table.insert(out, nodes[i + 1])
  table.insert(out, alive)
end
return out
"""
"""Every member with its epoch and whether its lease still exists."""

REMOVE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[5], ARGV[3], 'PX', ARGV[4])
redis.call('PUBLISH', KEYS[4], 'down ' .. ARGV[1] .. ' ' .. ARGV[2])
return 1
"""
"""Remove a dead member (its lease gone, the epoch seen dead still in place) and its routes,
and name the node removing it as its heir (``heir_key``, for ``HEIR_LEASES`` leases): 1 for
the one node that does it."""

HEIR_LEASES = 20
"""Leases during which a removed node's heir is known: the messages other nodes still route
to the removed node meanwhile (they have not heard of the removal yet) go to its heir."""

LEAVE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', KEYS[4], 'down ' .. ARGV[1] .. ' ' .. ARGV[2])
return 1
"""
"""A clean leave: this node's lease, membership and routes dropped at once."""

Event = Callable[[str, str], None]


def default_node_name() -> str:
    """A name unique on this network: the host name and the process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


def check_node_name(name: str) -> str:
    """``name`` if it can name a node (1 to 128 printable characters, no space, ``:`` or
    ``/``); else ValueError saying why."""
    if not name or len(name) > 128:
        raise ValueError("a node name has 1 to 128 characters")
    bad = [c for c in name if not c.isprintable() or c.isspace() or c in ":/"]
    if bad:
        raise ValueError(f"a node name has no spaces, ':' or '/': {name!r}")
    return name


class Node:
    """This node: its name, the epoch of its current membership, and whether it serves."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch = 0
        """Given by Redis at each join (0 before the first): greater at every join."""
        self.serving = False
        """True only while the lease is proven; clients are refused while False."""


class Membership:
    """This node's lease and its view of the other members.

    ``members`` maps each live node's name (this one's too, while serving) to its epoch.
    """

    def __init__(self, engine: RedisEngine, name: str, clock: Any,
                 lease: float = DEFAULT_LEASE) -> None:
        self.engine = engine
        self.clock = clock
        self.lease = lease
        self.node = Node(name)
        self.members: Dict[str, int] = {}
        self._watchers: List[Event] = []
        self._serving_watchers: List[Callable[[bool], None]] = []
        self._beat: Any = None
        self._proven_until = 0.0
        self._due = 0.0
        """When the next heartbeat is due (a later run means a busy reactor)."""
        self._joining: Optional[float] = None
        """When the join awaiting its answer was sent (None: none is)."""
        self._running = False
        self.channel = engine.key("members")
        """The channel of ``up``/``down`` announcements."""

    # -- API ------------------------------------------------------------------------------------

    def watch(self, callback: Event) -> None:
        """Call ``callback(event, node_name)`` for each change of another node: ``"up"`` (it
        joined), ``"down"`` (it left or its lease expired: every node hears it once) and
        ``"claimed"`` (a dead node was removed by this node: exactly one survivor hears it, to
        act once for the cluster, e.g. publish its clients' wills)."""
        self._watchers.append(callback)

    def watch_serving(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(serving)`` when this node starts or stops serving."""
        self._serving_watchers.append(callback)

    def route_key(self, name: str) -> str:
        """The key of the routes ``name`` holds (dropped with the node)."""
        return self.engine.key("routes", name)

    def heir_key(self, name: str) -> str:
        """The key naming the node that removed ``name`` (see ``REMOVE``)."""
        return self.engine.key("heir", name)

    def lease_key(self, name: str) -> str:
        """The key of ``name``'s lease."""
        return self.engine.key("lease", name)

    def start(self) -> None:
        """Join as soon as the engine is reachable, then heartbeat."""
        self._running = True
        self.engine.subscribe(self.channel, self._announced)
        self._beat = self.clock.callLater(0, self._heartbeat)

    def stop(self) -> Any:
        """Leave: give up the lease and membership (a clean leave is not a death)."""
        self._running = False
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None
        epoch = self.node.epoch
        self._set_serving(False)
        if not self.engine.up or not epoch:
            return None
        return self.engine.script(
            LEAVE, [self.engine.key("nodes"), self.lease_key(self.node.name),
                    self.route_key(self.node.name), self.channel],
            [self.node.name, epoch], control=True).addErrback(lambda _: None)

    # -- the heartbeat --------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        now = self.clock.seconds()
        if self._due and now - self._due > self.lease / 4:
            log.warn("cluster node {name}: heartbeat {late:.2f}s late (the reactor was busy)",
                     name=self.node.name, late=now - self._due)
        self._due = now + self.lease / 4
        self._beat = self.clock.callLater(self.lease / 4, self._heartbeat)
        if self.node.serving and now >= self._proven_until:
            log.warn("cluster node {name}: lease of epoch {epoch} not renewed within {lease}s; "
                     "not serving until it rejoins", name=self.node.name,
                     epoch=self.node.epoch, lease=self.lease)
            self._set_serving(False)
        if not self.engine.up:
            return
        if not self.node.serving:
            self._join()
            return
        self._renew(now)
        self._survey()

    def check(self) -> bool:
        """Whether the lease is still proven now (stops serving if it is not)."""
        if self.node.serving and self.clock.seconds() >= self._proven_until:
            self._heartbeat_now()
        return self.node.serving

    def _heartbeat_now(self) -> None:
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._heartbeat()

    def _join(self) -> None:
        sent = self.clock.seconds()
        if self._joining is not None and sent - self._joining < self.lease:
            return  # an unanswered join is tried again after a lease
        self._joining = sent
        name = self.node.name
        engine = self.engine
        engine.script(JOIN, [self.lease_key(name), engine.key("epoch"), engine.key("nodes"),
                             self.route_key(name), self.channel],
                      [name, int(self.lease * 1000)], control=True).addCallbacks(
            self._joined, self._join_failed, callbackArgs=(sent,))

    def _joined(self, reply: List[Any], sent: float) -> None:
        self._joining = None
        epoch = int(reply[0])
        if epoch < 0:
            log.warn("cluster node {name}: the name is held by a live node; retrying",
                     name=self.node.name)
            return
        if not self._running:
            return
        previous = int(reply[1])
        self.node.epoch = epoch
        self._proven_until = sent + self.lease
        self.members[self.node.name] = epoch
        log.info("cluster node {name}: joined {where} with epoch {epoch}",
                 name=self.node.name, where=self.engine.location, epoch=epoch)
        if previous:
            self._notify("claimed", self.node.name)
        self._set_serving(True)
        self._survey()

    def _join_failed(self, failure: Any) -> None:
        self._joining = None
        log.debug("cluster node {name}: join failed ({error})", name=self.node.name,
                  error=failure.value)

    def _renew(self, sent: float) -> None:
        epoch = self.node.epoch
        self.engine.script(RENEW, [self.lease_key(self.node.name)],
                           [epoch, int(self.lease * 1000)], control=True).addCallbacks(
            self._renewed, lambda _: None, callbackArgs=(sent, epoch))

    def _renewed(self, reply: Any, sent: float, epoch: int) -> None:
        took = self.clock.seconds() - sent
        if took > self.lease / 4:
            log.warn("cluster node {name}: lease renewal answered after {took:.2f}s (lease "
                     "{lease}s)", name=self.node.name, took=took, lease=self.lease)
        if epoch != self.node.epoch or not self.node.serving:
            return
        if int(reply) == 1:
            self._proven_until = max(self._proven_until, sent + self.lease)
            return
        log.warn("cluster node {name}: lease of epoch {epoch} lost (expired); not serving "
                 "until it rejoins", name=self.node.name, epoch=epoch)
        self._set_serving(False)

    def fenced(self) -> None:
        """The engine refused a write of this node's epoch (another node removed it): stop
        serving until it rejoins."""
        if self.node.serving:
            log.warn("cluster node {name}: epoch {epoch} fenced off; not serving until it "
                     "rejoins", name=self.node.name, epoch=self.node.epoch)
            self._set_serving(False)

    def _set_serving(self, serving: bool) -> None:
        if self.node.serving == serving:
            return
        self.node.serving = serving
        if not serving:
            self.members.clear()
        for callback in list(self._serving_watchers):
            try:
                callback(serving)
            except Exception:
                log.failure("cluster serving watcher {callback!r} failed", callback=callback)

    # -- the other members ----------------------------------------------------------------------

    def _survey(self) -> None:
        engine = self.engine
        engine.script(SURVEY, [engine.key("nodes")], [engine.key("lease", "")],
                      control=True).addCallbacks(self._surveyed, lambda _: None)

    def _surveyed(self, reply: List[Any]) -> None:
        if not self.node.serving:
            return
        seen: Dict[str, int] = {}
        for index in range(0, len(reply), 3):
            name = _text(reply[index])
            epoch = int(reply[index + 1])
            if name == self.node.name:
                continue
            if int(reply[index + 2]):
                seen[name] = epoch
            else:
                self._remove(name, epoch)
        for name, epoch in seen.items():
            if self.members.get(name) != epoch:
                if name in self.members:
                    self._gone(name)
                self.members[name] = epoch
                self._notify("up", name)
        for name in [n for n in self.members if n != self.node.name and n not in seen]:
            self._gone(name)

    def _remove(self, name: str, epoch: int) -> None:
        engine = self.engine
        engine.script(REMOVE, [engine.key("nodes"), self.lease_key(name), self.route_key(name),
                               self.channel, self.heir_key(name)],
                      [name, epoch, self.node.name, int(self.lease * HEIR_LEASES * 1000)],
                      control=True).addCallbacks(
            self._removed, lambda _: None, callbackArgs=(name, epoch))

    def _removed(self, reply: Any, name: str, epoch: int) -> None:
        if int(reply) != 1:
            return
        log.info("cluster node {name}: epoch {epoch} of node {dead} removed (lease expired)",
                 name=self.node.name, epoch=epoch, dead=name)
        self._gone(name)
        self._notify("claimed", name)

    def _gone(self, name: str) -> None:
        if self.members.pop(name, None) is not None:
            self._notify("down", name)

    def _announced(self, message: bytes) -> None:
        try:
            event, name, epoch = message.decode("utf-8").split(" ")
        except ValueError:
            return
        if name == self.node.name or not self.node.serving:
            return
        if event == "up" and self.members.get(name) != int(epoch):
            if name in self.members:
                self._gone(name)
            self.members[name] = int(epoch)
            self._notify("up", name)
        elif event == "down" and self.members.get(name) == int(epoch):
            self._gone(name)

    def _notify(self, event: str, name: str) -> None:
        for callback in list(self._watchers):
            try:
                callback(event, name)
            except Exception:
                log.failure("cluster membership watcher {callback!r} failed",
                            callback=callback)


def _text(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def optional_name(name: Optional[str]) -> str:
    """``name`` checked, or the default node name."""
    return check_node_name(name) if name else default_node_name()
