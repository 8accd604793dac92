"""Checkpoint interchange with other libraries (Hugging Face `transformers` for now)."""

from .hf import config_from_hf, config_to_hf, load_hf, save_hf

__all__ = ["config_from_hf", "config_to_hf", "load_hf", "save_hf"]
