"""`seqjax evaluate` for sequence-model purchase/churn runs (seqjax.train.binary_loop): one binary head of
the run, at its validation-chosen F1 threshold, with the same metrics, ci95, reliability plot, per-example
scores and card fields as the classical binary evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from seqjax.config import to_dict
from seqjax.evaluation import binary_card
from seqjax.evaluation.binary import ECE_BINS, best_f1_threshold, binary_metrics, bootstrap_ci
from seqjax.evaluation.evaluate import BOOTSTRAP_RESAMPLES, CI_LEVEL
from seqjax.train import run_dir
from seqjax.train.task_config import load_task_config
from seqjax.train.task_data import resolve_data
from seqjax.train.task_predict import scored_examples


def evaluate_sequence_task(workdir: str | Path, split: str = "test", checkpoint: str = "best",
                           json_path: str | Path | None = None, task: str | None = None) -> dict[str, Any]:
    workdir = Path(workdir)
    if task == "next_item":
        from seqjax.evaluation.task_next_item import evaluate_task_next_item
        return evaluate_task_next_item(workdir, split, checkpoint, json_path)
    cfg = load_task_config(workdir)
    scored, chosen = scored_examples(workdir, split, checkpoint)
    head = task or next(iter(scored))
    if head not in scored:
        raise run_dir.RunDirError(f"--task {head}: {workdir} has binary heads {sorted(scored)}")
    valid, _ = scored_examples(workdir, "valid", checkpoint)
    threshold = best_f1_threshold(valid[head]["label"], valid[head]["prob"])
    s = scored[head]
    labels, probs = s["label"], s["prob"].astype(np.float64)
    metrics = binary_metrics(labels, probs, threshold)
    ci = {name: list(bounds) for name, bounds in bootstrap_ci(
        labels, probs, s["user"], threshold, BOOTSTRAP_RESAMPLES, cfg.seed, CI_LEVEL).items()}
    metadata = run_dir.load_metadata(cfg.data_path)
    # The head's labels may come from another directory (multi-task runs): its task protocol is the one to show.
    label_source = resolve_data(cfg).sources.get(head, cfg.data_path)
    proto = run_dir.load_metadata(label_source)["task"]["protocol"]
    card = {
        "dataset": {"path": str(Path(cfg.data_path).resolve()), "format": metadata.get("format"),
                    "checksum": metadata["checksum"], "schema_version": metadata["schema_version"],
                    "example_schema_version": metadata["task"].get("example_schema_version")},
        "task": {**{k: proto[k] for k in binary_card.PROTOCOL_KEYS if k in proto}, "head": head,
                 "labels_from": str(Path(label_source).resolve())},
        "split": {"evaluated": split, "class_balance": binary_card.class_balance(labels)},
        "model": {"kind": f"sequence/{cfg.encoder.kind}", "encoder": to_dict(cfg.encoder),
                  "heads": list(cfg.heads) or [proto.get("task")], "checkpoint": chosen},
        "threshold": {"value": threshold, "chosen": "maximises F1 on the valid split at the same checkpoint",
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
    result["files"] = binary_card.write_outputs(
        out, {"example": s["example"], "user": s["user"], "label": labels, "prob": probs}, labels, probs,
        f"sequence/{cfg.encoder.kind} | {head} | {split}")
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}, {result['files']['per_example']} and {result['files']['reliability']}")
    return result
