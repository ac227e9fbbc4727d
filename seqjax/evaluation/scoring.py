"""Full-catalogue scoring of evaluation users: every item is ranked for every user, in batches."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from scipy import stats

from seqjax import sharding
from seqjax.data.pipeline import eval_batches
from seqjax.evaluation.ranking import target_ranks


def make_rank_fn(graphdef: nnx.GraphDef, mesh: Mesh, filter_seen: bool, use_timestamps: bool = False) -> Callable:
    """jitted (params, items, lengths, history, targets, timestamps) -> (ranks [B], target scores [B])."""
    def rank(params, items, lengths, history, targets, timestamps):
        model = nnx.merge(graphdef, params)
        extra = {"timestamps": timestamps} if use_timestamps else {}
        user = model.last_hidden(items, lengths, **extra)  # [B, D]
        scores = jnp.einsum("bd,vd->bv", user, model.item_table(), preferred_element_type=jnp.float32)
        ranks = target_ranks(scores, targets, history, filter_seen)
        target_scores = jnp.take_along_axis(scores, jnp.maximum(targets, 0)[:, None], axis=1)[:, 0]
        return ranks, target_scores

    batch = sharding.logical(mesh, "batch")
    return jax.jit(rank, in_shardings=(sharding.replicated(mesh), batch, batch, batch, batch, batch),
                   out_shardings=(batch, batch))


def rank_split(rank_batch: Callable[[dict], tuple], data_dir: str | os.PathLike, split: str, batch_size: int,
               max_len: int, buckets: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """Ranks every record of `split` with `rank_batch(batch) -> (ranks [B], target scores [B])`;
    returns per-user arrays in record order: users, targets, ranks, scores, history_has_target."""
    out: dict[str, list] = {"index": [], "users": [], "targets": [], "ranks": [], "scores": [],
                            "history_has_target": []}
    for b in eval_batches(data_dir, split, batch_size, max_len, buckets):
        ranks, scores = rank_batch(b)
        keep = b["valid"]
        out["index"].append(b["index"][keep])
        out["users"].append(b["users"][keep])
        out["targets"].append(b["targets"][keep])
        out["ranks"].append(np.asarray(ranks)[keep])
        out["scores"].append(np.asarray(scores)[keep])
        out["history_has_target"].append(((b["history"] == b["targets"][:, None]).any(1))[keep])
    order = np.argsort(np.concatenate(out.pop("index")))  # batches go by input length
    return {k: np.concatenate(v)[order] for k, v in out.items()}


def neural_ranker(rank_fn: Callable, params) -> Callable[[dict], tuple]:
    return lambda b: rank_fn(params, b["items"], b["lengths"], b["history"], b["targets"], b["timestamps"])


def count_model_ranker(model, filter_seen: bool) -> Callable[[dict], tuple]:
    """Count-based baselines score from the whole history (not only the last max_len items)."""
    rank = jax.jit(target_ranks, static_argnums=3)

    def rank_batch(b):
        scores = model.score(b["history"])  # float64
        target_scores = np.take_along_axis(scores, np.maximum(b["targets"], 0)[:, None], axis=1)[:, 0]
        # Ranked by each row's order (dense ranks, exact in float32): casting the float64 scores would merge
        # scores that differ only by the popularity back-off, and ties count against the target.
        order = stats.rankdata(scores, method="dense", axis=1, nan_policy="omit").astype(np.float32)  # NaN stays NaN
        return rank(order, b["targets"], b["history"], filter_seen), target_scores
    return rank_batch
