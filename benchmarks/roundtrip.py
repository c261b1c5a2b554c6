"""The broker core's cost of one QoS 1 request/response round trip, without sockets.

The ``reqresp-pairs`` scenario of ``run.py`` in one process: 50 devices, each with its own
responder.  A round trip is: the device's QoS 1 PUBLISH on ``req/i`` (one read), the broker's
PUBACK to it and PUBLISH to responder *i*; the responder's PUBACK and QoS 1 answer on
``resp/i`` (one read); the broker's PUBACK to it and PUBLISH to the device; the device's PUBACK
(one read).  Every read goes through ``Connection.data_received`` and every write out through
``Connection.flush``, as on a socket; the harness itself only slices packet ids out of bytes.

    python3 benchmarks/roundtrip.py                  # wall clock: µs per round trip
    python3 benchmarks/roundtrip.py --instructions   # CPU instructions per round trip
    python3 benchmarks/roundtrip.py --profile        # cProfile of the rounds
    python3 benchmarks/roundtrip.py --workload connect --instructions

``--workload connect`` measures accepting a client instead, as the ``idle`` scenario does:
a new connection's CONNECT (clean session, keep alive 600), the broker's CONNACK, one PINGREQ
and its PINGRESP; a "round trip" is then one such connection (they stay open).
``--workload stream`` is the ``stream`` scenario: QoS 0 messages from one publisher to one
subscriber, 100 per read; the figure is per message.  ``--workload qos1`` is the ``qos1``
scenario: 10 publisher/subscriber pairs, 100 QoS 1 messages per read and their 100 PUBACKs in
one read; the figure is per message.  ``--log text``
(or ``json``) logs as ``python -m twisted_mqtt`` does, to /dev/null, with no reactor running
(so every line is written at once); by default the log events are only kept in Twisted's
start-up buffer.

``--instructions`` runs the workload under ``valgrind --tool=callgrind`` twice (``--rounds``
and twice as many) and divides the difference of the instruction counts by the difference of
the round trips, so start-up and set-up cancel out: a figure that other load on the machine
does not move, for A/B comparisons.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.internet.task import Clock  # noqa: E402

from twisted_mqtt.auth import AllowAll  # noqa: E402
from twisted_mqtt.broker import Broker  # noqa: E402
from twisted_mqtt.capabilities import Capabilities  # noqa: E402
from twisted_mqtt.codec import encode, publish_template  # noqa: E402
from twisted_mqtt.connection import Connection  # noqa: E402
from twisted_mqtt.packets import Connect, Publish, Subscribe, Subscription  # noqa: E402


class Sink:
    """A transport that keeps the last bytes written."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data = data

    def loseConnection(self) -> None:
        raise AssertionError("the broker closed a connection")

    abortConnection = loseConnection


def client(broker: Broker, client_id: str, level: int, topic_filter: str) -> Connection:
    """A connected client subscribed to ``topic_filter`` at QoS 1."""
    conn = Connection(broker, Sink(), "127.0.0.1")
    conn.data_received(encode(Connect(client_id, level, True, 600), level) +
                       encode(Subscribe(1, (Subscription(topic_filter, 1),)), level))
    return conn


def packet_id(data: bytes) -> bytes:
    """The packet identifier of the QoS 1 PUBLISH ``data`` begins with (lengths under 128)."""
    at = 4 + ((data[2] << 8) | data[3])
    return data[at:at + 2]


def run(rounds: int, level: int, devices: int) -> float:
    """Make ``rounds`` round trips per device; return the seconds they took."""
    broker = Broker(Clock(), Capabilities(sys_interval=0), authenticator=AllowAll())
    broker.start()
    props = b"\x00" if level == 5 else b""
    payload = bytes(40)  # the load generator's 64-byte payloads are 24-byte headers + padding
    pairs: List[Any] = []
    for i in range(devices):
        device = client(broker, f"d{i}", level, f"resp/{i}")
        responder = client(broker, f"r{i}", level, f"req/{i}")
        # The clients' PUBLISH packets, split around their packet ids (made without the codec,
        # so that the harness costs the same whatever the codec is).
        request = publish_template(b"req/%d" % i, props + payload if props else payload, 1,
                                   False, None)
        answer = publish_template(b"resp/%d" % i, props + payload if props else payload, 1,
                                  False, None)
        pairs.append((device, device.transport, responder, responder.transport, request,
                      (b"\x40\x02",) + answer))
    start = time.perf_counter()
    for n in range(rounds):
        pid = (n % 65535 + 1).to_bytes(2, "big")
        for device, dev_out, responder, resp_out, (head, tail), (ack, rhead, rtail) in pairs:
            device.data_received(head + pid + tail)
            responder.data_received(ack + packet_id(resp_out.data) + rhead + pid + rtail)
            device.data_received(ack + packet_id(dev_out.data))
    return time.perf_counter() - start


def log_to_null(log_format: str) -> None:
    """Log as ``python -m twisted_mqtt`` does (``LogOutput``, level info), to /dev/null."""
    from twisted.logger import globalLogBeginner

    from twisted_mqtt.logs import LogOutput

    output = LogOutput(log_format, stream=open(os.devnull, "w"))
    globalLogBeginner.beginLoggingTo([output.start()], redirectStandardIO=False)


