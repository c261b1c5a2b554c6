"""The cluster's options: ``--cluster``, ``--node-name``, ``--cluster-lease`` and the
``cluster`` section of the configuration file, each value checked with a one-line error, and
the service they build (a plain broker imports nothing of the cluster)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from tests.test_command_line import one_line, run, without
from twisted_mqtt.cluster import Cluster
from twisted_mqtt.config import CONFIG_ERROR_EXIT, ConfigError, load_config
from twisted_mqtt.service import BrokerService
from twisted_mqtt.tap import Options, makeService


def _options(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_command_line_options() -> None:
    """The three options and their defaults."""
    options = _options("--cluster", "redis://10.0.0.5:6380/2?prefix=mq:", "--node-name",
                       "edge-1", "--cluster-lease", "5")
    assert (options["cluster"], options["node-name"], options["cluster-lease"]) == (
        "redis://10.0.0.5:6380/2?prefix=mq:", "edge-1", 5.0)
    plain = _options()
    assert (plain["cluster"], plain["node-name"], plain["cluster-lease"]) == (None, None, 3.0)


@pytest.mark.parametrize("argv, message", [
    (["--cluster", "http://h:1/0"], "--cluster: not a redis:// URL: 'http://h:1/0'"),
    (["--cluster", "redis://h:1/x"], "--cluster: bad database number 'x' in 'redis://h:1/x': "
                                     "use redis://HOST:PORT/DB"),
    (["--node-name", "a/b"], "--node-name: a node name has no spaces, ':' or '/': 'a/b'"),
    (["--node-name", "x" * 129], "--node-name: a node name has 1 to 128 characters"),
    (["--cluster-lease", "0.1"], "--cluster-lease: expected a number >= 0.5, not 0.1"),
    (["--cluster-lease", "soon"], "--cluster-lease: expected a number >= 0.5, not 'soon'"),
])
def test_bad_values_get_one_line(argv: list, message: str) -> None:
    """A value the options refuse is one line naming the option and what it accepts."""
    with pytest.raises(ConfigError) as error:
        _options(*argv)
    assert str(error.value) == message


def test_configuration_file(tmp_path: Path) -> None:
    """The ``cluster`` section sets the same values; a mistake names the file, line and key."""
    path = tmp_path / "broker.yaml"
    path.write_text("cluster:\n  url: redis://r:6379/1\n  node_name: n1\n  lease: 2\n")
    assert load_config(str(path)).values == {"cluster.url": "redis://r:6379/1",
                                             "cluster.node_name": "n1", "cluster.lease": 2.0}
    options = _options("--config", str(path), "--cluster-lease", "4")
    assert (options["cluster"], options["node-name"], options["cluster-lease"]) == (
        "redis://r:6379/1", "n1", 4.0)
    path.write_text("cluster:\n  url: redis://r:6379/1\n  lease: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert str(error.value).startswith(f"{path}, line 3")
    assert "cluster.lease" in str(error.value) and "\n" not in str(error.value)


def test_service_joins_only_with_the_option() -> None:
    """``--cluster`` adds a ``Cluster`` to the service (not started: nothing connects yet),
    named by ``--node-name``; without it there is none."""
    clock = Clock()
    service = makeService(_options("--cluster", "redis://127.0.0.1:1/0", "--node-name", "n9",
                                   "--listen", "tcp:0"), clock)
    assert isinstance(service, BrokerService)
    (cluster,) = [child for child in service if isinstance(child, Cluster)]
    assert (cluster.node.name, cluster.members.lease, cluster.serving) == ("n9", 3.0, False)
    plain = makeService(_options("--listen", "tcp:0"), clock)
    assert isinstance(plain, BrokerService)
    assert not [child for child in plain if isinstance(child, Cluster)]


def test_cluster_without_its_extra(tmp_path: Path) -> None:
    """``--cluster`` with txredisapi missing: one line naming the extra, exit status 78."""
    result = run("twistd mqtt", "--cluster", "redis://127.0.0.1:6379/0",
                 env=without("txredisapi", tmp_path))
    assert one_line(result) == ("twistd mqtt: configuration error: --cluster: the cluster "
                                "needs txredisapi: pip install 'twisted-mqtt-broker[redis]'")
    assert result.returncode == CONFIG_ERROR_EXIT


def test_single_broker_imports_nothing_of_the_cluster() -> None:
    """A broker built without ``--cluster`` loads neither the cluster package nor
    txredisapi."""
    code = ("import sys; from twisted_mqtt.tap import Options, makeService; "
            "o = Options(); o.parseOptions(['--listen', 'tcp:0']); makeService(o); "
            "print(sorted(m for m in sys.modules if m.startswith(('twisted_mqtt.cluster', "
            "'txredisapi'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
