# SPDX-License-Identifier: Apache-2.0
"""Every seed family read from GGUF under llama.cpp's architecture and tensor names.

The files here are written by a "third-party writer": the `gguf` package's own GGUFWriter,
tensor names from gguf's TensorNameMap (llama.cpp's table of HF -> GGUF names) and the few
rewrites convert_hf_to_gguf.py does on top (q/k row permute for llama-style rotary, NeoX's qkv
de-interleave, experts stacked, GraniteMoE's fused gate/up split), transcribed from the
converter rather than from swisslm. swisslm must load them with the logits (hidden states for
BERT) of the transformers model they were made from. Also: a Llama-3 file with
`rope_freqs.weight` matches HF's llama3 rope scaling.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from parity import random_ids

import swisslm
from swisslm.io.gguf import read_gguf_config

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

V = 128
BASE = dict(hidden_size=256, num_attention_heads=4, num_hidden_layers=2, vocab_size=V, max_position_embeddings=64,
            intermediate_size=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
GRANITE_MULT = dict(embedding_multiplier=12.0, attention_multiplier=0.0625, residual_multiplier=0.22,
                    logits_scaling=4.0)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 10000.0}

# family -> (config class, model class, llama.cpp architecture, config kwargs). Row lengths of 256
# so that the K-quant export types really run (a shorter row falls back to a 32-block type).
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", gguf.MODEL_ARCH.LLAMA, dict(num_key_value_heads=2)),
    "granite": ("GraniteConfig", "GraniteForCausalLM", gguf.MODEL_ARCH.GRANITE,
                dict(num_key_value_heads=2, **GRANITE_MULT)),
    "granite_moe": ("GraniteMoeConfig", "GraniteMoeForCausalLM", gguf.MODEL_ARCH.GRANITE_MOE,
                    dict(num_local_experts=4, num_experts_per_tok=2, num_key_value_heads=2, **GRANITE_MULT)),
    "granite_moe_shared": ("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM", gguf.MODEL_ARCH.GRANITE_MOE,
                           dict(num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=256,
                                **GRANITE_MULT)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", gguf.MODEL_ARCH.OLMOE,
              dict(num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, num_key_value_heads=2)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", gguf.MODEL_ARCH.GPTNEOX,
                 dict(rotary_pct=0.25, use_parallel_residual=True)),
    "bert": ("BertConfig", "BertModel", gguf.MODEL_ARCH.BERT, dict(type_vocab_size=2)),
}
ENCODERS = {"bert"}


def make_hf(family: str, **overrides):
    cfg_cls, model_cls, _, kw = CASES[family]
    cfg = getattr(transformers, cfg_cls)(**{**BASE, **kw, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # HF zero/normal-inits routers and norms; make routing and norms matter
        for name, p in model.named_parameters():
            if "router" in name or name.endswith("mlp.gate.weight"):
                p.normal_(0, 1.0)
            elif p.dim() == 1 and "norm" in name.lower():
                p.uniform_(0.5, 1.5)
    return model


@torch.no_grad()
def outputs(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a decoder, last hidden state of an encoder (swisslm or transformers alike)."""
    out = model(ids)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


