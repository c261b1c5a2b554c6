"""The pieces every rule-based auth hook shares: access levels, Mochi MQTT's value patterns,
topic-filter matching, the "most specific filter wins" ACL decision, and the blacklist.

- ``pattern_matches`` is Mochi MQTT's ``RString.Matches``: an empty pattern or ``*`` matches
  anything (an absent value too); otherwise ``*`` stands for one or more characters (Mochi only
  allows it at the end; here it may stand anywhere), and a pattern without ``*`` must be equal.
  Remote-address patterns written with a port, as Mochi and comqtt write them
  (``127.0.0.1:*``), match the address alone, and a pattern in CIDR form (``10.0.0.0/8``) matches
  the addresses of that network.
- ``decide`` is comqtt's ``CheckAcl``: of the filters matching a topic, the longest decides
  ("a more specific topic wins over a wildcard"), a deny winning a tie.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, List, Mapping, Optional, Pattern, Sequence, Tuple, Union

from twisted_mqtt.interfaces import ClientInfo
from twisted_mqtt.topics import levels_match


class Access(enum.IntEnum):
    """What an ACL filter grants: Mochi MQTT's and comqtt's numbers."""

    DENY = 0
    READ = 1
    WRITE = 2
    READWRITE = 3


_ACCESS_NAMES = {
    "deny": Access.DENY, "none": Access.DENY,
    "read": Access.READ, "readonly": Access.READ, "subscribe": Access.READ,
    "write": Access.WRITE, "writeonly": Access.WRITE, "publish": Access.WRITE,
    "readwrite": Access.READWRITE, "pubsub": Access.READWRITE, "all": Access.READWRITE,
}

Rules = Sequence[Tuple[str, Access]]
"""ACL filters and what each grants, in the order they were written."""


def parse_access(value: Any) -> Access:
    """An access level from 0-3 (an int or its text) or a name (deny, read/readonly/subscribe,
    write/writeonly/publish, readwrite/pubsub); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"access must be 0-3 or deny/read/write/readwrite, not {value!r}")
    if isinstance(value, int):
        try:
            return Access(value)
        except ValueError:
            raise ValueError(f"access must be 0-3, not {value}") from None
    if isinstance(value, str):
        text = value.strip().lower().replace("-", "").replace("_", "")
        if text.isdigit():
            return parse_access(int(text))
        if text in _ACCESS_NAMES:
            return _ACCESS_NAMES[text]
    raise ValueError(f"access must be 0-3 or deny/read/write/readwrite, not {value!r}")


