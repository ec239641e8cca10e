# SPDX-License-Identifier: Apache-2.0
"""Sequence classification fine-tuning: ClassificationHeadMixin (+ optional LoRA) on any family.

`swisslm classify` trains a head on pooled features of a decoder (SmolLM2: last token) or an
encoder (MiniLM: mean) and reports accuracy. It runs on the shared `train.Trainer` (checkpoints,
resume, progress, metrics.csv) through a thin adapter: the trainer's loss is next-token
cross-entropy over (B, T, V) logits with shifted labels, and a classification is its length-2
case -- logits (B, 2, L) whose first row holds the class scores, labels (B, 2) = [-100, class].

Output folder: `classifier_head.safetensors` + `classifier_config.json` (labels, pooling, head
shape, base model), the LoRA adapter in PEFT format when `peft`, the fine-tuned backbone as an HF
folder `model/` when `full_finetune`, `metrics.csv`, `checkpoints/`. `load_classifier` +
`predict` (`swisslm classify --predict FILE.jsonl --model RUN_DIR`) use it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..io.errors import CheckpointError
from ..mixins.heads import ClassificationHeadMixin
from ..mixins.lora import LoRAMixin, trainable_parameters
from .data import IGNORE, DataError, read_jsonl

log = logging.getLogger(__name__)


@dataclass
class ClassifyConfig:
    data: str
    model: str | None = None
    valid_data: str | None = None
    output: str = "swisslm-classify"
    text_column: str = "text"
    label_column: str = "label"
    lr: float = 1e-3
    epochs: int = 3
    max_steps: int = 0
    batch_size: int = 16
    gradient_accumulation: int = 1
    block_size: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    pooling: str | None = None  # None: "last" for causal models, "mean" for encoders
    head_hidden: int = 256  # 0 = a linear head
    dropout: float = 0.1
    peft: bool = False
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"
    full_finetune: bool = False
    seed: int = 42
    save_steps: int = 0
    resume: bool = False
    progress: bool = True
    dtype: str = "float32"
    device: str = "cpu"

    def validate(self) -> None:
        for name in ("lr", "epochs", "batch_size", "gradient_accumulation", "block_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.pooling not in (None, "last", "mean", "first"):
            raise ValueError(f"--pooling must be last, mean or first, got {self.pooling!r}")
        if self.peft and self.full_finetune:
            raise ValueError("--peft and --full-finetune exclude each other")


class _Out(NamedTuple):
    logits: torch.Tensor


class ClassifierAsLM(nn.Module):
    """Presents backbone + head to the LM trainer: logits (B, 2, L), row 0 = class scores."""

    def __init__(self, model: nn.Module, head: ClassificationHeadMixin) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> _Out:
        scores = self.head.classify(self.model, input_ids, attention_mask)  # (B, L)
        return _Out(torch.stack([scores, torch.zeros_like(scores)], dim=1))  # (B, 2, L)


def load_classification_rows(path: str | Path, tok: Any, cfg: ClassifyConfig,
                             labels: list[Any] | None = None) -> tuple[list[list[int]], list[int], list[Any]]:
    """(token ids per row, class index per row, label names). Labels are the sorted distinct values
    of the label column unless `labels` (from the training set) is given."""
    rows = read_jsonl(path)
    for n, r in enumerate(rows, 1):
        if cfg.text_column not in r or cfg.label_column not in r:
            raise DataError(f"{path}: row {n}: needs {cfg.text_column!r} and {cfg.label_column!r}")
        if not isinstance(r[cfg.text_column], str):
            raise DataError(f"{path}: row {n}: {cfg.text_column!r} must be a string")
    if labels is None:
        labels = sorted({r[cfg.label_column] for r in rows}, key=lambda v: (str(type(v)), v))
        if len(labels) < 2:
            raise DataError(f"{path}: needs at least 2 distinct labels, found {labels}")
    index = {v: i for i, v in enumerate(labels)}
    ids, ys = [], []
    for n, r in enumerate(rows, 1):
        if r[cfg.label_column] not in index:
            raise DataError(f"{path}: row {n}: label {r[cfg.label_column]!r} not among the training labels")
        ids.append(list(tok.encode(r[cfg.text_column]))[: cfg.block_size] or [tok.eos_token_id or 0])
        ys.append(index[r[cfg.label_column]])
    return ids, ys, labels


class ClassificationBatches:
    """Shuffled, right-padded batches over epochs, resumable like SFTBatches."""

    def __init__(self, ids: list[list[int]], ys: list[int], batch_size: int, pad_id: int, seed: int = 0,
                 shuffle: bool = True) -> None:
        self.ids, self.ys, self.batch_size, self.pad_id = ids, ys, batch_size, pad_id
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.index = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.ids) / self.batch_size)

    def _batch(self, idx: list[int]) -> dict[str, torch.Tensor]:
        T = max(len(self.ids[i]) for i in idx)
        x = torch.full((len(idx), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for j, i in enumerate(idx):
            x[j, : len(self.ids[i])] = torch.tensor(self.ids[i])
            mask[j, : len(self.ids[i])] = 1
        labels = torch.tensor([[IGNORE, self.ys[i]] for i in idx])
        return {"input_ids": x, "attention_mask": mask, "labels": labels}

    def __iter__(self):
        while True:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
                order = torch.randperm(len(self.ids), generator=g).tolist()
            else:
                order = list(range(len(self.ids)))
            while self.index < self.batches_per_epoch:
                i = self.index * self.batch_size
                self.index += 1
                yield self._batch(order[i : i + self.batch_size])
            self.epoch, self.index = self.epoch + 1, 0

    def one_epoch(self):
        for i in range(0, len(self.ids), self.batch_size):
            yield self._batch(list(range(i, min(i + self.batch_size, len(self.ids)))))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, st: dict[str, int]) -> None:
        self.epoch, self.index = int(st["epoch"]), int(st["index"])


@torch.no_grad()
def accuracy(wrapper: ClassifierAsLM, batches: ClassificationBatches) -> float:
    wrapper.eval()
    right = total = 0
    for b in batches.one_epoch():
        pred = wrapper(b["input_ids"], b["attention_mask"]).logits[:, 0].argmax(-1)
        right += int((pred == b["labels"][:, 1]).sum())
        total += len(pred)
    return right / max(total, 1)


def run_classify(cfg: ClassifyConfig, model: Any = None) -> dict[str, Any]:
    from ..api import AutoModel
    from ..train import CheckpointManager, Trainer, TrainerConfig, make_schedule
    from ..train.metrics import default_loggers
    from ..train.optim import build_adamw, param_groups
    from .peft_format import save_adapter
    from .sft import parse_target_modules

    cfg.validate()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output)
    if model is None:
        model = AutoModel.from_pretrained(cfg.model, dtype=cfg.dtype, device=cfg.device)
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"{model.source}: the checkpoint has no tokenizer")
    ids, ys, labels = load_classification_rows(cfg.data, tok, cfg)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    train = ClassificationBatches(ids, ys, cfg.batch_size, pad, seed=cfg.seed)
    valid = None
    if cfg.valid_data:
        vids, vys, _ = load_classification_rows(cfg.valid_data, tok, cfg, labels)
        valid = ClassificationBatches(vids, vys, cfg.batch_size, pad, shuffle=False)
    pooling = cfg.pooling or ("last" if model.config.causal else "mean")
    head = ClassificationHeadMixin(model.config.hidden_size, len(labels),
                                   hidden_sizes=(cfg.head_hidden,) if cfg.head_hidden else (),
                                   dropout=cfg.dropout, pooling=pooling, freeze_base=not cfg.full_finetune)
    model.add_mixin("classifier", head)
    if cfg.peft:
        model.add_mixin("lora", LoRAMixin(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                          target_modules=parse_target_modules(cfg.target_modules)))
    trainable, total = trainable_parameters(model)
    wrapper = ClassifierAsLM(model, head)
    steps = cfg.max_steps or math.ceil(cfg.epochs * train.batches_per_epoch / cfg.gradient_accumulation)
    warmup = math.ceil(cfg.warmup_ratio * steps)
    opt = build_adamw(param_groups(wrapper, weight_decay=cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    sched = make_schedule("wsd", lr=cfg.lr, warmup_steps=warmup, total_steps=steps,
                          decay_steps=max(steps - warmup, 0), decay_style="linear")
    ckpts = CheckpointManager(out / "checkpoints", keep_last=2)
    latest = ckpts.latest() if cfg.resume else None
    if cfg.resume and latest is None:
        raise ValueError(f"--resume: no checkpoint under {out / 'checkpoints'}")
    tcfg = TrainerConfig(max_steps=steps, grad_accum=cfg.gradient_accumulation, log_every=max(1, steps // 10),
                         checkpoint_every=cfg.save_steps, progress=cfg.progress,
                         eval_every=0, extra={"classify_config": asdict(cfg)})
    trainer = Trainer(wrapper, opt, sched, tcfg, checkpoints=ckpts,
                      loggers=default_loggers(out, resume_step=int(latest.name[5:]) if latest else None,
                                              tensorboard=False),
                      eval_iter_fn=(lambda: valid.one_epoch()) if valid else None)
    if latest is not None:
        trainer.resume(latest, train)
    history: list[dict[str, float]] = []
    trainer.callbacks.append(lambda _t, m: history.append(dict(m)))
    trainer.fit(train)
    summary: dict[str, Any] = {
        "labels": labels, "pooling": pooling, "trainable_parameters": trainable, "total_parameters": total,
        "steps": trainer.state.step, "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "train_accuracy": accuracy(wrapper, ClassificationBatches(ids, ys, cfg.batch_size, pad, shuffle=False)),
    }
    if valid is not None:
        summary["accuracy"] = accuracy(wrapper, valid)
        summary["eval_loss"] = trainer.evaluate().get("eval_loss")
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(out / HEAD_FILE))
    source = getattr(model, "source", None)
    base = str(Path(source).resolve()) if source and Path(source).exists() else source
    if cfg.full_finetune:  # the backbone changed too: keep it, without the head
        model.del_mixin("classifier")
        model.save_pretrained(out / "model")
        model.add_mixin("classifier", head)
        base = str((out / "model").resolve())
    (out / CONFIG_FILE).write_text(json.dumps(
        {"labels": labels, "pooling": pooling, "hidden_size": model.config.hidden_size,
         "head_hidden": cfg.head_hidden, "base_model": base, "block_size": cfg.block_size,
         "text_column": cfg.text_column, "label_column": cfg.label_column, "peft": cfg.peft}, indent=2))
    if cfg.peft:
        save_adapter(model, out, name="lora", base_model_name_or_path=base)
    (out / "classify_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


HEAD_FILE, CONFIG_FILE = "classifier_head.safetensors", "classifier_config.json"


def read_classifier_config(run_dir: str | Path) -> dict[str, Any]:
    """The classifier_config.json of a `swisslm classify` output folder (checked, no model loaded)."""
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file() or not (run / HEAD_FILE).is_file():
        raise CheckpointError(f"{run}: not a classify output folder (needs {CONFIG_FILE} and {HEAD_FILE})")
    return json.loads((run / CONFIG_FILE).read_text())


def load_classifier(run_dir: str | Path, base_model: str | None = None, dtype: str = "float32",
                    device: str = "cpu") -> tuple[Any, ClassificationHeadMixin, dict[str, Any]]:
    """Rebuild a trained classifier: its base model (or `base_model`), the saved head and, when
    the run trained one, its LoRA adapter. Returns (model, head, classifier config), in eval mode."""
    from ..api import AutoModel
    from .peft_format import load_adapter

    run = Path(run_dir)
    meta = read_classifier_config(run)
    base = base_model or meta.get("base_model")
    if base is None:
        raise CheckpointError(f"{run}: {CONFIG_FILE} names no base model; pass it with --base-model")
    model = AutoModel.from_pretrained(base, dtype=dtype, device=device)
    h = int(meta["head_hidden"])
    head = ClassificationHeadMixin(int(meta["hidden_size"]), len(meta["labels"]), hidden_sizes=(h,) if h else (),
                                   dropout=0.0, pooling=meta["pooling"])
    head.load_state_dict(load_file(str(run / HEAD_FILE)))
    model.add_mixin("classifier", head)
    if (run / "adapter_config.json").is_file():
        load_adapter(model, run)
    model.to(device).eval()
    return model, head, meta


@torch.no_grad()
def predict(model: Any, head: ClassificationHeadMixin, texts: list[str], labels: list[Any], block_size: int,
            batch_size: int = 16) -> list[dict[str, Any]]:
    """Class probabilities of each text: [{"label", "score", "probabilities": {label: p}}], the
    texts tokenized and truncated exactly as in training."""
    tok = model.tokenizer
    ids = [list(tok.encode(t))[:block_size] or [tok.eos_token_id or 0] for t in texts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    wrapper = ClassifierAsLM(model, head).eval()
    device = next(model.parameters()).device
    out = []
    for b in ClassificationBatches(ids, [0] * len(ids), batch_size, pad, shuffle=False).one_epoch():
        logits = wrapper(b["input_ids"].to(device), b["attention_mask"].to(device)).logits[:, 0]  # (B, L)
        for row in logits.float().softmax(-1).cpu().tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": labels[best], "score": row[best],
                        "probabilities": {str(lab): p for lab, p in zip(labels, row)}})
    return out
