# SPDX-License-Identifier: Apache-2.0
"""`swisslm finetune --trainer dpo|orpo|reward` end to end on tiny models: DPO steps raise the
reward margin (LoRA: reference = adapters off), a reward model reaches accuracy 1.0 on a separable
set and loads in transformers, ORPO on a CSV split folder, metrics.csv with TRL's names that
`swisslm plot` reads, autotrain YAML, and every bad option value exits 2 before a model loads."""

import csv
import json

import pytest
import torch

import swisslm
from swisslm import ModelConfig
from swisslm.train.metrics import read_metrics


@pytest.fixture(scope="module")
def tok(smollm2_path):
    from swisslm.io.gguf import read_gguf_tokenizer

    return read_gguf_tokenizer(smollm2_path)


@pytest.fixture(scope="module")
def base(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("pref") / "base"
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64, tie_embeddings=True, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = swisslm.AutoModel.from_config(cfg, seed=0)
    model.tokenizer = tok
    model.save_pretrained(path)
    return path


def _pairs(n=8):
    """Separable: the chosen answer always says 'good', the rejected one 'bad'."""
    return [{"prompt": f"Question {i}: how was it?", "chosen": f" It was good, {i}.", "rejected": f" It was bad, {i}."}
            for i in range(n)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lora_dpo_raises_the_reward_margin(base, tmp_path, one_thread):
    from swisslm.cli import main

    data = _jsonl(tmp_path / "train.jsonl", _pairs())
    out = tmp_path / "dpo"
    assert main(["finetune", "--trainer", "dpo", "--model", str(base), "--data", str(data), "--peft",
                 "--lora-r", "8", "--lr", "5e-3", "--max-steps", "8", "--batch-size", "4",
                 "--gradient-accumulation", "1", "--dpo-beta", "0.5", "--output", str(out), "--no-progress",
                 "--warmup-ratio", "0", "--scheduler", "constant", "--valid-data", str(data)]) == 0
    rows = read_metrics(out)
    for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
              "logps/chosen", "logps/rejected"):
        assert k in rows[0], k
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == reference
    assert rows[-1]["rewards/margins"] > 0.05 and rows[-1]["loss"] < rows[0]["loss"]
    s = json.loads((out / "finetune_summary.json").read_text())
    assert s["eval_rewards/accuracies"] == 1.0
    assert (out / "adapter_config.json").is_file() and (out / "training_params.json").is_file()
    assert main(["plot", str(out)]) == 0 and (out / "curves.png").is_file()


def test_reward_model_separates_and_loads_in_transformers(base, tok, tmp_path, one_thread):
    transformers = pytest.importorskip("transformers")
    from swisslm.cli import main
    from swisslm.finetune.pref_data import PairColumns, collate_pairs, encode_pair

    data = _jsonl(tmp_path / "train.jsonl", _pairs(12))
    valid = _jsonl(tmp_path / "valid.jsonl", _pairs(4))
    out = tmp_path / "rm"
    assert main(["finetune", "--trainer", "reward", "--model", str(base), "--data", str(data), "--valid-data",
                 str(valid), "--lr", "3e-3", "--max-steps", "12", "--batch-size", "4", "--gradient-accumulation", "1",
                 "--output", str(out), "--no-progress", "--warmup-ratio", "0", "--scheduler", "constant"]) == 0
    s = json.loads((out / "finetune_summary.json").read_text())
    assert s["eval_accuracy"] == 1.0 and s["eval_rewards/accuracies"] == 1.0
    assert "rewards/margins" in read_metrics(out)[0]
    # transformers loads the export (same-score parity: test_preference.py) and it separates the pairs
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    ex = [encode_pair(tok, r, PairColumns(prompt="prompt")) for r in _pairs(4)]
    b = collate_pairs(ex, hf.config.pad_token_id)
    with torch.no_grad():
        theirs = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, 0]
    assert (theirs[:4] > theirs[4:]).all()


def test_orpo_full_finetune_from_a_csv_split_folder_and_yaml(base, tmp_path, one_thread):
    from swisslm.cli import main

    folder = tmp_path / "data"
    folder.mkdir()
    with open(folder / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["question", "good", "bad"])
        w.writeheader()
        for r in _pairs(4):
            w.writerow({"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]})
    cfg = tmp_path / "llm.yml"
    out = tmp_path / "orpo"
    cfg.write_text(f"""task: llm-orpo
base_model: {base}
project_name: {out}
log: tensorboard
data:
  path: {folder}
  train_split: train
  chat_template: chatml
  column_mapping: {{prompt_text_column: question, text_column: good, rejected_text_column: bad}}
params:
  block_size: 64
  max_prompt_length: 32
  epochs: 1
  batch_size: 2
  gradient_accumulation: 1
  lr: 1e-3
  optimizer: sgd
  padding: left
""")
    assert main(["finetune", "--config", str(cfg), "--no-progress", "--max-steps", "2"]) == 0
    rows = read_metrics(out)
    assert len(rows) == 2 and {"nll_loss", "log_odds_ratio", "rewards/margins"} <= set(rows[0])
    params = json.loads((out / "training_params.json").read_text())
    assert params["trainer"] == "orpo" and params["optimizer"] == "sgd" and params["padding"] == "left"
    assert (out / "model.safetensors").is_file() or list(out.glob("*.safetensors"))


@pytest.mark.parametrize("flags,message", [
    (["--trainer", "ppo"], "invalid choice"),
    (["--dpo-beta", "0"], "--dpo-beta must be > 0"),
    (["--orpo-alpha", "-1"], "--orpo-alpha must be > 0"),
    (["--model-max-length", "0"], "--model-max-length must be > 0"),
    (["--max-prompt-length", "-3"], "--max-prompt-length must be > 0"),
    (["--max-completion-length", "0"], "--max-completion-length must be > 0"),
    (["--padding", "middle"], "invalid choice"),
    (["--optimizer", "lion"], "invalid choice"),
    (["--chat-template", "nosuch"], "--chat-template nosuch"),
    (["--model-ref", "/nonexistent"], "--model-ref is the DPO reference model"),
    (["--trainer", "dpo", "--model-ref", "/nonexistent"], "no such file"),
    (["--trainer", "dpo", "--max-prompt-length", "2000", "--block-size", "1024"], "--max-prompt-length (2000)"),
    (["--config", "/nonexistent.yml"], "--config /nonexistent.yml: no such file"),
    (["--dpo-beta", "x"], "invalid float"),
])
def test_bad_option_values_exit_2_before_the_model_loads(flags, message, tmp_path, capsys, monkeypatch):
    from swisslm.cli import main

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(swisslm.AutoModel, "from_pretrained", no_load)
    data = _jsonl(tmp_path / "d.jsonl", _pairs(2))
    with pytest.raises(SystemExit) if message == "invalid choice" or message == "invalid float" else _nothing():
        rc = main(["finetune", "--data", str(data), *flags])
        assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_bad_yaml_key_is_one_line(tmp_path, capsys):
    from swisslm.cli import main

    cfg = tmp_path / "c.yml"
    cfg.write_text("task: llm-dpo\nparams:\n  lrr: 1\n")
    assert main(["finetune", "--config", str(cfg)]) == 2
    assert "unknown key params.lrr" in capsys.readouterr().err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
