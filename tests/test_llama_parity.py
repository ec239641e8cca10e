# SPDX-License-Identifier: Apache-2.0
"""Llama family at reference parity with transformers (tiny random models, fp32)."""

import pytest
import torch
from parity import (
    assert_cached_decode_matches_full,
    assert_export_roundtrip,
    assert_greedy_match,
    assert_logits_match,
    load_pair,
    random_ids,
)

transformers = pytest.importorskip("transformers")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}

SHAPES = {
    "gqa-untied": dict(num_key_value_heads=2, tie_word_embeddings=False),
    "mha-tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "gqa-llama3-rope": dict(num_key_value_heads=1, rope_scaling=LLAMA3, rope_theta=500000.0),
    "mha-linear-rope": dict(num_key_value_heads=4, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "bias-headdim": dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True, head_dim=16),
}


def tiny_llama(**kw):
    cfg = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                   intermediate_size=64, vocab_size=128, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None, **kw)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


@pytest.fixture(params=sorted(SHAPES), scope="module")
def pair(request, tmp_path_factory):
    hf = tiny_llama(**SHAPES[request.param])
    return hf, load_pair(hf, tmp_path_factory.mktemp(request.param))


def test_logits(pair):
    hf, ours = pair
    assert_logits_match(hf, ours, random_ids(128, batch=3, length=17))


def test_greedy_20_tokens(pair):
    hf, ours = pair
    assert_greedy_match(hf, ours, random_ids(128, batch=2, length=7))


def test_cached_decode_equals_full_forward(pair):
    _, ours = pair
    assert_cached_decode_matches_full(ours, random_ids(128, batch=2, length=10))


def test_export_roundtrip(pair, tmp_path):
    _, ours = pair
    assert_export_roundtrip(ours, transformers.LlamaForCausalLM, tmp_path, random_ids(128))


def test_sharded_export_loads(tmp_path):
    import swisslm

    hf = tiny_llama(num_key_value_heads=2)
    ours = load_pair(hf, tmp_path / "src")
    from swisslm.io.loader import save_hf

    save_hf(ours, tmp_path / "sharded", max_shard_bytes=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    again = swisslm.AutoModel.from_pretrained(tmp_path / "sharded")
    ids = random_ids(128)
    torch.testing.assert_close(again(ids).logits, ours(ids).logits, atol=0, rtol=0)
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "sharded")
    assert_logits_match(back, ours, ids)


def test_padded_batch_forward_matches_hf(pair):
    """Left padding + attention mask + position ids: same logits on the real tokens."""
    hf, ours = pair
    ids = random_ids(128, batch=2, length=9)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=pos).logits
        mine = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (theirs[real] - mine[real]).abs().max() <= 1e-4
