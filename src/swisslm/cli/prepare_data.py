# SPDX-License-Identifier: Apache-2.0
"""swisslm prepare-data INPUT... OUT [--tokenizer M]: tokenize text / JSONL into a token memmap.

Options may stand anywhere among the files (`prepare-data corpus.txt --split-lines data/tiny`):
argparse's default parsing stops filling INPUT... OUT at the first option and rejects the rest."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..progress import add_quiet_arg, progress_enabled
from .common import UsageError


def intermixed(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make subparser `p` parse with `parse_known_intermixed_args` (options among positionals).

    The top-level parser hands a subcommand's words to `p.parse_known_args`; that call is
    redirected here. The intermixed parse itself calls `parse_known_args` (Python <= 3.12), so
    nested calls go to argparse's own implementation."""
    base = type(p)

    class IntermixedParser(base):  # type: ignore[misc, valid-type]
        _nested = False

        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            if self._nested:
                return super().parse_known_args(args, namespace)
            self._nested = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._nested = False

    p.__class__ = IntermixedParser
    return p


def register(sub) -> None:
    p = sub.add_parser("prepare-data", help="tokenize .txt / .jsonl files into a training data folder")
    p.add_argument("inputs", nargs="+", metavar="TEXT_OR_JSONL", help="input files or folders, then OUT")
    p.add_argument("--tokenizer", default="default",
                   help="HF folder or .gguf; 'default' = the embedded SmolLM2 model's tokenizer")
    p.add_argument("--text-key", default="text", help="JSONL field holding the text")
    p.add_argument("--split-lines", action="store_true", default=False,
                   help=".txt: every non-empty line is a document")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: CPU count, max 8)")
    add_quiet_arg(p, "--no-progress")
    p.add_argument("--json", action="store_true", default=False, help="print the metadata as one JSON object")
    p.set_defaults(func=run)
    intermixed(p)


def run(args: argparse.Namespace) -> int:
    from ..train.prepare import prepare_data

    if len(args.inputs) < 2:
        raise UsageError("expected at least one input and the output folder: prepare-data INPUT... OUT")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    *inputs, out = args.inputs
    tokenizer = None if args.tokenizer == "default" else args.tokenizer
    meta = prepare_data(inputs, out, tokenizer, text_key=args.text_key, split_lines=args.split_lines,
                        workers=args.workers, progress=progress_enabled(args.quiet))
    if args.json:
        print(json.dumps(meta))
    else:
        print(f"{out}: {meta['num_tokens']:,} tokens in {meta['num_documents']:,} documents "
              f"({meta['dtype']}, vocab {meta['vocab_size']})")
    return 0
