# SPDX-License-Identifier: Apache-2.0
"""The continuous-batching engine without HTTP: token-exact against generate(), rows joining and
leaving mid-flight, seeds independent of neighbours, cancellation, the queue bound, and the
`swisslm serve` command line."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from test_serve import load_smollm2_tokenizer, tiny_lm

from swisslm.serve.engine import Engine, QueueFullError, SamplingParams, Sequence


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return load_smollm2_tokenizer(str(smollm2_path))


@pytest.fixture(scope="module")
def lm(tok):
    return tiny_lm(tok)


@pytest.fixture
def engine(lm):
    eng = Engine(lm, max_batch=4, max_model_len=200, max_queue=16)
    eng.start()
    yield eng
    eng.stop()


def run(eng: Engine, tok, jobs, wait: float = 60.0, stagger: float = 0.0):
    """Submit (prompt, params) jobs (optionally spaced out) and return each one's events."""
    events = [[] for _ in jobs]
    done = [threading.Event() for _ in jobs]

    def sink(i, ev):
        events[i].append(ev)
        if ev.finish_reason is not None:
            done[i].set()

    seqs = [Sequence(tok.encode(p), sp, lambda ev, i=i: sink(i, ev), tok, eng.eos_ids) for i, (p, sp) in
            enumerate(jobs)]
    for s in seqs:
        eng.submit([s])
        time.sleep(stagger)
    for d in done:
        assert d.wait(wait), "sequence did not finish"
    return events, seqs


def reference(lm, tok, prompt: str, n: int) -> list[int]:
    ids = tok.encode(prompt)
    lm.clear_cache()
    return lm.generate(torch.tensor([ids]), max_new_tokens=n, eos_token_id=[-1])[0, len(ids):].tolist()


def test_more_sequences_than_rows_are_token_exact(engine, lm, tok):
    """10 sequences through 4 rows: rows are reused, sequences of different lengths leave at
    different steps and waiting ones take their rows, all while staying equal to solo greedy."""
    prompts = [f"prompt {i} " + "x " * i for i in range(10)]
    lengths = [3 + 4 * (i % 3) for i in range(10)]
    jobs = [(p, SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)) for p, n in zip(prompts, lengths)]
    refs = []
    engine.stop()  # the reference runs on the same weights; give it the cache back meanwhile
    for p, n in zip(prompts, lengths):
        refs.append(reference(lm, tok, p, n))
    engine.start()
    events, seqs = run(engine, tok, jobs)
    for evs, ref, seq in zip(events, refs, seqs):
        assert [e.token_id for e in evs] == ref == seq.output_ids
        assert evs[-1].finish_reason == "length"
        assert "".join(e.text for e in evs) == tok.decode(ref)
    assert engine.num_running == 0 and engine.num_waiting == 0


def test_late_joiner_does_not_change_running_rows(engine, tok):
    sp = SamplingParams(max_new_tokens=30, temperature=0.0, ignore_eos=True)
    alone, _ = run(engine, tok, [("steady stream of words", sp)])
    mixed, _ = run(engine, tok, [("steady stream of words", sp), ("a latecomer", sp), ("another one", sp)],
                   stagger=0.01)
    assert [e.token_id for e in mixed[0]] == [e.token_id for e in alone[0]]


def test_seeded_sampling_ignores_neighbours(engine, tok):
    sp = SamplingParams(max_new_tokens=20, temperature=0.9, top_k=50, seed=7, ignore_eos=True)
    alone, _ = run(engine, tok, [("seeded", sp)])
    noisy = SamplingParams(max_new_tokens=20, temperature=1.3, ignore_eos=True)
    mixed, _ = run(engine, tok, [("other", noisy), ("seeded", sp), ("more", noisy)])
    assert [e.token_id for e in mixed[1]] == [e.token_id for e in alone[0]]


