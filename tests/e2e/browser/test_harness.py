"""The browser harness itself, on the page that exists today: Swagger UI at ``/docs``
renders in headless Chromium from a real ``traind serve`` without an error and without a
request that leaves 127.0.0.1, at desktop and phone widths."""

import httpx
import pytest
from conftest import free_port, wait_for

from browser.conftest import (
    DESKTOP,
    PHONE,
    assert_only_loopback,
    console_errors,
    requested_urls,
    screenshot,
    wait_css,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_docs_render_offline_without_errors(service_factory, page):
    # The docs need no model: the API answers before the worker has loaded it.
    service = service_factory().start(wait_ready=False)
    wait_for(lambda: service.proc.poll() is not None or _answers(service), timeout=60, what="/docs")
    assert service.proc.poll() is None, service.log_tail()

    page.get(service.url + "/docs")
    wait_css(page, ".swagger-ui .info .title")
    wait_css(page, ".swagger-ui .opblock")  # the operations, from /openapi.json
    assert "traind" in page.title

    assert console_errors(page) == []
    urls = requested_urls(page)
    assert service.url + "/docs" in urls and service.url + "/openapi.json" in urls
    assert_only_loopback(urls, service.port)

    shots = [screenshot(page, "docs", **DESKTOP), screenshot(page, "docs", **PHONE)]
    for path, size in zip(shots, (DESKTOP, PHONE), strict=True):
        data = path.read_bytes()
        assert data.startswith(PNG), path
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width == size["width"] and height >= size["height"], (path, width, height)
    assert page.execute_script("return [innerWidth, innerHeight]") == [390, 844]
    assert_only_loopback(requested_urls(page), service.port)


def _answers(service) -> bool:
    try:
        return service.get("/docs").status_code == 200
    except httpx.HTTPError:
        return False


def test_the_helpers_catch_console_errors_and_requests_elsewhere(page):
    # A closed port of this machine stands for "elsewhere": it fails at once, offline too.
    elsewhere = f"http://127.0.0.1:{free_port()}/x"
    page.get(f"data:text/html,<script>console.error('boom'); fetch('{elsewhere}')</script>")
    errors: list[dict] = []
    wait_for(
        lambda: errors.extend(console_errors(page)) or len(errors) >= 3,
        timeout=10,
        what="the console error, the failed load and the rejected fetch",
    )
    assert sorted(e["source"] for e in errors) == ["console-api", "javascript", "network"], errors
    messages = " ".join(e["message"] for e in errors)
    assert "boom" in messages and elsewhere in messages

    urls = requested_urls(page)
    assert urls[-1] == elsewhere and urls[0].startswith("data:text/html,")
    assert requested_urls(page) == []  # each read starts where the last one ended
    with pytest.raises(AssertionError, match="requests that leave"):
        assert_only_loopback(urls, 1)


@pytest.mark.parametrize(
    ("url", "stays"),
    [
        ("http://127.0.0.1:8765/docs", True),
        ("ws://localhost:8765/v1/live", True),
        ("data:image/png;base64,AAAA", True),
        ("blob:http://127.0.0.1:8765/0c2e", True),
        ("about:blank", True),
        ("http://127.0.0.1:8766/docs", False),  # another port
        ("http://127.0.0.1/docs", False),  # port 80
        ("https://cdn.jsdelivr.net/npm/swagger-ui-dist", False),
        ("wss://example.com:8765/", False),
        ("http://[::1]:8765/", False),
        ("file:///etc/passwd", False),
    ],
)
def test_assert_only_loopback(url, stays):
    if stays:
        assert_only_loopback([url], 8765)
    else:
        with pytest.raises(AssertionError):
            assert_only_loopback([url], 8765)
