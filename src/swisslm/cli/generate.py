# SPDX-License-Identifier: Apache-2.0
"""swisslm generate PROMPT: complete a prompt (or one chat turn with --chat)."""

from __future__ import annotations

import argparse
import json
import sys

from . import timings
from .common import UsageError, add_model_args, check_positive, load_model_from_args, require_tokenizer
from .timings import phase


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The sampling flags, generated from SamplingParams' fields (the one record generate, the
    server and the CLI share; torch-free, so --help stays instant)."""
    from ..generation.params import add_cli_args

    add_cli_args(p)


def sampling_params(args: argparse.Namespace, **extra):
    """The validated SamplingParams of the flags (plus fields the command sets itself); runs
    before the model loads, a bad value is one line naming its flag."""
    from ..generation.params import from_cli_args

    try:
        return from_cli_args(args, **extra)
    except ValueError as e:
        raise UsageError(str(e)) from None


def register(sub) -> None:
    p = sub.add_parser("generate", help="complete a prompt")
    p.add_argument("prompt")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (1 = no beam search)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score = logprob / len**lp")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="forbid repeating n-grams of this size")
    p.add_argument("--num-return-sequences", type=int, default=1, help="completions to return")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable); never printed")
    p.add_argument("--logprobs", type=int, default=None, metavar="N",
                   help="with --json: each new token's logprob and its N (0-20) best alternatives")
    p.add_argument("--json-schema", metavar="FILE", default=None,
                   help="constrain the output to JSON valid against this JSON schema file ('{}' in it: any object)")
    p.add_argument("--regex", default=None, help="constrain the output to match this regular expression")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run, check=_check, fast_exit=True)


def _check(args: argparse.Namespace) -> tuple:
    """Every option check, before the model loads (main() runs it first; run() again for the
    values): the rows' SamplingParams and generate()'s batch keywords."""
    if not args.prompt:
        raise UsageError("the prompt is empty")
    check_positive("--num-beams", args.num_beams)
    check_positive("--num-return-sequences", args.num_return_sequences)
    if args.stream and (args.num_beams > 1 or args.num_return_sequences > 1):
        raise UsageError("--stream prints one sequence: it cannot be combined with --num-beams or "
                         "--num-return-sequences > 1")
    if args.stream and args.json:
        raise UsageError("--stream and --json are exclusive")
    if args.num_beams > 1 and args.stop:
        raise UsageError("--stop is not supported with --num-beams > 1")
    if args.json_schema is not None and args.regex is not None:
        raise UsageError("--json-schema and --regex are exclusive")
    if (args.json_schema is not None or args.regex is not None) and args.num_beams > 1:
        raise UsageError("--json-schema / --regex are not supported with --num-beams > 1")
    if args.regex is not None and not args.regex:
        raise UsageError("--regex is empty")
    if args.logprobs is not None:
        if not args.json:
            raise UsageError("--logprobs needs --json")
        if not 0 <= args.logprobs <= 20:
            raise UsageError(f"--logprobs must be in [0, 20], got {args.logprobs}")
        if args.num_beams > 1:
            raise UsageError("--logprobs is not supported with --num-beams > 1")
    params = sampling_params(args, stop=args.stop or [], logprobs=args.logprobs,
                             no_repeat_ngram_size=args.no_repeat_ngram_size)
    if args.num_beams == 1 and args.num_return_sequences > 1 and params.greedy:
        raise UsageError("--num-return-sequences > 1 needs --temperature > 0 or --num-beams > 1")
    batch = dict(num_beams=args.num_beams, num_return_sequences=args.num_return_sequences)
    if args.num_beams > 1:
        batch["length_penalty"] = args.length_penalty
    if args.json_schema is not None:
        batch["json_schema"] = _read_schema(args.json_schema)
    if args.regex is not None:
        batch["regex"] = args.regex
    return params, batch


def _read_schema(path: str) -> dict:
    """The --json-schema file's schema (a JSON object), or one line saying what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
    except OSError as e:
        raise UsageError(f"--json-schema: cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--json-schema: {path} is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--json-schema: {path} must hold a JSON object (a JSON schema)")
    return schema


def _logprob_entries(tok, res, row: int) -> list[dict]:
    """OpenAI's chat `logprobs.content` shape: token, logprob, bytes, top_logprobs."""
    entries = []
    for i, t in enumerate(res.new_tokens(row)):
        top = [{"token": tok.decode([int(a)], skip_special_tokens=False), "logprob": float(b)}
               for a, b in zip(res.top_logprob_ids[row, i], res.top_logprobs[row, i])]
        text = tok.decode([t], skip_special_tokens=False)
        entries.append({"token": text, "id": t, "logprob": float(res.logprobs[row, i]),
                        "bytes": list(text.encode("utf-8")), "top_logprobs": top})
    return entries


def warm_kernels() -> None:
    """Under SWISSLM_TIMINGS, build (first run: a C compile) or load the CPU decode kernels up
    front, so their cost is its own line rather than hidden in the first token. Otherwise they
    are built where first used, as always (and not at all by paths that never use them)."""
    if not timings.ENABLED:
        return
    from .. import kernels

    with phase("kernels"):
        kernels.available()


def run(args: argparse.Namespace) -> int:
    params, batch = _check(args)
    model = load_model_from_args(args)
    tok = require_tokenizer(model)
    if args.device == "cpu":
        warm_kernels()
    x = model.encode_prompt(args.prompt, chat=args.chat)
    constrained = {k: batch.pop(k) for k in ("json_schema", "regex") if k in batch}
    if constrained:  # compiled against this model's tokenizer: an invalid schema is the user's mistake
        try:
            cfg = model.generation_config(sampling=params, **constrained)
        except ValueError as e:
            raise UsageError(f"--{next(iter(constrained)).replace('_', '-')}: {e}") from None
        params = cfg.params
    if args.stream:
        with phase("generate"):
            for delta in model.stream(x, sampling=params):
                sys.stdout.write(delta)
                sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    with phase("generate"):
        res = model.generate(x, return_dict_in_generate=True, sampling=params, **batch)
    if args.json:
        rows = []
        for r in range(res.sequences.shape[0]):
            row = {"text": res.texts[r], "tokens": res.new_tokens(r), "finish_reason": res.finish_reasons[r],
                   "num_new_tokens": res.num_new_tokens[r]}
            if res.sequences_scores is not None:
                row["score"] = float(res.sequences_scores[r])
            if args.logprobs is not None:
                row["logprobs"] = _logprob_entries(tok, res, r)
            rows.append(row)
        out = {"prompt": args.prompt, "num_prompt_tokens": x.shape[1], **rows[0]}
        if len(rows) > 1:
            out["sequences"] = rows
        print(json.dumps(out, ensure_ascii=False))
    else:
        print("\n\n".join(res.texts) if len(res.texts) > 1 else res.texts[0])
    return 0
