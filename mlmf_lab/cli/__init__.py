"""The ``mlmf-lab`` command. Each subcommand is one module exporting ``register(sub)``.

Adding a subcommand = a module here + one entry in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import MLMFError

# Modules under mlmf_lab.cli, each with register(subparsers) setting func=run(args) -> int.
COMMANDS = ["inspect", "convert", "compare", "cache", "lineage"]


def print_json(doc: Any) -> None:
    """Print a record's ``as_dict()`` (plain data: strict JSON, no NaN) for ``--json``."""
    print(json.dumps(doc, indent=2, allow_nan=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlmf-lab", description="Inspect, convert and trace machine-learning model files."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (1 with a one-line message on an ``MLMFError``).

    With ``MLMF_LINEAGE=store.db`` in the environment, the command's operations
    (convert, ...) are recorded into that lineage store, as ``with ml.Lineage(...)`` does.
    """
    args = build_parser().parse_args(argv)
    try:
        with contextlib.ExitStack() as stack:
            store = os.environ.get("MLMF_LINEAGE")
            if store and args.command != "lineage":
                from ..provenance import Lineage

                stack.enter_context(Lineage(store))
            return int(args.func(args) or 0)
    except MLMFError as e:
        print(f"mlmf-lab: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `mlmf-lab inspect x | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
