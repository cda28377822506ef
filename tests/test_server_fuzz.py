"""schemathesis against a real ``moa serve``: every operation of its OpenAPI schema gets
generated requests, valid and invalid (a bounded, seeded budget); no answer may be a 5xx
or break the schema."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from langgraph_moa.testing import ModelServer
from tests.test_server_support import KEY_A, Served, moa_spec, serve

EXAMPLES = 5
"""Generated requests per operation and generation mode (positive, negative)."""
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
HEADERS = {"x-api-key": KEY_A}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with ModelServer() as srv:
        yield from serve(tmp, [moa_spec(srv)], f"sqlite:///{tmp / 'moa.sqlite'}", keys=[KEY_A])


def _fuzz(served: Served, operation: Any, mode: GenerationMode) -> tuple[int, list[str]]:
    """(requests sent, failures) of one operation in one generation mode."""
    failures: list[str] = []
    sent = 0

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        response = case.call(base_url=served.url, headers=HEADERS, timeout=60)
        try:
            case.validate_response(response, checks=CHECKS, headers=HEADERS)
        except (AssertionError, FailureGroup) as exc:
            failures.append(
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{' '.join(str(exc).split())[:300]} (body {case.body!r:.300})"
            )

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (e.g. GET /ok has no parameters)
        assert mode == GenerationMode.NEGATIVE
    return sent, failures


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", headers=HEADERS)
    operations = [result.ok() for result in schema.get_all_operations()]
    only = os.environ.get("MOA_FUZZ_ONLY")  # e.g. "/runs/wait" to reproduce one operation
    operations = [o for o in operations if not only or o.path == only]
    assert len(operations) >= (1 if only else 30)
    failures: list[str] = []
    sent = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            count, found = _fuzz(served, operation, mode)
            sent += count
            failures += found
    print(f"schemathesis: {len(operations)} operations, {sent} requests, {len(failures)} failures")
    assert failures == [], "\n".join(failures[:20])
    assert "Traceback" not in served.output()
