# SPDX-License-Identifier: Apache-2.0
"""transformers' model surface over swisslm's `Model`: the same module (same parameters, same
state dict, same generation loops), with forward() and generate() taking transformers' arguments.

    out = model(input_ids, attention_mask=mask, labels=ids, output_hidden_states=True)
    out.loss, out.logits, out.hidden_states, out["logits"]
    ids = model.generate(**tokenizer(texts, padding=True, return_tensors="pt"), max_length=30)

`PreTrainedModel` subclasses `api.Model` and is what the Auto classes return; a loaded `Model`
becomes one by `adopt` (its class is switched, nothing is copied). Native calls (`input_pos`,
`num_logits_to_keep`, ...) still work, so every swisslm function that takes a Model takes it.

Differences from transformers, on purpose (docs in README "transformers drop-in"):
- position ids, when not given, count each row's real tokens (as transformers' generate does),
  so a left-padded row scores as it would alone; transformers' bare forward counts columns
  (pass `position_ids` for its numbers);
- `use_cache` defaults to False (our cache is a preallocated buffer, not a by-product);
  `past_key_values` must be the `StaticPast` a previous call returned;
- `output_attentions=True` is refused: attention runs in SDPA and keeps no weights.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..api import Model
from ..config import ModelConfig
from ..core.kv_cache import KVCache
from ..generation.config import GenerationConfig, read_hf_generation_config
from ..generation.generate import run as run_generation
from ..generation.params import SamplingParams
from .outputs import ModelOutput, StaticPast

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

# HF config names -> ModelConfig fields (the rest is looked up in the family's config_to_hf).
_HF_ALIASES = {
    "num_attention_heads": "num_heads",
    "num_hidden_layers": "num_layers",
    "num_key_value_heads": "num_kv_heads",
    "tie_word_embeddings": "tie_embeddings",
    "rms_norm_eps": "norm_eps",
    "layer_norm_eps": "norm_eps",
    "n_positions": "max_position_embeddings",
}

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """transformers' style: each distinct warning is shown once per process."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


