# SPDX-License-Identifier: Apache-2.0
"""Log-likelihood scoring of continuations (lm-evaluation-harness's loglikelihood) and the
`swisslm eval-choices` command."""

from __future__ import annotations

import json

import pytest
import torch

from swisslm.generation import encode_pair, loglikelihood

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def _reference(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([ctx + cont])
    lp = model(ids).logits[0].log_softmax(-1)
    pos = range(len(ctx) - 1, len(ctx) + len(cont) - 1)
    total = sum(float(lp[p, t]) for p, t in zip(pos, cont))
    greedy = all(int(lp[p].argmax()) == t for p, t in zip(pos, cont))
    return total, greedy


def test_loglikelihood_batched_equals_single(tiny):
    g = torch.Generator().manual_seed(0)
    reqs = [(torch.randint(0, 64, (n,), generator=g).tolist(), torch.randint(0, 64, (m,), generator=g).tolist())
            for n, m in ((5, 1), (12, 4), (1, 7), (30, 2), (8, 8))]
    for bs in (1, 3, 8):
        res = loglikelihood(tiny, reqs, batch_size=bs)
        for (ctx, cont), r in zip(reqs, res):
            ref, greedy = _reference(tiny, ctx, cont)
            assert abs(r.logprob - ref) < 1e-4 and r.is_greedy == greedy and len(r.token_logprobs) == len(cont)
    # truncation on the left to max_length, as the harness does
    ctx, cont = list(range(40)), [1, 2, 3]
    r = loglikelihood(tiny, [(ctx, cont)], max_length=10)[0]
    ref, _ = _reference(tiny, ctx[-(10 + 1 - 3):], cont)
    assert abs(r.logprob - ref) < 1e-4


def test_encode_pair_moves_context_whitespace(smollm2):
    tok = smollm2.tokenizer
    ctx, cont = encode_pair(tok, "The capital of France is ", "Paris")
    assert ctx == tok.encode("The capital of France is") and tok.decode(cont) == " Paris"
    ctx, cont = encode_pair(tok, "Answer:", " Paris")
    assert ctx + cont == tok.encode("Answer: Paris") and ctx == tok.encode("Answer:")


ITEMS = [
    {"context": "Question: What is the capital of France?\nAnswer:", "choices": [" Berlin", " Paris", " Madrid"],
     "gold": 1},
    {"context": "The sun rises in the", "choices": [" east", " west"], "gold": 0},
    {"context": "Water freezes at zero degrees", "choices": [" Celsius", " Fahrenheit"], "label": 0},
    {"context": "One, two, three, four,", "choices": [" five", " banana"]},
]


def test_cli(smollm2, tmp_path, monkeypatch, capsys):
    from swisslm.cli import main

    monkeypatch.setattr("swisslm.cli.eval_choices.load_model_from_args", lambda args: smollm2)
    f = tmp_path / "items.jsonl"
    f.write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n", encoding="utf-8")
    assert main(["eval-choices", str(f), "--json", "--batch-size", "4"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["num_items"] == 4 and rep["num_graded"] == 3
    assert rep["acc"] == 1.0 and rep["acc_norm"] == 1.0  # easy items for a real model
    item = rep["items"][0]
    scores = smollm2.score(ITEMS[0]["context"], ITEMS[0]["choices"])
    assert item["logprobs"] == pytest.approx([s.logprob for s in scores], abs=1e-4)
    assert item["logprobs_per_char"] == pytest.approx([s.logprob / len(c) for s, c in
                                                      zip(scores, ITEMS[0]["choices"])], abs=1e-4)
    assert rep["items"][3]["gold"] is None and rep["items"][3]["pred"] == 0
    assert main(["eval-choices", str(f)]) == 0
    assert "acc 1.0000" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "x", "choices": ["a", "b"], "gold": 5}) + "\n")
    assert main(["eval-choices", str(bad)]) == 2
    assert "gold must be an index" in capsys.readouterr().err
    bad.write_text("{not json\n")
    assert main(["eval-choices", str(bad)]) == 2
