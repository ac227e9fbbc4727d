"""Validation NDCG@10 per epoch of SASRec on ML-1M: seqjax (configs/sasrec_ml1m.yaml) next to an
independent PyTorch trainer with K&V's setup (experiments/torch_reference/sasrec_kv_torch.py), same data,
same split, same validation (every user's second-last item, full catalogue, seen items removed).
If seqjax learned slower per epoch than torch, the gap to K&V's published numbers would be ours.

    python experiments/sasrec_quality_vs_torch.py --data DIR --torch-python PY [--epochs 10] [--seed 0]

DIR is ML-1M prepared by `seqjax prepare --format sasrec --input .../ml-1m_sasrec_format.txt --out DIR`.
The two run one after the other (2 threads each); the table pairs their curves epoch by epoch.

2026-12-05, seed 0, 15 epochs, 2-core AMD EPYC, torch 2.13.0+cpu, jax 0.12.0.1 (valid NDCG@10):
    epoch      1       3       5       7       9      11      13      15
    torch   0.0218  0.0907  0.1138  0.1282  0.1391  0.1441  0.1506  0.1510
    seqjax  0.0243  0.0880  0.1141  0.1286  0.1382  0.1423  0.1475  0.1524
Over the 15 epochs seqjax - torch is -0.0004 on average (from -0.0031 to +0.0029), within one seed's noise:
seqjax's SASRec learns per epoch as an independent PyTorch implementation of K&V's setup does.
Train seconds per epoch: torch 49-52 s (dense [B, T, V] logits, batches padded to their longest row),
seqjax 17-20 s (packed rows, chunked loss): about 2.7x.
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
EPOCH_LINE = re.compile(r"epoch (\d+): valid NDCG@10=([\d.]+) HR@10=([\d.]+).*train ([\d.]+)s")
# The torch trainer is K&V's setup: each user's last 200 events, every item in each softmax, 1e-3 constant.
KV_PLAIN = epoch_speed.PLAIN
TORCH_LINE = re.compile(r"epoch (\d+) train_s ([\d.]+) loss [\d.]+ valid NDCG@10 ([\d.]+) HR@10 ([\d.]+)")


def export_split(data_dir: Path, out: Path) -> None:
    """Train sequences plus each user's validation and test targets, for the torch trainer."""
    import json

    from seqjax.data.pipeline import records
    train, valid, test = (records(data_dir, s) for s in ("train", "valid", "test"))
    users = [train[i].user for i in range(len(train))]
    if users != [valid[i].user for i in range(len(valid))] or users != [test[i].user for i in range(len(test))]:
        raise SystemExit(f"{data_dir}: train/valid/test records are not in the same user order")
    seqs = [train[i].items for i in range(len(train))]
    np.savez(out, items=np.concatenate(seqs), offsets=np.concatenate([[0], np.cumsum([len(s) for s in seqs])]),
             valid_target=np.array([valid[i].target for i in range(len(valid))]),
             test_target=np.array([test[i].target for i in range(len(test))]),
             num_items=json.loads((data_dir / "metadata.json").read_text())["num_items"])


def stream(cmd: list[str]) -> str:
    """Runs cmd, echoing its lines as they come (both runs take minutes), and returns its stdout."""
    print("$", " ".join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            if "epoch" in line:
                print("   ", line.rstrip(), flush=True)
            lines.append(line)
    if proc.returncode:
        raise SystemExit("".join(lines[-30:]) + f"\nfailed with exit code {proc.returncode}: {' '.join(cmd)}")
    return "".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--torch-python", required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="seqjax-quality-vs-torch-"))
    export_split(args.data, tmp / "split.npz")
    torch_out = stream([args.torch_python, str(ROOT / "experiments" / "torch_reference" / "sasrec_kv_torch.py"),
                        str(tmp / "split.npz"), "--epochs", str(args.epochs), "--seed", str(args.seed),
                        "--patience", "0"])
    seqjax_out = stream([sys.executable, "-m", "seqjax.cli", "train", "--config",
                         str(ROOT / "configs" / "sasrec_ml1m.yaml"), "--workdir", str(tmp / "seqjax"),
                         "--set", f"data.path={args.data}", "--set", f"train.seed={args.seed}",
                         "--set", f"train.epochs={args.epochs}", "--set", "train.patience=0",
                         *[a for x in KV_PLAIN for a in ("--set", x)]])
    torch_rows = {int(m[0]): (float(m[2]), float(m[3]), float(m[1])) for m in TORCH_LINE.findall(torch_out)}
    jax_rows = {int(m[0]): (float(m[1]), float(m[2]), float(m[3])) for m in EPOCH_LINE.findall(seqjax_out)}
    print(f"\nSASRec ML-1M, valid (second-last item, full catalogue, seen removed), seed {args.seed}:")
    print(f"{'epoch':>5} {'torch NDCG@10':>14} {'seqjax NDCG@10':>15} {'diff':>8} {'torch HR@10':>12} "
          f"{'seqjax HR@10':>13} {'torch s':>8} {'seqjax s':>9}")
    for e in sorted(set(torch_rows) & set(jax_rows)):
        (tn, th, ts), (jn, jh, js) = torch_rows[e], jax_rows[e]
        print(f"{e:>5} {tn:>14.4f} {jn:>15.4f} {jn - tn:>+8.4f} {th:>12.4f} {jh:>13.4f} {ts:>8.1f} {js:>9.1f}")
    print("command: python experiments/sasrec_quality_vs_torch.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
