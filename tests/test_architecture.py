"""The layout keeps its promises: no import cycle, bottom layers stay bottom, no Jupyter below
the views, and every public name the README shows resolves in a fresh interpreter.

The import graph is computed from the source (``ast``), so an import inside a function counts
as an edge like any other; only imports under ``if TYPE_CHECKING:`` are left out. Importing
``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so those are edges too: that is
how a cycle through a package's ``__init__`` shows up.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mlmf_lab"
# Root modules every layer may import; they import nothing above them.
BOTTOM = {"errors", "events", "progress", "units", "atomic", "files", "runinfo", "tables"}
# The quantization codec: block formats and their kernels, below formats/ in the layers.
CODEC = {"base", "bits", "blocks_k", "blocks_k_quant", "blocks_legacy", "chunks", "ggml", "intx",
         "native"}
CAPABILITIES = ["formats", "quant", "lora", "checkpoint", "cache", "provenance", "distributed",
                "multimodal", "models", "cli", "compare", "convert", "loading"]
JUPYTER = ["IPython", "ipywidgets", "anywidget", "matplotlib"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    # ``from pkg import name`` imports the submodule ``pkg.name`` when there is one
    return [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin
            for a in node.names]


def direct_imports(module: str) -> set[str]:
    """The mlmf_lab modules ``module``'s source imports (anywhere but under TYPE_CHECKING)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for target in _targets(module, path, node):
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target in MODULES and target != module:
                found.add(target)
    return found


def import_graph() -> nx.DiGraph:
    """Module -> modules it runs on import: its direct imports and their parent packages."""
    g = nx.DiGraph()
    for module in MODULES:
        g.add_node(module)
        for target in direct_imports(module):
            parts = target.split(".")
            for k in range(2, len(parts) + 1):  # mlmf_lab/__init__ is the facade: left out
                parent = ".".join(parts[:k])
                if parent != module and not module.startswith(parent + "."):
                    g.add_edge(module, parent)
    return g


def layer(module: str) -> str:
    """``mlmf_lab.formats.gguf`` -> ``formats``; a root module is its own layer."""
    return module.split(".")[1] if module.count(".") else "mlmf_lab"


def test_no_module_imports_the_facade() -> None:
    """``mlmf_lab/__init__`` imports the capabilities; a module importing it makes a cycle."""
    offenders = [m for m in MODULES if m != "mlmf_lab" and "mlmf_lab" in direct_imports(m)]
    assert offenders == []


def test_no_import_cycle_between_modules() -> None:
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_no_import_cycle_between_packages() -> None:
    g = nx.DiGraph()
    for a, b in import_graph().edges:
        if layer(a) != layer(b) and "mlmf_lab" not in (layer(a), layer(b)):
            g.add_edge(layer(a), layer(b))
    cycles = list(nx.simple_cycles(g))
    assert cycles == [], "package cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _bottom_or_codec(target: str) -> bool:
    parts = target.split(".")
    return (len(parts) == 2 and parts[1] in BOTTOM) or (
        parts[1] == "quant" and (len(parts) == 2 or parts[2] in CODEC))


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.count(".") == 1
                                          and m.split(".")[1] in BOTTOM))
def test_bottom_modules_import_only_bottom_modules(module: str) -> None:
    above = {t for t in direct_imports(module) if not _bottom_or_codec(t) or "quant" in t}
    assert above == set(), f"{module} imports {sorted(above)}"


def test_formats_and_the_codec_import_no_capability() -> None:
    """formats/ may use the quant codec (block types); the codec imports only bottom modules."""
    bad = []
    for module in MODULES:
        parts = module.split(".")
        in_formats = len(parts) > 1 and parts[1] == "formats"
        in_codec = len(parts) > 2 and parts[1] == "quant" and parts[2] in CODEC
        for target in direct_imports(module):
            inside = target.startswith("mlmf_lab.formats") if in_formats else False
            if (in_formats and not (inside or _bottom_or_codec(target))) or (
                    in_codec and not _bottom_or_codec(target)):
                bad.append(f"{module} -> {target}")
    assert bad == []


def test_the_graph_sees_function_level_imports_and_skips_type_checking(tmp_path) -> None:
    """The checker itself: a lazy import is an edge, a TYPE_CHECKING import is not."""
    code = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .cache import x\n"
            "def f():\n    from .formats import registry\n")
    tree = ast.parse(code)
    skip = _type_checking_nodes(tree)
    kept = [ast.unparse(n) for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and id(n) not in skip]
    assert kept == ["from typing import TYPE_CHECKING", "from .formats import registry"]


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_library_imports_no_jupyter_package() -> None:
    """Only plots/ and views/ may import Jupyter or matplotlib: the rest runs headless."""
    code = ("import importlib, sys, mlmf_lab as ml\n"
            f"for name in {CAPABILITIES!r}:\n"
            "    importlib.import_module('mlmf_lab.' + name)\n"
            "for name in ml._LAZY:\n"
            "    if name not in ('plots', 'views'):\n"
            "        getattr(ml, name)\n"
            f"print(sorted(m for m in {JUPYTER!r} if m in sys.modules))")
    assert _fresh(code).strip() == "[]"


def readme_names() -> list[str]:
    """Every ``ml.a.b`` chain in the README's Python code blocks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    chains = set()
    for block in blocks:
        chains.update(re.findall(r"\bml((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", block))
    return sorted(c.lstrip(".") for c in chains)


def test_every_public_name_in_the_readme_resolves_in_a_fresh_interpreter() -> None:
    chains = readme_names()
    assert "open_weights" in chains and "quant.quantize_model" in chains  # the parser works
    code = ("import mlmf_lab as ml\nmissing = []\n"
            f"for chain in {chains!r}:\n"
            "    obj = ml\n"
            "    try:\n"
            "        for part in chain.split('.'):\n"
            "            obj = getattr(obj, part)\n"
            "    except AttributeError:\n"
            "        missing.append(chain)\n"
            "print(missing)")
    assert _fresh(code).strip() == "[]"


def test_ml_convert_is_the_function_in_a_fresh_interpreter() -> None:
    code = ("import mlmf_lab as ml, mlmf_lab.distributed\n"
            "print(callable(ml.convert), ml.convert.__module__)")
    assert _fresh(code).split() == ["True", "mlmf_lab.convert"]


def test_ml_compare_is_the_function_in_a_fresh_interpreter() -> None:
    """``mlmf_lab/compare/`` is a package of the same name: the function wins."""
    code = ("import mlmf_lab as ml, mlmf_lab.compare.weights, mlmf_lab.checkpoint\n"
            "print(callable(ml.compare), ml.compare.__module__)")
    assert _fresh(code).split() == ["True", "mlmf_lab.compare.api"]
