"""`seqjax evaluate --task next_item` on a multi-task sequence run (seqjax.train.binary_loop with the next_item
head): full-catalogue ranking of each example's next item, the user's first event in the label window
[cutoff, cutoff + horizon) (DATA_DIR/task/<split>_next.parquet), from the history before the cutoff.

One row per (user, cutoff) (seqjax.evaluation.next_event). Examples whose user has no event in the label
window have no target and are left out (counted in the card). Seen items are not filtered: repeats are
common in e-commerce logs (the card reports their share), the GRU4Rec / Transformers4Rec convention.
`--checkpoint best` is the step with the best validation next_item/NDCG@10 (runs trained before that was
tracked: the best by the run's binary metric, and the card says so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from seqjax import sharding
from seqjax.config import to_dict
from seqjax.data.schema import TASK_DIR
from seqjax.data.task_pipeline import TaskBatchSpec
from seqjax.evaluation.next_event import NextEventTargets, make_last_state_ranker, rank_next_events
from seqjax.evaluation.ranking import ranking_metrics
from seqjax.train import run_dir
from seqjax.train.binary_loop import model_graphdef
from seqjax.train.task_config import load_task_config
from seqjax.train.task_data import check_data, resolve_data, side_table
from seqjax.train.task_predict import restore_params


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
    _, params, chosen = restore_params(workdir, cfg, data, mesh, checkpoint, head="next_item")
    rank = make_last_state_ranker(model_graphdef(cfg, data), mesh)
    targets = NextEventTargets(cfg.data_path, split)
    table = side_table(data, split, cfg.data_path)
    spec = TaskBatchSpec(cfg.eval_batch_size, cfg.max_len, cfg.seed, cfg.length_buckets())
    out = rank_next_events(rank, params, cfg.data_path, split, spec, table, targets, mesh)
    users = pq.read_table(Path(cfg.data_path) / TASK_DIR / f"{split}.parquet", columns=["user"]).column("user")
    out["user"] = users.to_numpy()[out["example"]]
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
        "examples": {"ranked": int(count), "histories": int(targets.first.sum()),
                     "without_next_event": int((targets.first & (targets.targets == 0)).sum())},
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
