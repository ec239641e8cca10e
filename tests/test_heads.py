# SPDX-License-Identifier: Apache-2.0
"""ClassificationHeadMixin: pooling is padding-safe, the head trains a tiny frozen model to lower
loss and high accuracy through the shared Trainer, and `swisslm classify` reports accuracy."""

import json

import pytest
import torch

import swisslm
from swisslm import ModelConfig
from swisslm.mixins import ClassificationHeadMixin
from swisslm.mixins.heads import pool


def tiny(**kw):
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=48, **kw)
    return swisslm.AutoModel.from_config(cfg, seed=0).eval()


def test_pooling_left_and_right_padding():
    h = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    torch.testing.assert_close(pool(h, right, "last"), torch.stack([h[0, 1], h[1, 3]]))
    torch.testing.assert_close(pool(h, left, "last"), torch.stack([h[0, 3], h[1, 3]]))
    torch.testing.assert_close(pool(h, left, "first"), torch.stack([h[0, 2], h[1, 0]]))
    torch.testing.assert_close(pool(h, right, "mean"), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))


def test_head_on_padded_batch_equals_single_rows_and_replaces_lm_head():
    model = tiny()
    head = ClassificationHeadMixin(32, num_labels=3, pooling="last")
    model.add_mixin("cls", head)
    assert model.slot_providers()["output_head"] == ["cls"]
    a, b = torch.randint(0, 64, (1, 5)), torch.randint(0, 64, (1, 8))
    batch = torch.zeros(2, 8, dtype=torch.long)
    batch[0, :5], batch[1] = a[0], b[0]
    mask = (torch.arange(8) < torch.tensor([[5], [8]])).long()
    with torch.no_grad():
        both = head.classify(model, batch, mask)
        torch.testing.assert_close(both[0], head.classify(model, a)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both[1], head.classify(model, b)[0], atol=1e-5, rtol=1e-5)
        assert model(b).logits.shape == (1, 8, 3)  # the slot: per-position class scores, no vocab projection


def _parity_rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 64, (int(torch.randint(4, 10, (1,), generator=g)),), generator=g)
        rows.append((ids.tolist(), int(ids[-1]) % 2))  # label: parity of the last token
    return rows


def test_head_trains_frozen_tiny_model_through_trainer():
    from swisslm.finetune.classify import ClassificationBatches, ClassifierAsLM, accuracy
    from swisslm.train import Trainer, TrainerConfig, make_schedule

    torch.manual_seed(0)
    model = tiny()
    head = ClassificationHeadMixin(32, num_labels=2, hidden_sizes=(64,), dropout=0.0, pooling="last")
    model.add_mixin("cls", head)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("mixins.cls.")}
    rows = _parity_rows(64, 0)
    batches = ClassificationBatches([r[0] for r in rows], [r[1] for r in rows], 16, pad_id=0)
    wrapper = ClassifierAsLM(model, head)
    before = accuracy(wrapper, batches)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    history = []
    trainer = Trainer(wrapper, opt, make_schedule("constant", lr=1e-2), TrainerConfig(max_steps=60, progress=False),
                      callbacks=[lambda _t, m: history.append(m["loss"])])
    trainer.fit(batches)
    assert history[-1] < history[0] - 0.2
    acc = accuracy(wrapper, batches)
    assert acc >= 0.9 and acc > before, (before, acc)


@pytest.mark.slow
def test_classify_cli_on_minilm_reports_accuracy(minilm_path, tmp_path):
    from swisslm.cli import main

    pos = ["a wonderful, delightful film", "great acting and a moving story", "I loved every minute",
           "brilliant and joyful", "a superb, heartwarming experience", "excellent, I would watch it again"]
    neg = ["a dull, tedious film", "terrible acting and a boring story", "I hated every minute",
           "awful and depressing", "a dreadful, painful experience", "bad, I want my money back"]
    rows = [{"text": t, "label": "pos"} for t in pos] + [{"text": t, "label": "neg"} for t in neg]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["classify", "--model", str(minilm_path), "--data", str(data), "--valid-data", str(data),
                 "--epochs", "15", "--batch-size", "4", "--lr", "3e-3", "--output", str(out),
                 "--no-progress"]) == 0
    s = json.loads((out / "classify_summary.json").read_text())
    assert s["labels"] == ["neg", "pos"] and s["pooling"] == "mean"
    assert s["accuracy"] >= 0.9 and s["final_loss"] < s["first_loss"]
    assert (out / "classifier_head.safetensors").is_file()


def test_mixins_compose_and_removing_lora_keeps_base_frozen_under_head():
    from swisslm.mixins import LoRAMixin

    model = tiny()
    model.add_mixin("lora", LoRAMixin(r=2, target_modules=["q_proj"]))
    model.add_mixin("cls", ClassificationHeadMixin(32, num_labels=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("mixins.cls.") for n in trainable)
    assert "lora (LoRAMixin" in model.mixin_report() and "cls (ClassificationHeadMixin" in model.mixin_report()
    model.del_mixin("lora")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("mixins.cls.")}
    model.del_mixin("cls")
    assert all(p.requires_grad for p in model.parameters())