def test_stop_strings_and_eos(engine, tok):
    sp = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    (evs,), _ = run(engine, tok, [("stop test", sp)])
    text = "".join(e.text for e in evs)
    stop = text[4:7]
    (cut,), _ = run(engine, tok, [("stop test", SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True,
                                                               stop=[stop]))])
    assert "".join(e.text for e in cut) == text[: text.find(stop)]
    assert cut[-1].finish_reason == "stop" and cut[-1].stop_reason == stop
    # A stop token id ends the sequence with 'stop' and its text is not shown.
    first = evs[2].token_id
    (ended,), _ = run(engine, tok, [("stop test", SamplingParams(max_new_tokens=12, temperature=0.0,
                                                                 stop_token_ids=[first]))])
    assert [e.token_id for e in ended][-1] == first and ended[-1].finish_reason == "stop"
    assert ended[-1].stop_reason == first


def test_cancel_frees_the_row_and_queue_is_bounded(lm, tok):
    eng = Engine(lm, max_batch=1, max_model_len=200, max_queue=2)
    lm.register_forward_pre_hook(lambda *_: time.sleep(0.005))  # slow enough to probe mid-sequence
    eng.start()
    try:
        got = []
        sp = SamplingParams(max_new_tokens=150, temperature=0.0, ignore_eos=True)
        seqs = [Sequence(tok.encode("long"), sp, got.append, tok, eng.eos_ids) for _ in range(3)]
        eng.submit(seqs[:1])
        deadline = time.monotonic() + 10
        while eng.num_running == 0 and time.monotonic() < deadline:  # the first one takes the only row
            time.sleep(0.005)
        eng.submit(seqs[1:])  # fills the queue (2)
        with pytest.raises(QueueFullError):
            eng.submit([Sequence(tok.encode("one too many"), sp, got.append, tok, eng.eos_ids)])
        seqs[1].cancel()  # a queued client gives up: its place is reusable at once
        late = Sequence(tok.encode("late"), sp, got.append, tok, eng.eos_ids)
        eng.submit([late])
        for s in [*seqs, late]:
            s.cancel()
        deadline = time.monotonic() + 10
        while (eng.num_running or eng.num_waiting) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert eng.num_running == 0 and eng.num_waiting == 0
        aborted = [e for e in got if e.finish_reason == "abort"]
        assert len(aborted) == 4
        assert sum(e.token_id is not None for e in got) < 150  # the running one stopped early
    finally:
        eng.stop()
        lm._forward_pre_hooks.clear()


def test_stop_fails_pending_sequences(lm, tok):
    eng = Engine(lm, max_batch=1, max_model_len=200)
    eng.start()
    got = []
    eng.submit([Sequence(tok.encode("x"), SamplingParams(max_new_tokens=190, temperature=0.0, ignore_eos=True),
                         got.append, tok, eng.eos_ids)])
    eng.stop()
    assert got and got[-1].finish_reason in ("abort", "length")


