"""``python -m benchmarks.auth_timing [--rounds N] [--cost C]``: how long a running broker takes
to refuse a known user's wrong password and an unknown user, for ``--auth-ledger`` and
``--auth file:`` holding bcrypt hashes of cost C.  Each case starts ``python -m twisted_mqtt``
on a free loopback port, sends N CONNECTs of each kind one at a time (alternating, each on a
new connection), and prints the median time to CONNACK of each kind and their ratio (unknown /
known; near 1 when unknown users cannot be told apart by time).  A coarse check, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from tests.auth_attack import connect_packet
from twisted_mqtt.auth.passwords import hash_password

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _refusal_time(port: int, username: str) -> float:
    """Seconds from sending CONNECT to reading its CONNACK (which must refuse)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        packet = connect_packet("timing", username, b"not-the-password")
        started = time.perf_counter()
        sock.sendall(packet)
        connack = sock.recv(4)
        elapsed = time.perf_counter() - started
    if len(connack) != 4 or connack[3] == 0:
        raise SystemExit(f"unexpected CONNACK {connack!r} for {username}")
    return elapsed


def measure(options: List[str], rounds: int) -> Dict[str, float]:
    """Median refusal times (ms) of alice (known) and mallory (unknown) under ``options``."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    broker = subprocess.Popen([sys.executable, "-m", "twisted_mqtt", "--listen",
                               f"tcp:{port}:interface=127.0.0.1", *options], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or broker.poll() is not None:
                    raise SystemExit(f"the broker did not start: {options}") from None
                time.sleep(0.05)
        times: Dict[str, List[float]] = {"alice": [], "mallory": []}
        _refusal_time(port, "alice")  # (warm up: the password pool starts on first use)
        for _ in range(rounds):
            for user in times:
                times[user].append(_refusal_time(port, user))
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    known = statistics.median(times["alice"]) * 1000
    unknown = statistics.median(times["mallory"]) * 1000
    return {"known_ms": round(known, 2), "unknown_ms": round(unknown, 2),
            "ratio": round(unknown / known, 2)}


def main() -> None:
    """Run both cases and print one JSON object per case."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the stored hash")
    args = parser.parse_args()
    stored = hash_password("wonderland", "bcrypt", rounds=args.cost)
    with tempfile.TemporaryDirectory() as directory:
        ledger = Path(directory, "ledger.json")
        ledger.write_text(json.dumps({"users": {"alice": {"password": stored}}}))
        passwd = Path(directory, "passwd")
        passwd.write_text(f"alice:{stored}\n")
        for name, options in (("--auth-ledger", ["--auth-ledger", str(ledger)]),
                              ("--auth file:", ["--auth", f"file:{passwd}"])):
            print(json.dumps({"case": name, "bcrypt_cost": args.cost,
                              **measure(options, args.rounds)}))


if __name__ == "__main__":
    main()
