# SPDX-License-Identifier: Apache-2.0
"""Tokenize text / JSONL into the flat token memmap that `WindowLoader` reads.

Inputs: `.txt` files (one document per file, or per non-empty line with `split_lines`),
`.jsonl` files (one document per line, text under `text_key`), or folders of those. Documents
are encoded in worker processes (each loads the tokenizer once) and written in input order, an
EOS id after each document (the GPT-2 / nanoGPT / litgpt convention), so the output is the same
for any number of workers. Large `.txt` documents are cut at line boundaries into ~1 MB pieces
so one big file still spreads over the workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError
from ..io.errors import CheckpointError
from ..io.jsonl import iter_jsonl
from .data import token_dtype, write_meta

logger = logging.getLogger(__name__)

_PIECE_BYTES = 1 << 20


def load_tokenizer(spec: str | None) -> Any:
    """An HF tokenizer folder, a .gguf file, or None for the embedded default model's tokenizer."""
    from ..io.gguf import read_gguf_tokenizer
    from ..io.tokenizer import Tokenizer

    if spec is None or spec == "default":
        from ..io.embedded import default_model_path

        return read_gguf_tokenizer(default_model_path())
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    if p.is_file() and p.suffix == ".gguf":
        return read_gguf_tokenizer(p)
    if p.is_dir():
        return Tokenizer.from_folder(p)
    raise CheckpointError(f"{p}: --tokenizer must be an HF folder (with tokenizer.json) or a .gguf file")


def _input_files(inputs: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".txt", ".jsonl", ".json"))
            if not found:
                raise ConfigError(f"{p}: no .txt or .jsonl files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(2, "No such file or directory", str(p))
    return files


def _documents(files: list[Path], text_key: str, split_lines: bool) -> Iterator[tuple[str, bool]]:
    """(text piece, ends_document) in input order."""
    for f in files:
        if f.suffix in (".jsonl", ".json"):
            for lineno, obj in iter_jsonl(f, ConfigError):
                if text_key not in obj:
                    raise ConfigError(f"{f}:{lineno}: no {text_key!r} field (set --text-key)")
                yield str(obj[text_key]), True
            continue
        with open(f, encoding="utf-8") as fh:
            if split_lines:
                for line in fh:
                    if line.strip():
                        yield line.rstrip("\n"), True
                continue
            buf: list[str] = []
            size = 0
            for line in fh:
                buf.append(line)
                size += len(line)
                if size >= _PIECE_BYTES:
                    yield "".join(buf), False
                    buf, size = [], 0
            yield "".join(buf), True


_TOK: Any = None


def _init_worker(backend_json: str) -> None:
    # Workers get the backend as JSON: rebuilding it is instant, while re-reading a GGUF's
    # vocabulary in every worker costs seconds each.
    import tokenizers

    global _TOK
    _TOK = tokenizers.Tokenizer.from_str(backend_json)


def _encode(item: tuple[str, bool]) -> tuple[np.ndarray, bool, int]:
    text, ends = item
    ids = _TOK.encode(text, add_special_tokens=False).ids
    return np.asarray(ids, dtype=np.int64), ends, len(text.encode("utf-8"))


def prepare_data(inputs: list[str | Path], out: str | Path, tokenizer: str | None = None, *,
                 text_key: str = "text", split_lines: bool = False, workers: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Tokenize `inputs` into OUT/tokens.bin + OUT/meta.json; returns the metadata."""
    files = _input_files(inputs)
    tok = load_tokenizer(tokenizer)
    eos = tok.eos_token_id
    if eos is None:
        raise CheckpointError(f"{tokenizer or 'default tokenizer'}: has no EOS token to separate documents")
    vocab = int(tok.vocab_size)
    dt = token_dtype(vocab)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    total_bytes = sum(f.stat().st_size for f in files)
    if workers is None:  # small inputs are faster in-process than through a pool
        workers = 1 if total_bytes < 8 * _PIECE_BYTES else min(8, os.cpu_count() or 1)
    from ..progress import progress_bar

    bar = progress_bar(total_bytes, unit="B", unit_scale=True, desc="tokenize", enabled=progress)
    n_tokens = n_docs = 0
    tmp = out_dir / "tokens.bin.tmp"
    docs = _documents(files, text_key, split_lines)
    with open(tmp, "wb") as fh:
        if workers > 1:
            # fork is cheap (spawn re-imports torch in every worker). It is safe here because the
            # parent never ran the tokenizers thread pool (no encode_batch) before forking.
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tok.backend.to_str(),))
            results = pool.imap(_encode, docs, chunksize=16)
        else:
            _init_worker(tok.backend.to_str())
            pool, results = None, map(_encode, docs)
        try:
            for ids, ends, nbytes in results:
                if ends:
                    ids = np.append(ids, eos)
                    n_docs += 1
                if ids.size and int(ids.max()) >= 2 ** (8 * dt.itemsize):
                    raise CheckpointError(f"token id {int(ids.max())} does not fit {dt.name}")
                ids.astype(dt).tofile(fh)
                n_tokens += int(ids.size)
                bar.update(nbytes)
        finally:
            if pool is not None:
                pool.terminate()
            bar.close()
    os.replace(tmp, out_dir / "tokens.bin")
    src = None if tokenizer in (None, "default") else str(Path(tokenizer).resolve())
    write_meta(out_dir, dtype=dt, num_tokens=n_tokens, num_documents=n_docs, vocab_size=vocab,
               eos_token_id=eos, bos_token_id=tok.bos_token_id, tokenizer=src,
               sources=[str(f) for f in files])
    return json.loads((out_dir / "meta.json").read_text())
