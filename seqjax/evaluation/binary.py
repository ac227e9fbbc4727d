"""Binary metrics for purchase and churn prediction, with user-level (group) bootstrap intervals.

Protocol (report it with every number):
- `probs` are predicted probabilities of the positive class, in [0, 1]; `labels` are 0/1.
- Threshold metrics (accuracy, precision, recall, F1) predict positive when `prob >= threshold`.
  A 0/0 precision, recall or F1 is 0 (scikit-learn's default `zero_division`).
- ROC-AUC: probability that a random positive scores above a random negative, ties counting 1/2
  (the average-rank Mann-Whitney statistic). PR-AUC: average precision, the step-wise sum
  sum_k (R_k - R_{k-1}) P_k over descending distinct scores (scikit-learn's definition, no
  interpolation). With one class only both are NaN, with a warning.
- log_loss clips probabilities to [LOG_LOSS_EPS, 1 - LOG_LOSS_EPS], LOG_LOSS_EPS being float64's
  machine epsilon (2.2e-16), as scikit-learn does for float64 input.
- ECE: 15 equal-width bins, right-closed ((b/15, (b+1)/15], with 0 in the first bin), each weighted
  by its share of examples: sum_b n_b/N |mean prob_b - fraction positive_b|.

Bootstrap: an example belongs to a group (a user); intervals resample groups with replacement, so
that a user with many examples moves as one unit. Resample r is a row of multiplicities
counts[r, g] ~ Multinomial(G, 1/G), and every metric is computed from example weights
w_i = counts[r, group_i] without materialising the resample:
- log_loss, Brier, accuracy, precision, recall, F1 and ECE are ratios of sums, so per-group sums
  S[g, :] are taken once and each resample is one matrix product counts @ S.
- ROC-AUC and PR-AUC need cumulative weights over the score order, sorted once: with positives and
  negatives each sorted by score, cumsum of the gathered weights [r, N] gives, for every positive,
  the weighted negatives below / tied with it (ROC-AUC) and the weighted positives and negatives at
  or above it (precision at its score, for PR-AUC).
Resamples are drawn in blocks of RESAMPLE_BLOCK rows, block b from `default_rng([seed, b])`, so a
resample depends on (seed, index) only, and evaluated in row chunks of about 2^21 weights.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

METRICS = ("ROC-AUC", "PR-AUC", "log_loss", "Brier", "accuracy", "precision", "recall", "F1", "ECE")
RANK_METRICS = ("ROC-AUC", "PR-AUC")
ECE_BINS = 15
LOG_LOSS_EPS = float(np.finfo(np.float64).eps)
RESAMPLE_BLOCK = 25
_CHUNK_WEIGHTS = 1 << 21  # resample rows x examples held at once while evaluating a chunk

# Columns of the per-group linear statistics; then ECE_BINS sums of probs, then ECE_BINS of labels.
_N, _LOGLOSS, _SQERR, _POS, _PRED, _TP, _CORRECT = range(7)
_BIN_PROB = 7
_BIN_LABEL = _BIN_PROB + ECE_BINS


def ece_bin_index(probs: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each probability among `n_bins` equal-width, right-closed bins; int [N] in 0..n_bins-1.

    Bin b holds (b/n_bins, (b+1)/n_bins]; 0 falls in bin 0.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], probs, side="left")


def calibration_bins(labels, probs, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per-bin counts, mean probability and fraction positive (NaN in an empty bin), and the edges.

    Returns {"edges": [n_bins+1], "count": int [n_bins], "mean_prob": [n_bins], "frac_pos": [n_bins]}.
    """
    labels, probs = _check_labels_probs(labels, probs)
    bins = ece_bin_index(probs, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(bins, probs, minlength=n_bins) / count
        frac_pos = np.bincount(bins, labels, minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count,
            "mean_prob": mean_prob, "frac_pos": frac_pos}


def binary_metrics(labels, probs, threshold: float = 0.5) -> dict[str, float]:
    """Every metric in METRICS on the full sample, as floats (see the module docstring).

    labels: 0/1 or bool [N]; probs: float [N] in [0, 1]; threshold: predict positive when prob >= it.
    """
    prep = _prepare(labels, probs, None, threshold)
    _warn_if_one_class(prep, "binary_metrics")
    values = _metrics_from_counts(prep, np.ones((1, prep.num_groups)), METRICS)
    return {name: float(values[name][0]) for name in METRICS}


def best_f1_threshold(labels, probs) -> float:
    """The score t maximising F1 of `probs >= t`; pick it on validation, apply it on test.

    Candidates are the distinct scores (a threshold above the top score predicts nothing and has
    F1 = 0, never better). Ties in F1 (compared exactly, as 2TP/(PP+P) of integer counts) go to the
    highest threshold: the fewest positive predictions. Raises ValueError without positives, where
    every threshold has F1 = 0 and none is meaningful.
    """
    labels, probs = _check_labels_probs(labels, probs, probabilities=False)
    num_pos = int(labels.sum())
    if num_pos == 0:
        raise ValueError("best_f1_threshold needs at least one positive label; F1 is 0 at every threshold")
    order = np.argsort(-probs, kind="stable")
    scores, hits = probs[order], labels[order]
    last_of_level = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])  # descending distinct scores
    tp = np.cumsum(hits, dtype=np.int64)[last_of_level]
    predicted = last_of_level + 1
    f1 = 2.0 * tp / (predicted + num_pos)
    return float(scores[last_of_level[np.argmax(f1)]])  # argmax: first, i.e. highest, of the ties


