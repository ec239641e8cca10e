# SPDX-License-Identifier: Apache-2.0
"""transformers drop-in: model-card code runs with only its import line changed and prints what
transformers prints; forward (labels -> loss, hidden states, inputs_embeds, the cache), generate
(max_length / max_new_tokens, left-padded batches greedy and beam, generation_config.json
defaults, streamers) and the tokenizer's batch call, each compared with transformers on the same
tiny random checkpoint; and what from_pretrained / forward / generate accept, warn about or refuse."""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
import warnings

import pytest
import torch
from hub_helpers import cache_repo

import swisslm
from swisslm import AutoModel, AutoModelForCausalLM, AutoTokenizer
from swisslm.io.embedded import default_model_path, minilm_path
from swisslm.io.errors import CheckpointError

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' device_map="auto" in the card snippets

SMALL = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
             max_position_embeddings=128)
GRANITE_MULT = dict(embedding_multiplier=12.0, attention_multiplier=0.0625, residual_multiplier=0.22,
                    logits_scaling=4.0)
# family -> (config class, causal LM class, config kwargs)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2)),
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(num_key_value_heads=2, **GRANITE_MULT)),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                   dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=16, **GRANITE_MULT)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              dict(num_experts=4, num_experts_per_tok=2, intermediate_size=16, clip_qkv=0.5)),
    "gptneox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(rotary_pct=0.25, use_parallel_residual=True)),
}


def _hf_model(family: str, vocab: int, seed: int = 0, **extra):
    cfg_cls, model_cls, kw = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(vocab_size=vocab, **{**SMALL, **kw, **extra})
    return getattr(transformers, model_cls)(cfg).eval()


@pytest.fixture(scope="module")
def smol_tokenizer_dir(tmp_path_factory):
    """SmolLM2's tokenizer as transformers saves it (tokenizer.json + tokenizer_config.json)."""
    try:
        smol = default_model_path()
    except CheckpointError as e:
        pytest.skip(str(e))
    folder = tmp_path_factory.mktemp("smol-tok")
    transformers.AutoTokenizer.from_pretrained(str(smol.parent), gguf_file=smol.name).save_pretrained(folder)
    return folder


def _checkpoint(tmp_path_factory, tok_dir, family: str, seed: int = 0, **extra):
    vocab = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
    hf = _hf_model(family, len(vocab), seed, bos_token_id=None, eos_token_id=2, pad_token_id=None, **extra)
    folder = tmp_path_factory.mktemp(f"card-{family}")
    hf.save_pretrained(folder)
    for f in tok_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.fixture(scope="module")
def granite_dir(tmp_path_factory, smol_tokenizer_dir):
    return _checkpoint(tmp_path_factory, smol_tokenizer_dir, "granite", seed=1)


@pytest.fixture(scope="module")
def olmoe_dir(tmp_path_factory, smol_tokenizer_dir):
    return _checkpoint(tmp_path_factory, smol_tokenizer_dir, "olmoe", seed=2)


# -- the model cards, verbatim but for the import line and the checkpoint -------------------------

GRANITE_CARD = '''
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_path = "ibm/PowerLM-3b"
tokenizer = AutoTokenizer.from_pretrained(model_path)
# drop device_map if running on CPU
model = AutoModelForCausalLM.from_pretrained(model_path, device_map="auto")
model.eval()
# change input text as desired
prompt = "Write a code to find the maximum value in a list of numbers."
# tokenize the text
input_tokens = tokenizer(prompt, return_tensors="pt")
# generate output tokens
output = model.generate(**input_tokens, max_new_tokens=100)
# decode output tokens into text
output = tokenizer.batch_decode(output)
# loop over the batch to print, in this example the batch size is 1
for i in output:
    print(i)
'''

# The OLMoE card's example (doctest lines; its last line's value is what the doctest shows).
OLMOE_CARD = '''
>>> from transformers import AutoTokenizer, OlmoeForCausalLM

>>> model = OlmoeForCausalLM.from_pretrained("allenai/OLMoE-1B-7B-0824")
>>> tokenizer = AutoTokenizer.from_pretrained("allenai/OLMoE-1B-7B-0824")

>>> prompt = "Hey, are you conscious? Can you talk to me?"
>>> inputs = tokenizer(prompt, return_tensors="pt")

>>> # Generate
>>> generate_ids = model.generate(inputs.input_ids, max_length=30)
>>> tokenizer.batch_decode(generate_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
'''