def allows(access: Access, write: bool) -> bool:
    """Whether ``access`` grants writing (publishing) or reading (subscribing, receiving)."""
    return bool(access & (Access.WRITE if write else Access.READ))


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> Pattern[str]:
    return re.compile(".+".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def pattern_matches(pattern: Optional[str], value: Optional[str]) -> bool:
    """Whether a rule's client id, username or password ``pattern`` matches ``value`` (None
    counts as empty)."""
    if not pattern or pattern == "*":
        return True
    text = value or ""
    if pattern == text:
        return True
    if "*" not in pattern:
        return False
    return _glob(pattern).fullmatch(text) is not None


def _bare_address(address: str) -> str:
    return address[7:] if address.startswith("::ffff:") else address


def remote_matches(pattern: Optional[str], address: Optional[str]) -> bool:
    """Whether a rule's remote-address ``pattern`` matches a client's address (None for a Unix
    socket or in-memory peer): as ``pattern_matches``, plus ``HOST:*`` for HOST and CIDR
    networks; an IPv4-mapped IPv6 address also matches as IPv4."""
    if not pattern or pattern == "*":
        return True
    if pattern.endswith(":*") and pattern.count(":") == 1:
        pattern = pattern[:-2]
    if address is None:
        return False
    bare = _bare_address(address)
    if "/" in pattern:
        try:
            network = ipaddress.ip_network(pattern, strict=False)
            return ipaddress.ip_address(bare.split("%", 1)[0]) in network
        except ValueError:
            return False
    return pattern_matches(pattern, address) or pattern_matches(pattern, bare)


def filter_matches(rule_filter: str, topic: str) -> bool:
    """Whether an ACL rule's filter covers ``topic`` (or, at subscribe time, a subscription's
    filter, whose wildcards are then compared as plain levels, as Mochi and comqtt do).  ``+``
    matches one level and ``#`` any number, including none (``a/#`` covers ``a``)."""
    return rule_filter == topic or rule_filter == "#" or levels_match(rule_filter, topic)


def most_specific(rules: Iterable[Tuple[str, Access]], topic: str) -> Optional[Access]:
    """The access of the longest filter among ``rules`` that covers ``topic`` (a deny wins a
    tie), or None when none does."""
    best: Optional[Access] = None
    best_length = -1
    for rule_filter, access in rules:
        if not filter_matches(rule_filter, topic):
            continue
        length = len(rule_filter)
        if length > best_length or (length == best_length and access < (best or 0)):
            best, best_length = access, length
    return best


def decide(rules: Iterable[Tuple[str, Access]], topic: str, write: bool) -> Optional[bool]:
    """Whether ``rules`` let a client write (or read) ``topic``: the most specific matching
    filter decides; None when no filter matches."""
    access = most_specific(rules, topic)
    return None if access is None else allows(access, write)


def parse_rules(filters: Union[Mapping[Any, Any], Sequence[Any], None],
                where: str = "filters") -> List[Tuple[str, Access]]:
    """ACL filters from a mapping ``{filter: access}`` or a list of ``[filter, access]`` pairs
    (or ``{"filter": ..., "access": ...}`` mappings); ValueError naming ``where`` otherwise."""
    if filters is None:
        return []
    pairs: List[Tuple[Any, Any]]
    if isinstance(filters, Mapping):
        pairs = list(filters.items())
    elif isinstance(filters, (list, tuple)):
        pairs = []
        for index, item in enumerate(filters):
            if isinstance(item, Mapping) and set(item) == {"filter", "access"}:
                pairs.append((item["filter"], item["access"]))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                pairs.append((item[0], item[1]))
            else:
                raise ValueError(f"{where}[{index}]: expected a [filter, access] pair, "
                                 f"got {item!r}")
    else:
        raise ValueError(f"{where}: expected a mapping of filter to access, got {filters!r}")
    rules = []
    for rule_filter, access in pairs:
        if not isinstance(rule_filter, str) or not rule_filter:
            raise ValueError(f"{where}: a filter must be a non-empty string, not {rule_filter!r}")
        try:
            rules.append((rule_filter, parse_access(access)))
        except ValueError as error:
            raise ValueError(f"{where}.{rule_filter}: {error}") from None
    return rules


@dataclass(frozen=True)
class ClientPattern:
    """Matches clients by client id, username and remote address (each optional)."""

    client: Optional[str] = None
    username: Optional[str] = None
    remote: Optional[str] = None

    def matches(self, client: ClientInfo) -> bool:
        """Whether every given part matches ``client``."""
        return (pattern_matches(self.client, client.client_id)
                and pattern_matches(self.username, client.username)
                and remote_matches(self.remote, client.address))


def _optional_text(entry: Mapping[str, Any], key: str, where: str) -> Optional[str]:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{where}.{key}: expected text, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class Blacklist:
    """Clients refused before anything else is asked (CONNACK 0x8A Banned, v3: 5)."""

    entries: Tuple[ClientPattern, ...] = ()

    @classmethod
    def from_config(cls, data: Any, where: str = "blacklist") -> Blacklist:
        """From a list of ``{client, username, remote}`` mappings (each needs one of them), or
        an existing ``Blacklist``."""
        if data is None:
            return cls()
        if isinstance(data, Blacklist):
            return data
        if not isinstance(data, (list, tuple)):
            raise ValueError(f"{where}: expected a list of {{client, username, remote}}, "
                             f"got {data!r}")
        entries = []
        for index, entry in enumerate(data):
            place = f"{where}[{index}]"
            if isinstance(entry, ClientPattern):
                entries.append(entry)
                continue
            if not isinstance(entry, Mapping):
                raise ValueError(f"{place}: expected a mapping, got {entry!r}")
            unknown = set(entry) - {"client", "username", "remote"}
            if unknown:
                raise ValueError(f"{place}: unknown keys {sorted(unknown)}")
            pattern = ClientPattern(_optional_text(entry, "client", place),
                                    _optional_text(entry, "username", place),
                                    _optional_text(entry, "remote", place))
            if not (pattern.client or pattern.username or pattern.remote):
                raise ValueError(f"{place}: give a client, username or remote to ban")
            entries.append(pattern)
        return cls(tuple(entries))

    def banned(self, client: ClientInfo) -> bool:
        """Whether an entry matches ``client``."""
        return any(entry.matches(client) for entry in self.entries)
