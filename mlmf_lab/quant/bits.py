"""Bit-field helpers shared by the GGUF block families: unpacking codes and packing them.

GGUF packs codes so that, within a run of bytes, all fields at one bit offset come first
(e.g. the low nibbles of 16 bytes are weights 0-15, their high nibbles weights 16-31).
``fields(packed, group, shifts, mask)`` unpacks runs of ``group`` bytes in exactly that
weight order, 8 bytes at a time (int64 lanes) wherever the run length allows; one masked
shift per field offset, written straight into place.
"""

from __future__ import annotations

import torch

LANES = 0x0101010101010101  # a byte mask repeated in every byte of an int64 lane

# _BITS16[b] = bit i of byte b, times 16, for i = 0..7 (Q5's fifth bit, already in place)
_BITS16 = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).to(torch.uint8) * 16


def f16_at(blocks: torch.Tensor, start: int, count: int = 1) -> torch.Tensor:
    """``count`` fp16 fields from byte ``start`` of every block, as float32 (n, count)."""
    return blocks[:, start : start + 2 * count].view(torch.float16).float()


def f16_bytes(x: torch.Tensor) -> torch.Tensor:
    """(n, 1) float32 -> (n, 2) bytes of the fp16 value (round to nearest even)."""
    return x.to(torch.float16).view(torch.uint8)


def fields(packed: torch.Tensor, group: int, shifts: tuple[int, ...], mask: int) -> torch.Tensor:
    """(n, k) bytes -> (n, k * len(shifts)) uint8 bit fields in GGUF weight order.

    For every run of ``group`` bytes: ``(byte >> shifts[0]) & mask`` of each byte of the
    run, then the same for ``shifts[1]``, and so on; then the next run.
    """
    n, k = packed.shape
    runs = k // group
    if group % 8 == 0:
        src = packed.contiguous()
        if src.storage_offset() % 8:  # a one-block slice can be contiguous but unaligned
            src = src.clone()
        lanes = src.view(n, runs, group).view(torch.int64)
        out = torch.empty(n, runs, len(shifts), group // 8, dtype=torch.int64)
        for i, shift in enumerate(shifts):
            torch.bitwise_right_shift(lanes, shift, out=out[:, :, i])
        return out.bitwise_and_(mask * LANES).view(torch.uint8).view(n, -1)
    src = packed.reshape(n, runs, group)
    out8 = torch.empty(n, runs, len(shifts), group, dtype=torch.uint8)
    for i, shift in enumerate(shifts):
        torch.bitwise_right_shift(src, shift, out=out8[:, :, i])
    return out8.bitwise_and_(mask).view(n, -1)


def high_bits16(packed: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 8k) uint8: bit ``i`` of byte ``b``, times 16, at index ``8b + i``."""
    n, k = packed.shape
    return _BITS16.index_select(0, packed.reshape(-1).long()).view(n, 8 * k)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Codes (n, 2k) in 0..15 -> (n, k) bytes: code ``j`` low nibble, ``j + k`` high nibble."""
    n, two_k = codes.shape
    halves = codes.view(n, 2, two_k // 2)
    return torch.bitwise_or(halves[:, 0] & 0x0F, torch.bitwise_left_shift(halves[:, 1], 4))