def _run_card(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "<card>", "exec"), {"__name__": "__card__"})
    return out.getvalue()


def _doctest_to_script(card: str) -> str:
    lines = [ln[4:] for ln in textwrap.dedent(card).splitlines() if ln.startswith(">>> ")]
    lines[-1] = f"print(repr({lines[-1]}))"  # what the doctest displays
    return "\n".join(lines)


def test_granite_card_prints_what_transformers_prints(granite_dir):
    code = GRANITE_CARD.replace('"ibm/PowerLM-3b"', repr(str(granite_dir)))
    theirs = _run_card(code)
    ours = _run_card(code.replace("from transformers import", "from swisslm import"))
    assert len(theirs) > len("Write a code") and ours == theirs


def test_olmoe_card_prints_what_transformers_prints(olmoe_dir):
    code = _doctest_to_script(OLMOE_CARD).replace('"allenai/OLMoE-1B-7B-0824"', repr(str(olmoe_dir)))
    theirs = _run_card(code)
    ours = _run_card(code.replace("from transformers import AutoTokenizer, OlmoeForCausalLM",
                                  "from swisslm import AutoTokenizer, AutoModelForCausalLM as OlmoeForCausalLM"))
    assert theirs.startswith("'Hey, are you conscious?") and ours == theirs


def test_hub_id_loads_from_the_local_cache(granite_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache_repo(cache, "ibm/PowerLM-tiny", granite_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained("ibm/PowerLM-tiny")
    model = AutoModelForCausalLM.from_pretrained("ibm/PowerLM-tiny", device_map="auto")
    ref = AutoModelForCausalLM.from_pretrained(granite_dir)
    enc = tok("hello there", return_tensors="pt")
    assert torch.equal(model.generate(**enc, max_new_tokens=5), ref.generate(**enc, max_new_tokens=5))
    assert model.name_or_path == "ibm/PowerLM-tiny"


# -- forward -------------------------------------------------------------------------------------

V = 128


def _pair(tmp_path, family: str, **extra):
    hf = _hf_model(family, V, bos_token_id=None, eos_token_id=None, pad_token_id=None, **extra)
    hf.save_pretrained(tmp_path)
    return hf, AutoModelForCausalLM.from_pretrained(tmp_path)


def _padded_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :3] = -100  # a prompt part that is not scored
    return ids, mask, labels


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_loss_with_labels_equals_transformers(tmp_path, family):
    hf, ours = _pair(tmp_path, family)
    ids, mask, labels = _padded_batch()
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, labels=labels)
        mine = ours(ids, attention_mask=mask, labels=labels)
    assert abs(theirs.loss.item() - mine.loss.item()) <= 1e-5, (theirs.loss.item(), mine.loss.item())
    assert mine[0] is mine["loss"] and torch.equal(mine["logits"], mine.logits)  # transformers' access
    real = mask.bool()
    torch.testing.assert_close(mine.logits[real], theirs.logits[real], atol=1e-4, rtol=0)


def test_left_padding_with_position_ids_equals_transformers(tmp_path):
    hf, ours = _pair(tmp_path, "llama")
    ids, mask, _ = _padded_batch()
    mask = mask.flip(-1)  # left padding
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    # a row's first real token is predicted from a pad position, whose output is arbitrary (each
    # library fills a fully padded attention row its own way): not scored, as in any real use
    labels = ids.masked_fill((mask == 0) | ((pos == 0) & (mask == 1)), -100)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=pos, labels=labels)
        mine = ours(ids, attention_mask=mask, labels=labels)  # ours counts real tokens by default
    assert abs(theirs.loss.item() - mine.loss.item()) <= 1e-5


