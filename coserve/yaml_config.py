"""Reading a YAML config into a pydantic model, with errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from coserve.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


def read_yaml(path: str | Path) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return raw or {}


def validate(model: type[Model], raw: dict, origin: str, separator: str = "; ") -> Model:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid {origin}:{' ' if separator == '; ' else separator}"
                          f"{describe(exc, separator)}") from exc


def describe(exc: ValidationError, separator: str = "; ") -> str:
    """Each error as `field.path: message`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    return separator.join(parts)
