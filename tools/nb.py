"""Build tutorial notebooks from their percent-format sources and run them.

    python tools/nb.py notebooks/src/01_weight_files.py [more.py ...]

Cells are separated by ``# %%`` (code) and ``# %% [markdown]`` lines (markdown
lines start with ``# ``). Tags go on the marker: ``# %% tags=["nbval-ignore-output"]``.
The notebook is written to ``notebooks/<name>.ipynb`` and executed in place, so
its stored outputs are what nbval compares against.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

MARKER = re.compile(r"^# %%(?P<md> \[markdown\])?(?:\s+tags=(?P<tags>\[.*\]))?\s*$")


def parse(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    cells: list[tuple[bool, list[str], list[str]]] = []
    for line in source.splitlines():
        m = MARKER.match(line)
        if m:
            cells.append((bool(m.group("md")), json.loads(m.group("tags") or "[]"), []))
        elif cells:
            cells[-1][2].append(line)
    for is_md, tags, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if is_md:
            text = "\n".join(re.sub(r"^# ?", "", ln) for ln in lines)
            cell = nbformat.v4.new_markdown_cell(text)
        else:
            cell = nbformat.v4.new_code_cell("\n".join(lines))
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"  # stable ids keep diffs small
    return nb


def _scratch_env() -> None:
    """Kernels write IPython/Jupyter/matplotlib state and our compiled C kernels to a scratch
    folder, as under `make test`."""
    scratch = Path(tempfile.gettempdir()) / "mlmf-nb"
    for key, sub in [("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl"),
                     ("JUPYTER_CONFIG_DIR", "jupyter/config"), ("JUPYTER_DATA_DIR", "jupyter/data"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter/runtime"), ("MLMF_KERNEL_DIR", "kernels")]:
        os.environ.setdefault(key, str(scratch / sub))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(src: Path) -> Path:
    _scratch_env()
    out = src.parent.parent / f"{src.stem}.ipynb"
    nb = parse(src.read_text(encoding="utf-8"))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(out.parent)}}
    ).execute()
    nbformat.write(nb, out)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print("built", build(Path(arg)))
