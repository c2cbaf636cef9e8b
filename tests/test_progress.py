"""Progress bars: hidden by the caller, or by TQDM_DISABLE whenever the caller shows them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlmf_lab.progress import bar


@pytest.mark.parametrize(("hide", "hidden"), [(False, False), (True, True)])
def test_the_caller_can_hide_a_bar(hide: bool, hidden: bool) -> None:
    with bar(range(3), hide=hide) as b:
        assert bool(b.disable) is hidden and list(b) == [0, 1, 2]


def test_tqdm_disable_hides_a_shown_bar() -> None:
    """tqdm reads TQDM_* when it is imported, hence a fresh interpreter."""
    code = "from mlmf_lab.progress import bar; print(bool(bar(range(3)).disable))"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "True"
