"""Micro-benchmark of the codec's hot path: decoding and re-encoding QoS 0 PUBLISH packets.

Run from the repository root with any interpreter (the codec needs only the standard library)::

    python3 benchmarks/codec_bench.py
    pypy3 benchmarks/codec_bench.py --count 200000 --repeats 7

It builds a stream of ``--count`` QoS 0 PUBLISH packets (topics ``bench/topic/<n>``, a
``--payload``-byte payload), cuts it into ``--chunk``-byte reads as a socket would deliver it, and
times, per protocol level 4 (MQTT 3.1.1) and 5:

* decode: ``Decoder.feed`` over all chunks;
* encode: ``encode_publish`` of every decoded message (the broker re-encoding for a subscriber);
* decode+encode: both in one pass, as a broker forwarding each message does;

once with ``raw_publish=True`` (a plain tuple per message) and once with ``raw_publish=False``
(a ``Publish`` dataclass per message), to show the cost of a general object per message.  For
the dataclass form, the generic ``encode(packet, level)`` is timed too.  Each figure is the
median of ``--repeats`` runs after one warm-up run, in microseconds per packet.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from functools import partial
from typing import Any, Callable, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted_mqtt.codec import (  # noqa: E402
    Decoder,
    encode,
    encode_properties,
    encode_publish,
)
from twisted_mqtt.properties import NO_PROPERTIES  # noqa: E402

LEVEL_NAMES = {4: "3.1.1", 5: "5.0"}


def build_stream(count: int, payload_size: int, level: int) -> bytes:
    payload = bytes(range(256)) * (payload_size // 256 + 1)
    payload = payload[:payload_size]
    props = b"\x00" if level == 5 else None
    return b"".join(
        encode_publish(b"bench/topic/%d" % (i % 1000), payload, 0, False, False, None, props)
        for i in range(count)
    )


def chunks_of(stream: bytes, size: int) -> List[bytes]:
    return [stream[i:i + size] for i in range(0, len(stream), size)]


def decode_all(chunks: List[bytes], level: int, raw: bool) -> List[Any]:
    decoder = Decoder(level, raw_publish=raw)
    out: List[Any] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


# Each workload returns how many packets it handled, so the result cannot be optimised away.


def run_decode(chunks: List[bytes], level: int, raw: bool) -> int:
    decoder = Decoder(level, raw_publish=raw)
    feed = decoder.feed
    count = 0
    for chunk in chunks:
        count += len(feed(chunk))
    return count


def run_encode_tuples(messages: List[Any], level: int) -> int:
    written: List[bytes] = []
    write = written.append
    v5 = level == 5
    for topic, payload, qos, retain, _dup, packet_id, props, _frame in messages:
        block = (b"\x00" if props is NO_PROPERTIES else encode_properties(props)) if v5 else None
        write(encode_publish(topic.encode(), payload, qos, retain, False, packet_id, block))
    return len(written)


def run_encode_objects(messages: List[Any], level: int) -> int:
    written: List[bytes] = []
    write = written.append
    v5 = level == 5
    for p in messages:
        props = p.properties
        block = (b"\x00" if props is NO_PROPERTIES else encode_properties(props)) if v5 else None
        write(encode_publish(p.topic.encode(), p.payload, p.qos, p.retain, False, p.packet_id,
                             block))
    return len(written)


def run_encode_generic(messages: List[Any], level: int) -> int:
    written: List[bytes] = []
    write = written.append
    for p in messages:
        write(encode(p, level))
    return len(written)


def run_forward_tuples(chunks: List[bytes], level: int) -> int:
    decoder = Decoder(level, raw_publish=True)
    feed = decoder.feed
    written: List[bytes] = []
    write = written.append
    v5 = level == 5
    for chunk in chunks:
        for topic, payload, qos, retain, _dup, packet_id, props, _frame in feed(chunk):
            block = (
                (b"\x00" if props is NO_PROPERTIES else encode_properties(props)) if v5 else None
            )
            write(encode_publish(topic.encode(), payload, qos, retain, False, packet_id, block))
    return len(written)


def run_forward_objects(chunks: List[bytes], level: int) -> int:
    decoder = Decoder(level)
    feed = decoder.feed
    written: List[bytes] = []
    write = written.append
    v5 = level == 5
    for chunk in chunks:
        for p in feed(chunk):
            props = p.properties
            block = (
                (b"\x00" if props is NO_PROPERTIES else encode_properties(props)) if v5 else None
            )
            write(encode_publish(p.topic.encode(), p.payload, p.qos, p.retain, False,
                                 p.packet_id, block))
    return len(written)


def median_us(work: Callable[[], int], count: int, repeats: int) -> float:
    """Median microseconds per packet over ``repeats`` timed runs, after one warm-up run."""
    assert work() == count
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        handled = work()
        times.append(time.perf_counter() - start)
        assert handled == count
    return statistics.median(times) / count * 1e6


def interpreter() -> str:
    name = platform.python_implementation()
    version = platform.python_version()
    if name == "PyPy":
        pypy = ".".join(str(v) for v in sys.pypy_version_info[:3])  # type: ignore[attr-defined]
        return f"PyPy {pypy} (Python {version})"
    return f"{name} {version}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="PUBLISH packets per run")
    parser.add_argument("--payload", type=int, default=64, help="payload bytes per PUBLISH")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per feed()")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median is shown)")
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 5], choices=[4, 5])
    args = parser.parse_args()
    count, repeats = args.count, args.repeats

    results: dict[Tuple[str, str], dict[int, float]] = {}
    sizes = {}
    for level in args.levels:
        stream = build_stream(count, args.payload, level)
        sizes[level] = len(stream)
        chunks = chunks_of(stream, args.chunk)
        tuples = decode_all(chunks, level, raw=True)
        objects = decode_all(chunks, level, raw=False)
        assert len(tuples) == len(objects) == count
        assert b"".join(encode(p, level) for p in objects) == stream  # sanity: a round trip
        rows: List[Tuple[str, str, Callable[[], int]]] = [
            ("tuple", "decode", partial(run_decode, chunks, level, True)),
            ("tuple", "encode_publish", partial(run_encode_tuples, tuples, level)),
            ("tuple", "decode+encode", partial(run_forward_tuples, chunks, level)),
            ("dataclass", "decode", partial(run_decode, chunks, level, False)),
            ("dataclass", "encode_publish", partial(run_encode_objects, objects, level)),
            ("dataclass", "encode(packet)", partial(run_encode_generic, objects, level)),
            ("dataclass", "decode+encode", partial(run_forward_objects, chunks, level)),
        ]
        for form, operation, work in rows:
            results.setdefault((form, operation), {})[level] = median_us(work, count, repeats)
        del rows, tuples, objects

    print(f"twisted_mqtt codec micro-benchmark on {interpreter()} ({platform.machine()})")
    stream_sizes = ", ".join(f"level {lv}: {sizes[lv] / 1e6:.1f} MB" for lv in args.levels)
    print(f"{count} QoS 0 PUBLISH, topic 'bench/topic/<n>', {args.payload}-byte payload; "
          f"stream {stream_sizes}; fed in {args.chunk}-byte chunks")
    print(f"microseconds per packet, median of {repeats} runs (after a warm-up run)")
    print()
    header = f"{'form':<10} {'operation':<16}" + "".join(
        f"{'level ' + str(lv) + ' (' + LEVEL_NAMES[lv] + ')':>16}" for lv in args.levels
    )
    print(header)
    print("-" * len(header))
    for (form, operation), by_level in results.items():
        cells = "".join(f"{by_level[lv]:>16.3f}" for lv in args.levels)
        print(f"{form:<10} {operation:<16}{cells}")


if __name__ == "__main__":
    main()
