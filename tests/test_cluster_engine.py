"""The cluster engine's connections against a real ``redis-server``: a refused AUTH is one log
line saying why and a retry, not a connection that never becomes ready; commands, scripts and
channels once connected; ``EngineDown`` while not; a node's lease renewed while its commands
connection is held up."""

from __future__ import annotations

from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.servers import RedisServer, redis_server  # noqa: F401
from twisted_mqtt.cluster.engine import EngineDown, RedisEngine
from twisted_mqtt.cluster.membership import Membership

pytestmark = pytest.mark.e2e


def sleep(seconds: float) -> Deferred[None]:
    """Let the reactor run for ``seconds``."""
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_refused_password_is_logged_once_and_retried(
        redis_server: RedisServer, logged: List[str]) -> Any:  # noqa: F811
    """AUTH refused: within the connect timeout the engine says why in one line, and keeps
    retrying without another line until it is up."""
    engine = RedisEngine(f"redis://:wrong@{redis_server.host}:{redis_server.port}/0", reactor,
                         retry_delay=0.1, connect_timeout=0.5)
    engine.start()
    try:
        yield sleep(2.0)
        lines = [line for line in logged if "cannot connect" in line]
        assert len(lines) == 1, logged
        assert "could not auth" in lines[0]
        assert not engine.up
        with pytest.raises(EngineDown):
            yield engine.command("PING")
    finally:
        yield engine.stop()


@pytest_twisted.inlineCallbacks
def test_commands_scripts_and_channels(redis_server: RedisServer) -> Any:  # noqa: F811
    """Connected: a command, a script, and a channel's messages reach their callback."""
    engine = RedisEngine(redis_server.url(9, "engine-test:"), reactor)
    changes: List[bool] = []
    engine.watch(changes.append)
    got: List[bytes] = []
    engine.subscribe(engine.key("chan"), got.append)
    engine.start()
    try:
        while not engine.up:
            yield sleep(0.05)
        assert engine.key("a", "b") == "engine-test:cluster:a:b"
        assert (yield engine.command("PING")) == "PONG"  # a status reply
        assert (yield engine.script("return ARGV[1] .. KEYS[1]", ["k"], ["v"])) == b"vk"
        yield engine.command("PUBLISH", engine.key("chan"), b"hello")
        while not got:
            yield sleep(0.05)
        assert got == [b"hello"]
    finally:
        yield engine.stop()
    assert changes == [True, False]


@pytest_twisted.inlineCallbacks
def test_lease_renewed_while_the_commands_connection_is_held_up(
        redis_server: RedisServer, logged: List[str]) -> Any:  # noqa: F811
    """A loaded node's commands connection carries seconds of pipelined message batches, which
    Redis answers in order (here one command that holds it for three leases): the node's
    lease renewals do not wait behind them, so it keeps serving and its lease never lapses in
    Redis."""
    lease = 1.0
    engine = RedisEngine(redis_server.url(0, "lease-test:"), reactor)
    members = Membership(engine, "loaded", reactor, lease)
    changes: List[bool] = []
    members.watch_serving(changes.append)
    engine.start()
    members.start()
    try:
        while not members.node.serving:
            yield sleep(0.05)
        held = engine.command("BLPOP", engine.key("nothing"), 3 * lease)
        ttls = []
        while not held.called:  # the lease's time to live, read beside the engine
            ttls.append(int(redis_server.command("PTTL", members.lease_key("loaded"))[1:]))
            yield sleep(lease / 4)
        assert changes == [True], logged
        assert members.node.serving and members.check()
        assert len(ttls) > 4 and min(ttls) > 0, ttls
    finally:
        members.stop()
        yield engine.stop()
