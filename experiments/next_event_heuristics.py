"""Count-based references for `seqjax evaluate --task next_item` on a prepared task directory: the same rows
(one per (user, cutoff) with an event in its label window), the same targets, full catalogue, seen items kept.

- popularity: items by how often they occur in the split's histories (events before the cutoffs only);
- recency: the user's own history items, most recent first, then the rest by popularity.

A learned next-item head should beat both; on shop logs with many new items per day, recency is the bar.
`--against EVAL.json` (from `seqjax evaluate --task next_item --json`, same data and split) adds the paired
difference model - recency on the same rows, with a 95% bootstrap interval over rows (2,000 resamples).

    python experiments/next_event_heuristics.py --data data/taobao_purchase [--split test] [--max-len 200]
        [--against runs/RUN/test_next_item.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from seqjax.data.task_pipeline import TaskBatchSpec, task_eval_batches
from seqjax.evaluation.next_event import NextEventTargets
from seqjax.evaluation.ranking import per_user_metrics, ranking_metrics, target_ranks
from seqjax.train import run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="DATA_DIR prepared with `seqjax prepare --task`")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-len", type=int, default=200, help="history events kept, as sequence_task.max_len")
    ap.add_argument("--against", default=None, help="an `evaluate --task next_item --json` result to pair with")
    args = ap.parse_args()
    num_items = run_dir.load_metadata(args.data)["num_items"]
    targets = NextEventTargets(args.data, args.split)
    spec = TaskBatchSpec(256, args.max_len)
    rows = []
    for batch in task_eval_batches(args.data, args.split, spec):
        use = (batch["example"] >= 0) & targets.keep[np.maximum(batch["example"], 0)]
        rows.append((batch["items"][use], batch["lengths"][use], targets.targets[batch["example"][use]],
                     batch["example"][use]))
    items = np.concatenate([np.pad(r[0], ((0, 0), (0, args.max_len - r[0].shape[1]))) for r in rows])
    lengths = np.concatenate([r[1] for r in rows])
    target = np.concatenate([r[2] for r in rows]).astype(np.int32)
    example = np.concatenate([r[3] for r in rows])
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
    if args.against:
        paired(args.against, example, target, rank["recency"], num_items)
    print("command: python experiments/next_event_heuristics.py " + " ".join(sys.argv[1:]))


def paired(path: str, example: np.ndarray, target: np.ndarray, recency: np.ndarray, num_items: int) -> None:
    """Prints model - recency per metric over the same rows, with a 95% bootstrap interval over rows."""
    result = json.loads(Path(path).read_text())
    csv = np.loadtxt(result["files"]["per_example"], delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    by_example = {int(e): (int(t), int(r)) for e, _, t, r in csv}
    if sorted(by_example) != sorted(example.tolist()):
        raise SystemExit(f"{path} ranked other rows than this split's histories with a next event")
    if any(by_example[int(e)][0] != t for e, t in zip(example, target)):
        raise SystemExit(f"{path} has other targets: evaluated on other data?")
    model = np.array([by_example[int(e)][1] for e in example])
    a, b = per_user_metrics(recency, num_items, (10,)), per_user_metrics(model, num_items, (10,))
    draws = np.random.default_rng(0).integers(0, len(model), (2000, len(model)))
    print(f"  paired over {len(model):,} rows, {path} - recency, 95% bootstrap:")
    for name in ("HR@10", "NDCG@10", "MRR"):
        d = b[name] - a[name]
        lo, hi = np.percentile(d[draws].mean(axis=1), [2.5, 97.5])
        print(f"    {name:<8} {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main()
