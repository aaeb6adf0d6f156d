"""The dashboard in a real browser (headless Chromium) against a running broker and dispatcher:
it shows a submitted request's service with the right counts, and its Retry and Close buttons
act on the store."""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from titanic_support import FAST_CONNECTION, Processes, free_port, running, wait_until

from titanic.dispatcher import Dispatcher, DispatcherSettings
from titanic.store import RequestStatus, Store
from titanic.tsp_client import TitanicClient
from titanic.worker import Worker, echo_handler

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: Where to save a screenshot of the page (docs/dashboard.png is made this way).
SCREENSHOT = os.environ.get("TITANIC_DASHBOARD_SCREENSHOT")


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        reason = "Debian's chromium and chromium-driver are not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (.ci/run installs them)")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def cell(driver: WebDriver, service: str, field: str) -> str:
    """The text of one cell of the services table ('' while the row is not there)."""
    found = driver.find_elements(
        By.CSS_SELECTOR, f'#services tr[data-service="{service}"] td[data-field="{field}"]')
    try:
        return found[0].text if found else ""
    except StaleElementReferenceException:  # the row went between finding and reading
        return ""


def take_screenshot(browser: WebDriver, titanic: TitanicClient, path: str) -> None:
    """Some traffic over a few seconds, so the charts have a history, then the picture."""
    for round_ in range(30):
        titanic.submit("resize", b"more")
        for _ in range(round_ % 7):
            titanic.submit("echo", b"busy")
        time.sleep(0.3)  # pacing the traffic for the picture, not synchronisation
    browser.save_screenshot(path)


def test_dashboard_shows_counts_and_its_buttons_retry_and_close(
        browser: WebDriver, broker: str, sqlite_store: Store, procs: Processes) -> None:
    store = sqlite_store
    with ExitStack() as stack:
        settings = DispatcherSettings(broker=broker, connection=FAST_CONNECTION)
        stack.enter_context(running(Dispatcher(store, settings)))
        stack.enter_context(running(Worker(broker, "echo", echo_handler, heartbeat_interval=0.1)))
        titanic = stack.enter_context(TitanicClient(broker, timeout=2.0, retries=3))
        done = titanic.submit("echo", b"hello")
        assert titanic.wait(done, 10).reply == [b"hello"]
        waiting = [titanic.submit("resize", b"photo-%d" % n) for n in range(3)]
        failed = [titanic.submit("mail", b"to-%d" % n) for n in range(2)]
        for request_id in failed:
            assert store.fail(request_id, "ValueError: bad address")

        port = free_port()
        procs.cli("dashboard", "dashboard", "--broker", broker, "--bind", f"127.0.0.1:{port}",
                  "--refresh", "0.3")
        url = f"http://127.0.0.1:{port}/"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(answers, timeout=20, message="dashboard serving")
        browser.get(url)
        wait_until(lambda: cell(browser, "resize", "pending") == str(len(waiting)), timeout=15,
                   message=f"page: dashboard log {procs.log('dashboard')}")
        assert cell(browser, "echo", "done") == "1"
        assert cell(browser, "echo", "workers") == "1"
        assert cell(browser, "resize", "workers") == "0"
        assert cell(browser, "mail", "failed") == "2"
        rows = browser.find_elements(By.CSS_SELECTOR, "#failed tr[data-uuid]")
        assert {row.get_attribute("data-uuid") for row in rows} == set(failed)
        assert "ValueError: bad address" in rows[0].text
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#depth-chart .main-svg"),
                   message="chart drawn")
        if SCREENSHOT:
            take_screenshot(browser, titanic, SCREENSHOT)

        retried, closed = failed
        browser.find_element(By.CSS_SELECTOR,
                             f'#failed tr[data-uuid="{retried}"] button.retry').click()
        wait_until(lambda: store.get(retried).status is RequestStatus.PENDING,  # type: ignore[union-attr]
                   message="retried request pending again")
        browser.find_element(By.CSS_SELECTOR,
                             f'#failed tr[data-uuid="{closed}"] button.close').click()
        wait_until(lambda: store.get(closed) is None, message="closed request deleted")
        wait_until(lambda: cell(browser, "mail", "failed") == "0"
                   and cell(browser, "mail", "pending") == "1",
                   message="page shows the retried request pending")
        assert not browser.find_elements(By.CSS_SELECTOR, "#failed tr[data-uuid]")
