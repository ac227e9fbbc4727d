"""Cloze masking of training batches for BERT4Rec (Sun et al., 2019), in plain numpy.

A BERT4Rec row is a user's last `max_len` training items themselves (not shifted by one as for
SASRec). Each valid position is masked independently with probability `mask_prob`: its input becomes
the mask token (num_items + 1) and its target the original item; unmasked positions have target 0
and weight 0, so the shared full-softmax loss scores exactly the masked positions.

Rules, in order, per row of length n > 0:
  1. Bernoulli(mask_prob) at each of the n positions;
  2. with probability `mask_last_prob` the last position is masked too (a fine-tuning trick that
     matches inference, where the mask token follows the last item; default off);
  3. a row still without a mask gets one at a uniformly drawn position, so every non-empty row
     trains. This raises a row's expected mask count from n*p to n*p + (1-p)^n.
Padding (and filler rows of a short final batch) is never masked.

Masks are a pure function of (seed, epoch, batch index): the generator is
`np.random.default_rng([seed, epoch, batch_index, MASK_STREAM])`, a stream independent of the
epoch's batch plan (`default_rng((seed, epoch))`), so a run resumed at (epoch, batch index) replays
the very masks an uninterrupted run would draw. Draws depend on the rows' lengths only, not on the
padded width, so changing the length buckets does not change the masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from seqjax.data.schema import PAD_ID

MASK_STREAM = 0x6D61736B  # "mask": separates this stream from the other (seed, epoch, ...) draws


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    mask_token: int  # id fed in place of a masked item: num_items + 1
    mask_prob: float = 0.2  # per-position masking probability (K&V RecSys'23; the paper's ML-1M value)
    mask_last_prob: float = 0.0  # probability of also masking each row's last item; 0 = off

    def validate(self) -> None:
        if self.mask_token <= PAD_ID:
            raise ValueError(f"mask_token={self.mask_token} must be num_items + 1 (> {PAD_ID})")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob={self.mask_prob} must be in (0, 1]")
        if not 0.0 <= self.mask_last_prob <= 1.0:
            raise ValueError(f"mask_last_prob={self.mask_last_prob} must be in [0, 1]")


def mask_rng(seed: int, epoch: int, batch_index: int) -> np.random.Generator:
    """The masking generator of one batch; `batch_index` counts from the start of the epoch's plan."""
    return np.random.default_rng([seed, epoch, batch_index, MASK_STREAM])


def cloze_rows(items: np.ndarray, max_len: int) -> np.ndarray:
    """A record's BERT4Rec training row: its last `max_len` items (SASRec rows take max_len + 1)."""
    return items[-max_len:]


def mask_batch(rows: Sequence[np.ndarray], spec: MaskSpec, rng: np.random.Generator, *, batch_size: int,
               width: int) -> dict[str, np.ndarray]:
    """Masks `rows` (each a cloze row, oldest item first) into one training batch.

    Returns the keys and shapes of `TrainBatches.make_batch`, right-padded with 0:
    items [B, T] int32 (masked inputs), targets [B, T] int32 (original item where masked, else 0),
    weights [B, T] float32 (1 where masked), lengths [B] int32; B = batch_size, T = width.
    Rows beyond len(rows) are empty filler with weight 0.
    """
    spec.validate()
    lengths = np.array([len(r) for r in rows], np.int32)
    if len(rows) > batch_size:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {batch_size}")
    if len(rows) and lengths.max() > width:
        raise ValueError(f"a row of length {lengths.max()} does not fit width {width}")
    n_rows = len(rows)
    # A fixed sequence of draws: per-position uniforms for all rows, then one uniform per row for
    # rule 2 and one for rule 3, whether or not they end up used.
    u = rng.random(int(lengths.sum()))
    u_last = rng.random(n_rows)
    u_pick = rng.random(n_rows)

    items = np.full((batch_size, width), PAD_ID, np.int32)
    masked = np.zeros((batch_size, width), bool)
    valid = np.arange(width)[None, :] < lengths[:, None]  # [n_rows, T]
    if n_rows:
        items[:n_rows][valid] = np.concatenate([np.asarray(r, np.int32) for r in rows])
        m = np.zeros((n_rows, width), bool)
        m[valid] = u < spec.mask_prob  # boolean assignment fills row-major, as concatenate laid rows out
        nonempty = lengths > 0
        rows_idx = np.flatnonzero(nonempty)
        last = rows_idx[u_last[rows_idx] < spec.mask_last_prob]
        m[last, lengths[last] - 1] = True
        empty = rows_idx[~m[rows_idx].any(axis=1)]
        m[empty, (u_pick[empty] * lengths[empty]).astype(np.int64)] = True
        masked[:n_rows] = m
    targets = np.where(masked, items, PAD_ID).astype(np.int32)
    inputs = np.where(masked, np.int32(spec.mask_token), items).astype(np.int32)
    full_lengths = np.zeros(batch_size, np.int32)
    full_lengths[:n_rows] = lengths
    return {"items": inputs, "targets": targets, "weights": masked.astype(np.float32), "lengths": full_lengths}
