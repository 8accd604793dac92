"""lmforge: pretrain and fine-tune Transformer language models from raw text."""

__version__ = "0.1.0"
