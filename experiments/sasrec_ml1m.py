"""ML-1M SASRec benchmark: prepare, train one process per seed, evaluate test at the validation-chosen
checkpoint, print mean and standard error over seeds with the protocol and speed figures.

    python experiments/sasrec_ml1m.py [--seeds 0 1 2] [--data-file ../shared/data/ml1m/ml-1m_sasrec_format.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("SEQJAX_DATA_DIR", ROOT.parent / "shared" / "data")) / "ml1m" / "ml-1m_sasrec_format.txt"


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-file", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_sasrec_ml1m"))
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for every seed")
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "data"
    seqjax = [sys.executable, "-m", "seqjax.cli"]
    if not (data / "metadata.json").exists():
        run(seqjax + ["prepare", "--format", "sasrec", "--input", args.data_file, "--out", str(data)])
    rows = []
    for seed in args.seeds:
        workdir = out / f"seed{seed}"
        t0 = time.perf_counter()
        run(seqjax + ["train", "--config", str(ROOT / "configs" / "sasrec_ml1m.yaml"), "--workdir", str(workdir),
                      "--set", f"data.path={data}", "--set", f"train.seed={seed}", *sum([["--set", s] for s in args.set], [])])
        wall = time.perf_counter() - t0
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        run(seqjax + ["evaluate", "--workdir", str(workdir), "--split", "test", "--json", str(workdir / "test.json")])
        result = json.loads((workdir / "test.json").read_text())
        summary = json.loads((workdir / "summary.json").read_text())
        rows.append({"seed": seed, **result["metrics"], "summary": summary, "wall_s": wall, "peak_gib": peak_gib,
                     "protocol": result["protocol"]})
    print_table(rows, args)


def print_table(rows: list[dict], args) -> None:
    print("\n# SASRec (full softmax CE) on ML-1M, " + Path(args.data_file).name)
    p = rows[0]["protocol"]
    print(f"protocol: leave-one-out, test split, {p['candidates']}, filter_seen={p['filter_seen']['applied']}, "
          f"checkpoint = best validation NDCG@10, seeds {args.seeds}")
    print(f"{'seed':>4} {'NDCG@10':>8} {'HR@10':>7} {'MRR':>7} {'best ep':>7} {'s/epoch':>8} {'1st ep':>7} "
          f"{'valid s':>7} {'to best s':>9} {'peak GiB':>8}")
    for r in rows:
        s = r["summary"]
        print(f"{r['seed']:>4} {r['NDCG@10']:>8.4f} {r['HR@10']:>7.4f} {r['MRR']:>7.4f} {s['best_epoch']:>7} "
              f"{s['seconds_per_epoch_steady']:>8.1f} {s['first_epoch_seconds_incl_compile']:>7.1f} "
              f"{s['valid_seconds_mean']:>7.1f} {s['train_seconds_to_best']:>9.0f} {r['peak_gib']:>8.2f}")
    for m in ("NDCG@10", "HR@10", "MRR"):
        v = np.array([r[m] for r in rows])
        se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
        print(f"{m}: mean {v.mean():.4f} +- {se:.4f} (standard error over {len(v)} seeds)")
    print("command: python experiments/sasrec_ml1m.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
