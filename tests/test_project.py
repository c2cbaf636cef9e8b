"""Project hygiene: environment.yml mirrors pyproject.toml; the public API is importable."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

import mlmf_lab as ml

ROOT = Path(__file__).resolve().parents[1]


def names(requirements: list[str]) -> set[str]:
    out = set()
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)", req)
        if m and not req.strip().startswith("-"):
            out.add(m.group(1).lower().replace("_", "-"))
    return out


def test_environment_yml_mirrors_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = names(project["dependencies"]) | names(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    have = (names(conda) | names(pip)) - {"python", "pip"}
    assert have == wanted, (
        f"only in pyproject: {wanted - have}; only in environment.yml: {have - wanted}"
    )


def test_torch_is_pinned_to_the_cpu_wheel() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()


def test_every_dependency_is_pinned_to_a_tested_version() -> None:
    """``constraints.txt`` holds the versions the suite passed with; a new dependency joins it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = names(project["dependencies"]) | names(project["optional-dependencies"]["dev"])
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = names([line for line in lines if "==" in line and not line.startswith("#")])
    assert wanted - pinned == set(), "add these to constraints.txt (pip freeze)"


def test_public_api() -> None:
    for name in ["open_weights", "load_state_dict", "save_state_dict", "load_into", "MLMFError"]:
        assert callable(getattr(ml, name))
    assert ml.errors.FormatError.__mro__[1] is ml.MLMFError


def test_every_lazy_name_imports() -> None:
    for name in ml._LAZY:
        assert getattr(ml, name) is not None, name


def test_stored_notebooks_stay_small_and_have_sources() -> None:
    """A notebook with its views and figures stays under 1 MB; each one is built from a source."""
    books = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(books) >= 10
    for book in books:
        assert book.stat().st_size < 2**20, f"{book.name} is {book.stat().st_size} bytes"
        assert (ROOT / "notebooks" / "src" / f"{book.stem}.py").is_file(), book.name


def test_no_test_skips_on_a_missing_import() -> None:
    """Every import a test needs is a dependency: a missing one must fail, not skip."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
                 if "importorskip(" in p.read_text(encoding="utf-8")
                 and p.name != "test_project.py"]
    assert offenders == []
