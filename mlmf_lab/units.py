"""Byte counts for people: ``human_bytes`` to print them, ``parse_size`` to read them.

>>> human_bytes(1536)
'1.5 KiB'
>>> parse_size("500MB"), parse_size("2GiB"), parse_size("1000000"), parse_size(1024)
(500000000, 2147483648, 1000000, 1024)
"""

from __future__ import annotations

import re

from .errors import ConfigError

# Decimal units as transformers reads ``max_shard_size`` ("5GB" = 5e9); the ``iB`` ones binary.
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_size(value: int | str, what: str = "a size") -> int:
    """``"500MB"`` -> 500_000_000, ``"2GiB"`` -> 2**31, ``"1000000"`` or a positive int as it is.

    Args:
        value: a positive byte count (an int or a string of digits), or a number with a
            unit (B, KB, MB, GB, TB, KiB ... TiB); case and spaces do not matter.
        what: the argument's name, for the error message (``"max_shard_size"``).

    Raises:
        ConfigError: anything else, naming ``what``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"{what} must be a positive byte count, found {value}")
        return value
    # Digits are bounded (30 before the point, 9 after): no int() of thousands of digits,
    # and integer arithmetic, so "1.5GB" is exact and a huge count is no float overflow.
    m = re.fullmatch(r"\s*(\d{1,30})(?:\.(\d{1,9}))?\s*([KMGT]I?B|B)?\s*", str(value).upper())
    if m is None or (m.group(2) is not None and m.group(3) is None):
        raise ConfigError(f"{what} must be a positive byte count (1000000) or a size with a "
                          f"unit (500MB, 2GiB), found {value!r}")
    whole, frac, unit = m.group(1), m.group(2) or "", _UNITS[m.group(3) or "B"]
    size = int(whole) * unit + int(frac or "0") * unit // 10 ** len(frac)
    if size <= 0:
        raise ConfigError(f"{what} must be at least one byte, found {value!r}")
    return size
