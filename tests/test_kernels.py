# SPDX-License-Identifier: Apache-2.0
"""swisslm's CPU decode kernels against the torch maths they replace, and whole models with the
kernels on vs off (the torch path is the reference)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import swisslm
from swisslm import kernels
from swisslm.config import ModelConfig
from swisslm.core.attention import eager_attention
from swisslm.core.rope import apply_rotary, rope_cos_sin
from swisslm.quant.layers import dequantize_int4, quantize_int4_per_group, quantize_int8_per_channel

pytestmark = pytest.mark.skipif(not kernels.available(), reason="kernels did not build on this machine")


@contextlib.contextmanager
def kernels_off():
    kernels.set_enabled(False)
    try:
        yield
    finally:
        kernels.set_enabled(True)


def test_f32_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="sse"):
        kernels.f32_isa("sse")


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 8, 13, 16])
@pytest.mark.parametrize("K,N", [(64, 96), (72, 7), (100, 33), (4200, 5), (5, 3)])  # K % 16, N % 4, int32 flush
def test_linear_kernels_match_torch(M, K, N, isa):
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    tol = 1e-4 * max(1.0, K / 1000)  # fp32 rounding of K-term sums, summed in another order than torch's
    torch.testing.assert_close(kernels.linear_f32(x, w, b), F.linear(x, w, b), atol=tol, rtol=1e-5)
    torch.testing.assert_close(kernels.linear_f32(x.view(M, 1, K), w), F.linear(x, w).view(M, 1, N),
                               atol=tol, rtol=1e-5)
    q, s = quantize_int8_per_channel(w)
    ref = F.linear(x, q.float() * s[:, None], b)
    torch.testing.assert_close(kernels.linear_i8(x, q, s, b, act16=False), ref, atol=1e-4, rtol=1e-5)
    # int16 activations: rounding each row to 1/32767 of its largest entry
    err = (kernels.linear_i8(x, q, s, b) - ref).abs().max()
    assert err <= 2e-4 * ref.abs().max(), err
    if K % 32 == 0:  # (K = 5: no whole int8/int4 vector; the fp32 kernel's masked or scalar tail only)
        p, sc, mn = quantize_int4_per_group(w, 32)
        ref = F.linear(x, dequantize_int4(p, sc, mn), b)
        err = (kernels.linear_i4(x, p, sc, mn, 32, b) - ref).abs().max()
        assert err <= 2e-4 * ref.abs().max(), err


@pytest.mark.parametrize("M", [40, 64, 65, 131])
def test_linear_f32_kernel_at_moe_expert_sizes(M, isa):
    # Tens of rows (MoE experts at prefill): three-row register blocks, 1024-column passes with
    # partial sums through the output (K = 2100: two full passes, a 48-column one and a 4-column
    # tail), and 64-row passes over the weights. A row's result still depends on that row alone.
    g = torch.Generator().manual_seed(M)
    x, w, b = torch.randn(M, 2100, generator=g), torch.randn(37, 2100, generator=g), torch.randn(37, generator=g)
    y = kernels.linear_f32(x, w, b)
    torch.testing.assert_close(y, F.linear(x, w, b), atol=5e-4, rtol=1e-5)
    alone = torch.cat([kernels.linear_f32(x[i : i + 1], w, b) for i in range(M)])
    assert torch.equal(y, alone)


def test_linear_kernel_rows_are_batch_invariant():
    # Weight-only numerics: a row's result does not depend on its neighbours (fbgemm's dynamic
    # int8 path, which scales activations per tensor, could not promise this).
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 96, generator=g), torch.randn(40, 96, generator=g)
    q, s = quantize_int8_per_channel(w)
    for act16 in (True, False):
        alone = torch.cat([kernels.linear_i8(x[i : i + 1], q, s, act16=act16) for i in range(8)])
        assert torch.equal(kernels.linear_i8(x, q, s, act16=act16), alone)
    p, sc, mn = quantize_int4_per_group(w, 32)
    alone = torch.cat([kernels.linear_i4(x[i : i + 1], p, sc, mn, 32) for i in range(8)])
    assert torch.equal(kernels.linear_i4(x, p, sc, mn, 32), alone)


@pytest.mark.parametrize("M", [2, 3, 4, 5, 6, 7, 8, 9, 16])
def test_linear_f32_rows_are_batch_invariant(M, isa):
    # 4-, 2- and 1-row passes (AVX-512) or 3-, 2- and 1-row passes (AVX2) sum each row in the
    # same order, so greedy decoding of a prompt does not change with its batch.
    g = torch.Generator().manual_seed(M)
    x, w, b = torch.randn(M, 1100, generator=g), torch.randn(41, 1100, generator=g), torch.randn(41, generator=g)
    y = kernels.linear_f32(x, w, b)
    assert torch.equal(y, torch.cat([kernels.linear_f32(x[i : i + 1], w, b) for i in range(M)]))


def test_int4_group_not_multiple_of_16_declines():
    # Int4Linear only makes groups of 32/64/128; a foreign group size gets None (caller falls back)
    x, w = torch.randn(1, 48), torch.randn(4, 48)
    p, sc, mn = quantize_int4_per_group(w, 24)
    assert kernels.linear_i4(x, p, sc, mn, 24) is None


def test_rms_norm_matches_reference():
    x, w = torch.randn(3, 5, 37), torch.randn(37)
    ref = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    torch.testing.assert_close(kernels.rms_norm(x, w, 1e-5), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("D,rd", [(64, 64), (64, 16), (10, 4), (24, 24)])
def test_rope_matches_apply_rotary(D, rd):
    B, T, H, Hk = 2, 3, 4, 2
    qkv = torch.randn(B, T, (H + 2 * Hk) * D)
    q, k, _ = qkv.split([H * D, Hk * D, Hk * D], -1)
    q, k = q.view(B, T, H, D).transpose(1, 2), k.view(B, T, Hk, D).transpose(1, 2)  # strided views
    inv = 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd))
    cos, sin = rope_cos_sin(inv, torch.tensor([[3, 4, 5], [0, 1, 2]]), torch.float32)
    with kernels_off():
        rq, rk = apply_rotary(q, k, (cos, sin))
    kq, kk = kernels.rope(q, k, cos, sin)
    torch.testing.assert_close(kq, rq, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(kk, rk, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("B,H,Hk,S,D", [(1, 9, 3, 144, 64), (3, 4, 4, 50, 32), (2, 8, 2, 20, 10), (8, 4, 2, 600, 64)])
def test_decode_attention_matches_eager(B, H, Hk, S, D):
    g = torch.Generator().manual_seed(S)
    q = torch.randn(B, H, 1, D, generator=g)
    k, v = torch.randn(B, Hk, S, D, generator=g), torch.randn(B, Hk, S, D, generator=g)
    mask = torch.zeros(B, 1, 1, S, dtype=torch.bool)
    for b in range(B):
        mask[b, ..., b : S - 5 - b] = True  # ragged left padding and an unwritten tail
    for m in (mask, None, mask[:1].expand(B, 1, 1, S)):
        torch.testing.assert_close(kernels.decode_attention(q, k, v, m, D**-0.5),
                                   eager_attention(q, k, v, m, D**-0.5, True), atol=1e-5, rtol=1e-5)
    # a window of a larger cache (the server binds row/slot views): strided, never copied
    big_k, big_v = torch.randn(B + 2, Hk, S + 7, D, generator=g), torch.randn(B + 2, Hk, S + 7, D, generator=g)
    kv, vv = big_k[1 : B + 1, :, :S], big_v[1 : B + 1, :, :S]
    torch.testing.assert_close(kernels.decode_attention(q, kv, vv, mask, 0.3),
                               eager_attention(q, kv, vv, mask, 0.3, True), atol=1e-5, rtol=1e-5)


def test_fully_masked_row_gives_zeros_not_nan():
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    out = kernels.decode_attention(q, k, v, torch.zeros(1, 1, 1, 5, dtype=torch.bool), 0.5)
    assert torch.equal(out, torch.zeros_like(out))


def _tiny_llama(**over):
    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, max_position_embeddings=128, **over)
    return swisslm.AutoModel.from_config(cfg, seed=0).eval()


def _decode_logits(model, prompt, steps, mask_pad=0):
    """Cached greedy decode of a (B, T) prompt; returns every step's logits (B, steps, V)."""
    B, T = prompt.shape
    model.setup_cache(B, T + steps)
    mask = torch.ones(B, T + steps, dtype=torch.long)
    mask[1:, :mask_pad] = 0  # left padding on every row but the first
    out = []
    with torch.no_grad():
        logits = model(prompt, attention_mask=mask, input_pos=torch.arange(T)).logits[:, -1]
        for t in range(steps):
            out.append(logits)
            tok = logits.argmax(-1, keepdim=True)
            pos = torch.tensor([T + t])
            position_ids = (mask[:, : T + t + 1].cumsum(-1)[:, -1:] - 1)
            logits = model(tok, attention_mask=mask, position_ids=position_ids, input_pos=pos).logits[:, -1]
    return torch.stack(out, 1)


