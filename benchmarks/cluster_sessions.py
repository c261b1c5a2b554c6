"""Cluster sessions: what a session costs when it moves, and what a move during a stream loses.

Three ``twistd mqtt --cluster`` nodes on one private redis-server (lease 2 s), paho clients:
  connect     CONNECT to CONNACK for a client id no node holds (the node becomes its owner)
  hand-over   CONNECT to CONNACK for a persistent session connected on another node (that
              node takes its connection over, commits, moves the owner token; this one reads
              and restores the session)
  will        SIGKILL of a node to its client's will received on another node (the survivor
              that removes the dead node adopts its sessions)
  stream      a persistent subscriber moved to another node in the middle of a QoS 1 stream
              published from a third node: messages it never got (docs/cluster.md, Limits)

    python3 benchmarks/cluster_sessions.py [--rounds 30] [--stream 1000] [--pause 0]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from tests.cluster_helpers import PROBE, Nodes, collect, routed, unique  # noqa: E402
from tests.conftest import BrokerProcess, _stop_all  # noqa: E402
from tests.paho import V5, Client  # noqa: E402
from tests.servers import RedisServer  # noqa: E402


def persistent(node: BrokerProcess, client_id: str) -> Tuple[Client, float]:
    """A client with an hour-long session connected to ``node``, and the seconds its CONNECT
    took."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client = Client(node.port, V5, client_id)
    started = time.monotonic()
    client.connect(clean_start=False, properties=props)
    return client, time.monotonic() - started


def connects(nodes: Nodes, rounds: int) -> None:
    fresh: List[float] = []
    moved: List[float] = []
    for _ in range(rounds):
        client_id = unique("bench")
        first, took = persistent(nodes[0], client_id)
        fresh.append(took)
        first.subscribe("bench/t", 1)
        second, took = persistent(nodes[1], client_id)
        moved.append(took)
        second.close()
        first.close()
    for name, figures in (("connect, new client id", fresh), ("hand-over", moved)):
        print(f"{name}: median {1000 * statistics.median(figures):.1f} ms, "
              f"max {1000 * max(figures):.1f} ms over {rounds}")


def stream(nodes: Nodes, count: int, pause: float) -> None:
    client_id = unique("mover")
    topic = unique("bench")
    subscriber, _took = persistent(nodes[0], client_id)
    subscriber.subscribe(f"{topic}/#", 1)
    publisher = Client(nodes[2].port, V5, unique("pub")).connect()
    routed(publisher, subscriber, f"{topic}/probe")

    def publish() -> None:
        for n in range(count):
            publisher.publish(f"{topic}/m", str(n).encode(), 1)
        publisher.publish(f"{topic}/end", b"end", 1)

    thread = threading.Thread(target=publish)
    thread.start()
    got: List[int] = []
    while len(got) < count // 3:
        message = subscriber.messages.get(timeout=30)
        if message.payload != PROBE:
            got.append(int(message.payload))
    subscriber.paho.loop_stop()
    sock = subscriber.paho.socket()
    if sock is not None:
        sock.close()  # the connection breaks
    while not subscriber.messages.empty():
        message = subscriber.messages.get()
        if message.payload != PROBE:
            got.append(int(message.payload))
    time.sleep(pause)
    again, _took = persistent(nodes[1], client_id)
    thread.join()
    got += [int(m.payload) for m in collect(again, f"{topic}/end", timeout=60)]
    missing = sorted(set(range(count)) - set(got))
    print(f"stream: moved after {count // 3} of {count} QoS 1 messages (pause {pause} s): "
          f"{len(missing)} missing {missing[:20]}, {len(got) - len(set(got))} received twice "
          "(QoS 1 resent: the broken connection had not acknowledged them)")
    again.close()
    publisher.close()


def will(nodes: Nodes) -> None:
    watcher = Client(nodes[1].port, V5, unique("watch")).connect()
    topic = unique("will")
    watcher.subscribe(f"{topic}/#", 1)
    victim = Client(nodes[2].port, V5, unique("victim"))
    victim.paho.will_set(f"{topic}/gone", b"gone", 1)
    victim.connect()
    routed(Client(nodes[2].port, V5, unique("probe")).connect(), watcher, f"{topic}/probe")
    started = time.monotonic()
    nodes[2].proc.send_signal(signal.SIGKILL)
    nodes[2].proc.wait()
    while watcher.messages.get(timeout=30).payload == PROBE:
        pass
    print(f"will: SIGKILL to the will received on another node: "
          f"{time.monotonic() - started:.2f} s (lease 2 s)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="connects and hand-overs")
    parser.add_argument("--stream", type=int, default=1000, help="QoS 1 messages streamed")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds between the subscriber's two connections")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="cluster-sessions-"))
    redis = RedisServer(directory)
    nodes = Nodes(directory, redis.url(0, "bench:"), "--sys-interval", "0")
    try:
        for name in ("n0", "n1", "n2"):
            nodes.start(name)
        connects(nodes, args.rounds)
        stream(nodes, args.stream, args.pause)
        will(nodes)
    finally:
        _stop_all(nodes.running())
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
