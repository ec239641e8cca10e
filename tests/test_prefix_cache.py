# SPDX-License-Identifier: Apache-2.0
"""Prefix cache and batched prefill in the serving engine (no HTTP): greedy tokens identical
with the cache on and off (prefixes of several lengths, one ending mid-block, eviction), a shared
prefix computed once (counted prefill tokens), several prompts prefilled in one forward, rows
that are not cache neighbours prefilled together, and the KV sizing line."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from test_serve import load_smollm2_tokenizer, tiny_lm

from swisslm.core.kv_cache import KVCache
from swisslm.serve.engine import Engine, SamplingParams, Sequence
from swisslm.serve.prefix_cache import PrefixCache, block_hashes

BLOCK = 8


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return load_smollm2_tokenizer(str(smollm2_path))


@pytest.fixture(scope="module")
def lm(tok):
    return tiny_lm(tok)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)


def submit_all(eng: Engine, tok, prompts: list[list[int]], n: int = 8, adapter=None, wait: float = 60.0):
    """Submit the prompts together (one submit: admitted in the same step); their token ids."""
    done = [threading.Event() for _ in prompts]
    seqs = [Sequence(p, greedy(n), lambda ev, i=i: ev.finish_reason and done[i].set(), tok, eng.eos_ids,
                     adapter=adapter) for i, p in enumerate(prompts)]
    eng.submit(seqs)
    for d in done:
        assert d.wait(wait), "sequence did not finish"
    return [s.output_ids for s in seqs]


def one_by_one(eng: Engine, tok, prompts: list[list[int]], n: int = 8) -> list[list[int]]:
    return [submit_all(eng, tok, [p], n)[0] for p in prompts]


def ids(seed: int, n: int, vocab: int = 2000) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n,), generator=g).tolist()


def with_engine(lm, fn, **kw):
    eng = Engine(lm, max_batch=kw.pop("max_batch", 4), max_model_len=200, prefix_block=BLOCK, **kw)
    eng.start()
    try:
        return fn(eng), eng
    finally:
        eng.stop()


def test_outputs_identical_with_cache_on_and_off(lm, tok):
    """Prompts sharing prefixes of 0, 5 (inside the first block), 16 (two blocks), 21 (mid-block)
    and 40 tokens, run one by one (so later ones hit what earlier ones cached, including blocks
    of generated tokens: a follow-up turn) and then all together."""
    system = ids(1, 40)
    prompts = [system + ids(2, 7), system[:5] + ids(3, 9), system[:16] + ids(4, 6), system[:21] + ids(5, 12),
               system + ids(6, 3), system[:16] + ids(4, 6), system + ids(2, 7)]
    first = prompts[0]
    ref_first, _ = with_engine(lm, lambda e: one_by_one(e, tok, [first])[0], prefix_cache_bytes=0)
    prompts.append(first + ref_first[:-1] + ids(7, 5))  # a follow-up turn: its history was generated
    off, eng_off = with_engine(lm, lambda e: (one_by_one(e, tok, prompts), submit_all(e, tok, prompts)),
                               prefix_cache_bytes=0)
    on, eng_on = with_engine(lm, lambda e: (one_by_one(e, tok, prompts), submit_all(e, tok, prompts)),
                             prefix_cache_bytes=1 << 20)
    assert on == off
    assert eng_off.prefix_cache is None
    pc = eng_on.prefix_cache
    assert pc.hits > 0 and pc.inserted > 0
    assert eng_on.prefill_tokens < eng_off.prefill_tokens


def test_eviction_keeps_outputs_identical(lm, tok):
    """A pool of 6 blocks for sequences of 4-5 blocks each (prompt and output): blocks are
    evicted and re-created, a hot prefix keeps being found, outputs stay those of the cache off."""
    prompts = [ids(10 + k, 28 + 4 * k) + ids(20 + i, 3) for i, k in enumerate([0, 1, 0, 2, 0, 1, 0, 2, 0])]
    off, _ = with_engine(lm, lambda e: one_by_one(e, tok, prompts), prefix_cache_bytes=0)
    block_bytes = 2 * lm.config.num_layers * lm.config.num_kv_heads * BLOCK * lm.config.head_dim * 4
    on, eng = with_engine(lm, lambda e: one_by_one(e, tok, prompts), prefix_cache_bytes=6 * block_bytes)
    assert on == off
    assert eng.prefix_cache.capacity == 6 and eng.prefix_cache.evicted > 0 and eng.prefix_cache.hits > 0


def test_shared_prefix_is_computed_once(lm, tok):
    """Six simultaneous prompts sharing a 32-token (4-block) prefix: the prefix is prefilled once
    (the other rows wait one step for its blocks), then only each prompt's own tokens."""
    prefix = ids(30, 4 * BLOCK)
    suffixes = [ids(40 + i, 3 + i) for i in range(6)]
    prompts = [prefix + s for s in suffixes]
    off, eng_off = with_engine(lm, lambda e: submit_all(e, tok, prompts), prefix_cache_bytes=0, max_batch=6)

    def both(e):
        out = submit_all(e, tok, prompts)
        counts.append(e.prefill_tokens)
        submit_all(e, tok, [prefix + ids(50, 4)])  # a later request with the same prefix
        return out

    counts: list[int] = []
    on, eng_on = with_engine(lm, both, prefix_cache_bytes=1 << 20, max_batch=6)
    assert on == off
    own = sum(len(s) for s in suffixes)
    assert eng_off.prefill_tokens == 6 * len(prefix) + own
    assert counts[0] == len(prefix) + own
    assert eng_on.prefill_tokens - counts[0] == 4  # only its own suffix


