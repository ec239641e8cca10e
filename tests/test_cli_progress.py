# SPDX-License-Identifier: Apache-2.0
"""Progress bars: drawn on stderr only when it is a terminal and --quiet is not given (so piped
output and logs stay clean), the same --quiet on every long-running command; and `default` as a
model name meaning each command's own default model."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest
import torch
from train_helpers import make_corpus, make_tokenizer, subprocess_env

import swisslm
from swisslm.cli import build_parser, main
from swisslm.config import ModelConfig
from swisslm.progress import progress_bar, progress_enabled


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_bar_only_on_a_terminal_and_not_when_quiet(tty, monkeypatch):
    err = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", err)
    assert progress_enabled() is tty and progress_enabled(quiet=True) is False
    for enabled in (True, False):
        with progress_bar(3, desc="work", enabled=enabled) as bar:
            for _ in range(3):
                bar.update(1)
    text = err.getvalue()
    assert ("work" in text and "3/3" in text) if tty else text == ""
    # with a terminal, enabled=False (what --quiet passes) drew nothing either: only one bar above
    assert text.count("3/3") <= 1


@pytest.mark.parametrize("argv", [
    ["perplexity", "f.txt"], ["eval-choices", "f.jsonl"], ["convert", "a.gguf", "out"],
    ["quantize", "a.gguf", "out", "--scheme", "int8"], ["prepare-data", "a.txt", "out"], ["train", "c.yaml"],
    ["finetune", "--data", "d.jsonl"], ["classify", "--data", "d.jsonl"],
])
def test_quiet_is_accepted_by_every_long_running_command(argv):
    parse = build_parser().parse_args
    assert parse([*argv, "--quiet"]).quiet and parse([*argv, "-q"]).quiet and not parse(argv).quiet


def test_perplexity_windows_count_matches_the_loop(tiny):
    from swisslm.cli.perplexity import num_windows
    from swisslm.generation import perplexity_details

    ids = list(range(1, 50))
    for window, stride in ((64, 1), (20, 20), (20, 7), (8, 1), (49, 3), (48, 5)):
        assert num_windows(len(ids), window, stride) == perplexity_details(tiny, ids, window, stride).num_windows


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    corpus = make_corpus(d / "corpus.txt", 100)
    from swisslm.io.tokenizer import Tokenizer

    vocab = Tokenizer.from_folder(make_tokenizer(d / "model", corpus)).vocab_size
    cfg = ModelConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                      max_position_embeddings=64)
    swisslm.AutoModel.from_config(cfg, seed=0).save_pretrained(d / "model")
    return d / "model", corpus


def _run_with_tty_stderr(args: list[str]) -> tuple[int, str, str]:
    """Run `swisslm ARGS` with stderr on a pseudo-terminal; (returncode, stdout, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 x 0
    proc = subprocess.Popen([sys.executable, "-m", "swisslm", *args], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, env=subprocess_env())
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read().decode()
    os.close(master)
    return proc.wait(timeout=120), out, err.decode(errors="replace")


def test_perplexity_bar_on_a_terminal_nothing_when_quiet(tiny_folder):
    model, corpus = tiny_folder
    args = ["perplexity", str(corpus), "--model", str(model), "--window", "32", "--stride", "16",
            "--max-tokens", "200", "--threads", "1"]
    code, out, err = _run_with_tty_stderr(args)
    assert code == 0 and out.startswith("perplexity "), err
    assert "perplexity: 100%" in err and "12/12" in err  # 1 + ceil((200 - 32) / 16) windows
    code, out, err = _run_with_tty_stderr([*args, "--quiet"])
    assert code == 0 and out.startswith("perplexity ") and err == ""
    # (stderr piped, not a terminal: no bar either -- see test_data's prepare-data run)


def test_embed_default_is_minilm(minilm_path, capsys):
    assert main(["embed", "--model", "default", "a cat", "a dog", "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == str(minilm_path) and out["dim"] == 384
    assert torch.tensor(out["cosine_similarity"]).shape == (2, 2)
