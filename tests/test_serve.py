# SPDX-License-Identifier: Apache-2.0
"""The HTTP server against the real clients: the official `openai` package and huggingface_hub's
InferenceClient, talking to a live uvicorn server on 127.0.0.1.

Most tests use a tiny random Llama (hidden 64, 2 layers) that carries SmolLM2's real tokenizer
and chat template: answers are checked token for token against the model's own `generate`, so
the content is verified exactly without the cost of the 135M model.
"""

from __future__ import annotations

import base64
import functools
import json
import socket
import threading
import time

import pytest
import torch

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import swisslm  # noqa: E402
from swisslm.config import ModelConfig  # noqa: E402
from swisslm.serve import create_app  # noqa: E402

MODEL = "tiny-smollm2"


# -- fixtures -----------------------------------------------------------------------------------


class LiveServer:
    """uvicorn in a background thread on a free 127.0.0.1 port; stop() shuts it and the engine."""

    def __init__(self, app) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.shutdown()
        self.sock.close()


def tiny_lm(tokenizer, seed: int = 0, **cfg_kw):
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, max_position_embeddings=256, tie_embeddings=False,
                      initializer_range=0.25, eos_token_id=tokenizer.eos_token_ids, **cfg_kw)
    model = swisslm.AutoModel.from_config(cfg, seed=seed)
    model.eval()
    model.tokenizer = tokenizer
    return model


@functools.cache
def load_smollm2_tokenizer(path: str):
    """Cached per process, so test_serve_*.py modules share one read of the GGUF vocabulary."""
    from swisslm.io.gguf import read_gguf_tokenizer

    return read_gguf_tokenizer(path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    return load_smollm2_tokenizer(str(smollm2_path))


@pytest.fixture(scope="session")
def tiny_dir(smollm2_tokenizer, tmp_path_factory):
    """A saved HF folder: what `swisslm serve --model DIR` would load."""
    folder = tmp_path_factory.mktemp("tiny-smollm2")
    tiny_lm(smollm2_tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(tiny_dir):
    return swisslm.AutoModel.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """A second copy of the weights for offline references (the served copy's cache is the engine's)."""
    return swisslm.AutoModel.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def server(model):
    app = create_app(model, MODEL, max_batch=16, max_model_len=256, max_tokens=200)
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy_ids(ref, ids: list[int], n: int) -> list[int]:
    out = ref.generate(torch.tensor([ids]), max_new_tokens=n)
    return out[0, len(ids):].tolist()


def strip_eos(ids: list[int], eos: list[int]) -> list[int]:
    return ids[: next((i for i, t in enumerate(ids) if t in eos), len(ids))]


# -- OpenAI client --------------------------------------------------------------------------------


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    r = httpx.get(server.url + "/health", timeout=10)
    assert r.status_code == 200 and r.json()["model"] == MODEL
    spec = httpx.get(server.url + "/openapi.json", timeout=10).json()
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models", "/", "/health",
                 "/metrics"):
        assert path in spec["paths"]


def test_completion_matches_generate(client, reference):
    tok = reference.tokenizer
    prompt = "The capital of France is"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    want = greedy_ids(reference, tok.encode(prompt), 12)
    eos = tok.eos_token_ids
    assert r.choices[0].text == tok.decode(strip_eos(want, eos))
    assert r.choices[0].finish_reason == ("stop" if any(t in eos for t in want) else "length")
    assert r.usage.prompt_tokens == len(tok.encode(prompt))
    assert r.usage.completion_tokens == len(strip_eos(want, eos)) + any(t in eos for t in want)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == MODEL and r.object == "text_completion"


def test_completion_batch_prompts_echo_and_token_ids(client, reference):
    tok = reference.tokenizer
    r = client.completions.create(model=MODEL, prompt=["one two", "three"], max_tokens=5, temperature=0, n=2,
                                  echo=True, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c, prompt in zip(r.choices, ["one two", "one two", "three", "three"]):
        want = greedy_ids(reference, tok.encode(prompt), 5)
        assert c.text == prompt + tok.decode(want)
    ids = tok.encode("four five")
    r2 = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert r2.choices[0].text == tok.decode(greedy_ids(reference, ids, 4))


def test_chat_applies_template_and_stop(client, reference):
    tok = reference.tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    want = strip_eos(greedy_ids(reference, ids, 16), tok.eos_token_ids)
    text = tok.decode(want)
    assert r.choices[0].message.content == text
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids)
    # A stop string taken from the middle of the greedy answer cuts the text right before it.
    cut = len(text) // 2
    stop = text[cut:cut + 3]
    if stop.strip():
        r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0, stop=[stop])
        assert r.choices[0].message.content == text[: text.find(stop)]
        assert r.choices[0].finish_reason == "stop"


