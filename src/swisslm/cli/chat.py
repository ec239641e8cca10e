# SPDX-License-Identifier: Apache-2.0
"""swisslm chat: an interactive conversation that streams tokens and keeps history.

/reset clears the history, /exit or Ctrl-D leaves."""

from __future__ import annotations

import argparse
import sys

from .common import add_model_args, load_with_message, require_tokenizer
from .generate import add_sampling_args, sampling_params


def register(sub) -> None:
    p = sub.add_parser("chat", help="interactive chat (streams tokens)")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.set_defaults(func=run, check=sampling_params, fast_exit=True, max_new_tokens=512)


def run(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    interactive = sys.stdin.isatty()
    # The banner and a loading line come first, before torch is even imported: the user sees at
    # once that the command started, and what it is waiting for.
    if interactive:
        sys.stderr.write("swisslm chat: /reset clears history, /exit or Ctrl-D leaves\n")
    model = load_with_message(args)
    tok = require_tokenizer(model)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
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
        reply = model.stream(ids, sampling=params)
        try:
            for delta in reply:
                sys.stdout.write(delta)
                sys.stdout.flush()
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the session
            pass
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": reply.text})
    return 0
