# SPDX-License-Identifier: Apache-2.0
"""GGUF files run quantized (quant/gguf_blocks.py): the six block types swisslm keeps repack
exactly, survive the weight maps' row operations, load by default into the int kernels' modules
and give the logits of the expanded fp32 load; the embedded SmolLM2 runs quantized with the
tokens and perplexity of its fp32 expansion and a fraction of its memory. The kernels themselves
are checked against gguf.quants.dequantize in tests/test_kernels.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q
from gguf_blocks_data import NATIVE, TINY, dequantized, random_blocks, write_llama_gguf

import swisslm
from swisslm import kernels
from swisslm.families.gguf_names import unpermute_k, unpermute_q
from swisslm.quant.gguf_blocks import BlockEmbedding, BlockWeight, linear_from_block, repack, row_permutation
from swisslm.quant.layers import GroupInt8Linear, Int4Linear

LAYOUT = {Q.Q4_0: (Int4Linear, 32), Q.Q4_1: (Int4Linear, 32), Q.Q4_K: (Int4Linear, 32),
          Q.Q8_0: (GroupInt8Linear, 32), Q.Q5_K: (GroupInt8Linear, 32), Q.Q6_K: (GroupInt8Linear, 16)}


def _block(qtype: Q, N: int, K: int, seed: int = 0) -> tuple[BlockWeight, torch.Tensor]:
    raw = random_blocks(qtype, N, K, seed)
    return repack(raw, qtype, (N, K)), torch.from_numpy(dequantized(raw, qtype))


@pytest.mark.parametrize("qtype", NATIVE, ids=lambda q: q.name)
def test_repack_is_exact(qtype):
    bw, ref = _block(qtype, 24, 512)
    assert bw.shape == (24, 512) and bw.group == LAYOUT[qtype][1] and bw.source == qtype.name
    assert torch.equal(bw.dequantize(), ref)  # bit for bit: the same products and sums


def test_row_ops_equal_the_ops_on_dequantized_weights():
    parts = [_block(t, n, 256, seed=i) for i, (t, n) in enumerate([(Q.Q4_K, 64), (Q.Q6_K, 32), (Q.Q4_1, 32)])]
    fused = torch.cat([bw for bw, _ in parts], dim=0)  # what the weight maps call
    assert isinstance(fused, BlockWeight) and fused.layout == "int8 g16" and fused.source == "Q4_K+Q6_K+Q4_1"
    assert torch.equal(fused.dequantize(), torch.cat([ref for _, ref in parts]))
    same = torch.cat([parts[2][0], _block(Q.Q4_0, 8, 256)[0]])
    assert same.layout == "int4 g32"  # int4 pieces stay int4
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2}
    bw, ref = _block(Q.Q5_K, 64, 256)
    for fn in (unpermute_q, unpermute_k):
        perm = row_permutation(fn, 64, cfg)
        assert perm is not None and torch.equal(bw.rows(perm).dequantize(), fn(ref, cfg))
    assert row_permutation(lambda w, c: w * 2, 64, cfg) is None  # not a row order: expanded instead
    mixed = torch.cat([bw, ref], dim=0)  # a float piece: the result is expanded
    assert torch.equal(mixed, torch.cat([ref, ref]))


@pytest.mark.parametrize("qtype", NATIVE, ids=lambda q: q.name)
@pytest.mark.parametrize("M", [1, 5, 16, 40])
def test_torch_path_is_the_dequantized_product(qtype, M):
    """Off the kernels (SWISSLM_KERNELS=0, no compiler, non-x86) a layer dequantizes itself for
    the call: the exact fp32 product of gguf's weights, with nothing expanded for good."""
    bw, ref = _block(qtype, 40, 512, seed=M)
    bias = torch.randn(40)
    lin = linear_from_block(bw, bias)
    assert isinstance(lin, LAYOUT[qtype][0])
    x = torch.randn(M, 512)
    kernels.set_enabled(False)
    try:
        y = lin(x)
    finally:
        kernels.set_enabled(True)
    torch.testing.assert_close(y, F.linear(x, ref, bias), atol=1e-5, rtol=1e-5)


def _ids(n: int = 12) -> torch.Tensor:
    return torch.arange(2, 2 + n).remainder(TINY["vocab"])[None]


@pytest.mark.parametrize("qtype", NATIVE, ids=lambda q: q.name)
def test_tiny_llama_in_each_type_loads_natively(tmp_path, qtype):
    path = write_llama_gguf(tmp_path / f"tiny-{qtype.name}.gguf", qtype, tied=qtype != Q.Q6_K)
    model = swisslm.AutoModel.from_pretrained(path)
    ref = swisslm.AutoModel.from_pretrained(path, dtype="float32")
    cls, group = LAYOUT[qtype]
    for name in ("layers.0.attn.qkv", "layers.1.mlp.down", "head.proj"):
        m = model.get_submodule(name)
        assert type(m) is cls and m.group_size == group, (name, m)
    assert isinstance(model.embed.word, BlockEmbedding)
    assert model.quantization["scheme"] == "gguf" and not getattr(ref, "quantization", None)
    assert model.storage_format().startswith(f"GGUF {qtype.name} → kept quantized: {qtype.name} as ")
    if kernels.available():
        assert {e["backend"] for e in kernels.describe(model)} == {"swisslm"}
    with torch.no_grad():
        want = ref(_ids()).logits
        got = model(_ids()).logits  # 12 rows: the int kernels (activations rounded to int16 per row)
        bound = 2e-3 * want.abs().max()
        assert (got - want).abs().max() <= bound
        kernels.set_enabled(False)  # both on torch: the same fp32 weights, the same summation order
        try:
            exact, want = model(_ids()).logits, ref(_ids()).logits  # dequantized layer by layer vs expanded
        finally:
            kernels.set_enabled(True)
    torch.testing.assert_close(exact, want, atol=1e-6, rtol=1e-6)


