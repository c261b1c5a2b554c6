"""``twisted_mqtt.reactor.MQTTReactor`` (handling socket events without Twisted's per-event
logging context) and ``twisted_mqtt.collector`` (garbage collector settings).

The reactor is exercised on its own instance (never installed) with socket pairs: each test
polls with a zero timeout, so nothing waits.  End-to-end, ``python -m twisted_mqtt`` runs on it
(``tests/test_e2e.py``), as does ``twistd --reactor=mqtt``.
"""

from __future__ import annotations

import gc
import platform
import select
import socket
from typing import Any, Iterator, List, Optional, Tuple

import pytest
from twisted.internet import abstract, main
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twisted_mqtt import collector

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux-only")


class Endpoint(abstract.FileDescriptor):
    """One end of a socket pair that records what the reactor asks of it."""

    def __init__(self, reactor: Any, sock: socket.socket, answer: Any = None,
                 raises: Optional[Exception] = None) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.answer = answer
        """What ``doRead`` returns."""
        self.raises = raises
        """What ``doRead`` raises, if anything."""
        self.read: List[bytes] = []
        self.writes = 0
        self.lost: List[Failure] = []
        self.closed_fd = False

    def fileno(self) -> int:
        return -1 if self.closed_fd else self.sock.fileno()

    def logPrefix(self) -> str:
        return "Endpoint-under-test"

    def doRead(self) -> Any:
        self.read.append(self.sock.recv(1024))
        if self.raises is not None:
            raise self.raises
        return self.answer

    def doWrite(self) -> Any:
        self.writes += 1
        self.stopWriting()
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        self.stopReading()
        self.stopWriting()


@pytest.fixture
def reactor() -> Iterator[Any]:
    from twisted_mqtt.reactor import MQTTReactor

    made = MQTTReactor()
    yield made
    made._poller.close()  # the tests' sockets are closed by now
    made.waker.connectionLost(None)


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def poll(reactor: Any) -> None:
    reactor.doIteration(0)


def test_readable_socket_is_read(reactor: Any, pair: Tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    endpoint = Endpoint(reactor, ours)
    endpoint.startReading()
    poll(reactor)
    assert endpoint.read == []  # nothing to read: no event
    theirs.sendall(b"hello")
    poll(reactor)
    assert endpoint.read == [b"hello"]
    assert endpoint.lost == []


def test_the_main_loop_uses_the_fast_poll() -> None:
    from twisted_mqtt.reactor import MQTTReactor

    assert MQTTReactor.doIteration is MQTTReactor.doPoll


def test_a_failing_read_is_logged_and_disconnects_only_that_socket(
        reactor: Any, pair: Tuple[socket.socket, socket.socket], log_events: List[dict]) -> None:
    ours, theirs = pair
    other_ours, other_theirs = socket.socketpair()
    other_ours.setblocking(False)
    try:
        failing = Endpoint(reactor, ours, raises=ValueError("broken protocol"))
        healthy = Endpoint(reactor, other_ours)
        failing.startReading()
        healthy.startReading()
        theirs.sendall(b"x")
        other_theirs.sendall(b"y")
        poll(reactor)
        assert healthy.read == [b"y"] and healthy.lost == []
        assert len(failing.lost) == 1 and failing.lost[0].check(ValueError)
        errors = [e for e in log_events if e.get("isError")]
        assert len(errors) == 1
        assert errors[0]["failure"].check(ValueError)
        assert errors[0]["system"] == "Endpoint-under-test"
        theirs.sendall(b"more")
        poll(reactor)
        assert failing.read == [b"x"]  # no longer read
    finally:
        other_ours.close()
        other_theirs.close()


def test_read_answering_connection_done_disconnects(
        reactor: Any, pair: Tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    endpoint = Endpoint(reactor, ours, main.CONNECTION_DONE)
    endpoint.startReading()
    theirs.sendall(b"last")
    poll(reactor)
    assert len(endpoint.lost) == 1 and endpoint.lost[0].check(main.error.ConnectionDone)


def test_writable_socket_is_written(reactor: Any, pair: Tuple[socket.socket, socket.socket]
                                    ) -> None:
    ours, _ = pair
    endpoint = Endpoint(reactor, ours)
    endpoint.startWriting()
    poll(reactor)
    assert endpoint.writes == 1
    poll(reactor)
    assert endpoint.writes == 1  # stopped writing: no more events


def test_hang_up_takes_twisteds_path(reactor: Any, pair: Tuple[socket.socket, socket.socket]
                                     ) -> None:
    """Readable and hung up at once (the peer wrote and closed): read, then the read of the
    end of the stream disconnects."""
    ours, theirs = pair
    endpoint = Endpoint(reactor, ours)
    endpoint.startReading()
    theirs.sendall(b"bye")
    theirs.shutdown(socket.SHUT_RDWR)
    endpoint.answer = None
    poll(reactor)
    assert endpoint.read[0] == b"bye"
    endpoint.answer = main.CONNECTION_DONE
    poll(reactor)
    assert len(endpoint.lost) == 1 and endpoint.lost[0].check(main.error.ConnectionDone)


def test_closed_descriptor_is_disconnected_not_read(
        reactor: Any, pair: Tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    endpoint = Endpoint(reactor, ours)
    endpoint.startReading()
    theirs.sendall(b"unread")
    endpoint.closed_fd = True
    poll(reactor)
    assert endpoint.read == []
    assert len(endpoint.lost) == 1 and endpoint.lost[0].check(main.error.ConnectionFdescWentAway)


# -- garbage collector --------------------------------------------------------------------------


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    if hasattr(gc, "unfreeze"):
        gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="CPython's collector")
def test_tune_freezes_start_up_objects_and_raises_the_young_threshold(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    before = gc.get_freeze_count()
    assert collector.tune() is True
    assert gc.get_freeze_count() > before
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, 10, 10)


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="CPython's collector")
def test_tune_keeps_a_higher_threshold(restored_gc: None) -> None:
    gc.set_threshold(collector.YOUNG_THRESHOLD * 2, 5, 7)
    assert collector.tune() is True
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD * 2, 5, 7)


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="CPython's collector")
def test_cycles_are_still_collected_after_tune(restored_gc: None) -> None:
    collector.tune()

    class Node:
        other: Optional[Node] = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    import weakref

    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_tune_process_leaves_a_fake_reactor_alone() -> None:
    from twisted_mqtt.tap import tune_process

    fake = MemoryReactorClock()
    assert tune_process(fake) is False
    assert fake.whenRunningHooks == []
