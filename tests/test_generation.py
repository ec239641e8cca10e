# SPDX-License-Identifier: Apache-2.0
"""The decode loop: ragged batches equal single runs, seeded sampling is reproducible and
batch-invariant, stop strings across token boundaries (never emitted), UTF-8-safe streaming
with emoji and CJK, logprobs as OpenAI reports them (checked against transformers' logits).

Text tests use the embedded SmolLM2's byte-level BPE tokenizer with a scripted LM that emits a
fixed token sequence, so which tokens split a character or a stop string is known exactly.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import swisslm
from swisslm.config import ModelConfig
from swisslm.generation import GenerationConfig, StopStrings, TextDeltas, run, stream, token_logprobs

VOCAB, EOS, PAD = 128, 2, 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64, max_position_embeddings=128, eos_token_id=EOS, pad_token_id=PAD)
    model = swisslm.AutoModel.from_config(cfg, seed=0).eval()
    with torch.no_grad():  # make EOS the argmax at ~10% of positions so rows finish at different steps
        ids = torch.randint(4, VOCAB, (8, 12), generator=torch.Generator().manual_seed(9))
        h = model(ids).last_hidden_state.reshape(-1, 32)
        direction = h.mean(0) / h.mean(0).norm()
        scale = model(ids).logits.std() / direction.dot(h.mean(0))
        w = model.head.proj.weight
        for step in range(60):
            w[EOS] = direction * scale * (1.1**step)
            if (model(ids).logits.argmax(-1) == EOS).float().mean() >= 0.1:
                break
    return model


def _ragged(seed: int = 0, lengths=(4, 11, 7, 1)) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, VOCAB, (n,), generator=g) for n in lengths]
    T = max(lengths)
    ids = torch.full((len(prompts), T), PAD)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = p
        mask[i, T - len(p):] = 1
    return prompts, ids, mask


RAGGED_SETTINGS = {
    "greedy": dict(),
    "penalties": dict(repetition_penalty=1.4, no_repeat_ngram_size=2),
    "sampling-seed": dict(do_sample=True, seed=1234, temperature=0.8, top_k=30, top_p=0.9),
    "sampling-seed-per-row": dict(do_sample=True, seed=[5, 6, 7, 8], min_p=0.05),
}


@pytest.mark.parametrize("name", sorted(RAGGED_SETTINGS))
def test_ragged_batch_rows_equal_single_runs(tiny, name):
    kw = RAGGED_SETTINGS[name]
    prompts, ids, mask = _ragged()
    batch = tiny.generate(ids, attention_mask=mask, max_new_tokens=12, return_dict_in_generate=True, **kw)
    assert len(set(batch.num_new_tokens)) > 1 or "stop" in batch.finish_reasons or name != "greedy"
    for i, p in enumerate(prompts):
        one = dict(kw)
        if isinstance(one.get("seed"), list):
            one["seed"] = one["seed"][i]
        alone = tiny.generate(p[None], max_new_tokens=12, return_dict_in_generate=True, **one)
        assert batch.new_tokens(i) == alone.new_tokens(0), f"row {i}"
        assert batch.finish_reasons[i] == alone.finish_reasons[0]
        # finished rows are padded after their end
        assert all(t == PAD for t in batch.sequences[i, ids.shape[1] + batch.num_new_tokens[i]:].tolist())


def test_seeded_sampling_reproducible_and_neighbour_independent(tiny):
    prompts, ids, mask = _ragged(seed=1)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.2, eos_token_id=[])
    a = tiny.generate(ids, attention_mask=mask, seed=[11, 12, 13, 14], **kw)
    b = tiny.generate(ids, attention_mask=mask, seed=[11, 12, 13, 14], **kw)
    assert torch.equal(a, b)
    # the same prompt + seed at another place in a batch with other neighbours: same tokens
    others, ids2, mask2 = _ragged(seed=2, lengths=(11, 3))
    ids3 = torch.cat([ids2, ids[2:3]])
    mask3 = torch.cat([mask2, mask[2:3]])
    c = tiny.generate(ids3, attention_mask=mask3, seed=[99, 98, 13], **kw)
    assert torch.equal(c[2, ids.shape[1]:], a[2, ids.shape[1]:])
    # different seeds give different samples; unseeded runs follow torch.manual_seed
    d = tiny.generate(ids, attention_mask=mask, seed=[21, 22, 23, 24], **kw)
    assert not torch.equal(a, d)
    torch.manual_seed(3)
    e1 = tiny.generate(ids, attention_mask=mask, **kw)
    torch.manual_seed(3)
    e2 = tiny.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(e1, e2)


def test_num_return_sequences_sampling(tiny):
    prompts, ids, mask = _ragged(lengths=(5, 8))
    out = tiny.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, seed=4, num_return_sequences=3,
                        eos_token_id=[])
    assert out.shape == (6, 16)
    assert not torch.equal(out[0], out[1])  # copies of a prompt draw from different seeds
    alone = tiny.generate(prompts[1][None], max_new_tokens=8, do_sample=True, seed=4, eos_token_id=[])
    assert torch.equal(out[3, 8:], alone[0, 8:])  # the first copy uses the seed as given


def test_logprobs_match_transformers_logits(tiny, tmp_path):
    transformers = pytest.importorskip("transformers")
    tiny.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    _, ids, mask = _ragged(lengths=(6, 9))
    res = tiny.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=[], return_dict_in_generate=True,
                        logprobs=True, top_logprobs=5, prompt_logprobs=True)
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None,
                         pad_token_id=PAD, return_dict_in_generate=True, output_logits=True)
    assert torch.equal(res.sequences, theirs.sequences)
    ref = torch.stack(theirs.logits, 1).float().log_softmax(-1)  # (B, n, V)
    chosen = ref.gather(-1, res.sequences[:, 9:, None]).squeeze(-1)
    torch.testing.assert_close(res.logprobs, chosen, atol=1e-4, rtol=0)
    top = ref.topk(5, -1)
    assert torch.equal(res.top_logprob_ids, top.indices)
    torch.testing.assert_close(res.top_logprobs, top.values, atol=1e-4, rtol=0)
    assert (res.top_logprobs[..., 0] >= res.logprobs - 1e-6).all()  # greedy: chosen is the best
    # prompt logprobs: token t given tokens < t, from a full forward; NaN at padding / first token
    full = hf(ids, attention_mask=mask).logits.float().log_softmax(-1)
    expect = full[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    got = res.prompt_logprobs
    assert math.isnan(got[0, 3]) and not math.isnan(got[0, 4])  # row 0 starts at 3 (6 of 9 tokens)
    valid = ~got[:, 1:].isnan()
    torch.testing.assert_close(got[:, 1:][valid], expect[valid], atol=1e-4, rtol=0)
    assert valid.sum() == 5 + 8
    with pytest.raises(ValueError, match="return_dict_in_generate"):
        tiny.generate(ids, max_new_tokens=2, logprobs=True)
    with pytest.raises(ValueError, match="top_logprobs"):
        tiny.generate(ids, max_new_tokens=2, top_logprobs=21, return_dict_in_generate=True)


def test_token_logprobs_function():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 0.0, 0.0, 0.0]])
    lp, ids, top = token_logprobs(logits, torch.tensor([1, 0]), top_n=2)
    ref = logits.log_softmax(-1)
    torch.testing.assert_close(lp, torch.stack([ref[0, 1], ref[1, 0]]))
    assert ids.tolist() == [[3, 2], [0, 1]] or ids[1, 0] == 0
    torch.testing.assert_close(top[0], ref[0, [3, 2]])


# -- text: stop strings and streaming, with the SmolLM2 tokenizer and a scripted LM ---------------

class ScriptedLM(torch.nn.Module):
    """Emits fixed token scripts (one per row, then EOS) through the backbone's call interface:
    the token at position p of row r is scripts[r][p - prompt_len_r]."""

    def __init__(self, scripts: list[list[int]], prompt_lens: list[int], vocab: int, eos: int) -> None:
        super().__init__()
        self.scripts, self.starts, self.vocab, self.eos = scripts, prompt_lens, vocab, eos
        self.layers = [SimpleNamespace(attn=SimpleNamespace(cache=None))]
        self.max_cache_len = 0

    def setup_cache(self, batch: int, max_len: int) -> None:
        self.layers[0].attn.cache = SimpleNamespace(k=torch.empty(batch, 0))
        self.max_cache_len = max_len

    def forward(self, input_ids, attention_mask=None, position_ids=None, input_pos=None, num_logits_to_keep=0):
        nxt = (position_ids[:, -1] + 1).tolist()
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -20.0)
        for r, p in enumerate(nxt):
            i = p - self.starts[r]
            logits[r, 0, self.scripts[r][i] if i < len(self.scripts[r]) else self.eos] = 20.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tok(smollm2):
    return smollm2.tokenizer


def _scripted(tok, texts: list[str]):
    scripts = [tok.encode(t, add_special_tokens=False) for t in texts]
    prompt = tok.encode("Q:", add_special_tokens=False)
    ids = torch.tensor([prompt] * len(texts))
    eos = tok.eos_token_ids[0]
    return ScriptedLM(scripts, [len(prompt)] * len(texts), tok.vocab_size, eos), ids, scripts, eos


def test_stop_string_across_token_boundaries(tok):
    texts = ["The answer is 42.\nUser: thanks a lot", "No stop here, just words and more words"]
    model, ids, scripts, eos = _scripted(tok, texts)
    # the stop string is split over several tokens
    pieces = [tok.decode([t]) for t in scripts[0]]
    assert not any("\nUser:" in p for p in pieces)
    cfg = GenerationConfig.from_hf(max_new_tokens=40, stop=["\nUser:", "zzz"], eos_token_id=[eos], pad_token_id=eos)
    res = run(model, ids, None, cfg, tok)
    assert res.texts[0] == "The answer is 42."
    assert res.finish_reasons[0] == "stop" and res.stop_strings[0] == "\nUser:"
    # generation of row 0 ended at the token that completed the stop string
    text_upto = tok.decode(res.new_tokens(0))
    assert text_upto.startswith("The answer is 42.\nUser:") and "thanks" not in text_upto
    # row 1 never matched: it ran to its own EOS with all its text
    assert res.texts[1] == texts[1] and res.finish_reasons[1] == "stop" and res.stop_strings[1] is None
    assert res.num_new_tokens[1] == len(scripts[1]) + 1
    # max_new_tokens: the reason is "length" and the held-back tail is released
    res = run(model, ids, None, GenerationConfig.from_hf(max_new_tokens=3, stop=["zzz"], eos_token_id=[eos]), tok)
    assert res.finish_reasons == ["length", "length"] and res.texts[1] == tok.decode(scripts[1][:3])


def test_stop_strings_matcher():
    ss = StopStrings(["\nUser:", "###"])
    out = [ss.push(d) for d in ["Hello", " wor", "ld\nU", "se", "ful", "\nUs", "er: x"]]
    assert out == ["Hello", " wor", "ld", "", "\nUseful", "", ""]
    assert ss.hit.stop == "\nUser:" and ss.hit.position == len("Hello world\nUseful")
    assert ss.push("more") == "" and ss.flush() == ""
    ss = StopStrings(["ab", "b"])
    assert ss.push("xab") == "x" and ss.hit.stop == "ab"  # earliest start wins
    ss = StopStrings(["END"])
    assert ss.push("the EN") == "the " and ss.held == "EN" and ss.flush() == "EN" and ss.hit is None


EMOJI_CJK = "Hi 👋🏽! 你好，世界 🎉 — naïve café ✓"


def test_stream_utf8_emoji_and_cjk(tok):
    model, ids, scripts, eos = _scripted(tok, [EMOJI_CJK])
    # some character really is split across tokens
    assert any("\ufffd" in tok.decode([t]) for t in scripts[0])
    cfg = GenerationConfig.from_hf(max_new_tokens=60, eos_token_id=[eos])
    s = stream(model, ids, cfg, tok)
    deltas = list(s)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == EMOJI_CJK == s.text
    assert len(deltas) < len(scripts[0])  # partial characters were held back
    assert s.finish_reason == "stop" and s.token_ids == scripts[0] + [eos]
    # incremental decode == full decode at every step
    td = TextDeltas(tok)
    acc = ""
    for i, t in enumerate(scripts[0]):
        acc += td.push(t)
        full = tok.decode(scripts[0][: i + 1])
        assert full.startswith(acc) and (full == acc or full.endswith("\ufffd"))


def test_stream_never_shows_a_stop_string(tok):
    model, ids, scripts, eos = _scripted(tok, ["Sure 🎉 here:\n###\nsecret"])
    cfg = GenerationConfig.from_hf(max_new_tokens=60, eos_token_id=[eos], stop=["\n###"])
    s = stream(model, ids, cfg, tok)
    deltas = list(s)
    assert "".join(deltas) == "Sure 🎉 here:" and s.finish_reason == "stop"
    assert all("#" not in d for d in deltas)


def test_real_model_stream_equals_generate(smollm2):
    ids = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": "Say hi in Japanese."}],
                                                add_generation_prompt=True, tokenize=True)
    out = smollm2.generate(torch.tensor([ids]), max_new_tokens=12, return_dict_in_generate=True)
    s = smollm2.stream(ids, max_new_tokens=12)
    assert "".join(s) == out.texts[0] == smollm2.tokenizer.decode(out.new_tokens(0))
    assert s.token_ids == out.new_tokens(0) and s.finish_reason == out.finish_reasons[0]


def test_beam_sampling_seeded(tiny):
    _, ids, mask = _ragged(lengths=(5, 8))
    kw = dict(max_new_tokens=8, num_beams=3, do_sample=True, temperature=0.9, num_return_sequences=2,
              return_dict_in_generate=True)
    a = tiny.generate(ids, attention_mask=mask, seed=7, **kw)
    b = tiny.generate(ids, attention_mask=mask, seed=7, **kw)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.sequences_scores, b.sequences_scores)
    assert a.sequences.shape[0] == 4 and (a.sequences_scores[0::2] >= a.sequences_scores[1::2]).all()


def test_config_validation(tiny):
    ids = torch.tensor([[5, 6, 7]])
    for bad, match in ((dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
                       (dict(num_return_sequences=2), "needs sampling"),
                       (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
                       (dict(num_beams=2, stop=["x"]), "stop strings"),
                       (dict(do_sample=True, seed=[1, 2]), "2 seeds for 1 prompts")):
        with pytest.raises(ValueError, match=match):
            tiny.generate(ids, max_new_tokens=2, **bad)
    with pytest.raises(TypeError, match="unexpected"):
        tiny.generate(ids, max_new_tokens=2, num_beam=2)
