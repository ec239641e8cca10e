# SPDX-License-Identifier: Apache-2.0
"""Progress bars (tqdm, on stderr) for long-running commands, decided in one place.

A bar is drawn only for a person watching: when it is wanted (no `--quiet`) and stderr is a
terminal. Piped or redirected stderr (CI logs, tests, `2> log`) gets no bar and no carriage-return
noise at all, which is what `tqdm(disable=None)` means too, but spelled out so every command
(perplexity, eval-choices, convert, quantize, prepare-data, train, finetune) agrees. Importing
this module is cheap: tqdm loads when the first bar is made.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def progress_enabled(quiet: bool = False) -> bool:
    """True when a bar should be drawn: not `quiet` and stderr is a terminal."""
    if quiet:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def progress_bar(total: float | None = None, *, desc: str, unit: str = "it", enabled: bool = True,
                 **kw: Any) -> Any:
    """A tqdm bar on stderr; a disabled one (a no-op with the same methods) unless `enabled`
    and stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=not (enabled and progress_enabled()), **kw)


def add_quiet_arg(p: argparse.ArgumentParser, *aliases: str) -> None:
    """`-q/--quiet` (plus `aliases`, e.g. the older `--no-progress`): no progress output."""
    p.add_argument("-q", "--quiet", *aliases, dest="quiet", action="store_true", default=False,
                   help="no progress bars (they are also off when stderr is not a terminal)")
