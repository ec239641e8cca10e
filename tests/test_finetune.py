# SPDX-License-Identifier: Apache-2.0
"""SFT: assistant-only label mask on SmolLM2's chat template, text rows, padded resumable
batches, and `swisslm finetune` end to end on a tiny model (LoRA, checkpoint, exact resume,
PEFT adapter written, merge)."""

import json
import math

import pytest
import torch

import swisslm
from swisslm import ModelConfig
from swisslm.finetune.data import IGNORE, SFTBatches, encode_chat, encode_text, load_sft_examples

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Hi there!"},
    {"role": "user", "content": "And bye?"},
    {"role": "assistant", "content": "Bye."},
]


@pytest.fixture(scope="module")
def tok(smollm2_path):
    from swisslm.io.gguf import read_gguf_tokenizer

    return read_gguf_tokenizer(smollm2_path)


def test_assistant_only_mask_on_smollm2_template(tok):
    ids, labels = encode_chat(tok, CONVERSATION)
    assert ids == tok.apply_chat_template(CONVERSATION, add_generation_prompt=False, tokenize=True)
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels))
    assert tok.decode(trained, skip_special_tokens=False) == "Hi there!<|im_end|>\nBye.<|im_end|>\n"
    # everything else -- system, user turns, the role headers -- is masked
    masked = tok.decode([i for i, lab in zip(ids, labels) if lab == IGNORE], skip_special_tokens=False)
    assert masked == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n"
                      "<|im_start|>assistant\n<|im_start|>user\nAnd bye?<|im_end|>\n<|im_start|>assistant\n")
    # the template's default system prompt is masked too
    ids2, labels2 = encode_chat(tok, CONVERSATION[1:3])
    assert "SmolLM" in tok.decode(ids2) and "SmolLM" not in tok.decode([i for i, lab in zip(ids2, labels2)
                                                                         if lab != IGNORE])


def test_text_rows_train_every_token_and_end_with_eos(tok, tmp_path):
    ids, labels = encode_text(tok, "hello world")
    assert ids == labels and ids[-1] == tok.eos_token_id
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "a b c d e f g"}) + "\n" + json.dumps({"messages": CONVERSATION}) + "\n")
    ex = load_sft_examples(f, tok, block_size=200)
    assert [len(e.input_ids) for e in ex] == [len(encode_text(tok, "a b c d e f g")[0]),
                                              len(encode_chat(tok, CONVERSATION)[0])]
    # truncated to 8 tokens the conversation keeps no assistant token: dropped, not trained on nothing
    assert [len(e.input_ids) for e in load_sft_examples(f, tok, block_size=8)] == [8]
    f.write_text('{"txt": 1}\n')
    with pytest.raises(ValueError, match="row 1.*neither 'text' nor 'messages'"):
        load_sft_examples(f, tok, block_size=8)


def test_batches_pad_mask_and_resume_position(tok, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"text": "x " * n}) + "\n" for n in range(1, 8)))
    ex = load_sft_examples(f, tok, block_size=64)
    b = SFTBatches(ex, batch_size=3, pad_id=0, seed=1)
    it = iter(b)
    first = [next(it) for _ in range(4)]  # 3 batches per epoch: crosses into epoch 1
    assert b.state_dict()["epoch"] == 1
    pad = first[0]["attention_mask"] == 0
    assert bool((first[0]["labels"][pad] == IGNORE).all()) and bool((first[0]["input_ids"][pad] == 0).all())
    st = b.state_dict()
    rest = [next(it) for _ in range(2)]
    b2 = SFTBatches(ex, batch_size=3, pad_id=0, seed=1)
    b2.load_state_dict(st)
    again = [x for _, x in zip(range(2), iter(b2))]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(rest, again))


def _tiny_with_tokenizer(tok, path):
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64, tie_embeddings=True, eos_token_id=tok.eos_token_id)
    model = swisslm.AutoModel.from_config(cfg, seed=0)
    model.tokenizer = tok
    model.save_pretrained(path)
    return path


