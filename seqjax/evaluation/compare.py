"""`seqjax compare A.json B.json`: two next-item evaluations of the same users, compared pairwise.

Each `seqjax evaluate --json X.json` writes X.per_user.csv beside it (user, target, rank, score). The
comparison refuses evaluations whose protocols differ (data checksum, split, candidates, seen-item
filtering, users), recomputes each run's metrics from its ranks (and checks them against its JSON, which
catches a stale CSV), and gives B - A per metric with a 95% paired bootstrap interval over users.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from seqjax.evaluation.ranking import per_user_metrics

# Protocol fields that must agree for a paired comparison to mean anything.
SAME_PROTOCOL = (("dataset", "checksum"), ("dataset", "num_items"), ("split", "evaluated"), ("candidates",),
                 ("filter_seen", "applied"))


def _field(protocol: dict, path: tuple[str, ...]):
    for key in path:
        protocol = protocol.get(key) if isinstance(protocol, dict) else None
    return protocol


def load_evaluation(path: str | Path) -> tuple[dict, dict[int, int]]:
    """(evaluation JSON, {user: target rank}) of one `seqjax evaluate --json` output."""
    path = Path(path)
    per_user = path.with_suffix(".per_user.csv")
    if not per_user.exists():
        raise FileNotFoundError(f"{per_user} is missing: `seqjax evaluate --json {path}` writes it beside the JSON")
    with per_user.open(newline="") as f:
        ranks = {int(row["user"]): int(row["rank"]) for row in csv.DictReader(f)}
    return json.loads(path.read_text()), ranks


def _metric_values(ranks: np.ndarray, num_items: int, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per-user values of HR@K / NDCG@K / MRR names, from `per_user_metrics`."""
    ks = []
    for name in metrics:
        kind, _, k = name.partition("@")
        if name != "MRR" and (kind not in ("HR", "NDCG") or not k.isdigit()):
            raise ValueError(f"unknown metric {name!r}: use HR@K, NDCG@K or MRR")
        ks += [int(k)] if k else []
    values = per_user_metrics(ranks, num_items, tuple(sorted(set(ks))))
    return {name: values[name] for name in metrics}


def compare(path_a: str | Path, path_b: str | Path, metrics: tuple[str, ...] = ("NDCG@10", "HR@10", "MRR"),
            resamples: int = 2000, seed: int = 0) -> dict:
    """{metric: {"a", "b", "diff", "ci": [lo, hi]}} of B - A, plus the shared protocol fields and user count."""
    (a, ranks_a), (b, ranks_b) = load_evaluation(path_a), load_evaluation(path_b)
    differing = [".".join(p) for p in SAME_PROTOCOL if _field(a["protocol"], p) != _field(b["protocol"], p)]
    if differing:
        raise ValueError(f"{path_a} and {path_b} were evaluated under different protocols "
                         f"({', '.join(differing)} differ): a paired comparison needs the same users and targets")
    if ranks_a.keys() != ranks_b.keys():
        raise ValueError(f"{path_a} and {path_b} rank different users ({len(ranks_a)} vs {len(ranks_b)})")
    users = sorted(ranks_a)
    num_items = int(a["protocol"]["dataset"]["num_items"])
    values = []
    for run, path, ranks in ((a, path_a, ranks_a), (b, path_b, ranks_b)):
        per_user = _metric_values(np.array([ranks[u] for u in users], np.int64), num_items, metrics)
        for name, v in per_user.items():
            if name in run["metrics"] and abs(v.mean() - run["metrics"][name]) > 1e-6:
                raise ValueError(f"{path}: {name} from its per-user ranks is {v.mean():.6f}, the JSON says "
                                 f"{run['metrics'][name]:.6f}: the CSV belongs to another evaluation")
        values.append(per_user)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(users), (min(100, resamples - i), len(users))) for i in range(0, resamples, 100)]
    out = {"users": len(users), "resamples": resamples, "seed": seed,
           "protocol": {".".join(p): _field(a["protocol"], p) for p in SAME_PROTOCOL}}
    for name in metrics:
        d = values[1][name] - values[0][name]
        boot = np.concatenate([d[chunk].mean(axis=1) for chunk in draws])  # chunks bound memory
        out[name] = {"a": float(values[0][name].mean()), "b": float(values[1][name].mean()), "diff": float(d.mean()),
                     "ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}
    return out


def print_comparison(result: dict, path_a: str, path_b: str, metrics: tuple[str, ...]) -> None:
    print(f"B - A over the same {result['users']} users, 95% paired bootstrap ({result['resamples']} resamples, "
          f"seed {result['seed']})")
    print(f"  A = {path_a}\n  B = {path_b}")
    print("  " + ", ".join(f"{k}={v}" for k, v in result["protocol"].items() if k != "dataset.checksum"))
    print(f"  {'metric':<9} {'A':>8} {'B':>8} {'B - A':>9}  95% CI")
    for name in metrics:
        r = result[name]
        print(f"  {name:<9} {r['a']:8.4f} {r['b']:8.4f} {r['diff']:+9.4f}  [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]")
