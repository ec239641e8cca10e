# SPDX-License-Identifier: Apache-2.0
"""`swisslm generate` (plain, --stream, --json with beams / logprobs / stop strings) and
`swisslm chat`, run in-process on the embedded SmolLM2 (loaded once per session)."""

from __future__ import annotations

import io
import json

import pytest

from swisslm.cli import main

PROMPT = "The capital of France is"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cli(smollm2, monkeypatch):
    monkeypatch.setattr("swisslm.cli.generate.load_model_from_args", lambda args: smollm2)
    monkeypatch.setattr("swisslm.cli.common.load_model_from_args", lambda args: smollm2)  # chat, serve
    return smollm2


def test_stream_prints_the_same_text_as_generate(cli, capsys):
    assert main(["generate", PROMPT, "--max-new-tokens", "10"]) == 0
    plain = capsys.readouterr().out
    assert main(["generate", PROMPT, "--max-new-tokens", "10", "--stream"]) == 0
    assert capsys.readouterr().out == plain
    assert "Paris" in plain


def test_json_beams_logprobs_stop(cli, capsys):
    assert main(["generate", PROMPT, "--max-new-tokens", "6", "--num-beams", "3", "--num-return-sequences", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["sequences"]) == 2 and out["sequences"][0]["score"] >= out["sequences"][1]["score"]
    assert out["text"] == out["sequences"][0]["text"]
    assert main(["generate", PROMPT, "--max-new-tokens", "4", "--json", "--logprobs", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["logprobs"]) == out["num_new_tokens"] == 4
    first = out["logprobs"][0]
    assert first["top_logprobs"][0]["logprob"] == pytest.approx(first["logprob"])  # greedy takes the best
    assert len(first["top_logprobs"]) == 3 and first["logprob"] <= 0
    assert main(["generate", PROMPT, "--max-new-tokens", "12", "--json", "--stop", "."]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["finish_reason"] == "stop" and "." not in out["text"] and "Paris" in out["text"]


@pytest.mark.parametrize("argv, message", [
    (["--stream", "--num-beams", "2"], "--stream"),
    (["--logprobs", "3"], "--logprobs needs --json"),
    (["--json", "--logprobs", "21"], "--logprobs must be in"),
    (["--num-return-sequences", "2"], "--num-return-sequences"),
    (["--num-beams", "2", "--stop", "x"], "--stop"),
])
def test_usage_errors(cli, capsys, argv, message):
    assert main(["generate", PROMPT, *argv]) == 2
    assert message in capsys.readouterr().err


def test_chat_streams_and_keeps_history(cli, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2+2?\n/reset\nSay hi.\n"))
    assert main(["chat", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr()
    lines = [line for line in out.out.split("\n") if line]
    assert len(lines) >= 2 and "history cleared" in out.err


@pytest.fixture
def never_loads(monkeypatch):
    def refuse(args):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("swisslm.cli.generate.load_model_from_args", refuse)
    monkeypatch.setattr("swisslm.cli.common.load_model_from_args", refuse)


@pytest.mark.parametrize("argv, message", [
    (["generate", PROMPT, "--top-p", "2"], "--top-p must be in (0, 1], got 2.0"),
    (["generate", PROMPT, "--stream", "--json"], "--stream and --json are exclusive"),
    (["generate", "", "--chat"], "the prompt is empty"),
    (["chat", "--min-p", "-0.1"], "--min-p must be in [0, 1]"),
    (["chat", "--temperature", "-2"], "--temperature must be >= 0"),
])
def test_options_are_checked_before_the_load(never_loads, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
