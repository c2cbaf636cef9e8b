"""The one table helper: records hand over plain rows, this renders them.

Every public record has ``as_dict()`` (JSON data, built with ``plain``) and ``rows()``
(a list of row dicts of raw values). A record that shows as a table builds a ``Table``
from its rows and a few ``Column``s; ``Table.html()`` is its ``_repr_html_``,
``Table.text()`` what ``print`` and the CLI show, ``Table.markdown()`` what a model card
holds. Cells are formatted here and only here (``cell``), so the three agree.

>>> t = Table([Column("name"), Column("nbytes", "bytes", fmt="bytes")],
...           [{"name": "w", "nbytes": 1536}], title="one tensor")
>>> print(t.text())
one tensor
name    bytes
w     1.5 KiB
"""

from __future__ import annotations

import dataclasses
import enum
import html
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .units import human_bytes

Formatter = str | Callable[[Any], str]


def plain(value: Any) -> Any:
    """``value`` as JSON data: only str, int, float, bool, None, lists and str-keyed dicts.

    Paths become strings; tuples and sets lists; records their ``as_dict()`` (dataclasses
    and NamedTuples without one, their fields); enums their value; numpy scalars and arrays
    Python numbers and lists; NaN and infinities None (JSON has neither).

    Raises:
        TypeError: a torch tensor (records never put tensor data in JSON), or any
            other object with no plain form (a record that forgot to leave a field out).

    Example:
        >>> plain({"shape": (2, 3), "loss": float("nan")})
        {'shape': [2, 3], 'loss': None}
    """
    if isinstance(value, enum.Enum):  # before str and int: StrEnum and IntEnum are both
        return plain(value.value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "as_dict") and not isinstance(value, type):
        return value.as_dict()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple record
        return fields_dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return fields_dict(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [plain(v) for v in items]
    kind = type(value)
    if kind.__module__ == "numpy" or kind.__module__.startswith("numpy."):
        return plain(value.tolist())  # numpy scalars and arrays
    raise TypeError(f"{kind.__module__}.{kind.__qualname__} has no plain JSON form")


def fields_row(record: Any, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """A dataclass's or NamedTuple's fields as they are (a table row: NaN stays NaN),
    leaving out ``exclude`` and private fields (``_name``)."""
    if isinstance(record, tuple) and hasattr(record, "_fields"):
        names: Sequence[str] = record._fields
    else:
        names = [f.name for f in dataclasses.fields(record)]
    return {k: getattr(record, k) for k in names if k not in exclude and not k.startswith("_")}


def fields_dict(record: Any, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """``fields_row`` as plain JSON data (``plain``)."""
    return {k: plain(v) for k, v in fields_row(record, exclude).items()}


def cell(value: Any, fmt: Formatter = "") -> str:
    """One value as table text.

    ``fmt`` is a format spec (``".3f"``, ``","``, ``".1%"``), ``"bytes"`` (``1.5 KiB``),
    ``"shape"`` (``64×256``, ``scalar``), ``"time"`` (Unix seconds as local
    ``2025-01-31 14:05``) or a function of the value. None and NaN show as
    nothing; without ``fmt`` floats get 4 significant digits, booleans yes/no, lists and
    dicts are joined with commas.

    Example:
        >>> cell(1536, "bytes"), cell((64, 256), "shape"), cell(0.123456), cell(None)
        ('1.5 KiB', '64×256', '0.1235', '')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if callable(fmt):
        return fmt(value)
    if fmt == "bytes":
        return human_bytes(value)
    if fmt == "shape":
        return "×".join(str(d) for d in value) or "scalar"
    if fmt == "time":
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(value))
    if fmt:
        return format(value, fmt)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value)
    return str(value)


class Column(NamedTuple):
    """One column: the row key it shows, its heading, how its cells are formatted.

    Attributes:
        key: the key in each row dict.
        title: the heading (default ``key``; all headings empty = no heading row).
        fmt: see ``cell``.
        code: names and paths: ``<code>`` in HTML, backticks in Markdown.
    """

    key: str
    title: str | None = None
    fmt: Formatter = ""
    code: bool = False

    @property
    def heading(self) -> str:
        return self.key if self.title is None else self.title


def _numeric(values: Sequence[Any], fmt: Formatter) -> bool:
    """Numbers are right-aligned: a column whose values are all numbers (or byte counts)."""
    shown = [v for v in values if v is not None]
    return fmt == "bytes" or (bool(shown) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in shown))


@dataclass(frozen=True)
class Table:
    """Rows of a record with their columns, a title above and notes below.

    Attributes:
        columns: what to show, in order (a plain string is ``Column(key)``).
        rows: row dicts (``record.rows()``); a missing key is an empty cell.
        title: one line above the table.
        notes: lines below it.
        max_rows: show at most this many rows, then how many more there are.
        noun: what a row is, for that line (``"… 12 more tensors"``).
    """

    columns: Sequence[Column | str]
    rows: Sequence[Mapping[str, Any]]
    title: str = ""
    notes: Sequence[str] = ()
    max_rows: int | None = None
    noun: str = "rows"

    @property
    def cols(self) -> list[Column]:
        return [c if isinstance(c, Column) else Column(c) for c in self.columns]

    def cells(self) -> list[list[str]]:
        """The shown rows as text, column by column."""
        return [[cell(r.get(c.key), c.fmt) for c in self.cols] for r in self._shown()]

    def _shown(self) -> Sequence[Mapping[str, Any]]:
        return self.rows if self.max_rows is None else self.rows[: self.max_rows]

    def _more(self) -> str:
        more = len(self.rows) - len(self._shown())
        return f"… {more} more {self.noun}" if more > 0 else ""

    def _right(self) -> list[bool]:
        return [_numeric([r.get(c.key) for r in self._shown()], c.fmt) for c in self.cols]

    def _headed(self) -> bool:
        return any(c.heading for c in self.cols)

    def html(self) -> str:
        """An escaped HTML table (``_repr_html_``)."""
        esc = html.escape
        cols, right = self.cols, self._right()

        def td(text: str, col: Column, num: bool, tag: str = "td") -> str:
            body = f"<code>{esc(text)}</code>" if col.code and text and tag == "td" else esc(text)
            return f"<{tag}>{body}</{tag}>" if num else \
                f"<{tag} style='text-align:left'>{body}</{tag}>"

        head = ""
        if self._headed():
            head = "<thead><tr>" + "".join(
                td(c.heading, c, n, "th") for c, n in zip(cols, right, strict=True)
            ) + "</tr></thead>"
        body = "".join(
            "<tr>" + "".join(td(t, c, n) for t, c, n in zip(row, cols, right, strict=True))
            + "</tr>" for row in self.cells())
        if self._more():
            body += f"<tr><td colspan={len(cols)}>{esc(self._more())}</td></tr>"
        title = f"<b>{esc(self.title)}</b>" if self.title else ""
        notes = "".join(f"<br><small>{esc(n)}</small>" for n in self.notes if n)
        return f"<div>{title}<table>{head}<tbody>{body}</tbody></table>{notes}</div>"

    def text(self) -> str:
        """A plain-text table: columns padded to their widest cell, two spaces apart."""
        cols, right = self.cols, self._right()
        grid = ([[c.heading for c in cols]] if self._headed() else []) + self.cells()
        widths = [max((len(row[i]) for row in grid), default=0) for i in range(len(cols))]
        lines = [self.title] if self.title else []
        lines += ["  ".join(t.rjust(w) if n else t.ljust(w)
                            for t, w, n in zip(row, widths, right, strict=True)).rstrip()
                  for row in grid]
        lines += [x for x in (self._more(), *self.notes) if x]
        return "\n".join(lines)

    def markdown(self) -> str:
        """A Markdown (GitHub) table, with the title above and the notes below."""
        cols = self.cols

        def md(text: str, col: Column) -> str:
            text = text.replace("|", "\\|")
            return f"`{text}`" if col.code and text else text

        lines = [f"**{self.title}**", ""] if self.title else []
        lines += ["| " + " | ".join(c.heading for c in cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(md(t, c) for t, c in zip(row, cols, strict=True)) + " |"
                  for row in self.cells()]
        tail = [x for x in (self._more(), *self.notes) if x]
        return "\n".join(lines + (["", *tail] if tail else []))

    def __str__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return self.html()


__all__ = ["Column", "Formatter", "Table", "cell", "fields_dict", "fields_row", "plain"]
