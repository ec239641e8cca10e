# SPDX-License-Identifier: Apache-2.0
"""swisslm train CONFIG.yaml [--set a.b=v ...] [--resume [CKPT]]: pretrain (or continue) a model.

Single process: `swisslm train cfg.yaml`. Data parallel: `torchrun --nproc_per_node N -m swisslm
train cfg.yaml` (DDP by default, `--set training.parallel=fsdp` for FSDP2).
"""

from __future__ import annotations

import argparse
import logging

from ..progress import add_quiet_arg, progress_enabled


def register(sub) -> None:
    p = sub.add_parser("train", help="pretrain a model from a YAML config (torchrun for data parallel)")
    p.add_argument("config", help="YAML config (see examples/train_tiny_llama.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optimizer.lr=1e-3 (repeatable)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue from the latest checkpoint in run_dir (or from CKPT)")
    p.add_argument("--print-config", action="store_true", default=False, help="print the validated config and exit")
    p.add_argument("--export-hf", metavar="OUT", default=None,
                   help="do not train: write the run's latest checkpoint (or --resume CKPT) as an HF folder")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="peak FLOP/s per device for MFU (default: logging.peak_flops, else known GPUs only)")
    add_quiet_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..train.config import load_train_config

    overrides = list(args.overrides)
    if args.peak_flops is not None:  # validated (> 0) with the rest of the config
        overrides.append(f"logging.peak_flops={args.peak_flops!r}")
    cfg = load_train_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    if not args.quiet:  # per-step lines (when there is no bar) and checkpoint notices
        logging.getLogger("swisslm.train").setLevel(logging.INFO)
    cfg.logging.progress = cfg.logging.progress and progress_enabled(args.quiet)
    if args.export_hf:
        from ..train.run import export_checkpoint

        ckpt = args.resume if isinstance(args.resume, str) else None
        print(export_checkpoint(cfg, args.export_hf, ckpt))
        return 0
    from ..train.run import run_training

    run_training(cfg, resume=args.resume)
    return 0
