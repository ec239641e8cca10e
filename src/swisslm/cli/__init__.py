# SPDX-License-Identifier: Apache-2.0
"""The `swisslm` command. Each subcommand lives in its own module with `register(subparsers)`;
user mistakes exit with status 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..config import ConfigError
from ..io.errors import CheckpointError
from .common import UsageError

# Subcommand modules, in `swisslm --help` order. A module missing from the tree is skipped.
COMMAND_MODULES = (
    "generate", "chat", "info", "convert", "embed", "quantize", "perplexity", "eval_choices",
    "train", "prepare_data", "plot", "finetune", "merge", "adapters", "classify", "serve", "bench",
)

USER_ERRORS = (UsageError, ConfigError, CheckpointError, FileNotFoundError, IsADirectoryError,
               NotADirectoryError, PermissionError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="swisslm", description="One transformer toolkit: run, convert, train, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.strerror}: {e.filename}"
        sys.stderr.write(f"swisslm {args.command}: error: {msg}\n")
        return 2
    except ValueError as e:  # invalid option values detected below the CLI (e.g. top_p range)
        sys.stderr.write(f"swisslm {args.command}: error: {str(e).splitlines()[0]}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
