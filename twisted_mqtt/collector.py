"""Garbage collector settings for a process that runs the broker.

A broker allocates a few short-lived objects per message (a message, a delivery, a packet's
fields).  With CPython's default thresholds (700, 10, 10) the collector runs a young collection
every few hundred messages, and the messages held in flight get promoted and set off full
collections that walk every object in the process — including the tens of thousands created at
start-up (modules, classes, the broker's own structures) that live as long as it does.  Under a
10->10 QoS 1 load this cost a quarter of the broker's CPU time and most of its 99th-percentile
latency (``benchmarks/run.py --scenario qos1``; numbers in ``docs/performance.md``).

``tune()`` moves the objects that exist once the broker runs into the permanent generation
(``gc.freeze``: never walked again) and raises the young generation's threshold so that young
collections run about thirty times less often, each still bounded by that threshold.
Reference cycles are still found and freed.  On interpreters without these calls (PyPy, whose
collector is generational and incremental) it does nothing.

``python -m twisted_mqtt`` and ``twistd mqtt`` call it once the reactor runs; an application
embedding the broker may call it itself, once its own start-up is done.
"""

from __future__ import annotations

import gc
import platform

YOUNG_THRESHOLD = 20_000
"""Allocations (net of frees) of container objects between two young collections."""


def tune() -> bool:
    """Freeze the objects alive now and raise the young generation's threshold (CPython only);
    whether it was done."""
    if platform.python_implementation() != "CPython" or not hasattr(gc, "freeze"):
        return False
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, young), middle, old)
    return True
