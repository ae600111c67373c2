"""Headless Chromium, driven by Selenium, for browser tests of the web UI of a real
``traind serve`` (started with ``service_factory`` of tests/e2e/conftest.py, whose
fixtures reach this folder).

The browser is Debian's ``chromium`` with its ``chromium-driver`` (.ci/run installs them
as root); without them every test that asks for ``chrome`` or ``page`` is skipped with
the reason. Selenium Manager never runs: the driver and the browser are given by path,
so nothing is downloaded (and ``SE_OFFLINE`` / ``SE_AVOID_STATS`` forbid it anyway).

Fixtures:

- ``chrome``: one headless browser for the tests of this folder (started by the first
  test that needs it, in about half a second; quit after the last one).
- ``page``: that browser made ready for one test: a blank tab, no cookies or cache, the
  desktop viewport (:data:`DESKTOP`) and empty log buffers. When the test ends it fails
  (as an error in teardown) on console errors the test did not read itself: a test that
  expects an error reads it with :func:`console_errors`, which empties the buffer. When
  the test failed, a screenshot of the page goes to the screenshot folder as
  ``failed-<test name>-1280x900.png``.

Helpers (import them with ``from browser.conftest import ...``: this folder is a package
so that its conftest does not take the module name ``conftest`` from tests/e2e's):

- :func:`console_errors`, :func:`requested_urls`, :func:`assert_only_loopback`;
- :func:`set_viewport` (an exact CSS viewport, through Chromium's device emulation:
  resizing the headless window instead leaves a page area 143 px shorter than the window,
  with a desktop's scrollbar and no heed of the page's viewport meta tag, even at 390 px);
- :func:`reset` (what ``page`` does before each test);
- :func:`screenshot` (a full-page PNG at a width, into ``build/screenshots`` of the repo
  or ``$TRAIND_SCREENSHOTS``; ``/build/`` is ignored by git);
- :func:`wait_css` (the first visible element a CSS selector matches);
- :func:`start_chrome` (another browser, for a test that needs two; quit it yourself).

Usage::

    def test_dashboard(service_factory, page):
        service = service_factory().start()
        page.get(service.url + "/")
        wait_css(page, "main")
        assert_only_loopback(requested_urls(page), service.port)
        screenshot(page, "dashboard", **PHONE)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[3]

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})
NETWORK_SCHEMES = frozenset({"http", "https", "ws", "wss"})
LOCAL_SCHEMES = frozenset({"data", "blob", "about"})
"""URLs that never leave the browser."""

MAX_SHOT_HEIGHT = 16_000
"""Chromium renders no taller surface than 16384 px; a longer page is cut there."""

CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root in CI, and containers often lack user namespaces
    "--disable-dev-shm-usage",  # a container's /dev/shm is small
    f"--window-size={DESKTOP['width']},{DESKTOP['height']}",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--lang=en-US",
    "--force-device-scale-factor=1",
)


def _browser_paths() -> tuple[str, str] | str:
    """``(chromium, chromedriver)``, or why they cannot be used."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    if missing:
        return (
            f"headless browser tests need {' and '.join(missing)} on PATH "
            "(Debian: apt-get install chromium chromium-driver; .ci/run installs them as root)"
        )
    assert browser and driver
    return browser, driver


