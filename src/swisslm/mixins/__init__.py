# SPDX-License-Identifier: Apache-2.0
"""Optional behaviours plugged into the backbone's slots: LoRA, prefix-tuning, heads.

    model.add_mixin("lora", LoRAMixin(r=16, alpha=32, target_modules="all-linear"))
    model.add_mixin("prefix", PrefixTuningMixin(model.config, prefix_len=16))
    model.add_mixin("cls", ClassificationHeadMixin(model.config.hidden_size, num_labels=2))
"""

from .heads import ClassificationHeadMixin
from .lora import LoRAMixin, freeze_base_parameters, trainable_parameters
from .prefix_tuning import PrefixTuningMixin

__all__ = ["ClassificationHeadMixin", "LoRAMixin", "PrefixTuningMixin", "freeze_base_parameters",
           "trainable_parameters"]
