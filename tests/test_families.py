# SPDX-License-Identifier: Apache-2.0
"""Every registered family at reference parity with transformers: tiny random checkpoints made
with transformers in several shapes per family, saved, loaded by swisslm; fp32 logits (hidden
states for encoders), greedy generation, cached decode and the export round trip.

Llama's own shapes live in test_llama_parity.py; every other registered family must have
cases here (test_every_family_has_cases)."""

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

from swisslm.families import FAMILIES, _load_all

transformers = pytest.importorskip("transformers")

V = 128
BASE = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=V, max_position_embeddings=64,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)
GRANITE_MULT = dict(embedding_multiplier=12.0, attention_multiplier=0.0625, residual_multiplier=0.22,
                    logits_scaling=4.0)

# family -> {shape name: (config class name, model class name, config kwargs)}
CASES = {
    "granite": {
        "gqa-multipliers": ("GraniteConfig", "GraniteForCausalLM",
                            dict(intermediate_size=64, num_key_value_heads=2, **GRANITE_MULT)),
        "mha-tied-defaults": ("GraniteConfig", "GraniteForCausalLM",
                              dict(intermediate_size=64, tie_word_embeddings=True)),
    },
    "granite_moe": {
        "top1-gqa": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                     dict(intermediate_size=16, num_local_experts=4, num_experts_per_tok=1, num_key_value_heads=2,
                          **GRANITE_MULT)),
        "top2-mha": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                     dict(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2, **GRANITE_MULT)),
    },
    "granite_moe_shared": {
        "top2-shared": ("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM",
                        dict(intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
                             shared_intermediate_size=24, num_key_value_heads=2, **GRANITE_MULT)),
    },
    "olmoe": {
        "top8-norm-clip": ("OlmoeConfig", "OlmoeForCausalLM",
                           dict(intermediate_size=16, num_experts=8, num_experts_per_tok=8, norm_topk_prob=True,
                                clip_qkv=0.5)),
        "top2-nonorm-gqa": ("OlmoeConfig", "OlmoeForCausalLM",
                            dict(intermediate_size=16, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
                                 num_key_value_heads=2)),
        "top1-clip": ("OlmoeConfig", "OlmoeForCausalLM",
                      dict(intermediate_size=16, num_experts=4, num_experts_per_tok=1, clip_qkv=0.2)),
    },
    "gpt_neox": {
        "rot0.25-parallel": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                             dict(intermediate_size=64, rotary_pct=0.25, use_parallel_residual=True)),
        "rot1.0-sequential": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                              dict(intermediate_size=64, rotary_pct=1.0, use_parallel_residual=False)),
        "rot0.5-sequential-nobias": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                                     dict(intermediate_size=64, rotary_pct=0.5, use_parallel_residual=False,
                                          attention_bias=False)),
        # head_dim 10: int(10 * pct) = 2 (even), 3 and 5 (odd: HF's inv_freq has ceil(d/2) entries
        # with exponents over d, so d + 1 channels rotate) and 0 (no channel rotates).
        **{f"hd10-rot{pct}": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                              dict(hidden_size=40, intermediate_size=64, rotary_pct=pct,
                                   use_parallel_residual=pct != 0.5))
           for pct in (0.25, 0.3, 0.5, 0.05)},
    },
    "bert": {
        "types2": ("BertConfig", "BertModel", dict(intermediate_size=64, type_vocab_size=2, pad_token_id=0)),
        "types1-relu": ("BertConfig", "BertModel",
                        dict(intermediate_size=64, type_vocab_size=1, hidden_act="relu", pad_token_id=0)),
        "no-pooler": ("BertConfig", "BertModel", dict(intermediate_size=64, pad_token_id=0)),
    },
}
# constructor arguments that are not config values
MODEL_KWARGS = {("bert", "no-pooler"): dict(add_pooling_layer=False)}
PARAMS = [pytest.param((fam, shape), id=f"{fam}-{shape}") for fam in CASES for shape in CASES[fam]]
ENCODERS = {"bert"}


