# SPDX-License-Identifier: Apache-2.0
"""The mixin machinery: slots bound at add time, SAT's conflict rule, explicit wraps,
del_mixin restoring bit-for-bit, and a causal LM that compiles with fullgraph=True."""

import pytest
import torch
import torch.nn.functional as F

import swisslm
from swisslm import Mixin, ModelConfig, SlotConflictError
from swisslm.core.attention import eager_attention


def tiny(**kw):
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=48, **kw)
    return swisslm.AutoModel.from_config(cfg, seed=0).eval()


class TemperatureAttention(Mixin):
    """Replaces attention_fn: sharper attention (scale x 3)."""

    def attention_fn(self, q, k, v, mask, scale, is_causal):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                              scale=scale * 3, enable_gqa=True)


class CountingAttention(Mixin):
    """Wraps attention_fn: counts calls per layer and delegates to the previous implementation."""

    wraps = frozenset({"attention_fn"})

    def __init__(self):
        super().__init__()
        self.calls = {}

    def attention_fn(self, q, k, v, mask, scale, is_causal, *, prev, layer):
        self.calls[layer] = self.calls.get(layer, 0) + 1
        return prev(q, k, v, mask, scale, is_causal)


class ZeroMLP(Mixin):
    def mlp(self, x):
        return torch.zeros_like(x)


def test_attention_mixin_changes_output_and_del_restores_bitwise():
    model = tiny()
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        before = model(ids).logits.clone()
        model.add_mixin("temp", TemperatureAttention())
        changed = model(ids).logits
        assert (changed - before).abs().max() > 1e-3
        model.del_mixin("temp")
        after = model(ids).logits
    assert torch.equal(before, after)
    assert all(chain == ["default"] for chain in model.slot_providers().values())


def test_second_replacement_is_a_conflict_naming_both():
    model = tiny()
    model.add_mixin("first", TemperatureAttention())
    with pytest.raises(SlotConflictError, match=r"'second'.*'first'"):
        model.add_mixin("second", TemperatureAttention())


def test_wrap_receives_prev_and_layer_and_report_shows_chain():
    model = tiny()
    model.add_mixin("temp", TemperatureAttention())
    counter = CountingAttention()
    model.add_mixin("count", counter)
    ids = torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        wrapped = model(ids).logits
    assert counter.calls == {0: 1, 1: 1}
    assert model.slot_providers()["attention_fn"] == ["count", "temp"]
    assert "attention_fn         count -> temp" in model.mixin_report()
    model.del_mixin("count")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, wrapped)  # the wrap delegated exactly


def test_wrap_without_prev_is_rejected():
    class BadWrap(Mixin):
        wraps = frozenset({"mlp"})

        def mlp(self, x):
            return x

    with pytest.raises(SlotConflictError, match="prev"):
        tiny().add_mixin("bad", BadWrap())


def test_block_slot_and_eager_backend_match():
    model = tiny()
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        ref = model(ids).logits

        class Eager(Mixin):
            def attention_fn(self, q, k, v, mask, scale, is_causal):
                return eager_attention(q, k, v, mask, scale, is_causal)

        model.add_mixin("eager", Eager())
        torch.testing.assert_close(model(ids).logits, ref, atol=1e-5, rtol=1e-5)
        model.add_mixin("zero", ZeroMLP())
        assert model.slot_providers()["mlp"] == ["zero"]
        assert not torch.allclose(model(ids).logits, ref)


def test_state_dict_has_no_slot_aliases():
    model = tiny()
    keys = list(model.state_dict())
    assert not any("_impl" in k for k in keys)
    assert "layers.0.mlp.gate_up.weight" in keys and "layers.1.attn.qkv.weight" in keys


@pytest.mark.slow
def test_causal_lm_compiles_fullgraph_with_mixins():
    torch._dynamo.reset()
    model = tiny()
    model.add_mixin("count", CountingAttention())
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        ref = model(ids).logits
        compiled = torch.compile(model, fullgraph=True, backend="inductor")
        out = compiled(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_cached_decode_step_compiles_fullgraph():
    torch._dynamo.reset()
    model = tiny()
    mask = torch.ones(1, 16, dtype=torch.long)
    prompt = torch.randint(0, 64, (1, 4))

    def step(tok, pos):
        return model(tok, attention_mask=mask, input_pos=pos).logits

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    outs = []
    with torch.no_grad():
        for fn in (step, compiled):
            model.setup_cache(1, 16)
            model(prompt, attention_mask=mask, input_pos=torch.arange(4))
            outs.append(torch.cat([fn(torch.tensor([[t]]), torch.tensor([4 + i])) for i, t in enumerate((3, 9))]))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


def test_per_row_cache_positions_match_shared_positions():
    """input_pos may be (B, T): rows at different positions (continuous batching)."""
    model = tiny()
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        full = model(ids).logits
        model.setup_cache(2, 8)
        model(ids[:, :4], input_pos=torch.arange(4))
        # row 0 decodes position 4, row 1 re-decodes position 4 then 5 in a second call
        pos = torch.tensor([[4], [4]])
        step = model(ids[:, 4:5], input_pos=pos).logits
        torch.testing.assert_close(step[:, 0], full[:, 4], atol=1e-5, rtol=0)
        step = model(ids[:, 5:6], input_pos=torch.tensor([[5], [5]])).logits
        torch.testing.assert_close(step[:, 0], full[:, 5], atol=1e-5, rtol=0)
