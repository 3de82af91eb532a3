"""Model weights from GGUF files, Hugging Face directories or seeded random init, in HF tensor names."""

from coserve.execution.weights.loader import LoadedModel, load_model
from coserve.execution.weights.names import expected_shapes
from coserve.execution.weights.presets import PRESETS
from coserve.execution.weights.random_weights import random_state_dict
from coserve.execution.weights.registry import ModelSource, known_models, resolve

__all__ = [
    "PRESETS",
    "LoadedModel",
    "ModelSource",
    "expected_shapes",
    "known_models",
    "load_model",
    "random_state_dict",
    "resolve",
]
