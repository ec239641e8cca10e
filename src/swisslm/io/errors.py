# SPDX-License-Identifier: Apache-2.0
"""io/'s name for CheckpointError (the type lives in swisslm/errors.py, below every layer that
raises it)."""

from __future__ import annotations

from ..errors import CheckpointError

__all__ = ["CheckpointError"]
