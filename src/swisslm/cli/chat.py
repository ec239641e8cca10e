# SPDX-License-Identifier: Apache-2.0
"""swisslm chat: an interactive conversation that streams tokens and keeps history.

/reset clears the history, /exit or Ctrl-D leaves."""

from __future__ import annotations

import argparse
import sys

import torch

from .common import add_model_args, load_model_from_args, require_tokenizer
from .generate import add_sampling_args, sampling_kwargs


def register(sub) -> None:
    p = sub.add_parser("chat", help="interactive chat (streams tokens)")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.set_defaults(func=run, max_new_tokens=512)


def run(args: argparse.Namespace) -> int:
    from ..generation import GenerationConfig, generate
    from ..generation.streaming import TextDeltas

    kwargs = sampling_kwargs(args)
    model = load_model_from_args(args)
    tok = require_tokenizer(model)
    eos = list(tok.eos_token_ids)
    interactive = sys.stdin.isatty()
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
    if interactive:
        sys.stderr.write(f"swisslm chat ({model.source}); /reset clears history, Ctrl-D exits\n")
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:  # EOF / Ctrl-D
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history.clear()
            sys.stderr.write("(history cleared)\n")
            continue
        history.append({"role": "user", "content": text})
        ids = tok.apply_chat_template(system + history, add_generation_prompt=True, tokenize=True)
        deltas = TextDeltas(tok)
        reply_ids: list[int] = []

        def on_token(t: torch.Tensor, deltas=deltas, reply_ids=reply_ids) -> None:
            tid = int(t[0])
            if tid in eos:
                return
            reply_ids.append(tid)
            sys.stdout.write(deltas.push(tid))
            sys.stdout.flush()

        generate(model, torch.tensor([ids], device=args.device), None,
                 GenerationConfig(eos_token_id=eos, **kwargs), streamer=on_token)
        sys.stdout.write(deltas.flush() + "\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": tok.decode(reply_ids, skip_special_tokens=True)})
    return 0
