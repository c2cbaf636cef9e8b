"""``mlmf-lab lineage PATH [--store DB] [--json]``: how a file was made, as recorded."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..errors import MLMFError
from . import print_json

DEFAULT_NAME = "lineage.db"
ENV_VAR = "MLMF_LINEAGE"


def find_store(target: str | os.PathLike[str], store: str | None = None) -> Path:
    """``--store``, else ``$MLMF_LINEAGE``, else ``lineage.db`` in the cwd or beside the file.

    Raises:
        MLMFError: no store found (the message says how to name one).
    """
    if store:
        return Path(store)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    here = Path(target).resolve()
    for folder in (Path.cwd(), *here.parents):
        if (folder / DEFAULT_NAME).is_file():
            return folder / DEFAULT_NAME
    raise MLMFError(f"no lineage store found (no {DEFAULT_NAME} in the current folder or "
                    f"beside the file); pass --store PATH or set {ENV_VAR}", target)


def register(sub: Any) -> None:
    p = sub.add_parser("lineage", help="print how a weight file was made (lineage store)")
    p.add_argument("path", help="weight file or folder recorded in the store")
    p.add_argument("--store", default=None,
                   help=f"lineage store (default: ${ENV_VAR}, or {DEFAULT_NAME} nearby)")
    p.add_argument("--descendants", action="store_true",
                   help="also list what was made from the file")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..provenance.lineage import Lineage

    db = find_store(args.path, args.store)
    if not db.is_file():
        raise MLMFError("no such lineage store", db)
    lin = Lineage(db)
    try:
        hist = lin.history(args.path)
        after = lin.descendants(args.path) if args.descendants else []
    finally:
        lin.close()
    if args.json:
        print_json({**hist.as_dict(), "descendants": [e.as_dict() for e in after]})
        return 0
    print(hist)
    if args.descendants:
        print("Made from it: " + (", ".join(e.short() for e in after) or "nothing recorded"))
    return 0
