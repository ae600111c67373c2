"""Every route of /openapi.json fuzzed by schemathesis against a real uvicorn server.

Valid and invalid requests generated from the schema, with the bearer token: no answer
may be a 5xx (docs/api.md: bad input never causes a 500), and every answer must match
what the schema documents (status code, content type, body schema). Bounded: at most 25
examples per operation. ``/v1/events`` is left out: it is an endless stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.live_server import Live, live_traind

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    # Module scope: one server for every operation (clean_env is per test, so its job of
    # hiding the caller's TRAIND_* variables is done here).
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith("TRAIND_"):
                patch.delenv(name)
        root: Path = tmp_path_factory.mktemp("fuzz")
        with live_traind(root) as served:
            yield served


def checks_for(case: schemathesis.Case) -> list:
    """The checks; /readyz answers 503 by design while no worker has loaded the model (its
    body is still checked against the schema)."""
    if case.operation.path == "/readyz":
        return [check for check in CHECKS if check is not not_a_server_error]
    return CHECKS


SETTINGS = settings(
    max_examples=25,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_every_route_answers_as_documented(live: Live) -> None:
    # schemathesis' own pytest integration (schema.parametrize) fails under pytest 9 (it sets
    # the removed Node._nodeid), so each operation runs as a plain hypothesis test here.
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json").exclude(path="/v1/events")
    failures: list[str] = []
    tested: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @SETTINGS
            @given(case=operation.as_strategy(generation_mode=mode))
            def answers_as_documented(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=live.auth, checks=checks_for(case), timeout=10)

            tested.append(f"{mode.value} {operation.label}")
            try:
                answers_as_documented()
            except Unsatisfiable:
                # No invalid request exists for an operation without inputs (e.g. /livez).
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, FailureGroup) as exc:  # every operation's, not only the first
                failures.append(f"{mode.value} {operation.label}: {exc}")
    assert "positive GET /metrics" in tested
    assert not any("/v1/events" in label for label in tested)
    assert not failures, "\n\n".join(failures)
