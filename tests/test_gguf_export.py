# SPDX-License-Identifier: Apache-2.0
"""`swisslm convert SRC OUT.gguf --type T`: every seed family, every export type.

A tiny random transformers model is saved, converted by the CLI, and loaded back by swisslm:
- f32: the logits (BERT: hidden states) of the HF model within 1e-4, greedy tokens identical;
- f16: within fp16 rounding (relative L2 error <= 2e-3), greedy tokens identical;
- quantized: relative L2 error of the outputs under a per-type bound measured on these models
  (q8_0 0.04, q6_k 0.10, q4_0 / q4_1 / q4_k 0.35: 4-bit weights move random tiny-model logits by
  ~10-28%), and every matrix really stored in the requested type (rows of 256 values, so the
  K-quants do not fall back).
transformers' own GGUF loader (llama is the seed family it reads) loads the exported files with
the same logits. Tokenizers (byte-level BPE under three pre-tokenizers, WordPiece) encode like
their source after the round trip, special ids, add-bos flags and the chat template included.
The Q4_K / Q6_K quantizers are checked against gguf's own dequantizer.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from parity import random_ids
from test_gguf_families import CASES, ENCODERS, V, make_hf, outputs

import swisslm
from swisslm.cli import main
from swisslm.io.gguf import open_gguf
from swisslm.io.gguf_quants import quantize
from swisslm.io.gguf_writer import GGUF_TYPES, tensor_type
from swisslm.io.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

Q = gguf.GGMLQuantizationType
TYPES = ("f32", "f16", "q8_0", "q6_k", "q4_k", "q4_1", "q4_0")
REL_BOUND = {"f16": 2e-3, "q8_0": 0.04, "q6_k": 0.10, "q4_k": 0.35, "q4_1": 0.35, "q4_0": 0.35}


@pytest.fixture(scope="module", params=sorted(CASES))
def source(request, tmp_path_factory):
    family = request.param
    hf = make_hf(family)
    folder = tmp_path_factory.mktemp(f"src-{family}")
    hf.save_pretrained(folder)
    return family, hf, folder


@pytest.mark.parametrize("qtype", TYPES)
def test_convert_each_type_matches_hf(source, qtype, tmp_path):
    family, hf, folder = source
    out = tmp_path / f"{family}-{qtype}.gguf"
    assert main(["convert", str(folder), str(out), "--type", qtype, "-q"]) == 0
    reader = open_gguf(out)
    target = GGUF_TYPES[qtype][0]
    for t in reader.tensors:  # matrices in the requested type, llama.cpp's f32 set in f32
        want = tensor_type(t.name, tuple(int(d) for d in reversed(t.shape.tolist())), target)
        assert t.tensor_type == want, (t.name, t.tensor_type.name, want.name)
        if len(t.shape) >= 2 and not t.name.endswith(("ffn_gate_inp.weight", "position_embd.weight",
                                                      "token_types.weight")):
            assert want == target, t.name
    ours = swisslm.AutoModel.from_pretrained(out)
    assert ours.config.family == family
    ids = random_ids(V, batch=2, length=11)
    a, b = outputs(hf, ids), outputs(ours, ids)
    if qtype == "f32":
        assert (a - b).abs().max().item() <= 1e-4
    else:
        rel = ((a - b).norm() / a.norm()).item()
        assert rel <= REL_BOUND[qtype], f"{family} {qtype}: relative error {rel:.4f}"
    if qtype in ("f32", "f16") and family not in ENCODERS:
        theirs = hf.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
        assert torch.equal(theirs, ours.generate(ids, max_new_tokens=10, eos_token_id=[]))


@pytest.mark.parametrize("qtype", ["f32", "q8_0", "q4_k", "q6_k"])
def test_transformers_loads_exported_llama(qtype, tmp_path):
    """transformers' GGUF loader (llama) reads our file to the same weights: same logits as swisslm
    from that file, and for f32 the source model's. (It ignores `rope_freqs.weight`, so Llama-3
    rope scaling is checked against swisslm only, in test_llama3_rope_scaling_round_trips.)"""
    hf = make_hf("llama")
    hf.save_pretrained(tmp_path / "src")
    out = tmp_path / "model.gguf"
    assert main(["convert", str(tmp_path / "src"), str(out), "--type", qtype, "-q"]) == 0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name).eval()
    ours = swisslm.AutoModel.from_pretrained(out)
    ids = random_ids(V, batch=2, length=11)
    assert (outputs(theirs, ids) - outputs(ours, ids)).abs().max().item() <= 1e-4
    if qtype == "f32":
        assert (outputs(hf, ids) - outputs(theirs, ids)).abs().max().item() <= 1e-4


def test_llama3_rope_scaling_round_trips(tmp_path):
    """Our own export of a llama3-scaled model writes rope_freqs.weight and reads back the same
    rope_scaling."""
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 10000.0}
    hf = make_hf("llama", rope_parameters=rope)
    hf.save_pretrained(tmp_path / "src")
    out = tmp_path / "m.gguf"
    assert main(["convert", str(tmp_path / "src"), str(out), "--type", "f32", "-q"]) == 0
    assert "rope_freqs.weight" in {t.name for t in open_gguf(out).tensors}
    ours = swisslm.AutoModel.from_pretrained(out)
    assert ours.config.rope_scaling == {k: v for k, v in rope.items() if k != "rope_theta"}
    ids = random_ids(V, batch=1, length=40)
    assert (outputs(hf, ids) - outputs(ours, ids)).abs().max().item() <= 1e-4


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------

TEXTS = [
    "Hello world! The quick brown fox jumps over 13 lazy dogs.",
    "a  1 2345  tabs\tand\nnewlines, café naïve — emoji 🙂",
    "<|im_start|>user\nhi there<|im_end|>",
    "   leading spaces and UPPER case Words",
]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TVOCAB = 400  # model vocabulary for the tokenizer tests (>= the trained tokenizers)


def _bpe(pre: str) -> Tokenizer:
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    from swisslm.io.gguf import LLAMA3_SPLIT

    backend = Backend(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre == "gpt-2")
    backend.pre_tokenizer = {
        "gpt-2": byte_level,
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
        "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                              byte_level]),
    }[pre]
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(TEXTS * 20, trainer)
    return Tokenizer(backend, special_tokens={"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
                                              "pad_token": "<|endoftext|>"},
                     chat_template=TEMPLATE, add_bos_token=True, add_eos_token=False)


def _sentencepiece() -> Tokenizer:
    """Llama-2 style: BPE over U+2581-spelled words with byte fallback (<0x00>..<0xFF> pieces)."""
    import json

    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    trained = Backend(models.BPE())
    trained.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(vocab_size=120, show_progress=False)
    trained.train_from_iterator(TEXTS * 20, trainer)
    spec = json.loads(trained.to_str())["model"]
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    pieces += [t for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1]) if t not in pieces]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    backend = Backend(models.BPE(vocab={t: i for i, t in enumerate(pieces)}, merges=merges, byte_fallback=True,
                                 unk_token="<unk>", fuse_unk=True))
    backend.pre_tokenizer = metaspace
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    return Tokenizer(backend, special_tokens={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
                     chat_template=TEMPLATE, add_bos_token=True, add_eos_token=False)


def _wordpiece() -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    backend = Backend(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(TEXTS * 20, trainer)
    backend.post_processor = processors.BertProcessing(("[SEP]", backend.token_to_id("[SEP]")),
                                                       ("[CLS]", backend.token_to_id("[CLS]")))
    return Tokenizer(backend, special_tokens={"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                                              "unk_token": "[UNK]", "mask_token": "[MASK]"},
                     returns_token_type_ids=True)


@pytest.mark.parametrize("kind", ["gpt-2", "smollm", "llama-bpe", "sentencepiece", "wordpiece"])
def test_tokenizer_and_chat_template_survive(kind, tmp_path):
    family = "bert" if kind == "wordpiece" else "llama"
    tok = {"wordpiece": _wordpiece, "sentencepiece": _sentencepiece}.get(kind, lambda: _bpe(kind))()
    assert len(tok) <= TVOCAB
    hf = make_hf(family, vocab_size=TVOCAB)
    hf.save_pretrained(tmp_path / "src")
    tok.save(tmp_path / "src")
    out = tmp_path / "m.gguf"
    assert main(["convert", str(tmp_path / "src"), str(out), "--type", "q8_0", "-q"]) == 0
    meta = {f.name: f.contents() for f in open_gguf(out).fields.values()
            if f.name.startswith("tokenizer.ggml.") and f.name not in ("tokenizer.ggml.tokens",
                                                                        "tokenizer.ggml.merges",
                                                                        "tokenizer.ggml.token_type")}
    assert meta["tokenizer.ggml.model"] == {"wordpiece": "bert", "sentencepiece": "llama"}.get(kind, "gpt2")
    back = swisslm.AutoModel.from_pretrained(out).tokenizer
    source = Tokenizer.from_folder(tmp_path / "src")
    for text in [*TEXTS, "Unseen wörds: Zürich 北京 🙂 x=42;"]:
        assert back.encode(text) == source.encode(text), text
        assert back.decode(back.encode(text)) == source.decode(source.encode(text))
        assert back.encode(text, add_special_tokens=False) == source.encode(text, add_special_tokens=False)
    if kind == "wordpiece":
        assert meta["tokenizer.ggml.cls_token_id"] == source.backend.token_to_id("[CLS]")
        assert meta["tokenizer.ggml.seperator_token_id"] == source.backend.token_to_id("[SEP]")
        return
    assert meta["tokenizer.ggml.pre"] == ("default" if kind == "sentencepiece" else kind)
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert (back.bos_token_id, back.eos_token_id, back.pad_token_id) == (
        source.bos_token_id, source.eos_token_id, source.pad_token_id)
    assert back.chat_template == TEMPLATE
    chat = [{"role": "user", "content": "hi 12 there"}]
    assert back.apply_chat_template(chat, add_generation_prompt=True) == \
        source.apply_chat_template(chat, add_generation_prompt=True)


def test_minilm_to_gguf_encodes_and_embeds_alike(minilm_path, tmp_path):
    """The real all-MiniLM-L6-v2 (uncased WordPiece, 30522 pieces; its vocabulary holds symbols
    like U+211D that str.isupper() calls upper) through an f16 GGUF: same ids, token types and
    hidden states within fp16 rounding. llama.cpp has no pooler, so the GGUF model has none."""
    out = tmp_path / "minilm.gguf"
    assert main(["convert", str(minilm_path), str(out), "--type", "f16", "-q"]) == 0
    src, back = swisslm.AutoModel.from_pretrained(minilm_path), swisslm.AutoModel.from_pretrained(out)
    for text in ["Hello World, this is MiniLM!", "Zürich café naïve 北京 🙂 x=42", "Ελληνικά ÀÉÎ unaffable"]:
        assert back.tokenizer(text)["input_ids"] == src.tokenizer(text)["input_ids"], text
        assert back.tokenizer(text)["token_type_ids"] == src.tokenizer(text)["token_type_ids"]
    ids = torch.tensor([src.tokenizer.encode("The GGUF file keeps the encoder as it was.")])
    a, b = outputs(src, ids), outputs(back, ids)
    assert ((a - b).norm() / a.norm()).item() <= 2e-3
    assert not hasattr(back, "pooler")


# ----------------------------------------------------------------------------------------------
# Quantizers and type rules
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype,bound", [(Q.Q4_K, 0.08), (Q.Q6_K, 0.02)])
def test_k_quants_round_trip_through_gguf(qtype, bound):
    """Our Q4_K/Q6_K bytes decode with gguf's own dequantizer to within half a step of the
    coarsest block (max error per row relative to the row's max magnitude)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 512)).astype(np.float32)
    x[0, :100] = 0.0  # flat sub-blocks
    x[1] += 5.0  # all positive: Q4_K's min must not be clamped away
    x[2] *= 1e-3
    x[3, :] = 0.0  # an all-zero row
    blocks = quantize(x, qtype)
    assert blocks.dtype == np.uint8 and blocks.shape == (6, 2 * gguf.GGML_QUANT_SIZES[qtype][1])
    y = gguf.quants.dequantize(blocks, qtype)
    assert y.shape == x.shape and np.isfinite(y).all()
    scale = np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-30)
    err = (np.abs(y - x) / scale).max(axis=1)
    assert (err <= bound).all(), err
    assert np.array_equal(y[3], x[3])