def test_chat_streaming_equals_blocking(client):
    messages = [{"role": "user", "content": "Tell me a story about a robot."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    parts, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                parts.append(c.delta.content)
            finish = c.finish_reason or finish
    assert roles == ["assistant"]
    assert "".join(parts) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens


def test_completion_streaming_raw_sse_ends_with_done(server):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 6, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[len("data: "):]) for ln in lines[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_logprobs_match_model(client, reference):
    tok = reference.tokenizer
    prompt = "Numbers: one, two,"
    ids = tok.encode(prompt)
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, logprobs=3,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    want = greedy_ids(reference, ids, 3)
    assert lp.tokens == [tok.decode([t], skip_special_tokens=False) for t in want]
    with torch.no_grad():
        logits = reference(torch.tensor([ids + want])).logits[0, len(ids) - 1:-1]  # scores of the 3 tokens
    ref_lp = torch.log_softmax(logits.float(), -1)
    for i, t in enumerate(want):
        assert lp.token_logprobs[i] == pytest.approx(float(ref_lp[i, t]), abs=1e-4)
        top = ref_lp[i].topk(3)
        assert list(lp.top_logprobs[i].values()) == pytest.approx(top.values.tolist(), abs=1e-4)
        assert max(lp.top_logprobs[i].values()) == pytest.approx(lp.token_logprobs[i], abs=1e-4)  # greedy = top
    assert lp.text_offset == [sum(len(x) for x in lp.tokens[:i]) for i in range(3)]

    c = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 2 and item.logprob <= 0
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-5)
        assert item.bytes == list(item.token.encode())


def test_seeded_sampling_is_reproducible_and_n_choices_differ(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=1.0, top_p=0.95,
              extra_body={"ignore_eos": True})
    a = client.completions.create(seed=1234, n=3, **kw)
    b = client.completions.create(seed=1234, n=3, **kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1  # choice i draws with seed + i


# -- HF inference shape ---------------------------------------------------------------------------


def test_hf_inference_client_text_generation(server, reference, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    # conftest sets HF_HUB_OFFLINE for the whole suite; this client talks only to our 127.0.0.1 server.
    from huggingface_hub import constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    tok = reference.tokenizer
    prompt = "The weather today is"
    want = strip_eos(greedy_ids(reference, tok.encode(prompt), 10), tok.eos_token_ids)
    client = hub.InferenceClient(base_url=server.url, timeout=60)
    assert client.text_generation(prompt, max_new_tokens=10) == tok.decode(want)
    details = client.text_generation(prompt, max_new_tokens=10, details=True)
    assert details.generated_text == tok.decode(want)
    assert [t.id for t in details.details.tokens][: len(want)] == want
    assert details.details.finish_reason == ("length" if len(want) == 10 else "eos_token")
    text, stop = tok.decode(want), tok.decode(want)[3:6]
    stopped = client.text_generation(prompt, max_new_tokens=10, details=True, stop=[stop])
    if stop.strip():
        assert stopped.details.finish_reason == "stop_sequence"
        assert stopped.generated_text == text[: text.find(stop)]
    streamed = "".join(client.text_generation(prompt, max_new_tokens=10, stream=True))
    assert streamed == tok.decode(want)
    full = httpx.post(server.url + "/", json={"inputs": prompt, "parameters": {"max_new_tokens": 10,
                                                                               "return_full_text": True}},
                      timeout=30)
    assert full.json() == [{"generated_text": prompt + tok.decode(want)}]


def test_hf_watermark_refused_unknown_parameters_ignored(server):
    # TGI's rules: a field we cannot honour is refused (422, TGI's error shape), unknown ones are ignored
    r = httpx.post(server.url + "/", json={"inputs": "x", "parameters": {"watermark": True, "max_new_tokens": 2}},
                   timeout=30)
    assert r.status_code == 422 and "watermark" in r.json()["error"]
    r = httpx.post(server.url + "/", json={"inputs": "x", "parameters": {"no_such": 1, "max_new_tokens": 2}},
                   timeout=30)
    assert r.status_code == 200


# -- continuous batching through HTTP ---------------------------------------------------------


def _stream_text(client, prompt: str, max_tokens: int) -> str:
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    return "".join(c.choices[0].text for c in stream if c.choices)


def test_16_concurrent_streams_equal_solo_requests(server, client, model):
    prompts = [f"Request number {i}: " + "word " * (i % 5) for i in range(16)]
    lengths = [8 + 3 * (i % 4) for i in range(16)]  # sequences leave the batch at different steps
    solo = [_stream_text(client, p, n) for p, n in zip(prompts, lengths)]
    results: list[str | None] = [None] * 16
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = _stream_text(client, prompts[i], lengths[i])
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    steps0 = server.app.state.engine.steps
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == solo
    # They really shared steps: far fewer decode forwards than tokens generated.
    assert server.app.state.engine.steps - steps0 < sum(lengths) / 2


def test_disconnecting_client_frees_its_slot(server):
    engine = server.app.state.engine
    body = {"model": MODEL, "prompt": "Go on forever", "max_tokens": 200, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", server.url + "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]
        assert got[0].startswith("data: ")
        assert engine.num_running == 1
    # The connection is closed: the row must come back well before the 200 tokens could finish.
    deadline = time.monotonic() + 10
    while engine.num_running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.num_running == 0 and engine.num_waiting == 0


def test_metrics_exposed(server, client):
    client.completions.create(model=MODEL, prompt="metrics", max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for name in ("swisslm_requests_total", "swisslm_prompt_tokens_total", "swisslm_generation_tokens_total",
                 "swisslm_num_requests_waiting", "swisslm_num_requests_running", "swisslm_batch_size_bucket",
                 "swisslm_time_to_first_token_seconds_bucket", "swisslm_inter_token_latency_seconds_bucket",
                 "swisslm_e2e_request_latency_seconds_count"):
        assert name in text, name
    line = next(ln for ln in text.splitlines()
                if ln.startswith('swisslm_requests_total{endpoint="/v1/completions",status="200"}'))
    assert float(line.split()[-1]) >= 1


# -- bad input: 4xx with an OpenAI error body, never 5xx --------------------------------------


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, ""),
    (b'"just a string"', 400, ""),
    (json.dumps({"model": MODEL, "prompt": 5}).encode(), 400, "prompt"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": "many"}).encode(), 400, "max_tokens"),
    (json.dumps({"model": MODEL, "prompt": "x", "temperature": 9}).encode(), 400, "temperature"),
    (json.dumps({"model": MODEL, "prompt": "x", "n": 1000}).encode(), 400, "n"),
    # a single-model server answers to any model name (InferenceClient sends "dummy"): test_serve_tgi.py
    (json.dumps({"model": MODEL, "prompt": "x", "response_format": {"type": "json_schema"}}).encode(), 400,
     "json_schema"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 100000}).encode(), 400, "max_tokens"),
    (json.dumps({"model": MODEL, "prompt": "x " * 300}).encode(), 400, "maximum context length"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 190, "logprobs": 99}).encode(), 400, "logprobs"),
    (json.dumps({"model": MODEL, "prompt": [10**8]}).encode(), 400, "vocabulary"),
    (json.dumps({"model": MODEL, "prompt": "x", "logit_bias": {"abc": 1}}).encode(), 400, "logit_bias"),
    (json.dumps({"model": MODEL, "prompt": "x", "temperature": float("nan")}).encode(), 400, ""),
])
def test_bad_completion_requests(server, body, status, fragment):
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert fragment in err["message"] or fragment in str(err["param"])


