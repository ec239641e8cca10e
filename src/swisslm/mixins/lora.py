# SPDX-License-Identifier: Apache-2.0
"""LoRA as a mixin: `model.add_mixin("lora", LoRAMixin(r=16, alpha=32))`.

`attach` swaps each targeted linear in place for a `LoRALinear` that holds the original module
(frozen) plus the adapter, so the adapter weights live in the layer (`layers.3.attn.qkv.lora_a`)
as in SAT's lora2; `detach` puts the original modules back. No parallel class tree.

Targets are named in HF's vocabulary (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
down_proj, ...), read from the family's weight map: a `Part` entry says which rows of which fused
tensor an HF projection is, so one fused linear (our `attn.qkv`) carries one A/B pair per HF
projection it contains. That makes the PEFT format an exact renaming (finetune/peft_format.py),
for every family, without a table of Llama names here.

MoE experts (stacked `[E, out, in]` parameters, core/moe.py) get per-expert A/B stacked as
`[E, r, in]` / `[E, out, r]`, applied inside the grouped expert compute through the MoE module's
`expert_lora` hook; their names follow transformers' fused expert parameters
(`mlp.experts.gate_up_proj`), which is what PEFT's `target_parameters` adapts.

Maths (PEFT's): y = W x + b + s * B A dropout(x), s = alpha / r (alpha / sqrt(r) with rsLoRA).
A is Kaiming-uniform, B zero, so a fresh adapter leaves the model unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.linear import Linear
from ..core.slots import Mixin

DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")  # PEFT's default for Llama-style models
ALL_LINEAR = "all-linear"


# ----------------------------------------------------------------------------------------------
# Where LoRA can go: sites (our modules / stacked expert parameters) and their HF-named slices
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slice:
    """One HF projection inside one of our (possibly fused) weights: rows [start, start+size)."""

    hf: str  # HF module name, e.g. "model.layers.3.self_attn.q_proj"
    start: int
    size: int
    # Row-layout change between HF and us (GPT-NeoX's interleaved qkv), applied to B.
    to_hf: Callable[[torch.Tensor], torch.Tensor] | None = None
    to_ours: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class Site:
    """A weight LoRA can adapt: a linear module (`param is None`) or a stacked expert parameter."""

    module: str  # our module path: "layers.3.attn.qkv" or, for experts, "layers.3.mlp"
    slices: list[Slice]
    param: str | None = None  # "gate_up" / "down" for MoE experts
    is_head: bool = False
    num_experts: int = 0

    @property
    def expert(self) -> bool:
        return self.param is not None


def _linear_like(m: nn.Module) -> bool:
    """nn.Linear or a quantized linear from swisslm.quant (in/out features, dequantize())."""
    return isinstance(m, nn.Linear) or (
        hasattr(m, "in_features") and hasattr(m, "out_features") and hasattr(m, "dequantize"))


def _base_of(m: nn.Module) -> nn.Module:
    return m.base if isinstance(m, LoRALinear) else m


def find_sites(model: nn.Module) -> list[Site]:
    """Every weight of `model` that LoRA can adapt, with its HF projection names.

    Read from the family's weight map so each family's fused layout (qkv, gate_up, stacked
    experts) and names come from the one table that loading and export use.
    """
    from ..families import get_family
    from ..families.weight_map import LoadOnly, Part, Transform

    cfg = model.config
    wmap = get_family(cfg.family).weight_map(cfg)
    sites: dict[tuple[str, str | None], Site] = {}
    layers = range(cfg.num_layers)
    for pattern, target in wmap.items():
        # LoadOnly entries name GGUF tensors (a file format), not the HF modules PEFT adapts
        if target is None or isinstance(target, LoadOnly) or not pattern.endswith(".weight"):
            continue
        dest = target if isinstance(target, str) else target.dest
        hf_mod = pattern[: -len(".weight")]
        stacked = "{expert}" in pattern and "{expert}" not in dest
        for layer in layers if "{layer}" in pattern else [None]:
            fmt = {"layer": layer} if layer is not None else {}
            if stacked:
                _expert_site(model, sites, pattern, dest, fmt, target)
                continue
            d = dest.format(**fmt)
            if not d.endswith(".weight"):  # a stacked [E, out, in] checkpoint tensor (GraniteMoE)
                _expert_site(model, sites, pattern, dest, fmt, target)
                continue
            mod_name = d[: -len(".weight")]
            try:
                mod = _base_of(model.get_submodule(mod_name))
            except AttributeError:
                continue
            if not _linear_like(mod):
                continue
            key = (mod_name, None)
            site = sites.setdefault(key, Site(mod_name, [], is_head=mod_name == "head.proj"))
            hf = hf_mod.format(**fmt)
            if isinstance(target, Part):
                if target.dim != 0:
                    continue
                sizes = target.sizes(cfg)
                site.slices.append(Slice(hf, sum(sizes[: target.index]), sizes[target.index]))
            elif isinstance(target, Transform):
                site.slices.append(Slice(hf, 0, mod.out_features,
                                         to_hf=lambda t, f=target.to_hf: f(t, cfg),
                                         to_ours=lambda t, f=target.to_ours: f(t, cfg)))
            else:
                site.slices.append(Slice(hf, 0, mod.out_features))
    for site in sites.values():
        site.slices.sort(key=lambda s: s.start)
    return list(sites.values())


def _expert_site(model, sites, pattern, dest, fmt, target) -> Site | None:
    """Stacked experts: `model.layers.{layer}.mlp.experts.{expert}.gate_proj.weight` -> our
    `layers.{layer}.mlp.gate_up` [E, 2I, C]. One adapter spans the whole stacked parameter (all
    its HF projections), named as transformers names the fused parameter
    (`model.layers.{layer}.mlp.experts.gate_up_proj`) -- PEFT's `target_parameters` format."""
    d = dest.format(**fmt)
    if d.endswith(".weight"):
        d = d[: -len(".weight")]
    mod_name, _, param = d.rpartition(".")
    try:
        mod = model.get_submodule(mod_name)
    except AttributeError:
        return None
    stacked = getattr(mod, param, None)
    if not isinstance(stacked, torch.Tensor) or stacked.dim() != 3 or not hasattr(mod, f"lora_{param}"):
        return None
    key = (mod_name, param)
    if key in sites:
        return sites[key]
    if "{expert}" in pattern:  # per-expert checkpoint tensors: transformers' fused parameter name
        hf = f"{pattern[: pattern.index('.{expert}')].format(**fmt)}.{param}_proj"
    else:  # already stacked in the checkpoint: that tensor's own name
        hf = pattern.format(**fmt)
    site = Site(mod_name, [Slice(hf, 0, stacked.shape[1])], param=param, num_experts=stacked.shape[0])
    sites[key] = site
    return site


