"""Seconds per training epoch of SASRec on ML-1M: seqjax next to a plain PyTorch implementation,
alternated in one run so the shared machine's noise hits both.

    python experiments/sasrec_speed_vs_torch.py --data runs/table_kv/data --torch-python PATH [--rounds 2]

PATH is a Python with torch installed (torch is not a seqjax dependency).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import epoch_speed
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEQJAX_EPOCH = r"""
import sys, time, jax
from seqjax import config as C
from seqjax.train.config import ExperimentConfig
from seqjax.train.loop import Trainer
from seqjax.train.step import put_batch
# the torch side trains each user's last 200 events with every item in each softmax: so does this
cfg = C.load(ExperimentConfig, sys.argv[1], ["data.path=" + sys.argv[2], *sys.argv[4:]])
tr = Trainer(cfg, sys.argv[3])
state = tr._create()
for epoch in range(2):  # epoch 0 compiles every length bucket; epoch 1 is steady state
    t0 = time.perf_counter()
    for batch in tr.batches.epoch(epoch):
        state, metrics = tr.step_fn(state, put_batch(batch, tr.mesh))
    jax.block_until_ready(metrics)
    print(f"seqjax epoch {epoch}: {time.perf_counter() - t0:.1f} s", flush=True)
"""


def export_sequences(data_dir: Path, out: Path) -> None:
    import json

    from seqjax.data.pipeline import records
    train = records(data_dir, "train")
    seqs = [train[i].items for i in range(len(train))]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    num_items = json.loads((data_dir / "metadata.json").read_text())["num_items"]
    np.savez(out, items=np.concatenate(seqs), offsets=offsets, num_items=num_items)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="prepared ML-1M (seqjax prepare --format sasrec ...)")
    ap.add_argument("--torch-python", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="seqjax-vs-torch-"))
    export_sequences(Path(args.data), tmp / "seqs.npz")
    times: dict[str, list[float]] = {"seqjax": [], "torch": []}
    for r in range(args.rounds):
        out = subprocess.run([sys.executable, "-c", SEQJAX_EPOCH, str(ROOT / "configs" / "sasrec_ml1m.yaml"),
                              args.data, str(tmp / f"run{r}"), *epoch_speed.PLAIN],
                             capture_output=True, text=True, check=True).stdout
        times["seqjax"].append(float(re.findall(r"seqjax epoch 1: ([\d.]+) s", out)[0]))
        out = subprocess.run([args.torch_python, str(ROOT / "experiments" / "torch_reference" / "sasrec_torch.py"),
                              str(tmp / "seqs.npz")], capture_output=True, text=True, check=True).stdout
        times["torch"].append(float(re.findall(r"torch epoch 0: ([\d.]+) s", out)[0]))
        print(f"round {r}: seqjax {times['seqjax'][-1]:.1f} s/epoch, torch {times['torch'][-1]:.1f} s/epoch", flush=True)
    s, t = np.median(times["seqjax"]), np.median(times["torch"])
    print(f"\nSASRec ML-1M, one training epoch (6,040 users, batch 128, max_len 200, dim 64, 2 blocks, full CE), "
          f"median of {args.rounds} rounds:\n  seqjax {s:.1f} s  |  PyTorch (padded, dense logits) {t:.1f} s  |  "
          f"torch / seqjax = {t / s:.2f}x")
    print("command: python experiments/sasrec_speed_vs_torch.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
