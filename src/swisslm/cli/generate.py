# SPDX-License-Identifier: Apache-2.0
"""swisslm generate PROMPT: complete a prompt (or one chat turn with --chat)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .common import UsageError, add_model_args, check_positive, load_model_from_args, require_tokenizer


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def sampling_kwargs(args: argparse.Namespace) -> dict:
    check_positive("--max-new-tokens", args.max_new_tokens)
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    do_sample = args.temperature > 0
    return dict(max_new_tokens=args.max_new_tokens, do_sample=do_sample,
                temperature=args.temperature if do_sample else 1.0, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def register(sub) -> None:
    p = sub.add_parser("generate", help="complete a prompt")
    p.add_argument("prompt")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def encode_prompt(tok, prompt: str, chat: bool) -> list[int]:
    if chat:
        return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=True)
    return tok.encode(prompt)


def run(args: argparse.Namespace) -> int:
    kwargs = sampling_kwargs(args)
    check_positive("--num-beams", args.num_beams)
    if args.stream and args.num_beams > 1:
        raise UsageError("--stream cannot be combined with --num-beams > 1")
    model = load_model_from_args(args)
    tok = require_tokenizer(model)
    ids = encode_prompt(tok, args.prompt, args.chat)
    x = torch.tensor([ids], device=args.device)
    if args.stream and not args.json:
        from ..generation.streaming import TextDeltas

        deltas = TextDeltas(tok)
        eos = set(tok.eos_token_ids)

        def on_token(t: torch.Tensor) -> None:
            if int(t[0]) not in eos:
                sys.stdout.write(deltas.push(int(t[0])))
                sys.stdout.flush()

        from ..generation import GenerationConfig, generate

        generate(model, x, None, GenerationConfig(eos_token_id=list(eos), **kwargs), streamer=on_token)
        sys.stdout.write(deltas.flush() + "\n")
        return 0
    out = model.generate(x, num_beams=args.num_beams, stop=args.stop, **kwargs)
    new = out[0, len(ids):].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": text, "tokens": new,
                          "num_prompt_tokens": len(ids), "num_new_tokens": len(new)}))
    else:
        print(text)
    return 0
