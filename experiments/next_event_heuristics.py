"""Count-based references for `seqjax evaluate --task next_item` on a prepared task directory: the same rows
(one per (user, cutoff) with an event in its label window), the same targets, full catalogue, seen items kept.

- popularity: items by how often they occur in the split's histories (events before the cutoffs only);
- recency: the user's own history items, most recent first, then the rest by popularity.

A learned next-item head should beat both; on shop logs with many new items per day, recency is the bar.

    python experiments/next_event_heuristics.py --data data/taobao_purchase [--split test] [--max-len 200]
"""

from __future__ import annotations

import argparse
import sys

import jax.numpy as jnp
import numpy as np

from seqjax.data.task_pipeline import TaskBatchSpec, task_eval_batches
from seqjax.evaluation.next_event import NextEventTargets
from seqjax.evaluation.ranking import ranking_metrics, target_ranks
from seqjax.train import run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="DATA_DIR prepared with `seqjax prepare --task`")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-len", type=int, default=200, help="history events kept, as sequence_task.max_len")
    args = ap.parse_args()
    num_items = run_dir.load_metadata(args.data)["num_items"]
    targets = NextEventTargets(args.data, args.split)
    spec = TaskBatchSpec(256, args.max_len)
    rows = []
    for batch in task_eval_batches(args.data, args.split, spec):
        use = (batch["example"] >= 0) & targets.keep[np.maximum(batch["example"], 0)]
        rows.append((batch["items"][use], batch["lengths"][use], targets.targets[batch["example"][use]]))
    items = np.concatenate([np.pad(r[0], ((0, 0), (0, args.max_len - r[0].shape[1]))) for r in rows])
    lengths = np.concatenate([r[1] for r in rows])
    target = np.concatenate([r[2] for r in rows]).astype(np.int32)
    popularity = np.bincount(items[items > 0], minlength=num_items + 1).astype(np.float64)
    pop_scores = popularity / (popularity.max() + 1.0)  # in [0, 1)
    rank = {}
    scores = np.broadcast_to(pop_scores, (len(target), num_items + 1))
    rank["popularity"] = np.asarray(target_ranks(jnp.asarray(scores), jnp.asarray(target), jnp.asarray(items), False))
    recency = scores.copy()
    t = np.arange(items.shape[1])[None, :]
    valid = t < lengths[:, None]
    r, c = np.nonzero(valid)  # row-major: later events overwrite earlier ones of the same item
    recency[r, items[r, c]] = 1.0 + c  # seen items above every unseen one, the latest highest
    rank["recency"] = np.asarray(target_ranks(jnp.asarray(recency), jnp.asarray(target), jnp.asarray(items), False))
    repeat = (items == target[:, None]).any(1)
    print(f"{args.data} {args.split}: {len(target):,} histories, {num_items:,} items, repeat targets {repeat.mean():.1%}")
    for name, ranks in rank.items():
        m = ranking_metrics(ranks, num_items)
        print(f"  {name:<10} HR@10 {m['HR@10']:.4f}  NDCG@10 {m['NDCG@10']:.4f}  MRR {m['MRR']:.4f}")
    print("command: python experiments/next_event_heuristics.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
