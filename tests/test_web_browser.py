"""The dashboard in real headless Chromium (Debian ``chromium`` and ``chromium-driver``, driven by
Selenium; nothing is downloaded): sign in, see a paho client appear, kick it (it gets MQTT 5
DISCONNECT 0x98 [MQTT-3.14.2-1]), ban it (its reconnect gets CONNACK 0x8A, then the close
[MQTT-3.2.2-7]), publish from the form, delete a retained message, watch the overview chart
move under load.

A screenshot of each page is saved in the directory ``DASHBOARD_SCREENSHOTS`` names (default: a
temporary directory), as an artifact of the run."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.cluster_helpers import wait_for
from tests.conftest import StartBroker
from tests.paho import MakeClient
from tests.spec import check_cited_labels
from tests.web_helpers import PASSWORD, USER, Dashboard, Http, start_dashboard

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15.0
"""Seconds to wait for the page to show something (the machine is shared)."""

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (shutil.which(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("Debian chromium and chromium-driver are not installed",
                allow_module_level=True)

from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


@pytest.fixture(scope="module")
def dashboard(module_brokers: StartBroker, tmp_path_factory: pytest.TempPathFactory
              ) -> Dashboard:
    """A broker with a dashboard for the module."""
    return start_dashboard(module_brokers, tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go."""
    given = os.environ.get("DASHBOARD_SCREENSHOTS")
    directory = Path(given) if given else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def browser(dashboard: Dashboard) -> Iterator[Any]:
    """Headless Chromium, signed in to the dashboard."""
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--disable-gpu"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__])


def visible(driver: Any, element_id: str) -> Any:
    """The element, once it is displayed."""
    def shown() -> Any:
        found = driver.find_elements(By.ID, element_id)
        return found if found and found[0].is_displayed() else None

    return wait_for(shown, f"#{element_id} shown", WAIT)[0]


def click(driver: Any, selector: str) -> None:
    """Click the element ``selector`` finds, again if a refresh replaced it meanwhile."""
    def attempt() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        return True

    wait_for(attempt, f"a click on {selector}", WAIT)


def page(driver: Any, dashboard: Dashboard, name: str) -> None:
    """Go to a page and wait until it shows."""
    driver.get(f"{dashboard.base}/#/{name}")
    visible(driver, f"page-{name.split('/')[0] if '/' not in name else 'client'}")


def shoot(driver: Any, shots: Path, name: str) -> None:
    """Save a screenshot of the whole page."""
    driver.save_screenshot(str(shots / f"{name}.png"))


def test_sign_in(browser: Any, dashboard: Dashboard, shots: Path) -> None:
    """The sign-in form; a wrong password is refused on the page; the right one opens the
    overview [MQTT-3.14.2-1]."""
    browser.get(dashboard.base + "/")
    visible(browser, "login-form")
    shoot(browser, shots, "login")
    browser.find_element(By.ID, "login-user").send_keys(USER)
    browser.find_element(By.ID, "login-password").send_keys("wrong")
    browser.find_element(By.ID, "login-submit").click()
    wait_for(lambda: browser.find_element(By.ID, "login-error").text, "an error", WAIT)
    password = browser.find_element(By.ID, "login-password")
    password.clear()
    password.send_keys(PASSWORD)
    browser.find_element(By.ID, "login-submit").click()
    visible(browser, "page-overview")
    assert browser.find_element(By.ID, "who-name").text == USER
    # Every form control has a label, and the page has its landmarks.
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))"
        ".map(e => e.id)")
    assert unlabelled == []
    for tag in ("header", "nav", "main"):
        assert browser.find_elements(By.TAG_NAME, tag)


def test_client_appears_then_kick_and_ban(browser: Any, dashboard: Dashboard, shots: Path,
                                          clients: MakeClient) -> None:
    """A paho client is in the list within 2 s of its CONNACK; Kick sends it DISCONNECT 0x98
    [MQTT-3.14.2-1]; Ban by client id refuses its reconnect with CONNACK 0x8A
    [MQTT-3.2.2-7]."""
    page(browser, dashboard, "clients")
    client_id = f"browser-{uuid.uuid4().hex[:8]}"
    client = dashboard.client(clients, client_id).connect()
    client.subscribe("browser/watch", 1)
    connected = time.monotonic()
    selector = f"tr[data-client-id='{client_id}']"
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, selector), "the client row", WAIT)
    assert time.monotonic() - connected <= 2.0
    shoot(browser, shots, "clients")
    click(browser, selector + " a")
    visible(browser, "page-client")
    wait_for(lambda: browser.find_element(By.ID, "client-fields").get_attribute(
        "data-connected") == "true", "the client's fields", WAIT)
    wait_for(lambda: "browser/watch" in browser.find_element(By.ID, "client-subs").text,
             "its subscription", WAIT)
    shoot(browser, shots, "client")
    browser.find_element(By.ID, "kick").click()
    assert client.disconnected.wait(WAIT) and client.disconnect_rc.value == 0x98
    Select(browser.find_element(By.ID, "ban-kind")).select_by_value("client_id")
    browser.find_element(By.ID, "ban-reason").send_keys("browser test")
    browser.find_element(By.ID, "ban-submit").click()
    wait_for(lambda: "Banned" in browser.find_element(By.ID, "status").text,
             "banned: " + browser.find_element(By.ID, "status").text, WAIT)
    again = dashboard.client(clients, client_id).connect(expect_success=False)
    assert again.connack_rc.value == 0x8A
    page(browser, dashboard, "bans")
    wait_for(lambda: client_id in browser.find_element(By.ID, "bans-table").text,
             "the ban listed", WAIT)
    shoot(browser, shots, "bans")