def test_hidden_states_inputs_embeds_and_return_dict(tmp_path):
    hf, ours = _pair(tmp_path, "granite")
    ids, mask, _ = _padded_batch()
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, output_hidden_states=True)
        mine = ours(ids, attention_mask=mask, output_hidden_states=True)
        assert len(mine.hidden_states) == len(theirs.hidden_states) == 3
        real = mask.bool()
        for a, b in zip(mine.hidden_states, theirs.hidden_states):
            torch.testing.assert_close(a[real], b[real], atol=1e-4, rtol=0)
        emb = hf.get_input_embeddings()(ids)  # granite's embedding_multiplier applies after, in both
        torch.testing.assert_close(ours(inputs_embeds=emb).logits, hf(inputs_embeds=emb).logits, atol=1e-4, rtol=0)
        tup = ours(ids, return_dict=False)
        assert isinstance(tup, tuple) and torch.equal(tup[0], ours(ids).logits)


def test_past_key_values_continue_the_sequence(tmp_path):
    _, ours = _pair(tmp_path, "llama")
    ids, mask, _ = _padded_batch()
    mask = mask.flip(-1)
    with torch.no_grad():
        full = ours(ids, attention_mask=mask).logits
        first = ours(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        assert first.past_key_values.get_seq_length() == 6 and len(first.past_key_values) == 2
        past = first.past_key_values
        for t in range(6, ids.shape[1]):  # one token at a time, past the first buffer's capacity too
            step = ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=past, use_cache=True)
            past = step.past_key_values
            real = mask[:, t].bool()
            torch.testing.assert_close(step.logits[real, 0], full[real, t], atol=1e-5, rtol=0)
        k, v = past[0]
        assert k.shape[2] == ids.shape[1]


def test_forward_refuses_what_it_cannot_honour(tmp_path):
    hf, ours = _pair(tmp_path, "llama")
    ids = torch.randint(0, V, (1, 5))
    with pytest.raises(ValueError, match="output_attentions"):
        ours(ids, output_attentions=True)
    with pytest.raises(TypeError, match="past_key_values"):
        ours(ids, past_key_values=hf(ids, use_cache=True).past_key_values)
    with pytest.raises(TypeError, match="head_mask"):
        ours(ids, head_mask=torch.ones(4))
    with pytest.raises(ValueError, match="exactly one"):
        ours()


def test_config_device_dtype_and_save(tmp_path):
    hf, ours = _pair(tmp_path / "src", "olmoe")
    c = ours.config
    assert (c.hidden_size, c.vocab_size, c.num_attention_heads, c.num_hidden_layers, c.model_type) == \
        (hf.config.hidden_size, V, hf.config.num_attention_heads, hf.config.num_hidden_layers, "olmoe")
    assert c.num_experts == 4 and c.num_layers == 2  # HF names and swisslm's side by side
    assert ours.device == torch.device("cpu") and ours.dtype == torch.float32
    assert ours.to(torch.float32) is ours and ours.eval() is ours and not ours.training
    ours.save_pretrained(tmp_path / "out", safe_serialization=True)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, V, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=1e-5, rtol=0)


def test_bert_auto_model_hidden_states_equal_transformers(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(vocab_size=V, hidden_size=32, num_attention_heads=4,
                                                        num_hidden_layers=2, intermediate_size=64,
                                                        pad_token_id=0)).eval()
    hf.save_pretrained(tmp_path)
    ours = AutoModel.from_pretrained(tmp_path, torch_dtype=torch.float32)
    ids, mask, _ = _padded_batch()
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, output_hidden_states=True)
        mine = ours(ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(mine.last_hidden_state, theirs.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.pooler_output, theirs.pooler_output, atol=1e-5, rtol=0)
    for a, b in zip(mine.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no LM head"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


# -- generate ------------------------------------------------------------------------------------


def test_max_length_and_max_new_tokens(tmp_path):
    hf, ours = _pair(tmp_path, "llama")
    ids = torch.randint(0, V, (2, 6))
    for kw in (dict(max_length=15), dict(max_new_tokens=4), dict(max_length=9, max_new_tokens=5), {}):
        theirs = hf.generate(ids, do_sample=False, **kw)
        mine = ours.generate(ids, **kw)
        assert torch.equal(mine, theirs), kw
    assert ours.generate(ids).shape[1] == 6 + 20  # transformers 5: 20 new tokens by default
    with pytest.raises(ValueError, match="max_length"):
        ours.generate(ids, max_length=6)


@pytest.mark.parametrize("family", ["llama", "olmoe"])
@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3), dict(num_beams=3, num_return_sequences=2),
                                dict(repetition_penalty=1.3)], ids=["greedy", "beam", "beam-nrs", "penalty"])
