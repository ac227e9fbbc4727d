"""Ranking each task example's next event (the next_item head of a sequence-task run), shared by validation
during training (seqjax.train.binary_loop) and `seqjax evaluate --task next_item`.

The target of an example is its user's first event in the label window [cutoff, cutoff + horizon)
(DATA_DIR/task/<split>_next.parquet); one row per (user, cutoff) is ranked, since user_item examples repeat
a history once per candidate. Seen items are not filtered (repeats are common in shop logs).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
from flax import nnx

from seqjax import sharding
from seqjax.data.schema import TASK_DIR
from seqjax.data.task_pipeline import TaskBatchSpec, task_eval_batches
from seqjax.evaluation.ranking import target_ranks
from seqjax.models.repeat_head import mixture_scores
from seqjax.train import run_dir
from seqjax.train.step import put_batch
from seqjax.train.task_data import SideTable, attach


def next_event_targets(data_path: str | Path, split: str) -> np.ndarray:
    """int64 [E]: next_item of every example of `split` (0 = no event in the label window)."""
    path = Path(data_path) / TASK_DIR / f"{split}_next.parquet"
    if not path.is_file():
        raise run_dir.RunDirError(f"{path} not found: this data was prepared before seqjax wrote next-item targets "
                                  "for task examples; run `seqjax prepare --task ...` again")
    return pq.read_table(path, columns=["next_item"]).column("next_item").to_numpy()


def first_of_each_history(data_path: str | Path, split: str) -> np.ndarray:
    """bool [E]: True on the first example of each (user, cutoff), in file order."""
    keys = pq.read_table(Path(data_path) / TASK_DIR / f"{split}.parquet", columns=["user", "cutoff"])
    user, cutoff = keys.column("user").to_numpy(), keys.column("cutoff").to_numpy()
    first = np.zeros(len(user), bool)
    if len(user):
        _, at = np.unique(np.stack([user, cutoff], 1), axis=0, return_index=True)
        first[at] = True
    return first


class NextEventTargets:
    """The `split` examples to rank: `targets` [E] (0 = none), `first` [E] (first row of its history) and
    `keep` = first with a target."""

    def __init__(self, data_path: str | Path, split: str):
        self.targets = next_event_targets(data_path, split)
        self.first = first_of_each_history(data_path, split)
        self.keep = self.first & (self.targets > 0)


def make_last_state_ranker(graphdef: nnx.GraphDef, mesh):
    """jitted (params, batch, targets [B]) -> ranks [B]: the state at each row's last history event scores
    every item (the next_item head, as trained: position t predicts event t + 1; with a repeat head, the
    log-probability of its repeat-explore mixture)."""
    def rank(params, batch, targets):
        model = nnx.merge(graphdef, params)
        _, enc = model(batch)
        last = jnp.maximum(batch["lengths"] - 1, 0)
        user = jnp.take_along_axis(enc.states, last[:, None, None], axis=1)[:, 0]
        scores = jnp.einsum("bd,vd->bv", user, model.item_table(), preferred_element_type=jnp.float32)
        if model.repeat is not None:  # the repeat-explore mixture at the last event
            gate, log_a, visible = model.repeat_parts(batch, enc)
            at_last = lambda x: jnp.take_along_axis(x, last.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]
            scores = mixture_scores(at_last(gate), at_last(log_a), at_last(visible), batch["items"], scores)
        return target_ranks(scores, targets, batch["items"], False)

    rep, split = sharding.replicated(mesh), sharding.logical(mesh, "batch")
    return jax.jit(rank, in_shardings=(rep, split, split), out_shardings=split)


def rank_next_events(rank, params, data_path: str, split: str, spec: TaskBatchSpec, table: SideTable,
                     targets: NextEventTargets, mesh) -> dict[str, np.ndarray]:
    """{"example", "target", "rank", "repeat"} [N] over the examples `targets.keep` marks, in file order;
    `repeat`: the target is already in the kept history."""
    rows: dict[str, list] = {"example": [], "target": [], "rank": [], "repeat": []}
    for batch in task_eval_batches(data_path, split, spec):
        index = np.maximum(batch["example"], 0)
        use = (batch["example"] >= 0) & targets.keep[index]
        if not use.any():
            continue
        t = np.where(use, targets.targets[index], 0).astype(np.int32)
        ranks = np.asarray(jax.device_get(rank(params, put_batch(attach(batch, table), mesh),
                                               put_batch({"t": t}, mesh)["t"])))
        rows["example"].append(batch["example"][use])
        rows["target"].append(t[use])
        rows["rank"].append(ranks[use])
        rows["repeat"].append((batch["items"] == t[:, None]).any(1)[use])
    return {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in rows.items()}
