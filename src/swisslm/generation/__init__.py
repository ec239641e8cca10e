# SPDX-License-Identifier: Apache-2.0
"""Generation: logits processing, sampling and the KV-cached decode loop."""

from .generate import GenerationConfig, generate

__all__ = ["GenerationConfig", "generate"]
