# SPDX-License-Identifier: Apache-2.0
"""Schemathesis fuzzes every operation of the server's own /openapi.json against a live server:
valid and invalid bodies, wrong types, odd strings. No answer may be a 5xx, every answer must be
one the spec documents, with the documented content type and schema.

The cases are drawn through schemathesis' strategy API and run by hypothesis directly, not through
schemathesis' pytest plugin: that plugin renames pytest's private `Function._nodeid`, which pytest
9.2 removed. The strategies, checks and shrinking are the same."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from test_serve import LiveServer, load_smollm2_tokenizer, tiny_lm  # noqa: E402

from swisslm.serve import create_app  # noqa: E402

KEY = "fuzz-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 10


@pytest.fixture(scope="module")
def live(smollm2_path):
    model = tiny_lm(load_smollm2_tokenizer(str(smollm2_path)))
    # Small caps keep each fuzzed generation short; the limits themselves get fuzzed too.
    app = create_app(model, "tiny", api_key=KEY, max_batch=8, max_model_len=96, max_queue=64, max_tokens=8,
                     max_body_bytes=64 << 10)
    with LiveServer(app) as srv:
        yield srv


def _run_operation(operation, base_url: str) -> None:
    # Valid and invalid requests alike, as schemathesis' own runner draws them.
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None)
    def check(case):
        case.call_and_validate(base_url=base_url, headers=HEADERS, timeout=30, checks=CHECKS)

    check()


def test_no_server_errors(live):
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json", headers=HEADERS)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    # The spec really lists the routes (a schema that lost them would fuzz nothing).
    assert {"POST /v1/completions", "POST /v1/chat/completions", "GET /health"} <= labels, labels
    failures = []
    for operation in operations:
        try:
            _run_operation(operation, live.url)
        # schemathesis reports through a BaseExceptionGroup (FailureGroup), not an Exception.
        except (Exception, BaseExceptionGroup) as e:  # collect every failing route, then fail once naming all
            failures.append(f"{operation.label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    assert not failures, "\n".join(failures)
    # The server still answers after the whole run.
    import httpx

    assert httpx.get(live.url + "/health", timeout=10).status_code == 200
