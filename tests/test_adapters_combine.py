# SPDX-License-Identifier: Apache-2.0
"""`swisslm adapters combine`: linear / cat / svd combinations equal PEFT's add_weighted_adapter
on the same adapters (logits of the tiny Llama within 1e-5), and bad input exits 2."""

import json

import pytest
import torch
from parity import load_pair, random_ids

from swisslm.cli import main
from swisslm.finetune import load_adapter

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, tie_word_embeddings=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def make_adapter(hf, folder, seed, **lora):
    pm = peft.get_peft_model(hf, peft.LoraConfig(**lora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    pm.save_pretrained(folder)
    return pm.unload()  # the bare model back, for the next adapter


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("combine")
    hf = tiny_llama()
    hf = make_adapter(hf, d / "a", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    hf = make_adapter(hf, d / "b", 2, r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "down_proj"])
    hf = make_adapter(hf, d / "c", 3, r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"], use_rslora=True)
    return d, hf


@pytest.mark.parametrize("method,names,weights", [
    ("linear", ["a", "b"], [0.8, 0.5]),
    ("linear", ["a", "b"], [0.7, -0.4]),  # negative weights: PEFT puts the sign on A
    ("cat", ["a", "b", "c"], [0.8, 0.5, 1.2]),
    ("svd", ["a", "b", "c"], [0.8, 0.5, 1.2]),
])
def test_combine_equals_peft_add_weighted_adapter(setup, tmp_path, method, names, weights):
    d, hf = setup
    out = tmp_path / "comb"
    assert main(["adapters", "combine", *[str(d / n) for n in names], "--weights", *map(str, weights),
                 "--method", method, str(out)]) == 0
    pm = peft.PeftModel.from_pretrained(hf, d / names[0], adapter_name=names[0])
    for n in names[1:]:
        pm.load_adapter(d / n, adapter_name=n)
    pm.add_weighted_adapter(names, weights, "comb", combination_type=method)
    pm.set_adapter("comb")
    pm.eval()
    ids = random_ids(96, batch=2, length=10)
    with torch.no_grad():
        theirs = pm(ids).logits
    base = pm.unload()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == pm.peft_config["comb"].r == cfg["lora_alpha"]
    ours = load_pair(base, tmp_path / "base")
    load_adapter(ours, out)
    with torch.no_grad():
        mine = ours(ids).logits
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    # and PEFT itself loads our file with the same result
    pm2 = peft.PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        torch.testing.assert_close(pm2(ids).logits, theirs, atol=1e-5, rtol=1e-4)
    pm2.unload()


def test_cat_is_exactly_the_weighted_sum_of_deltas(setup, tmp_path):
    from swisslm.finetune.combine import combine_adapters
    from swisslm.finetune.peft_format import read_adapter

    d, _ = setup
    cfg, t = combine_adapters([d / "a", d / "b"], [0.8, 0.5], "cat")
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    (ca, ta), (cb, tb) = read_adapter(d / "a"), read_adapter(d / "b")
    want = sum(w * c["lora_alpha"] / c["r"] * (tt[key + ".lora_B.weight"] @ tt[key + ".lora_A.weight"])
               for w, (c, tt) in ((0.8, (ca, ta)), (0.5, (cb, tb))))
    got = t[key + ".lora_B.weight"] @ t[key + ".lora_A.weight"] * cfg["lora_alpha"] / cfg["r"]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("argv,message", [
    (["--weights", "1", "2", "3"], "2 adapter(s) but 3 weight(s)"),
    (["--method", "ties"], "--method must be linear, cat or svd"),
    (["--weights", "x"], "--weights: 'x' is not a number"),
    (["--svd-rank", "0", "--method", "svd"], "--svd-rank must be > 0"),
])
def test_bad_input_exits_2(setup, tmp_path, capsys, argv, message):
    d, _ = setup
    args = ["adapters", "combine", str(d / "a"), str(d / "b"), str(tmp_path / "o")]
    if "--weights" not in argv:
        argv = ["--weights", "1", "1", *argv]
    assert main(args + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_linear_with_different_ranks_is_one_clear_error(setup, tmp_path, capsys):
    d, _ = setup
    assert main(["adapters", "combine", str(d / "a"), str(d / "c"), "--weights", "1", "1", str(tmp_path / "o")]) == 2
    assert "one rank" in capsys.readouterr().err