def test_left_padded_batch_equals_transformers(tmp_path, family, kw):
    hf, ours = _pair(tmp_path, family)
    ids = torch.randint(1, V, (3, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    eos = [5, 9]
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                         pad_token_id=0, **kw)
    mine = ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos,
                         pad_token_id=0, **kw)
    assert torch.equal(mine, theirs), f"\n{theirs}\n{mine}"


def test_generation_config_json_defaults_are_honoured(tmp_path):
    hf = _hf_model("llama", V, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf.save_pretrained(tmp_path)
    ids = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(1))
    ref = hf.generate(ids, max_new_tokens=12, do_sample=False)
    eos = int(ref[0, 5 + 6])  # a token greedy decoding emits: the checkpoint's EOS now
    gen = {"max_new_tokens": 9, "eos_token_id": eos, "pad_token_id": 1, "do_sample": False,
           "transformers_version": transformers.__version__}
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert ours.generation_config.max_new_tokens == 9 and ours.generation_config.eos_token_id == eos
    theirs = hf2.generate(ids)
    mine = ours.generate(ids)
    assert torch.equal(mine, theirs) and int(mine[0, -1]) == eos
    batch = torch.cat([ids, torch.randint(0, V, (1, 5))])
    assert torch.equal(ours.generate(batch), hf2.generate(batch, attention_mask=torch.ones_like(batch)))
    # the call's keywords win over the file's defaults
    assert ours.generate(ids, max_new_tokens=2, eos_token_id=None).shape[1] == 7
    # sampling defaults from the file: do_sample + top_k
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_k": 1, "max_length": 12}))
    greedy = AutoModelForCausalLM.from_pretrained(tmp_path).generate(ids, eos_token_id=None)
    assert torch.equal(greedy, hf.generate(ids, max_length=12, do_sample=False))  # top_k=1 sampling = greedy


class Recorder:
    """A TextStreamer stand-in: anything with put()/end()."""

    def __init__(self) -> None:
        self.calls: list = []

    def put(self, value: torch.Tensor) -> None:
        self.calls.append(value.tolist())

    def end(self) -> None:
        self.calls.append("end")


def test_streamer_sees_what_transformers_streamers_see(tmp_path, smol_tokenizer_dir):
    hf, ours = _pair(tmp_path, "llama")
    ids = torch.randint(0, V, (1, 4))
    a, b = Recorder(), Recorder()
    hf.generate(ids, max_new_tokens=5, do_sample=False, streamer=a)
    ours.generate(ids, max_new_tokens=5, streamer=b)
    assert b.calls == a.calls
    with pytest.raises(ValueError, match="streamer"):
        ours.generate(torch.randint(0, V, (2, 4)), max_new_tokens=2, streamer=Recorder())


def test_sampling_keywords_and_refusals(tmp_path):
    hf, ours = _pair(tmp_path, "llama")
    ids = torch.randint(0, V, (2, 4))
    out = ours.generate(ids, do_sample=True, temperature=0.7, top_k=10, top_p=0.9, num_return_sequences=2,
                        max_new_tokens=3, seed=0)
    assert out.shape == (4, 7) and torch.equal(out[:, :4], ids.repeat_interleave(2, 0))
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['guidance_scale'\]"):
        ours.generate(ids, guidance_scale=1.5)
    with pytest.raises(ValueError, match="inputs_embeds"):
        ours.generate(inputs_embeds=torch.zeros(1, 2, 32))
    with pytest.warns(UserWarning, match="use_cache"):
        ours.generate(ids, max_new_tokens=1, use_cache=False, synced_gpus=False)
    cfg = transformers.GenerationConfig(max_new_tokens=3, do_sample=False)
    assert torch.equal(ours.generate(ids, generation_config=cfg), hf.generate(ids, generation_config=cfg))


# -- from_pretrained arguments ---------------------------------------------------------------------


