# SPDX-License-Identifier: Apache-2.0
"""Constrained decoding (generation/constrained.py through the shared row pipeline) and typical
sampling: sampled SmolLM2 completions always validate against their JSON schema, a regex is
matched whole, EOS waits for a complete value, a max-token cut is reported as "length"."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from swisslm.generation.params import SamplingParams  # noqa: E402
from swisslm.generation.sampling import apply_typical_p, row_scores  # noqa: E402

PET = {  # nested object with an enum
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "species": {"enum": ["cat", "dog", "bird"]},
        "owner": {"type": "object",
                  "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120},
                                 "city": {"type": "string", "maxLength": 24}},
                  "required": ["age", "city"], "additionalProperties": False},
    },
    "required": ["name", "species", "owner"],
    "additionalProperties": False,
}
NUMBERS = {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 6}


# -- typical sampling ---------------------------------------------------------------------------


def test_typical_p_matches_transformers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    logits[1, :50] = float("-inf")  # tokens an earlier processor removed stay removed
    for mass in (0.2, 0.5, 0.9):
        ref = transformers.TypicalLogitsWarper(mass)(None, logits.clone())
        ours = apply_typical_p(logits, mass)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), mass
        assert torch.equal(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])
    assert torch.equal(apply_typical_p(logits, 1.0), logits)


def test_typical_p_keeps_the_typical_tokens():
    # A peaked distribution: the entropy is low, so the top token (information close to it) is
    # kept while the long tail is dropped; at least one token always survives.
    logits = torch.tensor([[8.0, 2.0, 1.0, 0.0, -1.0]])
    out = row_scores(logits, SamplingParams(temperature=1.0, typical_p=0.5))
    assert torch.isfinite(out[0, 0]) and torch.isinf(out[0, 1:]).all()
    assert torch.isfinite(apply_typical_p(logits, 1e-6)).sum() == 1


def test_typical_p_validated():
    with pytest.raises(ValueError, match="typical_p must be in"):
        SamplingParams(typical_p=0.0)
    with pytest.raises(ValueError, match="typical_p must be in"):
        SamplingParams(typical_p=1.5)


# -- constrained decoding -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pet_prompt(smollm2):
    return smollm2.encode_prompt("Describe a pet as JSON: its name, species and owner (age, city).", chat=True)


@pytest.mark.slow
@pytest.mark.parametrize("schema", [PET, NUMBERS], ids=["nested-enum", "numbers"])
def test_sampled_json_always_validates(smollm2, pet_prompt, schema):
    """20 seeded completions at temperature 1.0, all parse and validate."""
    x = pet_prompt if schema is PET else smollm2.encode_prompt("List a few measurements as a JSON array.", chat=True)
    res = smollm2.generate(x.expand(20, -1), max_new_tokens=96, do_sample=True, temperature=1.0,
                           seed=list(range(20)), json_schema=schema, return_dict_in_generate=True)
    for text, reason in zip(res.texts, res.finish_reasons):
        assert reason == "stop", (reason, text)
        jsonschema.validate(json.loads(text), schema)
    assert len(set(res.texts)) > 5  # really sampled, not one answer 20 times


def test_regex_and_eos_only_when_complete(smollm2):
    # The model would rather chat; the grammar forces a date. EOS is not allowed before it is complete.
    x = smollm2.encode_prompt("Hi!", chat=True)
    pattern = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    res = smollm2.generate(x, max_new_tokens=20, regex=pattern, return_dict_in_generate=True)
    assert re.fullmatch(pattern, res.texts[0]), res.texts[0]
    assert res.finish_reasons == ["stop"]


def test_cut_by_max_tokens_is_length(smollm2, pet_prompt):
    res = smollm2.generate(pet_prompt, max_new_tokens=3, json_schema=PET, return_dict_in_generate=True)
    assert res.finish_reasons == ["length"]
    assert res.texts[0].startswith("{")


def test_row_constraint_masks(smollm2):
    from swisslm.generation.constrained import Grammar

    tok = smollm2.tokenizer
    g = Grammar.regex("(yes|no)", tok, smollm2.config.vocab_size, tok.eos_token_ids)
    row = g.row()
    allowed = row.allowed()
    first = {tok.decode([i]) for i in torch.nonzero(allowed).flatten().tolist()}
    assert first and all("yes".startswith(t) or "no".startswith(t) for t in first), first
    assert not allowed[tok.eos_token_ids[0]]  # nothing generated yet: EOS not allowed
    for t in tok.encode("yes", add_special_tokens=False):
        assert row.advance(t)
    assert row.complete and row.done


def test_invalid_grammar_is_a_value_error(smollm2):
    x = smollm2.encode_prompt("Hi")
    with pytest.raises(ValueError, match="regex"):
        smollm2.generate(x, max_new_tokens=2, regex="(unclosed")
    with pytest.raises(ValueError, match="schema"):
        smollm2.generate(x, max_new_tokens=2, json_schema="{not json")


def test_cli_json_schema(smollm2_path, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}},
                                  "required": ["ok"], "additionalProperties": False}))
    out = subprocess.run([sys.executable, "-m", "swisslm", "generate", "Is the sky blue?", "--chat", "--model",
                          str(smollm2_path), "--json-schema", str(schema), "--max-new-tokens", "16", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert json.loads(row["text"]) in ({"ok": True}, {"ok": False})
    bad = subprocess.run([sys.executable, "-m", "swisslm", "generate", "x", "--json-schema", str(tmp_path / "no.json")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--json-schema" in bad.stderr and "Traceback" not in bad.stderr
