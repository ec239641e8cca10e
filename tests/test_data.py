# SPDX-License-Identifier: Apache-2.0
"""prepare-data (tokenize -> memmap) and the deterministic, resumable window loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import make_corpus, make_tokenizer, run_swisslm, synthetic_tokens

from swisslm.cli import main as cli_main
from swisslm.io.tokenizer import Tokenizer
from swisslm.train.data import TokenDataset, WindowLoader
from swisslm.train.prepare import prepare_data


@pytest.fixture(scope="module")
def tok_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    corpus = make_corpus(d / "corpus.txt", 300)
    return corpus, make_tokenizer(d / "tok", corpus)


def test_prepare_text_and_jsonl(tmp_path, tok_setup):
    corpus, tok_dir = tok_setup
    tok = Tokenizer.from_folder(tok_dir)
    lines = corpus.read_text().splitlines()[:50]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t}) + "\n" for t in lines))
    meta = prepare_data([jsonl], tmp_path / "out", str(tok_dir), text_key="body", workers=1, progress=False)
    ds = TokenDataset.open(tmp_path / "out")
    expected = [i for t in lines for i in tok.encode(t, add_special_tokens=False) + [tok.eos_token_id]]
    assert ds.tokens.tolist() == expected
    assert meta["num_documents"] == 50 and meta["num_tokens"] == len(expected)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.vocab_size
    assert meta["eos_token_id"] == tok.eos_token_id

    # the CLI with 2 worker processes writes the same bytes (output order = input order)
    txt = tmp_path / "docs.txt"
    txt.write_text("\n".join(lines) + "\n")
    # (options among the positionals, as a user types them; stderr is a pipe: no progress bar)
    r = run_swisslm("prepare-data", str(txt), "--split-lines", str(tmp_path / "cli"), "--tokenizer", str(tok_dir),
                    "--workers", "2", "--json")
    assert json.loads(r.stdout)["num_tokens"] == len(expected)
    assert r.stderr == ""
    assert (tmp_path / "cli" / "tokens.bin").read_bytes() == (tmp_path / "out" / "tokens.bin").read_bytes()


def test_prepare_data_options_anywhere_among_the_files():
    from swisslm.cli import build_parser

    parse = build_parser().parse_args
    for argv in (["a.txt", "b.jsonl", "out", "--split-lines", "-q"], ["a.txt", "--split-lines", "b.jsonl", "-q", "out"],
                 ["--split-lines", "a.txt", "b.jsonl", "--quiet", "out"]):
        args = parse(["prepare-data", *argv])
        assert args.inputs == ["a.txt", "b.jsonl", "out"] and args.split_lines and args.quiet, argv
    args = parse(["prepare-data", "a.txt", "--text-key", "body", "out"])
    assert args.inputs == ["a.txt", "out"] and args.text_key == "body" and not args.split_lines


def test_prepare_errors(tmp_path, tok_setup, capsys):
    _, tok_dir = tok_setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"txt": "b"}\n')
    assert cli_main(["prepare-data", str(bad), str(tmp_path / "o"), "--tokenizer", str(tok_dir),
                     "--no-progress"]) == 2
    assert "bad.jsonl:2: no 'text' field" in capsys.readouterr().err
    assert cli_main(["prepare-data", str(tmp_path / "missing.txt"), str(tmp_path / "o"), "--tokenizer",
                     str(tok_dir)]) == 2
    with pytest.raises(Exception, match="not a prepared data folder"):
        TokenDataset.open(tmp_path)


def test_loader_deterministic_and_resumable(tmp_path):
    ds = TokenDataset.open(synthetic_tokens(tmp_path / "d", n=2000))
    a = WindowLoader(ds, seq_len=16, micro_batch=4, seed=3)
    first = [next(a)["input_ids"] for _ in range(60)]  # 2000 // 16 = 125 windows -> 31 batches/epoch: 2 epochs
    b = WindowLoader(ds, seq_len=16, micro_batch=4, seed=3)
    assert all(torch.equal(x, next(b)["input_ids"]) for x in first)
    # windows are real slices of the stream; labels equal inputs (the loss shifts)
    batch = WindowLoader(ds, 16, 4, seed=3).__next__()
    assert torch.equal(batch["labels"], batch["input_ids"])
    row = batch["input_ids"][0].numpy()
    starts = [i for i in range(0, len(ds) - 16 + 1, 16) if np.array_equal(ds.tokens[i:i + 16], row)]
    assert starts, "a window must be a 16-aligned slice in epoch 0"
    # mid-epoch resume: restore the state after 10 batches, continue identically (also into epoch 2)
    c = WindowLoader(ds, 16, 4, seed=3)
    for _ in range(10):
        next(c)
    d = WindowLoader(ds, 16, 4, seed=3)
    d.load_state_dict(json.loads(json.dumps(c.state_dict())))
    assert all(torch.equal(next(c)["input_ids"], next(d)["input_ids"]) for _ in range(40))
    assert c.epoch == 1
    # a different seed gives a different order
    assert not torch.equal(WindowLoader(ds, 16, 4, seed=4).__next__()["input_ids"], first[0])


def test_loader_ranks_split_the_global_batch(tmp_path):
    ds = TokenDataset.open(synthetic_tokens(tmp_path / "d", n=2000))
    single = WindowLoader(ds, 16, 4, seed=1)
    r0 = WindowLoader(ds, 16, 2, seed=1, rank=0, world_size=2)
    r1 = WindowLoader(ds, 16, 2, seed=1, rank=1, world_size=2)
    for _ in range(5):
        assert torch.equal(next(single)["input_ids"], torch.cat([next(r0)["input_ids"], next(r1)["input_ids"]]))
    # a checkpoint taken with 2 ranks resumes in 1 process at the same global position
    one = WindowLoader(ds, 16, 4, seed=1)
    one.load_state_dict(r0.state_dict())
    assert torch.equal(next(one)["input_ids"], next(single)["input_ids"])


def test_loader_too_little_data(tmp_path):
    ds = TokenDataset.open(synthetic_tokens(tmp_path / "d", n=40))
    with pytest.raises(Exception, match="fewer than one global micro-batch"):
        WindowLoader(ds, 16, 4)
