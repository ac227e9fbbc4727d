"""`seqjax evaluate` for sequence-model purchase/churn runs (seqjax.train.binary_loop): one binary head of
the run, at its validation-chosen F1 threshold, with the same metrics, ci95, reliability plot, per-example
scores and card fields as the classical binary evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from seqjax.config import to_dict
from seqjax.evaluation import binary_card
from seqjax.evaluation.binary import ECE_BINS, binary_metrics, best_f1_threshold, bootstrap_ci
from seqjax.train import run_dir
from seqjax.train.binary_loop import load_task_config, scored_examples

BOOTSTRAP_RESAMPLES = 1000
CI_LEVEL = 0.95


def evaluate_sequence_task(workdir: str | Path, split: str = "test", checkpoint: str = "best",
                           json_path: str | Path | None = None, task: str | None = None) -> dict[str, Any]:
    workdir = Path(workdir)
    cfg = load_task_config(workdir)
    scored, chosen = scored_examples(workdir, split, checkpoint)
    head = task or next(iter(scored))
    if head not in scored:
        raise run_dir.RunDirError(f"--task {head}: {workdir} has binary heads {sorted(scored)}"
                                  + ("; its next_item head is trained as an auxiliary loss and not evaluated "
                                     "by ranking here" if head == "next_item" else ""))
    valid, _ = scored_examples(workdir, "valid", checkpoint)
    threshold = best_f1_threshold(valid[head]["label"], valid[head]["prob"])
    s = scored[head]
    labels, probs = s["label"], s["prob"].astype(np.float64)
    metrics = binary_metrics(labels, probs, threshold)
    ci = {name: list(bounds) for name, bounds in bootstrap_ci(
        labels, probs, s["user"], threshold, BOOTSTRAP_RESAMPLES, cfg.seed, CI_LEVEL).items()}
    metadata = run_dir.load_metadata(cfg.data_path)
    proto = metadata["task"]["protocol"]
    card = {
        "dataset": {"path": str(Path(cfg.data_path).resolve()), "format": metadata.get("format"),
                    "checksum": metadata["checksum"], "schema_version": metadata["schema_version"],
                    "example_schema_version": metadata["task"].get("example_schema_version")},
        "task": {**{k: proto[k] for k in binary_card.PROTOCOL_KEYS if k in proto}, "head": head},
        "split": {"evaluated": split, "class_balance": binary_card.class_balance(labels)},
        "model": {"kind": f"sequence/{cfg.encoder.kind}", "encoder": to_dict(cfg.encoder),
                  "heads": list(cfg.heads) or [proto.get("task")], "checkpoint": chosen},
        "threshold": {"value": threshold, "chosen": f"maximises F1 on the valid split at the same checkpoint",
                      "applies_to": "accuracy, precision, recall and F1: positive when prob >= threshold"},
        "metrics": {"ranking": "ROC-AUC (ties count 1/2) and PR-AUC (average precision, no interpolation)",
                    "calibration": f"ECE over {ECE_BINS} equal-width bins; Brier; log_loss clipped to float64 eps",
                    "ci95": f"{CI_LEVEL:.0%} percentile bootstrap over users, {BOOTSTRAP_RESAMPLES} resamples, "
                            f"seed {cfg.seed}"},
        "model_kind": f"sequence/{cfg.encoder.kind}", "seed": cfg.seed,
        "examples": len(labels), "users": len(np.unique(s["user"])), "schema_version": metadata["schema_version"],
    }
    result = {"metrics": metrics, "ci95": ci, "protocol": card}
    binary_card.print_table(metrics, ci, card)
    out = Path(json_path) if json_path else workdir / "eval" / f"{split}_{head}_step{chosen['step']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    per_example, png = out.with_suffix(".per_example.csv"), out.with_suffix(".reliability.png")
    with per_example.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["example", "user", "label", "prob"])
        w.writerows(zip(s["example"].tolist(), s["user"].tolist(), labels.tolist(), probs.tolist()))
    from seqjax.evaluation.reliability import reliability_plot
    reliability_plot(labels, probs, png, f"sequence/{cfg.encoder.kind} | {head} | {split}")
    result["files"] = {"per_example": str(per_example), "reliability": str(png)}
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}, {per_example} and {png}")
    return result
