# SPDX-License-Identifier: Apache-2.0
"""Bad checkpoints and arguments: exit status 2, one clear line on stderr, no traceback."""

import json
import subprocess
import sys

import pytest
import torch

import swisslm
from swisslm import CheckpointError, ConfigError, ModelConfig


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "swisslm", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=48)
    folder = tmp_path_factory.mktemp("tiny")
    swisslm.AutoModel.from_config(cfg, seed=0).save_pretrained(folder)
    return folder


def copy_folder(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_safetensors(tiny_folder, tmp_path):
    bad = copy_folder(tiny_folder, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        swisslm.AutoModel.from_pretrained(bad)
    assert_one_line_error(run_cli("info", "--model", str(bad)), "model.safetensors")


def test_config_missing_key(tiny_folder, tmp_path):
    bad = copy_folder(tiny_folder, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    del cfg["hidden_size"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="hidden_size"):
        swisslm.AutoModel.from_pretrained(bad)
    assert_one_line_error(run_cli("info", "--model", str(bad)), "hidden_size")


def test_contradictory_config(tiny_folder, tmp_path):
    bad = copy_folder(tiny_folder, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_key_value_heads"] = 3  # 4 heads are not a multiple of 3 kv heads
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="num_kv_heads"):
        swisslm.AutoModel.from_pretrained(bad)


def test_wrong_shape_lists_every_mismatch(tiny_folder, tmp_path):
    bad = copy_folder(tiny_folder, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        swisslm.AutoModel.from_pretrained(bad)
    msg = str(e.value)
    assert "layers.0.mlp.down.weight" in msg and "layers.1.mlp.down.weight" in msg
    assert "\n" not in msg


def test_missing_tensor_is_named(tiny_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = copy_folder(tiny_folder, tmp_path / "bad")
    sd = load_file(bad / "model.safetensors")
    del sd["model.layers.1.post_attention_layernorm.weight"]
    save_file(sd, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match="layers.1.norm_mlp.weight"):
        swisslm.AutoModel.from_pretrained(bad)


def test_unknown_architecture(tiny_folder, tmp_path):
    bad = copy_folder(tiny_folder, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["MambaForCausalLM"], "mamba"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="MambaForCausalLM.*LlamaForCausalLM"):
        swisslm.AutoModel.from_pretrained(bad)


def test_nonexistent_path():
    with pytest.raises(CheckpointError, match="no such file"):
        swisslm.AutoModel.from_pretrained("/nonexistent/model")
    assert_one_line_error(run_cli("generate", "--model", "/nonexistent/model", "hi"), "/nonexistent/model")


def test_bad_cli_arguments(tiny_folder):
    assert_one_line_error(run_cli("generate", "--model", str(tiny_folder), "hi", "--max-new-tokens", "x"),
                          "--max-new-tokens")
    assert_one_line_error(run_cli("generate", "--model", str(tiny_folder), "hi", "--max-new-tokens", "0"),
                          "--max-new-tokens")
    assert_one_line_error(run_cli("nonsense"), "nonsense")


def test_pickle_checkpoints_are_refused(tiny_folder, tmp_path):
    (tmp_path / "config.json").write_text((tiny_folder / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        swisslm.AutoModel.from_pretrained(tmp_path)


def test_config_from_dict_unknown_key():
    with pytest.raises(ConfigError, match="hiden_size"):
        ModelConfig.from_dict({"hiden_size": 3})
    with pytest.raises(ConfigError, match="norm="):
        ModelConfig(norm="batchnorm")


@pytest.mark.parametrize("flags", [[], ["--stream"], ["--chat"], ["--json"]])
def test_empty_prompt(flags):
    """Used to be a traceback from the embedding (or an IndexError with --stream), exit 1."""
    assert_one_line_error(run_cli("generate", "", *flags), "swisslm generate: error: the prompt is empty")


def test_missing_gguf_before_load():
    assert_one_line_error(run_cli("generate", "hi", "--model", "nowhere/model.gguf"),
                          "--model nowhere/model.gguf: no such file or folder")
