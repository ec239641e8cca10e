# SPDX-License-Identifier: Apache-2.0
"""swisslm: one hackable transformer backbone for inference, training, fine-tuning and serving."""

from .api import AutoModel, Model
from .config import ConfigError, ModelConfig
from .core.slots import Mixin, SlotConflictError
from .io.errors import CheckpointError

__all__ = ["AutoModel", "CheckpointError", "ConfigError", "Mixin", "Model", "ModelConfig", "SlotConflictError"]
__version__ = "0.1.0"
