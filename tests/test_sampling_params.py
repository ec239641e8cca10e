# SPDX-License-Identifier: Apache-2.0
"""SamplingParams, the one sampling record: validation in its constructor, no torch import (the
CLI validates before loading a model), CLI flags generated from its fields, HF's generate()
keywords mapped onto it, and the no-sync sampler that every row pipeline draws with."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swisslm.generation import GenerationConfig, SamplingParams, add_cli_args, from_cli_args
from swisslm.generation.sampling import choose_tokens, make_generator

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("bad, field", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-2), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=2.0), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(presence_penalty=float("inf")), "presence_penalty"),
    (dict(logprobs=21), "logprobs"),
    (dict(min_new_tokens=-3), "min_new_tokens"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(seed=1.5), "seed"),
    (dict(logit_bias={-1: 1.0}), "logit_bias"),
])
def test_invalid_values_name_the_field(bad, field):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SamplingParams(**bad)


def test_defaults_and_normalisation():
    p = SamplingParams(stop="###", logit_bias={"5": 2})
    assert p.greedy and p.plain_greedy is False and p.stop == ["###"] and p.logit_bias == {5: 2.0}
    assert SamplingParams().plain_greedy and not SamplingParams(temperature=0.7).greedy


def test_importing_params_does_not_import_torch():
    """The record's module and the generation package's lazy __init__ stay torch-free. The
    top-level package is stubbed so that this checks generation/ alone."""
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('swisslm'); pkg.__path__ = [{str(SRC / 'swisslm')!r}]\n"
        "sys.modules['swisslm'] = pkg\n"
        "import argparse\n"
        "from swisslm.generation.params import SamplingParams, add_cli_args, from_cli_args\n"
        "import swisslm.generation as g\n"
        "p = argparse.ArgumentParser(); add_cli_args(p)\n"
        "from_cli_args(p.parse_args(['--temperature', '0.5']))\n"
        "assert g.SamplingParams is SamplingParams\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # and through the real (lazy) top-level package, as the CLI imports it
    plain = "import swisslm.generation.params, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_flags_come_from_the_record():
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    flags = {a.dest: (a.option_strings[0], a.type, a.default) for a in parser._actions if a.dest != "help"}
    # the names and defaults `swisslm generate` / `swisslm chat` always had
    assert flags == {
        "max_new_tokens": ("--max-new-tokens", int, 128), "temperature": ("--temperature", float, 0.0),
        "top_k": ("--top-k", int, 0), "top_p": ("--top-p", float, 1.0), "min_p": ("--min-p", float, 0.0),
        "typical_p": ("--typical-p", float, 1.0),
        "repetition_penalty": ("--repetition-penalty", float, 1.0), "seed": ("--seed", int, None),
    }
    args = parser.parse_args(["--temperature", "0.7", "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "5"])
    p = from_cli_args(args, stop=["\n"], logprobs=2)
    assert (p.temperature, p.top_p, p.seed, p.max_new_tokens, p.stop, p.logprobs) == (0.7, 0.9, 3, 5, ["\n"], 2)
    assert from_cli_args(parser.parse_args([])) == SamplingParams()


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be > 0"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be > 0"),
])
def test_cli_errors_name_the_flag(argv, message):
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    with pytest.raises(ValueError) as e:
        from_cli_args(parser.parse_args(argv))
    assert str(e.value).startswith(message)


def test_hf_keywords_map_onto_the_record():
    cfg = GenerationConfig.from_hf(max_new_tokens=7, do_sample=True, temperature=0.6, top_k=5, seed=[1, 2],
                                   top_logprobs=3, eos_token_id=2, num_return_sequences=2)
    p = cfg.params
    assert (p.max_new_tokens, p.temperature, p.top_k, p.seed, p.logprobs) == (7, 0.6, 5, None, 3)
    assert cfg.seeds == [1, 2] and cfg.eos_token_id == [2] and cfg.prompt_logprobs is None
    assert GenerationConfig.from_hf(temperature=0.6).params.greedy  # do_sample=False is greedy
    only_prompt = GenerationConfig.from_hf(prompt_logprobs=True, top_logprobs=4)
    assert only_prompt.prompt_logprobs == 4 and only_prompt.params.logprobs is None
    with pytest.raises(ValueError, match="temperature must be > 0 when sampling"):
        GenerationConfig.from_hf(do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="^top_logprobs must be in"):
        GenerationConfig.from_hf(top_logprobs=21)
    with pytest.raises(TypeError, match="unexpected keyword"):
        GenerationConfig.from_hf(num_beam=2)


def test_no_sync_sampler_follows_the_distribution_and_the_row_seed():
    probs = torch.tensor([0.1, 0.6, 0.3, 0.0])
    scores = probs.log().expand(20000, -1)
    drawn = choose_tokens(scores, greedy=False, generators=make_generator(0, "cpu"))
    freq = torch.bincount(drawn, minlength=4).float() / drawn.numel()
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)  # ~5 sigma at n=20000
    assert freq[3] == 0  # a token of probability 0 is never drawn
    # per-row generators: a row's draw depends on its own seed only
    logits = torch.randn(3, 50)
    alone = choose_tokens(logits[1:2], False, [make_generator(7, "cpu")])
    mixed = choose_tokens(logits, False, [make_generator(1, "cpu"), make_generator(7, "cpu"),
                                          make_generator(2, "cpu")])
    assert mixed[1] == alone[0]
    assert torch.equal(choose_tokens(logits, True), logits.argmax(-1))


def test_row_scores_applies_bias_penalties_and_min_new_tokens():
    from swisslm.generation.sampling import row_scores

    logits = torch.zeros(2, 6)
    p = SamplingParams(logit_bias={4: 5.0}, presence_penalty=0.5, frequency_penalty=0.25, min_new_tokens=2)
    generated = torch.tensor([[1, 1, 3], [2, -1, -1]])  # -1: no token (a row that ended)
    got = row_scores(logits, p, step=1, eos_ids=[0], generated=generated)
    expect = torch.zeros(2, 6)
    expect[:, 4] = 5.0
    expect[0, 1] = -(0.5 + 2 * 0.25)  # presence once, frequency per occurrence
    expect[0, 3] = expect[1, 2] = -0.75
    expect[:, 0] = float("-inf")  # EOS masked before min_new_tokens
    assert torch.equal(got, expect)
    assert row_scores(logits, p, step=2, eos_ids=[0], generated=generated)[:, 0].isfinite().all()


def test_generate_takes_a_record_or_hf_keywords_not_both():
    import swisslm
    from swisslm.config import ModelConfig

    model = swisslm.AutoModel.from_config(ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4,
                                                      num_kv_heads=2, intermediate_size=64), seed=0).eval()
    ids = torch.tensor([[5, 6, 7]])
    sp = SamplingParams(max_new_tokens=4, temperature=0.7, seed=3)
    a = model.generate(ids, sampling=sp, eos_token_id=[])
    b = model.generate(ids, max_new_tokens=4, do_sample=True, temperature=0.7, seed=3, eos_token_id=[])
    assert torch.equal(a, b) and a.shape == (1, 7)
    with pytest.raises(TypeError, match="not both"):
        model.generate(ids, sampling=sp, temperature=0.5)
    with pytest.raises(TypeError, match="not both"):
        model.generate(ids, sampling=sp, top_logprobs=2)
