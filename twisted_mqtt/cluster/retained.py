"""Retained messages cluster-wide: replicated to every node, indexed locally.

Every retained message is in the hash ``{prefix}retained`` (topic -> record, with the time it
was written on the writer's clock for message expiry) and each change is announced on the
channel ``{prefix}retained``.  A node reads the hash when it joins (and when its engine comes
back) and applies each announcement (its own too, so every node ends with the order Redis
applied), straight into its broker's ``RetainedIndex``: a SUBSCRIBE never reads Redis.  What it
holds and Redis lacks (Redis restarted empty, a store restored at start-up) it writes back
unless another node did first.  A node's own changes are written once per reactor turn (the
latest per topic), fenced by its epoch, and held while the engine is unreachable.  ``$SYS``
topics are each node's own and are not replicated.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.logger import Logger

from twisted_mqtt.cluster.engine import RedisEngine
from twisted_mqtt.cluster.membership import Membership
from twisted_mqtt.cluster.wire import decode_record, encode_record
from twisted_mqtt.hooks import Hook

log = Logger()

WRITE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  redis.call('PUBLISH', KEYS[3], string.len(ARGV[i]) .. ' ' .. ARGV[i] .. ARGV[i + 1])
end
return 1
"""
"""Set (or with an empty record delete) retained messages, fenced by the writer's epoch, and
announce each change as ``LENGTH TOPIC RECORD``."""


SEED = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('PUBLISH', KEYS[3], string.len(ARGV[i]) .. ' ' .. ARGV[i] .. ARGV[i + 1])
  end
end
return 1
"""
"""Set the retained messages of the topics that have none, and announce them."""


def _stamp(now: float) -> bytes:
    return int(now * 1000).to_bytes(8, "big")


class RetainedReplica(Hook):
    """This node's copy of the cluster's retained messages (see the module's docstring)."""

    def __init__(self, broker: Any, engine: RedisEngine, members: Membership) -> None:
        self.broker = broker
        self.engine = engine
        self.members = members
        self.key = engine.key("retained")
        self._changes: Dict[str, Optional[bytes]] = {}
        self._call: Any = None

    def start(self) -> None:
        """Watch the broker's retained messages and the cluster's."""
        self.broker.hooks.add(self)
        self.engine.subscribe(self.key, self._announced)
        self.members.watch_serving(self._serving)
        self.engine.watch(self._engine)

    def stop(self) -> None:
        """Stop watching the broker."""
        if self in self.broker.hooks:
            self.broker.hooks.remove(self)

    # -- this node's changes --------------------------------------------------------------------

    def on_retain_message(self, message: Any, change: int) -> None:
        """A local client set (1) or cleared (-1) a retained message: replicate it."""
        topic = message.topic
        if change == 0 or topic.startswith("$SYS"):
            return
        now = self.broker.now
        record = encode_record(message, True, "", now) if change > 0 else None
        self._changes[topic] = _stamp(now) + record if record is not None else None
        if self._call is None:
            self._call = self.members.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write this turn's changes."""
        self._call = None
        node = self.members.node
        if not self._changes or not self.engine.up or not node.serving:
            return
        changes, self._changes = self._changes, {}
        args: List[Any] = [node.name, node.epoch]
        for topic, record in changes.items():
            args += [topic, record or b""]
        self.engine.script(WRITE, [self.engine.key("nodes"), self.key, self.key],
                           args).addErrback(self._not_written, changes)

    def _not_written(self, failure: Any, changes: Dict[str, Optional[bytes]]) -> None:
        for topic, record in changes.items():
            self._changes.setdefault(topic, record)

    def _engine(self, up: bool) -> None:
        if up and self.members.node.serving:  # announcements made meanwhile are lost: reload
            self._serving(True)

    # -- the cluster's changes ------------------------------------------------------------------

    def _serving(self, serving: bool) -> None:
        if serving:
            self.engine.command("HGETALL", self.key).addCallbacks(self._loaded, lambda _: None)
            self.flush()

    def _loaded(self, reply: List[bytes]) -> None:
        broker = self.broker
        now = broker.tick()
        count = 0
        topics = set()
        for index in range(0, len(reply), 2):
            topic = reply[index].decode("utf-8")
            topics.add(topic)
            count += self._apply(topic, reply[index + 1], now)
        self._seed([t for t in broker.retained if t not in topics
                    and not t.startswith("$SYS") and t not in self._changes], now)
        log.info("cluster: {count} retained messages loaded", count=count)

    def _seed(self, topics: List[str], now: float) -> None:
        """Give the engine the retained messages this node holds and it lacks (a Redis that
        restarted empty, a store restored at start-up), unless another node sets them first."""
        node = self.members.node
        args: List[Any] = [node.name, node.epoch]
        for topic in topics:
            record = encode_record(self.broker.retained[topic], True, "", now)
            if record is not None:
                args += [topic, _stamp(now) + record]
        if len(args) > 2:
            self.engine.script(SEED, [self.engine.key("nodes"), self.key, self.key],
                               args).addErrback(lambda _: None)

    def _announced(self, data: bytes) -> None:
        space = data.index(b" ")
        length = int(data[:space])
        topic = data[space + 1:space + 1 + length].decode("utf-8")
        self._apply(topic, data[space + 1 + length:], self.broker.tick())

    def _apply(self, topic: str, raw: bytes, now: float) -> int:
        retained = self.broker.retained
        if not raw:
            retained.pop(topic, None)
            return 0
        written = int.from_bytes(raw[:8], "big") / 1000
        try:
            message, _share = decode_record(raw[8:], written)
        except Exception as error:
            log.warn("cluster: bad retained record for {topic} ignored ({error})", topic=topic,
                     error=error)
            return 0
        if message.expires_at is not None and message.expires_at <= now:
            retained.pop(topic, None)  # the nodes' clocks are taken to agree
            return 0
        retained[topic] = message
        return 1
