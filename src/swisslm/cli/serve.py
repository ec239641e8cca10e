# SPDX-License-Identifier: Apache-2.0
"""swisslm serve: the OpenAI-compatible / HF-inference HTTP server (FastAPI + uvicorn).

Binds 127.0.0.1 unless --host says otherwise; with --api-key (or SWISSLM_API_KEY) every
endpoint but /health needs `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .common import UsageError, add_model_args, check_positive, load_with_message, require_tokenizer
from .validate import check_model_args, check_port

logger = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible and HF inference APIs")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--api-key", default=None, help="require this bearer key (default: env SWISSLM_API_KEY)")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients send (default: the checkpoint's file or folder name)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (KV cache rows)")
    p.add_argument("--max-model-len", type=int, default=2048,
                   help="prompt + completion tokens per sequence (capped at the model's own limit)")
    p.add_argument("--max-queue", type=int, default=256, help="sequences waiting for a row before 429")
    p.add_argument("--prefill-chunk", type=int, default=512,
                   help="prompt tokens prefilled per engine step (bounds the stall a long prompt causes)")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="recompute every prompt (by default requests sharing a prompt prefix reuse its KV)")
    p.add_argument("--prefix-cache-mb", type=int, default=64,
                   help="memory for cached prompt-prefix KV blocks, least recently used evicted first")
    p.add_argument("--prefix-block", type=int, default=16, help="prefix cache block size in tokens")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=PATH",
                   help="also serve this PEFT LoRA adapter folder as model NAME (repeatable); "
                        "requests pick it with their `model` field, rows of different adapters share a batch")
    p.add_argument("--max-tokens", type=int, default=4096, help="largest max_tokens a request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (413 past it)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run, check=check)


def served_name(model_arg: str | None) -> str:
    """The id in /v1/models: the checkpoint's name, never a path (no directories leak out)."""
    if model_arg is None:
        from ..io.embedded import DEFAULT_MODEL_NAME

        return DEFAULT_MODEL_NAME
    path = Path(model_arg)
    return path.stem if path.suffix == ".gguf" else (path.resolve().name or "model")


def parse_loras(specs: list[str], served: str) -> dict[str, Path]:
    """--lora NAME=PATH values -> {name: folder}, checked without loading anything: one
    UsageError line for a malformed value, a duplicate or reserved name, or a folder that is not
    a PEFT LoRA adapter."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UsageError(f"--lora {spec!r}: expected NAME=PATH (a PEFT adapter folder)")
        if name in out or name == served:
            raise UsageError(f"--lora {spec!r}: the name {name!r} is already " +
                             ("used by another --lora" if name in out else "the base model's"))
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--lora {spec!r}: {path} is not a folder")
        cfg = folder / "adapter_config.json"
        if not cfg.is_file() or not (folder / "adapter_model.safetensors").is_file():
            raise UsageError(f"--lora {spec!r}: {path} has no adapter_config.json + adapter_model.safetensors "
                             "(a PEFT LoRA adapter folder)")
        try:
            peft_type = json.loads(cfg.read_text()).get("peft_type", "LORA")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            raise UsageError(f"--lora {spec!r}: {cfg} is not a JSON object") from None
        if peft_type != "LORA":
            raise UsageError(f"--lora {spec!r}: peft_type {peft_type!r} is not LORA")
        out[name] = folder
    return out


def check(args: argparse.Namespace) -> None:
    """Option checks that need no model, the port's availability included (main() runs them
    before run(), so a typo or a busy port costs milliseconds, not a model load)."""
    for name in ("--max-batch", "--max-model-len", "--max-queue", "--max-tokens", "--max-body-bytes",
                 "--prefill-chunk", "--prefix-cache-mb", "--prefix-block"):
        check_positive(name, getattr(args, name[2:].replace("-", "_")))
    if args.api_key == "":
        raise UsageError("--api-key must not be empty")
    parse_loras(args.lora, args.served_model_name or served_name(args.model))
    check_port(args.host, args.port)


def run(args: argparse.Namespace) -> int:
    api_key = args.api_key if args.api_key is not None else os.environ.get("SWISSLM_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logger.warning("serving on %s without an API key: anyone who can reach it can use it", args.host)
    name = args.served_model_name or served_name(args.model)
    loras = parse_loras(args.lora, name)
    model = load_with_message(args)
    require_tokenizer(model)
    import uvicorn

    from ..serve import create_app
    from ..serve.engine import install_adapters

    options = {"prefix_cache_bytes": 0 if args.no_prefix_cache else args.prefix_cache_mb << 20,
               "prefix_block": args.prefix_block}
    try:
        if loras:
            install_adapters(model, {k: str(v) for k, v in loras.items()})
        app = create_app(model, name, api_key=api_key, max_batch=args.max_batch, max_model_len=args.max_model_len,
                         max_queue=args.max_queue, max_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes,
                         prefill_chunk=args.prefill_chunk, engine_options=options)
    except ValueError as e:
        raise UsageError(str(e)) from None
    engine = app.state.engine
    if engine is not None:  # what the server can grow to, before the first request commits any of it
        sys.stderr.write(f"{engine.memory_summary()}\n")
        if loras:
            sys.stderr.write(f"LoRA adapters: {', '.join(loras)} (base: {name})\n")
        sys.stderr.flush()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        app.state.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m swisslm.cli.serve ...`: the serve command alone (for process managers and the
    load benchmark); user mistakes exit 2 with one line, as under `swisslm serve`."""
    from . import USER_ERRORS, _Parser

    parser = _Parser(prog="swisslm", description="serve the OpenAI-compatible and HF inference APIs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    register(sub)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_model_args(args)
        check(args)
        return run(args)
    except (*USER_ERRORS, ValueError) as e:
        sys.stderr.write(f"swisslm serve: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