def start_chrome() -> webdriver.Chrome:
    """A new headless Chromium (the ``chrome`` fixture's; quit it yourself). Skips the
    calling test when chromium or chromedriver is not installed."""
    paths = _browser_paths()
    if isinstance(paths, str):
        pytest.skip(paths)
    browser, driver_path = paths
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    with pytest.MonkeyPatch.context() as patch:
        # Both paths are given, so Selenium Manager is skipped; should a later Selenium
        # call it after all, it must neither download nor report usage.
        patch.setenv("SE_OFFLINE", "true")
        patch.setenv("SE_AVOID_STATS", "true")
        driver = webdriver.Chrome(
            service=DriverService(executable_path=driver_path), options=options
        )
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="package")
def chrome() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for this folder's tests (quit after the last of them, not at
    the end of the whole run); skips the test when it is not installed."""
    driver = start_chrome()
    yield driver
    driver.quit()


_failed: pytest.StashKey[bool] = pytest.StashKey()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_failed] = True
    return report


@pytest.fixture
def page(chrome: webdriver.Chrome, request: pytest.FixtureRequest) -> Iterator[webdriver.Chrome]:
    """The session's browser, reset for this test (see the module's docstring)."""
    reset(chrome)
    yield chrome
    if request.node.stash.get(_failed, False):
        name = re.sub(r"[^\w.-]+", "_", request.node.name)[:100]
        screenshot(chrome, f"failed-{name}", **DESKTOP)
    errors = console_errors(chrome)
    if errors:
        pytest.fail(
            "console errors the test did not read:\n"
            + "\n".join(f"  {e['source']}: {e['message']}" for e in errors),
            pytrace=False,
        )


def reset(driver: webdriver.Chrome) -> None:
    """A blank page, no cookies or cache, the desktop viewport, empty log buffers."""
    driver.get("about:blank")
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    set_viewport(driver, **DESKTOP)
    driver.get_log("browser")
    driver.get_log("performance")


def console_errors(driver: webdriver.Chrome) -> list[dict]:
    """The browser log's SEVERE entries since the last read (uncaught exceptions,
    ``console.error``, failed loads); each a dict with ``source`` and ``message``. Reading
    empties the buffer, entries of the other levels included."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    """Every URL the page requested since the last read, in order: the page itself, its
    resources, fetches, EventSource and WebSocket connections. Reading empties the
    performance log. Only the page's own target is logged: Chromium's own background
    traffic is not (the browser's flags turn most of it off)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


def assert_only_loopback(urls: list[str], port: int) -> None:
    """Each http(s) or ws(s) URL goes to 127.0.0.1 or localhost on ``port``; ``data:``,
    ``blob:`` and ``about:`` URLs stay in the browser; any other URL fails."""

    def stays(url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in LOCAL_SCHEMES:
            return True
        return (
            parts.scheme in NETWORK_SCHEMES
            and parts.hostname in LOOPBACK_HOSTS
            and parts.port == port
        )

    outside = [url[:200] for url in urls if not stays(url)]
    assert not outside, f"requests that leave 127.0.0.1:{port}: {outside}"


def set_viewport(driver: webdriver.Chrome, *, width: int, height: int) -> None:
    """The page's CSS viewport is exactly ``width`` x ``height`` px (scrollbar included),
    and below 600 px wide the page is shown as on a phone (its viewport meta tag counts,
    scrollbars overlay)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def screenshots_dir() -> Path:
    """``$TRAIND_SCREENSHOTS``, or ``build/screenshots`` of the repository (not committed)."""
    folder = Path(os.environ.get("TRAIND_SCREENSHOTS") or REPO / "build" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver: webdriver.Chrome, name: str, *, width: int, height: int) -> Path:
    """A full-page PNG of the page laid out ``width`` x ``height`` (``DESKTOP``, ``PHONE``):
    the viewport is made as tall as the page for the shot, then left at ``width`` x
    ``height``. Returns ``<screenshots_dir>/<name>-<width>x<height>.png``."""
    set_viewport(driver, width=width, height=height)
    full = driver.execute_script(
        "return Math.max(document.documentElement.scrollHeight,"
        " document.body ? document.body.scrollHeight : 0)"
    )
    set_viewport(driver, width=width, height=min(max(height, int(full)), MAX_SHOT_HEIGHT))
    path = screenshots_dir() / f"{name}-{width}x{height}.png"
    try:
        if not driver.save_screenshot(str(path)):
            raise AssertionError(f"the browser took no screenshot for {path}")
    finally:
        set_viewport(driver, width=width, height=height)
    return path


def wait_css(driver: webdriver.Chrome, selector: str, *, timeout: float = 10) -> WebElement:
    """The first element ``selector`` matches, once it is visible."""
    return WebDriverWait(driver, timeout).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, selector)),
        message=f"no visible {selector!r} after {timeout}s",
    )
