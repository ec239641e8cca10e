# SPDX-License-Identifier: Apache-2.0
"""Errors raised while reading checkpoints, in the lowest layer so every loader (io/, families/
weight maps, quant/) shares one type."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint (file or folder) is missing, corrupt, or of an unsupported kind.

    The message is one line naming the file and what is wrong, so the CLI can print it as is
    (exit status 2, no traceback). It subclasses ValueError so callers that catch bad input
    generically still catch it.
    """
