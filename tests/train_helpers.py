# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures-as-functions for the training tests: a generated corpus, a tiny BPE tokenizer
folder, a synthetic token folder and tiny-model configs (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from swisslm.train.data import write_tokens

WORDS = ("the cat dog bird sat ran flew on under over a big small red blue green mat tree house "
         "and then it was happy sad").split()


def make_corpus(path: Path, n_lines: int = 400, seed: int = 0) -> Path:
    """Sentences from a tiny grammar: learnable structure, so a small model's loss falls fast."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        subj, verb, prep = rng.choice(WORDS[:4]), rng.choice(WORDS[4:7]), rng.choice(WORDS[7:10])
        adj, col, obj = rng.choice(WORDS[11:13]), rng.choice(WORDS[13:16]), rng.choice(WORDS[16:19])
        lines.append(f"the {subj} {verb} {prep} the {adj} {col} {obj} and it was {rng.choice(WORDS[-2:])}.")
    path.write_text("\n".join(lines) + "\n")
    return path


def make_tokenizer(folder: Path, corpus: Path) -> Path:
    """A ~200-token byte-level BPE trained on the corpus, saved as transformers saves one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(corpus)], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "model_max_length": 512}))
    return folder


def synthetic_tokens(folder: Path, vocab: int = 96, n: int = 8192, seed: int = 0) -> Path:
    """A token stream with repeated patterns (cheap data for loop / resume / parallel tests)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(1, vocab, 48)
    ids = np.concatenate([np.roll(base, int(rng.integers(0, 6))) for _ in range(n // 48 + 1)])[:n]
    return write_tokens(folder, ids, vocab_size=vocab, eos_token_id=0)


def tiny_train_config(run_dir: Path, data_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "run_dir": str(run_dir), "seed": 0,
        "model": {"family": "llama", "size": "tiny", "config": {"hidden_size": 32, "intermediate_size": 64}},
        "data": {"path": str(data_path), "seq_len": 16},
        "optimizer": {"lr": 3e-3, "weight_decay": 0.1},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "training": {"max_steps": 8, "micro_batch_size": 4, "threads": 1},
        "logging": {"every": 2, "progress": False, "tensorboard": False},
        "checkpoint": {"every": 0, "keep_last": 2},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def swisslm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "swisslm", *args]


def run_swisslm(*args: str, check: bool = True, timeout: float = 300, env_extra: dict[str, str] | None = None,
                **kw: Any) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), **(env_extra or {})}
    r = subprocess.run(swisslm_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"swisslm {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return r
