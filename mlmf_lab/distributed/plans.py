"""Sharding plans: which rank holds which bytes of a weight file, from its header alone.

A ``ShardPlan`` is plain data: one ``Piece`` per (tensor, rank) holding either the
whole tensor or spans of it along one dimension. Strategies are functions registered
in ``STRATEGIES``; each sees only ``TensorInfo`` records (names, shapes, dtypes, byte
sizes) and the file's metadata, never tensor data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import ConfigError
from ..formats import TensorInfo, open_weights
from ..formats.base import no_such_tensor
from ..tables import Column, Table, fields_dict, fields_row
from ..units import human_bytes

Span = tuple[int, int]


class Piece(NamedTuple):
    """The part of one tensor that one rank holds.

    Attributes:
        name: tensor name in the file.
        rank: the rank holding it.
        dim: the dimension it is cut along, or None for the whole tensor.
        spans: ``[start, stop)`` ranges along ``dim``, concatenated in this order
            (several spans for fused projections such as GPT-2's ``c_attn``).
        nbytes: bytes of the file this piece covers.
        role: ``whole`` | ``replicate`` | ``column`` | ``row`` | ``vocab`` | ``shared``.
        primary: True for the copy ``gather_state_dict`` takes (replicas are not sent).
    """

    name: str
    rank: int
    dim: int | None
    spans: tuple[Span, ...]
    nbytes: int
    role: str
    primary: bool

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


def local_shape(info: TensorInfo, piece: Piece) -> tuple[int, ...]:
    """Shape of ``piece`` once loaded: the full shape with ``dim`` shortened to its spans."""
    if piece.dim is None:
        return info.shape
    shape = list(info.shape)
    shape[piece.dim] = sum(b - a for a, b in piece.spans)
    return tuple(shape)


def split_bounds(n: int, k: int) -> list[Span]:
    """``k`` contiguous ranges covering ``range(n)``, sizes differing by at most one."""
    return [(i * n // k, (i + 1) * n // k) for i in range(k)]


def whole(info: TensorInfo, rank: int, role: str = "whole", primary: bool = True) -> Piece:
    return Piece(info.name, rank, None, (), info.nbytes, role, primary)


def replicated(info: TensorInfo, world_size: int, role: str = "replicate") -> list[Piece]:
    """One full copy per rank; rank 0's is the primary."""
    return [whole(info, r, role, primary=r == 0) for r in range(world_size)]


@dataclass(frozen=True)
class ShardPlan:
    """Who holds what: computed from a file's header, shared by every rank.

    Attributes:
        source: the file the plan was computed from.
        strategy: the strategy's name (a key of ``STRATEGIES``).
        world_size: number of ranks.
        tensors: the header records of every tensor, in file order.
        pieces: every (tensor, rank) assignment.
        labels: one short description of each rank's part, e.g. ``"layers.0-3"``.
        detail: how the strategy decided (rule table, modality assignment ...).
    """

    source: str
    strategy: str
    world_size: int
    tensors: tuple[TensorInfo, ...]
    pieces: tuple[Piece, ...]
    labels: tuple[str, ...] = ()
    detail: str = ""
    _by_name: dict[str, TensorInfo] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ConfigError(f"world_size must be >= 1, got {self.world_size}", self.source)
        self._by_name.update({i.name: i for i in self.tensors})
        covered: dict[str, int] = {}
        for p in self.pieces:
            if not 0 <= p.rank < self.world_size or p.name not in self._by_name:
                raise ConfigError(f"piece {p.name!r} for rank {p.rank} does not fit the plan")
            if p.primary:
                info = self._by_name[p.name]
                size = info.shape[p.dim] if p.dim is not None else 1
                got = sum(b - a for a, b in p.spans) if p.dim is not None else 1
                covered[p.name] = covered.get(p.name, 0) + got * (info.numel // max(size, 1))
        for i in self.tensors:
            if covered.get(i.name, 0) != i.numel and i.numel:
                raise ConfigError(
                    f"the plan's primary pieces of {i.name!r} cover {covered.get(i.name, 0)} "
                    f"of {i.numel} elements; expected each element exactly once",
                    self.source,
                )

    # -- queries ------------------------------------------------------------------------
    def info(self, name: str) -> TensorInfo:
        """The header record of tensor ``name``; an ``MLMFError`` naming the closest names."""
        try:
            return self._by_name[name]
        except KeyError:
            raise no_such_tensor(name, list(self._by_name), "the plan", self.source) from None

    def for_rank(self, rank: int) -> list[Piece]:
        """The pieces ``rank`` loads, in file order."""
        if not 0 <= rank < self.world_size:
            raise ConfigError(f"rank {rank} is outside 0..{self.world_size - 1}", self.source)
        return [p for p in self.pieces if p.rank == rank]

    def piece(self, name: str, rank: int) -> Piece | None:
        return next((p for p in self.pieces if p.name == name and p.rank == rank), None)

    def bytes_per_rank(self) -> list[int]:
        out = [0] * self.world_size
        for p in self.pieces:
            out[p.rank] += p.nbytes
        return out

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.tensors)

    @property
    def imbalance(self) -> float:
        """Largest rank's bytes over the ideal ``total / world_size`` (1.0 = perfect)."""
        ideal = self.total_bytes / self.world_size
        return max(self.bytes_per_rank()) / ideal if ideal else 1.0

    def roles(self, rank: int) -> dict[str, int]:
        """Bytes per role held by ``rank``."""
        out: dict[str, int] = {}
        for p in self.for_rank(rank):
            out[p.role] = out.get(p.role, 0) + p.nbytes
        return out

    # -- display ------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One plain-data row per rank (what the table and the figure show)."""
        total = self.total_bytes or 1
        per = self.bytes_per_rank()
        return [
            {
                "rank": r,
                "tensors": sum(1 for p in self.pieces if p.rank == r),
                "bytes": per[r],
                "share": per[r] / total,
                "holds": self.labels[r] if r < len(self.labels) else "",
            }
            for r in range(self.world_size)
        ]

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON data: totals, every tensor's header record and every piece."""
        return {**fields_dict(self, exclude=("tensors", "pieces")),
                "total_bytes": self.total_bytes, "imbalance": self.imbalance,
                "bytes_per_rank": self.bytes_per_rank(),
                "tensors": [i.as_dict() for i in self.tensors],
                "pieces": [p.as_dict() for p in self.pieces]}

    def table(self) -> Table:
        """One line per rank: tensors, bytes, share of the file, what it holds."""
        return Table(
            [Column("rank"), Column("tensors"), Column("bytes", fmt="bytes"),
             Column("share", fmt=".1%"), Column("holds")],
            self.rows(), title=f"ShardPlan {self.strategy!r} x{self.world_size} of "
            f"{os.path.basename(self.source)} ({len(self.tensors)} tensors, "
            f"{human_bytes(self.total_bytes)}, imbalance {self.imbalance:.3f})",
            notes=[self.detail])

    def __str__(self) -> str:
        return self.table().text()

    def _repr_html_(self) -> str:
        return self.table().html()


# -- grouping tensors into layers ---------------------------------------------------------
_LAYER = re.compile(
    r"^(?P<prefix>(?:.*\.)?(?:layers|layer|h|blocks|block|resblocks))\.(?P<i>\d+)\.")
_ANY_INDEX = re.compile(r"^(?P<prefix>.*?)\.(?P<i>\d+)\.")
_PRE = re.compile(r"embed|wte|wpe|tok_|word_|position|token_type|patch|cls_token|pos_")


class Group(NamedTuple):
    """Tensors that move together in a pipeline split (one layer, or the embeddings)."""

    key: tuple[int, str, int]  # (stage 0 pre / 1 layers / 2 post, prefix, index)
    names: list[str]
    nbytes: int

    @property
    def label(self) -> str:
        stage, prefix, i = self.key
        return f"{prefix}.{i}" if stage == 1 else prefix


def layer_groups(infos: Sequence[TensorInfo]) -> list[Group]:
    """Tensors grouped by layer (``...layers.3.`` ...), embeddings first, heads last."""
    found: dict[tuple[int, str, int], list[TensorInfo]] = {}
    for info in infos:
        m = _LAYER.match(info.name) or _ANY_INDEX.match(info.name)
        if m:
            key = (1, m["prefix"], int(m["i"]))
        else:
            module = info.name.rsplit(".", 1)[0] if "." in info.name else info.name
            key = (0 if _PRE.search(info.name) else 2, module, 0)
        found.setdefault(key, []).append(info)
    return [
        Group(k, [i.name for i in v], sum(i.nbytes for i in v)) for k, v in sorted(found.items())
    ]


def balanced_partition(sizes: Sequence[int], k: int) -> list[Span]:
    """Split ``sizes`` into ``k`` contiguous runs minimising the largest run's sum.

    Binary search on the limit with a greedy check, then a second pass that aims each run
    at an even share of what is left without passing that limit (so the other runs are
    even too). Each run is non-empty when there are at least ``k`` items.
    Returns ``[start, stop)`` index ranges.
    """
    n = len(sizes)

    def cut(limit: int, aim: bool) -> list[Span] | None:
        runs: list[Span] = []
        start, acc, left = 0, 0, sum(sizes)
        for i, s in enumerate(sizes):
            runs_left = k - len(runs)
            target = left / runs_left if runs_left else left
            full = acc + s > limit or (aim and acc > 0 and acc + s / 2 > target)
            if i > start and runs_left > 1 and (full or n - i <= runs_left - 1):
                runs.append((start, i))
                left -= acc
                start, acc = i, 0
            acc += s
            if acc > limit:
                return None
        runs.append((start, n))
        return runs if len(runs) <= k else None

    lo, hi = max(sizes, default=0), max(sum(sizes), 1)
    while lo < hi:
        mid = (lo + hi) // 2
        if cut(mid, aim=False) is None:
            lo = mid + 1
        else:
            hi = mid
    runs = cut(lo, aim=True) or cut(lo, aim=False) or [(0, n)]
    return runs + [(n, n)] * (k - len(runs))


def describe_groups(groups: Sequence[Group]) -> str:
    """A short label: runs of layers as ``model.layers.0-3``, other modules by common prefix.

    ``[model.embed_tokens, model.layers.0, model.layers.1]`` -> ``model.embed_tokens,
    model.layers.0-1``; ``[embeddings, embeddings.LayerNorm]`` -> ``embeddings.*``.
    """
    parts: list[str] = []
    i = 0
    while i < len(groups):
        stage, prefix, first = groups[i].key
        j = i
        while j + 1 < len(groups) and groups[j + 1].key[0] == stage and (
            stage != 1 or (groups[j + 1].key[1] == prefix
                           and groups[j + 1].key[2] == groups[j].key[2] + 1)):
            j += 1
        if stage == 1:
            parts.append(f"{prefix}.{first}-{groups[j].key[2]}" if j > i else groups[i].label)
        else:
            names = [g.key[1] for g in groups[i:j + 1]]
            common = os.path.commonprefix([n.split(".") for n in names])
            parts.append(".".join(common) + ".*" if len(names) > 1 and common
                         else ", ".join(names))
        i = j + 1
    text = ", ".join(parts)
    return text if len(text) <= 80 else text[:77] + "..."


def split_layers(
    infos: Sequence[TensorInfo], ranks: Sequence[int]
) -> tuple[list[Piece], dict[int, str]]:
    """Contiguous blocks of layers over ``ranks``, balanced by bytes."""
    groups = layer_groups(infos)
    by_name = {i.name: i for i in infos}
    pieces: list[Piece] = []
    labels: dict[int, str] = {}
    for rank, (a, b) in zip(ranks, balanced_partition([g.nbytes for g in groups], len(ranks)),
                            strict=True):
        labels[rank] = describe_groups(groups[a:b]) or "(nothing)"
        for g in groups[a:b]:
            pieces.extend(whole(by_name[n], rank) for n in g.names)
    return pieces, labels


# -- strategies --------------------------------------------------------------------------
class Layout(NamedTuple):
    """What a strategy returns: the pieces, one label per rank, and how it decided."""

    pieces: list[Piece]
    labels: list[str]
    detail: str = ""


Strategy = Callable[..., Layout]
STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, fn: Strategy) -> None:
    STRATEGIES[name] = fn


