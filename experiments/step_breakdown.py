"""Where a SASRec ML-1M training epoch goes: the full train step against its parts, each jitted alone
over the same batches (epoch 0's plan), alternated round by round in one process.

    python experiments/step_breakdown.py --data DIR [--rounds 2] [--set key=value ...]

Parts: `encoder` (forward + backward of the encoder only, against a fixed random cotangent),
`loss` (forward + backward of the output layer and loss on fixed hidden states), `full` (the real
step: both, plus the optimizer update).

2026-11-28, quiet machine, 2 rounds, the config of that morning (unpacked, sort_window 4, 73.5% real):
    full 35.2 s, encoder 25.5 s (72%), loss 13.2 s (38%): the encoder, not the output layer, dominates.

2026-12-07, trainings paused, 2 rounds, configs/sasrec_ml1m.yaml (packed, own items out, every training event):
    full 25.6 s, encoder 19.5 s (76%), loss 10.8 s (42%). A profile of the encoder puts about a quarter of it in
    XLA:CPU's rng_bit_generator (the dropout masks).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from seqjax import config as config_lib
from seqjax.train.config import ExperimentConfig
from seqjax.train.loop import Trainer
from seqjax.train.sampled_losses import make_loss
from seqjax.train.step import put_batch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared ML-1M")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides (key=value)")
    args = ap.parse_args()
    cfg = config_lib.load(ExperimentConfig, ROOT / "configs" / "sasrec_ml1m.yaml", [f"data.path={args.data}",
                                                                                    *args.set])
    trainer = Trainer(cfg, tempfile.mkdtemp())
    state = trainer._create()
    batches = [put_batch(b, trainer.mesh) for b in trainer.batches.epoch(0)]
    graphdef, denominator = trainer.graphdef, trainer.batches.positions_per_batch
    loss_impl = make_loss(cfg.train.loss, cfg.train.loss_chunk,
                          denominator if cfg.train.loss_norm == "epoch" else None, cfg.data.batch_size)
    key = jax.random.key(0)

    @jax.jit
    def encoder(params, batch):
        def f(p):  # packed rows (data.pack) carry per-sequence positions and segments, as in the train step
            extra = {k: batch[k] for k in ("positions", "segments") if k in batch}
            return nnx.merge(graphdef, p).encode(batch["items"], batch["lengths"], key, **extra)
        hidden, vjp = jax.vjp(f, params)
        return vjp(jax.random.normal(key, hidden.shape, hidden.dtype))

    @jax.jit
    def loss(params, hidden, batch):
        def f(p, h):
            own = (batch["items"], batch.get("segments")) if cfg.train.loss.exclude_own_items else None
            return loss_impl(h, nnx.merge(graphdef, p).item_table(), batch["targets"], batch["weights"], key, None,
                             own)
        return jax.grad(f, argnums=(0, 1))(params, hidden)

    hiddens = [0.1 * jax.random.normal(key, (*b["items"].shape, cfg.model.sasrec.dim)) for b in batches]
    state_box = [state]

    def _full():
        out = None
        for b in batches:
            state_box[0], m = trainer.step_fn(state_box[0], b)
            out = m["loss"]
        return out

    params = lambda: state_box[0]["params"]
    parts = {"full": _full,
             "encoder": lambda: [encoder(params(), b) for b in batches][-1],
             "loss": lambda: [loss(params(), h, b) for h, b in zip(hiddens, batches)][-1]}
    for f in parts.values():  # compile every shape
        jax.block_until_ready(f())
    times = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, f in parts.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[name].append(time.perf_counter() - t0)
    real = sum(float(np.asarray(b["weights"]).sum()) for b in batches)
    padded = sum(b["weights"].size for b in batches)
    print(f"# SASRec ML-1M, one epoch ({len(batches)} batches, real positions {real / padded:.1%}), "
          f"{args.rounds} alternated rounds, {jax.device_count()} {jax.devices()[0].platform} device(s)")
    full = np.median(times["full"])
    for name, t in times.items():
        print(f"{name:<8} median {np.median(t):5.1f} s  {np.median(t) / full:6.1%} of full  {[round(x, 1) for x in t]}")
    print("command: python experiments/step_breakdown.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