def test_from_pretrained_arguments(tmp_path):
    hf = _hf_model("llama", V)
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype="auto").dtype == torch.bfloat16
    assert AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float16).dtype == torch.float16
    assert AutoModelForCausalLM.from_pretrained(tmp_path).dtype == torch.float32  # transformers' default
    m = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True, low_cpu_mem_usage=True,
                                             device_map="cpu", local_files_only=True)
    assert m.device == torch.device("cpu")
    with pytest.warns(UserWarning, match="attn_implementation"):
        AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="load_in_8bit"):
        AutoModelForCausalLM.from_pretrained(tmp_path, load_in_8bit=True)
    with pytest.raises(ValueError, match="pickled"):
        AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=False)
    with pytest.raises(TypeError, match="frobnicate"):
        AutoModelForCausalLM.from_pretrained(tmp_path, frobnicate=1)
    # swisslm's own AutoModel arguments keep working
    native = swisslm.AutoModel.from_pretrained(tmp_path, "float32", "cpu", "torch")
    assert isinstance(native, swisslm.Model) and native.dtype == torch.float32


# -- tokenizer -------------------------------------------------------------------------------------

TEXTS = ["Hello world!", "The capital of France is Paris, and it is lovely in spring.", "a"]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("which", ["smol", "minilm"])
def test_auto_tokenizer_batch_equals_transformers(which, side, smol_tokenizer_dir):
    if which == "smol":
        ours = AutoTokenizer.from_pretrained(smol_tokenizer_dir, padding_side=side)
        theirs = transformers.AutoTokenizer.from_pretrained(str(smol_tokenizer_dir), padding_side=side)
        ours.pad_token = theirs.pad_token = theirs.eos_token
    else:
        path = minilm_path()
        ours = AutoTokenizer.from_pretrained(path, padding_side=side)
        theirs = transformers.AutoTokenizer.from_pretrained(str(path), padding_side=side)
    a = ours(TEXTS, padding=True, return_tensors="pt")
    b = theirs(TEXTS, padding=True, return_tensors="pt")
    assert set(a) == set(b.keys())
    for k in a:
        assert torch.equal(a[k], b[k]), (k, a[k], b[k])
    assert ours.batch_decode(a["input_ids"]) == theirs.batch_decode(b["input_ids"])


# -- sequence classification -----------------------------------------------------------------------


def test_sequence_classification_equals_transformers(tmp_path):
    """A `swisslm classify` run folder with a linear head (transformers' `score`) gives the logits of
    transformers' LlamaForSequenceClassification with the same weights, and its loss."""
    from safetensors.torch import save_file

    from swisslm import AutoModelForSequenceClassification
    from swisslm.mixins.heads import ClassificationHeadMixin

    hf, _ = _pair(tmp_path / "base", "llama")
    torch.manual_seed(1)
    head = ClassificationHeadMixin(32, 3, hidden_sizes=(), pooling="last")
    with torch.no_grad():
        head.mlp[0].bias.zero_()  # transformers' score has no bias
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(run / "classifier_head.safetensors"))
    (run / "classifier_config.json").write_text(json.dumps(
        {"base_model": str(tmp_path / "base"), "head_hidden": 0, "hidden_size": 32, "labels": ["a", "b", "c"],
         "pooling": "last"}))
    ours = AutoModelForSequenceClassification.from_pretrained(run)
    cfg = transformers.LlamaConfig(**{**hf.config.to_dict(), "num_labels": 3, "pad_token_id": 0})
    theirs = transformers.LlamaForSequenceClassification(cfg).eval()
    theirs.model.load_state_dict(hf.model.state_dict())
    with torch.no_grad():
        theirs.score.weight.copy_(head.mlp[0].weight)
    ids, mask, _ = _padded_batch()
    ids = ids.clamp(min=1).masked_fill(mask == 0, 0)  # transformers finds the last token by pad id
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        a = theirs(ids, attention_mask=mask, labels=labels)
        b = ours(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=0)
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5
    assert ours.num_labels == 3 and ours.id2label == {0: "a", 1: "b", 2: "c"}
    with pytest.raises(ValueError, match="classify"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
