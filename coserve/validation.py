"""Checks every config and request shares: a bool is not a number, and neither are NaN and infinity.
numpy scalars count as the numbers they hold (configs are often computed with numpy)."""

from __future__ import annotations

import math
import numbers


def is_finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: object) -> bool:
    """A whole number, as an int or numpy integer (not a bool, not a float)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
