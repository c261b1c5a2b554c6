"""PostgreSQL (``psycopg2``; ``pip install twisted-mqtt-broker[postgresql]``) and MySQL/MariaDB
(``pymysql``; ``[mysql]``) backend through ``twisted.enterprise.adbapi``, comqtt's contract:

- credentials: ``SELECT password, allow FROM auth WHERE username = %s`` (the first row);
  ``allow`` 0 refuses the user;
- ACL: ``SELECT topic, access FROM acl WHERE username = %s``, access 0-3 (deny, read, write,
  readwrite).

Every table and column name is a setting (``auth_table``, ``user_column``, ``password_column``,
``allow_column``, ``acl_table``, ``acl_user_column``, ``topic_column``, ``access_column``);
they must be plain identifiers (letters, digits, ``_``, optionally ``schema.``).  comqtt's
schema::

    CREATE TABLE auth (id serial PRIMARY KEY, username TEXT NOT NULL UNIQUE,
                       password TEXT NOT NULL, allow smallint DEFAULT 1 NOT NULL);
    CREATE TABLE acl (id serial PRIMARY KEY, username TEXT NOT NULL, topic TEXT NOT NULL,
                      access smallint DEFAULT 3 NOT NULL);
    CREATE INDEX acl_username_idx ON acl(username);

Queries run in adbapi's thread pool (``pool_max`` threads, so at most that many database
connections), never on the reactor thread; a lost connection is reopened on the next query.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

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

POSTGRESQL_MODULE = "psycopg2cffi" if platform.python_implementation() == "PyPy" else "psycopg2"
"""The PostgreSQL client: psycopg2 does not load on PyPy, psycopg2cffi is its drop-in there."""

log = Logger()

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_NAMES = ("auth_table", "user_column", "password_column", "allow_column", "acl_table",
          "acl_user_column", "topic_column", "access_column")


@dataclass
class SQLSettings(BackendSettings):
    """Where the database is and which tables and columns hold users and rules."""

    engine: str = "postgresql"
    """``postgresql`` or ``mysql`` (MySQL and MariaDB)."""
    host: str = "localhost"
    port: Optional[int] = None
    """Default: 5432 (PostgreSQL), 3306 (MySQL)."""
    database: str = "comqtt"
    user: Optional[str] = None
    password: Optional[str] = None
    sslmode: Optional[str] = None
    """PostgreSQL's ``sslmode`` (e.g. ``require``, ``verify-full``)."""
    charset: str = "utf8mb4"
    """MySQL's connection character set."""
    auth_table: str = "auth"
    user_column: str = "username"
    password_column: str = "password"
    allow_column: str = "allow"
    acl_table: str = "acl"
    acl_user_column: str = "username"
    topic_column: str = "topic"
    access_column: str = "access"
    pool_min: int = 1
    pool_max: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        engine = str(self.engine).lower()
        engine = {"postgres": "postgresql", "mariadb": "mysql"}.get(engine, engine)
        if engine not in ("postgresql", "mysql"):
            raise ValueError(f"engine: expected postgresql or mysql, not {self.engine!r}")
        self.engine = engine
        if self.port is None:
            self.port = 5432 if engine == "postgresql" else 3306
        self.port = int(self.port)
        self.pool_min, self.pool_max = int(self.pool_min), int(self.pool_max)
        if not 1 <= self.pool_min <= self.pool_max:
            raise ValueError("pool_min and pool_max: expected 1 <= pool_min <= pool_max")
        for name in _NAMES:
            value = str(getattr(self, name))
            if not _IDENTIFIER.match(value):
                raise ValueError(f"{name}: {value!r} is not a plain SQL identifier")

    def client(self) -> ModuleType:
        """The DB-API module of the engine: psycopg2 (psycopg2cffi on PyPy) or pymysql
        (ImportError naming the extra that brings it)."""
        if self.engine == "postgresql":
            module = POSTGRESQL_MODULE
            return require(module, "postgresql", module, "postgresql")
        return require("pymysql", "mysql", "pymysql", "mysql")

    @property
    def auth_query(self) -> str:
        """The credentials query."""
        return (f"SELECT {self.password_column}, {self.allow_column} FROM {self.auth_table} "
                f"WHERE {self.user_column} = %s")

    @property
    def acl_query(self) -> str:
        """The ACL query."""
        return (f"SELECT {self.topic_column}, {self.access_column} FROM {self.acl_table} "
                f"WHERE {self.acl_user_column} = %s")


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


class SQLAuth(BackendAuth):
    """Credentials and ACL rules from PostgreSQL or MySQL/MariaDB tables."""

    kind = "sql"

    def __init__(self, settings: SQLSettings, clock: Any = None,
                 verifier: Optional[PasswordVerifier] = None, reactor: Any = None) -> None:
        super().__init__(settings, clock, verifier)
        self.settings: SQLSettings = settings
        from twisted.enterprise import adbapi

        connect_timeout = max(1, int(round(settings.timeout)))
        kwargs: Dict[str, Any] = {"cp_min": settings.pool_min, "cp_max": settings.pool_max,
                                  "cp_reconnect": True, "cp_noisy": False}
        if reactor is not None:
            kwargs["cp_reactor"] = reactor
        module = settings.client().__name__
        if settings.engine == "postgresql":
            kwargs.update(host=settings.host, port=settings.port, dbname=settings.database,
                          connect_timeout=connect_timeout)
            if settings.user is not None:
                kwargs["user"] = settings.user
            if settings.password is not None:
                kwargs["password"] = settings.password
            if settings.sslmode:
                kwargs["sslmode"] = settings.sslmode
        else:
            kwargs.update(host=settings.host, port=settings.port, database=settings.database,
                          charset=settings.charset, connect_timeout=connect_timeout,
                          read_timeout=connect_timeout, write_timeout=connect_timeout,
                          autocommit=True)
            if settings.user is not None:
                kwargs["user"] = settings.user
            if settings.password is not None:
                kwargs["password"] = settings.password
        self.pool = adbapi.ConnectionPool(module, **kwargs)

    def describe(self) -> str:
        """``postgresql host:port/database``."""
        settings = self.settings
        return f"{settings.engine} {settings.host}:{settings.port}/{settings.database}"

    def fetch_credentials(self, key: str, request: ConnectRequest) -> Any:
        """The first row of the credentials query, or None."""

        def first(rows: List[Tuple[Any, ...]]) -> Optional[UserRecord]:
            if not rows:
                return None
            password, allow = rows[0][0], rows[0][1]
            try:
                allowed = bool(int(allow))
            except (TypeError, ValueError):
                allowed = allow is True
            return UserRecord(_text(password), allowed)

        return self.pool.runQuery(self.settings.auth_query, (key,)).addCallback(first)

    def fetch_acl(self, key: str) -> Any:
        """The rows of the ACL query as ``[(filter, access)]``."""

        def rules(rows: List[Tuple[Any, ...]]) -> Any:
            return access_rules([(_text(row[0]), row[1]) for row in rows],
                                f"{self.settings.acl_table} for {key}")

        return self.pool.runQuery(self.settings.acl_query, (key,)).addCallback(rules)

    def close(self) -> Any:
        """Close the connection pool."""
        self.pool.close()
