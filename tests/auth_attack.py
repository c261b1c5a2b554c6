"""``python -m tests.auth_attack HOST PORT COUNT CONCURRENCY USERNAME``: try COUNT wrong passwords
for USERNAME over MQTT 3.1.1, CONCURRENCY connections at a time, each a new TCP connection
sending CONNECT and reading CONNACK; print one JSON object: the CONNACK return codes counted,
and the (monotonic) time each answer came.

A separate process, so that the attack's own work does not share the test process's GIL with
the legitimate clients it is measured against.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from collections import Counter
from typing import Dict, List


def connect_packet(client_id: str, username: str, password: bytes) -> bytes:
    """An MQTT 3.1.1 CONNECT with a user name and password, clean session, no keep alive."""

    def field(data: bytes) -> bytes:
        return struct.pack("!H", len(data)) + data

    variable = field(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 0)
    payload = field(client_id.encode()) + field(username.encode()) + field(password)
    body = variable + payload
    length = b""
    remaining = len(body)
    while True:
        byte, remaining = remaining % 128, remaining // 128
        length += bytes([byte | (0x80 if remaining else 0)])
        if not remaining:
            break
    return b"\x10" + length + body


async def attempt(host: str, port: int, index: int, username: str, codes: Counter,
                  times: List[float]) -> None:
    """One wrong password: connect, CONNECT, read CONNACK, close."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        writer.write(connect_packet(f"attacker-{index}", username, b"wrong-%d" % index))
        connack = await asyncio.wait_for(reader.readexactly(4), 60)
        codes[str(connack[3]) if connack[0] == 0x20 else "bad packet"] += 1
        writer.close()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
        codes[type(error).__name__] += 1
    times.append(time.monotonic())


async def attack(host: str, port: int, count: int, concurrency: int,
                 username: str) -> Dict[str, object]:
    """Run the attempts, at most ``concurrency`` at once."""
    codes: Counter = Counter()
    times: List[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            await attempt(host, port, index, username, codes, times)

    started = time.monotonic()
    await asyncio.gather(*(one(index) for index in range(count)))
    return {"codes": dict(codes), "started": started, "times": times}


if __name__ == "__main__":
    host, port, count, concurrency, username = sys.argv[1:6]
    result = asyncio.run(attack(host, int(port), int(count), int(concurrency), username))
    print(json.dumps(result))