def test_publish_form(browser: Any, dashboard: Dashboard, shots: Path, clients: MakeClient) -> None:
    """The publish form reaches a paho subscriber, properties included [MQTT-3.14.2-1]."""
    topic = f"browser/pub/{uuid.uuid4().hex[:8]}"
    subscriber = dashboard.client(clients).connect()
    subscriber.subscribe(topic, 1)
    page(browser, dashboard, "publish")
    browser.find_element(By.ID, "pub-topic").send_keys(topic)
    browser.find_element(By.ID, "pub-payload").send_keys('{"from": "the dashboard"}')
    Select(browser.find_element(By.ID, "pub-qos")).select_by_visible_text("1")
    browser.find_element(By.ID, "pub-content-type").send_keys("application/json")
    browser.find_element(By.ID, "pub-user-props").send_keys("origin=browser")
    browser.find_element(By.ID, "pub-submit").click()
    message = subscriber.expect(1, WAIT)[0]
    assert message.payload == b'{"from": "the dashboard"}' and message.qos == 1
    properties: Any = message.properties
    assert properties.ContentType == "application/json"
    assert properties.UserProperty == [("origin", "browser")]
    wait_for(lambda: "Published" in browser.find_element(By.ID, "pub-result").text,
             "the result", WAIT)
    shoot(browser, shots, "publish")


def test_delete_retained(browser: Any, dashboard: Dashboard, shots: Path,
                         clients: MakeClient) -> None:
    """A retained message is browsed, shown as JSON and hex, and deleted from the page
    [MQTT-3.14.2-1]."""
    tag = uuid.uuid4().hex[:8]
    topic = f"browser/ret/{tag}"
    publisher = dashboard.client(clients).connect()
    publisher.publish(topic, b'{"temperature": 21.5}', 1, retain=True)
    page(browser, dashboard, "retained")
    field = browser.find_element(By.ID, "ret-filter")
    field.clear()
    field.send_keys(f"browser/ret/{tag}\n")
    selector = f"tr[data-topic='{topic}'] a"
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, selector), "the topic row", WAIT)
    click(browser, selector)
    visible(browser, "ret-detail")
    wait_for(lambda: '"temperature": 21.5' in browser.find_element(By.ID, "ret-payload").text,
             "the JSON view", WAIT)
    shoot(browser, shots, "retained")
    browser.find_element(By.ID, "ret-view-hex").click()
    assert browser.find_element(By.ID, "ret-payload").text.startswith("7b 22")
    browser.find_element(By.ID, "ret-delete").click()
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, selector), "row gone", WAIT)
    status, _, _ = Http(dashboard.base, dashboard.key).request(
        "GET", f"/api/v1/retained/message?topic={topic}")
    assert status == 404


def test_overview_chart_moves_under_load(browser: Any, dashboard: Dashboard, shots: Path,
                                         clients: MakeClient) -> None:
    """Under a load of messages, the messages-per-second chart rises [MQTT-3.14.2-1]."""
    page(browser, dashboard, "overview")
    subscriber = dashboard.client(clients).connect()
    subscriber.subscribe("browser/load", 0)
    publisher = dashboard.client(clients).connect()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            for _ in range(50):
                publisher.paho.publish("browser/load", b"x" * 100, 0)
            time.sleep(0.02)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        chart = browser.find_element(By.ID, "chart-messages")
        wait_for(lambda: float(chart.get_attribute("data-peak-in") or 0) > 20,
                 "the chart rising", 30.0)
        assert int(chart.get_attribute("data-points")) >= 2
        assert browser.find_elements(By.CSS_SELECTOR, "#chart-messages canvas")
        shoot(browser, shots, "overview")
    finally:
        stop.set()
        worker.join(10)


