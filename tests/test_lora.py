# SPDX-License-Identifier: Apache-2.0
"""LoRAMixin: the forward equals W + (alpha/r) B A built by hand, adapters live in the layers,
only adapters train, del_mixin restores the base bit for bit, merge equals base + adapter."""

import math

import pytest
import torch

import swisslm
from swisslm import ModelConfig
from swisslm.core.linear import Linear
from swisslm.finetune.merge import merge_lora
from swisslm.mixins import LoRAMixin, trainable_parameters
from swisslm.mixins.lora import LoRALinear


def tiny(**kw):
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=48, **kw)
    return swisslm.AutoModel.from_config(cfg, seed=0).eval()


def randomize(lora: LoRAMixin, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("rslora", [False, True])
def test_forward_equals_manual_reference(rslora):
    model, ref = tiny(), tiny()
    r, alpha = 4, 8
    lora = LoRAMixin(r=r, alpha=alpha, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=rslora)
    model.add_mixin("lora", lora)
    randomize(lora)
    s = alpha / math.sqrt(r) if rslora else alpha / r
    q, kv = 4 * 8, 2 * 8  # q rows, k/v rows of the fused qkv
    with torch.no_grad():
        for i in range(2):
            qkv = model.layers[i].attn.qkv
            A, B = qkv.lora_a, qkv.lora_b  # A: [q_proj; v_proj] x r rows, B: q rows then v rows
            W = ref.layers[i].attn.qkv.weight
            W[:q] += s * B[:q] @ A[:r]
            W[q + kv:] += s * B[q:] @ A[r:]
            down = model.layers[i].mlp.down
            ref.layers[i].mlp.down.weight += s * down.lora_b @ down.lora_a
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)


def test_linear_level_formula_with_untargeted_slice():
    model = tiny()
    lora = LoRAMixin(r=2, alpha=6, target_modules=["k_proj"])
    model.add_mixin("lora", lora)
    randomize(lora)
    lin = model.layers[0].attn.qkv
    assert isinstance(lin, LoRALinear) and [s.hf for s in lin.slices] == ["model.layers.0.self_attn.k_proj"]
    x = torch.randn(3, 32)
    with torch.no_grad():
        y = lin(x)
        base = x @ lin.base.weight.T
        delta = 3.0 * (x @ lin.lora_a.T) @ lin.lora_b.T  # only the k rows [32, 48)
    torch.testing.assert_close(y[:, :32], base[:, :32])
    torch.testing.assert_close(y[:, 48:], base[:, 48:])
    torch.testing.assert_close(y[:, 32:48], base[:, 32:48] + delta, atol=1e-6, rtol=1e-5)


def test_fresh_adapter_is_identity_only_adapters_train_and_del_restores():
    model = tiny()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        before = model(ids).logits.clone()
    total = model.num_parameters()
    lora = LoRAMixin(r=4, alpha=8, target_modules="all-linear")
    model.add_mixin("lora", lora)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)  # B starts at zero
    trainable, _ = trainable_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_" in n for n in names)
    # all-linear, r=4, per layer: qkv A 3x4x32 + B (32+16+16)x4; out 4x32 + 32x4;
    # gate_up A 2x4x32 + B 96x4; down 4x48 + 32x4 -- and not the LM head.
    per_layer = (3 * 4 * 32 + 64 * 4) + (4 * 32 + 32 * 4) + (2 * 4 * 32 + 96 * 4) + (4 * 48 + 32 * 4)
    assert trainable == sum(p.numel() for p in lora.adapter_parameters()) == 2 * per_layer
    assert "lora (LoRAMixin: r=4" in model.mixin_report()
    randomize(lora)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, before)
    model.del_mixin("lora")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    assert all(p.requires_grad for p in model.parameters())
    assert model.num_parameters() == total
    assert not any("lora" in k for k in model.state_dict())


def test_state_dict_keeps_base_names_and_round_trips():
    model = tiny()
    lora = LoRAMixin(r=4, alpha=8, target_modules=["q_proj", "o_proj"])
    model.add_mixin("lora", lora)
    randomize(lora)
    sd = model.state_dict()
    assert "layers.0.attn.qkv.weight" in sd and "layers.0.attn.qkv.lora_a" in sd
    assert "layers.1.attn.out.lora_b" in sd and not any(".base." in k for k in sd)
    other = tiny()
    with torch.no_grad():
        other.layers[0].attn.qkv.weight.add_(1.0)  # the load must overwrite the base weight too
    other.add_mixin("lora", LoRAMixin(r=4, alpha=8, target_modules=["q_proj", "o_proj"]))
    other.load_state_dict(sd)
    ids = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(other(ids).logits, model(ids).logits)


def test_merge_equals_base_plus_adapter_and_restores_plain_linears():
    model = tiny()
    lora = LoRAMixin(r=4, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "gate_proj", "down_proj"])
    model.add_mixin("lora", lora)
    randomize(lora)
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        adapted = model(ids).logits.clone()
    merge_lora(model)
    assert not model.mixins and isinstance(model.layers[0].attn.qkv, Linear)  # plain (kernel-backed) again
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_bad_targets_and_layers_restriction():
    model = tiny()
    with pytest.raises(ValueError, match="matched no layer.*q_proj"):
        model.add_mixin("lora", LoRAMixin(target_modules=["query"]))
    assert not model.mixins
    model.add_mixin("lora", LoRAMixin(r=2, target_modules=["q_proj"], layers=[1]))
    assert isinstance(model.layers[1].attn.qkv, LoRALinear)
    assert not isinstance(model.layers[0].attn.qkv, LoRALinear)
    with pytest.raises(ValueError, match="already has a LoRA"):
        model.add_mixin("lora2", LoRAMixin(r=2, target_modules=["q_proj"]))


def test_lora_trains_and_compiles_with_prefix_conflict_free():
    """A few AdamW steps on a tiny model lower the loss with only adapters changing."""
    torch.manual_seed(0)
    model = tiny()
    model.train()
    lora = LoRAMixin(r=4, alpha=8, target_modules="all-linear")
    model.add_mixin("lora", lora)
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora" not in k}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(15):
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_qlora_frozen_quantized_base_float_adapters(scheme):
    """QLoRA: LoRA wraps quantize_'s linears; adapters are float and train, the int base does not;
    merge dequantizes the adapted linears into float nn.Linear with W + s B A."""
    from swisslm.quant import quantize_

    cfg = ModelConfig(vocab_size=64, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=128)
    model = swisslm.AutoModel.from_config(cfg, seed=0)
    quantize_(model, scheme, embeddings=False, head=False)
    lora = LoRAMixin(r=4, alpha=8, target_modules="all-linear")
    model.add_mixin("lora", lora)
    qkv = model.layers[0].attn.qkv
    assert isinstance(qkv, LoRALinear) and type(qkv.base).__name__ == ("Int8Linear" if scheme == "int8"
                                                                       else "Int4Linear")
    assert qkv.lora_a.dtype == torch.float32
    model.train()
    opt = torch.optim.AdamW(lora.adapter_parameters(), lr=1e-2)
    ids = torch.randint(0, 64, (4, 12))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora" not in k}
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).logits.reshape(-1, 64), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    model.eval()
    for m in model.modules():  # the exact weight-only path (fbgemm's also quantizes activations)
        if hasattr(m, "use_packed"):
            m.use_packed = False
    with torch.no_grad():
        adapted = model(ids).logits
        merge_lora(model)
        assert type(model.layers[0].attn.qkv) is Linear
        torch.testing.assert_close(model(ids).logits, adapted, atol=1e-4, rtol=1e-4)
