"""The dashboard from outside: in a real browser (headless Chromium) against a running broker and
dispatcher, it shows a submitted request's service with the right counts and a failed request's
attempts, and its Retry and Close buttons act on the store; over plain HTTP, a real dashboard
process (`titanic up --dashboard`, `titanic dashboard`) refuses foreign Host names, actions
without its token or from another origin, and, bound beyond loopback, reading without its token.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from titanic_support import (
    FAST_CONNECTION,
    Processes,
    free_endpoint,
    free_port,
    run_cli,
    running,
    wait_until,
)

from titanic.client.tsp import TitanicClient
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.protocol.mdp import Frames
from titanic.store import RequestStatus, Store
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
#: The line a loopback dashboard prints at start, and the one it prints bound beyond loopback.
LOOPBACK_LINE = re.compile(r"titanic dashboard: (http://\S+/) .*X-Titanic-Token: (\S+)\)")
OPEN_LINE = re.compile(r"titanic dashboard: open (http://\S+/)\?token=(\S+) ")


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


def failed_cell(driver: WebDriver, request_id: str, field: str) -> str:
    """The text of one cell of the failed requests' table ('' while the row is not there)."""
    found = driver.find_elements(
        By.CSS_SELECTOR, f'#failed tr[data-uuid="{request_id}"] td[data-field="{field}"]')
    try:
        return found[0].text if found else ""
    except StaleElementReferenceException:
        return ""


def take_screenshot(browser: WebDriver, titanic: TitanicClient, path: str) -> None:
    """Some traffic over a few seconds, so the charts have a history, then the picture."""
    for round_ in range(30):
        titanic.submit("resize", b"more")
        for _ in range(round_ % 7):
            titanic.submit("echo", b"busy")
        time.sleep(0.3)  # pacing the traffic for the picture, not synchronisation
    browser.save_screenshot(path)


def ask(port: int, method: str, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], str]:
    """One HTTP request to 127.0.0.1:port with exactly these headers (Host included, when
    given): the status, the headers (names in lower case) and the body as text."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=b"" if method == "POST" else None,
                           headers=headers or {})
        response = connection.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read().decode(errors="replace"))
    finally:
        connection.close()


def printed(procs: Processes, name: str, line: re.Pattern[str]) -> re.Match[str]:
    """The start line a dashboard process (or `up`, its parent) printed, once it is there."""
    found: list[re.Match[str]] = []

    def seen() -> bool:
        match = line.search(procs.log(name))
        if match:
            found.append(match)
        return match is not None

    wait_until(seen, timeout=30, message=f"the dashboard's start line: {procs.log(name)}")
    return found[0]


def serving(port: int, headers: dict[str, str] | None = None) -> None:
    """Wait until the dashboard on this port answers its page."""
    def answers() -> bool:
        try:
            return ask(port, "GET", "/", headers)[0] == 200
        except OSError:
            return False

    wait_until(answers, timeout=20, message="dashboard serving")


def failing_mail(failing: list[bool]) -> Callable[[Frames], Frames]:
    """A mail worker's handler that raises while `failing[0]` holds: its failure reports fail
    the request after the dispatcher's attempts; then it answers."""
    def send(frames: Frames) -> Frames:
        if failing[0]:
            raise ValueError("bad address")
        return [b"sent"]

    return send