def test_chunked_prefill_is_exact_and_interleaves_with_decode(lm, tok):
    """A long prompt prefilled 8 tokens per step: same tokens as generate(), and a running
    sequence keeps getting tokens while the long prompt is being prefilled."""
    long_prompt = "many words in a long prompt " * 12  # ~70 tokens -> ~9 chunks
    refs = [reference(lm, tok, long_prompt, 6), reference(lm, tok, "short", 40)]
    eng = Engine(lm, max_batch=2, max_model_len=200, prefill_chunk=8)
    eng.start()
    try:
        progress_at_first_token = []
        events: list[list] = [[], []]
        done = threading.Event()

        def sink_short(ev):
            events[1].append(ev)

        def sink_long(ev):
            if not events[0]:
                progress_at_first_token.append(len(events[1]))
            events[0].append(ev)
            if ev.finish_reason:
                done.set()

        sp = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
        short = Sequence(tok.encode("short"), SamplingParams(max_new_tokens=40, temperature=0.0, ignore_eos=True),
                         sink_short, tok, eng.eos_ids)
        eng.submit([short])
        deadline = time.monotonic() + 10
        while len(events[1]) < 2 and time.monotonic() < deadline:
            time.sleep(0.002)
        n_before = len(events[1])
        eng.submit([Sequence(tok.encode(long_prompt), sp, sink_long, tok, eng.eos_ids)])
        assert done.wait(60)
        while not short.finished and time.monotonic() < deadline + 30:
            time.sleep(0.01)
    finally:
        eng.stop()
    assert [e.token_id for e in events[0]] == refs[0]
    assert [e.token_id for e in events[1]] == refs[1]
    chunks = -(-len(tok.encode(long_prompt)) // 8)
    assert progress_at_first_token[0] - n_before >= chunks - 2  # one decode step per prefill chunk


@pytest.mark.parametrize("scheme", ["int8"])  # int4 shares the path; ~10 s each on 2 cores
def test_quantized_model_is_served_token_exact(tok, scheme):
    """`swisslm serve --quant` hands the engine a quantize_()d model: same tokens as its generate().

    One request at a time: the int8 path quantizes activations dynamically per tensor (fbgemm
    linear_dynamic), so in a shared batch a row's numerics depend on its neighbours' ranges and
    greedy ties can break differently; batch invariance holds for the float model only."""
    from swisslm.quant import quantize_

    lm = tiny_lm(tok)
    quantize_(lm, scheme)
    prompts = ["Hello world", "The quick brown fox", "x"]
    refs = [reference(lm, tok, p, 10) for p in prompts]
    eng = Engine(lm, max_batch=4, max_model_len=128)
    eng.start()
    try:
        events = [run(eng, tok, [(p, SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True))])[0][0]
                  for p in prompts]
    finally:
        eng.stop()
    assert [[e.token_id for e in evs] for evs in events] == refs


# -- CLI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["serve", "--port", "0"],
    ["serve", "--max-batch", "0"],
    ["serve", "--port", "70000"],
    ["serve", "--api-key", ""],
])
def test_cli_usage_errors_exit_2(argv, capsys):
    from swisslm.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("swisslm serve: error:")