def bootstrap_ci(labels, probs, groups, threshold: float = 0.5, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile interval (lo, hi) of every metric in METRICS, resampling groups with replacement.

    groups: [N] the group (user) of each example, any dtype; None makes each example its own group.
    Resamples in which a metric is undefined (ROC-AUC, PR-AUC with one class) are left out of its
    interval, with a warning that says how many.
    """
    _check_level(level)
    prep = _prepare(labels, probs, groups, threshold)
    _warn_if_one_class(prep, "bootstrap_ci")
    stats = _bootstrap([prep], METRICS, n_resamples, seed)[0]
    return {name: _percentile_interval(stats[name], level, name) for name in METRICS}


def paired_bootstrap_diff(labels, probs_a, probs_b, groups, metric: str, threshold_a: float = 0.5,
                          threshold_b: float | None = None, n_resamples: int = 1000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float, float]:
    """metric(A) - metric(B) on the same examples: (full-sample difference, lo, hi).

    Both models are scored on the same group resamples (the same rows of counts as `bootstrap_ci`
    with this seed), so the interval reflects the paired comparison; an interval that excludes 0
    says the difference is not a resampling accident at this level. threshold_b defaults to
    threshold_a. The point estimate is the difference on the full sample, not the resample mean.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    _check_level(level)
    prep_a = _prepare(labels, probs_a, groups, threshold_a)
    prep_b = _prepare(labels, probs_b, groups, threshold_a if threshold_b is None else threshold_b)
    _warn_if_one_class(prep_a, "paired_bootstrap_diff")
    full = [_metrics_from_counts(p, np.ones((1, p.num_groups)), (metric,))[metric][0]
            for p in (prep_a, prep_b)]
    stats_a, stats_b = _bootstrap([prep_a, prep_b], (metric,), n_resamples, seed)
    lo, hi = _percentile_interval(stats_a[metric] - stats_b[metric], level, metric)
    return float(full[0] - full[1]), lo, hi


def group_resample_counts(num_groups: int, n_resamples: int, seed: int):
    """Yields int64 [rows, num_groups] multiplicity blocks; rows sum to num_groups.

    Block b holds resamples b*RESAMPLE_BLOCK ... and comes from `default_rng([seed, b])`, so a
    resample's counts do not depend on how the resamples are chunked for evaluation.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1; got {n_resamples}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    for block, start in enumerate(range(0, n_resamples, RESAMPLE_BLOCK)):
        rows = min(RESAMPLE_BLOCK, n_resamples - start)
        draws = np.random.default_rng([seed, block]).integers(0, num_groups, size=(rows, num_groups))
        flat = (draws + num_groups * np.arange(rows)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * num_groups).reshape(rows, num_groups)


def metrics_from_group_counts(labels, probs, groups, threshold: float, counts: np.ndarray,
                              names: tuple[str, ...] = METRICS) -> dict[str, np.ndarray]:
    """Each metric for each row of group multiplicities counts [R, G]: {name: float [R]}.

    Group g is the g-th of `np.unique(groups)`. This is the weighted path that `bootstrap_ci`
    runs; it is public so that it can be checked against explicitly materialised resamples.
    """
    prep = _prepare(labels, probs, groups, threshold)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != prep.num_groups:
        raise ValueError(f"counts must be [R, {prep.num_groups}]; got {counts.shape}")
    return _metrics_from_counts(prep, counts, names)


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """What every resample reuses: per-group sums and the score order, computed once.

    linear: float64 [G, 7 + 2 * ECE_BINS] per-group sums (see the column constants).
    pos_group, neg_group: int [P], [Q] the group of each positive / negative, in ascending score.
    neg_below, neg_at_or_below: int [P] negatives scoring < / <= each positive's score.
    pos_below: int [P] positives scoring < each positive's score.
    """
    num_groups: int
    num_examples: int
    linear: np.ndarray
    pos_group: np.ndarray
    neg_group: np.ndarray
    neg_below: np.ndarray
    neg_at_or_below: np.ndarray
    pos_below: np.ndarray


def _check_labels_probs(labels, probs, probabilities: bool = True) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or probs.shape != labels.shape:
        raise ValueError(f"labels and probs must be 1-D of equal length; "
                         f"got {labels.shape} and {probs.shape}")
    if labels.size == 0:
        raise ValueError("need at least one example")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0/1; got values {np.unique(labels)[:10]}")
    if not np.isfinite(probs).all():
        raise ValueError("probs must be finite (no NaN or inf)")
    if probabilities and (probs.min() < 0.0 or probs.max() > 1.0):
        raise ValueError(f"probs must lie in [0, 1]; got [{probs.min()}, {probs.max()}]")
    return labels.astype(np.float64), probs


def _prepare(labels, probs, groups, threshold: float) -> _Prepared:
    labels, probs = _check_labels_probs(labels, probs)
    n = labels.size
    if groups is None:
        group_of, num_groups = np.arange(n), n
    else:
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ValueError(f"groups must be [N] = [{n}]; got {groups.shape}")
        uniques, group_of = np.unique(groups, return_inverse=True)
        group_of, num_groups = group_of.reshape(-1), len(uniques)

    clipped = np.clip(probs, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    pred = (probs >= threshold).astype(np.float64)
    features = np.zeros((n, _BIN_LABEL + ECE_BINS))
    features[:, _N] = 1.0
    features[:, _LOGLOSS] = -(labels * np.log(clipped) + (1.0 - labels) * np.log1p(-clipped))
    features[:, _SQERR] = (probs - labels) ** 2
    features[:, _POS] = labels
    features[:, _PRED] = pred
    features[:, _TP] = labels * pred
    features[:, _CORRECT] = pred == labels
    bins = ece_bin_index(probs)
    features[np.arange(n), _BIN_PROB + bins] = probs
    features[np.arange(n), _BIN_LABEL + bins] = labels
    if groups is None:
        linear = features
    else:  # sum the rows of each group: a sparse one-hot [G, N] times features
        order = np.argsort(group_of, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(group_of[order]) != 0])
        linear = np.add.reduceat(features[order], starts, axis=0)

    is_pos = labels == 1.0
    pos_scores, neg_scores = probs[is_pos], probs[~is_pos]
    pos_order, neg_order = np.argsort(pos_scores, kind="stable"), np.argsort(neg_scores, kind="stable")
    pos_sorted, neg_sorted = pos_scores[pos_order], neg_scores[neg_order]
    return _Prepared(
        num_groups=num_groups, num_examples=n, linear=linear,
        pos_group=group_of[is_pos][pos_order], neg_group=group_of[~is_pos][neg_order],
        neg_below=np.searchsorted(neg_sorted, pos_sorted, side="left"),
        neg_at_or_below=np.searchsorted(neg_sorted, pos_sorted, side="right"),
        pos_below=np.searchsorted(pos_sorted, pos_sorted, side="left"))


def _divide(num: np.ndarray, den: np.ndarray, zero_value: float) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, zero_value)
    return np.divide(num, den, out=out, where=den != 0)


def _metrics_from_counts(prep: _Prepared, counts: np.ndarray, names) -> dict[str, np.ndarray]:
    """counts: float64 [R, G] group multiplicities -> {name: float64 [R]}."""
    # einsum, not `@`: OpenBLAS threading on this small product only adds contention on a busy host.
    lin = np.einsum("rg,gf->rf", counts, prep.linear)  # [R, F]
    n, pos, pred, tp = lin[:, _N], lin[:, _POS], lin[:, _PRED], lin[:, _TP]
    out = {
        "log_loss": lin[:, _LOGLOSS] / n,
        "Brier": lin[:, _SQERR] / n,
        "accuracy": lin[:, _CORRECT] / n,
        "precision": _divide(tp, pred, 0.0),
        "recall": _divide(tp, pos, 0.0),
        "F1": _divide(2.0 * tp, pred + pos, 0.0),
        "ECE": np.abs(lin[:, _BIN_PROB:_BIN_LABEL] - lin[:, _BIN_LABEL:]).sum(axis=1) / n,
    }
    if any(name in RANK_METRICS for name in names):
        out.update(_rank_metrics(prep, counts))
    return {name: out[name] for name in names}


def _rank_metrics(prep: _Prepared, counts: np.ndarray) -> dict[str, np.ndarray]:
    """ROC-AUC and PR-AUC for each row of counts [R, G], from cumulative weights in score order."""
    rows = counts.shape[0]
    if prep.pos_group.size == 0 or prep.neg_group.size == 0:
        nan = np.full(rows, np.nan)
        return {"ROC-AUC": nan, "PR-AUC": nan.copy()}
    w_pos = np.take(counts, prep.pos_group, axis=1)  # [R, P] weight of each positive, ascending score
    neg_cum = np.zeros((rows, prep.neg_group.size + 1))
    np.cumsum(np.take(counts, prep.neg_group, axis=1), axis=1, out=neg_cum[:, 1:])
    pos_cum = np.zeros((rows, prep.pos_group.size + 1))
    np.cumsum(w_pos, axis=1, out=pos_cum[:, 1:])
    total_neg, total_pos = neg_cum[:, -1:], pos_cum[:, -1:]

    below = np.take(neg_cum, prep.neg_below, axis=1)  # weighted negatives strictly below each positive
    # Mann-Whitney U with ties as 1/2: sum_i w_i (below_i + at_or_below_i) / 2.
    u_stat = 0.5 * (w_pos * (below + np.take(neg_cum, prep.neg_at_or_below, axis=1))).sum(axis=1)
    # Precision at threshold s_i: weighted positives and negatives scoring >= s_i.
    tp = total_pos - np.take(pos_cum, prep.pos_below, axis=1)
    fp = total_neg - below
    precision = _divide(tp, tp + fp, 0.0)  # 0/0 only where w_i = 0, whose term vanishes anyway
    ap_sum = (w_pos * precision).sum(axis=1)

    defined = (total_pos[:, 0] > 0) & (total_neg[:, 0] > 0)
    auc = np.where(defined, _divide(u_stat, (total_pos * total_neg)[:, 0], np.nan), np.nan)
    ap = np.where(defined, _divide(ap_sum, total_pos[:, 0], np.nan), np.nan)
    return {"ROC-AUC": auc, "PR-AUC": ap}


def _bootstrap(preps: list[_Prepared], names, n_resamples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Each metric over the same group resamples for every prepared model: [{name: float [R]}]."""
    num_groups, num_examples = preps[0].num_groups, preps[0].num_examples
    chunk = max(1, _CHUNK_WEIGHTS // num_examples)
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in preps]
    for block in group_resample_counts(num_groups, n_resamples, seed):
        block = block.astype(np.float64)
        for start in range(0, block.shape[0], chunk):
            for prep, part in zip(preps, parts):
                part.append(_metrics_from_counts(prep, block[start:start + chunk], names))
    return [{name: np.concatenate([p[name] for p in part]) for name in names} for part in parts]


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")


def _percentile_interval(values: np.ndarray, level: float, name: str) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    if finite.size < values.size:
        warnings.warn(f"{name}: {values.size - finite.size} of {values.size} resamples hold one class only; "
                      f"the interval uses the other {finite.size}", RuntimeWarning, stacklevel=3)
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(lo), float(hi)


def _warn_if_one_class(prep: _Prepared, caller: str) -> None:
    if prep.pos_group.size == 0 or prep.neg_group.size == 0:
        warnings.warn(f"{caller}: labels hold one class only ({prep.pos_group.size} positives of "
                      f"{prep.num_examples}); ROC-AUC and PR-AUC are undefined and set to NaN",
                      RuntimeWarning, stacklevel=3)
