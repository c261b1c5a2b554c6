"""Throughput of the MQTT client: one client publishes N messages, another receives them.

    python benchmarks/client.py tcp:127.0.0.1:1883 [--count 20000] [--qos 1] [--size 64]

Prints messages per second from the first publish to the last message received (and to the last
acknowledgement), for the QoS asked for.  Run it against any broker (Mosquitto, twistd mqtt).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, List

from twisted.internet import defer, task

from twisted_mqtt.client import Message, MQTTClient


@defer.inlineCallbacks
def main(reactor: Any, *argv: str) -> Any:
    """Run one measurement and print it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--version", type=int, default=5)
    args = parser.parse_args(argv)
    options = {"protocol_level": args.version, "max_queued": args.count}
    subscriber = MQTTClient(reactor, args.endpoint, "bench-sub", **options)
    publisher = MQTTClient(reactor, args.endpoint, "bench-pub", **options)
    yield subscriber.connect()
    yield publisher.connect()
    got: List[Message] = []
    done: defer.Deferred = defer.Deferred()

    def received(message: Message) -> None:
        got.append(message)
        if len(got) == args.count:
            done.callback(time.perf_counter())

    yield subscriber.subscribe("bench/client", received, args.qos)
    payload = b"x" * args.size
    start = time.perf_counter()
    acks = defer.gatherResults([publisher.publish("bench/client", payload, args.qos)
                                for _ in range(args.count)])
    yield acks
    acked = time.perf_counter()
    finished = yield done
    print(f"QoS {args.qos}, {args.count} messages of {args.size} bytes, MQTT "
          f"{'5.0' if args.version == 5 else '3.1.1'}: "
          f"{args.count / (finished - start):,.0f} msg/s delivered, "
          f"{args.count / (acked - start):,.0f} msg/s acknowledged")
    yield publisher.disconnect()
    yield subscriber.disconnect()


if __name__ == "__main__":
    import sys

    task.react(main, sys.argv[1:])
