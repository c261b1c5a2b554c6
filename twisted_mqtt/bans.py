"""Bans: clients refused at CONNECT by client id, user name, or address (one or a CIDR range).

Sans-IO: the caller passes ``now`` (the broker's clock).  A ban may expire; an expired ban
matches nothing and is forgotten the next time the bans are read.  ``Bans.changed`` observers
(a store's recorder) are told of every change.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from twisted_mqtt._value import value

__all__ = ["KINDS", "Ban", "BanError", "Bans"]

KINDS = ("client_id", "username", "address")
"""What a ban names: a client identifier, a user name, or an address or CIDR range."""

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class BanError(ValueError):
    """A ban that cannot be added: ``field`` names what is wrong (kind, value, expires_at)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@value
class Ban:
    """One ban.  ``value`` is a client id, a user name, or (kind ``address``) an address or a
    network in CIDR notation, as normalised by ``Bans.add`` (``10.0.0.0/8``)."""

    kind: str
    value: str
    expires_at: Optional[float] = None
    """When the ban ends, on the broker's clock (seconds since the epoch), or None: never."""
    reason: str = ""
    by: str = ""
    """Who added it (a dashboard user, an API key's name, or empty)."""
    created_at: Optional[float] = None

    def expired(self, now: float) -> bool:
        """Whether the ban has ended at ``now``."""
        return self.expires_at is not None and self.expires_at <= now

    def as_dict(self) -> Dict[str, object]:
        """The ban as JSON-ready fields."""
        return {"kind": self.kind, "value": self.value, "expires_at": self.expires_at,
                "reason": self.reason, "by": self.by, "created_at": self.created_at}

    @classmethod
    def from_dict(cls, fields: Dict[str, object]) -> Ban:
        """The ban ``as_dict`` gave; ``BanError`` naming the first bad field."""
        kind, text = fields.get("kind"), fields.get("value")
        if kind not in KINDS:
            raise BanError("kind", f"must be one of {', '.join(KINDS)}")
        if not isinstance(text, str):
            raise BanError("value", "must be a string")
        times = {}
        for name in ("expires_at", "created_at"):
            moment = fields.get(name)
            if moment is not None and (isinstance(moment, bool)
                                       or not isinstance(moment, (int, float))):
                raise BanError(name, "must be a number or null")
            times[name] = None if moment is None else float(moment)
        reason, by = fields.get("reason", ""), fields.get("by", "")
        if not isinstance(reason, str) or not isinstance(by, str):
            raise BanError("reason" if not isinstance(reason, str) else "by",
                           "must be a string")
        return cls(str(kind), normalise(str(kind), text), times["expires_at"], reason, by,
                   times["created_at"])


def normalise(kind: str, text: str) -> str:
    """The canonical form of a ban's value; ``BanError`` if it is empty, too long, or (kind
    ``address``) not an address or CIDR network."""
    if not text:
        raise BanError("value", "must not be empty")
    if len(text) > 65535:
        raise BanError("value", "longer than 65535 characters")
    if kind != "address":
        return text
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise BanError("value", f"not an IP address or CIDR network: {text!r}") from None


def _host(address: Optional[str]) -> Optional[Union[ipaddress.IPv4Address,
                                                    ipaddress.IPv6Address]]:
    """The peer's IP address (an IPv4-mapped IPv6 address as IPv4), or None."""
    if not address:
        return None
    try:
        host = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        return host.ipv4_mapped
    return host


class Bans:
    """The bans in force, at most ``limit`` of them."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._bans: Dict[Tuple[str, str], Ban] = {}
        self._networks: Dict[str, Network] = {}
        self.changed: List[Callable[[], None]] = []
        """Called (without arguments) after each change."""

    def __len__(self) -> int:
        return len(self._bans)

    def __iter__(self) -> Iterator[Ban]:
        return iter(list(self._bans.values()))

    def _notify(self) -> None:
        for observer in self.changed:
            observer()

    def add(self, kind: str, text: str, expires_at: Optional[float] = None, reason: str = "",
            by: str = "", now: Optional[float] = None) -> Ban:
        """Ban (or ban again, replacing the expiry and reason) a client id, user name or
        address; return the ban.  ``BanError`` names the bad field, or says the limit is
        reached."""
        if kind not in KINDS:
            raise BanError("kind", f"must be one of {', '.join(KINDS)}")
        text = normalise(kind, text)
        if expires_at is not None and now is not None and expires_at <= now:
            raise BanError("expires_at", "already past")
        if len(reason) > 1024:
            raise BanError("reason", "longer than 1024 characters")
        key = (kind, text)
        if key not in self._bans:
            if now is not None:
                self.purge(now)
            if len(self._bans) >= self.limit:
                raise BanError("value", f"{self.limit} bans already in force (maximum_bans)")
        ban = Ban(kind, text, expires_at, reason, by, now)
        self._put(ban)
        self._notify()
        return ban

    def _put(self, ban: Ban) -> None:
        self._bans[(ban.kind, ban.value)] = ban
        if ban.kind == "address":
            self._networks[ban.value] = ipaddress.ip_network(ban.value)

    def remove(self, kind: str, text: str) -> bool:
        """Lift a ban; False if there was none."""
        try:
            text = normalise(kind, text)
        except BanError:
            return False
        if self._bans.pop((kind, text), None) is None:
            return False
        if kind == "address":
            self._networks.pop(text, None)
        self._notify()
        return True

    def load(self, bans: Tuple[Ban, ...], now: float) -> None:
        """Put back the bans a store held (expired ones left out), without notifying."""
        for ban in bans:
            if not ban.expired(now):
                self._put(ban)

    def purge(self, now: float) -> int:
        """Forget expired bans; return how many."""
        gone = [key for key, ban in self._bans.items() if ban.expired(now)]
        for key in gone:
            del self._bans[key]
            if key[0] == "address":
                self._networks.pop(key[1], None)
        if gone:
            self._notify()
        return len(gone)

    def list(self, now: float) -> List[Ban]:
        """The bans in force at ``now``, by kind and value."""
        self.purge(now)
        return [self._bans[key] for key in sorted(self._bans)]

    def match(self, client_id: str, username: Optional[str], address: Optional[str],
              now: float) -> Optional[Ban]:
        """The ban in force at ``now`` that refuses this client, if any."""
        if not self._bans:
            return None
        for ban in self._candidates(client_id, username, address):
            if not ban.expired(now):
                return ban
        return None

    def _candidates(self, client_id: str, username: Optional[str],
                    address: Optional[str]) -> Iterator[Ban]:
        bans = self._bans
        found = bans.get(("client_id", client_id))
        if found is not None:
            yield found
        if username is not None:
            found = bans.get(("username", username))
            if found is not None:
                yield found
        if self._networks:
            host = _host(address)
            if host is not None:
                for text, network in self._networks.items():
                    if host.version == network.version and host in network:
                        yield bans[("address", text)]

    def matches_client(self, ban: Ban, client_id: str, username: Optional[str],
                       address: Optional[str]) -> bool:
        """Whether the ban in force ``ban`` names this client."""
        return any(found == ban for found in self._candidates(client_id, username, address))
