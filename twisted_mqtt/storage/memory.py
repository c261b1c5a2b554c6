"""``MemoryStore``: a store kept in this process's memory, so nothing survives the process.

It applies batches exactly as the other stores do, which makes it the reference for them and
lets tests "restart" a broker by restoring a new one from the same ``MemoryStore``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from twisted_mqtt.bans import Ban
from twisted_mqtt.storage import (
    Batch,
    IStore,
    SessionHead,
    StoredDelivery,
    StoredMessage,
    StoredSession,
    StoredState,
    StoredSubscription,
)


@implementer(IStore)
class MemoryStore:
    """Committed state in dictionaries; ``commits`` counts the transactions applied."""

    location = "memory"

    def __init__(self) -> None:
        self.heads: Dict[str, SessionHead] = {}
        self.subscriptions: Dict[str, Dict[str, StoredSubscription]] = {}
        self.deliveries: Dict[int, StoredDelivery] = {}
        self.inbound: Dict[str, Set[int]] = {}
        self.retained: Dict[str, StoredMessage] = {}
        self.sys_info: Optional[Dict[str, Any]] = None
        self.bans: Tuple[Ban, ...] = ()
        self.commits = 0
        self.batches: List[Batch] = []
        """Every batch committed, in order (for tests)."""

    def load(self) -> Deferred[StoredState]:
        """The committed state."""
        return succeed(self.state())

    def state(self) -> StoredState:
        """The committed state, as ``load`` gives it."""
        by_client: Dict[str, List[StoredDelivery]] = {}
        for key in sorted(self.deliveries):
            delivery = self.deliveries[key]
            by_client.setdefault(delivery.client_id, []).append(delivery)
        sessions = tuple(
            StoredSession(head,
                          tuple(s for _, s in sorted(self.subscriptions.get(client_id,
                                                                            {}).items())),
                          tuple(by_client.get(client_id, ())),
                          tuple(sorted(self.inbound.get(client_id, ()))))
            for client_id, head in sorted(self.heads.items()))
        return StoredState(sessions, tuple(self.retained[t] for t in sorted(self.retained)),
                           dict(self.sys_info) if self.sys_info is not None else None,
                           bans=self.bans)

    def commit(self, batch: Batch) -> Deferred[None]:
        """Apply ``batch`` at once."""
        for client_id in batch.cleared:
            self.heads.pop(client_id, None)
            self.subscriptions.pop(client_id, None)
            self.inbound.pop(client_id, None)
            for key in [k for k, d in self.deliveries.items() if d.client_id == client_id]:
                del self.deliveries[key]
        self.heads.update(batch.sessions)
        for (client_id, topic_filter), subscription in batch.subscriptions.items():
            if subscription is None:
                self.subscriptions.get(client_id, {}).pop(topic_filter, None)
            else:
                self.subscriptions.setdefault(client_id, {})[topic_filter] = subscription
        for key in batch.deleted:
            self.deliveries.pop(key, None)
        self.deliveries.update(batch.deliveries)
        for key, (_client_id, packet_id, state) in batch.moves.items():
            delivery = self.deliveries.get(key)
            if delivery is not None:
                self.deliveries[key] = replace(delivery, packet_id=packet_id, state=state)
        for (client_id, packet_id), received in batch.inbound.items():
            if received:
                self.inbound.setdefault(client_id, set()).add(packet_id)
            else:
                self.inbound.get(client_id, set()).discard(packet_id)
        for topic, message in batch.retained.items():
            if message is None:
                self.retained.pop(topic, None)
            else:
                self.retained[topic] = message
        if batch.sys_info is not None:
            self.sys_info = dict(batch.sys_info)
        if batch.bans is not None:
            self.bans = batch.bans
        self.commits += 1
        self.batches.append(batch)
        return succeed(None)

    def close(self) -> Deferred[None]:
        """Nothing to release."""
        return succeed(None)
