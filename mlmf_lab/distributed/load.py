"""Load each rank's part of a weight file, directly or via rank 0, and gather it back."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from .. import events
from ..errors import ConfigError, FormatError
from ..formats import TensorInfo, WeightFile, open_weights
from ..formats.base import dtype_name
from ..progress import Progress, bar
from ..tables import Column, Table, fields_dict, plain
from ..units import human_bytes
from .plans import Piece, ShardPlan, local_shape
from .read import RangeReader, read_piece
from .runtime import checked, require_group, talking, world

MODES = ("direct", "mmap", "broadcast")
PROGRESS_BYTES = 256 * 2**20  # with progress=True, a bar only for shards at least this big


@dataclass(frozen=True)
class Shard(Mapping[str, torch.Tensor]):
    """One rank's tensors (whole, or the slices the plan gives it) and what loading cost.

    Attributes:
        rank, world_size: who holds it.
        plan: the plan it follows.
        tensors: name -> tensor (slices have the shape ``local_shape``).
        bytes_read: bytes this rank read from the file itself (counted per read call).
        bytes_received: bytes received from rank 0 (``broadcast`` mode).
        seconds: wall time of the load.
        mode: ``direct``, ``mmap`` or ``broadcast``.
    """

    rank: int
    world_size: int
    plan: ShardPlan
    tensors: dict[str, torch.Tensor] = field(repr=False)
    bytes_read: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    mode: str = "direct"

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def piece(self, name: str) -> Piece:
        p = self.plan.piece(name, self.rank)
        if p is None:
            raise ConfigError(f"rank {self.rank} holds no part of {name!r}", self.plan.source)
        return p

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def __repr__(self) -> str:
        return (f"<Shard rank {self.rank}/{self.world_size} {self.plan.strategy}: {len(self)} "
                f"tensors, {human_bytes(self.nbytes)}, read {human_bytes(self.bytes_read)}>")

    def as_dict(self) -> dict[str, Any]:
        """What was loaded and what it cost, as JSON data (tensor rows, never their data)."""
        return {**fields_dict(self, exclude=("plan", "tensors")), "strategy": self.plan.strategy,
                "source": self.plan.source, "nbytes": self.nbytes,
                "tensors": [plain(r) for r in self.rows()]}

    def rows(self) -> list[dict[str, Any]]:
        """One row per tensor held: name, shape, dtype, bytes, role in the plan."""
        return [{"name": n, "shape": tuple(t.shape), "dtype": dtype_name(t.dtype),
                 "nbytes": t.nbytes, "role": self.piece(n).role}
                for n, t in self.tensors.items()]

    def table(self, max_rows: int | None = None) -> Table:
        return Table(
            [Column("name", code=True), Column("shape", fmt="shape"), Column("dtype"),
             Column("nbytes", "bytes", "bytes"), Column("role")],
            self.rows(), title=f"Shard rank {self.rank} of {self.world_size} · "
            f"{self.plan.strategy} · {len(self)} tensors · {human_bytes(self.nbytes)} held · "
            f"{human_bytes(self.bytes_read)} read · {human_bytes(self.bytes_received)} received",
            max_rows=max_rows, noun="tensors")

    def _repr_html_(self) -> str:
        return self.table(max_rows=40).html()


def piece_nbytes(info: TensorInfo, piece: Piece) -> int:
    """Bytes of the loaded piece (the dtype ``tensor()`` returns, after any dequantization)."""
    return math.prod(local_shape(info, piece)) * info.torch_dtype.itemsize


def check_against_plan(wf: WeightFile, plan: ShardPlan, pieces: Sequence[Piece]) -> None:
    """Raise ``FormatError`` if the file's header disagrees with the plan for these pieces."""
    for p in pieces:
        want, got = plan.info(p.name), wf.info(p.name)
        if (want.shape, want.dtype, want.nbytes) != (got.shape, got.dtype, got.nbytes):
            raise FormatError(
                f"tensor {p.name!r}: the plan expects shape {list(want.shape)} {want.dtype} "
                f"({want.nbytes} bytes), this file has {list(got.shape)} {got.dtype} "
                f"({got.nbytes} bytes); recompute the plan from this file", wf.path)


