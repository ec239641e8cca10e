# SPDX-License-Identifier: Apache-2.0
"""swisslm prepare-data INPUT... OUT [--tokenizer M]: tokenize text / JSONL into a token memmap."""

from __future__ import annotations

import argparse
import json

from .common import UsageError


def register(sub) -> None:
    p = sub.add_parser("prepare-data", help="tokenize .txt / .jsonl files into a training data folder")
    p.add_argument("inputs", nargs="+", metavar="TEXT_OR_JSONL", help="input files or folders, then OUT")
    p.add_argument("--tokenizer", default=None,
                   help="HF folder or .gguf (default: the embedded SmolLM2 model's tokenizer)")
    p.add_argument("--text-key", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--split-lines", action="store_true", help=".txt: every non-empty line is a document")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: CPU count, max 8)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the metadata as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.prepare import prepare_data

    if len(args.inputs) < 2:
        raise UsageError("expected at least one input and the output folder: prepare-data INPUT... OUT")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    *inputs, out = args.inputs
    meta = prepare_data(inputs, out, args.tokenizer, text_key=args.text_key, split_lines=args.split_lines,
                        workers=args.workers, progress=not args.no_progress)
    if args.json:
        print(json.dumps(meta))
    else:
        print(f"{out}: {meta['num_tokens']:,} tokens in {meta['num_documents']:,} documents "
              f"({meta['dtype']}, vocab {meta['vocab_size']})")
    return 0
