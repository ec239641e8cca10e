# SPDX-License-Identifier: Apache-2.0
"""The `swisslm` command. Each subcommand lives in its own module with `register(subparsers)`;
user mistakes exit with status 2 and one line on stderr, never a traceback.

Start-up stays instant: building the parser imports no torch (subcommand modules import heavy
packages inside their run functions), and the cheap checks (`cli/validate.py`, plus a command's
own `check` set with `set_defaults(check=...)`) run before the command, so a bad option is
reported in milliseconds, before any model loads.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import os
import sys

from ..config import ConfigError
from ..io.errors import CheckpointError
from . import timings
from .common import UsageError
from .validate import check_model_args

# Subcommand modules, in `swisslm --help` order. A module missing from the tree is skipped.
COMMAND_MODULES = (
    "generate", "chat", "info", "convert", "embed", "quantize", "perplexity", "eval_choices",
    "train", "prepare_data", "plot", "finetune", "merge", "classify", "serve", "bench",
)

USER_ERRORS = (UsageError, ConfigError, CheckpointError, FileNotFoundError, IsADirectoryError,
               NotADirectoryError, PermissionError)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is nothing to show (None, a flag's False,
    an empty list) or the help text already says it."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        if action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return False
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction,
                               argparse._VersionAction, argparse._SubParsersAction)):
            return False
        if "default" in (action.help or "").lower():
            return False
        return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return f"{text} (default: %(default)s)" if self._shows_default(action) else text

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):  # argparse prints no help line at all
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

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


def run_checks(args: argparse.Namespace) -> None:
    """The checks that need no model: shared ones (--model path, --threads), then the command's."""
    check_model_args(args)
    check = getattr(args, "check", None)
    if check is not None:
        check(args)


def main(argv: list[str] | None = None) -> int:
    return _run(argv)[0]


def entry() -> None:
    """The `swisslm` program (console script, `python -m swisslm`): main(), then exit.

    A command that sets `fast_exit=True` (generate, chat) leaves with os._exit once its output is
    flushed: the interpreter's teardown of torch's thousands of modules and objects costs 0.3 s
    on a quiet machine and seconds on a loaded one, for nothing. Commands that may leave work to
    atexit handlers (child processes, temporary folders, loggers) exit normally."""
    rc, args = _run(None)
    if getattr(args, "fast_exit", False):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (BrokenPipeError, ValueError):
                pass
        logging.shutdown()
        os._exit(rc)
    sys.exit(rc)


def _run(argv: list[str] | None) -> tuple[int, argparse.Namespace | None]:
    timings.start()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        run_checks(args)
        return int(args.func(args) or 0), args
    except USER_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.strerror}: {e.filename}"
        sys.stderr.write(f"swisslm {args.command}: error: {msg}\n")
        return 2, args
    except ValueError as e:  # invalid option values detected below the CLI (e.g. top_p range)
        sys.stderr.write(f"swisslm {args.command}: error: {str(e).splitlines()[0]}\n")
        return 2, args
    except KeyboardInterrupt:
        return 130, args
    except BrokenPipeError:
        return 0, args
    finally:
        timings.report()


if __name__ == "__main__":
    entry()
