# SPDX-License-Identifier: Apache-2.0
"""CPU decode fast path: compile the one-token step, leave everything else eager.

    compile_(model)            # in place; model.generate / serve / chat then use it

`compile_` routes the cached one-token forward (T == 1 with `input_pos`) through
`torch.compile(fullgraph=True, dynamic=False)` and keeps prefill (any prompt length) eager, so
a new prompt length never recompiles. Nothing in generation/ needs to know: the decode loop
calls `model(...)` as before. Quantized layers enter the graph as one opaque custom op each
(swisslm::int8_packed_linear), so the int8 model compiles with fullgraph=True too.
"""

from __future__ import annotations

import logging
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
