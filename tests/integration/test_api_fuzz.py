"""Property-based requests over the endpoint's own OpenAPI (schemathesis strategies, Hypothesis, real HTTP):
whatever a client sends within or beside the documented shapes, the answer is never a server error, and every
error answer is a problem document."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

EXAMPLES_PER_OPERATION = 30


def test_no_request_gets_a_server_error(served: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    answered: dict[str, set[int]] = {}
    failures: list[tuple[str, int, str]] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case: schemathesis.Case) -> None:
            response = case.call(timeout=60)
            answered.setdefault(case.operation.label, set()).add(response.status_code)
            problem = "application/problem+json" in response.headers.get("content-type", [])  # one list per name
            if response.status_code >= 500 or (response.status_code >= 400 and not problem):
                failures.append((case.operation.label, response.status_code, response.text[:200]))

        call()
    assert len(answered) >= 10, answered  # every route was exercised
    assert not failures, failures
