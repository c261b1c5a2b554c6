"""Summarise py-spy ``--format raw`` (collapsed stacks) output: top functions by self and by
total (inclusive) samples.

    python3 benchmarks/profile_top.py /tmp/profiles/stream-v4-r0.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from typing import List, Optional

LINE_NO = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """'func (path/file.py:123)' -> 'func (file.py)': one entry per function, not per line."""
    frame = LINE_NO.sub(")", frame.strip())
    if "(" in frame:
        func, _, where = frame.partition(" (")
        where = where.rstrip(")")
        parts = where.split("/")
        short = "/".join(parts[-2:]) if len(parts) > 1 else where
        return f"{func} ({short})"
    return frame


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    self_c: Counter = Counter()
    total_c: Counter = Counter()
    samples = 0
    for path in args.files:
        with open(path) as handle:
            for line in handle:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                n = int(count)
                frames = [frame_name(f) for f in stack.split(";")]
                frames = [f for f in frames if not f.startswith("process ")
                          and not f.startswith("thread ")]
                if not frames:
                    continue
                samples += n
                self_c[frames[-1]] += n
                for f in set(frames):
                    total_c[f] += n
    if not samples:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{samples} samples")
    print(f"{'self %':>7} {'total %':>8}  function")
    for name, n in self_c.most_common(args.top):
        print(f"{100 * n / samples:7.1f} {100 * total_c[name] / samples:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
