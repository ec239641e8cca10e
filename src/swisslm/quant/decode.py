# SPDX-License-Identifier: Apache-2.0
"""CPU decode fast path: compile the one-token step, leave everything else eager.

    compile_(model)            # in place; model.generate / serve / chat then use it
    fast_decode(model, ids, n) # greedy loop with no per-step allocations (benchmarks)

`compile_` routes the cached one-token forward (T == 1 with `input_pos`) through
`torch.compile(fullgraph=True, dynamic=False)` and keeps prefill (any prompt length) eager, so
a new prompt length never recompiles. Nothing in generation/ needs to know: the decode loop
calls `model(...)` as before. Quantized layers enter the graph as one opaque custom op each
(swisslm::int8_packed_linear), so the int8 model compiles with fullgraph=True too.
"""

from __future__ import annotations

import logging
import time
import types

import torch
from torch import nn

log = logging.getLogger(__name__)


def compile_(model: nn.Module, mode: str | None = None, backend: str = "inductor") -> nn.Module:
    """Compile `model`'s one-token cached step in place (idempotent); returns the model.
    `backend="aot_eager"` checks that the step captures as one graph without paying for
    inductor's C++ codegen (tests)."""
    if getattr(model, "_swisslm_compiled", False):
        return model
    eager_forward = model.forward
    step = torch.compile(eager_forward, fullgraph=True, dynamic=False, mode=mode, backend=backend)

    def forward(self, input_ids, attention_mask=None, position_ids=None, input_pos=None,
                token_type_ids=None, num_logits_to_keep=0):
        if input_pos is not None and input_ids.shape[1] == 1 and not torch.is_grad_enabled():
            return step(input_ids, attention_mask, position_ids, input_pos, token_type_ids, num_logits_to_keep)
        return eager_forward(input_ids, attention_mask, position_ids, input_pos, token_type_ids,
                             num_logits_to_keep)

    model.forward = types.MethodType(forward, model)
    model._swisslm_compiled = True
    return model


def uncompile_(model: nn.Module) -> nn.Module:
    """Undo compile_ (the class's forward is used again)."""
    if getattr(model, "_swisslm_compiled", False):
        del model.forward
        model._swisslm_compiled = False
    return model


@torch.no_grad()
def fast_decode(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                eos_token_id: list[int] | None = None) -> torch.Tensor:
    """Greedy decode of equal-length prompts (B, T) -> (B, T + max_new_tokens) ids.

    The static cache is reused when the shape allows; every per-step tensor (the token column,
    the cache position, the mask) is preallocated and updated in place, so a step allocates only
    what the forward itself does. With `eos_token_id` the loop stops once every row has
    produced one (rows that finished keep decoding, as in a benchmark; callers trim)."""
    B, T = input_ids.shape
    S = T + max_new_tokens
    if model.layers[0].attn.cache is None or model.layers[0].attn.cache.k.shape[0] != B \
            or model.max_cache_len < S:
        model.setup_cache(B, S)
    device = input_ids.device
    out = torch.empty(B, S, dtype=torch.long, device=device)
    out[:, :T] = input_ids
    mask = torch.ones(B, model.max_cache_len, dtype=torch.long, device=device)
    logits = model(input_ids, attention_mask=mask, input_pos=torch.arange(T, device=device),
                   num_logits_to_keep=1).logits
    pos = torch.tensor([T], device=device)
    position_ids = torch.full((B, 1), T, dtype=torch.long, device=device)
    eos = torch.tensor(eos_token_id, device=device) if eos_token_id else None
    done = torch.zeros(B, dtype=torch.bool, device=device)
    n = max_new_tokens
    for step in range(max_new_tokens):
        tok = out[:, T + step : T + step + 1]  # (B, 1) view into the output buffer
        torch.argmax(logits[:, -1], dim=-1, keepdim=True, out=tok)
        if eos is not None:
            done |= torch.isin(tok[:, 0], eos)
            if bool(done.all()):
                n = step + 1
                break
        if step == max_new_tokens - 1:
            break
        logits = model(tok, attention_mask=mask, position_ids=position_ids, input_pos=pos).logits
        pos += 1
        position_ids += 1
    return out[:, : T + n]


def time_decode(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int) -> float:
    """Seconds for one greedy `fast_decode` of max_new_tokens (EOS ignored)."""
    t = time.perf_counter()
    fast_decode(model, input_ids, max_new_tokens)
    return time.perf_counter() - t
