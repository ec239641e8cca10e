# SPDX-License-Identifier: Apache-2.0
"""Weight-only quantization: layers against the float reference, the quantize pass, the
quantized checkpoint (quantize -> save -> load == quantize-on-load), MoE experts, compile of the
one-token step, the CLI, and int8 greedy decoding of the embedded SmolLM2."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import swisslm
from swisslm import kernels
from swisslm.cli import main as cli_main
from swisslm.config import ModelConfig
from swisslm.io.quantized import save_quantized
from swisslm.quant import Int4Linear, Int8Embedding, Int8Linear, QuantMoE, fbgemm_available, quantize_
from swisslm.quant.layers import dequantize_int4, quantize_int4_per_group, quantize_int8_per_channel


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                max_position_embeddings=64, eos_token_id=1, pad_token_id=0)
    return ModelConfig(**{**base, **kw})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# -- layers ------------------------------------------------------------------------------------


def test_int8_per_channel_roundtrip_error_bound():
    w = torch.randn(48, 96) * torch.logspace(-2, 1, 48)[:, None]  # rows of very different scale
    q, s = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (48,)
    err = (q.float() * s[:, None] - w).abs()
    assert (err <= s[:, None] / 2 + 1e-6).all()  # at most half a step, per row


def test_int4_per_group_roundtrip_error_bound():
    w = torch.randn(16, 128)
    packed, s, m = quantize_int4_per_group(w, 32)
    assert packed.dtype == torch.uint8 and packed.shape == (16, 64) and s.shape == (16, 4)
    err = (dequantize_int4(packed, s, m) - w).abs().view(16, 4, 32)
    assert (err <= s[..., None] / 2 + 1e-5).all()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 8])
def test_int8_linear_matches_float(bias, batch):
    torch.manual_seed(0)
    lin = nn.Linear(96, 80, bias=bias)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(batch, 1, 96)  # decode-sized: <= kernels.MAX_ROWS rows take the packed kernel
    with torch.no_grad():
        ref = lin(x)
        q.use_packed = False
        exact = q(x)  # weight-only: only the weight rounding
        q.use_packed = True
        fast = q(x)  # fbgemm: plus dynamic activation rounding
    assert rel_err(exact, ref) < 0.01
    assert rel_err(fast, ref) < 0.03
    assert torch.allclose(q.dequantize(), lin.weight, atol=lin.weight.abs().max().item() / 127)
    assert q.in_features == 96 and q.out_features == 80 and fast.shape == ref.shape


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_linear_matches_float(group_size):
    torch.manual_seed(0)
    lin = nn.Linear(128, 64, bias=False)
    q = Int4Linear.from_linear(lin, group_size)
    x = torch.randn(4, 128)
    with torch.no_grad():
        ref = lin(x)
        q.use_packed = False
        exact = q(x)
        q.use_packed = True
        fast = q(x)
    assert rel_err(exact, ref) < 0.12  # 4 bits: ~ step/sqrt(12) relative to the group range
    assert rel_err(fast, exact) < 0.03


def test_int8_linear_grad_flows_to_input_for_qlora():
    lin = nn.Linear(32, 16)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(2, 32, requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, q.dequantize().sum(0).expand(2, -1), atol=1e-5)


def test_int8_embedding_matches_float():
    emb = nn.Embedding(50, 24)
    q = Int8Embedding.from_embedding(emb)
    ids = torch.randint(0, 50, (3, 7))
    assert rel_err(q(ids), emb(ids).detach()) < 0.01


def test_packed_weight_follows_new_tensors():
    """load_state_dict replaces the stored tensors: the cached fbgemm pack must not go stale."""
    a, b = Int8Linear.from_linear(nn.Linear(32, 16)), Int8Linear.from_linear(nn.Linear(32, 16))
    x = torch.randn(2, 32)
    with torch.no_grad():
        a(x)
        a.load_state_dict(b.state_dict())
        assert torch.allclose(a(x), b(x))


# -- quantize pass and checkpoint ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("tied", [True, False])
def test_quantize_save_load_same_logits(tmp_path, scheme, tied):
    model = swisslm.AutoModel.from_config(tiny_cfg(tie_embeddings=tied), seed=0).eval()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        quantize_(model, scheme, group_size=32)
        on_load = model(ids).logits
    kinds = set(model.quantization["modules"].values())
    assert {scheme, "int8_embedding"} <= kinds
    assert isinstance(model.layers[0].attn.qkv, Int8Linear if scheme == "int8" else Int4Linear)
    assert rel_err(on_load, ref) < (0.05 if scheme == "int8" else 0.25)
    save_quantized(model, tmp_path / "q")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["swisslm"]["quantization"]["scheme"] == scheme
    back = swisslm.AutoModel.from_pretrained(tmp_path / "q")
    assert back.quantization["scheme"] == scheme
    assert back.layers[1].mlp.down.weight.dtype == (torch.int8 if scheme == "int8" else torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, on_load, atol=1e-5, rtol=0)
        # and the cached decode path agrees with the full forward
        out_a = back.generate(ids[:1, :4], max_new_tokens=6, eos_token_id=[])
        out_b = model.generate(ids[:1, :4], max_new_tokens=6, eos_token_id=[])
    assert torch.equal(out_a, out_b)


def test_tied_int8_head_shares_embedding_tensor(tmp_path):
    model = quantize_(swisslm.AutoModel.from_config(tiny_cfg(tie_embeddings=True), seed=0).eval(), "int8")
    assert model.quantization["modules"]["head.proj"] == "tied"
    assert model.head.proj.weight.data_ptr() == model.embed.word.weight.data_ptr()
    save_quantized(model, tmp_path)
    back = swisslm.AutoModel.from_pretrained(tmp_path)
    assert back.head.proj.weight.data_ptr() == back.embed.word.weight.data_ptr()


def test_quantize_options_and_errors():
    model = swisslm.AutoModel.from_config(tiny_cfg(), seed=0)
    quantize_(model, "int8", head=False, embeddings=False)
    assert isinstance(model.head.proj, nn.Linear) and isinstance(model.embed.word, nn.Embedding)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(model, "int8")
    with pytest.raises(ValueError, match="scheme"):
        quantize_(swisslm.AutoModel.from_config(tiny_cfg()), "int3")
    with pytest.raises(ValueError, match="group_size"):
        quantize_(swisslm.AutoModel.from_config(tiny_cfg()), "int4", group_size=48)


def test_bad_quantized_checkpoint_is_one_error(tmp_path):
    from swisslm.io.errors import CheckpointError

    model = quantize_(swisslm.AutoModel.from_config(tiny_cfg(), seed=0), "int8")
    save_quantized(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["swisslm"]["quantization"]["modules"]["layers.0.attn.qkv"] = "int4"  # shapes now disagree
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="weight problem"):
        swisslm.AutoModel.from_pretrained(tmp_path)


# -- MoE -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["olmoe", "granite_moe"])
def test_quantized_moe_family_runs(tmp_path, family):
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=32, num_experts_per_tok=2, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
    if family == "olmoe":
        hf = transformers.OlmoeForCausalLM(transformers.OlmoeConfig(num_experts=4, **common))
    else:
        hf = transformers.GraniteMoeForCausalLM(transformers.GraniteMoeConfig(num_local_experts=4, **common))
    torch.manual_seed(0)
    hf.eval().save_pretrained(tmp_path / "hf")
    model = swisslm.AutoModel.from_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        quantize_(model, "int8")
        got = model(ids).logits
    moe = model.layers[0].mlp
    assert isinstance(moe, QuantMoE) and moe.gate_up.dtype == torch.int8 and moe.gate_up_scales.shape == (4, 64)
    assert model.layers[0].mlp_impl is moe  # the block's slot still points at the (re-classed) module
    assert rel_err(got, ref) < 0.05
    save_quantized(model, tmp_path / "q")
    back = swisslm.AutoModel.from_pretrained(tmp_path / "q")
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, got, atol=1e-5, rtol=0)
        out = back.generate(ids[:1, :3], max_new_tokens=5, eos_token_id=[])
    assert out.shape == (1, 8)


# -- compile ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not fbgemm_available(), reason="fbgemm not available")
def test_compiled_int8_decode_step_matches_eager():
    from swisslm.quant import compile_, uncompile_

    model = quantize_(swisslm.AutoModel.from_config(tiny_cfg(num_layers=1), seed=0).eval(), "int8")
    ids = torch.randint(2, 128, (2, 5), generator=torch.Generator().manual_seed(3))
    eager = model.generate(ids, max_new_tokens=6, eos_token_id=[])
    compile_(model, backend="aot_eager")  # fullgraph capture incl. the packed-int8 custom op, no C++ build
    try:
        assert torch.equal(model.generate(ids, max_new_tokens=6, eos_token_id=[]), eager)
        assert model._swisslm_compiled and eager.shape == (2, 11)
    finally:
        uncompile_(model)


# -- CLI and the real model --------------------------------------------------------------------------


def test_cli_quantize(tmp_path, capsys):
    model = swisslm.AutoModel.from_config(tiny_cfg(), seed=0)
    model.save_pretrained(tmp_path / "hf")
    assert cli_main(["quantize", str(tmp_path / "hf"), str(tmp_path / "q"), "--scheme", "int4",
                     "--group-size", "32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["scheme"] == "int4" and info["bytes"] > 0
    assert swisslm.AutoModel.from_pretrained(tmp_path / "q").quantization["group_size"] == 32
    assert cli_main(["quantize", str(tmp_path / "hf"), str(tmp_path / "q"), "--scheme", "int8"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_int8_smollm2_answers_paris(smollm2):
    model = quantize_(copy.deepcopy(smollm2), "int8")  # a copy: the session fixture stays float
    tok = model.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, tokenize=True)
    out = model.generate(torch.tensor([ids]), max_new_tokens=12)
    assert "Paris" in tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


@pytest.mark.skipif(not kernels.available(), reason="needs the CPU kernels")
def test_many_rows_run_the_kernels_in_chunks_row_by_row_identical():
    """17..CHUNKED_MAX_ROWS rows (a serving step of many rows) go through the kernels MAX_ROWS
    rows at a time, not through a whole-weight dequantize: every row equals that row alone, and
    the product stays within the int16 activation rounding of the exact weight-only one."""
    from swisslm.quant.layers import CHUNKED_MAX_ROWS, Int4Linear

    torch.manual_seed(0)
    layer = Int4Linear.from_linear(torch.nn.Linear(256, 96, bias=True), 32)
    x = torch.randn(3, 15, 256)  # 45 rows: chunks of 16, 16, 13
    with torch.no_grad():
        y = layer(x)
        alone = torch.cat([layer(r[None]) for r in x.reshape(-1, 256)]).reshape(3, 15, 96)
        exact = torch.nn.functional.linear(x, layer.dequantize(), layer.bias)
    assert torch.equal(y, alone)
    torch.testing.assert_close(y, exact, atol=2e-3, rtol=2e-3)
    assert 45 <= CHUNKED_MAX_ROWS
