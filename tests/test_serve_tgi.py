# SPDX-License-Identifier: Apache-2.0
"""TGI / HF inference API parity against huggingface_hub's InferenceClient and raw HTTP: POST /,
/generate, /generate_stream, /info, GET /; details with top_tokens and prefill, truncate,
typical_p, best_of, grammar, watermark refused; chat with the client's default model name and
response_format; an encoder's feature-extraction and sentence-similarity on POST /.

Generation uses the tiny random Llama with SmolLM2's tokenizer (test_serve.py), checked token for
token against the model's own generate(); the encoder is the embedded all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

hub = pytest.importorskip("huggingface_hub")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from test_serve import LiveServer, greedy_ids, load_smollm2_tokenizer, strip_eos, tiny_lm  # noqa: E402

import swisslm  # noqa: E402
from swisslm.serve import create_app  # noqa: E402

PROMPT = "The weather today is"


def _f(obj, key):
    """A field of a parsed client object (huggingface_hub leaves lists of lists as dicts)."""
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch):
    # conftest sets HF_HUB_OFFLINE; these clients talk only to our 127.0.0.1 server.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return load_smollm2_tokenizer(str(smollm2_path))


@pytest.fixture(scope="module")
def reference(tok):
    return tiny_lm(tok)


@pytest.fixture(scope="module")
def server(tok):
    app = create_app(tiny_lm(tok), "tiny-tgi", max_batch=8, max_model_len=256, max_tokens=64)
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return hub.InferenceClient(base_url=server.url, timeout=60)


def test_text_generation_details_top_tokens_prefill(client, reference, tok):
    ids = tok.encode(PROMPT)
    want = strip_eos(greedy_ids(reference, ids, 8), tok.eos_token_ids)
    out = client.text_generation(PROMPT, max_new_tokens=8, details=True, top_n_tokens=3,
                                 decoder_input_details=True)
    assert out.generated_text == tok.decode(want)
    d = out.details
    assert [t.id for t in d.tokens][: len(want)] == want
    assert len(d.top_tokens) == len(d.tokens) and all(len(tt) == 3 for tt in d.top_tokens)
    for t, tt in zip(d.tokens, d.top_tokens):  # greedy: the chosen token is the best alternative
        assert _f(tt[0], "id") == t.id and math.isclose(_f(tt[0], "logprob"), t.logprob, abs_tol=1e-5)
        assert _f(tt[0], "logprob") >= _f(tt[1], "logprob") >= _f(tt[2], "logprob")
    # prefill: every prompt token, the first without a logprob, the others as the model scores them
    assert [t.id for t in d.prefill] == ids
    assert d.prefill[0].logprob is None
    with torch.no_grad():
        lp = torch.log_softmax(reference(torch.tensor([ids])).logits[0].float(), -1)
    for j in range(1, len(ids)):
        assert math.isclose(d.prefill[j].logprob, float(lp[j - 1, ids[j]]), abs_tol=1e-4)


def test_text_generation_stream_with_details(client, reference, tok):
    want = strip_eos(greedy_ids(reference, tok.encode(PROMPT), 8), tok.eos_token_ids)
    chunks = list(client.text_generation(PROMPT, max_new_tokens=8, stream=True, details=True, top_n_tokens=2))
    assert [c.token.id for c in chunks][: len(want)] == want
    assert all(len(c.top_tokens) == 2 for c in chunks)
    assert chunks[-1].generated_text == tok.decode(want)
    assert chunks[-1].details.generated_tokens == len(chunks)
    assert "".join(client.text_generation(PROMPT, max_new_tokens=8, stream=True)) == tok.decode(want)
    with pytest.raises(Exception, match="decoder_input_details"):  # TGI refuses it on a stream, so do we
        list(client.text_generation(PROMPT, max_new_tokens=2, stream=True, details=True, decoder_input_details=True))


def test_generate_and_generate_stream_routes(server, reference, tok):
    want = tok.decode(strip_eos(greedy_ids(reference, tok.encode(PROMPT), 6), tok.eos_token_ids))
    r = httpx.post(server.url + "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 6}}, timeout=30)
    assert r.status_code == 200 and r.json() == {"generated_text": want}
    with httpx.stream("POST", server.url + "/generate_stream", timeout=30,
                      json={"inputs": PROMPT, "parameters": {"max_new_tokens": 6}}) as s:
        events = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    assert events[-1]["generated_text"] == want and events[-1]["details"]["finish_reason"] in ("length", "eos_token")
    info = httpx.get(server.url + "/info", timeout=10).json()
    assert info["model_id"] == "tiny-tgi" and info["max_total_tokens"] == 256
    assert httpx.get(server.url + "/", timeout=10).status_code == 200


def test_batch_inputs_and_truncate(server, reference, tok):
    prompts = [PROMPT, "Once upon a time"]
    r = httpx.post(server.url + "/", json={"inputs": prompts, "parameters": {"max_new_tokens": 5}}, timeout=30)
    assert r.status_code == 200
    assert [x["generated_text"] for x in r.json()] == [
        tok.decode(strip_eos(greedy_ids(reference, tok.encode(p), 5), tok.eos_token_ids)) for p in prompts]
    # truncate keeps the last N prompt tokens (TGI's rule)
    long = "Alpha beta gamma delta epsilon. " + PROMPT
    ids = tok.encode(long)
    r = httpx.post(server.url + "/", json={"inputs": long, "parameters": {"max_new_tokens": 5, "truncate": 4,
                                                                         "details": True,
                                                                         "decoder_input_details": True}},
                   timeout=30)
    body = r.json()[0]
    assert [t["id"] for t in body["details"]["prefill"]] == ids[-4:]
    assert body["generated_text"] == tok.decode(strip_eos(greedy_ids(reference, ids[-4:], 5), tok.eos_token_ids))


def test_watermark_refused_422(server, client):
    r = httpx.post(server.url + "/", json={"inputs": "x", "parameters": {"watermark": True}}, timeout=30)
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation" and "watermark" in r.json()["error"]
    with pytest.raises(Exception, match="watermark"):
        client.text_generation("x", max_new_tokens=2, watermark=True)
    # watermark=false (the client's default) and unknown parameters are accepted, as TGI does
    r = httpx.post(server.url + "/", json={"inputs": "x", "parameters": {"watermark": False, "max_new_tokens": 2,
                                                                        "not_a_tgi_field": 1}}, timeout=30)
    assert r.status_code == 200


def test_best_of_picks_highest_logprob(server):
    r = httpx.post(server.url + "/generate", timeout=60, json={
        "inputs": PROMPT, "parameters": {"max_new_tokens": 6, "best_of": 3, "do_sample": True, "details": True}})
    assert r.status_code == 200, r.text
    d = r.json()["details"]
    others = d["best_of_sequences"]
    assert len(others) == 2

    def total(det):
        return sum(t["logprob"] for t in det["tokens"])

    assert all(total(d) >= total(o) - 1e-6 for o in others)
    assert len({d["seed"], *(o["seed"] for o in others)}) == 3
    bad = httpx.post(server.url + "/generate", timeout=30, json={"inputs": "x", "parameters": {"best_of": 2}})
    assert bad.status_code == 422 and "sampling" in bad.json()["error"]


def test_typical_p_seeded_is_reproducible(server):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "typical_p": 0.5, "seed": 3, "details": True}}
    a = httpx.post(server.url + "/generate", json=body, timeout=30).json()
    b = httpx.post(server.url + "/generate", json=body, timeout=30).json()
    assert a == b and a["details"]["seed"] == 3


def test_grammar_regex_on_generate(server, client):
    pattern = r"[0-9]{3}-[a-z]{2}"
    for seed in range(3):
        r = httpx.post(server.url + "/generate", timeout=60, json={
            "inputs": PROMPT, "parameters": {"max_new_tokens": 12, "do_sample": True, "seed": seed,
                                             "grammar": {"type": "regex", "value": pattern}}})
        assert r.status_code == 200, r.text
        assert re.fullmatch(pattern, r.json()["generated_text"]), r.json()
    text = client.text_generation(PROMPT, max_new_tokens=12, grammar={"type": "regex", "value": pattern})
    assert re.fullmatch(pattern, text)
    bad = httpx.post(server.url + "/generate", timeout=30,
                     json={"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "(unclosed"}}})
    assert bad.status_code == 422 and "regex" in bad.json()["error"]


def test_grammar_json_on_generate(server):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["n"], "additionalProperties": False}
    r = httpx.post(server.url + "/generate", timeout=60, json={
        "inputs": PROMPT, "parameters": {"max_new_tokens": 16, "grammar": {"type": "json", "value": schema}}})
    value = json.loads(r.json()["generated_text"])
    assert set(value) == {"n"} and 0 <= value["n"] <= 99


def test_chat_completion_default_model_name(client, server):
    out = client.chat_completion([{"role": "user", "content": "Hi"}], max_tokens=5)
    assert out.choices[0].message.content is not None
    assert out.choices[0].finish_reason in ("length", "stop")
    # the client sends "dummy": a single-model server answers to any name; /v1/models/{id} stays strict
    assert httpx.get(server.url + "/v1/models/dummy", timeout=10).status_code == 404
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    out = client.chat_completion([{"role": "user", "content": "ok?"}], max_tokens=12,
                                 response_format={"type": "json_schema",
                                                  "json_schema": {"name": "r", "schema": schema}})
    assert json.loads(out.choices[0].message.content) in ({"ok": True}, {"ok": False})


def test_openai_response_format_and_echo_logprobs(server, tok):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "anything", "messages": [{"role": "user", "content": "json please"}], "max_tokens": 40,
        "response_format": {"type": "json_object"}, "temperature": 1.0, "seed": 1})
    choice = r.json()["choices"][0]
    if choice["finish_reason"] == "stop":  # a length cut may stop mid-object; a stop never does
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    r = httpx.post(server.url + "/v1/completions", timeout=30, json={
        "prompt": PROMPT, "max_tokens": 3, "echo": True, "logprobs": 1, "temperature": 0})
    lp = r.json()["choices"][0]["logprobs"]
    n_prompt = len(tok.encode(PROMPT))
    assert len(lp["tokens"]) == n_prompt + 3 and lp["token_logprobs"][0] is None
    assert all(v is not None for v in lp["token_logprobs"][1:])


# -- an encoder on POST / -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_server(minilm_path):
    model = swisslm.AutoModel.from_pretrained(minilm_path)
    app = create_app(model, "minilm")
    with LiveServer(app) as srv:
        yield srv


def _embed_cli(minilm_path, texts: list[str]) -> list[list[float]]:
    out = subprocess.run([sys.executable, "-m", "swisslm", "embed", *texts, "--model", str(minilm_path), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["embeddings"]


def test_feature_extraction_and_similarity_equal_swisslm_embed(minilm_server, minilm_path):
    client = hub.InferenceClient(base_url=minilm_server.url, timeout=60)
    texts = ["A cat sits on the mat.", "A dog plays in the park.", "Quantum field theory."]
    want = torch.tensor(_embed_cli(minilm_path, texts))
    got = torch.tensor(client.feature_extraction(texts[0]))
    assert got.shape == (1, want.shape[1])
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
    many = torch.tensor(client.feature_extraction(texts))
    torch.testing.assert_close(many, want, atol=1e-5, rtol=1e-4)
    sims = client.sentence_similarity(texts[0], other_sentences=texts[1:])
    torch.testing.assert_close(torch.tensor(sims), want[1:] @ want[0], atol=1e-5, rtol=1e-4)
    r = httpx.post(minilm_server.url + "/", json={"inputs": "x", "parameters": {"max_new_tokens": 3}}, timeout=30)
    assert r.status_code == 422 and "encoder" in r.json()["error"]


def test_model_names_are_strict_once_adapters_are_served(server):
    # With LoRA adapters served (`--lora name=PATH` fills settings.adapters), a stray name must not
    # silently fall back to the base model.
    settings = server.app.state.settings
    settings.adapters = ("sql",)
    try:
        body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        r = httpx.post(server.url + "/v1/chat/completions", json={**body, "model": "dummy"}, timeout=30)
        assert r.status_code == 404 and "'sql'" in r.json()["error"]["message"]
        r = httpx.post(server.url + "/v1/chat/completions", json={**body, "model": "tiny-tgi"}, timeout=30)
        assert r.status_code == 200
    finally:
        settings.adapters = ()
