# SPDX-License-Identifier: Apache-2.0
"""PrefixTuningMixin: prefixes attend like extra keys (checked against eager attention with the
prefix concatenated by hand), cached decode equals the full forward, only prefixes train and
the loss goes down, del_mixin restores the base."""

import torch
import torch.nn.functional as F

import swisslm
from swisslm import ModelConfig
from swisslm.core.attention import eager_attention
from swisslm.mixins import PrefixTuningMixin


def tiny():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=48)
    return swisslm.AutoModel.from_config(cfg, seed=0).eval()


def test_prefix_attention_matches_manual_concat():
    model = tiny()
    prefix = PrefixTuningMixin.from_config(model.config, prefix_len=3, init_std=0.5)
    model.add_mixin("prefix", prefix)
    B, T = 2, 5
    q, k, v = torch.randn(B, 4, T, 8), torch.randn(B, 2, T, 8), torch.randn(B, 2, T, 8)
    fn = model.layers[1].attn.attention_fn_impl
    got = fn(q, k, v, None, 8**-0.5, True)
    pk = prefix.prefix_k[1].expand(B, -1, -1, -1)
    pv = prefix.prefix_v[1].expand(B, -1, -1, -1)
    mask = torch.cat([torch.ones(T, 3, dtype=torch.bool), torch.ones(T, T, dtype=torch.bool).tril()], -1)
    ref = eager_attention(q, torch.cat([pk, k], 2), torch.cat([pv, v], 2), mask[None, None], 8**-0.5, False)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert model.slot_providers()["attention_fn"] == ["prefix", "default"]


def test_cached_decode_with_prefix_equals_full_forward_and_padding():
    model = tiny()
    model.add_mixin("prefix", PrefixTuningMixin.from_config(model.config, prefix_len=4, init_std=0.5))
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        full = model(ids).logits
        model.setup_cache(2, 8)
        out = [model(ids[:, :3], input_pos=torch.arange(3)).logits]
        for t in range(3, 8):
            out.append(model(ids[:, t : t + 1], input_pos=torch.tensor([t])).logits)
        model.clear_cache()
        torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-5, rtol=1e-5)
        # left padding: the padded row's real tokens see the same prefix and context
        mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
        padded = model(torch.cat([torch.zeros(1, 2, dtype=torch.long), ids[:1, :6]], 1).expand(2, -1)
                       * torch.tensor([[1], [0]]) + ids[1:] * torch.tensor([[0], [1]]), attention_mask=mask).logits
        torch.testing.assert_close(padded[0, 2:], full[0, :6], atol=1e-5, rtol=1e-5)


def test_prefix_tuning_trains_tiny_model_only_prefix_changes():
    torch.manual_seed(0)
    model = tiny().train()
    ids = torch.randint(0, 64, (4, 12))
    with torch.no_grad():
        before = model(ids).logits.clone()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    prefix = PrefixTuningMixin.from_config(model.config, prefix_len=8)
    model.add_mixin("prefix", prefix)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["mixins.prefix.prefix_k", "mixins.prefix.prefix_v"]
    opt = torch.optim.AdamW(prefix.parameters(), lr=2e-1)
    losses = []
    for _ in range(30):
        logits = model(ids[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())
    assert "prefix_len=8" in model.mixin_report()
    model.del_mixin("prefix")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    assert all(p.requires_grad for p in model.parameters())
