# SPDX-License-Identifier: Apache-2.0
"""Generation: the sampling-parameters record, logits processing, sampling, the row decoder (EOS,
stop strings, text deltas, logprobs, finish reason), beam search, streaming and scoring
(perplexity, log-likelihood).

Names are imported lazily (PEP 562): `import swisslm.generation.params` must not import torch,
because the CLI validates sampling options before it loads a model.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "params": ["MAX_TOP_LOGPROBS", "SamplingParams", "add_cli_args", "from_cli_args"],
    "generate": ["decode_steps", "generate", "run"],
    "config": ["GenerationConfig", "GenerationResult", "Step"],
    "rows": ["RowDecoder", "RowEvent", "resolve_eos"],
    "logprobs": ["sequence_logprobs", "token_logprobs"],
    "scoring": ["LoglikelihoodResult", "PerplexityResult", "encode_pair", "loglikelihood", "perplexity",
                "perplexity_details"],
    "stopping": ["StopHit", "StopStrings", "truncate_at_stop"],
    "detokenize": ["TextDeltas"],
    "streaming": ["TextStream", "stream"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
