"""Steady SASRec epoch time (train steps only, batches already on the device) of named config variants,
alternated round by round in one process, so load on a shared machine hits all of them alike.

    python experiments/epoch_speed.py --data DIR [--rounds 4] [--variants config loss_all_chunks ...]

Every variant is configs/sasrec_ml1m.yaml plus its overrides (VARIANTS below); `config` before 2026-12-07 is
today's `plain`, and `own_all` below is today's `config`. Results:

2026-11-28 (2 CPU cores, quiet machine, 4 rounds, the pre-LN config of that day with sort_window 32):
    default  (16, 32, 64, then every 32, 200)   median 31.6 s  [30.4, 31.5, 31.6, 34.8]
    every16  (16, 32, 48, ..., 192, 200)        median 31.4 s  [31.5, 28.1, 31.6, 31.2]
Finer buckets cut padded positions by 4.4% but gave no reliable speed-up; the default stays.

2026-11-28 (quiet machine, 2 rounds; config = packed, fully random batches, K&V's details):
    config    median 32.3 s  x1.000  real positions 93.9%
    previous  median 32.9 s  x1.016  real positions 73.5%  (unpacked, sort_window 4)
    random    median 43.0 s  x1.328  real positions 52.7%  (unpacked, fully random)
Packing buys K&V's fully random batches for the cost of near-sorted ones; it does not reach 30 s.

2026-12-05 (another 2-core machine, "AMD EPYC", jax 0.12.0.1; 2 rounds; the same config):
    config     median 17.8 s  x1.000  [17.9, 17.7]
    chunk2048  median 19.4 s  x1.090  [20.0, 18.9]  (train.loss_chunk=2048)
    chunk256   median 18.3 s  x1.026  [19.7, 16.9]  (train.loss_chunk=256)
The loss chunk of 512 stays. This machine runs the same config 1.8x faster than that of 2026-11-28.

2026-12-06 (same machine, loaded: two trainings ran beside it; 3 rounds):
    config       median 61.4 s  x1.000  [61.1, 62.0, 61.4]
    exclude_own  median 67.2 s  x1.093  [67.2, 66.8, 68.4]  (train.loss.exclude_own_items=true)
Leaving each position's own items out of its softmax (a [C, V] scatter per chunk, twice) costs ~9%.

2026-12-07 (same machine, quiet; 3 rounds):
    config       median 21.8 s  x1.000  [22.2, 21.8, 21.8]
    own_all      median 37.2 s  x1.704  [37.2, 36.3, 39.4]  (exclude_own_items=true, data.train_history=all)
every training event is 1.42x the targets of the recent windows (68 batches, not 48), times 1.09 for own items.

2026-12-07, after the loss computed its gradients in its forward pass (trainings paused; 3 rounds; `config` is
the former own_all):
    config       median 28.0 s  x1.000  [27.9, 28.0, 28.7]
    plain        median 19.1 s  x0.683  [19.1, 19.8, 19.1]
    exclude_own  median 18.2 s  x0.651  [18.0, 19.6, 18.2]  (own items out, recent windows; run as own_recent)
Leaving own items out now costs nothing measurable; every training event is 1.51x the targets for ~1.5x the time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from seqjax import config as config_lib
from seqjax.train.config import ExperimentConfig
from seqjax.train.loop import Trainer
from seqjax.train.step import put_batch

ROOT = Path(__file__).resolve().parent.parent
# K&V's SASRec+ as configs/sasrec_ml1m.yaml was before 2026-12-07: each user's last 200 events, every item in
# each softmax, 1e-3 constant (the rate changes no step's time; the quality scripts import this list). The
# variants measured before that date build on it.
PLAIN = ["train.loss.exclude_own_items=false", "data.train_history=recent", "optim.lr=0.001",
         "optim.schedule=constant"]
VARIANTS = {
    "config": [],
    "plain": PLAIN,
    "chunk2048": [*PLAIN, "train.loss_chunk=2048"],
    "chunk256": [*PLAIN, "train.loss_chunk=256"],
    "every16": [*PLAIN, "data.buckets=[16,32,48,64,80,96,112,128,144,160,176,192,200]"],
    "loss_all_chunks": [*PLAIN, "train.loss.skip_padding=false"],  # the loss also scores padded positions
    "exclude_own": [*PLAIN, "train.loss.exclude_own_items=true"],  # own-sequence items left out of each softmax
    "pre_ln": [*PLAIN, "model.sasrec.layout=pre_ln"],
    "random": [*PLAIN, "data.pack=false", "data.sort_window=1"],  # fully random batches unpacked: most padding
    "sort4_unpacked": [*PLAIN, "data.pack=false", "data.sort_window=4"],  # the previous config's batching
    "packed_sort4": [*PLAIN, "data.sort_window=4"],
    # the config before K&V's remaining details and packing (what the 3-seed epoch-41 runs used)
    "previous": [*PLAIN, "data.pack=false", "data.sort_window=4", "model.sasrec.attention_dropout=output",
                 "model.sasrec.qkv_init=dense", "model.sasrec.norm_eps=1e-6", "train.loss_norm=epoch"],
}


def prepare(name: str, data: str):
    cfg = config_lib.load(ExperimentConfig, ROOT / "configs" / "sasrec_ml1m.yaml", [f"data.path={data}",
                                                                                    *VARIANTS[name]])
    trainer = Trainer(cfg, tempfile.mkdtemp())
    state = trainer._create()
    batches = [put_batch(b, trainer.mesh) for b in trainer.batches.epoch(0)]
    for b in {b["items"].shape: b for b in batches}.values():  # compile every shape first
        state, m = trainer.step_fn(state, b)
    jax.block_until_ready(m["loss"])
    real = sum(float(np.asarray(b["weights"]).sum()) for b in batches)
    padded = sum(b["weights"].size for b in batches)
    return [trainer, state, batches, [], real / padded]


def alternate(runs, rounds: int) -> None:
    """Times one epoch of each prepared run per round, round by round; appends to each run's times."""
    for _ in range(rounds):
        for run in runs:
            trainer, state, batches, times, _ = run
            t0 = time.perf_counter()
            for b in batches:
                state, m = trainer.step_fn(state, b)
            jax.block_until_ready(m["loss"])
            times.append(time.perf_counter() - t0)
            run[1] = state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared ML-1M")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=["config", "loss_all_chunks"], choices=sorted(VARIANTS))
    args = ap.parse_args()
    runs = {name: prepare(name, args.data) for name in args.variants}
    alternate(runs.values(), args.rounds)
    first = args.variants[0]
    print(f"# SASRec ML-1M train steps of one epoch (epoch 0's batches), {args.rounds} alternated rounds, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
    for name, (_, _, _, times, real) in runs.items():
        ratio = np.median(times) / np.median(runs[first][3])
        print(f"{name:<16} median {np.median(times):5.1f} s  x{ratio:.3f} of {first}  real positions {real:.1%}  "
              f"{[round(t, 1) for t in times]}  overrides {VARIANTS[name]}")
    print("command: python experiments/epoch_speed.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
