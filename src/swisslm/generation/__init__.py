# SPDX-License-Identifier: Apache-2.0
"""Generation: logits processing, sampling, beam search, stop strings, streaming, logprobs and
scoring (perplexity, log-likelihood)."""

from .generate import GenerationConfig, GenerationResult, Step, decode_steps, generate, run
from .logprobs import MAX_TOP_LOGPROBS, sequence_logprobs, token_logprobs
from .scoring import LoglikelihoodResult, PerplexityResult, encode_pair, loglikelihood, perplexity, perplexity_details
from .stopping import StopHit, StopStrings, truncate_at_stop
from .streaming import TextDeltas, TextStream, stream

__all__ = [
    "GenerationConfig", "GenerationResult", "Step", "decode_steps", "generate", "run",
    "MAX_TOP_LOGPROBS", "sequence_logprobs", "token_logprobs",
    "LoglikelihoodResult", "PerplexityResult", "encode_pair", "loglikelihood", "perplexity", "perplexity_details",
    "StopHit", "StopStrings", "truncate_at_stop", "TextDeltas", "TextStream", "stream",
]
