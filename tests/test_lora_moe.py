# SPDX-License-Identifier: Apache-2.0
"""LoRA on MoE experts: per-expert adapters in the grouped compute, only adapters train, and the
PEFT `target_parameters` format round-trips with transformers' OLMoE both ways."""

import pytest
import torch
import torch.nn.functional as F
from parity import load_pair, random_ids

import swisslm
from swisslm import ModelConfig
from swisslm.finetune import load_adapter, save_adapter
from swisslm.finetune.merge import merge_lora
from swisslm.mixins import LoRAMixin, trainable_parameters
from swisslm.mixins.lora import ExpertLoRA


def tiny_olmoe():
    cfg = ModelConfig(family="olmoe", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=16, qk_norm="full", num_experts=4, num_experts_per_tok=2,
                      router_aux_loss_coef=0.01)
    return swisslm.AutoModel.from_config(cfg, seed=0)


def randomize(params, seed=1, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_expert_lora_equals_manual_delta_and_merge():
    model = tiny_olmoe().eval()
    lora = LoRAMixin(r=2, alpha=4, target_modules=["gate_up_proj", "down_proj"])
    model.add_mixin("lora", lora)
    assert all(isinstance(ad, ExpertLoRA) for _, _, ad in lora.adapters()) and len(lora.adapters()) == 4
    randomize(lora.adapter_parameters())
    ref = tiny_olmoe().eval()
    with torch.no_grad():
        for i in range(2):
            moe, rmoe = model.layers[i].mlp, ref.layers[i].mlp
            for name in ("gate_up", "down"):
                ad = getattr(moe, f"lora_{name}")
                getattr(rmoe, name).add_(2.0 * torch.einsum("eor,eri->eoi", ad.lora_b, ad.lora_a))
        ids = torch.randint(0, 64, (2, 9))
        adapted = model(ids).logits
        torch.testing.assert_close(adapted, ref(ids).logits, atol=1e-5, rtol=1e-5)
        merge_lora(model)
        assert model.layers[0].mlp.lora_gate_up is None
        torch.testing.assert_close(model(ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_lora_on_moe_trains_only_adapter_parameters():
    torch.manual_seed(0)
    model = tiny_olmoe().train()
    lora = LoRAMixin(r=4, alpha=8, target_modules="all-linear")
    model.add_mixin("lora", lora)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in model.named_parameters() if ".lora_" in n}
    assert any("mlp.lora_gate_up.lora_a" in n for n in names) and any("mlp.lora_down.lora_b" in n for n in names)
    assert not any("router" in n for n in names)
    trainable, total = trainable_parameters(model)
    assert trainable == sum(p.numel() for p in lora.adapter_parameters()) < total
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 64, (4, 12))
    losses = []
    for _ in range(12):
        out = model(ids[:, :-1])
        loss = F.cross_entropy(out.logits.reshape(-1, 64), ids[:, 1:].reshape(-1)) + out.aux_loss
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == (n in names), n
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())


def _tiny_hf_olmoe():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.OlmoeConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=4, intermediate_size=16, num_experts=4,
                                   num_experts_per_tok=2, eos_token_id=1, pad_token_id=0, bos_token_id=None)
    torch.manual_seed(0)
    return transformers.OlmoeForCausalLM(cfg).eval()


def test_peft_target_parameters_round_trip_both_ways(tmp_path):
    peft = pytest.importorskip("peft")
    hf = _tiny_hf_olmoe()
    ours = load_pair(hf, tmp_path / "base")
    ids = random_ids(64, batch=2, length=8)
    # ours -> PEFT
    lora = LoRAMixin(r=2, alpha=4, target_modules=["q_proj", "o_proj", "mlp.experts.gate_up_proj",
                                                   "mlp.experts.down_proj"])
    ours.add_mixin("lora", lora)
    randomize(lora.adapter_parameters())
    save_adapter(ours, tmp_path / "ours")
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, pm(ids).logits, atol=1e-5, rtol=1e-4)
    ours.del_mixin("lora")
    hf = pm.unload()
    # PEFT -> ours (the parameters listed in the other order: nesting flips)
    config = peft.LoraConfig(r=3, lora_alpha=5, target_modules=["v_proj"],
                             target_parameters=["mlp.experts.down_proj", "mlp.experts.gate_up_proj"])
    pm = peft.get_peft_model(hf, config)
    randomize([p for n, p in pm.named_parameters() if "lora_" in n], seed=4)
    pm.eval().save_pretrained(tmp_path / "theirs")
    load_adapter(ours, tmp_path / "theirs")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, pm(ids).logits, atol=1e-5, rtol=1e-4)
