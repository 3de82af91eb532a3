"""Reading a YAML config into a pydantic model, with errors that name the file and the field."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from coserve.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


class StrictConfig(BaseModel):
    """Base of every config file's sections: a misspelt field, a bool or a string where a number
    belongs (`true` is not 1), and NaN or infinity are errors that name the field, never casts."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Loader(yaml.SafeLoader):
    """YAML 1.2's numbers: PyYAML follows YAML 1.1, where `4e10` (no dot, no sign) is a string, and
    a strict config would then refuse the number the file plainly means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(path: str | Path) -> dict:
    try:
        raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if raw is None:  # an empty file: every section takes its defaults (or is reported missing)
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got a {type(raw).__name__}")
    return raw


def check_writable(path: str | Path, what: str = "--output") -> None:
    """Before hours of work whose result goes to `path`: its folder must exist and take a new file."""
    folder = Path(path).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK) or Path(path).is_dir():
        raise ConfigError(f"{what} {path}: cannot write there (the folder is missing or read-only, or it is a folder)")


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
