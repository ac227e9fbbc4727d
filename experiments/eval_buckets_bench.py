"""Full-ranking evaluation of a trained run: length-bucketed batches (the default) against batches padded to
max_len, alternated round by round in one process; checks that every user's rank is the same.

    python experiments/eval_buckets_bench.py RUN_DIR [RUN_DIR ...] [--split valid] [--rounds 3]

Times are per pass over the split after a first untimed pass of each variant (compilation: one program per
bucket width); the ratio is full-width / bucketed, measured side by side.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from seqjax.evaluation.evaluate import _neural_ranker
from seqjax.evaluation.scoring import rank_split
from seqjax.train import run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("command: python experiments/eval_buckets_bench.py " + " ".join(sys.argv[1:]), flush=True)
    print(f"{'run':<32} {'users':>6} {'full-width s':>13} {'bucketed s':>11} {'ratio':>6}  ranks")
    for workdir in args.runs:
        cfg = run_dir.load_run_config(workdir)
        metadata = run_dir.load_metadata(cfg.data.path)
        rank_batch, _ = _neural_ranker(workdir, cfg, metadata, "best", run_dir.filter_seen(cfg, metadata))
        variants = {"full": (cfg.data.max_len,), "bucketed": None}
        ranks, seconds = {}, {name: [] for name in variants}
        for name, buckets in variants.items():  # untimed: compiles each width once
            ranks[name] = rank_split(rank_batch, cfg.data.path, args.split, cfg.data.eval_batch_size,
                                     cfg.data.max_len, buckets)["ranks"]
        for _ in range(args.rounds):
            for name, buckets in variants.items():
                t0 = time.perf_counter()
                rank_split(rank_batch, cfg.data.path, args.split, cfg.data.eval_batch_size, cfg.data.max_len,
                           buckets)
                seconds[name].append(time.perf_counter() - t0)
        full, bucketed = (float(np.median(seconds[n])) for n in variants)
        same = "identical" if np.array_equal(ranks["full"], ranks["bucketed"]) else \
            f"{int((ranks['full'] != ranks['bucketed']).sum())} differ"
        print(f"{workdir!s:<32} {len(ranks['full']):>6} {full:>13.2f} {bucketed:>11.2f} {full / bucketed:>6.2f}  "
              f"{same}", flush=True)


if __name__ == "__main__":
    main()
