"""``/docs`` works offline: Swagger UI comes from the package, nothing from a CDN."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.web.app import create_app
from tests.api.conftest import api_settings

LEAVES_THE_HOST = re.compile(r"https?:|[\"'(=]\s*//")
"""An absolute URL, or a protocol-relative one (``//cdn.example/...``)."""


class Links(HTMLParser):
    """The URLs a page makes the browser load: scripts, stylesheets, icons."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.icons: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            self.scripts.append(values["src"] or "")
        if tag == "link" and "stylesheet" in (values.get("rel") or ""):
            self.styles.append(values.get("href") or "")
        if tag == "link" and "icon" in (values.get("rel") or ""):
            self.icons.append(values.get("href") or "")


@pytest.fixture
def client(clean_env: Path) -> Iterator[TestClient]:
    # Without `with`, the lifespan (the daemon) does not run: the docs need none of it.
    yield TestClient(create_app(api_settings(clean_env / "run")))


def test_docs_load_nothing_from_outside(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert not LEAVES_THE_HOST.search(page.text), LEAVES_THE_HOST.search(page.text)

    links = Links()
    links.feed(page.text)
    assert len(links.scripts) == 1
    assert len(links.styles) == 1
    assert len(links.icons) == 1
    expected = {
        links.scripts[0]: "javascript",
        links.styles[0]: "text/css",
        links.icons[0]: "image/png",
    }
    for url, kind in expected.items():
        assert url.startswith("/docs/static/"), url
        response = client.get(url)
        assert response.status_code == 200, url
        assert kind in response.headers["content-type"], (url, response.headers)
        assert len(response.content) > 100, url

    assert client.get("/openapi.json").json()["info"]["title"] == "traind"
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert "swaggerUIRedirectOauth2" in redirect.text


def test_redoc_is_off(client: TestClient) -> None:
    # It would load its script from a CDN; docs/api.md says so.
    assert client.get("/redoc").status_code == 404
    assert client.get("/docs/static/nothing.js").status_code == 404