def _replicate(infos: Sequence[TensorInfo], world_size: int, metadata: dict[str, Any]) -> Layout:
    pieces = [p for i in infos for p in replicated(i, world_size)]
    return Layout(pieces, ["every tensor"] * world_size, "every rank holds a full copy")


def _layers(infos: Sequence[TensorInfo], world_size: int, metadata: dict[str, Any]) -> Layout:
    pieces, labels = split_layers(infos, range(world_size))
    return Layout(pieces, [labels[r] for r in range(world_size)],
                  "contiguous blocks of layers, balanced by bytes (pipeline parallel)")


register_strategy("replicate", _replicate)
register_strategy("layers", _layers)


def plan(
    path: str | os.PathLike[str],
    strategy: str = "layers",
    world_size: int | None = None,
    **options: Any,
) -> ShardPlan:
    """Compute a sharding plan from a weight file's header (no tensor data is read).

    Args:
        path: any file ``ml.open_weights`` reads (safetensors, HF sharded folder, GGUF).
        strategy: ``replicate`` | ``layers`` | ``tensor`` | ``modality`` (see ``STRATEGIES``).
        world_size: number of ranks; defaults to the running process group's size.
        **options: strategy options: ``rules=``/``arch=`` for ``tensor``,
            ``assign=`` for ``modality``.

    Returns:
        The ``ShardPlan``; print it for a table, ``ml.plots.plot_shard_plan`` for a figure.

    Raises:
        ConfigError: unknown strategy, bad world size or options the strategy rejects.
        MLMFError: the file cannot be read.

    Example:
        >>> p = ml.distributed.plan("model.safetensors", "layers", world_size=4)  # doctest: +SKIP
        >>> print(p)  # doctest: +SKIP
    """
    from .runtime import world

    fn = STRATEGIES.get(strategy)
    if fn is None:
        raise ConfigError(
            f"unknown strategy {strategy!r}; supported: {', '.join(STRATEGIES)}", path)
    n = world_size if world_size is not None else world()[1]
    if n < 1:
        raise ConfigError(f"world_size must be >= 1, got {n}", path)
    with open_weights(path) as wf:
        infos = wf.infos()
        metadata = dict(wf.metadata)
        source = os.fspath(wf.path)
    try:
        layout = fn(infos, n, metadata, **options)
    except TypeError as e:
        raise ConfigError(f"strategy {strategy!r} rejected its options ({e})", path) from None
    except ConfigError as e:
        raise ConfigError(e.message, e.path or source) from None
    return ShardPlan(source, strategy, n, tuple(infos), tuple(layout.pieces),
                     tuple(layout.labels), layout.detail)
