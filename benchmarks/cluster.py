"""Cluster benchmarks: messages crossing nodes through one Redis, and ``--workers 2`` against one
process, each beside Mosquitto in the same run (benchmarks/run.py's loadgen scenarios).

Set-ups, each started afresh for every run:
  cross-node   three nodes (``--cluster``) on one private redis-server; the publishers connect
               to node a, the subscribers to nodes b and c (``loadgen --sub-port``): every
               message crosses Redis (QoS 0 over pub/sub, QoS 1 through node streams).
  workers-2    ``--workers 2 --cluster``: one port, the kernel spreads the clients over the two
               workers (messages cross when publisher and subscriber landed apart).
  one-process  a plain broker.
  mosquitto    Debian's Mosquitto.
CPU is summed over the broker's processes (a supervisor and its workers, or the three nodes);
Redis's CPU and commands per second are reported for the cluster set-ups, with the messages per
second one Redis could carry at 100% of its core (msgs/s divided by its CPU share).

    make -C benchmarks
    python3 benchmarks/cluster.py                     # stream, qos1, fanout; 3 repeats
    python3 benchmarks/cluster.py --scenario stream --repeat 1 --profile /tmp/cluster-prof
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from run import (  # noqa: E402
    LOADGEN,
    Broker,
    cpu_seconds,
    fmt,
    loadgen_argv,
    loadgen_result,
    med,
    ratio,
    start_profiler,
    stop_profiler,
)

from tests.servers import RedisServer  # noqa: E402

SCENARIOS = ("stream", "qos1", "fanout")
SETUPS = ("cross-node", "workers-2", "one-process", "mosquitto")
SERVING = re.compile(r"cluster: node \S+ serving")
LAPSE = re.compile(r"lease of epoch \d+ (not renewed|lost)|epoch \d+ fenced off")
"""A node's log line saying it stopped serving: its lease lapsed under load."""
SETTLE = 1.0
"""Seconds between the subscriptions and the first message: routes reach the other nodes."""


