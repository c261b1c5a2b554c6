"""Start-up footprint: a broker pays, in imports and memory, only for the features it is given.

Each case builds the service from command-line options in a fresh interpreter, as
``python -m twisted_mqtt`` does before it runs the reactor, and lists which optional heavy
modules that imported.  (OpenSSL, cryptography and bcrypt are not among them: Twisted's reactor
imports them itself, for TLS.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.conftest import broker_env

OPTIONAL = ("autobahn", "prometheus_client", "yaml", "txredisapi", "treq", "psycopg2",
            "pymysql", "sqlite3", "twisted.enterprise.adbapi", "twisted.web.server",
            "twisted_mqtt.websocket", "twisted_mqtt.metrics", "twisted_mqtt.auth.backends",
            "twisted_mqtt.auth.cred", "twisted_mqtt.auth.ledger", "twisted_mqtt.storage.sqlite",
            "twisted_mqtt.storage.redis", "twisted_mqtt.web")

BUILD = f"""
import json, select, sys
if hasattr(select, "epoll"):
    from twisted_mqtt.reactor import install
    install()
from twisted.internet import reactor
from twisted_mqtt.tap import Options, makeService
options = Options()
options.parseOptions(sys.argv[1:])
makeService(options, reactor)
print(json.dumps(sorted(name for name in {OPTIONAL!r} if name in sys.modules)))
"""


def imported(*options: str) -> List[str]:
    """The optional modules imported once the service of ``options`` is built."""
    result = subprocess.run([sys.executable, "-c", BUILD, *options], capture_output=True,
                            text=True, env=broker_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_plain_listener_imports_no_optional_module() -> None:
    """A plain TCP listener with the memory store and no authentication imports none of the
    optional parts, nor their dependencies."""
    assert imported("--listen", "tcp:0:interface=127.0.0.1") == []


@pytest.mark.parametrize("options, expected", [
    (("--ws", "tcp:0:interface=127.0.0.1"), {"autobahn", "twisted_mqtt.websocket"}),
    (("--stats", "tcp:0:interface=127.0.0.1"),
     {"prometheus_client", "twisted.web.server", "twisted_mqtt.metrics"}),
    (("--dashboard", "tcp:0:interface=127.0.0.1"), {"twisted.web.server", "twisted_mqtt.web"}),
    (("--store", "sqlite:{tmp}/store.db"), {"sqlite3", "twisted_mqtt.storage.sqlite"}),
    (("--config", "{tmp}/broker.yaml"), {"yaml"}),
])
def test_each_feature_imports_its_dependency(tmp_path: Path, options: tuple,
                                             expected: set) -> None:
    """A configured feature imports its dependency, and only that one."""
    (tmp_path / "broker.yaml").write_text("sys_interval: 10.0\n")
    names = imported("--listen", "tcp:0:interface=127.0.0.1",
                     *(option.format(tmp=tmp_path) for option in options))
    assert set(names) == expected
