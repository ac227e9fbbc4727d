"""`seqjax evaluate --task next_item` on a multi-task sequence run (seqjax.train.binary_loop with the next_item
head): full-catalogue ranking of each example's next item, the user's first event in the label window
[cutoff, cutoff + horizon) (DATA_DIR/task/<split>_next.parquet), from the history before the cutoff.

One row per (user, cutoff): user_item examples repeat a history once per candidate, and are ranked once.
Examples whose user has no event in the label window have no target and are left out (counted in the
card). Seen items are not filtered: repeats are common in e-commerce logs (the card reports their share),
the GRU4Rec / Transformers4Rec convention for session and shop data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
from flax import nnx

from seqjax import sharding
from seqjax.config import to_dict
from seqjax.data.schema import TASK_DIR
from seqjax.data.task_pipeline import TaskBatchSpec, task_eval_batches
from seqjax.evaluation.ranking import ranking_metrics, target_ranks
from seqjax.train import run_dir
from seqjax.train.binary_loop import model_graphdef
from seqjax.train.step import put_batch
from seqjax.train.task_config import load_task_config
from seqjax.train.task_data import attach, check_data, resolve_data, side_table
from seqjax.train.task_predict import restore_params


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


def make_last_state_ranker(graphdef: nnx.GraphDef, mesh):
    """jitted (params, batch, targets [B]) -> ranks [B]: the state at each row's last history event scores
    every item (the next_item head, as trained: position t predicts event t + 1)."""
    def rank(params, batch, targets):
        model = nnx.merge(graphdef, params)
        _, enc = model(batch)
        last = jnp.maximum(batch["lengths"] - 1, 0)
        user = jnp.take_along_axis(enc.states, last[:, None, None], axis=1)[:, 0]
        scores = jnp.einsum("bd,vd->bv", user, model.item_table(), preferred_element_type=jnp.float32)
        return target_ranks(scores, targets, batch["items"], False)

    rep, split = sharding.replicated(mesh), sharding.logical(mesh, "batch")
    return jax.jit(rank, in_shardings=(rep, split, split), out_shardings=split)


def evaluate_task_next_item(workdir: str | Path, split: str = "test", checkpoint: str = "best",
                            json_path: str | Path | None = None) -> dict[str, Any]:
    workdir = Path(workdir)
    cfg = load_task_config(workdir)
    data = resolve_data(cfg)
    if "next_item" not in data.heads:
        raise run_dir.RunDirError(f"--task next_item: {workdir} has no next_item head (heads {list(data.heads)}); "
                                  "train with sequence_task.heads including next_item")
    check_data(workdir, data)
    mesh = sharding.make_mesh(cfg.num_devices)
    _, params, chosen = restore_params(workdir, cfg, data, mesh, checkpoint)
    rank = make_last_state_ranker(model_graphdef(cfg, data), mesh)
    targets_all = next_event_targets(cfg.data_path, split)
    first = first_of_each_history(cfg.data_path, split)
    keep = first & (targets_all > 0)
    table = side_table(data, split, cfg.data_path)
    spec = TaskBatchSpec(cfg.eval_batch_size, cfg.max_len, cfg.seed, cfg.length_buckets())
    users = pq.read_table(Path(cfg.data_path) / TASK_DIR / f"{split}.parquet", columns=["user"]).column("user")
    users = users.to_numpy()
    rows: dict[str, list] = {"example": [], "user": [], "target": [], "rank": [], "repeat": []}
    for batch in task_eval_batches(cfg.data_path, split, spec):
        index = np.maximum(batch["example"], 0)
        use = (batch["example"] >= 0) & keep[index]
        if not use.any():
            continue
        targets = np.where(use, targets_all[index], 0).astype(np.int32)
        ranks = np.asarray(jax.device_get(rank(params, put_batch(attach(batch, table), mesh),
                                               put_batch({"t": targets}, mesh)["t"])))
        rows["example"].append(batch["example"][use])
        rows["user"].append(users[index[use]])
        rows["target"].append(targets[use])
        rows["rank"].append(ranks[use])
        rows["repeat"].append((batch["items"] == targets[:, None]).any(1)[use])
    out = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in rows.items()}
    if not len(out["rank"]):
        raise run_dir.RunDirError(f"--task next_item: no {split} example of {cfg.data_path} has an event in its label "
                                  "window, so there is nothing to rank")
    metrics = ranking_metrics(out["rank"], data.num_items)
    count = metrics.pop("count")
    metadata = run_dir.load_metadata(cfg.data_path)
    proto = metadata["task"]["protocol"]
    card = {
        "dataset": {"path": str(Path(cfg.data_path).resolve()), "format": metadata.get("format"),
                    "checksum": metadata["checksum"], "schema_version": metadata["schema_version"]},
        "task": {"head": "next_item", "horizon": proto.get("horizon"), "cutoffs": proto.get("cutoffs"),
                 "timezone": proto.get("timezone"),
                 "target": "the user's first event in the label window [cutoff, cutoff + horizon), from the "
                           "history strictly before the cutoff"},
        "split": split,
        "candidates": f"full catalogue ({data.num_items:,} items)",
        "filter_seen": {"applied": False, "repeat_share": float(np.mean(out["repeat"])),
                        "why": "repeats are common in shop logs; repeat_share: targets already in the kept history"},
        "examples": {"ranked": int(count), "histories": int(first.sum()),
                     "without_next_event": int((first & (targets_all == 0)).sum())},
        "model": {"kind": f"sequence/{cfg.encoder.kind}", "encoder": to_dict(cfg.encoder), "heads": list(data.heads),
                  "checkpoint": chosen},
        "seed": cfg.seed,
    }
    result = {"metrics": metrics, "protocol": card}
    out_path = Path(json_path) if json_path else workdir / "eval" / f"{split}_next_item_step{chosen['step']}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    per_example = out_path.with_suffix(".per_example.csv")
    np.savetxt(per_example, np.stack([out["example"], out["user"], out["target"], out["rank"]], 1), fmt="%d",
               delimiter=",", header="example,user,target,rank", comments="")
    result["files"] = {"per_example": str(per_example)}
    out_path.write_text(json.dumps(result, indent=1, default=str))
    _print(metrics, card)
    print(f"wrote {out_path} and {per_example}")
    return result


def _print(metrics: dict[str, float], card: dict[str, Any]) -> None:
    print(f"next_item on {card['split']}: {card['examples']['ranked']:,} histories ranked over "
          f"{card['candidates']}, seen items kept (repeat targets {card['filter_seen']['repeat_share']:.1%}), "
          f"checkpoint step {card['model']['checkpoint']['step']} ({card['model']['checkpoint']['chosen']})")
    print("  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