def test_finetune_cli_lora_checkpoint_resume_and_merge(tok, tmp_path):
    from swisslm.cli import main

    base = _tiny_with_tokenizer(tok, tmp_path / "base")
    data = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{2 * i}."}]} for i in range(12)]
    rows += [{"text": f"The number {i} is {'even' if i % 2 == 0 else 'odd'}."} for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["finetune", "--model", str(base), "--data", str(data), "--valid-data", str(data), "--peft",
              "--lora-r", "4", "--lora-alpha", "8", "--lr", "5e-3", "--batch-size", "4",
              "--gradient-accumulation", "2", "--block-size", "48", "--no-progress", "--seed", "3",
              "--warmup-ratio", "0", "--scheduler", "constant"]
    # uninterrupted 4 steps
    assert main(common + ["--max-steps", "4", "--output", str(tmp_path / "full")]) == 0
    summary = json.loads((tmp_path / "full" / "finetune_summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_loss"] < summary["first_loss"]
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"]
    # 2 steps with a checkpoint, then resume to 4: the same adapter, bit for bit (constant lr: the
    # schedule of a 2-step run would otherwise differ from the first half of a 4-step one)
    half = tmp_path / "half"
    assert main(common + ["--max-steps", "2", "--save-steps", "2", "--output", str(half)]) == 0
    assert (half / "checkpoints" / "step-00000002" / "model.safetensors").is_file()
    assert main(common + ["--max-steps", "4", "--output", str(half), "--resume", "--merge-adapter"]) == 0
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    b = load_file(str(half / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((half / "adapter_config.json").read_text())["r"] == 4
    # the merged folder equals base + adapter
    from swisslm.finetune import load_adapter

    ref = swisslm.AutoModel.from_pretrained(base)
    load_adapter(ref, half)
    merged = swisslm.AutoModel.from_pretrained(half / "merged")
    ids = torch.tensor([tok.encode("What is 3 + 3?")])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)


def test_finetune_cli_user_errors_exit_2(tmp_path, capsys):
    from swisslm.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    assert main(["finetune", "--data", str(bad), "--quantization", "int8"]) == 2
    assert "needs --peft" in capsys.readouterr().err
    assert main(["finetune", "--data", str(tmp_path / "missing.jsonl"), "--lora-r", "0", "--peft"]) == 2
    assert "--lora-r must be > 0" in capsys.readouterr().err


def test_finetune_cli_qlora_int8(tok, tmp_path):
    from swisslm.cli import main

    base = _tiny_with_tokenizer(tok, tmp_path / "base")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"The number {i} is {'even' if i % 2 == 0 else 'odd'}."}) + "\n"
                            for i in range(8)))
    out = tmp_path / "q"
    assert main(["finetune", "--model", str(base), "--data", str(data), "--peft", "--quantization", "int8",
                 "--lora-r", "4", "--lr", "1e-2", "--max-steps", "2", "--batch-size", "4",
                 "--gradient-accumulation", "1", "--output", str(out), "--no-progress"]) == 0
    s = json.loads((out / "finetune_summary.json").read_text())
    assert s["steps"] == 2 and 0 < s["trainable_parameters"] < s["total_parameters"]
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"]


