# SPDX-License-Identifier: Apache-2.0
"""swisslm perplexity FILE: sliding-window perplexity of a text file (HF's perplexity guide)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..progress import add_quiet_arg, progress_bar, progress_enabled
from .common import UsageError, add_model_args, check_positive, load_model_from_args, require_tokenizer


def register(sub) -> None:
    p = sub.add_parser("perplexity", help="sliding-window perplexity of a text file")
    p.add_argument("file", help="UTF-8 text file")
    add_model_args(p)
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of the file")
    p.add_argument("--window", type=int, default=None,
                   help="tokens the model sees at once (default: min(1024, the model's context))")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between window starts; each window scores only tokens no earlier window "
                        "scored (default: window / 2; = window gives disjoint chunks)")
    p.add_argument("--json", action="store_true", default=False, help="print one JSON object")
    add_quiet_arg(p)
    p.set_defaults(func=run)


def num_windows(n: int, window: int, stride: int) -> int:
    """How many forwards `perplexity_details` runs: windows start every `stride` tokens until one
    reaches the end."""
    return 1 if n <= window else 1 + -(-(n - window) // stride)


def run(args: argparse.Namespace) -> int:
    from ..generation.scoring import perplexity_details

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such file: {args.file}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{args.file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if args.max_tokens is not None:
        check_positive("--max-tokens", args.max_tokens)
    if args.model == "default":
        args.model = None
    model = load_model_from_args(args)
    tok = require_tokenizer(model)
    window = args.window if args.window is not None else min(1024, model.config.max_position_embeddings)
    check_positive("--window", window)
    if window > model.config.max_position_embeddings:
        raise UsageError(f"--window {window} exceeds the model's context ({model.config.max_position_embeddings})")
    stride = args.stride if args.stride is not None else max(1, window // 2)
    if not 1 <= stride <= window:
        raise UsageError(f"--stride must be in [1, --window={window}], got {stride}")
    ids = tok.encode(text)
    if args.max_tokens is not None:
        ids = ids[: args.max_tokens]
    if len(ids) < 2:
        raise UsageError(f"{args.file}: needs at least 2 tokens, got {len(ids)}")
    t0 = time.perf_counter()
    bar = progress_bar(num_windows(len(ids), window, stride), desc="perplexity", unit="window",
                       enabled=progress_enabled(args.quiet))
    def tick(*_: object) -> None:  # a hook's non-None return would replace the output
        bar.update(1)

    hook = model.register_forward_hook(tick)  # one forward per window
    try:
        res = perplexity_details(model, ids, window, stride)
    finally:
        hook.remove()
        bar.close()
    secs = time.perf_counter() - t0
    out = {"file": str(path), "model": model.source, "perplexity": res.perplexity, "nll": res.nll,
           "num_tokens": res.num_tokens, "window": window, "stride": stride, "num_windows": res.num_windows,
           "seconds": round(secs, 3)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"perplexity {res.perplexity:.4f} (nll {res.nll:.4f} over {res.num_tokens} tokens, "
              f"window {window}, stride {stride}, {secs:.1f}s)")
    return 0