def test_tensor_type_rules():
    assert tensor_type("blk.0.attn_norm.weight", (256,), Q.Q4_K) == Q.F32
    assert tensor_type("blk.0.attn_q.bias", (256,), Q.Q8_0) == Q.F32
    assert tensor_type("blk.0.ffn_gate_inp.weight", (8, 256), Q.Q4_0) == Q.F32
    assert tensor_type("position_embd.weight", (512, 256), Q.F16) == Q.F32
    assert tensor_type("blk.0.attn_q.weight", (256, 256), Q.Q4_K) == Q.Q4_K
    # llama.cpp's fallbacks when rows do not fit the block
    assert tensor_type("blk.0.attn_q.weight", (64, 96), Q.Q4_K) == Q.Q5_0
    assert tensor_type("blk.0.attn_q.weight", (64, 96), Q.Q6_K) == Q.Q8_0
    assert tensor_type("blk.0.attn_q.weight", (64, 40), Q.Q4_K) == Q.F16
    assert tensor_type("blk.0.attn_q.weight", (64, 40), Q.Q8_0) == Q.F16


# ----------------------------------------------------------------------------------------------
# CLI errors: one line, exit 2, before any model loads
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,message", [
    (["src", "out", "--type", "q8_0"], "--type is for a GGUF output"),
    (["src", "out.gguf", "--dtype", "float16"], "--dtype is for an HF folder output"),
    (["src", "missing-dir/out.gguf"], "no such folder"),
    (["src", "exists.gguf"], "exists"),
])
def test_convert_bad_input_is_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exists.gguf").write_bytes(b"")
    (tmp_path / "src").mkdir()
    assert main(["convert", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_convert_bad_type_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", "src", "out.gguf", "--type", "q3_k"])
    assert e.value.code == 2


# ----------------------------------------------------------------------------------------------
# llama.cpp itself (optional: SWISSLM_LLAMA_CPP_DIR = a build's bin/ with llama-simple)
# ----------------------------------------------------------------------------------------------

LLAMA_CPP = os.environ.get("SWISSLM_LLAMA_CPP_DIR")


@pytest.mark.skipif(not LLAMA_CPP or not Path(LLAMA_CPP, "llama-simple").is_file(),
                    reason="set SWISSLM_LLAMA_CPP_DIR to a llama.cpp build's bin/ to run llama.cpp on our exports")
@pytest.mark.parametrize("family", ["llama", "granite", "granite_moe", "granite_moe_shared", "olmoe", "gpt_neox"])
def test_llama_cpp_generates_our_greedy_tokens(family, tmp_path):
    """llama.cpp loads our f32 export and its greedy continuation is byte for byte ours.
    (OLMoE with MHA: llama.cpp's olmoe graph sizes the k norm for n_embd, so it has no GQA.)"""
    from swisslm.io.gguf import _bytes_to_unicode

    hf = make_hf(family, vocab_size=TVOCAB, **({"num_key_value_heads": 4} if family == "olmoe" else {}))
    hf.save_pretrained(tmp_path / "src")
    tok = _bpe("gpt-2")
    tok.add_bos_token = False  # llama-simple feeds the prompt as its own tokenizer splits it
    tok._update_post_processor()
    tok.save(tmp_path / "src")
    out = tmp_path / "m.gguf"
    assert main(["convert", str(tmp_path / "src"), str(out), "--type", "f32", "-q"]) == 0
    prompt = "Hello world! The quick brown fox"
    model = swisslm.AutoModel.from_pretrained(out)
    ids = torch.tensor([model.tokenizer.encode(prompt)])
    new = model.generate(ids, max_new_tokens=12, eos_token_id=[])[0].tolist()
    to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    pieces = [model.tokenizer.id_to_token(i) for i in new]  # llama.cpp prints nothing for [PADn] (unused)
    ours = b"".join(b"" if p.startswith("[PAD") else bytes(to_byte[c] for c in p) for p in pieces)
    env = dict(os.environ, LD_LIBRARY_PATH=LLAMA_CPP)
    run = subprocess.run([str(Path(LLAMA_CPP, "llama-simple")), "-m", str(out), "-n", "12", prompt],
                         capture_output=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-500:]
    assert run.stdout.strip() == ours.strip()


def test_quantized_swisslm_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    """An int8 swisslm folder has no float weights to write: one line, exit 2, no file left."""
    from swisslm.config import ModelConfig

    model = swisslm.AutoModel.from_config(ModelConfig(vocab_size=64, hidden_size=64, num_layers=1, num_heads=2,
                                                      intermediate_size=64), seed=0)
    model.save_pretrained(tmp_path / "f")
    assert main(["quantize", str(tmp_path / "f"), str(tmp_path / "q"), "--scheme", "int8", "-q"]) == 0
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "q"), str(tmp_path / "q.gguf"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "quantized" in err and "\n" not in err
    assert not list(tmp_path.glob("q.gguf*"))
