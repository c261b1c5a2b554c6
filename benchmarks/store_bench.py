"""Throughput of each store and mode, as a ratio to the memory store (nothing persisted).

The load is the C load generator's ``qos1`` scenario (benchmarks/loadgen.c) with
``--persistent``: 10 publishers stream QoS 1 messages (up to ``--window`` unacknowledged each)
to 10 subscribers holding persistent sessions, so that every message is a delivery a store must
write (and, once acknowledged, delete).  For every run a fresh ``python -m twisted_mqtt``
process (and a fresh SQLite file or Redis key prefix) is started; runs are repeated
``--repeat`` times, rotating the order of the modes, and the table shows medians.

    make -C benchmarks
    python3 benchmarks/store_bench.py                      # all modes, MQTT 5, 3 repeats
    python3 benchmarks/store_bench.py --modes memory,sqlite-durable --repeat 1 --protocol 4

Redis runs use a private ``redis-server`` (no persistence, loopback, free port) unless
``--redis redis://HOST:PORT/DB`` names one; its CPU time is reported as well.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402  (benchmarks/run.py: the broker benchmark's helpers)
    LOADGEN,
    LOG_ERRORS,
    PORT_LINE,
    ROOT,
    cpu_seconds,
    free_port,
    raise_nofile,
    wait_accepting,
)

MODES = ("memory", "sqlite", "sqlite-durable", "redis", "redis-durable")


def store_options(mode: str, workdir: Path, redis_url: str, run_id: str) -> List[str]:
    """The twistd options of a mode."""
    if mode == "memory":
        return []
    durable = ["--durable"] if mode.endswith("-durable") else []
    if mode.startswith("sqlite"):
        return ["--store", f"sqlite:{workdir / 'broker.db'}", *durable]
    return ["--store", f"{redis_url}?prefix=bench-{run_id}:", *durable]


class RedisServer:
    """A private redis-server for the benchmark."""

    def __init__(self, workdir: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "r.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_accepting(self.port, self.proc)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_broker(args: argparse.Namespace, options: List[str], workdir: Path
                 ) -> subprocess.Popen:
    """``python -m twisted_mqtt`` with ``options`` on a loopback ephemeral port."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    argv = [args.python, "-m", "twisted_mqtt", "--listen", "tcp:0:interface=127.0.0.1",
            "--allow-anonymous", "--sys-interval", "0", *options]
    with open(workdir / "broker.log", "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=workdir,
                                preexec_fn=raise_nofile)