@pytest.mark.parametrize("name, shown", [
    ("subscriptions", "browser/load"), ("config", "dashboard"), ("auth", "Authentication"),
])
def test_other_pages(browser: Any, dashboard: Dashboard, shots: Path, name: str, shown: str,
                     clients: MakeClient) -> None:
    """Subscriptions, listeners and configuration, auth: each shows its data
    [MQTT-3.14.2-1]."""
    dashboard.client(clients).connect().subscribe("browser/load", 0)
    page(browser, dashboard, name)
    wait_for(lambda: shown in browser.find_element(By.ID, f"page-{name}").text,
             f"{shown} on {name}", WAIT)
    shoot(browser, shots, name)


def test_narrow_window(browser: Any, dashboard: Dashboard, shots: Path) -> None:
    """On a phone-sized window no page scrolls sideways (wide tables scroll in their own box)
    [MQTT-3.14.2-1]."""
    browser.set_window_size(400, 800)
    try:
        for name in ("overview", "clients", "publish", "config"):
            page(browser, dashboard, name)
            wide = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            assert wide <= 1, (name, wide)
        shoot(browser, shots, "config-narrow")
    finally:
        browser.set_window_size(1280, 900)


MARKUP = "<img src=x onerror=document.title='xss'><svg onload=document.title='xss'>"
"""Markup a malicious client puts wherever the dashboard shows its data."""


def no_markup_rendered(driver: Any) -> None:
    """No element the markup would make exists in the page, and no handler ran."""
    made = driver.execute_script(
        "return document.querySelectorAll('main img, main svg:not(.uplot svg), main script')"
        ".length")
    assert made == 0 and driver.title != "xss"


def test_markup_from_clients_is_shown_as_text(browser: Any, dashboard: Dashboard,
                                              shots: Path, clients: MakeClient) -> None:
    """A client whose client id, user name, subscription, retained topic and payload (text
    and JSON) and ban reason hold HTML markup: every page shows the markup as text and makes
    no element of it [MQTT-3.14.2-1]."""
    browser.get(dashboard.base + "/")
    form = wait_for(lambda: [e for e in browser.find_elements(By.ID, "login-form")
                             + browser.find_elements(By.ID, "page-overview") if e.is_displayed()],
                    "a page", WAIT)[0]
    if form.get_attribute("id") == "login-form":
        browser.find_element(By.ID, "login-user").send_keys(USER)
        browser.find_element(By.ID, "login-password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login-submit").click()
        visible(browser, "page-overview")
    tag = uuid.uuid4().hex[:6]
    client_id = f"{MARKUP}{tag}"
    client = dashboard.client(clients, client_id)
    client.paho.username_pw_set(MARKUP)
    client.connect()
    client.subscribe(f"x/{MARKUP}/#", 1)
    topic = f"x/{tag}/{MARKUP}"
    client.publish(topic, f'{{"html": "{MARKUP}"}}'.replace("'", "\\u0027").encode(), 1,
                   retain=True)
    client.publish(topic + "/text", MARKUP.encode(), 1, retain=True)
    api = Http(dashboard.base, dashboard.key)
    status, _, _ = api.request("POST", "/api/v1/bans", {
        "kind": "username", "value": MARKUP + "-other", "reason": MARKUP})
    assert status == 201
    page(browser, dashboard, "clients")
    wait_for(lambda: tag in browser.find_element(By.ID, "clients-table").text, "the row", WAIT)
    assert MARKUP in browser.find_element(By.ID, "clients-table").text
    no_markup_rendered(browser)
    browser.get(f"{dashboard.base}/#/clients/{client_id.replace('#', '%23')}")
    wait_for(lambda: MARKUP in browser.find_element(By.ID, "client-subs").text,
             "the subscription", WAIT)
    assert client_id in browser.find_element(By.ID, "client-title").text
    no_markup_rendered(browser)
    page(browser, dashboard, "subscriptions")
    wait_for(lambda: tag in browser.find_element(By.ID, "subs-table").text, "subs", WAIT)
    no_markup_rendered(browser)
    page(browser, dashboard, "retained")
    field = browser.find_element(By.ID, "ret-filter")
    field.clear()
    field.send_keys(f"x/{tag}/#\n")
    wait_for(lambda: MARKUP in browser.find_element(By.ID, "ret-table").text, "rows", WAIT)
    for selector in ("tr[data-topic$='/text'] a", "#ret-table tbody tr:first-child a"):
        click(browser, selector)
        visible(browser, "ret-detail")
        wait_for(lambda: MARKUP in browser.find_element(By.ID, "ret-payload").text
                 or "\\u0027" in browser.find_element(By.ID, "ret-payload").text,
                 "the payload as text", WAIT)
        no_markup_rendered(browser)
    page(browser, dashboard, "bans")
    wait_for(lambda: MARKUP in browser.find_element(By.ID, "bans-table").text, "bans", WAIT)
    no_markup_rendered(browser)
    shoot(browser, shots, "markup")