def test_prefix_cache_is_keyed_per_adapter():
    tokens = list(range(40))
    assert block_hashes(tokens, BLOCK) == block_hashes(tokens, BLOCK, None)
    assert block_hashes(tokens, BLOCK, "a")[0] != block_hashes(tokens, BLOCK)[0]
    assert len(block_hashes(tokens, BLOCK)) == 5 and len(block_hashes(tokens[:39], BLOCK)) == 4
    # a chain: the same block after a different prefix has a different name
    assert block_hashes([1] * 8 + [2] * 8, BLOCK)[1] != block_hashes([3] * 8 + [2] * 8, BLOCK)[1]


def test_pool_store_and_load_round_trip():
    caches = [KVCache(3, 2, 64, 4, torch.float32, "cpu") for _ in range(2)]
    for c in caches:
        c.k.normal_()
        c.v.normal_()
    pc = PrefixCache(caches, 8, budget_bytes=10 * 2 * 2 * 2 * 8 * 4 * 4)
    assert pc.capacity == 10
    hashes = block_hashes(list(range(24)), 8)
    assert pc.store(hashes, row=1) == 3 and pc.match(hashes) == 3
    pc.load(hashes, row=2, tokens=20)  # a prefix ending mid-block
    for c in caches:
        assert torch.equal(c.k[2, :, :20], c.k[1, :, :20]) and torch.equal(c.v[2, :, :20], c.v[1, :, :20])
        assert not torch.equal(c.k[2, :, 20:24], c.k[1, :, 20:24])


def test_waiting_prompts_share_one_prefill_forward(lm, tok):
    """Three prompts submitted together are prefilled in one (left-padded) forward and give the
    tokens each gives alone."""
    prompts = [ids(60, 10), ids(61, 12), ids(62, 14)]
    alone, _ = with_engine(lm, lambda e: one_by_one(e, tok, prompts, n=12), prefix_cache_bytes=0)
    together, eng = with_engine(lm, lambda e: submit_all(e, tok, prompts, n=12), prefix_cache_bytes=0)
    assert together == alone
    assert eng.prefill_forwards == 1 and eng.prefill_tokens == 36
    refs = []
    for p in prompts:
        lm.clear_cache()
        refs.append(lm.generate(torch.tensor([p]), max_new_tokens=12, eos_token_id=[-1])[0, len(p):].tolist())
    assert together == refs


