# SPDX-License-Identifier: Apache-2.0
"""Several LoRA adapters served at once: rows of two adapters and of the base model share one
batch and each gives the greedy tokens of its own merged model; the HTTP `model` field picks the
adapter and /v1/models lists them; bad --lora values exit 2 with one line before any model
loads."""

from __future__ import annotations

import threading

import pytest
import torch
from test_serve import LiveServer, load_smollm2_tokenizer, tiny_lm

from swisslm.finetune.peft_format import load_adapter, save_adapter
from swisslm.mixins.lora import LoRAMixin, MultiLoRALinear, MultiLoRAMixin, lora_deltas
from swisslm.serve.engine import Engine, SamplingParams, Sequence, install_adapters

N_NEW = 10
PROMPTS = ["The quick brown fox", "Once upon a time", "In a galaxy far"]
ADAPTERS = {"alpha": dict(r=4, alpha=8, target_modules=["q_proj", "v_proj"], seed=1),
            "beta": dict(r=8, alpha=16, target_modules="all-linear", seed=2)}


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return load_smollm2_tokenizer(str(smollm2_path))


@pytest.fixture(scope="module")
def adapter_dirs(tok, tmp_path_factory):
    """Two PEFT folders written by swisslm's own LoRA code, with B non-zero (a fresh adapter is
    the identity) and large enough to change the greedy tokens."""
    out = {}
    for name, spec in ADAPTERS.items():
        spec = dict(spec)
        seed = spec.pop("seed")
        lm = tiny_lm(tok)
        lm.add_mixin("lora", LoRAMixin(**spec))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in lm.mixins["lora"].adapter_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        out[name] = save_adapter(lm, tmp_path_factory.mktemp(name))
    return out


