"""Sequence packing: several users' next-item sequences share one row, so a batch holds almost no padding.

A batch of users (the same users an unpacked batch would hold) is packed first-fit-decreasing into rows of
`width` positions. Each row carries `segments` (1, 2, ... per sequence in the row, 0 on padding) and
`positions` (index within the sequence, for position embeddings); attention is causal within a segment
only, so every position sees exactly what it would see in its own row. The row count is rounded up to a
multiple of `row_multiple`, which bounds the number of compiled shapes and keeps rows divisible over a
data-parallel mesh.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqjax.data.schema import PAD_ID


def first_fit_decreasing(sizes: Sequence[int], width: int) -> list[list[int]]:
    """Indices of `sizes` grouped into bins of capacity `width`, longest first (ties by index: deterministic)."""
    if any(s > width or s < 1 for s in sizes):
        raise ValueError(f"every size must be in [1, {width}], got {sorted(set(sizes))[:3]}...")
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        slot = next((b for b, f in enumerate(free) if f >= sizes[i]), None)
        if slot is None:
            bins.append([i])
            free.append(width - sizes[i])
        else:
            bins[slot].append(i)
            free[slot] -= sizes[i]
    return bins


def packed_rows(seqs: Sequence[np.ndarray], width: int, row_multiple: int) -> dict[str, np.ndarray]:
    """Next-item sequences (each a user's items, inputs = seq[:-1], targets = seq[1:], at most width
    inputs) -> items, targets, weights, positions, segments [R, width]; lengths [R] (filled positions)."""
    sizes = [len(s) - 1 for s in seqs]
    rows = first_fit_decreasing(sizes, width)
    r = -(-max(len(rows), 1) // row_multiple) * row_multiple
    items = np.full((r, width), PAD_ID, np.int32)
    targets = np.full((r, width), PAD_ID, np.int32)
    positions = np.zeros((r, width), np.int32)
    segments = np.zeros((r, width), np.int32)
    lengths = np.zeros(r, np.int32)
    for row, members in enumerate(rows):
        start = 0
        for seg, i in enumerate(members, start=1):
            n, s = sizes[i], seqs[i]
            items[row, start:start + n] = s[:-1]
            targets[row, start:start + n] = s[1:]
            positions[row, start:start + n] = np.arange(n)
            segments[row, start:start + n] = seg
            start += n
        lengths[row] = start
    weights = (targets != PAD_ID).astype(np.float32)
    return {"items": items, "targets": targets, "weights": weights, "lengths": lengths,
            "positions": positions, "segments": segments}
