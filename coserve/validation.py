"""Checks every config and request shares: a bool is not a number, and neither are NaN and infinity."""

from __future__ import annotations

import math


def is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