def param_key(hf: str) -> str:
    """`model.layers.3.mlp.experts.gate_up_proj` -> `mlp.experts.gate_up_proj` (PEFT's
    `target_parameters` entries are relative to the layer)."""
    return re.sub(r"^.*?\.(layers|h)\.\d+\.", "", hf)


def _short(hf: str) -> str:
    return hf.rsplit(".", 1)[-1]


def _matches(hf: str, targets: str | Sequence[str], site: Site) -> bool:
    """PEFT's rules: a string is a regex matched against the full module name (`all-linear` is
    every linear but the output head); a list matches a name equal to, or ending in '.' + entry."""
    if isinstance(targets, str):
        if targets == ALL_LINEAR:  # routers stay out too: a LoRA'd router destabilises routing
            return not site.is_head and not site.module.endswith(".router")
        return re.fullmatch(targets, hf) is not None
    return any(hf == t or hf.endswith("." + t) for t in targets)


def _layer_of(hf: str) -> int | None:
    m = re.search(r"\.layers?\.(\d+)\.", hf) or re.search(r"\.h\.(\d+)\.", hf)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------------------------
# The adapted linear
# ----------------------------------------------------------------------------------------------


class _WrapsBase(nn.Module):
    """A module wrapping `base` (a linear, maybe quantized) whose attributes fall back to it."""

    def __getattr__(self, name: str) -> Any:
        """Fall back to the base module (`weight`, `bias`, a quantized base's buffers): our
        state-dict names are the base's, and code that walks them (torch.distributed.checkpoint's
        fqn lookup, init passes) must find the tensors there."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self._modules.get("base")
            if base is None:
                raise
            return getattr(base, name)


class LoRALinear(_WrapsBase):
    """base(x) + scaling * B A dropout(x), with one A/B pair per adapted slice of the output rows.

    `lora_a` is `[S * r, in]` (the S slices' A matrices stacked, so x is read once), `lora_b` is
    `[sum of slice sizes, r]`. The base module (nn.Linear or a quantized linear) is frozen and
    keeps its state-dict names: `layers.3.attn.qkv.weight` stays that, the adapter adds
    `layers.3.attn.qkv.lora_a` / `.lora_b`.
    """

    def __init__(self, base: nn.Module, slices: Sequence[Slice], r: int, scaling: float,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.in_features: int = base.in_features
        self.out_features: int = base.out_features
        self.r = r
        self.scaling = scaling
        self.slices = list(slices)
        self.spans = [(s.start, s.size) for s in self.slices]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = _weight_like(base)
        kw = {"dtype": w.dtype, "device": w.device}
        self.lora_a = nn.Parameter(torch.empty(len(self.slices) * r, self.in_features, **kw))
        self.lora_b = nn.Parameter(torch.zeros(sum(s.size for s in self.slices), r, **kw))
        self.reset_lora_parameters()
        # Whole output covered by one slice (plain linear) or by contiguous slices in order (all
        # of q/k/v): the delta is one matmul or one cat; otherwise untargeted rows get zeros.
        self._full = sum(s.size for s in self.slices) == self.out_features
        self.register_state_dict_post_hook(_strip_base_prefix)
        self.register_load_state_dict_pre_hook(_add_base_prefix)

    def reset_lora_parameters(self, init: str = "kaiming") -> None:
        with torch.no_grad():
            for a in self.lora_a.split(self.r):
                if init == "gaussian":
                    nn.init.normal_(a, std=1 / self.r)
                else:  # PEFT's default: kaiming_uniform_(a=sqrt(5)) on A, zeros on B
                    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_b.zero_()

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """scaling * B A x over the full output width."""
        u = F.linear(self.dropout(x), self.lora_a)  # (..., S * r)
        if len(self.slices) == 1 and self._full:
            return F.linear(u, self.lora_b) * self.scaling
        us = u.split(self.r, dim=-1)
        bs = self.lora_b.split([s for _, s in self.spans])
        pieces, pos = [], 0
        for (start, size), ui, bi in zip(self.spans, us, bs):
            if start > pos:
                pieces.append(u.new_zeros(*u.shape[:-1], start - pos))
            pieces.append(F.linear(ui, bi))
            pos = start + size
        if pos < self.out_features:
            pieces.append(u.new_zeros(*u.shape[:-1], self.out_features - pos))
        return torch.cat(pieces, dim=-1) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x).to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A as an (out, in) matrix in our row layout."""
        w = self.lora_a.new_zeros(self.out_features, self.in_features)
        bs = self.lora_b.split([size for _, size in self.spans])
        for (start, size), a, b in zip(self.spans, self.lora_a.split(self.r), bs):
            w[start : start + size] += b @ a
        return w * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base linear with the adapter folded in (a quantized base is dequantized into an
        nn.Linear: merging into int weights would throw the adapter's precision away)."""
        base = self.base
        if isinstance(base, nn.Linear):
            base.weight += self.delta_weight().to(base.weight.dtype)
            return base
        w = base.dequantize()
        lin = Linear(self.in_features, self.out_features, bias=getattr(base, "bias", None) is not None,
                        device=w.device, dtype=self.lora_a.dtype)
        lin.weight.copy_(w.to(lin.weight.dtype) + self.delta_weight())
        if lin.bias is not None:
            lin.bias.copy_(base.bias)
        return lin

    def extra_repr(self) -> str:
        names = ", ".join(_short(s.hf) for s in self.slices)
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, scaling={self.scaling:g}, "
                f"slices=[{names}]")


def _weight_like(base: nn.Module) -> torch.Tensor:
    w = getattr(base, "weight", None)
    if isinstance(w, torch.Tensor) and w.is_floating_point():
        return w
    # quantized base: adapters are float (QLoRA), on the base's device
    p = next(iter(base.buffers()), None) if w is None else w
    dev = p.device if p is not None else torch.device("cpu")
    return torch.empty(0, device=dev, dtype=getattr(base, "compute_dtype", torch.float32))


def _strip_base_prefix(module, state_dict, prefix, local_metadata) -> None:
    for k in [k for k in state_dict if k.startswith(prefix + "base.")]:
        state_dict[prefix + k[len(prefix) + 5 :]] = state_dict.pop(k)


def _add_base_prefix(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    own = (prefix + "lora_a", prefix + "lora_b", prefix + "base.")
    for k in [k for k in state_dict if k.startswith(prefix) and not k.startswith(own)]:
        state_dict[prefix + "base." + k[len(prefix) :]] = state_dict.pop(k)


# ----------------------------------------------------------------------------------------------
# Stacked-expert adapters (MoE)
# ----------------------------------------------------------------------------------------------


class ExpertLoRA(nn.Module):
    """Per-expert LoRA on a stacked `[E, out, in]` parameter: A `[E, r, in]`, B `[E, out, r]`.

    Installed as the MoE module's `lora_gate_up` / `lora_down`; its grouped compute calls
    `adapter(x_sorted, offs)` and adds the result: two more grouped matmuls of rank r per
    projection, on the same sorted rows (no loop over tokens). No dropout: the down projection's
    input is per (token, expert) pair, and PEFT's expert adapters refuse dropout too.
    """

    def __init__(self, stacked: torch.Tensor, r: int, scaling: float) -> None:
        super().__init__()
        E, out, inp = stacked.shape
        self.num_experts, self.out_features, self.in_features = E, out, inp
        self.r, self.scaling = r, scaling
        dt = stacked.dtype if stacked.is_floating_point() else torch.float32
        self.lora_a = nn.Parameter(torch.empty(E, r, inp, dtype=dt, device=stacked.device))
        self.lora_b = nn.Parameter(torch.zeros(E, out, r, dtype=dt, device=stacked.device))
        self.reset_lora_parameters()

    def reset_lora_parameters(self, init: str = "kaiming") -> None:
        with torch.no_grad():
            for e in range(self.num_experts):
                if init == "gaussian":
                    nn.init.normal_(self.lora_a[e], std=1 / self.r)
                else:
                    nn.init.kaiming_uniform_(self.lora_a[e], a=math.sqrt(5))
            self.lora_b.zero_()

    def forward(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """x (S, in) rows sorted by expert, offs (E,) row ends -> scaling * B_e A_e x (S, out)."""
        from ..core.moe import grouped_linear

        a, b = self.lora_a.to(x.dtype), self.lora_b.to(x.dtype)
        pad = -self.r % 8  # torch._grouped_mm wants 16-byte strides: zero-pad the rank to 8
        if pad:
            a, b = F.pad(a, (0, 0, 0, pad)), F.pad(b, (0, pad))  # (E, r+p, in), (E, out, r+p)
        u = grouped_linear(x, a, offs)  # (S, r+p)
        return grouped_linear(u, b, offs) * self.scaling  # (S, out)

    def delta_weight(self) -> torch.Tensor:
        return torch.bmm(self.lora_b, self.lora_a) * self.scaling  # (E, out, in)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, in={self.in_features}, out={self.out_features}, r={self.r}"


# ----------------------------------------------------------------------------------------------
# The mixin
# ----------------------------------------------------------------------------------------------


@dataclass
class _Installed:
    parent: nn.Module
    attr: str
    original: nn.Module | None  # None for expert adapters
    adapter: nn.Module
    site: Site
    slices: list[Slice] = field(default_factory=list)


class LoRAMixin(Mixin):
    """Low-rank adapters on the linears named by `target_modules` (HF names; PEFT's matching).

    Args:
        r: rank. alpha: scaling numerator (scaling = alpha / r, or alpha / sqrt(r) with
        `use_rslora`). dropout: on the adapter's input. target_modules: list of HF projection
        names (`q_proj`, `experts.gate_up_proj`, ...), a regex on full HF module names, or
        "all-linear" (every linear and expert projection but the output head and
        MoE routers).
        layers: restrict to these layer indices. freeze_base: set requires_grad=False on every
        parameter of the model that no mixin owns (restored on del_mixin).
        init: "kaiming" (PEFT's default) or "gaussian"; B always starts at zero.
    """

    def __init__(
        self,
        r: int = 8,
        alpha: float = 8,
        dropout: float = 0.0,
        target_modules: str | Sequence[str] = DEFAULT_TARGETS,
        use_rslora: bool = False,
        layers: Sequence[int] | None = None,
        freeze_base: bool = True,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be > 0, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        if init not in ("kaiming", "gaussian"):
            raise ValueError(f"LoRA init must be 'kaiming' or 'gaussian', got {init!r}")
        self.r, self.alpha, self.dropout_p = r, float(alpha), dropout
        self.target_modules: str | list[str] = (
            target_modules if isinstance(target_modules, str) else list(target_modules))
        self.use_rslora = use_rslora
        self.layers = None if layers is None else sorted(set(layers))
        self.freeze_base = freeze_base
        self.init = init
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        # Plain lists: the adapters are registered in the layers, not a second time here.
        self._installed: list[_Installed] = []
        self._frozen: list[nn.Parameter] = []

    # -- install / remove ----------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        self.train(model.training)
        chosen: list[tuple[Site, list[Slice]]] = []
        available: set[str] = set()
        for site in find_sites(model):
            sl = []
            for s in site.slices:
                available.add(_short(s.hf))
                if not _matches(s.hf, self.target_modules, site):
                    continue
                if self.layers is not None and _layer_of(s.hf) not in self.layers:
                    continue
                sl.append(s)
            if sl:
                chosen.append((site, site.slices if site.expert else sl))
        if not chosen:
            raise ValueError(f"LoRA target_modules={self.target_modules!r} matched no layer; "
                             f"available: {sorted(available)}")
        try:
            for site, slices in chosen:
                self._install(model, site, slices)
        except Exception:
            self.detach(model)
            raise
        if self.freeze_base:
            self._frozen = freeze_base_parameters(model, keep=self.adapter_parameters())

    def _install(self, model: nn.Module, site: Site, slices: list[Slice]) -> None:
        if site.expert:
            moe = model.get_submodule(site.module)
            if getattr(moe, f"lora_{site.param}") is not None:
                raise ValueError(f"{site.module}.{site.param} already has a LoRA adapter")
            ad = ExpertLoRA(getattr(moe, site.param), self.r, self.scaling)
            ad.train(moe.training)
            if self.init != "kaiming":
                ad.reset_lora_parameters(self.init)
            setattr(moe, f"lora_{site.param}", ad)
            self._installed.append(_Installed(moe, site.param, None, ad, site, slices))
            return
        parent_name, _, attr = site.module.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        original = getattr(parent, attr)
        if isinstance(original, LoRALinear):
            raise ValueError(f"{site.module} already has a LoRA adapter (one LoRA mixin at a time)")
        ad = LoRALinear(original, slices, self.r, self.scaling, self.dropout_p)
        ad.train(original.training)  # a model in eval mode must not get adapters with live dropout
        if self.init != "kaiming":
            ad.reset_lora_parameters(self.init)
        setattr(parent, attr, ad)
        self._installed.append(_Installed(parent, attr, original, ad, site, slices))

    def detach(self, model: nn.Module) -> None:
        for rec in reversed(self._installed):
            if rec.original is None:
                setattr(rec.parent, f"lora_{rec.attr}", None)
            else:
                setattr(rec.parent, rec.attr, rec.original)
        self._installed = []
        frozen, self._frozen = self._frozen, []
        unfreeze(model, frozen)

    @torch.no_grad()
    def merge(self, model: nn.Module) -> None:
        """Fold every adapter into its base weight and remove this mixin from `model`."""
        for rec in self._installed:
            if rec.original is None:
                stacked = getattr(rec.parent, rec.attr)
                stacked += rec.adapter.delta_weight().to(stacked.dtype)
                setattr(rec.parent, f"lora_{rec.attr}", None)
            else:
                merged = rec.adapter.merged()
                setattr(rec.parent, rec.attr, merged)
                rec.original = merged
        self._installed = [r for r in self._installed if r.original is not None]
        name = next(n for n, m in model.mixins.items() if m is self)
        model.del_mixin(name)

    # -- introspection -------------------------------------------------------------------
    def adapters(self) -> list[tuple[Site, list[Slice], nn.Module]]:
        """(site, adapted slices, LoRALinear | ExpertLoRA) for every installed adapter."""
        return [(r.site, r.slices, r.adapter) for r in self._installed]

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for r in self._installed for p in (r.adapter.lora_a, r.adapter.lora_b)]

    def target_names(self) -> list[str]:
        """Short HF names of what is adapted (q_proj, ...), for PEFT's `target_modules`."""
        return sorted({_short(s.hf) for r in self._installed if not r.site.expert for s in r.slices})

    def target_parameters(self) -> list[str]:
        """Expert parameters adapted, as PEFT's `target_parameters` (`mlp.experts.gate_up_proj`)."""
        out = set()
        for r in self._installed:
            if r.site.expert:
                out.add(param_key(r.site.slices[0].hf))
        return sorted(out)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.adapter_parameters())
        what = ", ".join(self.target_names() + self.target_parameters())
        return (f"r={self.r}, alpha={self.alpha:g}{', rslora' if self.use_rslora else ''}, "
                f"{len(self._installed)} adapted weights [{what}], {n:,} parameters")


def freeze_base_parameters(model: nn.Module, keep: Sequence[nn.Parameter] = ()) -> list[nn.Parameter]:
    """requires_grad=False on every parameter that no mixin owns (neither under `mixins.` nor an
    adapter a mixin installed in the layers) and that is not in `keep`; returns the ones it
    changed, so the mixin can restore them on detach."""
    keep_ids = {id(p) for p in keep}
    for m in getattr(model, "mixins", {}).values():
        keep_ids.update(id(p) for p in m.parameters())
        if hasattr(m, "adapter_parameters"):
            keep_ids.update(id(p) for p in m.adapter_parameters())
    changed = []
    for p in model.parameters():
        if p.requires_grad and id(p) not in keep_ids:
            p.requires_grad_(False)
            changed.append(p)
    return changed


def unfreeze(model: nn.Module, params: Sequence[nn.Parameter]) -> None:
    """Undo a mixin's freeze on detach -- unless another installed mixin still wants the base
    frozen, in which case it takes those parameters over (so removing LoRA under a head keeps the
    base frozen)."""
    for p in params:
        p.requires_grad_(True)
    for m in getattr(model, "mixins", {}).values():
        if getattr(m, "freeze_base", False) and hasattr(m, "_frozen"):
            keep = list(m.parameters()) + (m.adapter_parameters() if hasattr(m, "adapter_parameters") else [])
            m._frozen += freeze_base_parameters(model, keep=keep)


def attach_trainable(mixin: nn.Module, model: nn.Module) -> None:
    """attach() of a mixin whose own parameters are what trains (a head, a prefix): follow the
    model's mode (dropout off in eval), device and float dtype, and freeze the base when the
    mixin's `freeze_base` asks (kept in `mixin._frozen` for detach_trainable)."""
    mixin.train(model.training)
    p = next(model.parameters())
    if p.is_floating_point():
        mixin.to(device=p.device, dtype=p.dtype)  # a no-op when they already match
    if mixin.freeze_base:
        mixin._frozen = freeze_base_parameters(model, keep=list(mixin.parameters()))


def detach_trainable(mixin: nn.Module, model: nn.Module) -> None:
    """detach() counterpart of attach_trainable: give back what it froze."""
    frozen, mixin._frozen = mixin._frozen, []
    unfreeze(model, frozen)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared tensors counted once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_mixins(model: nn.Module) -> list[tuple[str, LoRAMixin]]:
    return [(n, m) for n, m in getattr(model, "mixins", {}).items() if isinstance(m, LoRAMixin)]


# ----------------------------------------------------------------------------------------------
# Multi-adapter serving: several frozen adapters, one per batch row (punica / S-LoRA style)
# ----------------------------------------------------------------------------------------------


def lora_deltas(lora: LoRAMixin) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """An installed LoRAMixin as {our module path: (A (R, in), B (out, R))} with the scaling
    folded into B and untargeted output rows of a fused linear left zero, so the adapter's
    delta on that linear is exactly B @ (A @ x). Stacked-expert adapters have no per-row form
    here and are refused."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for site, slices, ad in lora.adapters():
        if not isinstance(ad, LoRALinear):
            raise ValueError(f"multi-adapter LoRA serves linear adapters only, not the expert adapter on "
                             f"{site.module}.{site.param}")
        r = ad.r
        b = ad.lora_b.new_zeros(ad.out_features, len(slices) * r)
        for i, ((start, size), bi) in enumerate(zip(ad.spans, ad.lora_b.split([s for _, s in ad.spans]))):
            b[start:start + size, i * r:(i + 1) * r] = bi * ad.scaling
        out[site.module] = (ad.lora_a.detach().clone(), b)
    return out


class _RowAdapters:
    """Which adapter each row of the next forwards uses (shared by every MultiLoRALinear).
    `index` None: every row runs the base model (no LoRA work at all); `uniform` >= 1: every row
    runs that one adapter (plain matmuls, no gather); `groups`: (adapter, its rows) for the
    grouped path."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None
        self.uniform: int | None = None
        self.groups: list[tuple[int, torch.Tensor]] = []
        self.grouped = False


class MultiLoRALinear(_WrapsBase):
    """base(x) + B[i_b] A[i_b] x_b for each row b, with i_b the row's adapter (0: none).

    `lora_a` (N + 1, R, in) and `lora_b` (N + 1, out, R) stack the adapters (rank padded with
    zeros to the largest R; entry 0 is all zeros = the base model); a batch with mixed adapters
    gathers each row's pair and runs two batched matmuls (punica's BGMV, S-LoRA), so rows with
    different adapters share one forward. On the CPU the rows are grouped by adapter instead
    (two small matmuls per adapter in the batch, added into the rows): the gather would copy
    every row's A and B on every linear of every step, more memory traffic than the matmuls."""

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor, rows: _RowAdapters) -> None:
        super().__init__()
        self.base = base
        self.in_features: int = base.in_features
        self.out_features: int = base.out_features
        self.register_buffer("lora_a", a, persistent=False)
        self.register_buffer("lora_b", b, persistent=False)
        self._rows = rows
        self.register_state_dict_post_hook(_strip_base_prefix)
        self.register_load_state_dict_pre_hook(_add_base_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        rows = self._rows
        if rows.index is None:
            return y
        xa = x.to(self.lora_a.dtype)
        if rows.uniform is not None:
            d = F.linear(F.linear(xa, self.lora_a[rows.uniform]), self.lora_b[rows.uniform])
        elif rows.grouped:
            for k, idx in rows.groups:
                dk = F.linear(F.linear(xa.index_select(0, idx), self.lora_a[k]), self.lora_b[k])
                y = y.index_add(0, idx, dk.to(y.dtype))
            return y
        else:
            B = x.shape[0]
            if rows.index.numel() != B:
                raise ValueError(f"multi-LoRA: {rows.index.numel()} row adapters for a batch of {B}")
            a = self.lora_a.index_select(0, rows.index)  # (B, R, in)
            b = self.lora_b.index_select(0, rows.index)  # (B, out, R)
            u = torch.bmm(xa.reshape(B, -1, self.in_features), a.transpose(1, 2))  # (B, T, R)
            d = torch.bmm(u, b.transpose(1, 2)).reshape(y.shape)  # (B, T, out)
        return y + d.to(y.dtype)

    def extra_repr(self) -> str:
        n, r, _ = self.lora_a.shape
        return f"in={self.in_features}, out={self.out_features}, adapters={n - 1}, rank<={r}"


class MultiLoRAMixin(Mixin):
    """Serve several LoRA adapters on one base at once: `set_rows([i_0, i_1, ...])` before a
    forward names each batch row's adapter (`index_of(name)`; 0 = the base model).

    `adapters` maps a name to `lora_deltas(...)` of that adapter (frozen weights; read them from
    PEFT folders with finetune.peft_format.load_adapter, then lora_deltas, then del_mixin).
    Every linear any adapter targets is wrapped once; an adapter that does not target it has
    zeros there. Single-adapter LoRAMixin training and merging are untouched by this mode.
    """

    def __init__(self, adapters: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]],
                 mode: str = "auto") -> None:
        super().__init__()
        if not adapters:
            raise ValueError("MultiLoRAMixin needs at least one adapter")
        if mode not in ("auto", "bmm", "grouped"):
            raise ValueError(f"multi-LoRA mode must be 'auto', 'bmm' or 'grouped', got {mode!r}")
        self.mode = mode  # auto: grouped by adapter on the CPU, gather + bmm elsewhere
        self.names: list[str] = list(adapters)
        self._adapters = adapters
        self._state = _RowAdapters()
        self._installed: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, attr, original)

    def index_of(self, name: str) -> int:
        return self.names.index(name) + 1

    def set_rows(self, index: Sequence[int] | None) -> None:
        """Each row's adapter index for the next forwards (None or all zeros: the base model)."""
        st = self._state
        if index is None or not any(index):
            st.index = st.uniform = None
            return
        first = index[0]
        st.uniform = first if all(i == first for i in index) else None
        device = self._installed[0][2].lora_a.device if self._installed else torch.device("cpu")
        st.index = torch.tensor(list(index), dtype=torch.long, device=device)
        st.grouped = self.mode == "grouped" or (self.mode == "auto" and device.type == "cpu")
        if st.grouped and st.uniform is None:
            st.groups = [(k, (st.index == k).nonzero().flatten()) for k in sorted(set(index)) if k]

    def attach(self, model: nn.Module) -> None:
        modules = sorted({m for d in self._adapters.values() for m in d})
        try:
            for path in modules:
                parent_name, _, attr = path.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                original = getattr(parent, attr)
                if isinstance(original, (LoRALinear, MultiLoRALinear)):
                    raise ValueError(f"{path} already has a LoRA adapter")
                w = _weight_like(original)
                pairs = [self._adapters[n].get(path) for n in self.names]
                R = max(p[0].shape[0] for p in pairs if p is not None)
                a = w.new_zeros(len(pairs) + 1, R, original.in_features)
                b = w.new_zeros(len(pairs) + 1, original.out_features, R)
                for i, p in enumerate(pairs, start=1):
                    if p is not None:
                        if p[0].shape[1] != original.in_features or p[1].shape[0] != original.out_features:
                            raise ValueError(f"adapter {self.names[i - 1]!r}: {path} shapes "
                                             f"{tuple(p[0].shape)}, {tuple(p[1].shape)} do not fit the model")
                        a[i, : p[0].shape[0]] = p[0].to(a)
                        b[i, :, : p[1].shape[1]] = p[1].to(b)
                wrapped = MultiLoRALinear(original, a, b, self._state)
                setattr(parent, attr, wrapped)
                self._installed.append((parent, attr, wrapped))
        except Exception:
            self.detach(model)
            raise
        self._adapters = {}  # the stacks hold the weights now

    def detach(self, model: nn.Module) -> None:
        for parent, attr, wrapped in reversed(self._installed):
            setattr(parent, attr, wrapped.base)
        self._installed = []
        self._state.index = self._state.uniform = None
        self._state.groups = []

    def extra_repr(self) -> str:
        return f"adapters={self.names}, {len(self._installed)} adapted linears"
