# SPDX-License-Identifier: Apache-2.0
"""The MoE layer: grouped compute against a dense reference (values and gradients, every
grouped-matmul backend), router losses against transformers, fullgraph compile, random init."""

import pytest
import torch

import swisslm
from swisslm import ModelConfig, kernels
from swisslm.core import moe as moe_mod
from swisslm.core.backbone import Block
from swisslm.core.moe import MoE, load_balancing_loss, router_z_loss

transformers = pytest.importorskip("transformers")


def moe_cfg(**kw):
    base = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16)
    return ModelConfig(**{**base, **kw})


def random_moe(cfg, seed=0):
    torch.manual_seed(seed)
    m = MoE(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


def dense_reference(m: MoE, x):
    """Every expert on every token, combined with a dense (N, E) routing matrix: no sorting."""
    B, T, C = x.shape
    x = x.reshape(-1, C)
    weights, experts = m.route(m.router(x))
    combine = torch.zeros(x.shape[0], m.num_experts).scatter_add(1, experts, weights.to(x.dtype))  # (N, E)
    h = torch.einsum("nc,eoc->neo", x, m.gate_up)  # (N, E, 2I)
    gate, up = h.split(m.inter, dim=-1)
    y = torch.einsum("nei,eci->nec", m.act(gate) * up, m.down)  # (N, E, C)
    out = (y * combine[..., None]).sum(1)
    if m.has_shared:
        out = out + m.shared(x)
    return out.view(B, T, C)


@pytest.fixture(params=["auto", "loop", "native", "kernel"])
def backend(request, monkeypatch):
    """GROUPED_BACKEND, or "kernel": "auto" on the CPU kernel backend (kernels.apply_)."""
    if request.param == "native" and not moe_mod._native_grouped_mm_ok("cpu", torch.float32):
        pytest.skip("torch._grouped_mm does not run on this CPU/torch")
    if request.param == "kernel" and not kernels.available():
        pytest.skip("swisslm's CPU kernels did not build here")
    monkeypatch.setattr(moe_mod, "GROUPED_BACKEND", "auto" if request.param == "kernel" else request.param)
    return request.param


@pytest.mark.parametrize("kw", [dict(num_experts_per_tok=1), dict(num_experts_per_tok=2, norm_topk_prob=True),
                                dict(num_experts=4, num_experts_per_tok=4), dict(shared_expert_intermediate_size=24)],
                         ids=["top1", "top2-norm", "all-experts", "shared"])
def test_grouped_compute_matches_dense_reference_values_and_grads(kw, backend):
    m = random_moe(moe_cfg(**kw))
    if backend == "kernel":
        kernels.apply_(m)
    x = torch.randn(3, 5, 32, requires_grad=True)
    ours = m(x)
    ref = dense_reference(m, x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((ours * g).sum(), [x, *m.parameters()])
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, *m.parameters()])
    for (name, _), a, b in zip([("x", x), *m.named_parameters()], grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"grad of {name}")


@pytest.mark.skipif(not kernels.available(), reason="swisslm's CPU kernels did not build here")
@pytest.mark.parametrize("tokens", [7, 600])  # a few rows per expert; over kernel_max_rows() (torch's mm)
def test_inference_kernel_path_matches_dense_reference(tokens, isa, monkeypatch):
    # Inference on the CPU: experts through swisslm's linear kernel, silu(gate) * up * routing
    # weight in one fused pass (counted, so the test fails if the fused path is not taken).
    m = kernels.apply_(random_moe(moe_cfg(num_experts_per_tok=2, norm_topk_prob=True)))
    calls = []
    fused = kernels.silu_mul
    monkeypatch.setattr(kernels.ops, "silu_mul", lambda *a: calls.append(a) or fused(*a))
    x = torch.randn(1, tokens, 32)
    with torch.inference_mode():
        ours = m(x)
    assert len(calls) == 1 and calls[0][1] is not None
    torch.testing.assert_close(ours, dense_reference(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not kernels.available(), reason="swisslm's CPU kernels did not build here")
def test_expert_rows_cut_follows_the_fp32_kernel(isa, monkeypatch):
    # 40 rows per expert: swisslm's kernel where it runs on AVX2, torch's GEMM on AVX-512 (which
    # leads there from ~32 rows); 8 rows: the kernel on both. Same results either way.
    from swisslm.kernels.backend import grouped_linear_kernel_eager as _grouped_linear_eager
    from swisslm.kernels.backend import kernel_max_rows

    assert kernel_max_rows() == {"avx2": 96, "avx512": 24}[isa]
    calls = []
    real = kernels.linear_f32
    monkeypatch.setattr(kernels.ops, "linear_f32", lambda x, *a, **k: calls.append(x.shape[0]) or real(x, *a, **k))
    w = torch.randn(3, 24, 32)
    for rows in (8, 40):
        calls.clear()
        x = torch.randn(3 * rows, 32)
        offs = torch.tensor([rows, 2 * rows, 3 * rows], dtype=torch.int32)
        with torch.inference_mode():
            y = _grouped_linear_eager(x, w, offs)
        ref = torch.cat([x[i * rows : (i + 1) * rows] @ w[i].T for i in range(3)])
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
        assert calls == ([rows] * 3 if rows <= kernel_max_rows() else [])


def test_experts_that_get_no_tokens_and_single_token():
    m = random_moe(moe_cfg(num_experts=16, num_experts_per_tok=2))
    x = torch.randn(1, 1, 32)  # decode: 2 of 16 experts busy
    torch.testing.assert_close(m(x), dense_reference(m, x), atol=1e-5, rtol=1e-5)
    assert m.router_logits.shape == (1, 16)


def test_moe_block_compiles_fullgraph():
    cfg = moe_cfg()
    torch.manual_seed(0)
    blk = Block(cfg)
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
    from swisslm.core.rope import rope_cos_sin, rope_inv_freq

    x = torch.randn(2, 7, 32)
    rope = rope_cos_sin(rope_inv_freq(cfg), torch.arange(7)[None].expand(2, 7), x.dtype)
    eager = blk(x, rope, None, None)
    compiled = torch.compile(blk, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, rope, None, None), eager, atol=1e-5, rtol=1e-5)
    x2 = torch.randn(2, 7, 32, requires_grad=True)  # training through the compiled graph
    compiled(x2, rope, None, None).sum().backward()
    assert x2.grad is not None and blk.mlp.gate_up.grad is not None


