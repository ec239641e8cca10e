# SPDX-License-Identifier: Apache-2.0
"""Weight maps: how a family's HF tensor names map onto swisslm parameter names, as data.

A family's WEIGHT_MAP is `{hf_pattern: target}` where patterns use the placeholders `{layer}`
and `{expert}`, and a target is
- a str: our parameter name (same layout);
- `Part(dest, index, sizes)`: this tensor is piece `index` of a fused tensor (q/k/v -> qkv,
  gate/up -> gate_up), pieces concatenated along `dim`, `sizes(cfg)` giving every piece's width;
- `Transform(dest, to_ours, to_hf)`: same tensor, different layout (NeoX interleaved qkv);
- None: the tensor is dropped (e.g. HF's rotary inv_freq buffers);
- `LoadOnly(target)`: read like `target`, never written on export: an alias for a layout that only
  another source has (llama.cpp's stacked expert tensors, which HF stores one expert at a time).
A pattern with `{expert}` whose destination lacks it is stacked over experts into [E, ...]
first. Export reads the same table backwards, so there is one source of truth per family.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..errors import CheckpointError

TensorFn = Callable[[torch.Tensor, ModelConfig], torch.Tensor]


@dataclass(frozen=True)
class Part:
    dest: str
    index: int
    sizes: Callable[[ModelConfig], list[int]]
    dim: int = 0  # along which (stacked) dim the pieces are concatenated


@dataclass(frozen=True)
class Transform:
    dest: str
    to_ours: TensorFn
    to_hf: TensorFn


@dataclass(frozen=True)
class LoadOnly:
    target: str | Part | Transform


Target = str | Part | Transform | LoadOnly | None
WeightMap = dict[str, Target]

_PLACEHOLDER = re.compile(r"\{(layer|expert)\}")


def _regex(pattern: str) -> re.Pattern:
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>\\d+)")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + "$")


def _unwrap(target: Target) -> str | Part | Transform | None:
    return target.target if isinstance(target, LoadOnly) else target


def dest_of(target: Target) -> str | None:
    """The model tensor name (pattern) a weight-map entry fills, LoadOnly entries included."""
    return _dest(_unwrap(target))


def _dest(target: Target) -> str | None:
    return target if isinstance(target, str) or target is None else target.dest


class CompiledMap:
    """A WeightMap with its regexes built once, usable in both directions."""

    def __init__(self, weight_map: WeightMap) -> None:
        self.entries = [(p, _regex(p), _unwrap(t)) for p, t in weight_map.items()]
        self.exact = {p: _unwrap(t) for p, t in weight_map.items() if not _PLACEHOLDER.search(p)}
        self.export_entries = [e for e, t in zip(self.entries, weight_map.values()) if not isinstance(t, LoadOnly)]

    def match_hf(self, name: str) -> tuple[str, Target, dict[str, str]] | None:
        if name in self.exact:
            return name, self.exact[name], {}
        for pattern, rx, target in self.entries:
            m = rx.match(name)
            if m:
                return pattern, target, m.groupdict()
        return None

    # -- HF -> ours ----------------------------------------------------------------------
    def to_ours(
        self, tensors: Iterable[tuple[str, torch.Tensor]], cfg: ModelConfig
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Map (hf_name, tensor) pairs to our state dict. Returns (state_dict, problems):
        problems lists unknown HF tensors and fused tensors with missing pieces."""
        out: dict[str, torch.Tensor] = {}
        problems: list[str] = []
        pending: dict[str, dict[tuple[int, int], torch.Tensor]] = defaultdict(dict)
        for name, tensor in tensors:
            hit = self.match_hf(name)
            if hit is None:
                problems.append(f"unexpected tensor {name!r}")
                continue
            pattern, target, groups = hit
            if target is None:
                continue
            dest = _dest(target)
            stacked = "expert" in groups and "{expert}" not in dest
            dest_name = dest.format(**groups) if not stacked else dest.format(layer=groups.get("layer"))
            if not stacked and not isinstance(target, Part):
                out[dest_name] = target.to_ours(tensor, cfg) if isinstance(target, Transform) else tensor
                continue
            part = target if isinstance(target, Part) else None
            key = (part.index if part else 0, int(groups["expert"]) if stacked else 0)
            pending[dest_name][key] = tensor
            n_parts = len(part.sizes(cfg)) if part else 1
            n_exp = cfg.num_experts if stacked else 1
            if len(pending[dest_name]) == n_parts * n_exp:  # complete: assemble now, free pieces
                t = self._assemble(pending.pop(dest_name), part, n_parts, n_exp if stacked else 0)
                # to_hf applies a Transform to the stacked tensor, so its inverse comes after stacking
                out[dest_name] = target.to_ours(t, cfg) if isinstance(target, Transform) else t
        for dest_name, pieces in pending.items():
            problems.append(f"incomplete fused tensor {dest_name!r} (got pieces {sorted(pieces)})")
        return out, problems

    @staticmethod
    def _assemble(pieces, part: Part | None, n_parts: int, n_exp: int) -> torch.Tensor:
        """Stack each part over experts (n_exp > 0) into (E, out, in), then concatenate the parts."""
        parts = [
            torch.stack([pieces[(p, e)] for e in range(n_exp)]) if n_exp else pieces[(p, 0)]
            for p in range(n_parts)
        ]
        return torch.cat(parts, dim=part.dim) if part and n_parts > 1 else parts[0]

    # -- ours -> HF ----------------------------------------------------------------------
    def to_hf(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
        """Inverse of to_ours: yields (hf_name, tensor). Raises listing our tensors with no entry."""
        dest_rx = []
        for pattern, _, target in self.export_entries:
            dest = _dest(target)
            if dest is not None:
                dest_rx.append((_regex(dest), pattern, target))
        unmapped = []
        for name, tensor in state.items():
            hits = [(m, pattern, t) for rx, pattern, t in dest_rx if (m := rx.match(name))]
            if not hits:
                unmapped.append(name)
                continue
            for m, pattern, target in hits:
                groups = m.groupdict()
                stacked = "{expert}" in pattern and "{expert}" not in _dest(target)
                t = tensor
                if isinstance(target, Transform):
                    t = target.to_hf(t, cfg)
                if isinstance(target, Part):
                    t = t.split(target.sizes(cfg), dim=target.dim)[target.index]
                if stacked:
                    for e in range(t.shape[0]):
                        yield pattern.format(expert=e, **groups), t[e].contiguous()
                else:
                    yield pattern.format(**groups), t.contiguous()
        if unmapped:
            raise CheckpointError(f"no HF name for tensor(s): {', '.join(unmapped)}")
