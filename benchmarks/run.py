"""Benchmark twisted_mqtt against Mosquitto with the C load generator (benchmarks/loadgen.c).

For every scenario and protocol, each broker is started in turn on a loopback ephemeral port
(a fresh process per run), the same ``loadgen`` run is pointed at it, and the broker's CPU time
(utime + stime from /proc/PID/stat, before and after) and peak RSS (VmHWM) are read.  Runs are
repeated ``--repeat`` times, alternating which broker goes first; the table shows medians.

    make -C benchmarks
    python3 benchmarks/run.py                       # everything, both protocols, 3 repeats
    python3 benchmarks/run.py --scenario stream --protocol 4 --repeat 1
    python3 benchmarks/run.py --python /tmp/pypyenv/bin/python   # broker on PyPy
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOADGEN = HERE / "build" / "loadgen"
SCENARIOS = ("stream", "qos1", "fanout", "reqresp", "reqresp-pairs", "idle")
BROKERS = ("twisted_mqtt", "mosquitto")
KNOWN_BROKERS = ("twisted_mqtt", "twisted_mqtt+acl", "mosquitto")
SHORT = {"twisted_mqtt": "tm", "twisted_mqtt+acl": "tm+acl", "mosquitto": "mq"}
# The port the kernel chose: Twisted's "MQTTFactory starting on N" or the broker's own
# "listening for MQTT on ENDPOINT at HOST:PORT", whichever the version logs.
PORT_LINE = re.compile(r"MQTTFactory starting on (\d+)|listening for MQTT on \S+ at \S*:(\d+)")
LOG_ERRORS = ("Traceback", "Unhandled Error", "Unhandled error", "CRITICAL")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> None:
    """preexec_fn: give the broker the highest open-file limit allowed (idle opens 10,000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    """A port the kernel considers free now (Mosquitto needs a fixed port in its config)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def wait_accepting(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2.0).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"broker not accepting on {port}") from None
            time.sleep(0.02)


class Broker:
    """One broker process with its log in a file."""

    def __init__(self, name: str, args: argparse.Namespace, workdir: Path,
                 extra: Sequence[str] = ()) -> None:
        """``extra``: more options for twisted_mqtt (benchmarks/cluster.py: cluster nodes)."""
        self.name = name
        self.log_path = workdir / f"{name}.log"
        env = dict(os.environ)
        if name.startswith("twisted_mqtt"):
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(args.broker_root), env.get("PYTHONPATH")) if p)
            env["PYTHONUNBUFFERED"] = "1"
            program = ["-m", "twisted_mqtt"] if name == "twisted_mqtt" else [
                str(HERE / "acl_broker.py")]
            argv = [args.python, *program, "--listen", "tcp:0:interface=127.0.0.1",
                    "--allow-anonymous", *extra]
        else:
            port = free_port()
            conf = workdir / "mosquitto.conf"
            lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
                     "log_dest stdout"]
            if args.mosquitto_nodelay:
                lines.append("set_tcp_nodelay true")
            conf.write_text("\n".join(lines) + "\n")
            argv = [args.mosquitto, "-c", str(conf)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=workdir,
                                         preexec_fn=raise_nofile)
        if name.startswith("twisted_mqtt"):
            deadline = time.monotonic() + 30
            while True:
                found = PORT_LINE.search(self.log())
                if found:
                    port = int(found.group(1) or found.group(2))
                    break
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"twisted_mqtt did not start:\n{self.log()}")
                time.sleep(0.05)
        self.port = port
        wait_accepting(port, self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> List[str]:
        """SIGTERM and wait; return log lines that show an unhandled error."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return ["did not exit within 20 s of SIGTERM"]
        return [line for line in self.log().splitlines() if any(e in line for e in LOG_ERRORS)]


def loadgen_argv(args: argparse.Namespace, scenario: str, proto: int, port: int,
                 pid: int) -> List[str]:
    argv = [str(args.loadgen), "--port", str(port), "--scenario", scenario, "--protocol",
            str(proto), "--duration", str(args.duration), "--payload", str(args.payload)]
    if scenario == "qos1":
        argv += ["--window", str(args.window)]
    if scenario == "fanout" and args.fanout_window:
        argv += ["--qos0-window", str(args.fanout_window)]
    if scenario == "stream" and args.stream_window:
        argv += ["--qos0-window", str(args.stream_window)]
    if scenario.startswith("reqresp") and not args.no_quickack:
        argv += ["--quickack"]
    if scenario == "idle":
        argv += ["--conns", str(args.conns), "--broker-pid", str(pid)]
    return argv


def start_profiler(pid: int, out: Path) -> subprocess.Popen:
    """py-spy recording ``pid`` into ``out`` (raw collapsed stacks), once it runs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    profiler = subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
         "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return profiler


def stop_profiler(profiler: Optional[subprocess.Popen]) -> None:
    """Stop a ``start_profiler`` recording (it writes its file)."""
    if profiler is None:
        return
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()


def loadgen_result(done: subprocess.CompletedProcess, against: str) -> Dict:
    """The JSON line of a finished loadgen run; RuntimeError if it failed."""
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({done.returncode}) against {against}: "
                           f"{done.stderr.strip()}")
    return dict(json.loads(lines[-1]))


def run_one(args: argparse.Namespace, broker_name: str, scenario: str, proto: int,
            rep: int) -> Dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{broker_name}-"))
    broker = Broker(broker_name, args, workdir)
    profiler: Optional[subprocess.Popen] = None
    try:
        time.sleep(0.3)
        if args.profile and broker_name.startswith("twisted_mqtt"):
            profiler = start_profiler(broker.pid,
                                      Path(args.profile) / f"{scenario}-v{proto}-r{rep}.txt")
        cpu0 = cpu_seconds(broker.pid)
        t0 = time.monotonic()
        done = subprocess.run(loadgen_argv(args, scenario, proto, broker.port, broker.pid),
                              capture_output=True, text=True, timeout=args.duration + 600)
        elapsed = time.monotonic() - t0
        cpu1 = cpu_seconds(broker.pid)
        hwm = status_kb(broker.pid, "VmHWM")
    finally:
        stop_profiler(profiler)
        problems = broker.stop()
    result = loadgen_result(done, broker_name)
    delivered = result.get("delivered", 0)
    result.update(broker=broker_name, repeat=rep, broker_cpu_s=round(cpu1 - cpu0, 3),
                  broker_cpu_pct=round(100 * (cpu1 - cpu0) / elapsed, 1),
                  broker_us_per_msg=(1e6 * (cpu1 - cpu0) / delivered) if delivered else None,
                  peak_rss_kb=hwm, log_problems=problems[:5],
                  loadgen_stderr=done.stderr.strip().splitlines()[-5:])
    if problems:
        print(f"  ! {broker_name} log: {problems[:3]}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def med(values: List[Optional[float]]) -> Optional[float]:
    clean = [v for v in values if v is not None and v >= 0]
    return statistics.median(clean) if clean else None


def fmt(value: Optional[float], spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def table(results: List[Dict], brokers: List[str]) -> str:
    """One Markdown table, medians over the repeats; twisted_mqtt is 'tm' ('tm+acl' with an
    allow-all ACL hook), Mosquitto 'mq'.  Ratios: each twisted_mqtt variant to Mosquitto, and
    the ACL hook's cost (tm+acl to tm)."""
    head = ["scenario", "proto"]
    for b in brokers:
        s = SHORT[b]
        head += [f"{s} msgs/s", f"{s} CPU µs/msg", f"{s} p50/p99 ms", f"{s} lost",
                 f"{s} peak RSS MB"]
    pairs = [(b, "mosquitto") for b in brokers if b != "mosquitto" and "mosquitto" in brokers]
    if "twisted_mqtt" in brokers and "twisted_mqtt+acl" in brokers:
        pairs.append(("twisted_mqtt+acl", "twisted_mqtt"))
    for a, b in pairs:
        head += [f"{SHORT[a]}/{SHORT[b]} throughput", f"{SHORT[a]}/{SHORT[b]} CPU per msg"]
    head += ["gen CPU % (max)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = sorted({(r["scenario"], r["protocol"]) for r in results},
                  key=lambda k: (SCENARIOS.index(k[0]), k[1]))
    for scenario, proto in keys:
        row = [scenario, str(proto)]
        thr: Dict[str, Optional[float]] = {}
        cpu: Dict[str, Optional[float]] = {}
        gen = 0.0
        for b in brokers:
            runs = [r for r in results if (r["scenario"], r["protocol"], r["broker"]) ==
                    (scenario, proto, b)]
            gen = max([gen] + [r["gen_cpu_pct"] for r in runs])
            if scenario == "idle":
                thr[b] = med([r["kb_per_conn"] for r in runs])
                cpu[b] = med([1e6 * r["broker_cpu_s"] / r["connections"] for r in runs])
                row += [f"{fmt(thr[b], '.2f')} KB/conn", f"{fmt(cpu[b])} /conn", "-",
                        str(sum(r["disconnects"] for r in runs)),
                        fmt(med([r["peak_rss_kb"] / 1024 for r in runs]), ".1f")]
                continue
            thr[b] = med([r["msgs_per_s"] for r in runs])
            cpu[b] = med([r["broker_us_per_msg"] for r in runs])
            p50 = med([r["lat_p50_us"] / 1e3 for r in runs])
            p99 = med([r["lat_p99_us"] / 1e3 for r in runs])
            lost = [r["lost"] for r in runs]
            row += [fmt(thr[b]), fmt(cpu[b], ".2f"), f"{fmt(p50, '.2f')}/{fmt(p99, '.2f')}",
                    "/".join(str(x) for x in lost),
                    fmt(max((r["peak_rss_kb"] for r in runs), default=None) and
                        max(r["peak_rss_kb"] for r in runs) / 1024, ".1f")]
        for a, b in pairs:
            row += [ratio(thr[a], thr[b]), ratio(cpu[a], cpu[b])]
        row.append(f"{gen:.0f}")
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="all",
                        help="comma-separated: " + ",".join(SCENARIOS) + " (default all)")
    parser.add_argument("--protocol", default="both", choices=("4", "5", "both"))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs twisted_mqtt (e.g. a PyPy venv)")
    parser.add_argument("--broker-root", default=str(ROOT),
                        help="directory put on PYTHONPATH for twisted_mqtt (default: this repo)")
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--mosquitto-nodelay", action="store_true",
                        help="set_tcp_nodelay true in Mosquitto's config (default: its default)")
    parser.add_argument("--loadgen", default=str(LOADGEN))
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--window", type=int, default=100, help="qos1: in-flight per publisher")
    parser.add_argument("--fanout-window", type=int, default=1000,
                        help="fanout: publisher at most this many messages ahead of the slowest "
                             "subscriber (0: socket back-pressure only)")
    parser.add_argument("--stream-window", type=int, default=0,
                        help="stream: as --fanout-window (default 0: socket back-pressure only)")
    parser.add_argument("--no-quickack", action="store_true",
                        help="reqresp, reqresp-pairs: do not set TCP_QUICKACK on the "
                             "devices' sockets")
    parser.add_argument("--conns", type=int, default=10000, help="idle: connections")
    parser.add_argument("--profile", help="directory: py-spy raw profiles of twisted_mqtt")
    parser.add_argument("--json", help="append every run's result (JSON lines) to this file")
    args = parser.parse_args(argv)

    if not Path(args.loadgen).exists():
        subprocess.run(["make", "-C", str(HERE)], check=True)
    scenarios = SCENARIOS if args.scenario == "all" else tuple(args.scenario.split(","))
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s}")
    protos = (4, 5) if args.protocol == "both" else (int(args.protocol),)
    brokers = args.brokers.split(",")
    for b in brokers:
        if b not in KNOWN_BROKERS:
            parser.error(f"unknown broker {b} (known: {', '.join(KNOWN_BROKERS)})")
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0], "
                              "sys.implementation.name)"], capture_output=True, text=True)
    print(f"twisted_mqtt on {args.python} ({version.stdout.strip()}), "
          f"broker root {args.broker_root}", file=sys.stderr)

    results: List[Dict] = []
    for scenario in scenarios:
        for proto in protos:
            for rep in range(args.repeat):
                order = brokers if rep % 2 == 0 else list(reversed(brokers))
                for name in order:
                    r = run_one(args, name, scenario, proto, rep)
                    results.append(r)
                    if args.json:
                        with open(args.json, "a") as out:
                            out.write(json.dumps(r) + "\n")
                    if scenario == "idle":
                        summary = f"{r['kb_per_conn']:.2f} KB/conn"
                    else:
                        summary = (f"{r['msgs_per_s']:.0f} msg/s, "
                                   f"{fmt(r['broker_us_per_msg'], '.2f')} µs/msg, "
                                   f"lost {r['lost']}")
                    print(f"{scenario} v{proto} #{rep} {name}: {summary}, broker CPU "
                          f"{r['broker_cpu_pct']}%, gen CPU {r['gen_cpu_pct']}%",
                          file=sys.stderr)
    print(table(results, brokers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