def connect(rounds: int, level: int, devices: int) -> float:
    """Open ``rounds * devices`` connections; return the seconds they took."""
    broker = Broker(Clock(), Capabilities(sys_interval=0), authenticator=AllowAll())
    broker.start()
    # Client ids of 8 digits, the last field of the CONNECT: written into one encoded CONNECT,
    # so that making the packets costs next to nothing beside accepting them.
    template = encode(Connect("lg-i00000000", level, True, 600), level)[:-8]
    hellos = [template + b"%08d" % n for n in range(rounds * devices)]
    start = time.perf_counter()
    for hello in hellos:
        conn = Connection(broker, Sink(), "127.0.0.1")
        conn.data_received(hello)
        conn.data_received(b"\xc0\x00")
    return time.perf_counter() - start


def stream(rounds: int, level: int, devices: int) -> float:
    """Forward ``rounds * devices`` QoS 0 messages from one publisher to one subscriber, 100
    64-byte PUBLISHes per chunk, each chunk read in two pieces split inside a packet; return
    the seconds they took."""
    broker = Broker(Clock(), Capabilities(sys_interval=0), authenticator=AllowAll())
    broker.start()
    client(broker, "sub", level, "stream/1")
    publisher = client(broker, "pub", level, "none/1")
    chunk = b"".join(encode(Publish("stream/1", bytes(56) + n.to_bytes(8, "big"), 0), level)
                     for n in range(100))
    split = len(chunk) // 2 + 7
    start = time.perf_counter()
    for _ in range(rounds * devices // 100):
        publisher.data_received(chunk[:split])
        publisher.data_received(chunk[split:])
    return time.perf_counter() - start


def qos1(rounds: int, level: int, devices: int) -> float:
    """Forward ``rounds * devices`` QoS 1 messages between 10 publisher/subscriber pairs, each
    publisher sending 100 64-byte PUBLISHes per read and its subscriber answering them with
    100 PUBACKs in one read, as the ``qos1`` scenario's clients do; return the seconds they
    took."""
    broker = Broker(Clock(), Capabilities(sys_interval=0), authenticator=AllowAll())
    broker.start()
    pairs = []
    for i in range(10):
        subscriber = client(broker, f"s{i}", level, f"qos1/{i}")
        publisher = client(broker, f"p{i}", level, "none/1")
        burst = b"".join(encode(Publish(f"qos1/{i}", bytes(56) + n.to_bytes(8, "big"), 1,
                                        packet_id=n + 1), level) for n in range(100))
        pairs.append((publisher, subscriber, burst))
    # The subscribers' packet ids as the broker allocates them: 1, 2, ... 65535, 1, ...
    acks = [b"".join(b"\x40\x02" + ((100 * k + n) % 65535 + 1).to_bytes(2, "big")
                     for n in range(100)) for k in range(rounds * devices // 1000)]
    start = time.perf_counter()
    for answer in acks:
        for publisher, subscriber, burst in pairs:
            publisher.data_received(burst)
            subscriber.data_received(answer)
    return time.perf_counter() - start


WORKLOADS = {"reqresp": run, "connect": connect, "stream": stream, "qos1": qos1}
UNITS = {"reqresp": "round trip", "connect": "connection", "stream": "message",
         "qos1": "message"}


def instructions(args: argparse.Namespace, rounds: int) -> int:
    """Instructions executed by this script with ``rounds`` rounds, under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--rounds", str(rounds), "--protocol",
                        str(args.protocol), "--devices", str(args.devices), "--workload",
                        args.workload, "--log", args.log],
                       check=True, capture_output=True,
                       env=dict(os.environ, PYTHONHASHSEED="0"))
        with open(out) as f:
            found = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        assert found is not None
        return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000, help="round trips per device")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--protocol", type=int, default=4, choices=(4, 5))
    parser.add_argument("--workload", default="reqresp", choices=sorted(WORKLOADS))
    parser.add_argument("--log", default="none", choices=("none", "text", "json"),
                        help="log as the broker does, in this format, to /dev/null (default: "
                        "events are only kept by Twisted's start-up buffer)")
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per round trip, under callgrind")
    parser.add_argument("--profile", action="store_true", help="cProfile, top 25 by self time")
    args = parser.parse_args()
    if args.log != "none" and not args.instructions:
        log_to_null(args.log)
    if args.instructions:
        low = instructions(args, args.rounds)
        high = instructions(args, 2 * args.rounds)
        per = (high - low) / (args.rounds * args.devices)
        print(f"{args.workload}, protocol {args.protocol}, log {args.log}: {per:,.0f} "
              "instructions per "
              f"{UNITS[args.workload]}")
        return
    if args.profile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(WORKLOADS[args.workload], args.rounds, args.protocol, args.devices)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    seconds = WORKLOADS[args.workload](args.rounds, args.protocol, args.devices)
    print(f"{args.workload}, protocol {args.protocol}: "
          f"{1e6 * seconds / (args.rounds * args.devices):.2f} µs per "
          f"{UNITS[args.workload]}")


if __name__ == "__main__":
    main()
