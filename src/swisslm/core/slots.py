# SPDX-License-Identifier: Apache-2.0
"""Mixin slots: SwissArmyTransformer's rules, bound once instead of looked up per call.

The backbone owns named slots, each a plain attribute `<slot>_impl` on the module that calls
it (the model, every block, or every attention module). A mixin is an nn.Module whose methods
are named after slots. `add_mixin` / `del_mixin` recompute every slot attribute from the
defaults plus the mixins in the order they were added; the forward pass only ever calls
`self.<slot>_impl(...)`, so there is nothing for torch.compile to trip over.

Rules (SAT's, with the wrap made explicit):
- The first mixin to implement a slot replaces the default.
- A second mixin implementing the same slot is an error naming both, unless it lists the
  slot in `wraps`; then its method must take a keyword `prev` and receives the previous
  implementation.
- Layer-level slot methods that take a keyword `layer` receive their block's index.
- `attach(model)` / `detach(model)` are for structural changes (LoRA swaps linears in place).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn


@dataclass(frozen=True)
class Slot:
    name: str
    owner: Literal["model", "block", "attn"]
    doc: str


SLOTS: dict[str, Slot] = {
    s.name: s
    for s in (
        Slot("embed", "model", "embed(input_ids, position_ids, token_type_ids) -> h (B, T, C)"),
        Slot("final_norm", "model", "final_norm(h) -> h"),
        Slot("output_head", "model", "output_head(h) -> logits (B, T, V)"),
        Slot("qkv_transform", "attn", "qkv_transform(q, k, v) -> q, k, v   (flat (B, T, H*D))"),
        Slot("position_embedding", "attn", "position_embedding(q, k, rope) -> q, k   ((B, H, T, D))"),
        Slot(
            "attention_fn",
            "attn",
            "attention_fn(q, k, v, mask, scale, is_causal) -> y (B, H, T, D)",
        ),
        Slot("mlp", "block", "mlp(x) -> y"),
        Slot("residual", "block", "residual(x, branch) -> x'"),
    )
}


class SlotConflictError(ValueError):
    pass


class Mixin(nn.Module):
    """Base class for mixins. Implement slot methods by name; list wrapped slots in `wraps`."""

    wraps: ClassVar[frozenset[str]] = frozenset()

    def slots(self) -> list[str]:
        return [name for name in SLOTS if callable(getattr(type(self), name, None))]

    def attach(self, model: nn.Module) -> None:  # structural change, once, at add time
        pass

    def detach(self, model: nn.Module) -> None:  # undo attach, at del time
        pass


def set_slot(owner: nn.Module, slot: str, fn: Any) -> None:
    # object.__setattr__: a default that is itself a submodule (the block's mlp) must not be
    # registered a second time under the slot's name (it would appear twice in state_dict).
    object.__setattr__(owner, f"{slot}_impl", fn)


def _accepts(fn: Any, name: str) -> bool:
    return name in inspect.signature(fn).parameters


class SlotHost:
    """Mixed into the backbone. Expects `self.layers` (blocks with `.attn`) and `self.mixins`."""

    mixins: nn.ModuleDict
    layers: nn.ModuleList

    def _slot_owners(self, slot: str) -> list[tuple[nn.Module, int | None]]:
        owner = SLOTS[slot].owner
        if owner == "model":
            return [(self, None)]  # type: ignore[list-item]
        if owner == "block":
            return [(blk, i) for i, blk in enumerate(self.layers)]
        return [(blk.attn, i) for i, blk in enumerate(self.layers)]

    def _capture_slot_defaults(self) -> None:
        """Called once at build: remember each owner's default implementations."""
        for slot in SLOTS:
            for owner, _ in self._slot_owners(slot):
                defaults = owner.__dict__.setdefault("_slot_defaults", {})
                defaults[slot] = getattr(owner, f"{slot}_impl")

    def _rebind_slots(self) -> None:
        for slot in SLOTS:
            for owner, layer in self._slot_owners(slot):
                fn = owner.__dict__["_slot_defaults"][slot]
                for mixin in self.mixins.values():
                    if slot not in mixin.slots():
                        continue
                    method = getattr(mixin, slot)
                    kwargs: dict[str, Any] = {}
                    if slot in mixin.wraps:
                        kwargs["prev"] = fn
                    if layer is not None and _accepts(method, "layer"):
                        kwargs["layer"] = layer
                    fn = functools.partial(method, **kwargs) if kwargs else method
                set_slot(owner, slot, fn)

    def add_mixin(self, name: str, mixin: Mixin) -> None:
        if name in self.mixins:
            raise SlotConflictError(f"a mixin named {name!r} is already installed")
        if not isinstance(mixin, Mixin):
            raise TypeError(f"mixin {name!r} must subclass swisslm.core.slots.Mixin")
        for slot in mixin.slots():
            providers = [n for n, m in self.mixins.items() if slot in m.slots()]
            if providers and slot not in mixin.wraps:
                raise SlotConflictError(
                    f"slot {slot!r} conflicts: mixin {name!r} and mixin {providers[-1]!r} both "
                    f"replace it (declare wraps={{{slot!r}}} on {name!r} to wrap instead)"
                )
            if slot in mixin.wraps and not _accepts(getattr(mixin, slot), "prev"):
                raise SlotConflictError(
                    f"mixin {name!r} wraps slot {slot!r} but its method takes no `prev` argument"
                )
        unknown = set(mixin.wraps) - set(SLOTS)
        if unknown:
            raise SlotConflictError(f"mixin {name!r} wraps unknown slot(s) {sorted(unknown)}")
        mixin.attach(self)  # type: ignore[arg-type]
        self.mixins[name] = mixin
        self._rebind_slots()

    def del_mixin(self, name: str) -> Mixin:
        if name not in self.mixins:
            raise KeyError(f"no mixin named {name!r} (installed: {list(self.mixins)})")
        mixin = self.mixins[name]
        del self.mixins[name]
        mixin.detach(self)  # type: ignore[arg-type]
        self._rebind_slots()
        return mixin

    def get_mixin(self, name: str) -> Mixin:
        return self.mixins[name]

    def slot_providers(self) -> dict[str, list[str]]:
        """Slot -> provider chain, outermost first, e.g. ["prefix", "default"]."""
        chains = {}
        for slot in SLOTS:
            chain = ["default"]
            for n, m in self.mixins.items():
                if slot in m.slots():
                    chain = [n, *chain] if slot in m.wraps else [n]
            chains[slot] = chain
        return chains

    def mixin_report(self) -> str:
        lines = ["slot                 provided by"]
        for slot, chain in self.slot_providers().items():
            lines.append(f"{slot:<20} {' -> '.join(chain)}")
        if self.mixins:
            lines.append("mixins: " + ", ".join(
                f"{n} ({type(m).__name__}{': ' + m.extra_repr() if m.extra_repr() else ''})"
                for n, m in self.mixins.items()))
        return "\n".join(lines)
