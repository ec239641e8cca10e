# SPDX-License-Identifier: Apache-2.0
"""Beam search (and greedy) at parity with transformers' generate on tiny random models of
three families: token-identical sequences and `sequences_scores` within 1e-4, batch 1 and 3,
ragged (left-padded) batches, num_return_sequences, length_penalty / early_stopping variants,
no_repeat_ngram_size, min_new_tokens, repetition_penalty and several EOS ids.

The EOS row of each model's output projection is pulled towards a common token's row so that
hypotheses actually finish early: without that a random model almost never emits EOS and the
finished-hypotheses bookkeeping (the subtle part of beam search) would go untested.
"""

from __future__ import annotations

import pytest
import torch
from parity import load_pair

transformers = pytest.importorskip("transformers")

VOCAB, EOS, PAD = 96, 2, 3
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=128, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(num_key_value_heads=2, **COMMON))


def _gpt_neox():
    cfg = transformers.GPTNeoXConfig(rotary_pct=0.5, use_parallel_residual=True, **COMMON)
    return transformers.GPTNeoXForCausalLM(cfg)


def _granite():
    cfg = transformers.GraniteConfig(num_key_value_heads=1, embedding_multiplier=2.0, residual_multiplier=0.5,
                                     attention_multiplier=0.2, logits_scaling=1.5, tie_word_embeddings=True, **COMMON)
    return transformers.GraniteForCausalLM(cfg)


pytestmark = pytest.mark.usefixtures("one_thread")


FAMILIES = {"llama-gqa": _llama, "gpt-neox": _gpt_neox, "granite-tied": _granite}


def _make_eos_likely(hf) -> None:
    """Point EOS's output row along the mean final hidden state, scaled until EOS is the argmax
    at 10-30% of random positions (and the second EOS candidate, 7, a bit less often)."""
    ids = torch.randint(4, VOCAB, (8, 12), generator=torch.Generator().manual_seed(9))
    h = hf.base_model(ids).last_hidden_state.reshape(-1, COMMON["hidden_size"])
    direction = h.mean(0) / h.mean(0).norm()
    w = hf.get_output_embeddings().weight
    scale = hf(ids).logits.std() / direction.dot(h.mean(0))
    for tok, lo in ((EOS, 0.1), (7, 0.05)):
        for step in range(60):
            w[tok] = direction * scale * (1.1**step)
            if (hf(ids).logits.argmax(-1) == tok).float().mean() >= lo:
                break


@pytest.fixture(params=sorted(FAMILIES), scope="module")
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = FAMILIES[request.param]()
    with torch.no_grad():
        _make_eos_likely(hf)
    return hf, load_pair(hf, tmp_path_factory.mktemp(request.param))


def _prompts(batch: int, ragged: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 9, 7][:batch] if ragged else [8] * batch
    T = max(lengths)
    ids = torch.full((batch, T), PAD)
    mask = torch.zeros(batch, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n:] = torch.randint(4, VOCAB, (n,), generator=g)
        mask[i, T - n:] = 1
    return ids, mask


CASES = {
    "b1-greedy": (1, False, dict(num_beams=1)),
    "b3-greedy-ragged": (3, True, dict(num_beams=1)),
    "b1-beam4": (1, False, dict(num_beams=4)),
    "b3-beam4": (3, False, dict(num_beams=4)),
    "b3-beam4-ret2-ragged": (3, True, dict(num_beams=4, num_return_sequences=2)),
    "b3-beam4-lp0.5-early": (3, False, dict(num_beams=4, length_penalty=0.5, early_stopping=True)),
    "b3-beam3-lp2-never-ret3": (3, False, dict(num_beams=3, length_penalty=2.0, early_stopping="never",
                                                num_return_sequences=3)),
    "b3-beam4-ngram2-2eos": (3, False, dict(num_beams=4, no_repeat_ngram_size=2, eos_token_id=[EOS, 7])),
    "b3-beam4-min5-ragged": (3, True, dict(num_beams=4, min_new_tokens=5)),
    "b3-greedy-min4-penalty": (3, False, dict(num_beams=1, min_new_tokens=4, repetition_penalty=1.3)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(pair, case):
    hf, ours = pair
    batch, ragged, kw = CASES[case]
    kw = {"eos_token_id": [EOS], **kw}
    ids, mask = _prompts(batch, ragged)
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD,
                         return_dict_in_generate=True, output_scores=True, **kw)
    mine = ours.generate(ids, attention_mask=mask, max_new_tokens=10, pad_token_id=PAD,
                         return_dict_in_generate=True, **kw)
    assert torch.equal(theirs.sequences, mine.sequences), f"\n{theirs.sequences}\n{mine.sequences}"
    if kw["num_beams"] > 1:
        torch.testing.assert_close(mine.sequences_scores, theirs.sequences_scores, atol=1e-4, rtol=0)
    # the bookkeeping is exercised: some hypothesis ended on EOS before the length limit
    if case == "b3-beam4-lp0.5-early":  # the finished-hypotheses bookkeeping was exercised
        assert "stop" in mine.finish_reasons
    # lengths and reasons agree with the tokens
    for r, n in enumerate(mine.num_new_tokens):
        row = mine.sequences[r, ids.shape[1]:].tolist()
        assert all(t == PAD for t in row[n:])
        assert (mine.finish_reasons[r] == "stop") == (n > 0 and row[n - 1] in kw["eos_token_id"])


def test_beam_batch_rows_equal_single_prompts(pair):
    """Ragged batch with beams: each prompt's beams equal the beams of that prompt alone."""
    _, ours = pair
    ids, mask = _prompts(3, ragged=True, seed=3)
    kw = dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, eos_token_id=[EOS], pad_token_id=PAD,
              return_dict_in_generate=True)
    batch = ours.generate(ids, attention_mask=mask, **kw)
    for b in range(3):
        alone = ours.generate(ids[b : b + 1, mask[b].argmax():], **kw)
        for j in range(2):
            assert batch.new_tokens(2 * b + j) == alone.new_tokens(j)
            assert abs(float(batch.sequences_scores[2 * b + j] - alone.sequences_scores[j])) < 1e-4