def test_q4_k_m_style_mix_runs_one_fused_layout(tmp_path):
    """Q4_K_M files store some rows of a fused linear as Q6_K: the fused qkv then runs int8 g16."""
    path = write_llama_gguf(tmp_path / "mix.gguf", Q.Q4_K, types={"attn_v.weight": Q.Q6_K, "ffn_down.weight": Q.Q6_K})
    model = swisslm.AutoModel.from_pretrained(path)
    qkv, out, down = (model.get_submodule(f"layers.0.{n}") for n in ("attn.qkv", "attn.out", "mlp.down"))
    assert isinstance(qkv, GroupInt8Linear) and qkv.group_size == 16 and qkv.gguf_source == "Q4_K+Q6_K"
    assert isinstance(out, Int4Linear) and isinstance(down, GroupInt8Linear)
    ref = swisslm.AutoModel.from_pretrained(path, dtype="float32")
    with torch.no_grad():
        want, got = ref(_ids()).logits, model(_ids()).logits
    assert (got - want).abs().max() <= 2e-3 * want.abs().max()


def test_fused_decode_step_takes_the_group_kernel(tmp_path):
    """bs1 decode runs the whole stack in one C call (cpu_layer.c) with int8-group linears too, and
    gives the module path's tokens."""
    if not kernels.available():
        pytest.skip("kernels unavailable")
    from swisslm.kernels import fused_step

    path = write_llama_gguf(tmp_path / "q8.gguf", Q.Q8_0)
    model = swisslm.AutoModel.from_pretrained(path)
    calls = []
    orig = fused_step.fused_stack_step

    def spy(*a, **k):
        out = orig(*a, **k)
        calls.append(out is not None)
        return out

    fused_step.fused_stack_step = spy
    try:
        fused = model.generate(_ids(4), max_new_tokens=6, do_sample=False)
    finally:
        fused_step.fused_stack_step = orig
    assert calls and all(calls)
    kernels.set_enabled(False)
    try:
        plain = model.generate(_ids(4), max_new_tokens=6, do_sample=False)
    finally:
        kernels.set_enabled(True)
    assert fused.tolist() == plain.tolist()


# -- the embedded SmolLM2 (Q4_1 matrices, Q8_0 tied embedding) --------------------------------


@pytest.fixture(scope="module")
def native(smollm2_path):
    return swisslm.AutoModel.from_pretrained(smollm2_path)


def test_smollm2_runs_quantized_by_default(native, smollm2):
    assert isinstance(native.layers[0].attn.qkv, Int4Linear) and isinstance(native.embed.word, BlockEmbedding)
    assert isinstance(native.head.proj, GroupInt8Linear) and native.head.proj.weight is native.embed.word.weight
    assert native.storage_format() == ("GGUF Q4_1 (79%), Q8_0 (21%) → kept quantized: Q8_0 as int8 g32 "
                                       "(embedding, tied head); Q4_1 as int4 g32 (120 linears)")
    ids = torch.tensor([native.tokenizer.encode("The capital of France is Paris, and the capital of Italy is")])
    got = native.generate(ids, max_new_tokens=16, do_sample=False)
    want = smollm2.generate(ids, max_new_tokens=16, do_sample=False)  # the fp32 expansion
    assert got.tolist() == want.tolist()


def _window_nll(model, ids: torch.Tensor, window: int) -> float:
    """Mean next-token NLL over independent windows of `window` tokens: each forward has at most
    kernels.MAX_ROWS rows, so the quantized model runs its int kernels (not the prefill GEMM)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, ids.numel() - window + 1, window):
            chunk = ids[s:s + window][None]
            logits = model(chunk).logits[0, :-1]
            total += F.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
            n += window - 1
    return total / n


def test_smollm2_perplexity_within_half_a_percent_of_the_fp32_dequantized_forward(native, smollm2):
    """The same text scored by the quantized execution and by the fp32 expansion of the same file
    (`smollm2`: exactly gguf's dequantized weights)."""
    text = (Path(__file__).parents[1] / "bench" / "data" / "two_cities.txt").read_text()[:4000]
    ids = torch.tensor(native.tokenizer.encode(text))[:192]
    window = kernels.MAX_ROWS
    ppl, ref = (math.exp(_window_nll(m, ids, window)) for m in (native, smollm2))
    assert abs(ppl / ref - 1) < 0.005, (ppl, ref)


def test_generate_peak_rss_is_well_under_the_fp32_expansion(smollm2_path):
    """`swisslm generate` on the embedded model in a child process: its peak RSS (VmHWM) above a
    bare `import torch` stays far below the fp32 expansion's 538 MB of weights."""
    code = (
        "import re, sys, torch\n"
        "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
        "base = hwm()\n"
        "from swisslm.cli import main\n"
        "main(['generate', 'The capital of France is', '--max-new-tokens', '4', '--threads', '1'])\n"
        "print('RSS', base, hwm())\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    base, peak = (int(v) for v in out.stdout.strip().splitlines()[-1].split()[1:])
    fp32_weights = 134_515_008 * 4
    grew = peak - base
    assert grew < 0.5 * fp32_weights, json.dumps({"base": base, "peak": peak})
    assert grew < 2.5 * smollm2_path.stat().st_size
