"""The exception types every layer of mlmf_lab raises.

Every message says what was expected, what was found, and which file. Catch
``MLMFError`` to handle any problem the library reports on purpose.
"""

from __future__ import annotations

import os


class MLMFError(Exception):
    """Base class: a problem with user input that mlmf_lab detected and explained."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class FormatError(MLMFError):
    """A weight file is malformed: bad magic, truncated, inconsistent header or offsets."""


class UnsupportedError(MLMFError):
    """A format, dtype, quant type or scheme that mlmf_lab does not know."""


class ShardError(FormatError):
    """A sharded checkpoint whose index and shards disagree or escape their folder."""


class UnsafeFileError(MLMFError):
    """A file that would run code or reach outside its folder if we trusted it."""


class StateDictError(MLMFError):
    """Missing, unexpected or shape-mismatched keys when filling a model."""


class ChecksumError(MLMFError):
    """A file whose sha256 does not match its manifest."""


class DistributedError(MLMFError):
    """A rank died, timed out or could not read its part of a file."""


class ConfigError(MLMFError):
    """A configuration value that cannot work (bad rank, unknown strategy, ...)."""


class CacheError(MLMFError):
    """An object that cannot be cached: larger than the budget, or a key that is not there."""


__all__ = [
    "MLMFError",
    "FormatError",
    "UnsupportedError",
    "ShardError",
    "UnsafeFileError",
    "StateDictError",
    "ChecksumError",
    "DistributedError",
    "ConfigError",
    "CacheError",
]