def test_dashboard_shows_counts_and_its_buttons_retry_and_close(
        browser: WebDriver, broker: str, sqlite_store: Store, procs: Processes) -> None:
    store = sqlite_store
    failing = [True]
    with ExitStack() as stack:
        settings = DispatcherSettings(broker=broker, connection=FAST_CONNECTION, max_attempts=3,
                                      backoff=0.05, backoff_max=0.2, presence_ttl=0.5)
        stack.enter_context(running(Dispatcher(store, settings)))
        stack.enter_context(running(Worker(broker, "echo", echo_handler, heartbeat_interval=0.1)))
        stack.enter_context(running(Worker(broker, "mail", failing_mail(failing),
                                           heartbeat_interval=0.1)))
        titanic = stack.enter_context(TitanicClient(broker, timeout=2.0, retries=3))
        done = titanic.submit("echo", b"hello")
        assert titanic.wait(done, 10).reply == [b"hello"]
        waiting = [titanic.submit("resize", b"photo-%d" % n) for n in range(3)]
        failed = [titanic.submit("mail", b"to-%d" % n) for n in range(2)]
        for request_id in failed:  # each failed by the worker's reports, three attempts
            titanic.wait(request_id, 30)

        port = free_port()
        procs.cli("dashboard", "dashboard", "--broker", broker, "--bind", f"127.0.0.1:{port}",
                  "--refresh", "0.3")
        url = f"http://127.0.0.1:{port}/"
        serving(port)
        browser.get(url)
        wait_until(lambda: cell(browser, "resize", "pending") == str(len(waiting)), timeout=15,
                   message=f"page: dashboard log {procs.log('dashboard')}")
        assert cell(browser, "echo", "done") == "1"
        assert cell(browser, "echo", "workers") == "1"
        assert cell(browser, "resize", "workers") == "0"
        assert cell(browser, "mail", "failed") == "2"
        rows = browser.find_elements(By.CSS_SELECTOR, "#failed tr[data-uuid]")
        assert {row.get_attribute("data-uuid") for row in rows} == set(failed)
        assert "ValueError: bad address (after 3 attempts)" in rows[0].text
        assert [failed_cell(browser, r, "attempts") for r in failed] == ["3", "3"]
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#depth-chart .main-svg"),
                   message="chart drawn")
        if SCREENSHOT:
            take_screenshot(browser, titanic, SCREENSHOT)

        failing[0] = False  # the worker is mended: a retried request is answered
        retried, closed = failed
        browser.find_element(By.CSS_SELECTOR,
                             f'#failed tr[data-uuid="{retried}"] button.retry').click()
        wait_until(lambda: store.get(retried).status is RequestStatus.DONE,  # type: ignore[union-attr]
                   timeout=15, message="retried request answered")
        browser.find_element(By.CSS_SELECTOR,
                             f'#failed tr[data-uuid="{closed}"] button.close').click()
        wait_until(lambda: store.get(closed) is None, message="closed request deleted")
        wait_until(lambda: cell(browser, "mail", "failed") == "0"
                   and cell(browser, "mail", "done") == "1",
                   message="page shows the retried request done")
        assert not browser.find_elements(By.CSS_SELECTOR, "#failed tr[data-uuid]")


def test_page_opened_with_the_token_beyond_loopback_reads_and_acts_after_a_reload(
        browser: WebDriver, broker: str, sqlite_store: Store, procs: Processes) -> None:
    store = sqlite_store
    with ExitStack() as stack:
        settings = DispatcherSettings(broker=broker, connection=FAST_CONNECTION)
        stack.enter_context(running(Dispatcher(store, settings)))
        failed = store.submit("mail", [b"to"])
        assert store.fail(failed, "ValueError: bad address")
        port = free_port()
        procs.cli("dashboard", "dashboard", "--broker", broker, "--bind", f"0.0.0.0:{port}",
                  "--refresh", "0.3")
        token = printed(procs, "dashboard", OPEN_LINE).group(2)
        serving(port, {"X-Titanic-Token": token})
        browser.get(f"http://127.0.0.1:{port}/")  # without the token: refused
        assert "this dashboard needs its token" in browser.page_source
        browser.get(f"http://127.0.0.1:{port}/?token={token}")
        wait_until(lambda: cell(browser, "mail", "failed") == "1", timeout=15,
                   message=f"page: dashboard log {procs.log('dashboard')}")
        assert "token" not in browser.current_url  # dropped from the address at once
        browser.refresh()  # the cookie reads, the tab's sessionStorage keeps the token
        wait_until(lambda: cell(browser, "mail", "failed") == "1", timeout=15,
                   message="page read again after a reload")
        browser.find_element(By.CSS_SELECTOR,
                             f'#failed tr[data-uuid="{failed}"] button.close').click()
        wait_until(lambda: store.get(failed) is None, message="closed request deleted")


def test_up_dashboard_refuses_foreign_hosts_cross_origin_and_tokenless_actions(
        procs: Processes, tmp_path: Path) -> None:
    broker, port = free_endpoint(), free_port()
    db = str(tmp_path / "titanic.db")
    up = procs.cli("up", "up", "--bind", broker, "--db", db, "--dashboard", f"127.0.0.1:{port}")
    try:
        check_up_dashboard(procs, broker, port, db)
        assert Processes.terminate(up, timeout=30) == 0
    finally:
        Processes.terminate(up, timeout=30)  # SIGKILL would leave its children running


