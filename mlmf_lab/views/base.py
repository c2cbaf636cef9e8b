"""What every view shares: its front-end files, a static fallback, and ``save_html``.

A view is an ``anywidget.AnyWidget`` whose ES module and CSS are ``widgets/<name>.js`` and
``widgets/<name>.css``: the top-level ``widgets/`` folder of a source checkout (editable
install), or ``mlmf_lab/widgets/`` inside the wheel (``setup.py`` copies it there as it is).
The page never fetches anything: anywidget hands the module's text to the browser.

Its output carries, beside the widget, a PNG from ``mlmf_lab.plots`` (the same data as a
static figure), so an exported notebook, GitHub or nbviewer still shows the view with no
kernel; ``text/plain`` is the view's deterministic ``repr``.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any, ClassVar

import anywidget

from ..atomic import replacing
from ..errors import MLMFError
from .standalone import standalone_html

VIEWS = ("attention", "cache", "lineage", "compare")


def widgets_dir() -> Path:
    """The folder holding the views' ES modules and CSS (wheel first, then the checkout).

    Raises:
        MLMFError: neither place has them (a broken install).
    """
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "widgets", package.parent / "widgets"):
        if all((folder / f"{v}.js").is_file() for v in VIEWS):
            return folder
    raise MLMFError(f"the views' front-end files ({', '.join(v + '.js' for v in VIEWS)}) are "
                    f"in neither {package / 'widgets'} nor {package.parent / 'widgets'}; "
                    "reinstall mlmf_lab")


def front_end(name: str) -> tuple[str, str]:
    """(ES module, CSS) text of view ``name``."""
    folder = widgets_dir()
    return ((folder / f"{name}.js").read_text(encoding="utf-8"),
            (folder / f"{name}.css").read_text(encoding="utf-8"))


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (fixed dpi and metadata, so reruns give the same file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return buf.getvalue()


class View(anywidget.AnyWidget):
    """Base of the views: subclasses set ``view_name`` and implement ``_fallback_figure``."""

    view_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # only where a view is defined: traitlets' add_traits subclasses it again at run time
        if "view_name" in cls.__dict__:
            cls._esm, cls._css = front_end(cls.view_name)
        super().__init_subclass__(**kwargs)

    def _fallback_figure(self) -> Any:
        """The static matplotlib figure of what the view shows."""
        raise NotImplementedError

    def fallback_png(self) -> bytes:
        """The static fallback as PNG bytes."""
        return figure_png(self._fallback_figure())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle: Any = super()._repr_mimebundle_(**kwargs)
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        data = dict(data or {})
        data["text/plain"] = repr(self)
        data["image/png"] = base64.b64encode(self.fallback_png()).decode("ascii")
        return data, meta

    def synced_state(self) -> dict[str, Any]:
        """The synced traitlets (``_esm``/``_css`` and widget bookkeeping left out)."""
        skip = {"_esm", "_css", "_anywidget_id", "layout", "tabbable", "tooltip",
                "_dom_classes", "comm", "keys", "log"}
        names = [n for n in self.trait_names(sync=True) if n not in skip
                 and not n.startswith(("_model_", "_view_"))]
        return {n: getattr(self, n) for n in names}

    def _standalone_extra(self) -> dict[str, Any]:
        """Data the saved page needs beyond the synced state (e.g. every head's map)."""
        return {}

    def save_html(self, path: str | os.PathLike[str], title: str | None = None) -> Path:
        """Write the view as one self-contained HTML file that needs no kernel or network.

        The page runs the same ES module against the saved state; clicks that need Python
        work where the saved data covers them (see each view).

        Returns:
            The path written.
        """
        esm, css = front_end(self.view_name)
        page = standalone_html(esm, css, self.synced_state(), self._standalone_extra(),
                               title or repr(self))
        out = Path(path)
        with replacing(out) as tmp:
            tmp.write_text(page, encoding="utf-8")
        return out


__all__ = ["VIEWS", "View", "figure_png", "front_end", "widgets_dir"]
