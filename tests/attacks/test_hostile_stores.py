"""Lineage stores that mutation found getting past the store (issue 20): a link to itself,
a FIFO, a blob among entity ids. Each is now an ``MLMFError`` naming the store.

The builders are in ``attacks/hostile.py``; ``test_fuzz.py`` keeps looking for more (the
store's own marking and schema checks are tested in ``test_lineage_hostile.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from attacks import hostile as h
from mlmf_lab.errors import MLMFError

CASES = [
    ("link-to-itself", h.lineage_store(h.self_link), "cannot open the lineage store (Symlink "
     "loop"),
    ("fifo", h.lineage_store(h.fifo_store), "expected the lineage store to be a regular file, "
     "found a FIFO"),
    ("blob-entity-id", h.lineage_store(h.blob_entity), "names entity b'\\x00\\xff', which is "
     "not stored; the store was changed outside mlmf_lab"),
    ("unknown-role", h.lineage_store(h.unknown_role), "it names an activity or a role that is "
     "not stored; the store was changed outside mlmf_lab"),
]


@pytest.mark.parametrize("case,build,text", CASES, ids=[c[0] for c in CASES])
def test_hostile_store(tmp_path: Path, case: str, build: Callable[[Path], Path],
                       text: str) -> None:
    db = build(tmp_path)
    with pytest.raises(MLMFError) as info:
        h.query_lineage(db)
    assert text in str(info.value)
    assert str(db) in str(info.value)