def test_bad_requests_other_endpoints(server, client):
    url = server.url
    r = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": []}, timeout=10)
    assert r.status_code == 400
    r = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "wizard",
                                                                                      "content": "x"}]}, timeout=10)
    assert r.status_code == 400
    r = httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": "x"}, timeout=10)
    assert r.status_code == 400 and "encoder" in r.json()["error"]["message"]
    r = httpx.get(url + "/v1/nothing-here", timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(url + "/", json={"parameters": {}}, timeout=10)
    assert r.status_code == 422 and "inputs" in r.json()["error"]  # TGI's route, TGI's status and shape
    r = httpx.post(url + "/v1/completions", content=b"x" * (2 << 20), timeout=30)
    assert r.status_code == 413
    # one model served: any name is it (huggingface_hub sends "dummy"); with adapters a stray name is a 404
    assert client.completions.create(model="other-model", prompt="x", max_tokens=2).choices
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=10**6)


# -- limits and auth (their own small servers) --------------------------------------------------


def test_full_queue_answers_429(reference):
    model = swisslm.AutoModel.from_config(reference.config)
    model.load_state_dict(reference.state_dict())
    model.tokenizer = reference.tokenizer
    # 20 ms per forward: the 200-token request surely still holds the only row while we probe.
    model.register_forward_pre_hook(lambda *_: time.sleep(0.02))
    app = create_app(model, MODEL, max_batch=1, max_queue=1, max_model_len=256)
    body = {"model": MODEL, "prompt": "long", "max_tokens": 200, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with LiveServer(app) as srv, httpx.Client(timeout=30) as http:
        engine = app.state.engine
        with http.stream("POST", srv.url + "/v1/completions", json=body) as running:
            next(running.iter_lines())  # holds the only row
            with http.stream("POST", srv.url + "/v1/completions", json=body) as queued:
                assert queued.status_code == 200
                deadline = time.monotonic() + 10
                while engine.num_waiting < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                r = http.post(srv.url + "/v1/completions", json={**body, "stream": False})
                assert r.status_code == 429
                assert r.json()["error"]["type"] == "rate_limit_error"
        assert "swisslm_queue_rejections_total 1.0" in http.get(srv.url + "/metrics").text
        # A non-streaming client that gives up (read timeout) frees its row too.
        deadline = time.monotonic() + 10
        while (engine.num_running or engine.num_waiting) and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            http.post(srv.url + "/v1/completions", json={**body, "stream": False}, timeout=0.5)
        while engine.num_running and time.monotonic() < t0 + 10:
            time.sleep(0.01)
        assert engine.num_running == 0 and engine.num_waiting == 0
        assert time.monotonic() - t0 < 3.0  # 200 tokens at >= 20 ms each would need >= 4 s


def test_api_key_required(reference):
    model = swisslm.AutoModel.from_config(reference.config)
    model.load_state_dict(reference.state_dict())
    model.tokenizer = reference.tokenizer
    app = create_app(model, MODEL, api_key="s3cret-key", max_batch=2, max_model_len=128)
    with LiveServer(app) as srv:
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200  # liveness stays open
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            r = httpx.get(srv.url + "/v1/models", headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(srv.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)
        assert r.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret-key", max_retries=0, timeout=30)
        assert good.completions.create(model=MODEL, prompt="hi", max_tokens=2).choices[0].finish_reason
        assert httpx.get(srv.url + "/metrics", headers={"X-API-Key": "s3cret-key"}, timeout=10).status_code == 200


def test_key_comparison_is_constant_time_shape():
    from swisslm.serve.auth import key_matches

    assert key_matches("abc", "abc")
    assert not key_matches("abd", "abc") and not key_matches("", "abc") and not key_matches(None, "abc")
    assert not key_matches("abc" * 1000, "abc")


# -- embeddings (encoder models) ------------------------------------------------------------------


def test_embeddings_for_encoder_model(smollm2_tokenizer):
    cfg = ModelConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_position_embeddings=64, causal=False, lm_head=False,
                      position="absolute", norm="layernorm", post_norm=True, embed_norm=True, mlp="plain",
                      activation="gelu", attn_bias=True, attn_out_bias=True, mlp_bias=True)
    enc = swisslm.AutoModel.from_config(cfg, seed=0)
    enc.eval()
    enc.tokenizer = smollm2_tokenizer
    app = create_app(enc, "tiny-encoder")
    with LiveServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=30)
        texts = ["a short one", "a somewhat longer sentence to embed"]
        r = client.embeddings.create(model="tiny-encoder", input=texts)
        assert [d.index for d in r.data] == [0, 1]
        for d, text in zip(r.data, texts):
            ids = smollm2_tokenizer.encode(text)
            with torch.no_grad():  # a plain folder (no modules.json): mean pooling, not normalised
                want = enc(torch.tensor([ids])).last_hidden_state[0].mean(0)
            torch.testing.assert_close(torch.tensor(d.embedding), want, atol=1e-5, rtol=1e-4)
        assert r.usage.prompt_tokens == sum(len(smollm2_tokenizer.encode(t)) for t in texts)
        b64 = client.embeddings.create(model="tiny-encoder", input="a short one", encoding_format="base64")
        raw = base64.b64decode(b64.data[0].embedding)  # little-endian float32, as OpenAI sends it
        torch.testing.assert_close(torch.frombuffer(bytearray(raw), dtype=torch.float32),
                                   torch.tensor(r.data[0].embedding))
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="tiny-encoder", prompt="x", max_tokens=2)


def test_embeddings_minilm_match_transformers(minilm_path):
    """The real all-MiniLM-L6-v2 through /v1/embeddings equals transformers' BertModel with
    sentence-transformers' recipe (mean pooling + Normalize, from the folder's modules.json)."""
    transformers = pytest.importorskip("transformers")
    enc = swisslm.AutoModel.from_pretrained(minilm_path)
    texts = ["A man is eating food.", "The new movie is awesome, I loved it!"]
    hf = transformers.AutoModel.from_pretrained(minilm_path).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm_path)
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = hf(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    app = create_app(enc, "all-MiniLM-L6-v2")
    with LiveServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=30)
        r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    got = torch.tensor([d.embedding for d in r.data])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
