"""Short SASRec training probes on ML-1M: the validation NDCG@10 curve of each variant over its first
epochs, side by side. Used to choose configs/sasrec_ml1m.yaml's settings before full 3-seed runs.

    python experiments/sasrec_probes.py --data DIR [--epochs 8] [--variants baseline init002 ...]

Each variant is `seqjax train` on configs/sasrec_ml1m.yaml with its overrides (one process each, run one
after another); `baseline` undoes some of the settings the config now carries (the
later K&V ones, attention dropout, qkv init, LayerNorm eps and packing, stay: these probes predate them). Results of 2026-11-28 (seed 0,
8 epochs, shared machine; valid NDCG@10 at epochs 4 / 8):
    baseline (LeCun init, batch-mean loss)   0.0261 / 0.0848
    random   (unsorted batches)              0.0392 / 0.0976
    epochnorm (loss / epoch mean positions)  0.0277 / 0.0905
    init002  (dense kernels N(0, 0.02))      0.0684 / 0.1108
    previous (init002 + epochnorm)           0.0772 / 0.1136  (epochs 4 / 8 of the seed-0 full run)
    kv_all   (the config now)                0.0991 / 0.1229
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import epoch_speed

ROOT = Path(__file__).resolve().parent.parent
# configs/sasrec_ml1m.yaml before it took K&V's SASRec+ settings; the first four variants build on it
# Before 2026-12-07 the config trained each user's last 200 events with every item in each softmax.
KV_PLAIN = epoch_speed.PLAIN  # K&V's SASRec+, 1e-3 constant
PREVIOUS = [*KV_PLAIN, "model.sasrec.layout=pre_ln", "model.sasrec.dropout=0.2", "optim.b2=0.98",
            "optim.warmup_steps=100", "optim.clip_norm=1", "data.sort_window=32"]
BASELINE = [*PREVIOUS, "model.sasrec.linear_init_std=0", "train.loss_norm=batch"]
VARIANTS = {
    "baseline": BASELINE,
    "random": [*BASELINE, "data.sort_window=1"],
    "epochnorm": [*PREVIOUS, "model.sasrec.linear_init_std=0", "train.loss_norm=epoch"],
    "init002": [*PREVIOUS, "model.sasrec.linear_init_std=0.02", "train.loss_norm=batch"],
    "previous": PREVIOUS,  # init 0.02 + epoch norm, pre-LN
    # configs/sasrec_ml1m.yaml before 2026-12-07: K&V's SASRec+ (the authors' block wiring, dropout 0.1,
    # plain Adam, near-random batches)
    "kv_all": KV_PLAIN,
    # what still differed from K&V's code: dropout on the attention weights (not the attention output),
    # torch's Xavier-uniform query/key/value init, LayerNorm eps 1e-8, batch-mean loss, fully random batches
    "kv_exact": [*KV_PLAIN, "model.sasrec.attention_dropout=weights", "model.sasrec.qkv_init=torch_mha",
                 "model.sasrec.norm_eps=1e-8", "train.loss_norm=batch", "data.sort_window=1"],
}


def curve(workdir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars("valid/NDCG@10"), key=lambda e: e.step)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--variants", nargs="+", default=["baseline", "random", "epochnorm", "init002"],
                    choices=sorted(VARIANTS))
    ap.add_argument("--data", required=True, help="prepared ML-1M (seqjax prepare --format sasrec ...)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "sasrec_probes"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    curves = {}
    for name in args.variants:
        workdir = Path(args.out) / f"{name}_seed{args.seed}"
        sets = [f"data.path={args.data}", f"train.epochs={args.epochs}", "train.patience=0",
                f"train.seed={args.seed}", *VARIANTS[name]]
        cmd = [sys.executable, "-m", "seqjax.cli", "train", "--config", str(ROOT / "configs" / "sasrec_ml1m.yaml"),
               "--workdir", str(workdir), *sum([["--set", s] for s in sets], [])]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        curves[name] = curve(workdir)
    print(f"\n# valid NDCG@10 by epoch, SASRec ML-1M, seed {args.seed}")
    print(f"{'variant':<10} " + " ".join(f"{e + 1:>7}" for e in range(args.epochs)))
    for name, c in curves.items():
        print(f"{name:<10} " + " ".join(f"{v:>7.4f}" for v in c))
    print(json.dumps({"overrides": {n: VARIANTS[n] for n in curves}}))
    print("command: python experiments/sasrec_probes.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
