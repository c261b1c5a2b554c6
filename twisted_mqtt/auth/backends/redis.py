"""Redis backend (``txredisapi``; ``pip install twisted-mqtt-broker[redis]``), comqtt's contract:

- credentials: the hash ``comqtt:auth`` (``auth_prefix``) maps each user name (or client id) to
  a JSON object ``{"password": "...", "allow": true}``; ``allow`` must be true for the user to
  connect (comqtt's rule);
- ACL: the hash ``comqtt:acl:<user name or client id>`` (``acl_prefix`` + ``:`` + key) maps
  topic filters to access 0-3 (deny, read, write, readwrite).

::

    HSET comqtt:auth alice '{"password": "$2b$12$...", "allow": true}'
    HSET comqtt:acl:alice 'alice/#' 3 'public/#' 1
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Optional

from twisted.logger import Logger

from twisted_mqtt.auth.backends import (
    BackendAuth,
    BackendSettings,
    UserRecord,
    access_rules,
    require,
)
from twisted_mqtt.auth.passwords import PasswordVerifier
from twisted_mqtt.interfaces import ConnectRequest

log = Logger()


@dataclass
class RedisSettings(BackendSettings):
    """Where the Redis server is and which keys hold the users and their rules."""

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False
    auth_prefix: str = "comqtt:auth"
    acl_prefix: str = "comqtt:acl"
    pool_size: int = 4
    reconnect_max_delay: float = 2.0
    """Longest wait between attempts to reconnect to a Redis server that went away."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.port, self.db, self.pool_size = int(self.port), int(self.db), int(self.pool_size)
        self.reconnect_max_delay = float(self.reconnect_max_delay)

    def client(self) -> ModuleType:
        """txredisapi (ImportError naming the extra that brings it)."""
        return require("txredisapi", "Redis", "txredisapi", "redis")
        if isinstance(self.tls, str):
            self.tls = self.tls.lower() in ("1", "true", "yes", "on")


class RedisAuth(BackendAuth):
    """Credentials and ACL rules from Redis hashes (comqtt's layout)."""

    kind = "redis"

    def __init__(self, settings: RedisSettings, clock: Any = None,
                 verifier: Optional[PasswordVerifier] = None) -> None:
        super().__init__(settings, clock, verifier)
        self.settings: RedisSettings = settings
        txredisapi = settings.client()
        self.redis = txredisapi.lazyConnectionPool(
            settings.host, settings.port, dbid=settings.db, poolsize=settings.pool_size,
            password=settings.password, username=settings.username,
            ssl_context_factory=settings.tls, connectTimeout=settings.timeout,
            convertNumbers=False)
        factory = getattr(self.redis, "_factory", None)
        if factory is not None:
            factory.maxDelay = settings.reconnect_max_delay
            factory.initialDelay = min(factory.initialDelay, settings.reconnect_max_delay)

    def describe(self) -> str:
        """``redis host:port/db``."""
        settings = self.settings
        return f"redis {settings.host}:{settings.port}/{settings.db}"

    def fetch_credentials(self, key: str, request: ConnectRequest) -> Any:
        """``HGET <auth_prefix> <key>``, decoded as ``{"password", "allow"}``."""

        def decode(value: Any) -> Optional[UserRecord]:
            if value is None or value == "":
                return None
            try:
                record = json.loads(value)
            except ValueError:
                log.warn("{backend}: {prefix}[{key}] is not JSON; refusing", key=key,
                         prefix=self.settings.auth_prefix, backend=self.describe())
                return None
            if not isinstance(record, dict):
                return None
            return UserRecord(str(record.get("password") or ""), record.get("allow") is True)

        return self.redis.hget(self.settings.auth_prefix, key).addCallback(decode)

    def fetch_acl(self, key: str) -> Any:
        """``HGETALL <acl_prefix>:<key>``: filter -> access."""
        name = f"{self.settings.acl_prefix}:{key}"
        return self.redis.hgetall(name).addCallback(access_rules, name)

    def close(self) -> Any:
        """Disconnect the pool."""
        return self.redis.disconnect()
