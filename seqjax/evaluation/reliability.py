"""Reliability diagram: fraction positive against mean predicted probability, in the ECE's 15 bins.

Drawn with matplotlib's object API on an Agg canvas: no display is needed and the global pyplot
backend (which a notebook may rely on) is left untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqjax.evaluation.binary import ECE_BINS, calibration_bins


def reliability_plot(labels, probs, path: str | Path, title: str) -> Path:
    """Writes a PNG reliability diagram to `path` (parents created) and returns the path.

    Top: fraction positive vs mean predicted probability for each non-empty bin, with the
    diagonal of perfect calibration and the gap to it shaded. Bottom: examples per bin (log scale).
    The title gains N, the base rate and the ECE (same bins as `binary_metrics`).
    """
    bins = calibration_bins(labels, probs, ECE_BINS)
    edges, count = bins["edges"], bins["count"]
    total = int(count.sum())
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(bins["mean_prob"][filled] - bins["frac_pos"][filled])) / total)
    base_rate = float(np.mean(np.asarray(labels, dtype=np.float64)))

    fig = Figure(figsize=(5.5, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    mean_prob, frac_pos = bins["mean_prob"][filled], bins["frac_pos"][filled]
    top.vlines(mean_prob, np.minimum(mean_prob, frac_pos), np.maximum(mean_prob, frac_pos),
               color="tab:red", alpha=0.5, linewidth=2, label="gap")
    top.plot(mean_prob, frac_pos, marker="o", color="tab:blue", label="model")
    top.set_ylabel("fraction positive")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"{title}\nN={total}  base rate={base_rate:.3f}  ECE({ECE_BINS} bins)={ece:.4f}",
                  fontsize=10)

    widths = np.diff(edges)
    bottom.bar(edges[:-1], count, width=widths, align="edge", color="tab:blue", alpha=0.6, edgecolor="white")
    if filled.any():
        bottom.set_yscale("log")
    bottom.set_xlabel("mean predicted probability")
    bottom.set_ylabel("examples")
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
