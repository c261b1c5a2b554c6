"""Memory under abuse: twisted_mqtt beside Mosquitto on the same probes, as a Markdown table.

Each broker is started in turn (``run.Broker``: ``python -m twisted_mqtt --allow-anonymous``,
or ``/usr/sbin/mosquitto`` with ``listener PORT 127.0.0.1``, ``allow_anonymous true`` and its
default ``max_queued_messages``) on a loopback port, a fresh process per probe.  The clients are
raw MQTT 3.1.1 sockets; RSS is VmRSS (VmHWM for peaks) from /proc.

- ``retained``: 10,000 retained messages of 64 KB, then WAVES waves of three subscribers to
  ``#`` that never read (a 4 KB receive buffer), each kept STALL seconds and then closed.  A fresh
  client connects and subscribes every half second meanwhile: the slowest CONNACK + SUBACK is
  what any client waited while the broker dealt with the stalled ones.  Whether the broker
  had closed the stalled subscribers is read at the end of each wave (what is left unread is
  read for up to 2 s: the end of the stream, or more data).
- ``idle``: 5,000 connections that only CONNECT; RSS added per connection.
- ``subscriptions``: one client subscribes to 100,000 filters (1,000 SUBSCRIBE packets of 100
  filters, pipelined); RSS added and the time until the last SUBACK.

    python3 benchmarks/abuse.py
    python3 benchmarks/abuse.py --probes idle --brokers twisted_mqtt --connections 1000
"""

from __future__ import annotations

import argparse
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

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
BROKERS = ("twisted_mqtt", "mosquitto")
PROBES = ("retained", "idle", "subscriptions")
Figures = Dict[str, str]


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f}"


def read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def read_packet(sock: socket.socket) -> bytes:
    """One whole packet (fixed header included)."""
    head = read_exactly(sock, 2)
    length, shift, last = 0, 0, head[1]
    length = last & 0x7F
    while last & 0x80:
        shift += 7
        last = read_exactly(sock, 1)[0]
        length |= (last & 0x7F) << shift
    return head + read_exactly(sock, length)


def client(port: int, client_id: str, receive_buffer: int = 0,
           timeout: float = 120.0) -> socket.socket:
    """A connected MQTT 3.1.1 client socket, CONNACK read."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    sock.sendall(encode(Connect(client_id, V311, keep_alive=0), V311))
    if read_packet(sock)[:1] != b"\x20":
        raise ConnectionError("no CONNACK")
    return sock


def until_handled(sock: socket.socket) -> None:
    """Wait until the broker has handled what ``sock`` sent before (PINGREQ answered)."""
    sock.sendall(encode(PingReq(), V311))
    while read_packet(sock) != b"\xd0\x00":
        pass


def fresh_client_seconds(port: int, number: int) -> float:
    """Seconds a new client waits for CONNACK and SUBACK (to a topic with nothing retained)."""
    started = time.monotonic()
    sock = client(port, f"fresh-{number}")
    try:
        sock.sendall(encode(Subscribe(1, (Subscription(f"fresh/{number}", 0),)), V311))
        while read_packet(sock)[:1] != b"\x90":
            pass
    finally:
        sock.close()
    return time.monotonic() - started


class Watcher(threading.Thread):
    """A fresh client every ``interval`` seconds until stopped; keeps the slowest wait."""

    def __init__(self, port: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.slowest = 0.0
        self.failures = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        number = 0
        while not self._stop_event.is_set():
            number += 1
            try:
                self.slowest = max(self.slowest, fresh_client_seconds(self.port, number))
            except OSError:
                self.failures += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def probe_retained(broker: Broker, args: argparse.Namespace) -> Figures:
    pid = broker.pid
    figures = {"start RSS MB": mb(status_kb(pid, "VmRSS"))}
    publisher = client(broker.port, "publisher")
    payload = b"x" * args.size
    for start in range(0, args.retained, 100):
        publisher.sendall(b"".join(encode(Publish(f"r/{i}", payload, 0, retain=True), V311)
                                   for i in range(start, min(start + 100, args.retained))))
    until_handled(publisher)
    publisher.close()
    time.sleep(1.0)
    figures["retained stored RSS MB"] = mb(status_kb(pid, "VmRSS"))
    after: List[str] = []
    slowest = 0.0
    failures = dropped = 0
    for wave in range(args.waves):
        watcher = Watcher(broker.port)
        watcher.start()
        stalled = []
        for number in range(3):
            sock = client(broker.port, f"stalled-{wave}-{number}", receive_buffer=4096)
            sock.sendall(encode(Subscribe(1, (Subscription("#", 0),)), V311))
            stalled.append(sock)
        time.sleep(args.stall)
        dropped += sum(1 for sock in stalled if closed_by_broker(sock))
        for sock in stalled:
            sock.close()
        time.sleep(args.settle)
        watcher.stop()
        slowest = max(slowest, watcher.slowest)
        failures += watcher.failures
        after.append(mb(status_kb(pid, "VmRSS")))
    figures["peak RSS MB"] = mb(status_kb(pid, "VmHWM"))
    figures["RSS MB after each wave left"] = " / ".join(after)
    figures["stalled subscribers the broker closed"] = f"{dropped} of {3 * args.waves}"
    figures["slowest fresh CONNACK+SUBACK s"] = f"{slowest:.2f}" + (
        f" ({failures} failed)" if failures else "")
    return figures


def closed_by_broker(sock: socket.socket, seconds: float = 2.0) -> bool:
    """Read what ``sock`` has waiting: True if the broker had closed it (end of stream or reset
    within ``seconds``), False if data keeps coming or nothing comes."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except socket.timeout:
            return False
        except OSError:
            return True
    return False