# ----------------------------------------------------------------------------------------------
# The third-party writer: convert_hf_to_gguf.py's steps with gguf's own tables
# ----------------------------------------------------------------------------------------------


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:  # LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_factors(rope: dict, dim: int) -> torch.Tensor:  # LlamaModel.generate_extra_tensors
    base, factor = rope["rope_theta"], rope["factor"]
    old = rope["original_max_position_embeddings"]
    low_wl, high_wl = old / rope["low_freq_factor"], old / rope["high_freq_factor"]
    out = []
    for freq in 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)):
        wl = 2 * math.pi / freq
        if wl < high_wl:
            out.append(1)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (old / wl - rope["low_freq_factor"]) / (rope["high_freq_factor"] - rope["low_freq_factor"])
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def _tensors(family: str, folder: Path, c) -> dict[str, torch.Tensor]:
    """HF tensors as the converter rewrites them, still under HF names (gguf maps them next)."""
    sd = {k: v.float() for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, t in sd.items():
        if name.endswith(("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias", "position_ids")) \
                or name.startswith("pooler."):  # BertModel.filter_tensors drops the pooler
            continue
        if family in ("llama", "granite", "granite_moe", "granite_moe_shared"):  # undo_permute = True
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                t = _permute(t, c.num_attention_heads)
            elif name.endswith(("k_proj.weight", "k_proj.bias")):
                t = _permute(t, c.num_key_value_heads)
        if family == "gpt_neox" and "query_key_value" in name:  # GPTNeoXModel.modify_tensors
            h, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
            t = t.reshape(h, 3, d, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
        if family == "olmoe" and ".experts." in name:  # OlmoeModel: stack the experts
            parts = name.split(".")
            experts.setdefault((int(parts[2]), parts[6]), {})[int(parts[5])] = t
            continue
        if name.endswith("input_linear.weight"):  # GraniteMoeModel.modify_tensors: split gate/up
            layer = int(name.split(".")[2])
            gate, up = t.split(t.shape[-2] // 2, dim=-2)
            shared = "shared_mlp" in name
            for kind, part in (("GATE", gate), ("UP", up)):
                tensor = getattr(gguf.MODEL_TENSOR, f"FFN_{kind}_{'SHEXP' if shared else 'EXP'}")
                out[gguf.TENSOR_NAMES[tensor].format(bid=layer) + ".weight"] = part
            continue
        out[name] = t
    for (layer, proj), by_expert in experts.items():
        out[f"model.layers.{layer}.mlp.experts.{proj}.weight"] = torch.stack(
            [by_expert[e] for e in sorted(by_expert)])
    return out


def write_third_party(family: str, hf_model, folder: Path, path: Path, f16: bool = False) -> Path:
    """A GGUF of `hf_model` (saved in `folder`) as llama.cpp's converter would write it."""
    c = hf_model.config
    arch = CASES[family][2]
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    head_dim = c.hidden_size // c.num_attention_heads
    if family == "bert":
        w.add_layer_norm_eps(c.layer_norm_eps)
        w.add_causal_attention(False)
        w.add_pooling_type(gguf.PoolingType.MEAN)
        w.add_token_type_count(c.type_vocab_size)
    elif family == "gpt_neox":
        w.add_rope_dimension_count(int(c.rope_parameters["partial_rotary_factor"] * head_dim))
        w.add_parallel_residual(c.use_parallel_residual)
        w.add_layer_norm_eps(c.layer_norm_eps)
    else:
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_rope_freq_base(c.rope_parameters["rope_theta"])
        w.add_vocab_size(c.vocab_size)
        w.add_rope_dimension_count(head_dim)
    if family.startswith("granite"):
        w.add_attention_scale(c.attention_multiplier)
        w.add_embedding_scale(c.embedding_multiplier)
        w.add_residual_scale(c.residual_multiplier)
        w.add_logit_scale(c.logits_scaling)
    if family in ("granite_moe", "granite_moe_shared", "olmoe"):
        w.add_expert_count(getattr(c, "num_local_experts", None) or c.num_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
    if family == "granite_moe_shared":
        w.add_expert_shared_feed_forward_length(c.shared_intermediate_size)
    for key, v in (("bos", c.bos_token_id), ("eos", c.eos_token_id), ("pad", c.pad_token_id)):
        if v is not None:
            getattr(w, f"add_{key}_token_id")(v)
    tmap = gguf.get_tensor_name_map(arch, c.num_hidden_layers)
    rope = c.rope_parameters if family == "llama" else {}
    if rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_factors(rope, head_dim).numpy())
    for name, t in _tensors(family, folder, c).items():
        new = name if name.startswith("blk.") else tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, f"gguf's TensorNameMap has no name for {name}"
        data = t.numpy()
        # the converter's rule: 1-D, norms, router, position/type embeddings stay f32
        keep32 = data.ndim <= 1 or new.endswith(("_norm.weight", "ffn_gate_inp.weight", "position_embd.weight",
                                                  "token_types.weight"))
        w.add_tensor(new, data.astype(np.float16) if f16 and not keep32 else data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(CASES))
def test_third_party_gguf_loads_with_hf_parity(family, tmp_path):
    hf = make_hf(family)
    hf.save_pretrained(tmp_path / "hf")
    path = write_third_party(family, hf, tmp_path / "hf", tmp_path / f"{family}.gguf")
    cfg = read_gguf_config(path)
    ours = swisslm.AutoModel.from_pretrained(path)
    assert ours.config.family == family, (family, cfg["architectures"])
    ids = random_ids(V, batch=2, length=11)
    diff = (outputs(hf, ids) - outputs(ours, ids)).abs().max().item()
    assert diff <= 1e-4, f"{family}: max abs diff {diff}"
    if family not in ENCODERS:  # the same greedy continuation
        theirs = hf.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
        assert torch.equal(theirs, ours.generate(ids, max_new_tokens=8, eos_token_id=[]))


def test_third_party_f16_gguf(tmp_path):
    """F16 matrices (what the converter writes by default) load within fp16 rounding."""
    hf = make_hf("granite")
    hf.save_pretrained(tmp_path / "hf")
    path = write_third_party("granite", hf, tmp_path / "hf", tmp_path / "g16.gguf", f16=True)
    ours = swisslm.AutoModel.from_pretrained(path)
    ids = random_ids(V)
    a, b = outputs(hf, ids), outputs(ours, ids)
    assert ((a - b).norm() / a.norm()).item() <= 5e-3


def test_llama3_rope_freqs_match_hf_llama3_scaling(tmp_path):
    """A Llama-3.x file: rope scaling only as `rope_freqs.weight`; it becomes HF's llama3
    rope_scaling with the original parameters, and the logits match HF's LlamaForCausalLM."""
    hf = make_hf("llama", rope_parameters=dict(LLAMA3_ROPE))
    hf.save_pretrained(tmp_path / "hf")
    path = write_third_party("llama", hf, tmp_path / "hf", tmp_path / "llama31.gguf")
    cfg = read_gguf_config(path)
    want = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    assert cfg["rope_scaling"] == want
    ours = swisslm.AutoModel.from_pretrained(path)
    ids = random_ids(V, batch=2, length=40)  # positions well past the rotary wavelengths that differ
    assert (outputs(hf, ids) - outputs(ours, ids)).abs().max().item() <= 1e-4
    # the factors are not the default rope: without them the logits would differ
    plain = make_hf("llama")
    assert (outputs(plain, ids) - outputs(ours, ids)).abs().max().item() > 1e-3
