"""coserve: serve many LLMs on a shared pool of accelerators."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Imported on first use, so `coserve bench` and `import coserve.errors` stay light.
_LAZY = {
    "LLM": "coserve.entrypoints.llm",
    "SamplingParams": "coserve.sampling_params",
    "RequestOutput": "coserve.engine.outputs",
    "CompletionOutput": "coserve.engine.outputs",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'coserve' has no attribute {name!r}")
