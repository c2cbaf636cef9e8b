"""The views' front-end ships inside the wheel, needs no network, and saves offline pages."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

import mlmf_lab as ml

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ("attention", "cache", "lineage", "compare")


def test_ml_views_is_a_lazy_name() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, mlmf_lab as ml\n"
                          "print('anywidget' in sys.modules, ml.views.AttentionView.__name__)"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.split() == ["False", "AttentionView"], out.stderr[-2000:]


def test_front_end_files_fetch_nothing() -> None:
    """No URL, no import of another file, no fetch: the module runs from its own text."""
    for name in VIEWS:
        for suffix in (".js", ".css"):
            text = (ROOT / "widgets" / f"{name}{suffix}").read_text(encoding="utf-8")
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), name + suffix
            assert not re.search(r"\bimport\s*[({'\"]|\bfetch\(|@import|url\(", text), name
    assert ml.views.widgets_dir() == ROOT / "widgets"


def test_the_wheel_holds_the_widgets(tmp_path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".scratch", ".git", "notebooks", "benchmarks", "tests", "*.egg-info", "build",
        "__pycache__", "docs"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("mlmf_lab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in VIEWS:
        for suffix in (".js", ".css"):
            shipped = f"mlmf_lab/widgets/{name}{suffix}"
            assert shipped in names
            assert zipfile.ZipFile(wheel).read(shipped) == \
                (ROOT / "widgets" / f"{name}{suffix}").read_bytes()  # as they are
    assert "mlmf_lab/views/attention.py" in names


def test_save_html_writes_one_offline_page_per_view(tmp_path) -> None:
    cache = ml.ModelCache("1MiB")
    cache.put("alpha", torch.zeros(8))
    views = {"attention": ml.views.AttentionView(torch.rand(2, 2, 4, 4).softmax(-1)),
             "cache": ml.views.CacheView(cache)}
    for name, view in views.items():
        page = view.save_html(tmp_path / f"{name}.html").read_text(encoding="utf-8")
        assert "default-src 'none'" in page and "<script type='module'>" in page
        assert (ROOT / "widgets" / f"{name}.css").read_text(encoding="utf-8") in page
        assert not re.search(r"(src|href)=['\"]?https?:", page)
    page = (tmp_path / "attention.html").read_text(encoding="utf-8")
    assert page.count('"map":{"__bytes__"') == 4  # every head, for offline switching
    views["cache"].close()