def greedy_ref(lm, tok, prompt: str) -> list[int]:
    ids = tok.encode(prompt)
    lm.clear_cache()
    return lm.generate(torch.tensor([ids]), max_new_tokens=N_NEW, eos_token_id=[-1])[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def references(tok, adapter_dirs):
    """{adapter or None: [tokens per prompt]} from each merged model alone."""
    refs = {None: [greedy_ref(tiny_lm(tok), tok, p) for p in PROMPTS]}
    for name, folder in adapter_dirs.items():
        lm = tiny_lm(tok)
        load_adapter(lm, folder, name="lora").merge(lm)
        refs[name] = [greedy_ref(lm, tok, p) for p in PROMPTS]
    assert refs["alpha"] != refs[None] and refs["beta"] != refs[None] and refs["alpha"] != refs["beta"]
    return refs


def test_adapters_and_base_share_a_batch(tok, adapter_dirs, references):
    lm = tiny_lm(tok)
    install_adapters(lm, {k: str(v) for k, v in adapter_dirs.items()})
    eng = Engine(lm, max_batch=9, max_model_len=128)
    assert eng.adapters == ["alpha", "beta"]
    assert eng.resolve_model("beta") == "beta" and eng.resolve_model("base") is None
    eng.start()
    jobs = [(p, a) for p in PROMPTS for a in ("alpha", None, "beta")]  # interleaved rows
    done = [threading.Event() for _ in jobs]
    seqs = [Sequence(tok.encode(p), SamplingParams(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True),
                     lambda ev, i=i: ev.finish_reason and done[i].set(), tok, eng.eos_ids, adapter=a)
            for i, (p, a) in enumerate(jobs)]
    try:
        eng.submit(seqs)  # one submit: all nine rows decode together
        for d in done:
            assert d.wait(60)
        with pytest.raises(ValueError, match="unknown adapter"):
            eng.submit([Sequence(tok.encode("x"), SamplingParams(max_new_tokens=1), print, tok, eng.eos_ids,
                                 adapter="gamma")])
    finally:
        eng.stop()
    assert eng.prefill_forwards == 1  # the nine prompts went through one prefill forward
    for (p, a), s in zip(jobs, seqs):
        assert s.output_ids == references[a][PROMPTS.index(p)], (p, a)


@pytest.mark.parametrize("mode", ["bmm", "grouped"])
def test_multi_lora_linear_mixed_rows_equal_each_adapter(tok, adapter_dirs, mode):
    """Mixed rows (gather + bmm, or grouped by adapter) equal each row with its adapter alone,
    and a base row equals the base linear."""
    lm = tiny_lm(tok)
    deltas = {}
    for name, folder in adapter_dirs.items():
        lora = load_adapter(lm, folder, name="tmp")
        deltas[name] = lora_deltas(lora)
        lm.del_mixin("tmp")
    multi = MultiLoRAMixin(deltas, mode=mode)
    lm.add_mixin("multi", multi)
    lin = lm.layers[0].attn.qkv
    assert isinstance(lin, MultiLoRALinear)
    x = torch.randn(3, 5, lin.in_features)
    with torch.no_grad():
        multi.set_rows([1, 0, 2])
        assert multi._state.grouped == (mode == "grouped")
        mixed = lin(x)
        alone = []
        for i, idx in enumerate([1, 0, 2]):
            multi.set_rows([idx])
            alone.append(lin(x[i:i + 1]))
        multi.set_rows(None)
        base = lin(x)
    torch.testing.assert_close(mixed, torch.cat(alone))
    torch.testing.assert_close(mixed[1], base[1])
    assert not torch.allclose(mixed[0], base[0])
    lm.del_mixin("multi")  # the original linears come back
    assert type(lm.layers[0].attn.qkv).__name__ != "MultiLoRALinear"


def test_http_model_field_picks_the_adapter(tok, adapter_dirs, references):
    httpx = pytest.importorskip("httpx")
    from swisslm.serve import create_app

    lm = tiny_lm(tok)
    install_adapters(lm, {k: str(v) for k, v in adapter_dirs.items()})
    app = create_app(lm, "tiny", max_batch=4, max_model_len=128)
    with LiveServer(app) as srv:
        ids = [m["id"] for m in httpx.get(srv.url + "/v1/models", timeout=10).json()["data"]]
        assert ids == ["tiny", "alpha", "beta"]
        for name, key in (("tiny", None), ("alpha", "alpha"), ("beta", "beta")):
            r = httpx.post(srv.url + "/v1/completions", timeout=60,
                           json={"model": name, "prompt": PROMPTS[0], "max_tokens": N_NEW, "temperature": 0,
                                 "ignore_eos": True})
            assert r.status_code == 200 and r.json()["model"] == name
            assert r.json()["choices"][0]["text"] == tok.decode(references[key][0])
        assert httpx.post(srv.url + "/v1/completions", timeout=10,
                          json={"model": "gamma", "prompt": "x", "max_tokens": 1}).status_code == 404


@pytest.mark.parametrize("spec, message", [
    ("noequals", "expected NAME=PATH"),
    ("=somewhere", "expected NAME=PATH"),
    ("a=/definitely/not/here", "is not a folder"),
    ("a={empty}", "no adapter_config.json"),
    ("a={good}|a={good}", "already used by another --lora"),
    ("SmolLM2-135M-Instruct={good}", "the base model's"),
])
def test_bad_lora_args_exit_2_before_loading(spec, message, adapter_dirs, tmp_path, capsys, monkeypatch):
    from swisslm.cli import main
    from swisslm.cli import serve as cli_serve

    def no_load(*_a, **_k):
        raise AssertionError("the model must not load")

    # serve loads through its own `load_with_message` binding: patch that name (patching
    # common.load_model_from_args guarded nothing here, and leaked into cli modules imported
    # while it was patched, e.g. `swisslm info` in a later test)
    monkeypatch.setattr(cli_serve, "load_with_message", no_load)
    (tmp_path / "empty").mkdir()
    argv = ["serve"]
    for s in spec.split("|"):
        argv += ["--lora", s.format(empty=tmp_path / "empty", good=adapter_dirs["alpha"])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("swisslm serve: error: --lora") and message in err[0]
