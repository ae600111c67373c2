"""``/`` serves the dashboard: its files come from the package, name nothing outside the
server, and the page's Content-Security-Policy keeps the browser to the server too.
(tests/e2e/browser drives the page itself in Chromium.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.web.app import create_app
from api.web.dashboard import DASHBOARD
from tests.api.conftest import api_settings
from tests.api.web.test_docs import LEAVES_THE_HOST, Links


@pytest.fixture
def client(clean_env: Path) -> Iterator[TestClient]:
    # Without `with`, the lifespan (the daemon) does not run: the page needs none of it.
    yield TestClient(create_app(api_settings(clean_env / "run")))


def test_the_page_and_its_files_load_nothing_from_outside(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = dict(
        part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert {policy[k] for k in ("script-src", "style-src", "connect-src")} == {"'self'"}

    links = Links()
    links.feed(page.text)
    assert links.scripts == [
        "ui/api.js",
        "ui/history.js",
        "ui/plot.js",
        "ui/dashboard.js",
    ]  # relative: a proxy prefix works
    assert links.styles == ["ui/dashboard.css"]
    for url, kind in [(u, "javascript") for u in links.scripts] + [(links.styles[0], "css")]:
        served = client.get("/" + url)
        assert served.status_code == 200 and kind in served.headers["content-type"], url

    for path in DASHBOARD.iterdir():
        text = path.read_text(encoding="utf-8")
        # The only absolute URL allowed is the SVG namespace, which names, never loads.
        found = [
            m.group(0)
            for m in LEAVES_THE_HOST.finditer(text.replace("http://www.w3.org/2000/svg", ""))
        ]
        assert not found, (path.name, found)


def test_the_page_is_not_an_api_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/" not in schema["paths"] and not any(p.startswith("/ui") for p in schema["paths"])


def test_the_dashboard_ships_with_the_package() -> None:
    """pyproject's package-data names the folder, so a wheel has the page."""
    text = (Path(__file__).parents[3] / "pyproject.toml").read_text()
    assert '"static/dashboard/*"' in text
    assert {p.name for p in DASHBOARD.iterdir()} == {
        "index.html",
        "dashboard.css",
        "dashboard.js",
        "plot.js",
        "api.js",
        "history.js",
    }
