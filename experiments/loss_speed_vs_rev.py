"""SASRec ML-1M epoch time (train steps only) with this checkout's loss against an earlier revision's
`seqjax/train/losses.py`, in one process, alternated round by round so the shared machine's load hits both.

    python experiments/loss_speed_vs_rev.py --data DIR --rev REV [--rounds 3] [--variants config plain]

Variants are experiments/epoch_speed.py's (configs/sasrec_ml1m.yaml plus overrides).

2026-12-07, 2-core AMD EPYC, alone, 3 rounds, --rev c028eb2 (before the loss computed its gradients in the
forward pass and built own-item masks once per step):
    config (own items out, every training event)  c028eb2 28.8 s  this 25.4 s  x0.88
    plain (K&V's SASRec+)                          c028eb2 18.3 s  this 17.1 s  x0.94
(An earlier run of the same swap, from a scratch script with the trainings paused: 30.3 -> 24.9 s, x0.82, and
18.6 -> 16.7 s, x0.90.) Both compute the same parameters bit for bit (12 steps, sha256 of the parameters).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import epoch_speed

from seqjax.train import sampled_losses

ROOT = Path(__file__).resolve().parent.parent


def load_losses(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:seqjax/train/losses.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "losses_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("losses_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared ML-1M")
    ap.add_argument("--rev", required=True, help="git revision whose losses.py is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["config", "plain"], choices=sorted(epoch_speed.VARIANTS))
    args = ap.parse_args()
    old = load_losses(args.rev)
    current = sampled_losses.full_softmax_loss

    def baseline(*a, **k):  # an older full_softmax_loss may not take max_sequences (the 9th argument)
        return old.full_softmax_loss(*a[:8], **k)

    runs = {}
    for name in args.variants:
        for code, fn in ((args.rev, baseline), ("this", current)):
            sampled_losses.full_softmax_loss = fn  # make_loss looks it up when the step is traced
            runs[(name, code)] = epoch_speed.prepare(name, args.data)
    sampled_losses.full_softmax_loss = current
    epoch_speed.alternate(runs.values(), args.rounds)
    print(f"# SASRec ML-1M train steps of one epoch, {args.rounds} alternated rounds, {jax.devices()[0].platform}")
    for name in args.variants:
        a, b = runs[(name, args.rev)][3], runs[(name, "this")][3]
        print(f"{name:<10} {args.rev} {np.median(a):5.1f} s  this {np.median(b):5.1f} s  "
              f"x{np.median(b) / np.median(a):.2f}  {[round(t, 1) for t in a]} {[round(t, 1) for t in b]}")
    print("command: python experiments/loss_speed_vs_rev.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