def check_up_dashboard(procs: Processes, broker: str, port: int, db: str) -> None:
    """What the up test checks while `titanic up` runs."""
    url, token = printed(procs, "up", LOOPBACK_LINE).groups()
    assert url == f"http://127.0.0.1:{port}/"
    serving(port)
    submitted = run_cli("submit", "--broker", broker, "nobody", "x")
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.decode().strip()
    close = f"/api/requests/{request_id}/close"
    ours = {"Origin": f"http://127.0.0.1:{port}", "X-Titanic-Token": token}

    def still_there() -> bool:
        status = run_cli("status", "--db", db, request_id)
        assert status.returncode in (0, 4), status.stderr
        return status.returncode == 0

    foreign = f"evil.example:{port}"
    status, headers, body = ask(port, "GET", "/api/state", {"Host": foreign})
    assert status == 421 and "does not answer to the Host" in body
    assert headers["content-type"].startswith("text/plain")
    assert ask(port, "GET", "/", {"Host": foreign})[0] == 421
    assert ask(port, "POST", close, {**ours, "Host": foreign})[0] == 421
    status, _, body = ask(port, "POST", close, {"Origin": "http://evil.example",
                                                "X-Titanic-Token": token})
    assert status == 403 and "another origin" in body
    status, _, body = ask(port, "POST", close, {"Origin": f"http://127.0.0.1:{port}"})
    assert status == 403 and "X-Titanic-Token" in body
    assert ask(port, "POST", close, {**ours, "X-Titanic-Token": "x" * 43})[0] == 403
    assert ask(port, "POST", close, {**ours, "Sec-Fetch-Site": "cross-site"})[0] == 403
    assert still_there()

    for name in ("127.0.0.1", "localhost", "[::1]"):
        assert ask(port, "GET", "/api/state", {"Host": f"{name}:{port}"})[0] == 200
    status, headers, body = ask(port, "GET", "/")
    assert status == 200 and f'content="{token}"' in body  # the page's own buttons work
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    status, _, body = ask(port, "POST", close, ours)
    assert status == 200 and '"closed"' in body
    assert not still_there()


def test_dashboard_bound_to_every_interface_needs_the_token_to_read(procs: Processes) -> None:
    broker, port = free_endpoint(), free_port()
    procs.cli("dashboard", "dashboard", "--broker", broker, "--bind", f"0.0.0.0:{port}",
              "--allow-host", "dash.example")
    url, token = printed(procs, "dashboard", OPEN_LINE).groups()
    assert url == f"http://dash.example:{port}/"  # the first --allow-host name
    serving(port, {"X-Titanic-Token": token})
    here = f"127.0.0.1:{port}"
    for path in ("/", "/api/state", "/static/dashboard.js", "/vendor/plotly.min.js"):
        status, _, body = ask(port, "GET", path, {"Host": here})
        assert status == 403 and "needs its token" in body, path
    assert ask(port, "GET", "/?token=wrong-token-000000", {"Host": here})[0] == 403
    assert ask(port, "GET", "/api/state", {"Host": f"evil.example:{port}",
                                           "X-Titanic-Token": token})[0] == 421
    assert ask(port, "GET", "/api/state", {"Host": f"dash.example:{port}",
                                           "X-Titanic-Token": token})[0] == 200

    status, headers, body = ask(port, "GET", f"/?token={token}", {"Host": here})
    assert status == 200 and f'content="{token}"' in body
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token not in cookie
    pair = cookie.split(";")[0]
    assert ask(port, "GET", "/api/state", {"Host": here, "Cookie": pair})[0] == 200
    status, _, body = ask(port, "GET", "/", {"Host": here, "Cookie": pair})
    assert status == 200 and 'content=""' in body  # the cookie reads; it gives no token
    status, _, _ = ask(port, "POST", f"/api/requests/{'0' * 32}/close",
                       {"Host": here, "Cookie": pair, "Origin": f"http://{here}"})
    assert status == 403


def test_token_file_is_used_unprinted_and_refused_when_others_may_read_it(
        procs: Processes, tmp_path: Path) -> None:
    token_file = tmp_path / "dashboard.token"
    token_file.write_text("a-token-of-my-own-0123456789\n")
    token_file.chmod(0o644)
    refused = run_cli("dashboard", "--bind", f"127.0.0.1:{free_port()}", "--token-file",
                      str(token_file), timeout=30)
    lines = refused.stderr.decode().strip().splitlines()
    assert refused.returncode == 2 and "chmod 600" in lines[-1], lines
    assert "Traceback" not in refused.stderr.decode()

    token_file.chmod(0o600)
    port = free_port()
    procs.cli("dashboard", "dashboard", "--broker", free_endpoint(), "--bind",
              f"127.0.0.1:{port}", env={"TITANIC_DASHBOARD_TOKEN_FILE": str(token_file)})
    wait_until(lambda: "titanic dashboard:" in procs.log("dashboard"), timeout=20,
               message="start line")
    assert "a-token-of-my-own" not in procs.log("dashboard")
    assert f"<the token in {token_file}>" in procs.log("dashboard")
    serving(port)
    ours = {"Origin": f"http://127.0.0.1:{port}"}
    bad_uuid = "/api/requests/not-a-uuid/close"
    assert ask(port, "POST", bad_uuid, {**ours, "X-Titanic-Token": "a" * 28})[0] == 403
    # The token passes the checks; the malformed UUID is then the action's own 400.
    assert ask(port, "POST", bad_uuid,
               {**ours, "X-Titanic-Token": "a-token-of-my-own-0123456789"})[0] == 400

