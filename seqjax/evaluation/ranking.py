"""Full-catalogue ranking of one held-out item per user, and the metrics read from those ranks.

Protocol: every item 1..V is a candidate (no sampled negatives); column 0 of the scores is padding
and is never ranked. Ranks are 1-based and ties count against the target (pessimistic), so a model
that gives every item the same score ranks its target V-th, not first. A target that cannot be
ranked gets the sentinel rank V + 1 (`miss_rank`), which every metric treats as a miss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_KS = (1, 5, 10, 20)


def miss_rank(num_items: int) -> int:
    """The sentinel rank of a target that is not ranked (OOV, padding, or filtered out)."""
    return num_items + 1


@functools.partial(jax.jit, static_argnames="filter_seen")
def target_ranks(scores: jax.Array, targets: jax.Array, history: jax.Array,
                 filter_seen: bool) -> jax.Array:
    """1-based rank of each user's target among items 1..V; int32 [B], V + 1 for a miss.

    scores: float [B, V+1], column 0 (padding) ignored.
    targets: int [B], item ids in 1..V; anything else (-1 = out of vocabulary, 0) is a miss.
    history: int [B, L], item ids right-padded with 0; ids outside 1..V are ignored.
    filter_seen: exclude every history item from the candidates; a target that is itself in the
      history is then a miss (the model was told not to recommend it).

    rank = 1 + #{j in 1..V, j != target, j not excluded : score_j >= score_target}.
    A NaN target score is a miss; other NaN scores never outrank the target.
    Nothing larger than [B, V+1] is materialised.
    """
    batch, width = scores.shape
    num_items = width - 1
    rows = jnp.arange(batch)

    valid_target = (targets >= 1) & (targets <= num_items)
    safe_target = jnp.where(valid_target, targets, 0)
    target_score = scores[rows, safe_target]

    excluded = jnp.zeros((batch, width), bool).at[:, 0].set(True)
    if filter_seen:
        # A scatter, not a one-hot of the history: one-hot would be [B, L, V+1].
        seen = jnp.where((history >= 1) & (history <= num_items), history, 0)
        excluded = excluded.at[rows[:, None], seen].set(True)

    outranks = (scores >= target_score[:, None]) & ~excluded
    outranks = outranks.at[rows, safe_target].set(False)  # the target does not outrank itself
    ranks = 1 + jnp.sum(outranks, axis=1, dtype=jnp.int32)

    miss = ~valid_target | jnp.isnan(target_score)
    if filter_seen:
        miss |= excluded[rows, safe_target]
    return jnp.where(miss, miss_rank(num_items), ranks).astype(jnp.int32)


def per_user_metrics(ranks: np.ndarray, num_items: int, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Each user's HR@K, NDCG@K and MRR (float64 [B]); their means are `ranking_metrics`.

    ranks: int [B] from `target_ranks`; any rank above `num_items` is a miss.
    With one relevant item, NDCG@K = 1 / log2(rank + 1) when rank <= K, else 0 (the ideal DCG is 1).
    MRR is over the full list (no cut-off): 1 / rank, 0 for a miss.
    """
    ranks = np.asarray(ranks).reshape(-1).astype(np.int64)
    if (ranks < 1).any():
        raise ValueError(f"ranks are 1-based; got a minimum of {ranks.min()}")
    ranked = ranks <= num_items
    gain = np.where(ranked, 1.0 / np.log2(ranks + 1.0), 0.0)
    values: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranked & (ranks <= k)  # `ranked` matters when k > num_items: the sentinel is a miss
        values[f"HR@{k}"] = hit.astype(np.float64)
        values[f"NDCG@{k}"] = np.where(hit, gain, 0.0)
    values["MRR"] = np.where(ranked, 1.0 / ranks, 0.0)
    return values


def ranking_metrics(ranks: np.ndarray, num_items: int,
                    ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Mean HR@K, NDCG@K and MRR over users (see `per_user_metrics`), plus `count` (number of users, an int)."""
    ranks = np.asarray(ranks).reshape(-1)
    if ranks.size == 0:
        raise ValueError("ranking_metrics needs at least one rank")
    metrics = {name: float(v.mean()) for name, v in per_user_metrics(ranks, num_items, ks).items()}
    metrics["count"] = int(ranks.size)
    return metrics


def repeat_target_share(targets: np.ndarray, history: np.ndarray) -> float:
    """Share of users whose target already occurs in their history (0 when there are no users).

    targets: int [B]; ids < 1 (OOV, padding) never count as repeats.
    history: int [B, L] right-padded with 0.
    A high share means filter_seen=True discards many answerable targets: report it with the metrics.
    """
    targets = np.asarray(targets).reshape(-1)
    history = np.asarray(history)
    if history.ndim != 2 or history.shape[0] != len(targets):
        raise ValueError(f"history must be [B, L] with B = {len(targets)}; got {history.shape}")
    if len(targets) == 0:
        return 0.0
    repeats = (targets >= 1) & (history == targets[:, None]).any(axis=1)
    return float(repeats.mean())