def children(pid: int) -> List[int]:
    """``pid`` and its descendants."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [d for c in (task / "children").read_text().split()
                      for d in children(int(c))]
        except OSError:
            continue
    return found


def tree_cpu(pids: List[int]) -> float:
    """CPU seconds of these processes and their descendants."""
    total = 0.0
    for pid in pids:
        for each in children(pid):
            try:
                total += cpu_seconds(each)
            except OSError:
                continue
    return total


def redis_commands(redis: RedisServer) -> int:
    """Commands Redis has processed since it started."""
    import socket

    with socket.create_connection((redis.host, redis.port), timeout=5) as sock:
        sock.sendall(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
        data = b""
        while b"total_commands_processed" not in data or not data.endswith(b"\r\n"):
            data += sock.recv(65536)
    found = re.search(rb"total_commands_processed:(\d+)", data)
    return int(found.group(1)) if found else 0


class SetUp:
    """The broker processes of one set-up, and the ports the publishers and subscribers use."""

    def __init__(self, kind: str, args: argparse.Namespace, redis: RedisServer,
                 db: int) -> None:
        self.kind = kind
        self.workdirs: List[Path] = []
        self.brokers: List[Broker] = []
        url = redis.url(db)
        if kind == "cross-node":
            for name in ("a", "b", "c"):
                self._start("twisted_mqtt", args, ["--cluster", url, "--node-name", name,
                                                    "--sys-interval", "0"], 1)
        elif kind.startswith("workers-"):  # workers-N
            count = kind.split("-")[1]
            self._start("twisted_mqtt", args, ["--cluster", url, "--workers", count,
                                               "--node-name", "w", "--sys-interval", "0"],
                        int(count))
        elif kind == "one-process":
            self._start("twisted_mqtt", args, ["--sys-interval", "0"], 0)
        else:
            self._start("mosquitto", args, [], 0)
        self.port = self.brokers[0].port
        self.sub_ports = [b.port for b in self.brokers[1:]]

    def _start(self, name: str, args: argparse.Namespace, extra: List[str],
               serving: int) -> None:
        workdir = Path(tempfile.mkdtemp(prefix=f"cluster-{self.kind}-"))
        self.workdirs.append(workdir)
        broker = Broker(name, args, workdir, extra)
        self.brokers.append(broker)
        deadline = time.monotonic() + 60
        while len(SERVING.findall(broker.log())) < serving:
            if time.monotonic() > deadline or broker.proc.poll() is not None:
                raise RuntimeError(f"{self.kind}: nodes not serving:\n{broker.log()}")
            time.sleep(0.05)

    @property
    def pids(self) -> List[int]:
        return [broker.pid for broker in self.brokers]

    def lapses(self) -> int:
        """How many times a node stopped serving because its lease lapsed."""
        return sum(len(LAPSE.findall(broker.log())) for broker in self.brokers)

    def stop(self) -> List[str]:
        problems: List[str] = []
        for broker in self.brokers:
            problems += broker.stop()
        if not problems:
            for workdir in self.workdirs:
                shutil.rmtree(workdir, ignore_errors=True)
        return problems


def run_one(args: argparse.Namespace, redis: RedisServer, kind: str, scenario: str,
            rep: int, db: int) -> Dict:
    setup = SetUp(kind, args, redis, db)
    profiler: Optional[subprocess.Popen] = None
    try:
        if args.profile and kind == "cross-node":
            profiler = start_profiler(setup.pids[0],
                                      Path(args.profile) / f"{scenario}-node-a-r{rep}.txt")
        argv = loadgen_argv(args, scenario, args.protocol, setup.port, setup.pids[0])
        if setup.sub_ports:
            argv += ["--sub-port", ",".join(str(p) for p in setup.sub_ports)]
        if kind in ("cross-node", "workers-2"):
            argv += ["--settle", str(SETTLE)]
        redis_cpu0, commands0 = cpu_seconds(redis.proc.pid), redis_commands(redis)  # type: ignore
        cpu0 = tree_cpu(setup.pids)
        t0 = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=args.duration + 600)
        elapsed = time.monotonic() - t0 - (SETTLE if "--settle" in argv else 0.0)
        cpu1 = tree_cpu(setup.pids)
        redis_cpu1, commands1 = cpu_seconds(redis.proc.pid), redis_commands(redis)  # type: ignore
    finally:
        stop_profiler(profiler)
        lapses = setup.lapses()
        problems = setup.stop()
    result = loadgen_result(done, kind)
    delivered = result.get("delivered", 0)
    result.update(setup=kind, repeat=rep, broker_cpu_pct=round(100 * (cpu1 - cpu0) / elapsed, 1),
                  broker_us_per_msg=1e6 * (cpu1 - cpu0) / delivered if delivered else None,
                  lease_lapses=lapses, log_problems=problems[:5])
    if kind != "one-process" and kind != "mosquitto":
        share = (redis_cpu1 - redis_cpu0) / elapsed
        result.update(redis_cpu_pct=round(100 * share, 1),
                      redis_commands_per_s=round((commands1 - commands0) / elapsed),
                      redis_capacity=result["msgs_per_s"] / share if share > 0 else None)
    if problems:
        print(f"  ! {kind} log: {problems[:3]}", file=sys.stderr)
    return result


def table(results: List[Dict], setups: List[str]) -> str:
    """Medians over the repeats; each twisted_mqtt set-up's throughput and CPU per message as a
    ratio to Mosquitto's, and to one process."""
    head = ["scenario", "set-up", "msgs/s", "CPU µs/msg", "p50/p99 ms", "lost", "lease lapses",
            "vs Mosquitto", "vs one process", "Redis CPU %", "Redis cmds/s",
            "msgs/s one Redis carries"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario in SCENARIOS:
        runs = [r for r in results if r["scenario"] == scenario]
        if not runs:
            continue
        thr = {s: med([r["msgs_per_s"] for r in runs if r["setup"] == s]) for s in setups}
        for setup in setups:
            mine = [r for r in runs if r["setup"] == setup]
            if not mine:
                continue
            redis = setup in ("cross-node", "workers-2")
            rows.append("| " + " | ".join([
                scenario, setup, fmt(thr[setup]),
                fmt(med([r["broker_us_per_msg"] for r in mine]), ".2f"),
                f"{fmt(med([r['lat_p50_us'] / 1e3 for r in mine]), '.2f')}/"
                f"{fmt(med([r['lat_p99_us'] / 1e3 for r in mine]), '.2f')}",
                "/".join(str(r["lost"]) for r in mine),
                "/".join(str(r["lease_lapses"]) for r in mine),
                ratio(thr[setup], thr.get("mosquitto")),
                ratio(thr[setup], thr.get("one-process")),
                fmt(med([r.get("redis_cpu_pct") for r in mine]), ".0f") if redis else "-",
                fmt(med([r.get("redis_commands_per_s") for r in mine])) if redis else "-",
                fmt(med([r.get("redis_capacity") for r in mine])) if redis else "-",
            ]) + " |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default=",".join(SCENARIOS))
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--protocol", type=int, default=4, choices=(4, 5))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--broker-root", default=str(HERE.parent))
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--loadgen", default=str(LOADGEN))
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--fanout-window", type=int, default=1000)
    parser.add_argument("--stream-window", type=int, default=1000,
                        help="stream: the publisher at most this many messages ahead of the "
                             "subscriber (0: socket back-pressure only, and what the nodes "
                             "cannot forward is dropped, as QoS 0 allows)")
    parser.add_argument("--profile", help="directory: py-spy raw profiles of node a (cross-node)")
    parser.add_argument("--json", help="append every run's result (JSON lines) to this file")
    args = parser.parse_args(argv)
    args.mosquitto_nodelay = False
    args.no_quickack = True
    args.conns = 0
    if not Path(args.loadgen).exists():
        subprocess.run(["make", "-C", str(HERE)], check=True)
    scenarios = args.scenario.split(",")
    setups = args.setups.split(",")
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="cluster-redis-")))
    results: List[Dict] = []
    db = 0
    try:
        for scenario in scenarios:
            for rep in range(args.repeat):
                for kind in (setups if rep % 2 == 0 else list(reversed(setups))):
                    db = (db + 1) % 16
                    redis.command("FLUSHALL")  # nothing left of the previous run's nodes
                    r = run_one(args, redis, kind, scenario, rep, db)
                    results.append(r)
                    if args.json:
                        with open(args.json, "a") as out:
                            out.write(json.dumps(r) + "\n")
                    print(f"{scenario} #{rep} {kind}: {r['msgs_per_s']:.0f} msg/s, "
                          f"{fmt(r['broker_us_per_msg'], '.2f')} µs/msg, lost {r['lost']}, "
                          f"lease lapses {r['lease_lapses']}, "
                          f"CPU {r['broker_cpu_pct']}%, Redis {r.get('redis_cpu_pct', '-')}%",
                          file=sys.stderr)
    finally:
        redis.stop()
        shutil.rmtree(redis.directory, ignore_errors=True)
    print(table(results, setups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
