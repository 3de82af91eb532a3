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


def whole_number(value: object) -> int | None:
    """A count given as an int, a numpy integer or a whole float (a byte budget of 1e9) as an int;
    None when it is none of those."""
    if is_count(value) or (is_finite_number(value) and float(value).is_integer()):
        return int(value)
    return None
