# SPDX-License-Identifier: Apache-2.0
"""swisslm: one hackable transformer backbone for inference, training, fine-tuning and serving.

The public names are resolved on first use (PEP 562), so `import swisslm` and `import swisslm.x`
stay cheap: torch is imported only when something that needs it is touched. This keeps
`swisslm --help` and argument errors instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule that defines it
_EXPORTS = {
    "AutoModel": ".auto",
    "AutoModelForCausalLM": ".auto",
    "AutoModelForSequenceClassification": ".auto",
    "AutoTokenizer": ".auto",
    "Model": ".api",
    "ModelConfig": ".config",
    "ConfigError": ".config",
    "Mixin": ".core.slots",
    "SlotConflictError": ".core.slots",
    "CheckpointError": ".io.errors",
}

__all__ = ["AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer",
           "CheckpointError", "ConfigError", "Mixin", "Model", "ModelConfig", "SlotConflictError"]
__version__ = "0.1.0"

if TYPE_CHECKING:  # static checkers and IDEs see the real names
    from .api import Model
    from .auto import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from .config import ConfigError, ModelConfig
    from .core.slots import Mixin, SlotConflictError
    from .io.errors import CheckpointError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
