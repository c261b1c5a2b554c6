"""Memory probe: a large retained set and subscribers that never read, against twisted_mqtt and
Mosquitto.

Each broker is started in turn (``run.Broker``), given 10,000 retained messages of 64 KB
(QoS 0, from a publisher that then leaves), and then waves of three subscribers to ``r/#``
that never read (a 4 KB receive buffer) connect, stay a few seconds and close.  The broker's
RSS is read from /proc at each step, and the longest PINGREQ -> PINGRESP of another client
while a wave subscribes shows how long the broker stalls.

    python3 benchmarks/stalled_subscribers.py                 # both brokers, 3 waves
    python3 benchmarks/stalled_subscribers.py --brokers twisted_mqtt --broker-root /tmp/old
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import ROOT, Broker, status_kb  # noqa: E402

from twisted_mqtt.codec import encode  # noqa: E402
from twisted_mqtt.packets import (  # noqa: E402
    Connect,
    PingReq,
    ProtocolLevel,
    Publish,
    Subscribe,
    Subscription,
)

V311 = ProtocolLevel.MQTT_3_1_1


def mqtt_socket(port: int, client_id: str, receive_buffer: int = 0) -> socket.socket:
    """A connected MQTT 3.1.1 client socket (CONNACK read)."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(60.0)
    sock.sendall(encode(Connect(client_id, V311, keep_alive=0), V311))
    assert sock.recv(4)[:1] == b"\x20"
    return sock


def ping(sock: socket.socket) -> float:
    """Seconds for a PINGREQ to be answered."""
    start = time.monotonic()
    sock.sendall(encode(PingReq(), V311))
    assert sock.recv(2) == b"\xd0\x00"
    return time.monotonic() - start


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def probe(name: str, args: argparse.Namespace, workdir: Path) -> Dict[str, object]:
    broker = Broker(name, args, workdir)
    pid = broker.pid
    figures: Dict[str, object] = {"start": rss_mb(pid)}
    publisher = mqtt_socket(broker.port, "publisher")
    payload = b"x" * args.size
    for start in range(0, args.retained, 100):
        publisher.sendall(b"".join(encode(Publish(f"r/{i}", payload, 0, retain=True), V311)
                                   for i in range(start, min(start + 100, args.retained))))
    ping(publisher)  # everything before it has been handled
    publisher.close()
    time.sleep(1.0)
    figures["retained"] = rss_mb(pid)
    watcher = mqtt_socket(broker.port, "watcher")
    waves: List[Dict[str, float]] = []
    for wave in range(args.waves):
        stalled = [mqtt_socket(broker.port, f"stalled-{wave}-{n}", receive_buffer=4096)
                   for n in range(args.subscribers)]
        for sock in stalled:
            sock.sendall(encode(Subscribe(1, (Subscription("r/#", 0),)), V311))
        stall = max(ping(watcher) for _ in range(20))
        time.sleep(args.hold)
        held = rss_mb(pid)
        for sock in stalled:
            sock.close()
        time.sleep(args.hold)
        ping(watcher)
        waves.append({"stall_s": round(stall, 3), "held": round(held, 1),
                      "after": round(rss_mb(pid), 1)})
    figures["waves"] = waves
    figures["peak"] = status_kb(pid, "VmHWM") / 1024
    watcher.close()
    problems = broker.stop()
    if problems:
        figures["problems"] = problems
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers", default="twisted_mqtt,mosquitto")
    parser.add_argument("--retained", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--subscribers", type=int, default=3)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--hold", type=float, default=3.0,
                        help="seconds a wave stays connected, and then seconds after it closed")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--broker-root", default=str(ROOT))
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--mosquitto-nodelay", action="store_true")
    args = parser.parse_args()
    print(f"{args.retained} retained x {args.size} B, waves of {args.subscribers} subscribers "
          "to r/# that never read; RSS in MB")
    for name in args.brokers.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            figures = probe(name, args, Path(workdir))
        waves = "; ".join(f"wave {n + 1}: held {w['held']}, after {w['after']}, "
                          f"stall {w['stall_s']} s" for n, w in enumerate(figures["waves"]))
        print(f"{name}: start {figures['start']:.1f}, with retained {figures['retained']:.1f}; "
              f"{waves}; peak {figures['peak']:.1f}"
              + (f"; PROBLEMS {figures['problems']}" if "problems" in figures else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
