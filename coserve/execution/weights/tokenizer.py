"""Tokenizers from a GGUF file (built once by transformers, then cached) or from an HF directory."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from coserve.errors import WeightLoadError
from coserve.execution.weights.cache import write_tree_atomically

# any one of these means the directory ships a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")

logger = logging.getLogger(__name__)


def gguf_tokenizer(path: Path, cached: Path) -> PreTrainedTokenizerBase:
    """Converting the GGUF vocabulary takes seconds; the saved copy loads in a fraction of that."""
    if cached.is_dir():
        try:
            return AutoTokenizer.from_pretrained(cached)
        except Exception:  # a damaged copy is rebuilt below
            shutil.rmtree(cached, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:
        raise WeightLoadError(f"{path}: cannot build a tokenizer from the GGUF file ({exc})") from exc
    try:
        write_tree_atomically(cached, tokenizer.save_pretrained)
    except OSError as exc:  # an unwritable cache costs the next start its speed, not this one its tokenizer
        logger.warning("cannot cache the tokenizer in %s: %s", cached, exc)
    return tokenizer


def dir_tokenizer(path: Path) -> PreTrainedTokenizerBase | None:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise WeightLoadError(f"{path}: cannot load its tokenizer ({exc})") from exc