def make_hf(family: str, shape: str):
    cfg_cls, model_cls, kw = CASES[family][shape]
    cfg = getattr(transformers, cfg_cls)(**{**BASE, **kw})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg, **MODEL_KWARGS.get((family, shape), {})).eval()
    if family in ("granite_moe", "granite_moe_shared", "olmoe"):
        with torch.no_grad():  # HF zero/normal-inits routers; make routing decisive and varied
            for name, p in model.named_parameters():
                if "router" in name or name.endswith("mlp.gate.weight"):
                    p.normal_(0, 1.0)
    return model


@pytest.fixture(params=PARAMS, scope="module")
def pair(request, tmp_path_factory):
    family, shape = request.param
    hf = make_hf(family, shape)
    folder = tmp_path_factory.mktemp(f"{family}-{shape}")
    ours = load_pair(hf, folder)
    assert ours.config.family == family
    ours.hf_folder = folder  # what transformers' save_pretrained wrote
    return family, hf, ours


def test_every_family_has_cases():
    _load_all()
    assert set(FAMILIES) - {"llama"} <= set(CASES), f"no parity cases for {set(FAMILIES) - set(CASES) - {'llama'}}"


def test_forward(pair):
    family, hf, ours = pair
    ids = random_ids(V, batch=3, length=17)
    if family in ENCODERS:
        mask = torch.ones_like(ids)
        mask[0, 11:] = 0  # right padding, BERT style
        types = torch.zeros_like(ids)
        types[:, 9:] = 1 if hf.config.type_vocab_size > 1 else 0
        with torch.no_grad():
            theirs = hf(ids, attention_mask=mask, token_type_ids=types)
            mine = ours(ids, attention_mask=mask, token_type_ids=types)
        assert ours(ids).logits is None
        diff = (theirs.last_hidden_state - mine.last_hidden_state)[mask.bool()].abs().max().item()
        assert diff <= 1e-4, f"hidden states max abs diff {diff}"
        if theirs.pooler_output is None:
            assert mine.pooler_output is None and not hasattr(ours, "pooler")
        else:
            diff = (theirs.pooler_output - mine.pooler_output).abs().max().item()
            assert diff <= 1e-5, f"pooler_output max abs diff {diff}"
        return
    assert_logits_match(hf, ours, ids)


def test_greedy_20_tokens(pair):
    family, hf, ours = pair
    if family in ENCODERS:
        pytest.skip("encoders do not generate")
    assert_greedy_match(hf, ours, random_ids(V, batch=2, length=7))


def test_cached_decode_equals_full_forward(pair):
    family, _, ours = pair
    if family in ENCODERS:
        pytest.skip("encoders have no KV cache")
    assert_cached_decode_matches_full(ours, random_ids(V, batch=2, length=10))


def tensor_shapes(folder):
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            out.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
    return out


def test_export_roundtrip(pair, tmp_path):
    """transformers loads our export with the same outputs, and the folder holds exactly the
    tensor names and shapes transformers' own save_pretrained writes."""
    family, hf, ours = pair
    ids = random_ids(V)
    if family not in ENCODERS:
        assert_export_roundtrip(ours, type(hf), tmp_path, ids)
    else:
        ours.save_pretrained(tmp_path)
        has_pooler = hf.pooler is not None
        back, info = type(hf).from_pretrained(tmp_path, add_pooling_layer=has_pooler, output_loading_info=True)
        assert not any(info.values()), info  # nothing missing (newly initialised) or unexpected
        with torch.no_grad():
            a, b = back.eval()(ids), ours(ids)
        assert (a.last_hidden_state - b.last_hidden_state).abs().max().item() <= 1e-4
        if has_pooler:
            assert (a.pooler_output - b.pooler_output).abs().max().item() <= 1e-5
    # exactly the names and shapes transformers writes (pooler.dense.* iff the source had them)
    assert tensor_shapes(tmp_path) == tensor_shapes(ours.hf_folder)


def test_padded_batch_matches_hf(pair):
    family, hf, ours = pair
    if family in ENCODERS:
        pytest.skip("covered by test_forward")
    ids = random_ids(V, batch=2, length=9)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=pos).logits
        mine = ours(ids, attention_mask=mask).logits
    assert (theirs - mine)[mask.bool()].abs().max() <= 1e-4


