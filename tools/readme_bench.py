"""Splice the stored benchmark results (benchmarks/results/*.md) into README.md.

    python tools/readme_bench.py

Replaces the text between the BENCHMARKS markers; run it after `make bench`.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["loading", "checkpoint", "lora", "quant", "gguf_open", "distributed", "cache",
         "multimodal", "compare"]


def main() -> None:
    results = ROOT / "benchmarks" / "results"
    files = sorted(results.glob("*.md"), key=lambda p: (ORDER + [p.stem]).index(p.stem))
    body = "\n".join(p.read_text().strip() + "\n" for p in files)
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = re.sub(
        r"(<!-- BENCHMARKS:BEGIN -->\n).*?(<!-- BENCHMARKS:END -->)",
        lambda m: m.group(1) + body + m.group(2),
        text,
        flags=re.S,
    )
    readme.write_text(new)
    print(f"README: {len(files)} benchmark tables")


if __name__ == "__main__":
    main()