def _per_layer_calls(monkeypatch):
    """Make the model run its one-token steps layer by layer (no whole-stack call)."""
    monkeypatch.setattr("swisslm.kernels.fused_step.fused_stack_step", lambda *a: None)


@pytest.mark.parametrize("over", [{}, {"rotary_pct": 0.5}, {"position": "absolute"}, {"qk_norm": "full"},
                                  {"residual_multiplier": 0.4}])
def test_model_decode_with_kernels_equals_torch_path(over, monkeypatch):
    model = _tiny_llama(**over)
    prompt = torch.randint(0, 97, (3, 6))
    calls = _count_kernel_calls(monkeypatch)
    fast = _decode_logits(model, prompt, 8, mask_pad=2)
    # q/k norm is not a default slot, so that model takes the generic path, whose SDPA function
    # still runs the decode kernel over the cache; every other model is one call per step
    assert set(calls) == {"decode_attention" if over.get("qk_norm") else "stack_step"}
    with kernels_off():
        ref = _decode_logits(model, prompt, 8, mask_pad=2)
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    # The stack call, one call per layer and the modules one by one chain the same kernels in
    # the same order: the same numbers.
    with monkeypatch.context() as mp:
        _per_layer_calls(mp)
        calls.clear()
        per_layer = _decode_logits(model, prompt, 8, mask_pad=2)
        assert "stack_step" not in calls and ("layer_step" in calls) != bool(over.get("qk_norm"))
    calls.clear()
    modules = _module_path_logits(model, prompt, 8, monkeypatch, 2)
    assert not {"stack_step", "layer_step"} & set(calls)
    torch.testing.assert_close(fast, per_layer, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fast, modules, atol=1e-6, rtol=1e-6)


