# SPDX-License-Identifier: Apache-2.0
"""Schemathesis fuzzes every operation of the server's own /openapi.json against a live server:
valid and invalid bodies, wrong types, odd strings. No answer may be a 5xx, every answer must be
one the spec documents, with the documented content type and schema."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from test_serve import LiveServer, load_smollm2_tokenizer, tiny_lm  # noqa: E402

from swisslm.serve import create_app  # noqa: E402

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def live(smollm2_path):
    model = tiny_lm(load_smollm2_tokenizer(str(smollm2_path)))
    # Small caps keep each fuzzed generation short; the limits themselves get fuzzed too.
    app = create_app(model, "tiny", api_key=KEY, max_batch=8, max_model_len=96, max_queue=64, max_tokens=8,
                     max_body_bytes=64 << 10)
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(live.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"})


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case, live):
    case.call_and_validate(
        base_url=live.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance],
    )
