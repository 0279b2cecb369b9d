"""Loading the model's tokenizer with token ids exactly as its tokenizer.json defines them."""

from __future__ import annotations

import os
from pathlib import Path


def load_tokenizer(path: str | os.PathLike):
    """`PreTrainedTokenizerFast` when the folder has a tokenizer.json (AutoTokenizer may swap in
    a model-specific class that rewrites the pre-tokenizer, e.g. for qwen2), else AutoTokenizer."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {str(path)!r}")
    if (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
