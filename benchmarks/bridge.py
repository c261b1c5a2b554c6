"""MQTT bridge throughput: messages per second across a bridge to Mosquitto.

The publishers of benchmarks/loadgen.c connect to the first broker, its subscribers to a second
one, Debian's Mosquitto (``loadgen --sub-port``), and a bridge ``bench/# out 1`` carries every
message from the first broker to the second.  Set-ups, each started afresh for every run:

  twisted_mqtt  the first broker is twisted_mqtt with ``--bridge`` (its MQTT 5 client);
  mosquitto     the first broker is another Mosquitto with a ``connection`` (Mosquitto's own
                bridge, MQTT 3.1.1 with try_private), for comparison;
  direct        no bridge: publishers and subscribers on one Mosquitto (the ceiling of the
                load generator and of the receiving Mosquitto).

The table gives the messages delivered per second, those lost (QoS 0) or dropped, and the CPU
time of the first broker per message delivered (medians over ``--repeat`` runs).

    make -C benchmarks
    python3 benchmarks/bridge.py                              # stream and qos1, 3 repeats
    python3 benchmarks/bridge.py --scenario qos1 --repeat 1 --duration 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from run import (  # noqa: E402  (benchmarks/run.py: the broker benchmark's helpers)
    LOADGEN,
    ROOT,
    Broker,
    cpu_seconds,
    fmt,
    free_port,
    loadgen_argv,
    med,
    raise_nofile,
    wait_accepting,
)

SCENARIOS = ("stream", "qos1")
SETUPS = ("twisted_mqtt", "mosquitto", "direct")
SETTLE = 2.0
"""Seconds given to Mosquitto's bridge to connect (it connects at once, on loopback)."""


class BridgingMosquitto:
    """A Mosquitto bridging ``bench/#`` out at QoS 1 to the Mosquitto on ``remote_port``."""

    def __init__(self, args: argparse.Namespace, workdir: Path, remote_port: int) -> None:
        self.port = free_port()
        conf = workdir / "bridging.conf"
        conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
            "log_dest stdout", "connection bench", f"address 127.0.0.1:{remote_port}",
            "topic bench/# out 1", "cleansession true"]) + "\n")
        self.log_path = workdir / "bridging.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([args.mosquitto, "-c", str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=workdir, preexec_fn=raise_nofile)
        wait_accepting(self.port, self.proc)
        time.sleep(SETTLE)  # its log is buffered: give its bridge the time to connect

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> List[str]:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        return []


def wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout}s")
        time.sleep(0.05)


def run_one(args: argparse.Namespace, setup: str, scenario: str, rep: int) -> Dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-bridge-{setup}-"))
    remote = Broker("mosquitto", args, workdir)
    first: Optional[object] = None
    try:
        if setup == "twisted_mqtt":
            broker = Broker("twisted_mqtt", args, workdir, [
                "--bridge", f"bench=tcp:host=127.0.0.1:port={remote.port}",
                "--bridge-topic", "bench=bench/# out 1",
                "--bridge-option", f"bench.inflight={args.inflight}",
                "--bridge-option", f"bench.queue_messages={args.queue}",
                "--sys-interval", "0"])
            wait_for(lambda: "bridge bench: connected" in broker.log(), "bridge connected")
            first = broker
        elif setup == "mosquitto":
            first = BridgingMosquitto(args, workdir, remote.port)
        port = first.port if first is not None else remote.port  # type: ignore[attr-defined]
        pid = first.pid if first is not None else remote.pid  # type: ignore[attr-defined]
        argv = loadgen_argv(args, scenario, 4, port, pid)
        if first is not None:
            argv += ["--sub-port", str(remote.port)]
        cpu0 = cpu_seconds(pid)
        t0 = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=args.duration + 600)
        elapsed = time.monotonic() - t0
        cpu1 = cpu_seconds(pid)
        dropped = None
        if setup == "twisted_mqtt":
            found = [line for line in broker.log().splitlines() if "messages dropped" in line]
            dropped = found[-1] if found else None
    finally:
        if first is not None:
            first.stop()  # type: ignore[attr-defined]
        remote.stop()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({done.returncode}) for {setup}: "
                           f"{done.stderr.strip()}")
    result = json.loads(lines[-1])
    delivered = result.get("delivered", 0)
    result.update(setup=setup, repeat=rep, first_cpu_pct=round(100 * (cpu1 - cpu0) / elapsed, 1),
                  first_us_per_msg=(1e6 * (cpu1 - cpu0) / delivered) if delivered else None,
                  bridge_drops=dropped)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def table(results: List[Dict]) -> str:
    """One Markdown row per scenario and set-up, medians over the repeats."""
    rows = ["| scenario | set-up | msgs/s delivered | lost | first broker CPU µs/msg | "
            "first broker CPU % |", "| --- | --- | --- | --- | --- | --- |"]
    for scenario in SCENARIOS:
        for setup in SETUPS:
            runs = [r for r in results if r["scenario"] == scenario and r["setup"] == setup]
            if not runs:
                continue
            rows.append(f"| {scenario} | {setup} | {fmt(med([r['msgs_per_s'] for r in runs]))} "
                        f"| {fmt(med([r.get('lost') for r in runs]))} "
                        f"| {fmt(med([r['first_us_per_msg'] for r in runs]), '.1f')} "
                        f"| {fmt(med([r['first_cpu_pct'] for r in runs]), '.0f')} |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default=",".join(SCENARIOS))
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--broker-root", default=str(ROOT))
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--mosquitto-nodelay", action="store_true")
    parser.add_argument("--loadgen", default=str(LOADGEN))
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--window", type=int, default=100, help="qos1: in-flight per publisher")
    parser.add_argument("--stream-window", type=int, default=1000,
                        help="stream: publisher at most this many messages ahead of the "
                             "slowest subscriber")
    parser.add_argument("--fanout-window", type=int, default=0)
    parser.add_argument("--no-quickack", action="store_true")
    parser.add_argument("--inflight", type=int, default=1000,
                        help="twisted_mqtt: the bridge's in-flight window")
    parser.add_argument("--queue", type=int, default=100_000,
                        help="twisted_mqtt: the bridge's queue_messages")
    parser.add_argument("--json", help="append every run's result (JSON lines) to this file")
    args = parser.parse_args(argv)
    if not Path(args.loadgen).exists():
        subprocess.run(["make", "-C", str(HERE)], check=True)
    results = []
    for scenario in args.scenario.split(","):
        for rep in range(args.repeat):
            for setup in args.setups.split(","):
                result = run_one(args, setup, scenario, rep)
                print(f"{scenario} {setup} #{rep}: {result['msgs_per_s']:.0f} msgs/s, lost "
                      f"{result.get('lost')}", file=sys.stderr)
                results.append(result)
                if args.json:
                    with open(args.json, "a") as out:
                        out.write(json.dumps(result) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
