"""A checkpoint step as one side of ``ml.compare``: a step folder or a ``CheckpointRecord``.

>>> ml.compare("runs/a/step-000100", ckpts.get("best"))  # doctest: +SKIP

Registered into ``compare.sources`` from here because ``compare`` cannot import this package
(``CheckpointManager.diff`` imports ``compare``); ``mlmf_lab/__init__`` imports this package,
so the kind is known wherever ``ml.compare`` is.

The weight files are hashed against the manifest before a tensor is compared, as
``CheckpointManager.verify`` and ``state_dict`` do. A verified ``load`` hashes them while it
copies them in, in file order (``fill.read_verified``); a comparison cannot: it reads one
tensor pair at a time, in name order, one from each side. A changed or truncated file is
reported, naming it, before any number is computed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..compare.sources import SourceKind, register_kind
from ..errors import MLMFError
from ..formats import open_weights
from ..formats.base import WeightFile
from .files import MANIFEST, read_manifest, verify_manifest, weights_file
from .fill import weight_file_names
from .record import CheckpointRecord, parse_step_dir, read_record


def is_step(x: Any) -> bool:
    """A ``CheckpointRecord``, or a folder holding a checkpoint manifest (named ``step-*``,
    or whose manifest says it is one)."""
    if isinstance(x, CheckpointRecord):
        return True
    if not isinstance(x, (str, os.PathLike)):
        return False
    folder = Path(x)
    if not folder.is_dir() or not os.path.lexists(folder / MANIFEST):
        return False
    if parse_step_dir(folder.name) is not None:
        return True  # a damaged manifest is reported by open_step, not read past
    try:
        read_manifest(folder)
    except MLMFError:
        return False  # another tool's manifest.json
    return True


def open_step(x: Any) -> tuple[WeightFile, str]:
    """The verified weights of a checkpoint step, and its folder as the label.

    Raises:
        FormatError: a missing or malformed manifest or ``meta.json``.
        ChecksumError: a weight file missing, truncated or changed (named).
    """
    folder = x.path if isinstance(x, CheckpointRecord) else Path(x)
    read_record(folder)  # a finished checkpoint: manifest and meta.json readable
    # unreadable headers: hash every file, which names the damaged one
    verify_manifest(folder, names=weight_file_names(folder) or None)
    return open_weights(weights_file(folder)), os.fspath(folder)


register_kind(SourceKind("a checkpoint step (its folder or CheckpointRecord)", is_step,
                         open_step))

__all__ = ["is_step", "open_step"]
