"""Checkpoint formats: safetensors/HF folders, GGUF, tokenizers and chat templates."""
