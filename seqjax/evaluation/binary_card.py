"""The protocol card of a purchase/churn evaluation, and its printed table.

Everything a binary number needs to be read: which data (path, checksum, schema versions), which task
(label, eligibility, level, cutoffs, feature window, horizon, time zone, split mode: metadata["task"]
["protocol"], as `seqjax prepare --task` recorded it), the class balance of the evaluated split, the model,
the decision threshold and how it was chosen, how the intervals were computed, the seed, and how many
examples and users were scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seqjax.config import to_dict
from seqjax.evaluation.binary import ECE_BINS
from seqjax.train.config import ExperimentConfig

PROTOCOL_KEYS = ("task", "level", "label", "eligible", "horizon", "horizon_seconds", "feature_window",
                 "feature_window_seconds", "timezone", "split_mode", "cutoffs", "cutoffs_chosen_by", "data_range",
                 "time_rule", "customer_split", "warnings")  # copied from metadata["task"]["protocol"] when present


def class_balance(labels: np.ndarray) -> dict[str, Any]:
    n, pos = len(labels), int(np.sum(labels))
    return {"examples": n, "positives": pos, "positive_rate": pos / n if n else None}


def protocol_card(cfg: ExperimentConfig, metadata: dict[str, Any], split: str, scores: dict[str, np.ndarray],
                  summary: dict[str, Any], n_resamples: int, level: float) -> dict[str, Any]:
    """The card of one evaluation: `scores` as classical_tasks.score returns, `summary` the run's summary.json."""
    section = metadata["task"]
    proto = section["protocol"]
    kind = cfg.model.kind
    return {
        "dataset": {"path": str(Path(cfg.data.path).resolve()), "format": metadata.get("format"),
                    "checksum": metadata["checksum"], "schema_version": metadata["schema_version"],
                    "example_schema_version": section.get("example_schema_version")},
        "task": {k: proto[k] for k in PROTOCOL_KEYS if k in proto},
        "split": {"evaluated": split, "class_balance": class_balance(scores["label"])},
        "model": {"kind": kind, "config": to_dict(getattr(cfg.model, kind)), "artefact": summary.get("artefact"),
                  "artefact_sha256": summary.get("artefact_sha256"), "fit_seconds": summary.get("fit_seconds"),
                  "iterations_used": summary.get("iterations_used")},
        "threshold": {"value": summary["threshold"], "chosen": summary["threshold_chosen"],
                      "applies_to": "accuracy, precision, recall and F1: positive when prob >= threshold"},
        "metrics": {"ranking": "ROC-AUC (ties count 1/2) and PR-AUC (average precision, no interpolation)",
                    "calibration": f"ECE over {ECE_BINS} equal-width bins, weighted by their examples; Brier; "
                                   "log_loss with probabilities clipped to float64 epsilon",
                    "ci95": f"{level:.0%} percentile bootstrap over users (a user's examples move together), "
                            f"{n_resamples} resamples, seed {cfg.train.seed}"},
        "model_kind": kind, "seed": cfg.train.seed,
        "examples": len(scores["label"]), "users": len(np.unique(scores["user"])),
        "schema_version": metadata["schema_version"],
    }


def write_outputs(out: Path, columns: dict[str, np.ndarray], labels: np.ndarray, probs: np.ndarray,
                  title: str) -> dict[str, str]:
    """Writes the per-example CSV (`columns`, in order; floats at full precision so the metrics can be
    recomputed from it) and the reliability PNG beside `out`; returns their paths."""
    import csv

    from seqjax.evaluation.reliability import reliability_plot
    per_example, png = out.with_suffix(".per_example.csv"), out.with_suffix(".reliability.png")
    with per_example.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(columns))
        w.writerows(zip(*(np.asarray(v).tolist() for v in columns.values())))
    reliability_plot(labels, probs, png, title)
    return {"per_example": str(per_example), "reliability": str(png)}


def print_table(metrics: dict[str, float], ci: dict[str, list[float]], card: dict[str, Any]) -> None:
    task, bal, thr = card["task"], card["split"]["class_balance"], card["threshold"]
    rate = "n/a" if bal["positive_rate"] is None else f"{bal['positive_rate']:.1%}"
    print(f"{card['model_kind']} | task={task.get('task')} ({task.get('level')}, horizon {task.get('horizon')}, "
          f"{task.get('split_mode')}) | split={card['split']['evaluated']} | {card['examples']} examples, "
          f"{card['users']} users, {rate} positive")
    print(f"  threshold {thr['value']:.4g}: {thr['chosen']}")
    for name, value in metrics.items():
        lo, hi = ci[name]
        print(f"  {name:<9} {value:.4f}  [{lo:.4f}, {hi:.4f}]")
