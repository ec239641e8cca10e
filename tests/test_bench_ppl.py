# SPDX-License-Identifier: Apache-2.0
"""bench/gguf_ppl.py: reading llama-perplexity's final estimate (the perplexity runs are a
benchmark, not a test)."""

from __future__ import annotations

import importlib.util

from swisslm.cli.bench import BENCH_DIR

_spec = importlib.util.spec_from_file_location("swisslm_bench_gguf_ppl", BENCH_DIR / "gguf_ppl.py")
gguf_ppl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gguf_ppl)

# the tail of `llama-perplexity -m SmolLM2-135M-Instruct.Q4_1.gguf -f GPL-3 -c 256 -b 256 --chunks 2` (stderr)
LLAMA_PPL_TAIL = """perplexity: calculating perplexity over 2 chunks, n_ctx=256, batch_size=256, n_seq=1
perplexity: 2.41 seconds per pass - ETA 0.07 minutes
[1]14.2903,[2]17.6207,
Final estimate: PPL = 17.6207 +/- 2.31468

llama_perf_context_print:        load time =     182.31 ms
"""


def test_parse_llama_perplexity_final_estimate():
    assert gguf_ppl.parse_llama_perplexity(LLAMA_PPL_TAIL) == 17.6207
    assert gguf_ppl.parse_llama_perplexity("perplexity: tokenizing the input ..\n") is None
