"""A seeded mutator for bytes, JSON and pickles: the values an attacker or a bad disk picks.

Every function takes a ``random.Random`` and returns new bytes; the same seed gives the same
mutation, so a failing case is reproduced from its seed alone. The structure-aware parts
(``mutate_json``, ``mutate_pickle``) change one value of a parsed document and write it
back, so the result gets past the first parse and reaches the checks behind it; byte-level
mutation (``mutate_bytes``) covers what the structure does not say.
"""

from __future__ import annotations

import io
import json
import pickletools
import random
import struct
from typing import Any

# integers at the edges: signs, widths, sizes a file cannot hold, exact powers of two
EDGE_INTS = [0, 1, -1, 2, 3, 7, 8, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1,
             2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**31), -(2**63)]
# raw JSON texts that json.loads accepts (or nearly) and that break naive readers
RAW_JSON = ["NaN", "Infinity", "-Infinity", "1e308", "-1e308", "1e999", "-0.0", "0.5",
            "9" * 5000, "-" + "7" * 4400, "[" * 50_000 + "]" * 50_000,
            '{"a":' * 3000 + "1" + "}" * 3000, '"\\ud800"', '"\\u0000"', "true", "null"]
EDGE_STRINGS = ["", ".", "..", "/", "../x", "/etc/passwd", "a\0b", "x" * 300, "\\", "sub/",
                "ab", "model.safetensors", "{}", "[1, 2]", '{"b": {"x": 1}}', "-1", "1e999",
                "(", "a{99999999999}", "(a|aa)*b", "\udcff" * 3, "F32", "q8_0", "$tensor"]
MARK = "\x01MUTATED\x01"


def edge_value(rng: random.Random) -> tuple[Any, str | None]:
    """A replacement value: (Python value, None) or (marker, raw JSON text to put there)."""
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(EDGE_INTS), None
    if roll < 0.55:
        return rng.choice(EDGE_STRINGS), None
    if roll < 0.8:
        return MARK, rng.choice(RAW_JSON)
    return rng.choice([[], {}, None, True, False, [1, 2], {"x": 1}, [[0, 1]], {"$tensor": [1]},
                       {"$items": [[[1], 2]]}, {"$float": "x"}, -0.5, 1.5]), None


