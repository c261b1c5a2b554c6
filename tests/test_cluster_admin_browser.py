"""The dashboard of a cluster node in headless Chromium: its Overview lists every node of the
cluster and the cluster's total (two ``twistd mqtt --cluster`` nodes on one private
``redis-server``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.cluster_helpers import Nodes, connect, running_cluster, unique, wait_for
from tests.conftest import LOOPBACK
from tests.servers import RedisServer, redis_server  # noqa: F401
from tests.test_web_browser import WAIT, browser, page, shoot, shots, visible  # noqa: F401
from tests.web_helpers import PASSWORD, USER, Dashboard
from twisted_mqtt.auth.passwords import hash_password

pytestmark = pytest.mark.e2e

DB = 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,  # noqa: F811
            ) -> Iterator[Nodes]:
    """Two nodes, w0 and w1, each with a dashboard and one dashboard user."""
    directory = tmp_path_factory.mktemp("cluster")
    users = directory / "users"
    users.write_text(f"{USER}:{hash_password(PASSWORD, 'bcrypt', rounds=4)}\n")
    yield from running_cluster(directory, redis_server.url(DB, unique("browser") + ":"),
                               ("w0", "w1"), "--dashboard", LOOPBACK, "--dashboard-users",
                               str(users), "--allow-anonymous")


@pytest.fixture(scope="module")
def dashboard(cluster: Nodes) -> Dashboard:
    """The dashboard of w0 (the browser fixture's)."""
    return Dashboard(cluster[0], "")


def test_overview_lists_the_nodes_and_the_total(
        cluster: Nodes, browser: Any, dashboard: Dashboard, shots: Path,  # noqa: F811
) -> None:
    """Signed in on w0 with a client on w1: the Overview's nodes table has a row for w0, one
    for w1 and the cluster's total counting the client."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    client = connect(cluster[1], client_id=unique("seen"))
    try:
        browser.get(dashboard.base + "/")
        visible(browser, "login-form")
        browser.find_element(By.ID, "login-user").send_keys(USER)
        browser.find_element(By.ID, "login-password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login-submit").click()
        page(browser, dashboard, "overview")

        def rows() -> Any:
            try:
                found = [[cell.text for cell in tr.find_elements(By.TAG_NAME, "td")]
                         for tr in browser.find_elements(By.CSS_SELECTOR,
                                                         "#nodes-table tbody tr")]
            except StaleElementReferenceException:
                return None  # the table was redrawn while it was read: read it again
            return found if len(found) == 3 and found[2][4] == "1" else None

        found = wait_for(rows, "the nodes and the total", WAIT * 2)
        assert [r[0] for r in found] == ["w0", "w1", "cluster (2 nodes)"]
        assert found[1][1] == "running"
        shoot(browser, shots, "cluster-overview")
    finally:
        client.close()
