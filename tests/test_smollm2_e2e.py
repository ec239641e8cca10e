# SPDX-License-Identifier: Apache-2.0
"""End to end on the real embedded SmolLM2-135M-Instruct GGUF: parity with transformers' own
GGUF load, the CLI's greedy answer, and `swisslm convert` round-tripping through transformers."""

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

PROMPT = "The capital of France is"


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "swisslm", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def hf_gguf(smollm2_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name,
                                                              dtype=torch.float32)
    return model.eval()


@pytest.mark.slow
def test_logits_match_transformers_gguf_load(smollm2, hf_gguf):
    ids = torch.tensor([smollm2.tokenizer.encode(PROMPT + " Paris, and the capital of Germany is Berlin.")])
    with torch.no_grad():
        diff = (smollm2(ids).logits - hf_gguf(ids).logits).abs().max().item()
    assert diff <= 1e-3, diff


def test_cli_generate_says_paris(smollm2_path):
    proc = cli("generate", PROMPT, "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


def test_chat_template_and_greedy_answer(smollm2):
    tok = smollm2.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, tokenize=True)
    out = smollm2.generate(torch.tensor([ids]), max_new_tokens=24)
    answer = tok.decode(out[0, len(ids):].tolist())
    assert "Paris" in answer
    assert out[0, -1].item() in tok.eos_token_ids or out.shape[1] == len(ids) + 24


@pytest.mark.slow
def test_convert_roundtrips_through_transformers(smollm2, hf_gguf, tmp_path):
    dst = tmp_path / "smollm2-hf"
    proc = cli("convert", str(smollm2.source), str(dst))
    assert proc.returncode == 0, proc.stderr
    back = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(dst)
    ids = hf_tok(PROMPT, return_tensors="pt").input_ids
    assert ids[0].tolist() == smollm2.tokenizer.encode(PROMPT)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, smollm2(ids).logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(back(ids).logits, hf_gguf(ids).logits, atol=1e-3, rtol=0)
    # and swisslm reads its own export back identically
    import swisslm

    again = swisslm.AutoModel.from_pretrained(dst)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, smollm2(ids).logits)
