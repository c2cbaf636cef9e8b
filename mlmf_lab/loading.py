"""Fill a model from a weight file without holding the weights twice."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from torch import nn

from . import events
from .errors import StateDictError
from .formats import load_state_dict


class LoadReport(NamedTuple):
    """What ``load_into`` matched: keys the model lacks, extra keys, shape conflicts."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, model, file)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(
                f"missing from the file: {', '.join(self.missing[:10])}"
                + (f" (+{len(self.missing) - 10} more)" if len(self.missing) > 10 else "")
            )
        if self.unexpected:
            parts.append(
                f"not in the model: {', '.join(self.unexpected[:10])}"
                + (f" (+{len(self.unexpected) - 10} more)" if len(self.unexpected) > 10 else "")
            )
        for key, want, got in self.mismatched[:10]:
            parts.append(f"{key}: model expects {list(want)}, file has {list(got)}")
        return "; ".join(parts) or "all keys match"


def compare_keys(model: nn.Module, state: dict[str, Any]) -> LoadReport:
    """The key-by-key comparison between a model and a state dict."""
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(state[k].shape))
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    return LoadReport(missing, unexpected, mismatched)


def load_into(
    model: nn.Module,
    path: str | os.PathLike[str],
    strict: bool = True,
    keep_quantized: bool = False,
) -> LoadReport:
    """Fill ``model`` (built on the meta device or not) from a weight file, copy-free.

    The file's tensors are memory-mapped and assigned as the model's parameters
    (``load_state_dict(assign=True)``), so the weights are never held twice.

    Args:
        model: any ``nn.Module``; build it under ``torch.device("meta")`` to skip init.
        path: any file ``ml.open_weights`` reads.
        strict: raise on missing, unexpected or shape-mismatched keys.
        keep_quantized: keep the file's quantized linear weights (GGUF blocks, int8/int4
            in safetensors) quantized: each matching ``nn.Linear`` becomes an
            ``ml.quant.QuantLinear`` holding the ``QTensor`` instead of a float copy.

    Returns:
        The ``LoadReport``; with ``strict=False`` the matching keys are loaded anyway.

    Raises:
        StateDictError: naming the file and the keys, when ``strict`` and they differ.

    Example:
        >>> with torch.device("meta"):  # doctest: +SKIP
        ...     model = MyModel()
        >>> ml.load_into(model, "model.safetensors")  # doctest: +SKIP
    """
    with events.activity("load", used=[path], params={"into": type(model).__name__}) as act:
        if keep_quantized:
            from .quant.linear import quantized_state  # quant is imported only when asked

            state: dict[str, Any] = quantized_state(model, path)
        else:
            state = load_state_dict(path)
        report = compare_keys(model, state)
        if strict and not report.ok:
            raise StateDictError(f"the model and the file disagree: {report.describe()}", path)
        bad = {k for k, _, _ in report.mismatched}
        usable = {k: v for k, v in state.items() if k not in bad and k not in report.unexpected}
        model.load_state_dict(usable, strict=False, assign=True)
        tie = getattr(model, "tie_weights", None)
        if callable(tie):
            tie()
        act.generated.append(model)
    return report
