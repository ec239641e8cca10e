# SPDX-License-Identifier: Apache-2.0
"""Sliding-window perplexity: the embedded SmolLM2 on a fixed text against transformers running
HF's perplexity-guide loop on the same weights (within 0.5%, and per-token to 1e-4 when both
weight tokens the same way), plus window/stride edge cases and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from swisslm.generation import perplexity, perplexity_details

TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. Locally nicknamed "
    '"La dame de fer" (French for "Iron Lady"), it was constructed as the centrepiece of the 1889 World\'s Fair. '
    "Although initially criticised by some of France's leading artists and intellectuals for its design, it has "
    "since become a global cultural icon of France and one of the most recognisable structures in the world. "
    "The tower received 5,889,000 visitors in 2022. It was designated a monument historique in 1964, and was "
    'named part of a UNESCO World Heritage Site ("Paris, Banks of the Seine") in 1991. The tower is 330 metres '
    "tall, about the same height as an 81-storey building, and the tallest structure in Paris."
)


pytestmark = pytest.mark.usefixtures("one_thread")


def guide_perplexity(hf_model, ids: torch.Tensor, max_length: int, stride: int) -> float:
    """HF's "Perplexity of fixed-length models" loop, verbatim in substance."""
    seq_len = ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf_model(input_ids, labels=target_ids).loss
        num_loss_tokens = (target_ids != -100).sum().item() - target_ids.size(0)
        nll_sum += loss.item() * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens)


def test_smollm2_matches_transformers(smollm2, tmp_path):
    transformers = pytest.importorskip("transformers")
    smollm2.save_pretrained(tmp_path)  # the same (GGUF-decoded) weights; test_gguf checks the decoding
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.tensor([smollm2.tokenizer.encode(TEXT)])
    assert 200 < ids.shape[1] < 300
    ours = perplexity_details(smollm2, ids, 128, 64)  # overlapping windows
    theirs = guide_perplexity(hf, ids, 128, 64)
    assert abs(ours.perplexity / theirs - 1) < 0.005, (ours.perplexity, theirs)
    assert ours.num_tokens == ids.shape[1] - 1 and ours.num_windows == 3
    assert 2 < ours.perplexity < 30  # a real model on plain English
    # disjoint windows: the guide's weighting is exact there, so the two agree to float noise
    ours = perplexity_details(smollm2, ids, 96, 96)
    assert abs(ours.perplexity / guide_perplexity(hf, ids, 96, 96) - 1) < 1e-5
    assert ours.num_tokens == ids.shape[1] - 3  # each window's first token has no context to be scored


@torch.no_grad()
def _nll_full(model, ids: torch.Tensor) -> float:
    logits = model(ids[None]).logits[0, :-1]
    return float(torch.nn.functional.cross_entropy(logits, ids[1:]))


def test_windows_and_strides(tiny):
    ids = torch.randint(0, 64, (50,), generator=torch.Generator().manual_seed(0))
    # one window covering everything = the plain full-context NLL, whatever the stride
    for stride in (1, 7, 64):
        assert math.isclose(perplexity(tiny, ids, 64, stride), math.exp(_nll_full(tiny, ids)), rel_tol=1e-5)
    # disjoint windows = independent chunks (each chunk's first token unscored after the first)
    r = perplexity_details(tiny, ids, 20, 20)
    chunks = [ids[0:20], ids[20:40], ids[40:50]]
    nll_first = _nll_full(tiny, chunks[0]) * 19
    nll_later = []  # later chunks: every token but their first is scored, without earlier context
    for c in chunks[1:]:
        with torch.no_grad():
            lg = tiny(c[None]).logits[0, :-1]
        nll_later.append(float(torch.nn.functional.cross_entropy(lg, c[1:], reduction="sum")))
    assert r.num_windows == 3 and r.num_tokens == 19 + 19 + 9
    assert math.isclose(r.nll, (nll_first + sum(nll_later)) / r.num_tokens, rel_tol=1e-5)
    # stride 1 with a short window: each token predicted from (up to) window-1 previous tokens
    r1 = perplexity_details(tiny, ids[:12], 4, 1)
    assert r1.num_tokens == 11
    with pytest.raises(ValueError, match="stride"):
        perplexity(tiny, ids, 8, 9)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(tiny, ids[:1], 8, 4)


def test_cli_json(smollm2, tmp_path, monkeypatch, capsys):
    from swisslm.cli import common, main

    monkeypatch.setattr(common, "load_model_from_args", lambda args: smollm2)
    monkeypatch.setattr("swisslm.cli.perplexity.load_model_from_args", lambda args: smollm2)
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    assert main(["perplexity", str(f), "--max-tokens", "100", "--window", "64", "--stride", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = smollm2.tokenizer.encode(TEXT)[:100]
    assert out["num_tokens"] == 99 and out["window"] == 64 and out["stride"] == 32
    assert math.isclose(out["perplexity"], perplexity(smollm2, ids, 64, 32), rel_tol=1e-9)
    assert main(["perplexity", str(f), "--window", "64", "--stride", "65"]) == 2
    assert "--stride" in capsys.readouterr().err
    assert main(["perplexity", str(tmp_path / "missing.txt")]) == 2
