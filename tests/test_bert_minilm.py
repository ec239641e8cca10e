# SPDX-License-Identifier: Apache-2.0
"""Real weights: the embedded all-MiniLM-L6-v2 through swisslm vs transformers' BertModel with
sentence-transformers' mean pooling + normalisation; and the `swisslm embed` command."""

import json

import pytest
import torch

import swisslm
from swisslm.cli import main
from swisslm.mixins.pooling import PoolingConfig, cosine_matrix, mean_pool, sentence_embeddings

transformers = pytest.importorskip("transformers")

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
         "Une phrase en français, avec des accents : déjà vu !", "short"]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return swisslm.AutoModel.from_pretrained(minilm_path)


def test_pooling_config_read_from_sentence_transformers_folder(minilm_path):
    pc = PoolingConfig.from_folder(minilm_path)
    assert (pc.mode, pc.normalize, pc.max_seq_length) == ("mean", True, 256)


def test_embeddings_match_transformers_mean_pooling(minilm, minilm_path):
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path)
    hf = transformers.BertModel.from_pretrained(minilm_path).eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = hf(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    theirs = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
    ours = sentence_embeddings(minilm, minilm.tokenizer, TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    assert cos.min() >= 0.9999, cos
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    # the same token ids on both sides (our tokenizer vs transformers')
    assert minilm.tokenizer.encode(TEXTS[3]) == tok(TEXTS[3])["input_ids"]
    # padding does not leak: a text embedded alone equals its row in the padded batch
    alone = sentence_embeddings(minilm, minilm.tokenizer, [TEXTS[4]])
    torch.testing.assert_close(alone[0], ours[4], atol=1e-5, rtol=1e-5)


def test_pooler_output_matches_transformers_and_survives_export(minilm, minilm_path, tmp_path):
    """The real checkpoint's pooler (pooler.dense, tanh on [CLS]) is loaded, gives transformers'
    pooler_output, and is exported: BertModel loads our folder with nothing newly initialised."""
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path)
    hf = transformers.BertModel.from_pretrained(minilm_path).eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**enc)
        mine = minilm(enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"])
    assert mine.pooler_output.shape == (len(TEXTS), 384)
    assert (theirs.pooler_output - mine.pooler_output).abs().max().item() <= 1e-5
    minilm.save_pretrained(tmp_path)
    back, info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        again = back.eval()(**enc)
    assert (again.pooler_output - theirs.pooler_output).abs().max().item() <= 1e-5
    assert (again.last_hidden_state - theirs.last_hidden_state).abs().max().item() <= 1e-4


def test_long_text_truncated_to_max_seq_length(minilm):
    long = " ".join(["word"] * 600)
    v = sentence_embeddings(minilm, minilm.tokenizer, [long])
    assert torch.isfinite(v).all() and abs(v.norm().item() - 1) < 1e-5


def test_mean_pool_ignores_padding():
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = mean_pool(h, mask)
    torch.testing.assert_close(out[0], h[0, :2].mean(0))
    torch.testing.assert_close(out[1], h[1].mean(0))
    torch.testing.assert_close(mean_pool(h, mask, normalize=True).norm(dim=-1), torch.ones(2))


def test_cli_embed_similarities(capsys, minilm_path):
    assert main(["embed", *TEXTS[:3], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    vecs = torch.tensor(out["embeddings"])
    assert vecs.shape == (3, 384) and out["normalized"] is True
    sims = torch.tensor(out["cosine_similarity"])
    torch.testing.assert_close(sims, cosine_matrix(vecs))
    assert sims[0, 1] > 0.5 > sims[0, 2]  # eating food ~ eating bread, not carrying a baby
    assert main(["embed", "hello world"]) == 0
    text = capsys.readouterr().out
    assert "dim 384" in text and "cosine" not in text


def test_cli_embed_user_errors(capsys, tmp_path, smollm2_path):
    assert main(["embed", "   "]) == 2
    assert "must not be empty" in capsys.readouterr().err
    assert main(["embed", "x", "--model", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["embed", "x", "--model", str(smollm2_path)]) == 2
    assert "causal LM" in capsys.readouterr().err
