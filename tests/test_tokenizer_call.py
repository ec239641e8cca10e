# SPDX-License-Identifier: Apache-2.0
"""The transformers call surface of swisslm's Tokenizer: `tokenizer(texts, padding=..., truncation=...,
return_tensors="pt")`, `batch_decode`, `decode` of tensors, `apply_chat_template(..., return_tensors,
return_dict)`, `pad_token` assignment, padding side — each compared with transformers' tokenizer
of the same checkpoint (SmolLM2's GGUF tokenizer, MiniLM's BERT folder)."""

from __future__ import annotations

import pytest
import torch

from swisslm.io.embedded import default_model_path, minilm_path
from swisslm.io.errors import CheckpointError
from swisslm.io.gguf import open_gguf, read_gguf_tokenizer
from swisslm.io.tokenizer import BatchEncoding, Tokenizer

transformers = pytest.importorskip("transformers")

# No whitespace run before a digit: there SmolLM2's own pre-tokenizer and transformers' GGUF
# converter differ (tests/test_tokenizer.py pins that difference); everything else is shared.
TEXTS = ["Hello world!", "The capital of France is Paris, and it is lovely in spring.", "ü 中文 😀", "a"]


def _paths():
    try:
        return default_model_path(), minilm_path()
    except CheckpointError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def smol_pair():
    smol, _ = _paths()
    ours = read_gguf_tokenizer(open_gguf(smol), pre_tokenizer="transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(str(smol.parent), gguf_file=smol.name)
    return ours, theirs


@pytest.fixture(scope="module")
def minilm_pair():
    _, mini = _paths()
    return Tokenizer.from_folder(mini), transformers.AutoTokenizer.from_pretrained(str(mini))


def _same(ours_enc, theirs_enc):
    assert set(ours_enc) == set(theirs_enc.keys()), (set(ours_enc), set(theirs_enc.keys()))
    for k in ours_enc:
        a, b = ours_enc[k], theirs_enc[k]
        if isinstance(b, torch.Tensor):
            assert isinstance(a, torch.Tensor) and a.dtype == b.dtype, k
            assert torch.equal(a, b), k
        else:
            assert a == b, k


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pair", ["smol_pair", "minilm_pair"])
def test_padded_batch_equals_transformers(pair, side, request):
    ours, theirs = request.getfixturevalue(pair)
    for tok in (ours, theirs):
        tok.padding_side = side
    try:
        _same(ours(TEXTS, padding=True, return_tensors="pt"), theirs(TEXTS, padding=True, return_tensors="pt"))
        _same(ours(TEXTS, padding="max_length", max_length=24, return_tensors="pt"),
              theirs(TEXTS, padding="max_length", max_length=24, return_tensors="pt"))
        _same(ours(TEXTS), theirs(TEXTS))  # ragged lists, no padding
    finally:
        for tok in (ours, theirs):
            tok.padding_side = "right"


@pytest.mark.parametrize("pair", ["smol_pair", "minilm_pair"])
def test_truncation_and_single_text_equal_transformers(pair, request):
    ours, theirs = request.getfixturevalue(pair)
    kw = dict(padding=True, truncation=True, max_length=6, return_tensors="pt")
    _same(ours(TEXTS, **kw), theirs(TEXTS, **kw))
    _same(ours(TEXTS[1], return_tensors="pt"), theirs(TEXTS[1], return_tensors="pt"))  # (1, T)
    _same(ours(TEXTS[1]), theirs(TEXTS[1]))  # one flat row
    ours.truncation_side = theirs.truncation_side = "left"
    try:
        _same(ours(TEXTS, **kw), theirs(TEXTS, **kw))
    finally:
        ours.truncation_side = theirs.truncation_side = "right"


def test_pairs_and_token_type_ids_equal_transformers(minilm_pair):
    ours, theirs = minilm_pair
    a, b = TEXTS[:2], TEXTS[2:]
    _same(ours(a, b, padding=True, return_tensors="pt"), theirs(a, b, padding=True, return_tensors="pt"))


def test_batch_encoding_unpacks_and_moves():
    smol, _ = _paths()
    tok = read_gguf_tokenizer(open_gguf(smol))
    enc = tok(["hi", "hello there"], padding=True, return_tensors="pt")
    assert isinstance(enc, BatchEncoding) and enc.input_ids is enc["input_ids"]
    assert dict(**enc).keys() == {"input_ids", "attention_mask"}
    assert enc.to("cpu").attention_mask.sum().item() == enc["attention_mask"].sum().item()
    with pytest.raises(AttributeError):
        _ = enc.token_type_ids


def test_decode_and_batch_decode_equal_transformers(smol_pair):
    ours, theirs = smol_pair
    enc = theirs(TEXTS, padding=True, return_tensors="pt")
    for skip in (True, False):
        assert ours.batch_decode(enc.input_ids, skip_special_tokens=skip) == \
            theirs.batch_decode(enc.input_ids, skip_special_tokens=skip)
        assert ours.decode(enc.input_ids[1], skip_special_tokens=skip) == \
            theirs.decode(enc.input_ids[1], skip_special_tokens=skip)
    assert ours.decode(int(enc.input_ids[0, 0])) == theirs.decode(int(enc.input_ids[0, 0]))


def test_chat_template_tensors_equal_transformers(smol_pair):
    ours, theirs = smol_pair
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    a = ours.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_tensors="pt")
    b = theirs.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=False)
    assert torch.equal(a, b) and a.shape[0] == 1
    d = ours.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_tensors="pt",
                                 return_dict=True)
    _same(d, theirs.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True))
    convs = [msgs, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]]
    theirs.padding_side = ours.padding_side = "left"
    try:
        _same(ours.apply_chat_template(convs, add_generation_prompt=False, tokenize=True, return_tensors="pt",
                                       return_dict=True),
              theirs.apply_chat_template(convs, return_tensors="pt", return_dict=True, padding=True))
    finally:
        theirs.padding_side = ours.padding_side = "right"


