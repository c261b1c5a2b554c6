"""What an admin API list request costs the reactor on a large broker: the first page of the
clients (all, and a search), and of the retained messages (``#``, and a narrower filter), read
from a broker holding SESSIONS sessions and RETAINED retained messages, in this process.

    python3 benchmarks/dashboard_views.py [SESSIONS [RETAINED]]
"""

from __future__ import annotations

import sys
import time
from operator import attrgetter
from typing import Any, Callable, List, Tuple

from twisted_mqtt.session import Message, Session
from twisted_mqtt.testing import InMemoryBroker
from twisted_mqtt.web import views


def main(argv: List[str]) -> None:
    """Print the milliseconds of each request."""
    sessions = int(argv[0]) if argv else 100_000
    retained = int(argv[1]) if len(argv) > 1 else 200_000
    broker = InMemoryBroker().broker
    for index in range(sessions):
        broker.sessions[f"client-{index:06d}"] = Session(f"client-{index:06d}")
    for index in range(retained):
        topic = f"t/{index % 100}/{index}"
        broker.retained[topic] = Message(topic, b"x", 0, True)

    def clients(search: str) -> Any:
        return views.paged(views.find_clients(broker, search), 50, 0, attrgetter("client_id"),
                           lambda session: views.client_summary(broker, session))

    def retained_page(topic_filter: str) -> Any:
        return views.paged(views.retained_matching(broker, topic_filter), 50, 0,
                           attrgetter("topic"), views.retained_summary)

    cases: List[Tuple[str, Callable[[], Any]]] = [
        (f"clients, first page of {sessions:,}", lambda: clients("")),
        (f"clients, search '99' among {sessions:,}", lambda: clients("99")),
        (f"retained '#', first page of {retained:,}", lambda: retained_page("#")),
        (f"retained 't/5/#' among {retained:,}", lambda: retained_page("t/5/#")),
    ]
    for name, request in cases:
        started = time.perf_counter()
        request()
        print(f"{name}: {1000 * (time.perf_counter() - started):.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
