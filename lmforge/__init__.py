"""lmforge: pretrain and fine-tune Transformer language models from raw text."""

from .errors import LmforgeError
from .tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = ["LmforgeError", "Tokenizer", "__version__"]
