"""Typed errors. Each names the offending field and its limit, so servers can map them to 4xx."""

from __future__ import annotations


class CoserveError(Exception):
    """Base class of every error coserve raises on purpose."""


class InvalidRequestError(CoserveError, ValueError):
    """A request or sampling parameter is out of range; `param` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ContextLengthError(InvalidRequestError):
    """The prompt (plus max_tokens) does not fit the model's context."""


class UnknownModelError(CoserveError, LookupError):
    """A model name that neither the registry nor a path resolves."""


class ModelConfigError(CoserveError, ValueError):
    """A model config that coserve cannot run (unsupported architecture, inconsistent shapes)."""


class WeightLoadError(CoserveError, OSError):
    """A weight file that is missing, unreadable or inconsistent with its config."""


class ConfigError(CoserveError, ValueError):
    """An engine, device or server configuration that cannot work."""


class OutOfCapacityError(CoserveError, RuntimeError):
    """The engine cannot accept more work right now (bounded queue full)."""