def test_served_name_is_never_a_path():
    from swisslm.cli.serve import served_name

    assert served_name("/models/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert served_name("/some/dir/my-model/") == "my-model"
    assert served_name(None) == "SmolLM2-135M-Instruct"


def test_cli_serve_end_to_end(tok, tmp_path):
    """`swisslm serve` as a user runs it: binds 127.0.0.1 by default, takes the key from
    SWISSLM_API_KEY, serves the folder under its own name, and shuts down cleanly on SIGTERM."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    httpx = pytest.importorskip("httpx")
    psutil = pytest.importorskip("psutil")
    folder = tmp_path / "my-tiny-model"
    tiny_lm(tok).save_pretrained(folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SWISSLM_API_KEY": "env-key"}
    proc = subprocess.Popen([sys.executable, "-m", "swisslm", "serve", "--model", str(folder), "--port", str(port),
                             "--max-batch", "2", "--max-model-len", "128", "--threads", "1", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "server did not come up"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections() if c.status == "LISTEN"]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
        auth = {"Authorization": "Bearer env-key"}
        assert httpx.get(url + "/v1/models", headers=auth, timeout=10).json()["data"][0]["id"] == "my-tiny-model"
        r = httpx.post(url + "/v1/completions", headers=auth, timeout=30,
                       json={"model": "my-tiny-model", "prompt": "hi", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM so supervisors see it.
    assert rc in (0, -signal.SIGTERM)
    err = proc.stderr.read().decode()
    assert "Traceback" not in err
    # the KV cache's sizing is printed at start-up (rows x tokens x layers x heads x dims, bytes)
    assert "KV cache: 2 rows x 128 tokens x 2 layers x 2 kv heads x 16 dims x 2 (K, V), float32" in err


def _row_cases(tok, lm):
    """Requests that exercise every part of the row decoder: greedy and seeded sampling,
    logprobs with alternatives, a stop string taken from the unstopped text, a stop token id,
    penalties."""
    prompt = "The row pipeline"
    lm.clear_cache()
    free = lm.generate(torch.tensor([tok.encode(prompt)]), sampling=SamplingParams(max_new_tokens=24, ignore_eos=True),
                       return_dict_in_generate=True)
    text, ids = free.texts[0], free.new_tokens(0)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), "the test needs visible text to stop on"
    return prompt, [
        SamplingParams(max_new_tokens=24, logprobs=3, ignore_eos=True),
        SamplingParams(max_new_tokens=24, logprobs=0, stop=[stop], ignore_eos=True),
        SamplingParams(max_new_tokens=24, stop_token_ids=[ids[5]], ignore_eos=True),
        SamplingParams(max_new_tokens=24, temperature=0.9, top_k=50, seed=7, logprobs=2),
        SamplingParams(max_new_tokens=24, temperature=1.2, top_p=0.9, seed=11, stop=[stop], logprobs=1),
        SamplingParams(max_new_tokens=24, temperature=0.8, seed=3, repetition_penalty=1.3, presence_penalty=0.5,
                       frequency_penalty=0.2, min_new_tokens=4),
        SamplingParams(max_new_tokens=6, logit_bias={ids[3]: 100.0}, ignore_eos=True),
        SamplingParams(max_new_tokens=12, temperature=1.0, seed=5, logit_bias={ids[3]: 3.0, ids[4]: -100.0},
                       no_repeat_ngram_size=2),
    ]


def test_engine_and_generate_share_the_row_pipeline(lm, tok):
    """The same request through `Model.generate`, `Model.stream` and the serving engine gives the
    same tokens, text, finish and stop reason and logprobs (greedy and seeded sampling): both
    choose tokens with row_scores + choose_tokens and decode them with one RowDecoder."""
    prompt, cases = _row_cases(tok, lm)
    ids = tok.encode(prompt)
    refs = []
    for sp in cases:
        lm.clear_cache()
        res = lm.generate(torch.tensor([ids]), sampling=sp, return_dict_in_generate=True)
        lm.clear_cache()
        streamed = lm.stream(ids, sampling=sp)
        refs.append((res, "".join(streamed), streamed))
    eng = Engine(lm, max_batch=4, max_model_len=200)
    eng.start()
    try:
        results, _ = run(eng, tok, [(prompt, sp) for sp in cases])
    finally:
        eng.stop()
    reasons = set()
    for sp, (res, streamed_text, streamed), evs in zip(cases, refs, results):
        tokens = [e.token_id for e in evs]
        assert tokens == res.new_tokens(0) == streamed.token_ids
        assert "".join(e.text for e in evs) == res.texts[0] == streamed_text
        assert evs[-1].finish_reason == res.finish_reasons[0] == streamed.finish_reason
        stop_string = evs[-1].stop_reason if isinstance(evs[-1].stop_reason, str) else None
        assert stop_string == res.stop_strings[0]
        reasons.add((evs[-1].finish_reason, type(evs[-1].stop_reason).__name__))
        if sp.logprobs is not None:
            got = torch.tensor([e.logprob for e in evs])
            torch.testing.assert_close(got, res.logprobs[0], atol=1e-4, rtol=0)
            if sp.logprobs:
                assert [[t for t, _ in e.top_logprobs] for e in evs] == res.top_logprob_ids[0].tolist()
    # the cases did end in each way: length, a stop string, a stop token
    assert {("length", "NoneType"), ("stop", "str"), ("stop", "int")} <= reasons
    biased = [e.token_id for e in results[6]]
    assert biased == [biased[0]] * 6  # a +100 logit bias wins every step
