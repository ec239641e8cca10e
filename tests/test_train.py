# SPDX-License-Identifier: Apache-2.0
"""`swisslm train` end to end on tiny models: learning, config errors, muP, MoE, export, plot."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import make_corpus, make_tokenizer, synthetic_tokens, tiny_train_config, write_yaml

from swisslm import AutoModel
from swisslm.cli import main as cli_main
from swisslm.config import ConfigError, ModelConfig
from swisslm.train import CheckpointManager
from swisslm.train.checkpoint import flatten_optimizer_state, unflatten_optimizer_state
from swisslm.train.config import parse_train_config
from swisslm.train.metrics import read_metrics
from swisslm.train.optim import build_adamw, param_groups
from swisslm.train.prepare import prepare_data
from swisslm.train.run import run_training


def test_loss_decreases_on_generated_corpus(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", 400)
    tok = make_tokenizer(tmp_path / "tok", corpus)
    prepare_data([corpus], tmp_path / "data", str(tok), split_lines=True, workers=1, progress=False)
    cfg = tiny_train_config(tmp_path / "run", tmp_path / "data", training={"max_steps": 40},
                            model={"config": {}}, data={"seq_len": 32, "eval_path": str(tmp_path / "data")},
                            checkpoint={"export_hf": True}, optimizer={"lr": 1e-2}, eval={"every": 20})
    assert cli_main(["train", str(write_yaml(tmp_path / "cfg.yaml", cfg))]) == 0
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 41))
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-5:]) / 5
    assert first == pytest.approx(torch.log(torch.tensor(200.0)).item(), abs=0.5)  # ~uniform at init
    assert last < first - 2.0, (first, last)
    assert all(k in rows[-1] for k in ("lr", "grad_norm", "tokens_per_s", "tokens"))
    assert "mfu" not in rows[-1]  # a CPU has no known peak FLOP/s (see test_mfu_only_against_a_known_peak)
    assert rows[-1]["tokens"] == 40 * 4 * 32
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    assert [s for s, _ in evals] == [20, 40] and evals[1][1] < evals[0][1] < first
    # the exported HF folder loads in swisslm (and carries the data's tokenizer)
    m = AutoModel.from_pretrained(tmp_path / "run" / "hf")
    assert m.tokenizer is not None and m.config.eos_token_id == m.tokenizer.eos_token_id
    ckpts = CheckpointManager(tmp_path / "run" / "checkpoints").checkpoints()
    assert [p.name for p in ckpts] == ["step-00000040"]


def test_bad_config_key_names_the_key(tmp_path, capsys):
    data = synthetic_tokens(tmp_path / "d")
    cfg = tiny_train_config(tmp_path / "run", data, optimizer={"lrr": 1e-3})
    assert cli_main(["train", str(write_yaml(tmp_path / "c.yaml", cfg))]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "swisslm train: error: invalid train config: optimizer.lrr: unknown key"
    # nested model fields are ModelConfig's, checked by name too
    cfg = tiny_train_config(tmp_path / "run", data, model={"config": {"hiden_size": 8}})
    with pytest.raises(ConfigError, match="hiden_size"):
        from swisslm.train.run import build_model

        build_model(parse_train_config(cfg), {"vocab_size": 96}, "cpu")
    # --set overrides are validated the same way
    good = write_yaml(tmp_path / "g.yaml", tiny_train_config(tmp_path / "run", data))
    assert cli_main(["train", str(good), "--set", "training.max_stepz=3"]) == 2
    assert "training.max_stepz: unknown key" in capsys.readouterr().err
    assert cli_main(["train", str(good), "--set", "schedule.name=triangle"]) == 2
    assert "schedule.name" in capsys.readouterr().err
    assert cli_main(["train", str(good), "--print-config", "--set", "optimizer.lr=0.5",
                     "--set", "optimizer.betas=[0.8, 0.9]"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["optimizer"]["lr"] == 0.5 and printed["optimizer"]["betas"] == [0.8, 0.9]
    missing = tiny_train_config(tmp_path / "run", data)
    del missing["training"]
    assert cli_main(["train", str(write_yaml(tmp_path / "m.yaml", missing))]) == 2
    assert "training: required key is missing" in capsys.readouterr().err


def test_existing_run_needs_resume(tmp_path, capsys):
    data = synthetic_tokens(tmp_path / "d")
    path = write_yaml(tmp_path / "c.yaml", tiny_train_config(tmp_path / "run", data, training={"max_steps": 2}))
    assert cli_main(["train", str(path)]) == 0
    assert cli_main(["train", str(path)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert cli_main(["train", str(path), "--resume", "--set", "training.max_steps=3"]) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    # export a checkpoint as an HF folder without training; weights are the checkpoint's
    assert cli_main(["train", str(path), "--export-hf", str(tmp_path / "hf"),
                     "--resume", str(tmp_path / "run" / "checkpoints" / "step-00000002")]) == 0
    from safetensors.torch import load_file

    exported = AutoModel.from_pretrained(tmp_path / "hf")
    saved = load_file(tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors")
    for name, t in exported.state_dict().items():
        assert torch.equal(t, saved[name]), name


def test_mup_width_transfer_settings(tmp_path):
    data = synthetic_tokens(tmp_path / "d")
    cfg = parse_train_config(tiny_train_config(
        tmp_path / "r", data, model={"family": "granite", "size": "20m", "config": {},
                                     "mup": {"base_width": 64, "embedding_multiplier": 10.0,
                                             "residual_multiplier": 0.25}}))
    mcfg = cfg.model_config_for(96)
    assert mcfg.hidden_size == 256 and mcfg.logits_scaling == 4.0  # m = 256 / 64
    assert mcfg.attn_scale == pytest.approx(1 / mcfg.head_dim)  # 1/d, not 1/sqrt(d)
    assert (mcfg.embedding_multiplier, mcfg.residual_multiplier) == (10.0, 0.25)
    model = AutoModel.from_config(mcfg, seed=0)
    groups = {g["name"]: g for g in param_groups(model, 0.1, mup_width_mult=4.0)}
    assert groups["hidden"]["lr_mult"] == 0.25 and groups["embed"]["lr_mult"] == 1.0
    assert groups["no_decay"]["weight_decay"] == 0.0
    n_hidden = sum(p.numel() for p in groups["hidden"]["params"])
    assert n_hidden == sum(p.numel() for n, p in model.named_parameters() if n.startswith("layers.") and p.dim() == 2)
    # family granite without a mup section gets Granite 3's recipe (base width 256)
    g = parse_train_config(tiny_train_config(tmp_path / "r", data, model={"family": "granite", "size": "20m",
                                                                           "config": {}})).model_config_for(96)
    assert (g.embedding_multiplier, g.residual_multiplier, g.logits_scaling) == (12.0, 0.22, 1.0)
    # the trainer applies lr_mult on top of the schedule
    run_training(parse_train_config(tiny_train_config(
        tmp_path / "run", data, training={"max_steps": 1},
        model={"mup": {"base_width": 16}}, schedule={"name": "constant"})))


def test_optimizer_state_roundtrip_and_keep_last(tmp_path):
    model = AutoModel.from_config(ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2,
                                              intermediate_size=32, tie_embeddings=True), seed=0)
    opt = build_adamw(param_groups(model, 0.1), lr=1e-3)
    model(torch.randint(0, 32, (2, 5))).logits.sum().backward()
    opt.step()
    mgr = CheckpointManager(tmp_path / "ck", keep_last=2)
    for step in (1, 2, 3):
        mgr.save(step, model, opt, {"tokens_seen": step})
    assert [p.name for p in mgr.checkpoints()] == ["step-00000002", "step-00000003"]
    files = sorted(p.name for p in mgr.latest().iterdir())
    assert files == ["model.safetensors", "optimizer.json", "optimizer.safetensors", "rng-rank0.safetensors",
                     "trainer_state.json"]  # safetensors + JSON only, never a pickle
    model2 = AutoModel.from_config(model.config, seed=1)
    opt2 = build_adamw(param_groups(model2, 0.1), lr=1e-3)
    st = mgr.load(mgr.latest(), model2, opt2)
    assert st["step"] == 3 and st["tokens_seen"] == 3
    for (n, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), n
    assert model2.head.proj.weight is model2.embed.word.weight  # tying survives the load
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for k in s1["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1["state"][k][key], s2["state"][k][key])
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt)
    tensors, meta = flatten_optimizer_state(osd)
    back = unflatten_optimizer_state(tensors, json.loads(json.dumps(meta)))
    assert back["state"].keys() == osd["state"].keys()


def test_moe_aux_losses_logged(tmp_path):
    pytest.importorskip("swisslm.core.moe", reason="core/moe.py (MoE backbone) has not landed yet")
    data = synthetic_tokens(tmp_path / "d")
    cfg = tiny_train_config(tmp_path / "run", data, training={"max_steps": 3},
                            model={"family": "granite_moe", "config": {"hidden_size": 32, "intermediate_size": 32,
                                                                       "router_aux_loss_coef": 0.01,
                                                                       "router_z_loss_coef": 0.001}})
    run_training(parse_train_config(cfg))
    rows = read_metrics(tmp_path / "run")
    for r in rows:
        for key in ("aux_loss", "lb_loss", "z_loss", "expert_load_max"):
            assert key in r and torch.isfinite(torch.tensor(r[key])), key
        assert r["aux_loss"] > 0
        loads = [r[f"expert_load_{e}"] for e in range(8)]
        assert sum(loads) == pytest.approx(1.0, abs=1e-5)  # fractions of routed slots
        # the logged aux is the coefficient-weighted sum of the two losses the router produced
        assert r["aux_loss"] == pytest.approx(0.01 * r["lb_loss"] + 0.001 * r["z_loss"], rel=1e-6)  # fp32 sums


def test_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data = synthetic_tokens(tmp_path / "d")
    run_training(parse_train_config(tiny_train_config(tmp_path / "run", data, training={"max_steps": 4})))
    assert cli_main(["plot", str(tmp_path / "run")]) == 0
    png = tmp_path / "run" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert "no metrics.csv" in capsys.readouterr().err


def test_bf16_and_activation_checkpointing_match_fp32_path(tmp_path):
    """Activation checkpointing recomputes the same maths (identical losses); bf16 autocast trains."""
    data = synthetic_tokens(tmp_path / "d")
    base = tiny_train_config(tmp_path / "a", data, training={"max_steps": 3})
    run_training(parse_train_config(base))
    ac = tiny_train_config(tmp_path / "b", data, training={"max_steps": 3, "activation_checkpointing": True})
    run_training(parse_train_config(ac))
    la = [r["loss"] for r in read_metrics(tmp_path / "a")]
    assert la == [r["loss"] for r in read_metrics(tmp_path / "b")]
    bf = tiny_train_config(tmp_path / "c", data, training={"max_steps": 3, "precision": "bf16"})
    run_training(parse_train_config(bf))
    lc = [r["loss"] for r in read_metrics(tmp_path / "c")]
    assert lc == pytest.approx(la, abs=0.05) and lc != la


def test_continue_from_hf_folder(tmp_path):
    data = synthetic_tokens(tmp_path / "d")
    run_training(parse_train_config(tiny_train_config(tmp_path / "a", data, training={"max_steps": 12},
                                                      checkpoint={"export_hf": True}, optimizer={"lr": 1e-2})))
    scratch = read_metrics(tmp_path / "a")
    cont = tiny_train_config(tmp_path / "b", data, training={"max_steps": 2},
                             model={"from_pretrained": str(tmp_path / "a" / "hf"), "config": {}})
    run_training(parse_train_config(cont))
    again = read_metrics(tmp_path / "b")
    # starts where the first run ended, not from a random init
    assert again[0]["loss"] < scratch[0]["loss"] - 0.5
    assert again[0]["loss"] == pytest.approx(scratch[-1]["loss"], abs=0.5)
    bad = tiny_train_config(tmp_path / "c", data, model={"from_pretrained": str(tmp_path / "a" / "hf"),
                                                         "config": {"num_layers": 3}})
    with pytest.raises(ConfigError, match="cannot be combined"):
        run_training(parse_train_config(bad))


def test_granite_mup_power_run_exports_to_transformers(tmp_path):
    """A muP Granite model trained with the Power schedule exports as GraniteForCausalLM, same logits."""
    transformers = pytest.importorskip("transformers")
    data = synthetic_tokens(tmp_path / "d")
    cfg = tiny_train_config(tmp_path / "run", data, training={"max_steps": 4},
                            model={"family": "granite", "mup": {"base_width": 16}},
                            schedule={"name": "power", "warmup_steps": 1, "decay_steps": 2},
                            checkpoint={"export_hf": True})
    run_training(parse_train_config(cfg))
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run")]
    # batch 4 x 16 tokens: 4 * 4 * n**-0.51 > eta_max, so the cap holds until the exponential decay
    # step 3 is half-way through the decay: x (sqrt(e) - 1) / (e - 1) = 0.37754067
    assert lrs[:2] == [0.02, 0.02] and lrs[2] == pytest.approx(0.02 * 0.3775406687981455)
    assert lrs[3] == 0.0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf")
    assert type(theirs).__name__ == "GraniteForCausalLM"
    assert theirs.config.logits_scaling == 2.0 and theirs.config.attention_multiplier == pytest.approx(1 / 8)
    ours = AutoModel.from_pretrained(tmp_path / "run" / "hf")
    x = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, rtol=1e-5, atol=1e-5)


def test_trainer_with_masked_labels_and_finite_iterator(tmp_path):
    """The reusable loop on SFT-style batches: -100 labels carry no loss, and a finite iterator
    ends training cleanly (with a final checkpoint) instead of raising."""
    from swisslm.train import Trainer, TrainerConfig, make_schedule

    model = AutoModel.from_config(ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2,
                                              intermediate_size=32), seed=0)
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100  # prompt tokens: no loss
    batches = [{"input_ids": ids, "labels": labels}] * 3
    seen: list[dict[str, float]] = []
    trainer = Trainer(model, build_adamw(param_groups(model), lr=1e-3), make_schedule("constant", lr=1e-3),
                      TrainerConfig(max_steps=10, progress=False), checkpoints=CheckpointManager(tmp_path / "ck"),
                      callbacks=[lambda _t, m: seen.append(m)])
    expected_first = torch.nn.functional.cross_entropy(model(ids).logits[:, 4:-1].reshape(-1, 32),
                                                       ids[:, 5:].reshape(-1)).item()
    state = trainer.fit(iter(batches))
    assert state.step == 3 and state.loss_tokens == 3 * 2 * 3  # positions 5..7 predicted, 2 rows
    assert seen[0]["loss"] == pytest.approx(expected_first, rel=1e-6)
    assert CheckpointManager(tmp_path / "ck").latest().name == "step-00000003"


def test_mfu_only_against_a_known_peak(caplog):
    """MFU is reported only with a datasheet peak (the user's, or a known GPU's), never above 100%:
    a peak that gives more says so once and MFU is dropped (it once printed "MFU 221.8%" on a CPU)."""
    import logging

    from swisslm.train import Trainer, TrainerConfig, make_schedule
    from swisslm.train.flops import gpu_peak_flops

    assert gpu_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12  # the longest matching name wins
    assert gpu_peak_flops("NVIDIA H200", "bf16") == 989e12 and gpu_peak_flops("NVIDIA L4", "fp32") == 30.3e12
    assert gpu_peak_flops("Some Future GPU") is None

    def fit(peak):
        cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
        model = AutoModel.from_config(cfg, seed=0)
        rows = []
        batch = {"input_ids": torch.randint(0, 64, (2, 16)), "labels": torch.randint(0, 64, (2, 16))}
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), make_schedule("constant", lr=0.01),
                TrainerConfig(max_steps=4, log_every=1, progress=False, peak_flops=peak),
                callbacks=[lambda _t, m: rows.append(m)]).fit(iter([batch] * 4))
        return rows

    assert not any("mfu" in r for r in fit(None))  # CPU: unknown peak, no MFU
    rows = fit(1e18)
    assert all(0 < r["mfu"] <= 1 for r in rows)
    with caplog.at_level(logging.WARNING, logger="swisslm.train.trainer"):
        rows = fit(1.0)  # 1 FLOP/s: every step would be > 100%
    assert not any("mfu" in r for r in rows)
    warnings = [r for r in caplog.records if "MFU would be" in r.getMessage()]
    assert len(warnings) == 1 and "--peak-flops" in warnings[0].getMessage()


def test_train_peak_flops_flag(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", tiny_train_config(tmp_path / "run", tmp_path / "data"))
    assert cli_main(["train", str(cfg), "--peak-flops", "2e14", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["logging"]["peak_flops"] == 2e14
    assert cli_main(["train", str(cfg), "--peak-flops", "0", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "logging.peak_flops" in err