def run_one(args: argparse.Namespace, mode: str, redis: Optional[RedisServer],
            redis_url: str, rep: int) -> Dict:
    """One loadgen run against a fresh broker in ``mode``: loadgen's JSON plus CPU figures."""
    workdir = Path(tempfile.mkdtemp(prefix=f"store-bench-{mode}-"))
    run_id = f"{os.getpid()}-{rep}-{mode}"
    proc = start_broker(args, store_options(mode, workdir, redis_url, run_id), workdir)
    log_path = workdir / "broker.log"
    try:
        deadline = time.monotonic() + 30
        while True:
            found = PORT_LINE.search(log_path.read_text(errors="replace"))
            if found:
                port = int(found.group(1) or found.group(2))
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"broker did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        wait_accepting(port, proc)
        time.sleep(0.3)
        redis_cpu0 = cpu_seconds(redis.proc.pid) if redis is not None else 0.0
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        argv = [str(args.loadgen), "--port", str(port), "--scenario", "qos1", "--protocol",
                str(args.protocol), "--duration", str(args.duration), "--payload",
                str(args.payload), "--window", str(args.window), "--persistent"]
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=args.duration + 600)
        elapsed = time.monotonic() - t0
        cpu1 = cpu_seconds(proc.pid)
        redis_cpu1 = cpu_seconds(redis.proc.pid) if redis is not None else 0.0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    problems = [line for line in text.splitlines() if any(e in line for e in LOG_ERRORS)]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({done.returncode}) in mode {mode}: "
                           f"{done.stderr.strip()}\n{text[-2000:]}")
    result = json.loads(lines[-1])
    delivered = result.get("delivered", 0)
    result.update(mode=mode, repeat=rep, broker_cpu_s=round(cpu1 - cpu0, 3),
                  broker_cpu_pct=round(100 * (cpu1 - cpu0) / elapsed, 1),
                  broker_us_per_msg=(1e6 * (cpu1 - cpu0) / delivered) if delivered else None,
                  redis_us_per_msg=(1e6 * (redis_cpu1 - redis_cpu0) / delivered)
                  if delivered and mode.startswith("redis") else None,
                  log_problems=problems[:5])
    if problems:
        print(f"  ! {mode} log: {problems[:3]}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def med(values: List[Optional[float]]) -> Optional[float]:
    """The median of the values that are not None."""
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def table(results: List[Dict], modes: List[str]) -> str:
    """The Markdown table of medians, one row per mode."""
    head = ["store / mode", "msgs/s", "ratio to memory", "broker CPU µs/msg",
            "redis-server CPU µs/msg", "p50/p99 latency ms", "lost", "dup"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = med([r["msgs_per_s"] for r in results if r["mode"] == "memory"])
    for mode in modes:
        runs = [r for r in results if r["mode"] == mode]
        if not runs:
            continue
        thr = med([r["msgs_per_s"] for r in runs])
        cpu = med([r["broker_us_per_msg"] for r in runs])
        rcpu = med([r["redis_us_per_msg"] for r in runs])
        p50 = med([r["lat_p50_us"] / 1e3 for r in runs])
        p99 = med([r["lat_p99_us"] / 1e3 for r in runs])
        ratio = "-" if base is None or thr is None else f"{thr / base:.2f}x"
        rows.append("| " + " | ".join([
            mode, f"{thr:.0f}" if thr is not None else "-", ratio,
            f"{cpu:.1f}" if cpu is not None else "-", f"{rcpu:.1f}" if rcpu is not None else "-",
            f"{p50:.1f}/{p99:.1f}" if p50 is not None and p99 is not None else "-",
            "/".join(str(r["lost"]) for r in runs), "/".join(str(r["dup"]) for r in runs),
        ]) + " |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated: " + ",".join(MODES))
    parser.add_argument("--protocol", type=int, default=5, choices=(4, 5))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--window", type=int, default=100, help="in-flight per publisher")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--loadgen", default=str(LOADGEN))
    parser.add_argument("--redis", help="use this Redis (redis://HOST:PORT/DB) instead of a "
                                        "private redis-server")
    parser.add_argument("--json", help="append every run's result (JSON lines) to this file")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode}")
    if not Path(args.loadgen).exists():
        subprocess.run(["make", "-C", str(HERE)], check=True)
    redis: Optional[RedisServer] = None
    redis_url = args.redis or ""
    if any(m.startswith("redis") for m in modes) and not args.redis:
        redis = RedisServer(Path(tempfile.mkdtemp(prefix="store-bench-redis-")))
        redis_url = redis.url
    results: List[Dict] = []
    try:
        for rep in range(args.repeat):
            order = modes[rep % len(modes):] + modes[:rep % len(modes)]
            for mode in order:
                r = run_one(args, mode, redis, redis_url, rep)
                results.append(r)
                if args.json:
                    with open(args.json, "a") as out:
                        out.write(json.dumps(r) + "\n")
                print(f"#{rep} {mode}: {r['msgs_per_s']:.0f} msg/s, broker "
                      f"{r['broker_us_per_msg']:.1f} µs/msg ({r['broker_cpu_pct']}% CPU), "
                      f"lost {r['lost']}, dup {r['dup']}", file=sys.stderr)
    finally:
        if redis is not None:
            redis.stop()
    print(f"QoS 1, 10 publishers -> 10 persistent-session subscribers, MQTT "
          f"{'5' if args.protocol == 5 else '3.1.1'}, {args.payload}-byte payloads, window "
          f"{args.window}, {args.duration:g} s per run, medians of {args.repeat}")
    print(table(results, modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
