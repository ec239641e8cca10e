# SPDX-License-Identifier: Apache-2.0
"""Fine-tuning glue: SFT data (text / chat with assistant-only loss), PEFT-format adapters,
LoRA merge, and the SFT / classification runs behind `swisslm finetune` and `swisslm classify`."""

from .peft_format import load_adapter, save_adapter

__all__ = ["load_adapter", "save_adapter"]
