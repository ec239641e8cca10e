# SPDX-License-Identifier: Apache-2.0
"""Hugging Face repo ids resolved from the local hub cache (swisslm.io.hub).

Every test builds its own cache folder in tmp_path, laid out as huggingface_hub lays it out
(hub_helpers.cache_repo), points HF_HUB_CACHE (or HF_HOME) at it and sets HF_HUB_OFFLINE=1;
the in-process tests also make every socket call fail, so a network access is an error."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_helpers import COMMIT, cache_repo, write_tiny_gguf

import swisslm
from swisslm.cli import main as cli_main
from swisslm.config import ModelConfig
from swisslm.io.errors import CheckpointError
from swisslm.io.hub import RepoSpec, hub_cache_dir, parse_repo_spec, resolve_model

SRC = Path(swisslm.__file__).resolve().parents[1]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = ModelConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64, max_position_embeddings=64, eos_token_id=1)
    folder = tmp_path_factory.mktemp("tiny") / "hf"
    swisslm.AutoModel.from_config(cfg, seed=0).save_pretrained(folder)
    return folder


def _logits(model: swisslm.Model) -> torch.Tensor:
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        return model(ids).logits


# -- parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "want"), [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", RepoSpec("HuggingFaceTB/SmolLM2-135M-Instruct")),
    ("org/name@v1.0", RepoSpec("org/name", "v1.0")),
    (f"org/name@{COMMIT}", RepoSpec("org/name", COMMIT)),
    ("org/Model-GGUF/model-Q4_1.gguf", RepoSpec("org/Model-GGUF", None, "model-Q4_1.gguf")),
    ("org/Model-GGUF@main/sub/m.gguf", RepoSpec("org/Model-GGUF", "main", "sub/m.gguf")),
    ("data/models/tiny", None),  # three parts, not a .gguf: a path
    ("org/model.gguf", None),  # a file in a folder "org"
    ("./org/name", None), ("/abs/name", None), ("~/org/name", None), ("name", None),
    ("org/name@", None), ("org//name", None), ("-org/name", None), ("org/name/../x.gguf", None),
    ("org--x/name", None), ("org/na..me", None), ("org/name.git", None), ("org/name-", None),  # invalid ids
])
def test_parse_repo_spec(spec: str, want: RepoSpec | None) -> None:
    assert parse_repo_spec(spec) == want


def test_cache_dir_follows_the_environment_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert hub_cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == tmp_path / "cache"


# -- resolution and loading --------------------------------------------------------------------------


def test_repo_id_loads_like_its_folder(hub_cache: Path, hf_folder: Path, no_network: None) -> None:
    snapshot = cache_repo(hub_cache, "org/tiny", hf_folder)
    model = swisslm.AutoModel.from_pretrained("org/tiny")
    assert model.source == str(snapshot) and model.name_or_path == "org/tiny"
    assert torch.equal(_logits(model), _logits(swisslm.AutoModel.from_pretrained(hf_folder)))
    # a branch or a commit of the same snapshot
    assert resolve_model("org/tiny@main") == snapshot
    assert resolve_model(f"org/tiny@{COMMIT}") == snapshot
    with pytest.raises(CheckpointError, match="--revision v9"):
        resolve_model("org/tiny@v9")


def test_a_local_path_wins_over_a_repo_id(hub_cache: Path, hf_folder: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache_repo(hub_cache, "org/tiny", hf_folder)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(hf_folder, tmp_path / "org" / "tiny")
    assert resolve_model("org/tiny") == Path("org/tiny")


def test_gguf_repos(hub_cache: Path, tmp_path: Path, no_network: None) -> None:
    one = cache_repo(hub_cache, "org/tiny-GGUF", write_tiny_gguf(tmp_path / "tiny-Q4_1.gguf"))
    assert resolve_model("org/tiny-GGUF") == one / "tiny-Q4_1.gguf"
    model = swisslm.AutoModel.from_pretrained("org/tiny-GGUF")
    assert model.storage_format().startswith("GGUF Q4_1 (")

    several = tmp_path / "several"
    several.mkdir()
    write_tiny_gguf(several / "a.gguf", seed=0)
    write_tiny_gguf(several / "b.gguf", seed=1)
    snap = cache_repo(hub_cache, "org/multi-GGUF", several)
    with pytest.raises(CheckpointError) as err:
        resolve_model("org/multi-GGUF")
    assert str(err.value) == ("org/multi-GGUF: the cached snapshot holds 2 GGUF files; name one: "
                              "org/multi-GGUF/a.gguf, org/multi-GGUF/b.gguf")
    assert resolve_model("org/multi-GGUF/b.gguf") == snap / "b.gguf"
    assert resolve_model("org/multi-GGUF@main/a.gguf") == snap / "a.gguf"
    with pytest.raises(CheckpointError, match=r"cached GGUF files: a\.gguf, b\.gguf; download it with "
                                              r"`huggingface-cli download org/multi-GGUF c\.gguf`"):
        resolve_model("org/multi-GGUF/c.gguf")


def test_a_snapshot_with_nothing_loadable(hub_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("no weights here")
    cache_repo(hub_cache, "org/docs", tmp_path / "README.md")
    with pytest.raises(CheckpointError, match="neither an HF model folder .* nor a .gguf file"):
        resolve_model("org/docs")


def test_missing_ids_and_paths(hub_cache: Path, no_network: None) -> None:
    with pytest.raises(CheckpointError) as err:
        resolve_model("org/missing")
    msg = str(err.value)
    assert "\n" not in msg and str(hub_cache) in msg
    assert "`huggingface-cli download org/missing` (or `hf download org/missing`)" in msg
    assert "HF_HUB_OFFLINE unset" in msg  # the fixture sets it; the download needs it off
    for path in ("data/models/tiny", "./org/name", "org/model.gguf"):
        with pytest.raises(CheckpointError) as err:
            resolve_model(path)
        assert str(err.value) == f"{path}: no such file or folder"


# -- the CLI -----------------------------------------------------------------------------------------


def test_cli_info_resolves_a_repo_id(hf_folder: Path, tmp_path: Path) -> None:
    # HF_HOME (not HF_HUB_CACHE) here: the cache is $HF_HOME/hub, where huggingface-cli puts it.
    home = tmp_path / "hf-home"
    snapshot = cache_repo(home / "hub", "org/tiny", hf_folder)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env |= {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC)}
    res = subprocess.run([sys.executable, "-m", "swisslm", "info", "--model", "org/tiny", "--threads", "1"],
                         capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert f"source      org/tiny ({snapshot})" in res.stdout
    assert "weights     fp32" in res.stdout


def test_cli_missing_repo_id_is_one_line(hub_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["info", "--model", "org/missing"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("swisslm info: error: --model org/missing: ")
    assert str(hub_cache) in err and "huggingface-cli download org/missing" in err


def test_the_resolver_imports_neither_torch_nor_huggingface_hub(hub_cache: Path) -> None:
    """swisslm.io.hub runs before anything is loaded (the CLI checks --model with it), so its own
    imports must stay light, and a path or an id that was never downloaded must not even import
    huggingface_hub. The package is stubbed so that only this module's import chain is measured
    (swisslm/__init__'s own laziness is the CLI start-up tests' subject)."""
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('swisslm'); pkg.__path__ = [{str(SRC / 'swisslm')!r}]\n"
        "sys.modules['swisslm'] = pkg\n"
        "from swisslm.io.hub import resolve_model\n"
        "from swisslm.io.errors import CheckpointError\n"
        "resolve_model('.')\n"
        "try:\n"
        "    resolve_model('org/never-downloaded')\n"
        "except CheckpointError as e:\n"
        "    assert 'huggingface-cli download org/never-downloaded' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('a missing repo id resolved')\n"
        "heavy = sorted(m for m in ('torch', 'huggingface_hub', 'numpy') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_auto_tokenizer_resolves_a_repo_id(hub_cache: Path, minilm_path: Path, no_network: None) -> None:
    from swisslm.auto import AutoTokenizer

    cache_repo(hub_cache, "sentence-transformers/all-MiniLM-L6-v2", minilm_path)
    tok = AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    assert tok("hello world")["input_ids"] == AutoTokenizer.from_pretrained(minilm_path)("hello world")["input_ids"]
    with pytest.raises(CheckpointError, match="huggingface-cli download"):
        AutoTokenizer.from_pretrained("sentence-transformers/not-downloaded")
