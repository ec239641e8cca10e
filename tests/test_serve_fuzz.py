# SPDX-License-Identifier: Apache-2.0
"""Schemathesis fuzzes every operation of the server's own /openapi.json against a live server:
valid and invalid bodies, wrong types, odd strings. No answer may be a 5xx, every answer must be
one the spec documents, with the documented content type and schema. The TGI routes (POST /,
/generate, /generate_stream, /info) and their fields (grammar, best_of, truncate, typical_p,
top_n_tokens, decoder_input_details, watermark) and response_format are in the spec, so they are
fuzzed too.

The default run draws EXAMPLES_PER_OPERATION cases per route (fast enough for every CI run);
SWISSLM_FUZZ_EXAMPLES=2000 spreads that many cases over the routes that take a body or parameters
(the issue's target run; ~20 min on a busy 2-core CPU, so run it with `-p no:timeout`).

The cases are drawn through schemathesis' strategy API and run by hypothesis directly, not through
schemathesis' pytest plugin: that plugin renames pytest's private `Function._nodeid`, which pytest
9.2 removed. The strategies, checks and shrinking are the same."""

from __future__ import annotations

import os

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
TOTAL_EXAMPLES = int(os.environ.get("SWISSLM_FUZZ_EXAMPLES", "0"))  # 0: EXAMPLES_PER_OPERATION each


@pytest.fixture(scope="module")
def live(smollm2_path):
    model = tiny_lm(load_smollm2_tokenizer(str(smollm2_path)))
    # Small caps keep each fuzzed generation short; the limits themselves get fuzzed too.
    app = create_app(model, "tiny", api_key=KEY, max_batch=8, max_model_len=96, max_queue=64, max_tokens=8,
                     max_body_bytes=64 << 10)
    with LiveServer(app) as srv:
        yield srv


CALLS = {"n": 0}  # requests sent (the 2,000-case run checks it really sent that many)


def _run_operation(operation, base_url: str, examples: int) -> None:
    # Valid and invalid requests alike, as schemathesis' own runner draws them.
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None)
    def check(case):
        CALLS["n"] += 1
        # generous: a 16-sequence request on a CPU shared with other jobs can take tens of seconds; a
        # slow answer is not a server error (the checks are)
        case.call_and_validate(base_url=base_url, headers=HEADERS, timeout=120, checks=CHECKS)

    check()


def _describe(e: BaseException) -> str:
    """The failure and, for schemathesis' groups, each distinct failure's first lines."""
    parts = [str(e).splitlines()[0] if str(e) else ""]
    for sub in getattr(e, "exceptions", ())[:5]:
        parts += [line for line in str(sub).splitlines()[:30] if line.strip()]
    return "\n    ".join(parts)


def test_no_server_errors(live):
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json", headers=HEADERS)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    # The spec really lists the routes (a schema that lost them would fuzz nothing).
    assert {"POST /v1/completions", "POST /v1/chat/completions", "GET /health", "POST /", "POST /generate",
            "POST /generate_stream", "GET /info", "GET /"} <= labels, labels
    # Routes without parameters or body have a handful of distinct cases; the total goes to the others.
    open_ended = [op for op in operations if op.body or op.path_parameters or op.query]
    per_op = -(-TOTAL_EXAMPLES // len(open_ended)) if TOTAL_EXAMPLES else EXAMPLES_PER_OPERATION
    failures = []
    for operation in operations:
        try:
            _run_operation(operation, live.url, per_op)
        # schemathesis reports through a BaseExceptionGroup (FailureGroup), not an Exception.
        except (Exception, BaseExceptionGroup) as e:  # collect every failing route, then fail once naming all
            failures.append(f"{operation.label}: {type(e).__name__}: {_describe(e)}")
    assert not failures, "\n".join(failures)
    assert CALLS["n"] >= TOTAL_EXAMPLES, CALLS
    # The server still answers after the whole run.
    import httpx

    assert httpx.get(live.url + "/health", timeout=10).status_code == 200
