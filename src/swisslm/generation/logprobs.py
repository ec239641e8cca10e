# SPDX-License-Identifier: Apache-2.0
"""Log-probabilities as the OpenAI API reports them: for each chosen token its logprob and the
top-n alternatives (n <= 20).

The distribution is the model's raw one (log_softmax of the logits, before temperature, top-k/p
or penalties), as vLLM's default `raw_logprobs` mode and OpenAI do: a logprob then means the same
thing whatever sampling settings produced the token.
"""

from __future__ import annotations

import torch

from .params import MAX_TOP_LOGPROBS  # noqa: F401  (re-exported: OpenAI's limit)


def token_logprobs(
    logits: torch.Tensor, chosen: torch.Tensor, top_n: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (B, V), chosen (B,) -> (logprob (B,), top_ids (B, n), top_logprobs (B, n)).

    Computed in fp32 whatever the model dtype (bf16 log-probs are too coarse to compare).
    Top alternatives are sorted best first; ties keep torch.topk's order.
    """
    if not 0 <= top_n <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top_n}")
    lp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    chosen_lp = lp.gather(-1, chosen.long().view(-1, 1)).squeeze(-1)  # (B,)
    if top_n == 0:
        empty = lp.new_empty(lp.shape[0], 0)
        return chosen_lp, empty.long(), empty
    top_lp, top_ids = lp.topk(top_n, dim=-1)  # (B, n)
    return chosen_lp, top_ids, top_lp


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position logprob of `targets` under `logits`: logits (B, T, V), targets (B, T) -> (B, T).

    Callers shift themselves (logits[:, t] scores targets[:, t]). Uses cross_entropy, which never
    materialises a second (B, T, V) tensor of log-probs.
    """
    B, T, V = logits.shape
    nll = torch.nn.functional.cross_entropy(logits.float().reshape(B * T, V), targets.reshape(B * T).long(),
                                            reduction="none")
    return -nll.view(B, T)
