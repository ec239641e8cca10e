# SPDX-License-Identifier: Apache-2.0
"""Preference training: DPO, ORPO and reward modelling, on the shared training loop.

Losses (the pure functions below; TRL's formulas, tests/test_preference.py checks both):
- DPO (Rafailov et al. 2023, sigmoid loss): with summed completion log-probs under the policy
  (pi) and the reference (ref), delta = (pi_c - ref_c) - (pi_r - ref_r) and
  loss = -log sigmoid(beta * delta); rewards = beta * (pi - ref). The reference is the frozen
  starting model: with LoRA, the same model with its adapters switched off (no second copy);
  with `--model-ref`, that model; for a full fine-tune without one, the starting model's
  log-probs are computed once before training (TRL's precompute_ref_log_probs), again without a
  second copy.
- ORPO (Hong et al. 2024): with length-averaged completion log-probs, log odds(y) =
  logp - log(1 - exp(logp)), L_OR = -log sigmoid(log odds_c - log odds_r), and
  loss = NLL(chosen) + lambda * L_OR; `--orpo-alpha` is lambda (TRL's ORPOConfig.beta, default
  0.1). The NLL is the token mean over the whole chosen sequence, prompt included, as TRL's
  ORPOTrainer computes it. rewards = lambda * logp.
- Reward model (Bradley-Terry, Ouyang et al. 2022): a scalar head on the last non-padding token,
  loss = -log sigmoid(r_c - r_r); accuracy = mean(r_c > r_r). "Last non-padding" is
  transformers' rule for *ForSequenceClassification (the last token whose id is not the pad
  id), so the saved model scores the same in `AutoModelForSequenceClassification`.

Metrics per step carry TRL's names: loss, rewards/chosen, rewards/rejected, rewards/accuracies,
rewards/margins, logps/chosen, logps/rejected, logits/chosen, logits/rejected (ORPO adds
nll_loss, log_odds_ratio, log_odds_chosen; reward modelling adds accuracy and margin, the
RewardTrainer's names).

Memory: completion log-probs never materialise the (tokens x vocab) logits of the whole
batch. The backbone returns hidden states, only the positions that carry a loss go through the
output head, in chunks, each chunk checkpointed, so a step holds one chunk's logits at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.slots import Mixin
from ..train.trainer import Trainer, all_reduce_sum, unwrap
from .sft import SFTConfig, open_checkpoints

log = logging.getLogger(__name__)

TRAINERS = ("sft", "dpo", "orpo", "reward")
PADDING = ("right", "left")
LOGIT_CHUNK = 512  # rows of (hidden -> vocab) per output-head chunk


# ----------------------------------------------------------------------------------------------
# The losses (pure functions of log-probs / scores)
# ----------------------------------------------------------------------------------------------


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1, label_smoothing: float = 0.0,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO sigmoid losses and the (detached) implicit rewards beta * (pi - ref).

    label_smoothing > 0 is cDPO (Mitchell 2023): the preference label is flipped with that
    probability."""
    chosen_lr = chosen_logps - ref_chosen_logps
    rejected_lr = rejected_logps - ref_rejected_logps
    delta = chosen_lr - rejected_lr
    losses = -F.logsigmoid(beta * delta) * (1 - label_smoothing) - F.logsigmoid(-beta * delta) * label_smoothing
    return losses, beta * chosen_lr.detach(), beta * rejected_lr.detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (Maechler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, alpha: float = 0.1,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair ORPO odds-ratio losses alpha * L_OR (to add to the chosen NLL), rewards
    alpha * logp (detached) and the log odds ratio per pair."""
    c, r = chosen_avg_logps.float(), rejected_avg_logps.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    losses = -alpha * F.logsigmoid(log_odds)
    return losses, alpha * c.detach(), alpha * r.detach(), log_odds.detach()


def reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: torch.Tensor | None = None,
                center_coefficient: float | None = None) -> torch.Tensor:
    """Per-pair Bradley-Terry losses -log sigmoid(r_c - r_r [- margin]) (+ the reward centring
    term of Eisenstein et al. 2023 when `center_coefficient`)."""
    d = chosen_scores - rejected_scores
    if margin is not None:
        d = d - margin
    losses = -F.logsigmoid(d)
    if center_coefficient:
        losses = losses + center_coefficient * (chosen_scores + rejected_scores) ** 2
    return losses


# ----------------------------------------------------------------------------------------------
# Log-probs of completions without the full logits tensor
# ----------------------------------------------------------------------------------------------


def _head_logps(head: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, labels: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(h).float()
    lp = logits.gather(-1, labels[:, None]).squeeze(-1) - logits.logsumexp(-1)
    return lp, logits.mean(-1).detach()


def _no_logits(h: torch.Tensor) -> torch.Tensor:
    return h[..., :0]


def token_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                select: torch.Tensor, chunk: int = LOGIT_CHUNK) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """log p(input_ids[:, t+1] | ..t) at the positions where `select` (B, T-1) is true, flattened
    in row-major order, the mean logit there (a metric), and the model output (aux loss)."""
    from torch.utils.checkpoint import checkpoint

    inner = unwrap(model)
    head = inner.output_head_impl
    # The backbone's own head call is switched off for this forward: even for one position, a
    # (B, 1, C) @ (C, V) matmul broadcasts the (V, C) weight per row and autograd keeps that copy
    # (B x 113 MB for SmolLM2) for the backward.
    object.__setattr__(inner, "output_head_impl", _no_logits)
    try:
        out = model(input_ids, attention_mask=attention_mask, num_logits_to_keep=1)
    finally:
        object.__setattr__(inner, "output_head_impl", head)
    h = out.last_hidden_state[:, :-1][select]  # (N, C): only positions that carry a loss
    labels = input_ids[:, 1:][select]
    lps, means = [], []
    for i in range(0, h.shape[0], chunk):
        args = (head, h[i : i + chunk], labels[i : i + chunk])
        # checkpointed: the chunk's logits are recomputed in the backward instead of kept
        lp, mean = (checkpoint(_head_logps, *args, use_reentrant=False) if torch.is_grad_enabled()
                    else _head_logps(*args))
        lps.append(lp)
        means.append(mean)
    empty = h.new_zeros(0, dtype=torch.float32)
    return (torch.cat(lps) if lps else empty), (torch.cat(means) if means else empty), out


def _row_sums(values: torch.Tensor, select: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row sums of flattened per-position values (select's True positions, row-major)."""
    rows = select.nonzero()[:, 0]
    v = values if weight is None else values * weight
    return torch.zeros(select.shape[0], dtype=v.dtype, device=v.device).index_add(0, rows, v)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model without its LoRA adapters, for the DPO reference pass: each LoRALinear is
    swapped for its frozen base and expert adapters are unset, then put back (PEFT's
    disable_adapter, without a flag in the layers)."""
    from ..mixins.lora import LoRALinear, lora_mixins

    inner = unwrap(model)
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for _, lora in lora_mixins(inner):
            for site, _, ad in lora.adapters():
                if site.expert:
                    moe = inner.get_submodule(site.module)
                    attr = f"lora_{site.param}"
                    swaps.append((moe, attr, ad))
                    setattr(moe, attr, None)
                    continue
                parent_name, _, attr = site.module.rpartition(".")
                parent = inner.get_submodule(parent_name) if parent_name else inner
                cur = getattr(parent, attr)
                if isinstance(cur, LoRALinear):
                    swaps.append((parent, attr, cur))
                    setattr(parent, attr, cur.base)
        yield
    finally:
        for parent, attr, mod in reversed(swaps):
            setattr(parent, attr, mod)


# ----------------------------------------------------------------------------------------------
# Objectives: batch -> per-pair losses and metric sums
# ----------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    pair_losses: torch.Tensor  # (P,) averaged over the pairs of the global batch
    nll_sum: torch.Tensor | None = None  # ORPO: summed chosen NLL, averaged over its tokens
    aux_loss: torch.Tensor | None = None
    sums: dict[str, tuple[float, float]] | None = None  # metric -> (sum, count)


def _pair_sums(cr: torch.Tensor, rr: torch.Tensor) -> dict[str, tuple[float, float]]:
    P = float(cr.numel())
    return {"rewards/chosen": (float(cr.sum()), P), "rewards/rejected": (float(rr.sum()), P),
            "rewards/accuracies": (float((cr > rr).float().sum()), P),
            "rewards/margins": (float((cr - rr).sum()), P)}


class DPOObjective:
    """DPO on a concatenated [chosen; rejected] batch. `reference(batch)` gives the reference's
    (chosen, rejected) summed log-probs unless the batch carries precomputed ones."""

    name = "dpo"

    def __init__(self, beta: float, reference: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
                 | None, label_smoothing: float = 0.0) -> None:
        self.beta, self.reference, self.label_smoothing = beta, reference, label_smoothing

    def nll_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return 0

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepResult:
        ids, att = batch["input_ids"], batch.get("attention_mask")
        select = batch["loss_mask"][:, 1:].bool()
        P = int(batch["pairs"])
        lp, mean_logit, out = token_logps(model, ids, att, select)
        logps = _row_sums(lp, select)
        pc, pr = logps[:P], logps[P:]
        if "ref_chosen_logps" in batch:
            rc, rr = batch["ref_chosen_logps"].to(pc), batch["ref_rejected_logps"].to(pc)
        else:
            if self.reference is None:
                raise ValueError("DPO needs a reference: a model, adapters to disable, or precomputed log-probs")
            rc, rr = self.reference(batch)
        losses, cr, rj = dpo_loss(pc, pr, rc.to(pc), rr.to(pc), self.beta, self.label_smoothing)
        sums = _pair_sums(cr, rj)
        sums.update(_logp_logit_sums(pc, pr, mean_logit, select, P))
        return StepResult(losses, None, getattr(out, "aux_loss", None), sums)


def _logp_logit_sums(pc: torch.Tensor, pr: torch.Tensor, mean_logit: torch.Tensor, select: torch.Tensor,
                     P: int) -> dict[str, tuple[float, float]]:
    rows = select.nonzero()[:, 0]
    ch = rows < P
    return {"logps/chosen": (float(pc.detach().sum()), float(P)),
            "logps/rejected": (float(pr.detach().sum()), float(P)),
            "logits/chosen": (float(mean_logit[ch].sum()), float(ch.sum())),
            "logits/rejected": (float(mean_logit[~ch].sum()), float((~ch).sum()))}


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (chosen, rejected) of a pair batch: the DPO reference pass."""
    select = batch["loss_mask"][:, 1:].bool()
    lp, _, _ = token_logps(model, batch["input_ids"], batch.get("attention_mask"), select)
    s = _row_sums(lp, select)
    P = int(batch["pairs"])
    return s[:P], s[P:]


class ORPOObjective:
    name = "orpo"

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    @staticmethod
    def _nll_select(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        att = batch.get("attention_mask")
        att = torch.ones_like(batch["input_ids"]) if att is None else att
        # a position is scored when it and the token predicting it are real: with left padding
        # a row's first token would otherwise count, as if predicted from the pad before it
        sel = (att[:, 1:].bool() & att[:, :-1].bool()).clone()
        sel[int(batch["pairs"]):] = False  # NLL on the chosen half only
        return sel

    def nll_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(self._nll_select(batch).sum())

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepResult:
        ids, att = batch["input_ids"], batch.get("attention_mask")
        P = int(batch["pairs"])
        comp = batch["loss_mask"][:, 1:].bool()
        nll_sel = self._nll_select(batch)
        select = comp | nll_sel  # one pass over every position either term needs
        lp, mean_logit, out = token_logps(model, ids, att, select)
        in_comp = comp[select].to(lp.dtype)
        in_nll = nll_sel[select].to(lp.dtype)
        n_comp = comp.sum(1).clamp(min=1).to(lp.dtype)
        avg = _row_sums(lp, select, in_comp) / n_comp
        nll_sum = -(lp * in_nll).sum()
        losses, cr, rj, log_odds = orpo_loss(avg[:P], avg[P:], self.alpha)
        sums = _pair_sums(cr, rj)
        sums.update(_logp_logit_sums(avg[:P], avg[P:], mean_logit[comp[select]], comp, P))
        n_nll = float(nll_sel.sum())
        sums["nll_loss"] = (float(nll_sum.detach()), n_nll)
        sums["log_odds_ratio"] = (float(F.logsigmoid(log_odds).sum()), float(P))
        sums["log_odds_chosen"] = (float(log_odds.sum()), float(P))
        return StepResult(losses, nll_sum, getattr(out, "aux_loss", None), sums)


class RewardHead(Mixin):
    """A scalar score per position (`output_head` slot): transformers' `score` layer of
    *ForSequenceClassification with num_labels=1 (a bias-free linear)."""

    def __init__(self, hidden_size: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.score = nn.Linear(hidden_size, 1, bias=False)
        nn.init.normal_(self.score.weight, std=init_std)

    def attach(self, model: nn.Module) -> None:
        p = next(model.parameters())
        if p.is_floating_point():
            self.to(device=p.device, dtype=p.dtype)

    def output_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.score(h)


def last_non_pad_index(input_ids: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """transformers' *ForSequenceClassification pooling: the rightmost token whose id is not the
    pad id (left or right padding), or the last position when there is no pad id."""
    if pad_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
    idx = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (idx * (input_ids != pad_id)).argmax(-1)


def reward_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  pad_id: int | None) -> tuple[torch.Tensor, Any]:
    out = model(input_ids, attention_mask=attention_mask)
    last = last_non_pad_index(input_ids, pad_id)
    return out.logits[torch.arange(input_ids.shape[0], device=input_ids.device), last, 0], out


class RewardObjective:
    name = "reward"

    def __init__(self, pad_id: int | None, center_coefficient: float | None = None) -> None:
        self.pad_id, self.center = pad_id, center_coefficient

    def nll_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return 0

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepResult:
        P = int(batch["pairs"])
        s, out = reward_scores(model, batch["input_ids"], batch.get("attention_mask"), self.pad_id)
        sc, sr = s[:P].float(), s[P:].float()
        losses = reward_loss(sc, sr, batch.get("margin"), self.center)
        sums = _pair_sums(sc.detach(), sr.detach())
        sums["accuracy"] = sums["rewards/accuracies"]
        sums["margin"] = sums["rewards/margins"]
        return StepResult(losses, None, getattr(out, "aux_loss", None), sums)


# ----------------------------------------------------------------------------------------------
# The training loop: train.Trainer with a pairwise loss
# ----------------------------------------------------------------------------------------------


class PreferenceTrainer(Trainer):
    """train.Trainer (schedule, clipping, checkpoints, resume, loggers, progress) with the step's
    loss from a preference objective. The global batch's pairs weigh equally whatever the
    gradient accumulation and the number of data-parallel ranks (the counts are all-reduced
    first, as the LM trainer does with tokens)."""

    def __init__(self, *args: Any, objective: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective

    def _run(self, micro: list[dict[str, torch.Tensor]], train: bool) -> dict[str, float]:
        pairs = sum(int(b["pairs"]) for b in micro)
        nll_tok = sum(self.objective.nll_tokens(b) for b in micro)
        tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                     for b in micro)
        counts = all_reduce_sum(torch.tensor([float(pairs), float(nll_tok), float(tokens)], dtype=torch.float64))
        n_pairs, n_nll = max(float(counts[0]), 1.0), max(float(counts[1]), 1.0)
        sums: dict[str, list[float]] = {}
        total = torch.zeros(3, dtype=torch.float64)  # pair loss sum, nll sum, aux mean
        for i, batch in enumerate(micro):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            ctx = self._no_sync(i == len(micro) - 1) if train else torch.no_grad()
            with ctx:
                with self._autocast():
                    res = self.objective(self.model, batch)
                pl = res.pair_losses.float().sum()
                loss = pl * (self.world_size / n_pairs)
                total[0] += float(pl.detach())
                if res.nll_sum is not None:
                    loss = loss + res.nll_sum * (self.world_size / n_nll)
                    total[1] += float(res.nll_sum.detach())
                if res.aux_loss is not None:
                    loss = loss + res.aux_loss / len(micro)
                    total[2] += float(res.aux_loss.detach()) / len(micro)
                if train:
                    loss.backward()
            for k, (s, c) in (res.sums or {}).items():
                acc = sums.setdefault(k, [0.0, 0.0])
                acc[0] += s
                acc[1] += c
        keys = sorted(sums)
        vec = all_reduce_sum(torch.cat([total, torch.tensor([v for k in keys for v in sums[k]],
                                                            dtype=torch.float64)]))
        nll = float(vec[1]) / n_nll if float(counts[1]) > 0 else 0.0
        m = {"loss": float(vec[0]) / n_pairs + nll + float(vec[2]) / self.world_size}
        for j, k in enumerate(keys):
            s, c = float(vec[3 + 2 * j]), float(vec[4 + 2 * j])
            m[k] = s / c if c else 0.0
        m["_tokens"] = float(counts[2])
        return m

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        step = self.state.step + 1
        lr = self.set_lr(step)
        self.model.train()
        m = self._run(micro_batches, train=True)
        grad_norm = self.optimizer_step()
        self.state.step = step
        self.state.tokens_seen += int(m.pop("_tokens"))
        metrics = {"loss": m.pop("loss"), "lr": lr, "tokens": float(self.state.tokens_seen)}
        if grad_norm is not None:
            gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            metrics["grad_norm"] = float(gn)
        metrics.update(m)
        return metrics

    def evaluate(self) -> dict[str, float]:
        if self.eval_iter_fn is None:
            return {}
        self.model.eval()
        batches = [b for i, b in zip(range(self.cfg.eval_batches), self.eval_iter_fn())]
        m = self._run(batches, train=False) if batches else {}
        m.pop("_tokens", None)
        self.model.train()
        return {f"eval_{k}": v for k, v in m.items()}


# ----------------------------------------------------------------------------------------------
# The run behind `swisslm finetune --trainer dpo|orpo|reward`
# ----------------------------------------------------------------------------------------------


@dataclass
class PreferenceConfig(SFTConfig):
    trainer: str = "dpo"
    dpo_beta: float = 0.1
    orpo_alpha: float = 0.1
    model_ref: str | None = None
    prompt_text_column: str | None = None  # None: "prompt" when the data has it
    rejected_text_column: str = "rejected"
    max_prompt_length: int = 128
    max_completion_length: int | None = None
    model_max_length: int = 2048
    add_eos_token: bool = True
    padding: str = "right"
    optimizer: str = "adamw_torch"
    gradient_checkpointing: bool = True
    auto_find_batch_size: bool = False
    train_split: str = "train"
    valid_split: str | None = None

    def validate(self) -> None:
        super().validate()
        validate_preference_options(self)


def validate_preference_options(cfg: Any) -> None:
    """Checks of the preference / autotrain options (before any model loads)."""
    from .train_opts import OPTIMIZERS

    if cfg.trainer not in TRAINERS:
        raise ValueError(f"--trainer must be one of {list(TRAINERS)}, got {cfg.trainer!r}")
    if not cfg.dpo_beta > 0:
        raise ValueError(f"--dpo-beta must be > 0, got {cfg.dpo_beta}")
    if not cfg.orpo_alpha > 0:
        raise ValueError(f"--orpo-alpha must be > 0, got {cfg.orpo_alpha}")
    if cfg.model_max_length <= 0:
        raise ValueError(f"--model-max-length must be > 0, got {cfg.model_max_length}")
    if cfg.max_prompt_length is not None and cfg.max_prompt_length <= 0:
        raise ValueError(f"--max-prompt-length must be > 0, got {cfg.max_prompt_length}")
    if cfg.max_completion_length is not None and cfg.max_completion_length <= 0:
        raise ValueError(f"--max-completion-length must be > 0, got {cfg.max_completion_length}")
    if cfg.max_prompt_length is not None and cfg.max_prompt_length >= max_length_of(cfg):
        raise ValueError(f"--max-prompt-length ({cfg.max_prompt_length}) must be below the sequence length "
                         f"({max_length_of(cfg)}: the smaller of --block-size and --model-max-length)")
    if cfg.padding not in PADDING:
        raise ValueError(f"--padding must be right or left, got {cfg.padding!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {list(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.model_ref is not None and cfg.trainer != "dpo":
        raise ValueError("--model-ref is the DPO reference model: it needs --trainer dpo")
    if cfg.model_ref is not None and not Path(cfg.model_ref).exists():
        raise ValueError(f"--model-ref {cfg.model_ref}: no such file or folder")
    if cfg.trainer == "reward" and cfg.merge_adapter:
        raise ValueError("--merge-adapter: a reward model is always saved merged (with its score head)")


def max_length_of(cfg: Any) -> int:
    """autotrain: block_size is the training length, bounded by the tokenizer's model_max_length."""
    return min(cfg.block_size, cfg.model_max_length) if cfg.block_size > 0 else cfg.model_max_length


def _columns(cfg: PreferenceConfig, first_row: dict[str, Any]):
    from .pref_data import PairColumns

    prompt = cfg.prompt_text_column
    if prompt is None and "prompt" in first_row:
        prompt = "prompt"
    chosen = cfg.text_column
    if chosen not in first_row and chosen == "text" and "chosen" in first_row:
        chosen = "chosen"  # autotrain's default --text-column is "text"; preference data says "chosen"
    return PairColumns(prompt=prompt, chosen=chosen, rejected=cfg.rejected_text_column)


def _load_splits(cfg: PreferenceConfig, tok: Any) -> tuple[list, list | None]:
    from .data import read_rows
    from .pref_data import load_pairs, resolve_chat_template

    use_template, template = resolve_chat_template(cfg.chat_template, tok)
    cols = _columns(cfg, read_rows(cfg.data, cfg.train_split)[0])
    kw = {"max_length": max_length_of(cfg), "max_prompt_length": cfg.max_prompt_length,
          "max_completion_length": cfg.max_completion_length, "use_template": use_template,
          "template": template, "add_eos": cfg.add_eos_token}
    train = load_pairs(cfg.data, tok, cols, split=cfg.train_split, **kw)
    valid = None
    if cfg.valid_data:
        valid = load_pairs(cfg.valid_data, tok, cols, split=cfg.valid_split or "valid", **kw)
    elif cfg.valid_split:
        valid = load_pairs(cfg.data, tok, cols, split=cfg.valid_split, **kw)
    return train, valid


@torch.no_grad()
def precompute_reference(model: nn.Module, batches: Any) -> None:
    """Store the reference's summed completion log-probs on every example (one pass, before
    training): the full fine-tune's DPO reference without a second model in memory."""
    was = model.training
    model.eval()
    for batch in batches.one_epoch():
        c, r = sequence_logps(model, batch)
        for j, i in enumerate(batch["index"].tolist()):
            batches.examples[i].ref = (float(c[j]), float(r[j]))
    model.train(was)


class _RefBatches:
    """Wraps PairBatches: adds the precomputed reference log-probs to each batch."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def _add(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        refs = [self.inner.examples[i].ref for i in b["index"].tolist()]
        b["ref_chosen_logps"] = torch.tensor([c for c, _ in refs])
        b["ref_rejected_logps"] = torch.tensor([r for _, r in refs])
        return b

    def __iter__(self):
        return (self._add(b) for b in self.inner)

    def one_epoch(self):
        return (self._add(b) for b in self.inner.one_epoch())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def build_objective(cfg: PreferenceConfig, model: nn.Module, pad_id: int, lora: Any) -> Any:
    if cfg.trainer == "orpo":
        return ORPOObjective(cfg.orpo_alpha)
    if cfg.trainer == "reward":
        return RewardObjective(pad_id)
    if cfg.model_ref is not None:
        from ..api import AutoModel

        ref = AutoModel.from_pretrained(cfg.model_ref, dtype=cfg.dtype, device=cfg.device).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return DPOObjective(cfg.dpo_beta, lambda b: _ref_pass(ref, b))
    if lora is not None:
        def ref_fn(b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            with adapters_disabled(model):
                return _ref_pass(model, b)

        return DPOObjective(cfg.dpo_beta, ref_fn)
    return DPOObjective(cfg.dpo_beta, None)  # full fine-tune: precomputed reference log-probs


@torch.no_grad()
def _ref_pass(ref: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    # eval mode for the reference (no LoRA dropout), whatever mode the policy is in
    was = ref.training
    ref.eval()
    try:
        return sequence_logps(ref, batch)
    finally:
        ref.train(was)


def run_preference(cfg: PreferenceConfig, model: Any = None) -> dict[str, Any]:
    """Train with DPO, ORPO or a reward objective; returns a summary like run_sft's."""
    from ..api import AutoModel
    from ..mixins.lora import trainable_parameters
    from ..train import TrainerConfig
    from ..train.metrics import default_loggers
    from ..train.optim import param_groups
    from .pref_data import PairBatches
    from .sft import make_sft_schedule, prepare_model, save_run
    from .train_opts import (
        build_optimizer,
        enable_gradient_checkpointing,
        find_batch_size,
        return_freed_memory_to_the_os,
    )

    cfg.validate()
    out = Path(cfg.output)
    torch.manual_seed(cfg.seed)
    if str(cfg.device).startswith("cpu"):
        return_freed_memory_to_the_os()
    if model is None:
        model = AutoModel.from_pretrained(cfg.model, dtype=cfg.dtype, device=cfg.device)
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"{model.source}: the checkpoint has no tokenizer; preference training needs one")
    train, valid = _load_splits(cfg, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    if cfg.trainer == "reward" and model.config.pad_token_id is None:
        model.config.pad_token_id = pad  # the pooling rule reads it; the saved config carries it
    pad_for_pool = model.config.pad_token_id if cfg.trainer == "reward" else pad

    base_params = trainable_parameters(model)[1]  # before quantize_ turns weights into buffers
    lora = prepare_model(cfg, model)
    head = None
    if cfg.trainer == "reward":  # after quantize_/LoRA: the head stays float and trainable
        head = RewardHead(model.config.hidden_size, init_std=model.config.initializer_range)
        model.add_mixin("reward", head)
        base_params += sum(p.numel() for p in head.parameters())
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    objective = build_objective(cfg, model, pad_for_pool, lora)

    batch_size = cfg.batch_size
    if cfg.auto_find_batch_size:
        longest = sorted(range(len(train)), key=lambda i: -len(train[i].prompt_ids) - max(
            len(train[i].chosen_ids), len(train[i].rejected_ids)))

        def probe(b: int) -> None:
            pb = PairBatches(train, b, pad, padding=cfg.padding)
            batch = pb.batch(longest[:b])
            if isinstance(objective, DPOObjective) and objective.reference is None:
                c, r = sequence_logps(model, batch)
                batch["ref_chosen_logps"], batch["ref_rejected_logps"] = c.detach(), r.detach()
            res = objective(model, batch)
            loss = res.pair_losses.sum() + (res.nll_sum if res.nll_sum is not None else 0)
            loss.backward()
            model.zero_grad(set_to_none=True)

        batch_size = find_batch_size(cfg.batch_size, probe)
    batches: Any = PairBatches(train, batch_size, pad, seed=cfg.seed, padding=cfg.padding)
    valid_batches: Any = PairBatches(valid, batch_size, pad, shuffle=False, padding=cfg.padding) if valid else None
    if isinstance(objective, DPOObjective) and objective.reference is None:
        precompute_reference(model, batches)
        batches = _RefBatches(batches)
        if valid_batches is not None:
            precompute_reference(model, valid_batches)
            valid_batches = _RefBatches(valid_batches)

    steps = cfg.max_steps or math.ceil(cfg.epochs * batches.batches_per_epoch / cfg.gradient_accumulation)
    warmup = math.ceil(cfg.warmup_ratio * steps)
    trainable = trainable_parameters(model)[0]
    total = base_params + (sum(p.numel() for p in lora.adapter_parameters()) if lora is not None else 0)
    opt = build_optimizer(cfg.optimizer, param_groups(model, weight_decay=cfg.weight_decay), cfg.lr)
    sched = make_sft_schedule(cfg.scheduler, cfg.lr, warmup, steps)
    eval_fn = valid_batches.one_epoch if valid_batches is not None else None
    tcfg = TrainerConfig(
        max_steps=steps, grad_accum=cfg.gradient_accumulation,
        precision="bf16" if cfg.mixed_precision == "bf16" else "fp32",
        grad_clip=cfg.max_grad_norm if cfg.max_grad_norm > 0 else None, log_every=cfg.logging_steps,
        eval_every=cfg.eval_steps, eval_batches=valid_batches.batches_per_epoch if valid_batches else 0,
        checkpoint_every=cfg.save_steps, progress=cfg.progress, extra={"preference_config": asdict(cfg)},
    )
    ckpts, resumed_at = open_checkpoints(out, cfg)
    trainer = PreferenceTrainer(model, opt, sched, tcfg, checkpoints=ckpts, objective=objective,
                                loggers=default_loggers(out, resume_step=resumed_at, tensorboard=False),
                                eval_iter_fn=eval_fn)
    if cfg.resume:
        trainer.resume_latest(batches)
    history: list[dict[str, float]] = []
    trainer.callbacks.append(lambda _t, m: history.append(dict(m)))
    t0 = time.perf_counter()
    trainer.fit(batches)
    elapsed = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "trainer": cfg.trainer, "trainable_parameters": trainable, "total_parameters": total,
        "steps": trainer.state.step, "batch_size": batch_size, "tokens_seen": trainer.state.tokens_seen,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None, "seconds": elapsed,
        "seconds_per_step": elapsed / max(len(history), 1), "resumed_at": resumed_at,
        "tokens_per_s": trainer.state.tokens_seen / max(elapsed, 1e-9),
    }
    for k in ("rewards/margins", "rewards/accuracies"):
        if history and k in history[-1]:
            summary[f"final_{k}"] = history[-1][k]
    if valid_batches is not None:
        summary.update(trainer.evaluate())
    if cfg.trainer != "reward":
        return save_run(model, lora, cfg, out, summary)
    out.mkdir(parents=True, exist_ok=True)
    summary["model"] = str(save_reward_model(model, head, out, dtype=cfg.dtype))
    (out / "finetune_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ----------------------------------------------------------------------------------------------
# Reward model export: an HF *ForSequenceClassification folder
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def save_reward_model(model: Any, head: RewardHead, out: str | Path, dtype: str | None = None) -> Path:
    """Write `model` + reward head as the HF folder `AutoModelForSequenceClassification` loads:
    the backbone's weights, `score.weight` (1, hidden), no LM head, `num_labels` 1 and the pad id
    the pooling reads. LoRA adapters are merged first (the head is not an adapter: a reward
    model is its weights plus the head). The model is left merged, without the head."""
    from safetensors.torch import load_file, save_file

    from ..families import get_family
    from ..mixins.lora import lora_mixins
    from .merge import merge_lora

    if lora_mixins(model):
        merge_lora(model)
    name = next(n for n, m in model.mixins.items() if m is head)
    score = head.score.weight.detach().to("cpu").clone()
    model.del_mixin(name)
    folder = Path(out)
    model.save_pretrained(folder, dtype=dtype)
    cfg = model.config
    wmap = get_family(cfg.family).weight_map(cfg)
    head_keys = {k for k, v in wmap.items() if (v if isinstance(v, str) else getattr(v, "dest", None))
                 in ("head.proj.weight", "head.proj.bias")}
    index_path = folder / "model.safetensors.index.json"
    files = sorted(folder.glob("*.safetensors"))
    for i, f in enumerate(files):
        tensors = load_file(str(f))
        tensors = {k: v for k, v in tensors.items() if k not in head_keys}
        if i == 0:
            tensors["score.weight"] = score.to(next(iter(tensors.values())).dtype)
        save_file(tensors, str(f), metadata={"format": "pt"})
    if index_path.is_file():
        idx = json.loads(index_path.read_text())
        idx["weight_map"] = {k: v for k, v in idx["weight_map"].items() if k not in head_keys}
        idx["weight_map"]["score.weight"] = files[0].name
        index_path.write_text(json.dumps(idx, indent=2))
    conf = json.loads((folder / "config.json").read_text())
    arch = (conf.get("architectures") or ["LlamaForCausalLM"])[0]
    conf["architectures"] = [arch.replace("ForCausalLM", "ForSequenceClassification")]
    conf["id2label"], conf["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    conf["num_labels"] = 1
    conf["pad_token_id"] = cfg.pad_token_id
    conf["tie_word_embeddings"] = False  # no LM head left to tie
    (folder / "config.json").write_text(json.dumps(conf, indent=2))
    return folder

