"""Container health check: exit 0 if traind's /readyz answers 200, else 1.

The images' HEALTHCHECK runs this with the venv's python, so they need neither curl nor
wget. /readyz is open without a token (auth.py), and 503 lists the failing checks; the
line printed here ends up in `docker inspect --format '{{json .State.Health}}' CONTAINER`.

The URL is $TRAIND_HEALTHCHECK_URL, else http://127.0.0.1:$TRAIND_SERVER__PORT/readyz
(port 8321 by default): the server binds 0.0.0.0 in the images, so loopback reaches it.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 5.0


def readyz_url() -> str:
    url = os.environ.get("TRAIND_HEALTHCHECK_URL")
    if url:
        return url
    port = os.environ.get("TRAIND_SERVER__PORT") or "8321"
    return f"http://127.0.0.1:{port}/readyz"


def failing_checks(body: bytes) -> str:
    """The names and details of the failed checks in a /readyz body, or the raw body."""
    try:
        checks = json.loads(body)["checks"]
        return ", ".join(
            f"{name}: {check.get('detail')}" for name, check in checks.items() if not check["ok"]
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def main() -> int:
    url = readyz_url()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            say(f"ready ({response.status})")
            return 0
    except urllib.error.HTTPError as exc:
        say(f"not ready ({exc.code}): {failing_checks(exc.read())}")
    except (urllib.error.URLError, OSError) as exc:
        say(f"no answer from {url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