def _toy_sft_data(path, n=12):
    rows = [{"text": f"The number {i} is {'even' if i % 2 == 0 else 'odd'}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_finetune_refuses_a_previous_run_unless_resume_or_overwrite(tok, tmp_path, capsys):
    from swisslm.cli import main
    from swisslm.train.metrics import read_metrics

    base = _tiny_with_tokenizer(tok, tmp_path / "base")
    data = _toy_sft_data(tmp_path / "train.jsonl")
    out = tmp_path / "out"
    args = ["finetune", "--model", str(base), "--data", str(data), "--peft", "--lora-r", "2", "--batch-size", "4",
            "--gradient-accumulation", "1", "--block-size", "32", "--quiet", "--threads", "1", "--output", str(out)]
    assert main(args + ["--max-steps", "2", "--save-steps", "1", "--merge-adapter"]) == 0
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step-00000001", "step-00000002"}
    capsys.readouterr()
    # a second run into the same folder: one line, nothing touched
    assert main(args + ["--max-steps", "1"]) == 2
    assert "not empty" in _one_error_line(capsys) and (out / "merged").is_dir()
    assert main(args + ["--max-steps", "1", "--resume", "--overwrite"]) == 2
    assert "pick one" in _one_error_line(capsys)
    assert main(args[:-1] + [str(tmp_path / "fresh"), "--resume"]) == 2
    assert "no checkpoint under" in _one_error_line(capsys)
    # --overwrite: the old run's checkpoints, metrics rows and merged model are gone
    assert main(args + ["--max-steps", "1", "--overwrite"]) == 0
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step-00000001"}
    assert [int(r["step"]) for r in read_metrics(out)] == [1]
    assert not (out / "merged").exists() and (out / "adapter_model.safetensors").is_file()
    # --resume continues it
    assert main(args + ["--max-steps", "2", "--resume"]) == 0
    assert [int(r["step"]) for r in read_metrics(out)] == [1, 2]
    # --overwrite never wipes a folder that holds something other than a run
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(args[:-1] + [str(other), "--max-steps", "1", "--overwrite"]) == 2
    assert "no previous run" in _one_error_line(capsys) and (other / "notes.txt").read_text() == "mine"


@pytest.mark.timeout(600)
def test_finetune_under_torchrun_is_ddp_and_matches_one_process(tok, tmp_path):
    """2 gloo ranks with batch 2 = 1 process accumulating 2 micro-batches of 2: same losses, same
    adapter; one metrics.csv, one summary line (rank 0 writes and prints)."""
    import subprocess
    import sys

    from safetensors.torch import load_file
    from train_helpers import subprocess_env

    from swisslm.train.metrics import read_metrics

    base = _tiny_with_tokenizer(tok, tmp_path / "base")
    data = _toy_sft_data(tmp_path / "train.jsonl", n=8)  # 8 = 2 ranks x 2 batches x 2: epochs align
    valid = _toy_sft_data(tmp_path / "valid.jsonl", n=5)  # 3 + 2 rows: uneven eval shards
    args = ["finetune", "--model", str(base), "--data", str(data), "--valid-data", str(valid), "--peft",
            "--lora-r", "2", "--lora-dropout", "0", "--lr", "1e-2", "--batch-size", "2", "--block-size", "32",
            "--max-steps", "3", "--warmup-ratio", "0", "--scheduler", "constant", "--threads", "1", "--json"]
    env = subprocess_env()
    one = subprocess.run([sys.executable, "-m", "swisslm", *args, "--gradient-accumulation", "2",
                          "--output", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "swisslm", *args, "--gradient-accumulation", "1", "--output", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=400)
    assert two.returncode == 0, two.stderr[-4000:]
    s1, s2 = json.loads(one.stdout), json.loads(two.stdout)  # exactly one JSON line: rank 0's
    assert s2["world_size"] == 2 and s2["steps"] == 3  # (tokens_seen differs: it counts padding)
    m1, m2 = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert s2["eval_loss"] == pytest.approx(s1["eval_loss"], rel=1e-5)
    assert [int(r["step"]) for r in m2] == [1, 2, 3]
    assert [r["loss"] for r in m2] == pytest.approx([r["loss"] for r in m1], rel=1e-5)
    a = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)


# -- autotrain options for --trainer sft: add_eos_token, padding, model_max_length, CSV, auto batch --

def test_sft_data_add_eos_and_csv_rows(tok, tmp_path):
    import csv

    rows = [{"text": "a b c"}, {"messages": json.dumps(CONVERSATION)}]
    f = tmp_path / "d.csv"
    with open(f, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "messages"])
        w.writeheader()
        w.writerow({"text": "a b c", "messages": ""})
    with_eos = load_sft_examples(f, tok, block_size=64)
    without = load_sft_examples(f, tok, block_size=64, add_eos=False)
    assert with_eos[0].input_ids[-1] == tok.eos_token_id and without[0].input_ids[-1] != tok.eos_token_id
    assert with_eos[0].input_ids[:-1] == without[0].input_ids
    # a CSV messages cell (a JSON string, as autotrain stores it) is the same conversation as in JSONL
    g = tmp_path / "chat.csv"
    with open(g, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["messages"])
        w.writeheader()
        w.writerow({"messages": rows[1]["messages"]})
    j = tmp_path / "chat.jsonl"
    j.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    a, b = load_sft_examples(g, tok, block_size=200), load_sft_examples(j, tok, block_size=200)
    assert (a[0].input_ids, a[0].labels) == (b[0].input_ids, b[0].labels)


def test_left_padding_gives_the_same_loss_as_right(tok, tmp_path):
    from swisslm.finetune.data import collate
    from swisslm.train.trainer import causal_lm_loss_sum

    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"text": "x " * n}) + "\n" for n in (2, 6, 11)))
    ex = load_sft_examples(f, tok, block_size=64)
    right, left = collate(ex, pad_id=0), collate(ex, pad_id=0, padding="left")
    short = len(ex[0].input_ids)
    assert bool((left["attention_mask"][0, -short:] == 1).all()) and int(left["attention_mask"][0, 0]) == 0
    assert bool((left["labels"][left["attention_mask"] == 0] == IGNORE).all())
    model = swisslm.AutoModel.from_config(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                      num_heads=4, num_kv_heads=2, intermediate_size=64), seed=0)
    with torch.no_grad():
        losses = [causal_lm_loss_sum(model(b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                     b["labels"])[0] for b in (right, left)]
    torch.testing.assert_close(losses[0], losses[1], atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="right or left"):
        collate(ex, pad_id=0, padding="middle")


def test_auto_find_batch_size_halves_on_out_of_memory(tok, tmp_path):
    from swisslm.finetune.sft import SFTConfig, find_sft_batch_size

    f = _toy_sft_data(tmp_path / "d.jsonl", n=8)
    ex = load_sft_examples(f, tok, block_size=32)
    model = swisslm.AutoModel.from_config(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                      num_heads=4, num_kv_heads=2, intermediate_size=64), seed=0)
    seen = []
    real_forward = model.forward

    def forward(input_ids, **kw):  # a device that holds at most 3 rows
        seen.append(input_ids.shape[0])
        if input_ids.shape[0] > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(input_ids, **kw)

    model.forward = forward
    cfg = SFTConfig(data=str(f), batch_size=8, auto_find_batch_size=True)
    assert find_sft_batch_size(cfg, model, ex, pad=0, device="cpu", world=1) == 2
    assert seen == [8, 4, 2]
    assert all(p.grad is None for p in model.parameters())  # the probe leaves no gradients behind