def probe_idle(broker: Broker, args: argparse.Namespace) -> Figures:
    pid = broker.pid
    before = status_kb(pid, "VmRSS")
    started = time.monotonic()
    socks = open_idle(broker.port, args.connections)
    took = time.monotonic() - started
    time.sleep(2.0)
    alive = sum(1 for sock in socks if still_open(sock))
    after = status_kb(pid, "VmRSS")
    for sock in socks:
        sock.close()
    return {"start RSS MB": mb(before), "RSS MB with them": mb(after),
            "KB per connection": f"{(after - before) / args.connections:.2f}",
            "connected": f"{alive} of {args.connections} in {took:.1f} s"}


def open_idle(port: int, count: int, window: int = 200) -> List[socket.socket]:
    """``count`` connections that sent CONNECT and got CONNACK, ``window`` handshakes at once."""
    done: List[socket.socket] = []
    waiting: Dict[int, socket.socket] = {}
    poller = select.poll()
    opened = 0
    while len(done) < count:
        while opened < count and len(waiting) < window:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(encode(Connect(f"idle-{opened}", V311, keep_alive=0), V311))
            waiting[sock.fileno()] = sock
            poller.register(sock, select.POLLIN)
            opened += 1
        for fd, _ in poller.poll(30_000):
            sock = waiting.pop(fd)
            poller.unregister(fd)
            if sock.recv(4)[:1] != b"\x20":
                raise ConnectionError("no CONNACK")
            done.append(sock)
    return done


def still_open(sock: socket.socket) -> bool:
    """Nothing to read: neither a packet nor the end of the stream."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


def probe_subscriptions(broker: Broker, args: argparse.Namespace) -> Figures:
    pid = broker.pid
    sock = client(broker.port, "subscriber")
    before = status_kb(pid, "VmRSS")
    per_packet = 100
    packets = [encode(Subscribe(1 + n % 65535, tuple(
        Subscription(f"s/{n * per_packet + i}/x", 1) for i in range(per_packet))), V311)
        for n in range(args.subscriptions // per_packet)]
    started = time.monotonic()
    sender = threading.Thread(target=sock.sendall, args=(b"".join(packets),), daemon=True)
    sender.start()
    acks = 0
    while acks < len(packets):
        if read_packet(sock)[:1] == b"\x90":
            acks += 1
    took = time.monotonic() - started
    sender.join()
    time.sleep(1.0)
    after = status_kb(pid, "VmRSS")
    sock.close()
    return {"start RSS MB": mb(before), "RSS MB with them": mb(after),
            "bytes per subscription": f"{(after - before) * 1024 / args.subscriptions:.0f}",
            "SUBSCRIBE time s": f"{took:.2f}"}


PROBE_FUNCTIONS: Dict[str, Callable[[Broker, argparse.Namespace], Figures]] = {
    "retained": probe_retained, "idle": probe_idle, "subscriptions": probe_subscriptions}


def raise_open_files(needed: int) -> None:
    """Let this process open ``needed`` sockets (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def table(results: Dict[str, Dict[str, Figures]], brokers: List[str]) -> str:
    """One Markdown table: a row per probe and figure, a column per broker."""
    rows = ["| probe | figure | " + " | ".join(brokers) + " |",
            "|---|---|" + "---|" * len(brokers)]
    for probe, by_broker in results.items():
        names: List[str] = []
        for figures in by_broker.values():
            names += [name for name in figures if name not in names]
        for name in names:
            cells = [by_broker.get(b, {}).get(name, "-") for b in brokers]
            rows.append(f"| {probe} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def commit_of(root: str) -> str:
    done = subprocess.run(["git", "-C", root, "log", "-1", "--format=%h %s"],
                          capture_output=True, text=True)
    return done.stdout.strip()[:80] or "unknown"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", default=",".join(PROBES))
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--broker-root", default=str(ROOT))
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--retained", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64 * 1024, help="retained payload bytes")
    parser.add_argument("--waves", type=int, default=2, help="waves of stalled subscribers")
    parser.add_argument("--stall", type=float, default=10.0, help="seconds a wave stays")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after a wave left")
    parser.add_argument("--connections", type=int, default=5_000)
    parser.add_argument("--subscriptions", type=int, default=100_000)
    args = parser.parse_args(argv)
    args.mosquitto_nodelay = False
    raise_open_files(args.connections + 100)
    brokers = args.brokers.split(",")
    results: Dict[str, Dict[str, Figures]] = {}
    for probe in args.probes.split(","):
        for name in brokers:
            workdir = Path(tempfile.mkdtemp(prefix=f"abuse-{name}-"))
            broker = Broker(name, args, workdir)
            try:
                figures = PROBE_FUNCTIONS[probe](broker, args)
            finally:
                problems = broker.stop()
            if problems:
                figures["log problems"] = str(len(problems))
                print(f"{name} log ({workdir}): {problems[:3]}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            results.setdefault(probe, {})[name] = figures
            print(f"{probe} {name}: {figures}", file=sys.stderr, flush=True)
    print(f"twisted_mqtt at {commit_of(args.broker_root)}; mosquitto {args.mosquitto}\n")
    print(table(results, brokers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
