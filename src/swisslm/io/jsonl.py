# SPDX-License-Identifier: Apache-2.0
"""JSON Lines input, read the same way wherever the project takes it (SFT and classification
data, eval-choices items, pretraining documents): blank lines skipped, one JSON object per line,
and a bad line reported as `path:line: ...` through the caller's own error type."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(path: str | Path, error: type[Exception]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of `path`, streamed; a line that is not
    valid JSON or not an object raises `error` naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{n}: expected a JSON object per line")
            yield n, obj