class HFModelConfig(ModelConfig):
    """ModelConfig that also answers transformers' field names (`hidden_size`,
    `num_attention_heads`, `num_hidden_layers`, `model_type`, ...): swisslm's own field first,
    then the alias, then the family's HF config (what save_pretrained writes), then `extra`."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("extra", "family"):
            raise AttributeError(name)
        if name in _HF_ALIASES:
            return getattr(self, _HF_ALIASES[name])
        hf = self.hf_dict()
        if name in hf:
            return hf[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def hf_dict(self) -> dict[str, Any]:
        """transformers' config.json of this model (the family's mapping plus unknown keys kept);
        `to_dict()` stays ModelConfig's (swisslm's own fields, what its checkpoints store)."""
        from ..families import get_family

        hf = get_family(self.family).config_to_hf(self)
        hf.update({k: v for k, v in self.extra.items() if k not in hf})
        return hf

    use_return_dict = True
    output_hidden_states = False
    output_attentions = False
    is_encoder_decoder = False


class HFGenerationConfig:
    """`model.generation_config`: the checkpoint's generation_config.json defaults as attributes
    (transformers' names; assign to change the defaults of later generate calls). Calling it is
    `Model.generation_config(...)` (swisslm's GenerationConfig builder), so Model.stream works."""

    def __init__(self, model: PreTrainedModel, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._values.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._values[name] = value

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __call__(self, *args: Any, **kwargs: Any) -> GenerationConfig:
        return Model.generation_config(self._model, *args, **kwargs)

    def __repr__(self) -> str:
        return f"GenerationConfig {self._values}"


# generate() keywords with transformers' meaning that swisslm maps (besides the named ones), and
# swisslm's own (SamplingParams' fields, logprobs, seeds): Model.generate's keywords keep working.
_GENERATE_MAPPED = frozenset({
    "min_new_tokens", "min_p", "no_repeat_ngram_size", "length_penalty", "early_stopping", "seed", "stop",
    "stop_strings", "logprobs", "top_logprobs", "prompt_logprobs", "json_schema", "regex",
    *(f.name for f in dataclasses.fields(SamplingParams)),
})
# generate() keywords that change nothing here: accepted with a warning.
_GENERATE_IGNORED = frozenset({"use_cache", "synced_gpus", "cache_implementation", "low_memory", "tokenizer",
                               "output_attentions", "output_hidden_states", "output_scores", "output_logits",
                               "return_legacy_cache", "token_type_ids"})
# transformers' generation defaults where swisslm's differ (its GenerationConfig()).
_HF_DEFAULTS = {"top_k": 50, "top_p": 1.0, "temperature": 1.0, "do_sample": False,
                "num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0}


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' ForCausalLMLoss: token t predicts labels[t + 1], -100 ignored, mean over
    the counted tokens, in fp32."""
    labels = F.pad(labels.to(logits.device), (0, 1), value=IGNORE_INDEX)[:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


class PreTrainedModel(Model):
    """swisslm's Model with transformers' forward / generate arguments (see the module doc)."""

    hf_generation: dict[str, Any] | None = None
    hf_device_map: dict[str, Any] | None = None
    main_device: torch.device | None = None  # where hooks run offloaded layers (device_map)

    # -- attributes transformers users read ------------------------------------------------
    @property
    def device(self) -> torch.device:
        if self.main_device is not None:
            return self.main_device
        for p in self.parameters():
            if p.device.type != "meta":
                return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self._float_dtype()

    @property
    def generation_config(self) -> HFGenerationConfig:  # type: ignore[override]
        if self.__dict__.get("_hf_gen_obj") is None:
            self.__dict__["_hf_gen_obj"] = HFGenerationConfig(self, self.hf_generation or {})
        return self.__dict__["_hf_gen_obj"]

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed.word

    def setup_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> list[KVCache]:
        """As Transformer.setup_cache, on the execution device (with device_map, offloaded
        parameters sit on the meta device between calls)."""
        if self.main_device is None:
            return super().setup_cache(batch_size, max_len, dtype)
        dtype = dtype or self._float_dtype()
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            dtype = torch.float32
        cfg = self.config
        caches = [KVCache(batch_size, cfg.num_kv_heads, max_len, cfg.head_dim, dtype, self.main_device)
                  for _ in self.layers]
        self.bind_cache(caches)
        return caches

    # -- forward -----------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        num_logits_to_keep: int = 0,
        *,
        past_key_values: StaticPast | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | None = None,
        cache_position: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ModelOutput | tuple[Any, ...]:
        """transformers' forward (see the module doc for what differs); swisslm's native
        `input_pos` / `num_logits_to_keep` calls (the decode loops') pass straight through."""
        if kwargs:
            raise TypeError(f"forward() got unexpected keyword arguments: {sorted(kwargs)}")
        if output_attentions:
            raise ValueError("output_attentions=True is not supported: attention runs in SDPA, which keeps no "
                             "attention weights")
        if cache_position is not None:
            warn_once("forward(cache_position=...) is ignored: positions in the cache follow past_key_values")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        keep = logits_to_keep if logits_to_keep is not None else num_logits_to_keep
        if input_pos is not None:  # the decode loops' own cached call
            out = self._run(input_ids, attention_mask, position_ids, input_pos, token_type_ids, keep,
                            inputs_embeds, bool(output_hidden_states))
            return out if return_dict is not False else out.to_tuple()
        if use_cache or past_key_values is not None:
            out = self._cached_forward(input_ids, inputs_embeds, attention_mask, position_ids, past_key_values,
                                       token_type_ids, keep, bool(output_hidden_states))
        else:
            out = self._run(input_ids, attention_mask, position_ids, None, token_type_ids, keep, inputs_embeds,
                            bool(output_hidden_states))
        if labels is not None:
            if out.logits is None:
                raise ValueError("labels need a model with an LM head (this checkpoint has none)")
            if keep:
                raise ValueError("labels need the logits of every position: do not pass logits_to_keep")
            loss = causal_lm_loss(out.logits, labels)
            route = output_router_logits if output_router_logits is not None else \
                self.config.extra.get("output_router_logits", False)
            if route and out.aux_loss is not None:  # MoE: transformers adds the coef-weighted aux loss
                loss = loss + out.aux_loss.to(loss.device)
            out = ModelOutput(loss=loss, **out)
        return out if return_dict is not False else out.to_tuple()

    def _run(self, input_ids, attention_mask, position_ids, input_pos, token_type_ids, keep, inputs_embeds,
             want_hidden: bool) -> ModelOutput:
        """Transformer.forward with two temporary hooks: `inputs_embeds` replaces the word
        embedding's output (so multipliers, positions and token types still apply, as in
        transformers), and `output_hidden_states` collects the embedding and every block's output."""
        handles = []
        hidden: list[torch.Tensor] = []
        fused = self.fused_layers
        if inputs_embeds is not None:
            B, T = inputs_embeds.shape[:2]
            input_ids = torch.zeros(B, T, dtype=torch.long, device=inputs_embeds.device)
            handles.append(self.embed.word.register_forward_hook(
                lambda m, a, o: inputs_embeds.to(device=o.device, dtype=o.dtype)))
        try:
            if want_hidden:
                self.fused_layers = None  # the fused CPU step runs the blocks without calling them
                handles.append(self.embed.register_forward_hook(lambda m, a, o: hidden.append(o)))
                handles += [blk.register_forward_hook(lambda m, a, o: hidden.append(o)) for blk in self.layers]
            out = super().forward(input_ids, attention_mask, position_ids, input_pos, token_type_ids, keep)
        finally:
            for h in handles:
                h.remove()
            self.fused_layers = fused
        h = out.last_hidden_state
        if hidden:
            hidden[-1] = h  # transformers' last entry is after the final norm
        pooler = getattr(self, "pooler", None)
        return ModelOutput(logits=out.logits, hidden_states=tuple(hidden) if hidden else None,
                           last_hidden_state=h, pooler_output=pooler(h) if pooler is not None else None,
                           aux_loss=out.aux_loss, router_logits=out.router_logits)

    def _cached_forward(self, input_ids, inputs_embeds, attention_mask, position_ids, past, token_type_ids,
                        keep, want_hidden) -> ModelOutput:
        if not self.config.causal:
            raise ValueError("use_cache / past_key_values need a causal model (this is an encoder)")
        if past is not None and not isinstance(past, StaticPast):
            raise TypeError("past_key_values must be the past_key_values a previous swisslm forward returned "
                            f"(got {type(past).__name__}: transformers' Cache objects are not supported)")
        ref = input_ids if input_ids is not None else inputs_embeds
        B, T = ref.shape[:2]
        device = ref.device
        start = past.length if past is not None else 0
        if attention_mask is not None and attention_mask.shape[1] != start + T:
            raise ValueError(f"attention_mask must cover the past and the new tokens: {start + T} columns, "
                             f"got {attention_mask.shape[1]}")
        if past is None:
            past = StaticPast(self.setup_cache(B, T + 64), 0, torch.zeros(B, dtype=torch.long, device=device))
            past.mask = torch.ones(B, 0, dtype=torch.long, device=device)
        else:
            past.grow(start + T)
        self.bind_cache(past.caches)
        full = attention_mask.long() if attention_mask is not None else torch.cat(
            [past.mask, torch.ones(B, T, dtype=torch.long, device=device)], 1)
        if position_ids is None:
            position_ids = ((full.cumsum(-1) - 1).clamp(min=0)[:, start:] if attention_mask is not None
                            else past.next_positions[:, None] + torch.arange(T, device=device))
        mask = torch.ones(B, past.capacity, dtype=torch.long, device=device)
        mask[:, : start + T] = full
        try:
            out = self._run(input_ids, mask, position_ids, torch.arange(start, start + T, device=device),
                            token_type_ids, keep, inputs_embeds, want_hidden)
        finally:
            self.clear_cache()  # generate() and later calls allocate their own buffers
        past.length, past.mask = start + T, full
        past.next_positions = position_ids[:, -1] + 1
        return ModelOutput(past_key_values=past, **out)

    # -- generate ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(  # type: ignore[override]
        self,
        inputs: torch.Tensor | None = None,
        generation_config: Any = None,
        streamer: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor | Any:
        """transformers' generate: `max_new_tokens` | `max_length` (prompt included; 20 by
        default), do_sample, temperature, top_k (50 by default, as transformers), top_p,
        num_beams, num_return_sequences, repetition_penalty, eos/pad ids, attention_mask,
        `streamer` (anything with put()/end(), e.g. transformers' TextStreamer). Defaults come
        from the checkpoint's generation_config.json, then `generation_config` (a dict or
        transformers' GenerationConfig), then the keywords. Returns (B * num_return_sequences,
        T + n) ids, finished rows padded with pad_token_id (else EOS)."""
        if kwargs.get("sampling") is not None:  # swisslm's own call (the CLI, the server): Model.generate
            if generation_config is not None or streamer is not None:
                raise TypeError("sampling= is swisslm's generate: pass no generation_config or streamer with it")
            return Model.generate(self, inputs if inputs is not None else kwargs.pop("input_ids"), **kwargs)
        input_ids = kwargs.pop("input_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if "inputs_embeds" in kwargs:
            raise ValueError("generate(inputs_embeds=...) is not supported: pass input_ids")
        ids = inputs if inputs is not None else input_ids
        if ids is None:
            raise ValueError("generate() needs input_ids")
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids)
        if ids.dim() == 1:
            ids = ids[None]
        settings = dict(self.generation_config.to_dict())
        if generation_config is not None:
            given = generation_config if isinstance(generation_config, dict) else (
                generation_config.to_diff_dict() if hasattr(generation_config, "to_diff_dict")
                else generation_config.to_dict())
            settings.update({k: v for k, v in given.items() if v is not None})
        settings.update({k: v for k, v in kwargs.items() if v is not None})
        return_dict = bool(settings.pop("return_dict_in_generate", False))
        ignored = sorted(k for k in settings if k in _GENERATE_IGNORED)
        for k in ignored:
            settings.pop(k)
        if ignored:
            warn_once(f"generate() ignores {ignored} (no effect in swisslm)")
        for k in ("bos_token_id", "transformers_version", "_from_model_config"):
            settings.pop(k, None)
        if "stop_strings" in settings:
            settings["stop"] = settings.pop("stop_strings")
        known = set(_HF_DEFAULTS) | _GENERATE_MAPPED | {"max_new_tokens", "max_length", "min_length",
                                                          "eos_token_id", "pad_token_id"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"generate() got unexpected keyword arguments {unknown} (swisslm does not support "
                            "them; ignoring them would generate something else)")
        s = {**_HF_DEFAULTS, **settings}
        T = ids.shape[1]
        max_length = s.pop("max_length", None)
        if s.get("max_new_tokens") is not None:  # wins over max_length, as in transformers
            new = int(s.pop("max_new_tokens"))
        elif max_length is not None:
            if int(max_length) <= T:
                raise ValueError(f"Input length of input_ids is {T}, but `max_length` is set to {max_length}: "
                                 "set `max_new_tokens` or a larger `max_length`")
            new = int(max_length) - T
        else:  # transformers: 20 new tokens, within the model's positions
            new = max(1, min(20, self.config.max_position_embeddings - T))
        min_length = s.pop("min_length", None)
        if min_length is not None and "min_new_tokens" not in s:
            s["min_new_tokens"] = max(0, int(min_length) - T)
        eos = s.pop("eos_token_id", None)
        if eos is None:
            eos = self.config.eos_token_id
        eos = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
        pad = s.pop("pad_token_id", None)
        if pad is None:
            pad = self.config.pad_token_id
        if pad is None and eos and attention_mask is not None:
            warn_once(f"Setting `pad_token_id` to `eos_token_id`:{eos[0]} for open-end generation.")
        if not s["do_sample"]:
            for k in ("temperature", "top_k", "top_p"):
                s.pop(k)
        cfg = Model.generation_config(self, max_new_tokens=new, eos_token_id=eos, pad_token_id=pad, **s)
        device = self.device
        ids = ids.to(device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        callback = None
        if streamer is not None:
            if ids.shape[0] > 1 or cfg.num_beams > 1:
                raise ValueError("`streamer` supports only batch size 1 without beam search (as transformers)")
            streamer.put(ids.cpu())

            def callback(tokens: torch.Tensor) -> None:
                streamer.put(tokens.cpu())

        if (cfg.params.logprobs is not None or cfg.prompt_logprobs is not None) and not return_dict:
            raise ValueError("logprobs come in the GenerationResult: pass return_dict_in_generate=True")
        try:
            res = run_generation(self, ids, attention_mask, cfg, self.tokenizer, streamer=callback)
        finally:
            if streamer is not None:
                streamer.end()
        return res if return_dict else res.sequences

    # -- saving ------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | str | None = None,  # type: ignore[override]
                        **kwargs: Any) -> Path:
        """The HF folder (config.json, generation_config.json, safetensors, tokenizer files).
        transformers' `safe_serialization`/`max_shard_size` are accepted (always safetensors)."""
        ignored = sorted(set(kwargs) - {"safe_serialization", "max_shard_size", "push_to_hub", "state_dict"})
        if ignored:
            raise TypeError(f"save_pretrained() got unexpected keyword arguments: {ignored}")
        if kwargs.get("push_to_hub"):
            raise ValueError("push_to_hub is not supported (swisslm never uploads)")
        if kwargs.get("state_dict") is not None:
            raise ValueError("save_pretrained(state_dict=...) is not supported: it saves the model's own weights")
        if self.hf_device_map and "disk" in self.hf_device_map.values():
            raise ValueError("a disk-offloaded model cannot be saved (its offloaded weights are not in memory)")
        out = super().save_pretrained(folder, dtype)
        if self.hf_generation:
            import json

            gen_path = out / "generation_config.json"
            gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
            gen.update(self.hf_generation)
            gen_path.write_text(json.dumps(gen, indent=2))
        return out


def _drop_pooler_hook(model: Model) -> None:
    """BERT's family attaches its pooler as a forward hook that rebuilds the backbone's tuple
    output; PreTrainedModel.forward returns a ModelOutput with pooler_output itself."""
    for key, fn in list(model._forward_hooks.items()):
        if getattr(fn, "__name__", "") == "_add_pooler_output":
            del model._forward_hooks[key]


def adopt(model: Model, source: str | Path | None = None) -> PreTrainedModel:
    """Give a loaded Model transformers' surface in place (class switch, nothing copied): HF
    config names, generation_config.json defaults from `source` (a folder), forward/generate."""
    model.__class__ = PreTrainedModel
    model.config.__class__ = HFModelConfig
    _drop_pooler_hook(model)
    gen: dict[str, Any] = dict(model.hf_generation or {})
    if source is not None and Path(source).is_dir():
        gen, other = read_hf_generation_config(source)
        if other:
            log.info("generation_config.json keys swisslm does not use: %s", other)
    model.hf_generation = gen
    return model  # type: ignore[return-value]