def test_rows_that_are_not_neighbours_prefill_together(lm, tok):
    """Rows 0 and 2 free up while 1 and 3 keep decoding: the next two prompts take rows 0 and 2
    and are prefilled in one forward through a gathered-rows cache, token-exact."""
    eng = Engine(lm, max_batch=4, max_model_len=200, prefix_cache_bytes=0)
    lm.register_forward_pre_hook(lambda *_: time.sleep(0.002))  # keep rows 1 and 3 busy meanwhile
    eng.start()
    try:
        long_done = [threading.Event(), threading.Event()]

        def sink(i):
            return (lambda ev: ev.finish_reason and long_done[i // 2].set()) if i % 2 else (lambda ev: None)

        first = [Sequence(ids(70 + i, 6), greedy(80 if i % 2 else 1), sink(i), tok, eng.eos_ids) for i in range(4)]
        eng.submit(first)
        deadline = time.monotonic() + 30
        while (first[0].finished is False or first[2].finished is False) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert first[1].row == 1 and first[3].row == 3 and not first[1].finished
        forwards = eng.prefill_forwards
        new = [ids(80, 9), ids(81, 11)]
        out = submit_all(eng, tok, new, n=10)
        assert eng.prefill_forwards == forwards + 1
        for e in long_done:
            assert e.wait(60)
    finally:
        eng.stop()
        lm._forward_pre_hooks.clear()
    refs = []
    for p in new:
        lm.clear_cache()
        refs.append(lm.generate(torch.tensor([p]), max_new_tokens=10, eos_token_id=[-1])[0, len(p):].tolist())
    assert out == refs


def test_gathered_rows_cache_writes_its_rows_only():
    c = KVCache(4, 2, 16, 4, torch.float32, "cpu")
    g = c.rows(torch.tensor([3, 1]), 8)
    k = torch.randn(2, 2, 3, 4)
    kk, _ = g.update(torch.tensor([[0, 1, 2], [4, 5, 6]]), k, k + 1)
    assert torch.equal(c.k[3, :, 0:3], k[0]) and torch.equal(c.k[1, :, 4:7], k[1])
    assert torch.equal(c.v[1, :, 4:7], k[1] + 1)
    assert c.k[0].abs().sum() == 0 and c.k[2].abs().sum() == 0
    assert kk.shape == (2, 2, 8, 4) and torch.equal(kk[0], c.k[3, :, :8])
    with pytest.raises(RuntimeError):
        _ = g.k  # the one-token fused steps write .k in place: refused, never silently lost


def test_memory_summary_names_the_kv_size(lm):
    eng = Engine(lm, max_batch=4, max_model_len=200, prefix_block=BLOCK, prefix_cache_bytes=1 << 20)
    eng.start()
    try:
        line = eng.memory_summary()
    finally:
        eng.stop()
    cfg = lm.config
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    assert f"4 rows x 200 tokens x {cfg.num_layers} layers" in line
    assert f"{per_token:,} bytes per token" in line
    assert f"{4 * 200 * per_token / 2**20:,.1f} MiB" in line
    assert "prefix cache: 256 blocks of 8 tokens" in line  # 1 MiB / 4 KiB blocks


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc/self/status")
def test_kv_cache_commits_memory_only_where_written():
    """A 256 MiB cache costs (almost) nothing until written, then what is written: serve sizes
    its cache for max_batch x max_model_len without holding that much memory."""

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) / 1024

    before = rss_mib()
    c = KVCache(16, 4, 8192, 64, torch.float32, "cpu")  # 2 x 128 MiB
    assert c.nbytes == 256 << 20
    assert torch.count_nonzero(c.k[:, :, ::512]) == 0  # zero-filled
    assert rss_mib() - before < 32
    c.k[:, :, :1024] = 1.0  # an eighth of k: 16 MiB
    grown = rss_mib() - before
    assert 12 < grown < 48


def test_prompt_logprobs_with_batched_prefill_and_a_warm_prefix_cache(lm, tok):
    """decoder_input_details needs every prompt token's logits: a row asking for them is computed
    in full even when its prefix is cached, and a batched prefill gives each row its own, equal to
    one full forward of the prompt alone."""
    system = ids(11, 24)
    prompts = [system + ids(12, 5), system + ids(13, 9), ids(14, 7)]

    def run(eng: Engine) -> list[list[tuple[float, list]]]:
        submit_all(eng, tok, [system + ids(15, 3)])  # warms the cache with the shared blocks
        done = [threading.Event() for _ in prompts]
        params = SamplingParams(max_new_tokens=2, temperature=0.0, ignore_eos=True, prompt_logprobs=2)
        seqs = [Sequence(p, params, lambda ev, i=i: ev.finish_reason and done[i].set(), tok, eng.eos_ids)
                for i, p in enumerate(prompts)]
        eng.submit(seqs)
        for d in done:
            assert d.wait(60)
        return [s.prompt_logprobs for s in seqs]

    got, eng = with_engine(lm, run, prefix_cache_bytes=1 << 20)
    assert eng.prefix_cache is not None
    for p, lps in zip(prompts, got):
        assert len(lps) == len(p) - 1
        with torch.no_grad():
            ref = torch.log_softmax(lm(torch.tensor([p])).logits[0, :-1].float(), -1)
        want = ref.gather(1, torch.tensor(p[1:])[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor([lp for lp, _ in lps]), want, atol=2e-4, rtol=0)
        assert [top[0][0] for _, top in lps] == ref.argmax(-1).tolist()
