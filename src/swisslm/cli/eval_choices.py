# SPDX-License-Identifier: Apache-2.0
"""swisslm eval-choices FILE.jsonl: multiple-choice scoring by log-likelihood, the way
lm-evaluation-harness scores ARC / HellaSwag-style items.

Each line: {"context": "...", "choices": [" a", " b", ...], "gold": 1}  ("label" or "answer"
may name the gold index instead; without one only the scores are printed). Each choice is
appended to the context as written, so give it the leading space the text needs, as the
harness's templates do (`Answer:` + ` Paris`). Reported: acc (highest summed logprob) and
acc_norm (highest logprob per character of the choice, the harness's length normalisation).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..io.jsonl import iter_jsonl
from ..progress import add_quiet_arg, progress_bar, progress_enabled
from .common import UsageError, add_model_args, check_positive, load_model_from_args, require_tokenizer

GOLD_KEYS = ("gold", "label", "answer")


def register(sub) -> None:
    p = sub.add_parser("eval-choices", help="multiple-choice accuracy by log-likelihood (ARC/HellaSwag style)")
    p.add_argument("file", help="JSONL: one {context, choices, gold} object per line")
    add_model_args(p)
    p.add_argument("--batch-size", type=int, default=8, help="choices scored per forward")
    p.add_argument("--limit", type=int, default=None, help="score only the first N items")
    p.add_argument("--json", action="store_true", default=False, help="print one JSON object")
    add_quiet_arg(p)
    p.set_defaults(func=run)


def read_items(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    items = []
    for n, obj in iter_jsonl(path, UsageError):
        if not isinstance(obj.get("context"), str):
            raise UsageError(f"{path}:{n}: needs a string 'context'")
        choices = obj.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UsageError(f"{path}:{n}: 'choices' must be a list of at least 2 non-empty strings")
        gold = next((obj[k] for k in GOLD_KEYS if k in obj), None)
        if gold is not None and (not isinstance(gold, int) or isinstance(gold, bool)
                                 or not 0 <= gold < len(choices)):
            raise UsageError(f"{path}:{n}: gold must be an index into choices (0..{len(choices) - 1}), got {gold!r}")
        items.append({"context": obj["context"], "choices": choices, "gold": gold})
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise UsageError(f"{path}: no items")
    return items


def score_items(model: Any, items: list[dict[str, Any]], batch_size: int = 8, progress: bool = False,
                ) -> dict[str, Any]:
    """Score every choice of every item in one batched pass; returns the report dict."""
    from ..generation.scoring import encode_pair, loglikelihood

    tok = model.tokenizer
    reqs, owner = [], []
    for i, it in enumerate(items):
        for c in it["choices"]:
            reqs.append(encode_pair(tok, it["context"], c))
            owner.append(i)
    bar = progress_bar(-(-len(reqs) // batch_size), desc="eval-choices", unit="batch", enabled=progress)

    def tick(*_: object) -> None:  # a hook's non-None return would replace the output
        bar.update(1)

    hook = model.register_forward_hook(tick)  # one forward per batch of choices
    try:
        results = loglikelihood(model, reqs, batch_size=batch_size)
    finally:
        hook.remove()
        bar.close()
    out_items, correct, correct_norm, graded = [], 0, 0, 0
    k = 0
    for it in items:
        n = len(it["choices"])
        res = results[k : k + n]
        k += n
        ll = [r.logprob for r in res]
        ll_norm = [r.logprob / len(c) for r, c in zip(res, it["choices"])]
        pred = max(range(n), key=ll.__getitem__)
        pred_norm = max(range(n), key=ll_norm.__getitem__)
        entry = {"pred": pred, "pred_norm": pred_norm, "gold": it["gold"], "logprobs": ll,
                 "logprobs_per_char": ll_norm, "num_tokens": [len(r.token_logprobs) for r in res],
                 "is_greedy": [r.is_greedy for r in res]}
        if it["gold"] is not None:
            graded += 1
            correct += pred == it["gold"]
            correct_norm += pred_norm == it["gold"]
        out_items.append(entry)
    report: dict[str, Any] = {"num_items": len(items), "num_graded": graded}
    if graded:
        report.update(acc=correct / graded, acc_norm=correct_norm / graded)
    report["items"] = out_items
    return report


def run(args: argparse.Namespace) -> int:
    check_positive("--batch-size", args.batch_size)
    if args.limit is not None:
        check_positive("--limit", args.limit)
    items = read_items(Path(args.file), args.limit)
    if args.model == "default":
        args.model = None
    model = load_model_from_args(args)
    require_tokenizer(model)
    report = score_items(model, items, args.batch_size, progress=progress_enabled(args.quiet))
    report = {"file": args.file, "model": model.source, **report}
    if args.json:
        print(json.dumps(report))
        return 0
    for i, e in enumerate(report["items"]):
        mark = "" if e["gold"] is None else ("  ok" if e["pred"] == e["gold"] else "  wrong")
        scores = " ".join(f"{x:.3f}" for x in e["logprobs"])
        print(f"{i}: pred {e['pred']} (norm {e['pred_norm']}) gold {e['gold']}{mark}  logprobs [{scores}]")
    if report["num_graded"]:
        print(f"acc {report['acc']:.4f}  acc_norm {report['acc_norm']:.4f}  ({report['num_graded']} items)")
    return 0