HF_MOE = {
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.01)),
    "olmoe-norm": ("OlmoeConfig", "OlmoeForCausalLM",
                   dict(num_experts=8, num_experts_per_tok=3, norm_topk_prob=True, router_aux_loss_coef=0.02)),
    "granite_moe": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                    dict(num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.001)),
}


@pytest.mark.parametrize("name", sorted(HF_MOE))
@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "padded"])
def test_aux_loss_matches_transformers(name, padded, tmp_path):
    cfg_cls, model_cls, kw = HF_MOE[name]
    cfg = getattr(transformers, cfg_cls)(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                         intermediate_size=16, vocab_size=64, **kw)
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "router" in n or n.endswith("mlp.gate.weight"):
                p.normal_(0, 1.0)
    hf.save_pretrained(tmp_path)
    ours = swisslm.AutoModel.from_pretrained(tmp_path)
    ids = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, 7:] = 0
        mask[2, 9:] = 0
    pos = torch.arange(11)[None].expand(3, 11)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask if padded else None, position_ids=pos, output_router_logits=True)
        assert ours(ids).aux_loss is None  # inference pays nothing unless asked
        ours.output_router_logits = True
        mine = ours(ids, attention_mask=mask if padded else None, position_ids=pos)
    expected = ours.config.router_aux_loss_coef * theirs.aux_loss  # HF returns it unweighted
    assert abs(mine.aux_loss.item() - expected.item()) <= 1e-5 * max(1.0, abs(expected.item()))
    assert len(mine.router_logits) == 2
    real = mask.reshape(-1).bool()  # padded rows' logits are ignored by both (and may differ)
    for a, b in zip(mine.router_logits, theirs.router_logits):
        torch.testing.assert_close(a.float()[real], b.float().reshape(a.shape)[real], atol=1e-5, rtol=1e-5)


def test_training_returns_weighted_aux_and_z_loss():
    cfg = moe_cfg(router_aux_loss_coef=0.01, router_z_loss_coef=0.001)
    model = swisslm.AutoModel.from_config(cfg, seed=0).eval()
    assert model(torch.randint(0, 64, (2, 6))).aux_loss is None  # eval, not asked
    model.train()
    ids = torch.randint(0, 64, (2, 6))
    out = model(ids)
    logits = out.router_logits
    expected = 0.01 * load_balancing_loss(logits, 8, 2, None) + 0.001 * router_z_loss(logits, None)
    torch.testing.assert_close(out.aux_loss, expected)
    z = torch.cat(logits).float().logsumexp(-1).square().mean()  # the definition, spelled out
    torch.testing.assert_close(router_z_loss(logits, None), z)
    out.aux_loss.backward()
    assert model.layers[0].mlp.router.weight.grad.abs().sum() > 0


def test_random_init_for_training_from_scratch():
    model = swisslm.AutoModel.from_config(moe_cfg(shared_expert_intermediate_size=24), seed=0)
    mlp = model.layers[0].mlp
    for p in (mlp.router.weight, mlp.gate_up, mlp.down, mlp.shared.gate_up.weight):
        assert torch.isfinite(p).all() and 0.001 < p.std() < 0.05
    out = model(torch.randint(0, 64, (2, 5)))
    assert torch.isfinite(out.logits).all()


def test_output_router_logits_from_config_json(tmp_path):
    cfg = transformers.OlmoeConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=16,
                                   vocab_size=64, num_experts=4, num_experts_per_tok=2, output_router_logits=True)
    transformers.OlmoeForCausalLM(cfg).save_pretrained(tmp_path / "src")
    model = swisslm.AutoModel.from_pretrained(tmp_path / "src")
    ids = torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        assert model(ids).aux_loss is not None  # the checkpoint asked for them
        model.output_router_logits = False  # the model attribute wins
        assert model(ids).aux_loss is None and model(ids).router_logits is None
    model.save_pretrained(tmp_path / "dst")  # and the setting round-trips
    assert transformers.OlmoeConfig.from_pretrained(tmp_path / "dst").output_router_logits is True
