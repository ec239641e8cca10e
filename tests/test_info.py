# SPDX-License-Identifier: Apache-2.0
"""`swisslm info`: parameters of quantized models counted by their logical shape, and the
storage format of the weights (GGUF types, safetensors dtype, int8 / int4 weight-only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hub_helpers import TINY_GGUF, tiny_gguf_type_counts, write_tiny_gguf

import swisslm
from swisslm.cli import main as cli_main
from swisslm.config import ModelConfig
from swisslm.io.quantized import save_quantized
from swisslm.quant import quantize_
from swisslm.quant.api import logical_num_parameters


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                max_position_embeddings=64, eos_token_id=1)
    return ModelConfig(**{**base, **kw})


def info(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert cli_main(["info", *args, "--threads", "1", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("tied", [True, False])
def test_info_counts_quantized_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str], tied: bool) -> None:
    model = swisslm.AutoModel.from_config(tiny_cfg(tie_embeddings=tied), seed=0)
    n = model.num_parameters()
    model.save_pretrained(tmp_path / "hf")
    save_quantized(quantize_(model, "int8"), tmp_path / "int8")

    floats = info(capsys, "--model", str(tmp_path / "hf"))
    assert (floats["parameters"], floats["weights"]) == (n, "fp32")
    int8_folder = info(capsys, "--model", str(tmp_path / "int8"))
    assert (int8_folder["parameters"], int8_folder["weights"]) == (n, "int8 weight-only")
    on_load = info(capsys, "--model", str(tmp_path / "hf"), "--quant", "int8")
    assert (on_load["parameters"], on_load["weights"]) == (n, "fp32 → int8 weight-only")
    int4 = info(capsys, "--model", str(tmp_path / "hf"), "--quant", "int4")
    head = "embedding, head int8"  # int4 keeps the embedding and the LM head at int8
    assert (int4["parameters"], int4["weights"]) == (n, f"fp32 → int4 weight-only (group 32; {head})")

    # the text form says the same
    assert cli_main(["info", "--model", str(tmp_path / "int8"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"parameters  {n:,}\n" in out and "weights     int8 weight-only\n" in out


def test_logical_count_covers_every_quantized_kind() -> None:
    """int4 packed weights (two values a byte), biases kept as buffers, int8 experts, and an int4
    layer that falls back to int8 (a width that is not a multiple of the group)."""
    biased = tiny_cfg(family="gpt_neox", num_kv_heads=4, intermediate_size=48, tie_embeddings=False)
    moe = tiny_cfg(family="olmoe", hidden_size=32, intermediate_size=32, num_experts=4, num_experts_per_tok=2)
    for cfg, scheme in ((biased, "int4"), (biased, "int8"), (moe, "int8"), (moe, "int4")):
        model = swisslm.AutoModel.from_config(cfg, seed=0)
        n = model.num_parameters()
        quantize_(model, scheme)
        assert model.num_parameters() < n  # what info printed before: quantized weights are buffers
        assert logical_num_parameters(model) == n, (cfg.family, scheme)


def test_info_names_the_gguf_types(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_tiny_gguf(tmp_path / "tiny-Q4_1.gguf")
    counts = tiny_gguf_type_counts()
    share = {k: f"{round(100 * v / sum(counts.values()))}%" for k, v in counts.items()}
    types = f"GGUF Q4_1 ({share['Q4_1']}), Q8_0 ({share['Q8_0']})"
    n = 4 * TINY_GGUF["layers"]  # qkv, out, gate_up, down per layer
    kept = f"Q8_0 as int8 g32 (embedding, tied head); Q4_1 as int4 g32 ({n} linears)"
    assert info(capsys, "--model", str(path))["weights"] == f"{types} → kept quantized: {kept}"
    assert info(capsys, "--model", str(path), "--dtype", "float32")["weights"] == f"{types} → fp32"
    assert info(capsys, "--model", str(path), "--dtype", "bfloat16")["weights"] == f"{types} → bf16"
    assert info(capsys, "--model", str(path), "--quant", "int8")["weights"] == f"{types} → fp32 → int8 weight-only"


def test_storage_format_of_a_bf16_folder(tmp_path: Path) -> None:
    model = swisslm.AutoModel.from_config(tiny_cfg(), seed=0)
    model.save_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert swisslm.AutoModel.from_pretrained(tmp_path / "bf16").storage_format() == "bf16 → fp32"
    assert swisslm.AutoModel.from_pretrained(tmp_path / "bf16", dtype="bfloat16").storage_format() == "bf16"


def test_info_says_which_backend_each_linear_runs_on(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from swisslm import kernels

    swisslm.AutoModel.from_config(tiny_cfg(), seed=0).save_pretrained(tmp_path / "hf")
    linears = info(capsys, "--model", str(tmp_path / "hf"))["linears"]
    names = {e["name"] for e in linears}
    assert {"layers.0.attn.qkv", "layers.1.mlp.down", "head.proj"} <= names and len(linears) == 2 * 4 + 1
    want = ("swisslm", kernels.f32_isa()) if kernels.available() else ("torch", None)
    assert all((e["kind"], e["backend"], e["isa"]) == ("float32", *want) for e in linears), linears
    assert cli_main(["info", "--model", str(tmp_path / "hf"), "--threads", "1"]) == 0
    where = f"{want[0]} ({want[1]})" if want[1] else want[0]
    assert f"backend     float32 on {where}: 9 (layers.*.attn.qkv, layers.*.attn.out, " in capsys.readouterr().out
    # with the kernels switched off every product is torch's, and info says so
    monkeypatch.setenv("SWISSLM_KERNELS", "0")
    kernels.ops._lib.cache_clear()
    try:
        off = info(capsys, "--model", str(tmp_path / "hf"), "--quant", "int8")["linears"]
    finally:
        monkeypatch.delenv("SWISSLM_KERNELS")
        kernels.ops._lib.cache_clear()
    assert {(e["kind"], e["backend"]) for e in off} <= {("int8", "torch"), ("int8", "fbgemm")}, off
