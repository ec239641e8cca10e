# SPDX-License-Identifier: Apache-2.0
"""Serving: an OpenAI-compatible and HF-inference HTTP API over a continuous-batching engine."""

from .app import create_app
from .engine import Engine, QueueFullError, SamplingParams, Sequence, TokenEvent

__all__ = ["create_app", "Engine", "QueueFullError", "SamplingParams", "Sequence", "TokenEvent"]