def test_classify_predict_end_to_end_with_lora(tmp_path, capsys):
    """Train a head + LoRA on a separable toy set, then `classify --predict` the rows: labels and
    probabilities equal the rebuilt model's (base + head + adapter) and the training accuracy."""
    from safetensors.torch import load_file
    from train_helpers import make_corpus, make_tokenizer

    from swisslm.cli import main
    from swisslm.finetune import load_adapter
    from swisslm.io.tokenizer import Tokenizer

    base = make_tokenizer(tmp_path / "base", make_corpus(tmp_path / "corpus.txt", 100))  # a 200-token BPE
    tok = Tokenizer.from_folder(base)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=48, eos_token_id=tok.eos_token_id)
    swisslm.AutoModel.from_config(cfg, seed=0).save_pretrained(base)
    rows = [{"text": f"the {a} cat sat and it was {w}", "label": w} for a in ("big", "small", "red", "blue")
            for w in ("happy", "sad")] * 2
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert main(["classify", "--model", str(base), "--data", str(data), "--peft", "--lora-r", "2",
                 "--head-hidden", "0", "--dropout", "0", "--lr", "2e-2", "--max-steps", "30", "--batch-size", "8",
                 "--output", str(run), "--quiet", "--json", "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_accuracy"] >= 0.9
    preds_file = tmp_path / "pred.jsonl"
    assert main(["classify", "--predict", str(data), "--model", str(run), "--predict-out", str(preds_file),
                 "--batch-size", "8", "--threads", "1"]) == 0
    assert capsys.readouterr().err.startswith("accuracy ")  # the rows carry labels
    preds = [json.loads(line) for line in preds_file.read_text().splitlines()]
    assert len(preds) == len(rows)
    assert sum(p["label"] == r["label"] for p, r in zip(preds, rows)) / len(rows) == summary["train_accuracy"]
    # the reference: base + the saved head + the saved adapter, one row at a time (no padding)
    ref = swisslm.AutoModel.from_pretrained(base)
    head = ClassificationHeadMixin(32, 2, hidden_sizes=(), pooling="last")
    head.load_state_dict(load_file(str(run / "classifier_head.safetensors")))
    ref.add_mixin("cls", head)
    no_lora = []
    with torch.no_grad():
        for r in rows[:4]:
            no_lora.append(head.classify(ref, torch.tensor([tok.encode(r["text"])])).softmax(-1)[0])
        load_adapter(ref, run)
        for r, p, plain in zip(rows[:4], preds, no_lora):
            probs = head.classify(ref, torch.tensor([tok.encode(r["text"])])).softmax(-1)[0]
            got = torch.tensor([p["probabilities"]["happy"], p["probabilities"]["sad"]])  # labels sorted
            torch.testing.assert_close(got, probs, atol=1e-5, rtol=1e-4)
            assert p["label"] == ("happy", "sad")[int(probs.argmax())]
            assert p["score"] == pytest.approx(float(probs.max()))
            assert not torch.allclose(plain, probs, atol=1e-6)  # the adapter was applied
    # stdout by default; bad input is one line, exit 2, before any model loads
    assert main(["classify", "--predict", str(data), "--model", str(run), "--threads", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(rows)
    for argv, needle in ((["--predict", str(data)], "needs --model RUN_DIR"),
                         (["--predict", str(data), "--model", str(base)], "not a classify output folder"),
                         (["--predict", str(tmp_path / "nope.jsonl"), "--model", str(run)], "no such file"),
                         (["--model", str(base)], "--data is required")):
        assert main(["classify", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_classify_full_finetune_saves_its_backbone_for_predict(tmp_path, capsys):
    from train_helpers import make_corpus, make_tokenizer

    from swisslm.cli import main
    from swisslm.io.tokenizer import Tokenizer

    base = make_tokenizer(tmp_path / "base", make_corpus(tmp_path / "corpus.txt", 100))
    cfg = ModelConfig(vocab_size=Tokenizer.from_folder(base).vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=48)
    swisslm.AutoModel.from_config(cfg, seed=0).save_pretrained(base)
    rows = [{"text": f"the {a} dog ran", "label": i % 2} for i, a in enumerate(("big", "small", "red", "blue"))]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert main(["classify", "--model", str(base), "--data", str(data), "--full-finetune", "--max-steps", "3",
                 "--batch-size", "4", "--output", str(run), "--quiet", "--json", "--threads", "1"]) == 0
    train_acc = json.loads(capsys.readouterr().out)["train_accuracy"]
    saved = json.loads((run / "classifier_config.json").read_text())
    assert saved["base_model"] == str((run / "model").resolve()) and (run / "model" / "config.json").is_file()
    assert main(["classify", "--predict", str(data), "--model", str(run), "--batch-size", "4", "--threads", "1"]) == 0
    preds = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["label"] in (0, 1) for p in preds] == [True] * 4
    assert sum(p["label"] == r["label"] for p, r in zip(preds, rows)) / 4 == train_acc
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in preds)