def _paths(doc: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every node of a parsed document, as a key path (the root is ``()``)."""
    out = [here]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(_paths(v, (*here, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(_paths(v, (*here, i)))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def mutate_doc(doc: Any, rng: random.Random) -> tuple[Any, str | None]:
    """One change to a parsed JSON document: (new document, raw text for ``MARK`` or None)."""
    paths = _paths(doc)
    # weight the leaves and the keys' values: that is where readers trust the file
    path = rng.choice(paths[1:] if len(paths) > 1 and rng.random() < 0.9 else paths)
    node = _get(doc, path)
    roll = rng.random()
    if isinstance(node, str) and node[:1] in "{[" and roll < 0.4:
        try:  # JSON inside a string (safetensors metadata: mlmf.tied, mlmf.quant, mlmf.json)
            inner, raw = mutate_doc(json.loads(node), rng)
            text = json.dumps(inner)
            return _set(doc, path, text.replace(json.dumps(MARK), raw) if raw else text), None
        except (ValueError, RecursionError):
            pass
    if roll < 0.15 and path:
        parent = _get(doc, path[:-1])
        if isinstance(parent, dict):
            del parent[path[-1]]
            return doc, None
        parent.pop(path[-1])
        return doc, None
    if roll < 0.25 and path and isinstance(_get(doc, path[:-1]), dict):
        parent = _get(doc, path[:-1])
        parent[rng.choice(EDGE_STRINGS)] = parent.pop(path[-1])  # the key changes
        return doc, None
    if roll < 0.35:  # another node's value here: types confused, names swapped
        other = _get(doc, rng.choice(paths))
        return _set(doc, path, json.loads(json.dumps(other))), None
    if isinstance(node, int) and not isinstance(node, bool) and roll < 0.7:
        return _set(doc, path, rng.choice([node + 1, node - 1, node * 2, -node, node // 2,
                                           *EDGE_INTS])), None
    value, raw = edge_value(rng)
    return _set(doc, path, value), raw


def dump(doc: Any, raw: str | None) -> str:
    text = json.dumps(doc)
    return text.replace(json.dumps(MARK), raw, 1) if raw is not None else text


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    """A JSON file with one to three values changed; unparsable input gets byte mutations."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return mutate_bytes(data, rng)
    raw = None
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if raw is not None:
            break  # a raw text is spliced in last
        doc, raw = mutate_doc(doc, rng)
    text = dump(doc, raw)
    if rng.random() < 0.05:  # a key twice: json keeps the last, other readers the first
        text = text.replace("{", '{"weight_map": 1, ', 1)
    return text.encode("utf-8", "surrogatepass")


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to four byte-level changes: flips, edge integers, cuts, growth, copies."""
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4])):
        roll = rng.random()
        at = rng.randrange(len(out)) if out else 0
        if roll < 0.3 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif roll < 0.55 and len(out) >= 8:
            at = min(at, len(out) - 8)
            width, fmt = rng.choice([(1, "<B"), (2, "<H"), (4, "<I"), (8, "<Q")])
            value = rng.choice(EDGE_INTS) % (1 << (8 * width))
            out[at : at + width] = struct.pack(fmt, value)
        elif roll < 0.7:
            del out[rng.randrange(len(out) + 1) if out else 0 :]  # truncated
        elif roll < 0.8:
            out += bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 64])))
        elif roll < 0.9 and len(out) > 16:
            a, b = sorted(rng.sample(range(len(out)), 2))
            del out[a:b]
        elif out:
            a = rng.randrange(len(out))
            chunk = out[a : a + rng.choice([1, 8, 32])]
            out[at:at] = chunk
    return bytes(out)


# pickle opcodes with a fixed-width integer argument: name -> (argument width, struct format)
_INT_ARGS = {"BININT1": (1, "<B"), "BININT2": (2, "<H"), "BININT": (4, "<i"),
             "BINUNICODE": (4, "<I"), "BINBYTES": (4, "<I"), "BINUNICODE8": (8, "<Q"),
             "BINBYTES8": (8, "<Q"), "SHORT_BINUNICODE": (1, "<B"), "BINPUT": (1, "<B"),
             "BINGET": (1, "<B"), "LONG_BINPUT": (4, "<I"), "LONG_BINGET": (4, "<I")}


def mutate_pickle(data: bytes, rng: random.Random) -> bytes:
    """Change the integer argument of one pickle opcode (a storage size, a shape, a string
    length, a memo index) to an edge value of the same width; else byte mutations."""
    spots: list[tuple[int, int, str]] = []
    stream = io.BytesIO(data)
    try:  # pickles back to back (torch's legacy format has five), up to the first non-pickle
        while stream.tell() < len(data):
            for op, _, pos in pickletools.genops(stream):
                if op.name in _INT_ARGS:
                    width, fmt = _INT_ARGS[op.name]
                    spots.append((pos + 1, width, fmt))
                elif op.name == "LONG1":
                    spots.append((pos + 2, data[pos + 1], ""))
    except Exception:  # noqa: BLE001 - the raw data after the pickles
        pass
    if not spots or rng.random() < 0.2:
        return mutate_bytes(data, rng)
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2])):
        at, width, fmt = rng.choice(spots)
        if fmt:
            value = rng.choice(EDGE_INTS) % (1 << (8 * width))
            if fmt[-1].islower() and value >= 1 << (8 * width - 1):
                value -= 1 << (8 * width)
            out[at : at + width] = struct.pack(fmt, value)
        elif width:
            value = rng.choice(EDGE_INTS)
            out[at : at + width] = value.to_bytes(width, "little", signed=True) if \
                -(1 << (8 * width - 1)) <= value < 1 << (8 * width - 1) else bytes([0xFF] * width)
    return bytes(out)