def _read_all(wf: WeightFile, reader: RangeReader, pieces: Sequence[Piece], progress: Progress,
              into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Read ``pieces`` into fresh tensors, or into the views ``into`` (a packed buffer)."""
    out: dict[str, torch.Tensor] = {}
    with bar(total=sum(p.nbytes for p in pieces), progress=progress, min_total=PROGRESS_BYTES,
             unit="B", unit_scale=True, desc=f"rank {pieces[0].rank if pieces else 0}") as shown:
        for p in pieces:
            out[p.name] = read_piece(reader, wf, p, None if into is None else into[p.name])
            shown.update(p.nbytes)
    return out


def pack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Copy the bytes of ``tensors`` one after another into one flat uint8 buffer."""
    flat = [t.contiguous().reshape(-1).view(torch.uint8) for t in tensors]  # 0-dim ones too
    buf = torch.empty(sum(f.numel() for f in flat), dtype=torch.uint8)
    at = 0
    for f in flat:
        buf[at:at + f.numel()].copy_(f)
        at += f.numel()
    return buf


def packed_size(plan: ShardPlan, pieces: Sequence[Piece]) -> int:
    return sum(piece_nbytes(plan.info(p.name), p) for p in pieces)


def unpack(buf: torch.Tensor, plan: ShardPlan, pieces: Sequence[Piece]) -> dict[str, torch.Tensor]:
    """Views into ``buf`` shaped as ``pieces`` (the inverse of ``pack``)."""
    out, at = {}, 0
    for p in pieces:
        info = plan.info(p.name)
        n = piece_nbytes(info, p)
        out[p.name] = buf[at:at + n].view(info.torch_dtype).reshape(local_shape(info, p))
        at += n
    return out


def _same_everywhere(plan: ShardPlan) -> bool:
    first = [(p.name, p.dim, p.spans) for p in plan.for_rank(0)]
    return all([(p.name, p.dim, p.spans) for p in plan.for_rank(r)] == first
               for r in range(1, plan.world_size))


def load_shard(
    path: str | os.PathLike[str],
    plan: ShardPlan,
    rank: int | None = None,
    world_size: int | None = None,
    mode: str = "direct",
    progress: Progress = True,
) -> Shard:
    """Load this rank's part of ``path`` as ``plan`` says, reading only those bytes.

    In a process group every rank learns whether every other rank succeeded: a missing or
    corrupt file, or a rank that dies, raises ``DistributedError`` on all ranks, naming the
    failing rank and the file, within the process group's timeout.

    Args:
        path: the weight file (may differ per rank, e.g. a node-local copy).
        plan: from ``ml.distributed.plan(...)``, the same on every rank.
        rank, world_size: default to the process group (or torchrun's environment).
        mode: ``direct``: each rank reads its bytes into its own memory (``os.preadv``);
            ``mmap``: pieces become copy-free views of a private memory map (read when
            first touched, shared between ranks through the page cache; writes stay in this
            process). A slice along dim 0 is contiguous; a slice along a later dim (a
            row-parallel ``[out, in]`` weight's columns) is a strided, non-contiguous view,
            as ``full.narrow(1, a, b - a)`` would be: ``copy_``, ``load_state_dict`` and
            ``F.linear`` take it as is, ``.contiguous()`` copies it. Only pieces of several
            spans (fused projections such as GPT-2's ``c_attn``) and quantized tensors are
            read as in ``direct``. ``broadcast``: rank 0 reads and sends each rank its part
            (needs a process group).
        progress: a progress bar for shards of at least 256 MiB, or a function told
            ``(bytes read, bytes)``.

    Returns:
        The ``Shard``: a mapping name -> tensor, plus ``bytes_read`` and timings.

    Raises:
        ConfigError: bad rank, world size or mode.
        DistributedError: in a process group, when any rank failed.
        MLMFError: without a process group, the file's own error.

    Example:
        >>> plan = ml.distributed.plan("model.safetensors", "tensor")  # doctest: +SKIP
        >>> shard = ml.distributed.load_shard("model.safetensors", plan)  # doctest: +SKIP
    """
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; supported: {', '.join(MODES)}", path)
    r, n = world(rank, world_size)
    if n != plan.world_size:
        raise ConfigError(f"the plan is for {plan.world_size} ranks, this run has {n}", path)
    pieces = plan.for_rank(r)
    start = time.perf_counter()
    with events.activity("load", used=[os.fspath(path)],
                         params={"strategy": plan.strategy, "rank": r, "world_size": n,
                                 "mode": mode}):
        if mode != "broadcast" or n == 1:
            mapped = mode == "mmap"
            tensors, nread = checked("reading", path,
                                     lambda: _direct(path, plan, pieces, progress, mapped))
            received = 0
        else:
            require_group(n, "broadcast mode")
            tensors, nread, received = _broadcast(path, plan, r, progress)
    return Shard(r, n, plan, tensors, nread, received, time.perf_counter() - start, mode)


def _direct(path: str | os.PathLike[str], plan: ShardPlan, pieces: Sequence[Piece],
            progress: Progress, mapped: bool = False) -> tuple[dict[str, torch.Tensor], int]:
    with RangeReader(mapped) as reader:
        if os.path.isfile(path) and len({i.file for i in plan.tensors}) == 1:
            # the header, through the reader's advised descriptor: see RangeReader.prime
            reader.prime(os.fspath(path), min((i.offset for i in plan.tensors), default=0))
        with open_weights(path) as wf:
            check_against_plan(wf, plan, pieces)
            return _read_all(wf, reader, pieces, progress), reader.bytes_read


def _broadcast(path: str | os.PathLike[str], plan: ShardPlan, rank: int,
               progress: Progress) -> tuple[dict[str, torch.Tensor], int, int]:
    def validate() -> None:
        if rank == 0:
            with open_weights(path) as wf:
                check_against_plan(wf, plan, plan.pieces)

    checked("opening", path, validate)  # every rank learns if rank 0 cannot read the file

    same = _same_everywhere(plan)

    def transfer() -> tuple[dict[str, torch.Tensor], int, int]:
        mine = plan.for_rank(rank)
        if rank != 0:
            buf = torch.empty(packed_size(plan, mine), dtype=torch.uint8)
            if same:
                talking(dist.broadcast, buf, src=0)
            else:
                talking(dist.recv, buf, src=0)
            return unpack(buf, plan, mine), 0, buf.numel()
        with open_weights(path) as wf, RangeReader() as reader:
            for dst in range(1, 2 if same else plan.world_size):
                # read each rank's pieces straight into its send buffer: no extra copy
                theirs = plan.for_rank(dst)
                buf = torch.empty(packed_size(plan, theirs), dtype=torch.uint8)
                _read_all(wf, reader, theirs, progress, into=unpack(buf, plan, theirs))
                if same:  # every rank holds the same: one broadcast, and it is ours too
                    talking(dist.broadcast, buf, src=0)
                    return unpack(buf, plan, mine), reader.bytes_read, 0
                talking(dist.send, buf, dst=dst)
                del buf
            return _read_all(wf, reader, mine, progress), reader.bytes_read, 0

    return checked("sending" if rank == 0 else "receiving", path, transfer, collective=True)


def gather_state_dict(shard: Shard, dst: int = 0) -> dict[str, torch.Tensor] | None:
    """Rebuild the full state dict on rank ``dst`` from every rank's shard.

    Each tensor element travels once (replicas are not sent); ranks send one packed buffer
    each. Collective: every rank must call it.

    Returns:
        On ``dst``: name -> full tensor in file order, equal to a single-process load.
        On the other ranks: None.

    Raises:
        DistributedError: when a rank fails or dies during the exchange.
    """
    plan = shard.plan
    if shard.world_size > 1:
        require_group(shard.world_size, "gather_state_dict")
    primary = {r: [p for p in plan.for_rank(r) if p.primary] for r in range(plan.world_size)}

    def step() -> dict[str, torch.Tensor] | None:
        if shard.rank != dst:
            talking(dist.send, pack([shard.tensors[p.name] for p in primary[shard.rank]]),
                    dst=dst)
            return None
        full = {i.name: torch.empty(i.shape, dtype=i.torch_dtype) for i in plan.tensors}
        for r in range(plan.world_size):
            if r == dst:
                parts = {p.name: shard.tensors[p.name] for p in primary[r]}
            else:
                buf = torch.empty(packed_size(plan, primary[r]), dtype=torch.uint8)
                talking(dist.recv, buf, src=r)
                parts = unpack(buf, plan, primary[r])
            for p in primary[r]:
                place(full[p.name], p, parts[p.name])
        return full

    with events.activity("load", used=[plan.source], params={"gather": True, "dst": dst}):
        return checked("gathering", plan.source, step, collective=True)


def place(full: torch.Tensor, piece: Piece, part: torch.Tensor) -> None:
    """Copy ``part`` (the piece's local tensor) into its place in ``full``."""
    if piece.dim is None:
        full.copy_(part)
        return
    at = 0
    for a, b in piece.spans:
        full.narrow(piece.dim, a, b - a).copy_(part.narrow(piece.dim, at, b - a))
        at += b - a
