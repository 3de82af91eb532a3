"""On-disk cache of dequantised GGUF weights (and the tokenizer built from the same file).

An entry is keyed by the source's absolute path, size and mtime plus FORMAT_VERSION, so editing or
replacing the file, or changing how we decode it, misses the cache. Writes go to a temp name and are
renamed into place, so a crashed or concurrent writer never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from coserve.execution.models.spec import ModelSpec

FORMAT_VERSION = 2  # 2: rope frequency factors kept in the spec
DEFAULT_CACHE_DIR = "~/.cache/coserve"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    root = cache_dir or os.environ.get("COSERVE_CACHE_DIR") or DEFAULT_CACHE_DIR
    return Path(root).expanduser()


@dataclass(frozen=True)
class CacheEntry:
    folder: Path  # one per (source path, size, mtime, format)

    @property
    def weights(self) -> Path:
        return self.folder / "weights.safetensors"

    @property
    def tokenizer(self) -> Path:
        return self.folder / "tokenizer"

    @classmethod
    def for_source(cls, source: Path, root: Path) -> CacheEntry:
        source = source.resolve()
        stat = source.stat()
        place = hashlib.sha256(str(source).encode()).hexdigest()[:12]
        version = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:{FORMAT_VERSION}".encode()).hexdigest()
        return cls(root / "gguf" / f"{source.stem}-{place}" / version[:12])

    def drop_stale_versions(self) -> None:
        """Older versions of the same source are dead weight once a fresh one is written."""
        for sibling in self.folder.parent.iterdir():
            if sibling != self.folder and sibling.is_dir() and not sibling.name.startswith("."):
                shutil.rmtree(sibling, ignore_errors=True)


@dataclass
class CachedWeights:
    spec: ModelSpec
    chat_template: str | None
    has_tokenizer: bool


def write_weights(entry: CacheEntry, state_dict: dict[str, torch.Tensor], info: CachedWeights) -> None:
    metadata = {
        "coserve.format": str(FORMAT_VERSION),
        "coserve.spec": json.dumps(info.spec.to_dict()),
        "coserve.has_tokenizer": json.dumps(info.has_tokenizer),
    }
    if info.chat_template is not None:
        metadata["coserve.chat_template"] = info.chat_template
    entry.folder.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=entry.folder, prefix=".weights-", suffix=".tmp")
    os.close(fd)
    try:
        save_file({name: t.contiguous() for name, t in state_dict.items()}, temp, metadata=metadata)
        os.replace(temp, entry.weights)
    finally:
        Path(temp).unlink(missing_ok=True)


def read_info(entry: CacheEntry) -> CachedWeights | None:
    """The entry's spec and template, or None when there is no usable entry (a miss, not an error)."""
    try:
        with safe_open(entry.weights, framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("coserve.format") != str(FORMAT_VERSION):
            return None
        return CachedWeights(
            spec=ModelSpec(**json.loads(metadata["coserve.spec"])),
            chat_template=metadata.get("coserve.chat_template"),
            has_tokenizer=json.loads(metadata["coserve.has_tokenizer"]),
        )
    except Exception:  # unreadable or foreign file: rebuild rather than fail the load
        return None


def read_tensors(entry: CacheEntry, names: Iterable[str]) -> dict[str, torch.Tensor]:
    with safe_open(entry.weights, framework="pt") as f:
        return {name: f.get_tensor(name) for name in names}


def write_tree_atomically(target: Path, fill) -> None:
    """Build a directory with fill(temp_dir) and rename it to `target`; a concurrent winner is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        fill(temp)
        try:
            os.replace(temp, target)
        except OSError:
            if not target.is_dir():  # a rename onto a non-empty dir fails; only that case is benign
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