def test_finetune_cli_sft_autotrain_options(tok, tmp_path, capsys, monkeypatch):
    import csv

    from swisslm.cli import main

    base = _tiny_with_tokenizer(tok, tmp_path / "base")
    data = tmp_path / "train.csv"
    with open(data, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text"])
        w.writeheader()
        w.writerows({"text": f"The number {i} is {'even' if i % 2 == 0 else 'odd'} and that is a fact."}
                    for i in range(8))
    out = tmp_path / "out"
    args = ["finetune", "--model", str(base), "--data", str(data), "--peft", "--lora-r", "2", "--batch-size", "4",
            "--gradient-accumulation", "1", "--block-size", "48", "--model-max-length", "6", "--padding", "left",
            "--no-add-eos-token", "--auto-find-batch-size", "--max-steps", "2", "--threads", "1", "--json",
            "--output", str(out)]
    assert main(args) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["steps"] == 2 and s["batch_size"] == 4 and math.isfinite(s["final_loss"])
    # every row was cut to --model-max-length (6 < --block-size 48): 2 steps x 4 rows x 6 tokens
    assert s["tokens_seen"] == 2 * 4 * 6
    params = json.loads((out / "training_params.json").read_text())
    assert params["padding"] == "left" and params["add_eos_token"] is False and params["model_max_length"] == 6
    # bad values: exit 2, one line, before the model loads
    def no_load(*a, **k):
        raise AssertionError("the model must not load for a bad option")

    monkeypatch.setattr(swisslm.AutoModel, "from_pretrained", no_load)
    for bad, msg in ((["--model-max-length", "0"], "--model-max-length must be > 0"),
                     (["--block-size", "-1"], "--block-size must be > 0")):
        assert main(["finetune", "--model", str(base), "--data", str(data), "--threads", "1",
                     "--output", str(tmp_path / "o2"), *bad]) == 2
        assert msg in _one_error_line(capsys)
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--data", str(data), "--padding", "middle"])
    assert e.value.code == 2
