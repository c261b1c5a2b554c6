"""Many concurrent MQTT connections held by ``--workers`` beside Mosquitto (one process).

A process may hold at most 20,000 open files here, so one broker process cannot hold 100,000
connections, and neither can one load generator: ``--connections`` are opened by several
``loadgen --scenario idle`` processes (each CONNECT, one PINGREQ, then held; keep alive 600 s),
from the source addresses 127.0.0.1..N in turn (``--sources``: one address has about 28,000
ephemeral ports towards one broker port), against ``--workers`` broker processes sharing one
port, joined through a private redis-server.  Reported: the time until every connection had its
CONNACK and PINGRESP, the RSS the broker processes gained per connection, and the round trip of
a fresh client (CONNECT, SUBSCRIBE, PUBLISH QoS 1 to itself, the message back) while all are
held.  Then the same for Mosquitto with ``--mosquitto-connections``.

    make -C benchmarks
    python3 benchmarks/connections.py                                  # 100,000 over 6 workers
    python3 benchmarks/connections.py --connections 20000 --workers 2 --skip-mosquitto
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from cluster import SetUp, children  # noqa: E402
from run import LOADGEN, status_kb  # noqa: E402

from tests.servers import RedisServer  # noqa: E402

PER_LOADGEN = 19000
"""Connections one loadgen process opens (it may hold 20,000 files)."""


def tree_rss_kb(pids: List[int]) -> int:
    """The RSS of these processes and their descendants, KB."""
    return sum(max(0, status_kb(each, "VmRSS")) for pid in pids for each in children(pid))


def sockets_by_process(pids: List[int]) -> List[int]:
    """How many sockets each of these processes and their descendants holds, largest first
    (a worker: its clients, plus a few of its own)."""
    counts = []
    for pid in pids:
        for each in children(pid):
            try:
                names = os.listdir(f"/proc/{each}/fd")
            except OSError:
                continue
            held = 0
            for name in names:
                try:
                    held += os.readlink(f"/proc/{each}/fd/{name}").startswith("socket:")
                except OSError:
                    continue
            counts.append(held)
    return sorted(counts, reverse=True)


def round_trip(port: int, topic: str) -> float:
    """Seconds for a fresh client to connect, subscribe, publish QoS 1 to itself and receive
    the message."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rtt-{topic}")
    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda *_: got.set()
    started = time.monotonic()
    client.connect("127.0.0.1", port, 60)
    client.loop_start()
    try:
        if not subscribed.wait(60):
            return math.inf
        client.publish(topic, b"ping", 1)
        if not got.wait(60):
            return math.inf
        return time.monotonic() - started
    finally:
        client.disconnect()
        client.loop_stop()


def hold(args: argparse.Namespace, port: int, pids: List[int], count: int,
         label: str) -> Dict:
    """Open ``count`` connections to ``port`` with loadgen processes; measure while held."""
    rss0 = tree_rss_kb(pids)
    loadgens: List[subprocess.Popen] = []
    started = time.monotonic()
    remaining = count
    while remaining > 0:
        share = min(PER_LOADGEN, remaining)
        remaining -= share
        loadgens.append(subprocess.Popen(
            [str(args.loadgen), "--port", str(port), "--scenario", "idle", "--conns",
             str(share), "--sources", str(args.sources), "--hold", str(args.hold),
             "--protocol", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    connected: List[float] = []
    for loadgen in loadgens:
        assert loadgen.stderr is not None
        for line in loadgen.stderr:
            if line.startswith("connected "):
                connected.append(time.monotonic() - started)
                break
        else:
            raise RuntimeError(f"{label}: a loadgen ended before connecting: "
                               f"{loadgen.wait()}")
    connect_s = max(connected)
    time.sleep(2.0)  # the brokers settle (Redis writes, buffers freed)
    rss1 = tree_rss_kb(pids)
    sockets = sockets_by_process(pids)
    trips = [round_trip(port, f"rtt/{label}/{i}") for i in range(args.round_trips)]
    for loadgen in loadgens:
        loadgen.send_signal(signal.SIGKILL)
        loadgen.wait()
    result = {"label": label, "connections": count, "loadgens": len(loadgens),
              "connect_s": round(connect_s, 2), "conns_per_s": round(count / connect_s),
              "rss_before_mb": round(rss0 / 1024, 1), "rss_after_mb": round(rss1 / 1024, 1),
              "kb_per_conn": round((rss1 - rss0) / count, 2),
              "round_trip_ms": [round(1e3 * t, 1) for t in trips],
              "round_trip_median_ms": round(1e3 * statistics.median(trips), 1),
              "sockets_by_process": sockets}
    print(json.dumps(result), file=sys.stderr)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=100000)
    parser.add_argument("--workers", type=int, default=6,
                        help="0: one broker process, no cluster")
    parser.add_argument("--mosquitto-connections", type=int, default=19900,
                        help="Mosquitto is one process: at most 20,000 open files here")
    parser.add_argument("--skip-mosquitto", action="store_true")
    parser.add_argument("--sources", type=int, default=8,
                        help="source addresses 127.0.0.1..N, used in turn")
    parser.add_argument("--hold", type=float, default=600.0,
                        help="seconds each loadgen would hold (they are stopped once measured)")
    parser.add_argument("--round-trips", type=int, default=5)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--broker-root", default=str(HERE.parent))
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--loadgen", default=str(LOADGEN))
    args = parser.parse_args(argv)
    args.mosquitto_nodelay = False
    if not Path(args.loadgen).exists():
        subprocess.run(["make", "-C", str(HERE)], check=True)
    results = []
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="connections-redis-")))
    try:
        kind = f"workers-{args.workers}" if args.workers else "one-process"
        setup = SetUp(kind, args, redis, 0)
        try:
            results.append(hold(args, setup.port, setup.pids, args.connections,
                                f"twisted_mqtt --workers {args.workers}" if args.workers
                                else "twisted_mqtt, one process"))
        finally:
            setup.stop()
        if not args.skip_mosquitto:
            setup = SetUp("mosquitto", args, redis, 0)
            try:
                results.append(hold(args, setup.port, setup.pids, args.mosquitto_connections,
                                    "mosquitto"))
            finally:
                setup.stop()
    finally:
        redis.stop()
        shutil.rmtree(redis.directory, ignore_errors=True)
    print("| broker | connections | time to connect all | connections/s | RSS before -> after "
          "| KB per connection | fresh client's round trip (median, max) | sockets per process |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {r['connections']:,} | {r['connect_s']} s | "
              f"{r['conns_per_s']:,} | {r['rss_before_mb']} -> {r['rss_after_mb']} MB | "
              f"{r['kb_per_conn']} | {r['round_trip_median_ms']} ms, "
              f"{max(r['round_trip_ms'])} ms | "
              f"{', '.join(f'{n:,}' for n in r['sockets_by_process'] if n > 10)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
