# SPDX-License-Identifier: Apache-2.0
"""PEFT format both ways: our adapters load into `peft.PeftModel` on the transformers model
with identical logits, PEFT-trained adapters load into swisslm with identical logits, and
`swisslm merge` writes an HF folder equal to base + adapter."""

import json

import pytest
import torch
from parity import load_pair, random_ids

from swisslm.finetune import load_adapter, save_adapter
from swisslm.mixins import LoRAMixin

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, tie_word_embeddings=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def randomize(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("rslora", [False, True])
def test_ours_to_peft_identical_logits(tmp_path, rslora):
    hf = tiny_llama()
    ours = load_pair(hf, tmp_path / "base")
    lora = LoRAMixin(r=4, alpha=16, target_modules="all-linear", use_rslora=rslora)
    ours.add_mixin("lora", lora)
    randomize(lora.adapter_parameters())
    save_adapter(ours, tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["use_rslora"] is rslora
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"}
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids = random_ids(96, batch=2, length=10)
    with torch.no_grad():
        theirs, mine = peft_model(ids).logits, ours(ids).logits
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_peft_to_ours_identical_logits_and_merge_cli(tmp_path):
    hf = tiny_llama()
    ours = load_pair(hf, tmp_path / "base")
    ids = random_ids(96, batch=2, length=10)
    with torch.no_grad():
        base_logits = ours(ids).logits
    config = peft.LoraConfig(r=3, lora_alpha=7, target_modules=["q_proj", "v_proj", "up_proj", "o_proj"])
    pm = peft.get_peft_model(hf, config)
    randomize([p for n, p in pm.named_parameters() if "lora_" in n], seed=3)
    pm.eval()
    pm.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        theirs = pm(ids).logits
    lora = load_adapter(ours, tmp_path / "adapter")
    assert lora.r == 3 and lora.target_names() == ["o_proj", "q_proj", "up_proj", "v_proj"]
    assert not any(p.requires_grad for p in ours.parameters())
    with torch.no_grad():
        mine = ours(ids).logits
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    assert (mine - base_logits).abs().max() > 1e-2  # the adapter does something

    # swisslm merge BASE ADAPTER OUT == base + adapter, as an HF folder transformers loads
    from swisslm.cli import main

    assert main(["merge", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, theirs, atol=1e-5, rtol=1e-4)


def test_unsupported_adapter_is_one_clear_error(tmp_path):
    from swisslm import CheckpointError

    hf = tiny_llama()
    ours = load_pair(hf, tmp_path / "base")
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    pm.save_pretrained(tmp_path / "dora")
    with pytest.raises(CheckpointError, match="use_dora"):
        load_adapter(ours, tmp_path / "dora")
    assert not ours.mixins


def test_gpt_neox_interleaved_qkv_round_trip(tmp_path):
    """NeoX's query_key_value is one HF linear interleaved per head; our qkv is de-interleaved by a
    weight-map Transform, which LoRA applies to B's rows. Both directions, exact."""
    cfg = transformers.GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, rotary_pct=0.5)
    torch.manual_seed(0)
    hf = transformers.GPTNeoXForCausalLM(cfg).eval()
    ours = load_pair(hf, tmp_path / "base")
    lora = LoRAMixin(r=2, alpha=4, target_modules="all-linear")
    ours.add_mixin("lora", lora)
    assert lora.target_names() == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]
    randomize(lora.adapter_parameters())
    save_adapter(ours, tmp_path / "adapter")
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids = random_ids(64, batch=2, length=8)
    with torch.no_grad():
        theirs = pm(ids).logits
        torch.testing.assert_close(ours(ids).logits, theirs, atol=1e-5, rtol=1e-4)
        ours.del_mixin("lora")
        load_adapter(ours, tmp_path / "adapter")
        torch.testing.assert_close(ours(ids).logits, theirs, atol=1e-5, rtol=1e-4)