def test_conversion_errors_list_every_problem(tmp_path):
    """Missing tensor + wrong shape + unexpected tensor -> one error naming all of them."""
    import json

    from safetensors.torch import load_file, save_file

    import swisslm
    from swisslm.io.errors import CheckpointError

    hf = make_hf("olmoe", "top2-nonorm-gqa")
    hf.save_pretrained(tmp_path)
    f = next(tmp_path.glob("*.safetensors"))
    state = load_file(f)
    del state["model.layers.1.mlp.experts.3.up_proj.weight"]
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(31)
    state["model.layers.0.mlp.mystery.weight"] = torch.ones(2)
    save_file(state, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        swisslm.AutoModel.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "experts.3" in msg or "layers.1.mlp.gate_up" in msg
    assert "q_norm" in msg and "(31,)" in msg
    assert "mystery" in msg

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["MambaForCausalLM"], "mamba"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(swisslm.ConfigError, match="unsupported architecture.*OlmoeForCausalLM"):
        swisslm.AutoModel.from_pretrained(tmp_path)


def test_granite_is_llama_plus_four_values():
    """Granite's adapter is Llama's plus the multipliers (no copy): same map, four fields."""
    from swisslm.families import get_family

    granite, llama = get_family("granite"), get_family("llama")
    assert issubclass(granite, llama) and granite.WEIGHT_MAP is llama.WEIGHT_MAP
    hf = {"architectures": ["GraniteForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
          "num_hidden_layers": 1, "num_attention_heads": 2, **GRANITE_MULT}
    cfg = granite.config_from_hf(hf)
    assert (cfg.embedding_multiplier, cfg.attn_scale, cfg.residual_multiplier, cfg.logits_scaling) == (
        12.0, 0.0625, 0.22, 4.0)
    assert {k: v for k, v in granite.config_to_hf(cfg).items() if k in GRANITE_MULT} == GRANITE_MULT


def test_neox_odd_rotary_width_wider_than_head_errors_like_transformers(tmp_path):
    """head_dim 9, rotary_pct 1.0: HF's odd width 9 rotates 10 channels and its forward fails on a
    shape mismatch; we refuse the config on load with one line naming the widths."""
    import swisslm

    hf = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        **{**BASE, "hidden_size": 36, "intermediate_size": 16, "rotary_pct": 1.0})).eval()
    with pytest.raises(RuntimeError, match="size of tensor"):
        hf(random_ids(V))
    hf.save_pretrained(tmp_path)
    with pytest.raises(swisslm.ConfigError, match=r"= 9 is odd and rotates 10 channels.*head_dim \(9\)") as e:
        swisslm.AutoModel.from_pretrained(tmp_path)
    assert "\n" not in str(e.value)


def test_bert_half_a_pooler_is_a_weight_problem(tmp_path):
    """A pooler with its bias missing is an error naming it, not a silently random bias."""
    from safetensors.torch import load_file, save_file

    import swisslm
    from swisslm.io.errors import CheckpointError

    make_hf("bert", "types2").save_pretrained(tmp_path)
    f = next(tmp_path.glob("*.safetensors"))
    state = load_file(f)
    del state["pooler.dense.bias"]
    save_file(state, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing tensor for 'pooler.dense.bias'"):
        swisslm.AutoModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", sorted(CASES))
def test_cli_convert(family, tmp_path):
    """`swisslm convert` HF folder -> HF folder for every family; transformers loads the result."""
    from swisslm.cli import main

    shape = next(iter(CASES[family]))
    hf = make_hf(family, shape)
    hf.save_pretrained(tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    back = type(hf).from_pretrained(tmp_path / "dst").eval()
    ids = random_ids(V)
    with torch.no_grad():
        a, b = hf(ids), back(ids)
    key = "last_hidden_state" if family in ENCODERS else "logits"
    assert (getattr(a, key) - getattr(b, key)).abs().max() <= 1e-5
