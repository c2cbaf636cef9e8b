"""PEFT's ``rank_pattern``/``alpha_pattern`` keys: regular expressions read from a file.

PEFT matches each key as ``(.*\\.)?(key)$`` against a module path (``math.pattern_value``).
Python's ``re`` backtracks, so a key from a hostile ``adapter_config.json`` can hold the
loader for hours (``(a|aa)*b``: exponential; ``.*.*.*.*.*x``: a high-degree polynomial),
and ``re.compile`` itself fails on ``a{99999999999}``. The keys PEFT writes are escaped
module paths or short expressions (``layers\\.\\d+\\.self_attn\\.q_proj``, ``.*\\.v_proj``), so a
key is accepted when it is short and simple enough to match in bounded time:

- at most ``MAX_LENGTH`` characters, and it compiles;
- every repeat (``*``, ``+``, ``?``, ``{m,n}``) applies to one character (a literal, a class,
  ``.``) or a group of such, with bounds up to ``MAX_BOUND``; no repeat inside a repeat;
- at most ``MAX_REPEATS`` repeats that can match more than once, and at most
  ``MAX_WAYS`` ways through its alternations (``a|b`` in sequence multiply);
- no backreferences, lookarounds or conditionals.

With PEFT's wrapper that is at most three unbounded repeats over a module path: a
few milliseconds on a 200-character path at worst (the tests time the worst kinds).
"""

from __future__ import annotations

import re
import re._constants as sre  # the parser's opcodes; Python has no public regex AST
import re._parser as sre_parse
from typing import Any

MAX_LENGTH = 256
MAX_BOUND = 255  # {m,n} bounds; "*" and "+" are unbounded and allowed
MAX_REPEATS = 2
MAX_WAYS = 64

_CHAR = {sre.LITERAL, sre.NOT_LITERAL, sre.IN, sre.ANY}
_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}


def pattern_problem(pattern: Any) -> str | None:
    """Why ``pattern`` may not be used as a PEFT rank/alpha pattern, or None when it may.

    Example:
        >>> pattern_problem(r"layers\\.\\d+\\.q_proj") is None
        True
        >>> pattern_problem("(a|aa)*b")
        'a repeat applies to a group holding an alternation or a repeat'
    """
    if not isinstance(pattern, str):
        return f"a pattern must be text, found {type(pattern).__name__}"
    if len(pattern) > MAX_LENGTH:
        return f"{len(pattern)} characters; at most {MAX_LENGTH}"
    try:
        re.compile(pattern)
        tree = sre_parse.parse(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as e:
        return f"not a regular expression ({e})"
    counts = {"repeats": 0, "ways": 1}
    problem = _walk(list(tree), counts)
    if problem is None and counts["repeats"] > MAX_REPEATS:
        problem = f"{counts['repeats']} repeats; at most {MAX_REPEATS}"
    if problem is None and counts["ways"] > MAX_WAYS:
        problem = f"{counts['ways']} ways through its alternations; at most {MAX_WAYS}"
    return problem


def _walk(items: list[tuple[Any, Any]], counts: dict[str, int]) -> str | None:
    for op, av in items:
        if op in _CHAR or op == sre.AT:
            continue
        if op == sre.SUBPATTERN:
            problem = _walk(list(av[3]), counts)
        elif op == sre.BRANCH:
            counts["ways"] *= len(av[1])
            problem = next((p for b in av[1] if (p := _walk(list(b), counts))), None)
        elif op in _REPEATS:
            low, high, body = av
            if low > MAX_BOUND or (high != sre.MAXREPEAT and high > MAX_BOUND):
                return f"a repeat bound above {MAX_BOUND}"
            if not _single_chars(list(body)):
                return "a repeat applies to a group holding an alternation or a repeat"
            counts["repeats"] += high > 1
            problem = None
        else:
            return f"{str(op).lower()} is not allowed (only literals, classes, groups, " \
                   "alternations and simple repeats)"
        if problem is not None:
            return problem
    return None


def _single_chars(items: list[tuple[Any, Any]]) -> bool:
    """Whether a repeat's body is characters only (possibly grouped): no branch, no repeat."""
    return all(op in _CHAR or (op == sre.SUBPATTERN and _single_chars(list(av[3])))
               for op, av in items)