def test_pad_token_assignment_and_bad_arguments(minilm_pair):
    smol, _ = _paths()
    tok = read_gguf_tokenizer(open_gguf(smol))
    tok.pad_token = tok.eos_token  # transformers' idiom
    assert tok.pad_token_id == tok.eos_token_id
    tok.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        tok(["a", "bb"], padding=True)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.pad_token = "<definitely-not-a-token>"
    ours, _ = minilm_pair
    with pytest.raises(ValueError, match="padding must be"):
        ours(["a"], padding="sideways")
    with pytest.raises(ValueError, match="different lengths"):
        ours(["a", "b c d"], return_tensors="pt")
    with pytest.raises(ValueError, match="padding_side"):
        ours(["a"], padding=True, padding_side="middle")


def test_auto_tokenizer_has_transformers_defaults(smol_pair, minilm_pair):
    """`swisslm.auto.AutoTokenizer` differs from swisslm's Tokenizer only in transformers' defaults:
    decode keeps special tokens, apply_chat_template tokenizes and returns a dict."""
    from swisslm.auto import AutoTokenizer

    smol, mini = _paths()
    _, theirs = smol_pair
    ours = AutoTokenizer.from_pretrained(smol)
    enc = theirs(TEXTS, padding=True, return_tensors="pt")
    assert ours.batch_decode(enc.input_ids) == theirs.batch_decode(enc.input_ids)
    assert ours.decode(enc.input_ids[0]) == theirs.decode(enc.input_ids[0])
    msgs = [{"role": "user", "content": "Hi"}]
    _same(ours.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt"),
          theirs.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt"))
    assert ours.apply_chat_template(msgs, tokenize=False) == theirs.apply_chat_template(msgs, tokenize=False)
    left = AutoTokenizer.from_pretrained(mini, padding_side="left", use_fast=True)
    _, theirs_mini = minilm_pair
    theirs_mini.padding_side = "left"
    try:
        _same(left(TEXTS, padding=True, return_tensors="pt"), theirs_mini(TEXTS, padding=True, return_tensors="pt"))
    finally:
        theirs_mini.padding_side = "right"
    with pytest.warns(UserWarning, match="ignores \\['revision'\\]"):
        AutoTokenizer.from_pretrained(mini, revision="main")