def _count_kernel_calls(monkeypatch):
    """Names of the one-token kernels called from now on (stack, layer, attention)."""
    calls = []
    for name in ("stack_step", "layer_step", "attention_step", "decode_attention"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels.ops, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    return calls


def _module_path_logits(model, prompt, steps, monkeypatch, mask_pad=0):
    with monkeypatch.context() as mp:
        mp.setattr(model, "fused_layers", None)  # neither the stack nor the layer call
        return _decode_logits(model, prompt, steps, mask_pad)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_fused_layer_runs_quantized_linears(scheme, monkeypatch):
    from swisslm.quant import quantize_

    model = quantize_(_tiny_llama(), scheme, group_size=32)
    prompt = torch.randint(0, 97, (2, 5))
    calls = _count_kernel_calls(monkeypatch)
    fast = _decode_logits(model, prompt, 6, mask_pad=1)
    assert calls == ["stack_step"] * 6  # every one-token step (the prompt is not one)
    torch.testing.assert_close(fast, _module_path_logits(model, prompt, 6, monkeypatch, 1), atol=1e-6, rtol=1e-6)
    _per_layer_calls(monkeypatch)
    calls.clear()
    torch.testing.assert_close(fast, _decode_logits(model, prompt, 6, mask_pad=1), atol=1e-6, rtol=1e-6)
    assert calls == ["layer_step"] * 12


def test_fused_layer_plan_follows_changes_to_the_model(monkeypatch):
    # The plan caches the layer's kernel arguments; anything that changes what the layer
    # computes must be seen by the next step, never a stale pointer or a skipped hook.
    model = _tiny_llama()
    prompt = torch.randint(0, 97, (1, 4))
    calls = _count_kernel_calls(monkeypatch)
    _decode_logits(model, prompt, 3)
    assert calls == ["stack_step"] * 3
    with torch.no_grad():  # new storage behind a weight (what .to()/.half()/p.data = ... do)
        model.layers[1].mlp.down.weight.data = torch.randn_like(model.layers[1].mlp.down.weight)
    fast = _decode_logits(model, prompt, 3)
    torch.testing.assert_close(fast, _module_path_logits(model, prompt, 3, monkeypatch), atol=1e-6, rtol=1e-6)

    seen = []
    handle = model.layers[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    calls.clear()
    _decode_logits(model, prompt, 3)
    # layer 0 ran its modules (hook called: prompt + 3 steps), layer 1 stayed one call per step
    assert len(seen) == 4 and calls == ["attention_step", "layer_step"] * 3
    handle.remove()
    handle = model.layers[1].register_forward_pre_hook(lambda m, a: seen.append("block"))
    seen.clear()
    calls.clear()
    _decode_logits(model, prompt, 3)
    assert seen == ["block"] * 4 and "stack_step" not in calls  # a hook on a block: no stack call
    handle.remove()
    fwd = model.layers[0].forward
    model.layers[0].forward = lambda *a, **k: seen.append("forward") or fwd(*a, **k)
    seen.clear()
    calls.clear()
    _decode_logits(model, prompt, 3)
    assert seen == ["forward"] * 4 and "stack_step" not in calls  # forward replaced on a block: honoured
    del model.layers[0].forward

    from swisslm.mixins.lora import LoRAMixin

    model.add_mixin("lora", LoRAMixin(r=2))  # swaps the linears for LoRA wrappers
    for n, p in model.named_parameters():
        if "lora" in n:
            torch.nn.init.normal_(p, 0, 0.5)
    calls.clear()
    fast = _decode_logits(model, prompt, 3)
    # a LoRA wrapper forwards attribute lookups to its base: it must not pass for it
    assert not {"stack_step", "layer_step"} & set(calls)
    with kernels_off():
        torch.testing.assert_close(fast, _decode_logits(model, prompt, 3), atol=1e-4, rtol=1e-4)
    model.del_mixin("lora")
    calls.clear()
    _decode_logits(model, prompt, 3)
    assert calls == ["stack_step"] * 3  # back to plain linears: fused again


def _bind_windows(model, full, slots):
    """What serve/engine.py does per step: every layer's cache a window of the full buffers."""
    model.bind_cache([c.view(0, c.batch, slots) for c in full])


def test_stack_tables_follow_cache_windows(monkeypatch):
    # Windows share pointer and strides with the full cache and differ in length only: the
    # packed tables must follow the length (a stale one would read past the window's mask).
    model = _tiny_llama()
    prompt = torch.randint(0, 97, (2, 4))
    calls = _count_kernel_calls(monkeypatch)

    def run(kernels_on):
        full = model.setup_cache(2, 32)
        mask = torch.ones(2, 32, dtype=torch.long)
        mask[1, 0] = 0
        outs = []
        with torch.no_grad(), contextlib.ExitStack() as stack:
            if not kernels_on:
                stack.enter_context(kernels_off())
            _bind_windows(model, full, 16)
            model(prompt, attention_mask=mask[:, :16], input_pos=torch.arange(4))
            tok = prompt[:, :1]
            for t, slots in ((4, 16), (5, 8), (6, 16), (7, 8)):
                _bind_windows(model, full, slots)
                pid = mask[:, : t + 1].cumsum(-1)[:, -1:] - 1
                outs.append(model(tok, attention_mask=mask[:, :slots], position_ids=pid,
                                  input_pos=torch.tensor([t])).logits)
        return torch.cat(outs, 1)

    got = run(True)
    assert calls == ["stack_step"] * 4
    torch.testing.assert_close(got, run(False), atol=1e-4, rtol=1e-4)


def test_layer_step_rejects_bad_positions_and_linears():
    from swisslm.kernels import layout
    from swisslm.kernels.fused_step import linear_layout

    model = _tiny_llama()
    model.setup_cache(1, 4)
    blk = model.layers[0]
    parts = (blk.attn.qkv, blk.attn.out, blk.mlp.gate_up, blk.mlp.down)
    attn = kernels.attention_layout(4, 2, 16, False, None)
    attn.set_cache(blk.attn.cache.k, blk.attn.cache.v)
    with pytest.raises(ValueError, match="cannot run"):  # autograd needs the weights: no descriptors
        kernels.layer_layout(blk.norm_attn.weight, blk.norm_mlp.weight, 1e-5, 1.0, [linear_layout(m) for m in parts],
                             48, attn)
    with torch.no_grad():
        lins = [linear_layout(m) for m in parts]
        x = torch.randn(1, 1, 64)
        norms = (blk.norm_attn.weight.detach(), blk.norm_mlp.weight.detach(), 1e-5, 1.0)
        good = kernels.layer_layout(*norms, lins, 48, attn)
        with pytest.raises(IndexError, match="cache"):
            kernels.layer_step(x, good, kernels.step_args(1, None, torch.tensor([4]), None))
        bad_lins = list(lins)
        bad_lins[3] = (2, *lins[3][1:5], 24)  # int4 with a group size that is not a multiple of 16
        bad = kernels.layer_layout(*norms, bad_lins, 48, attn)
        with pytest.raises(ValueError, match="cannot run"):
            kernels.layer_step(x, bad, kernels.step_args(1, None, torch.tensor([0]), None))
        # the whole-stack call checks every layer before the first one runs
        table = (layout.Layer * 3)(good, good, bad)
        with pytest.raises(ValueError, match="cannot run"):
            kernels.stack_step(x, table, kernels.step_args(1, None, torch.tensor([0]), None))
        with pytest.raises(IndexError, match="cache"):
            kernels.stack_step(x, (layout.Layer * 2)(good, good), kernels.step_args(1, None, torch.tensor([4]), None))
        with pytest.raises(ValueError, match="row"):  # x has 2 rows, the step 1
            kernels.stack_step(torch.randn(2, 1, 64), table, kernels.step_args(1, None, torch.tensor([0]), None))
    assert not blk.attn.cache.k.any()  # nothing written by any of the calls


def test_layouts_match_the_c_structs():
    # The module refuses to load when a mirror's size differs; offsets are pinned here too, the
    # ones a reordered field of the same size would move.
    import ctypes

    from swisslm.kernels import layout

    lib = kernels.ops._lib()
    for i, cls in enumerate(layout.STRUCTS):
        assert lib.layout_size(i) == ctypes.sizeof(cls)
    assert layout.Layer.lin.offset == 24 and layout.Layer.attn.offset == 24 + 4 * 48 + 8
    with pytest.raises(RuntimeError, match="differ"):
        layout.check_sizes(lambda i: 0)


def test_mixin_in_a_fused_slot_takes_the_generic_path():
    # A mixin replacing the attention function must be honoured even in the one-token step.
    from swisslm.core.slots import Mixin

    calls = []

    class CountingAttention(Mixin):
        def attention_fn(self, q, k, v, mask, scale, is_causal):
            calls.append(q.shape[2])
            return eager_attention(q, k, v, mask, scale, is_causal)

    model = _tiny_llama()
    model.add_mixin("count", CountingAttention())
    _decode_logits(model, torch.randint(0, 97, (1, 4)), 3)
    assert 1 in calls  # one-token steps went through the mixin


def test_fresh_build_compiles_and_loads(monkeypatch, tmp_path):
    # What a new machine does on first use (this process may have loaded a cached build).
    import importlib.util

    monkeypatch.setenv("SWISSLM_CACHE", str(tmp_path))
    path = kernels.ops._build()
    assert path.parent == tmp_path / "kernels" and path.exists()
    spec = importlib.util.spec_from_file_location("_swisslm_cpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.cpu_supported()
    assert kernels.ops._build() == path  # second call: cache hit, no rebuild


def test_build_without_compiler_reports_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("SWISSLM_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels.ops, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        kernels.ops._build()


def test_bad_shapes_raise_instead_of_reading_past_buffers():
    x = torch.randn(1, 64)
    with pytest.raises(ValueError, match="features"):
        kernels.linear_f32(x, torch.randn(8, 32))
    q, s = quantize_int8_per_channel(torch.randn(8, 32))
    with pytest.raises(ValueError, match="features"):
        kernels.linear_i8(x, q, s)
    k_cache, v_cache = torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16)
    with pytest.raises(IndexError, match="cache"):  # the fused step never writes past the cache
        kernels.attention_step(torch.randn(1, 1, 128), 4, 2, 16, None, k_cache, v_cache, torch.tensor([4]), None, 0.25)
    assert not k_cache.any()


# -- GGUF block types kept quantized (quant/gguf_blocks.py) ------------------------------------


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])
@pytest.mark.parametrize("M", [1, 2, 3, 8, 13, 16])
@pytest.mark.parametrize("N", [1, 7, 37, 64])  # N % 4: the row-block tail
def test_gguf_block_kernels_match_gguf_dequantize(qtype, M, N, isa):
    """Each GGUF type's layer on the kernels (int4 for Q4_*, int8 groups for Q8_0/Q5_K/Q6_K) vs
    gguf.quants.dequantize + an fp32 product; activations are rounded to int16 per row."""
    from gguf import GGMLQuantizationType
    from gguf_blocks_data import dequantized, random_blocks

    from swisslm.quant.gguf_blocks import linear_from_block, repack

    t = GGMLQuantizationType[qtype]
    K = 512
    raw = random_blocks(t, N, K, seed=M * 100 + N)
    g = torch.Generator().manual_seed(M + N)
    x, b = torch.randn(M, K, generator=g), torch.randn(N, generator=g)
    lin = linear_from_block(repack(raw, t, (N, K)), b)
    w = torch.from_numpy(dequantized(raw, t))
    ref = F.linear(x, w, b)
    y = lin(x)
    assert lin._kernel(x) is not None  # the kernel ran, not a fallback
    # rounding each activation to the nearest 1/32767 of its row's largest moves an output by at
    # most half a step times the row of |W|; plus fp32 rounding of the sums
    bound = x.abs().amax(1, keepdim=True) / 32767 * w.abs().sum(1) + 1e-5 * (x.abs() @ w.abs().T) + 1e-6
    assert ((y - ref).abs() <= bound).all(), ((y - ref).abs() / bound).max()
    # each row alone gives the same result (batch invariance)
    assert torch.equal(lin(x[M - 1 :]), y[M - 1 :])


def test_linear_g8_rejects_bad_groups():
    q = torch.zeros(4, 64, dtype=torch.int8)
    assert kernels.linear_g8(torch.randn(1, 64), q, torch.ones(4, 8), None, 8) is None  # 8 % 16 != 0
    with pytest.raises(ValueError):
        kernels.linear_g8(torch.randn(1, 64), q, torch.ones(4, 3), None, 32)
