"""A real ``traind serve`` refuses a ``server.token`` too weak for its bind: exit 2, with
the key and what to do in its log, before it serves or trains anything."""

import pytest


@pytest.mark.parametrize(
    ("host", "token", "says"),
    [
        pytest.param("0.0.0.0", "short-token", "has only 11 characters", id="short-public"),
        pytest.param("127.0.0.1", "   ", "is empty or only whitespace", id="blank-loopback"),
    ],
)
def test_serve_exits_2_on_a_token_too_weak_for_its_bind(service_factory, host, token, says):
    service = service_factory(TRAIND_SERVER__HOST=host, TRAIND_SERVER__TOKEN=token)
    service.start(wait_ready=False)
    assert service.proc.wait(timeout=60) == 2, service.log_tail()
    log = service.log.read_text()
    assert f"server.token (or TRAIND_SERVER__TOKEN) {says}" in log
    assert "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'" in log
    # Refused before the ledger or the worker was set up.
    assert not (service.root / "state").exists() and not (service.root / "checkpoints").exists()
