"""Binary metrics against scikit-learn and brute force; weighted bootstrap against materialised resamples."""

import struct
from fractions import Fraction

import numpy as np
import pytest
from sklearn import metrics as skm

from seqjax.evaluation import binary
from seqjax.evaluation.binary import (
    METRICS,
    best_f1_threshold,
    binary_metrics,
    bootstrap_ci,
    group_resample_counts,
    metrics_from_group_counts,
    paired_bootstrap_diff,
)
from seqjax.evaluation.reliability import reliability_plot

# float64 reformulations of the same sums (different order only): fixed here, never loosened.
RTOL, ATOL = 1e-10, 1e-12


def tied_case(rng, n, levels, base_rate=0.3):
    """Probabilities on `levels` values in [0, 1], 0 and 1 included: many ties. Labels follow them."""
    probs = rng.integers(0, levels, size=n) / (levels - 1)
    labels = (rng.random(n) < base_rate + 0.4 * (probs - 0.5)).astype(np.int64)
    return labels, probs


def slow_ece(labels, probs, n_bins=15):
    """Bin (lo, hi], 0 in the first bin; a plain loop over bins and examples."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        members = [i for i, p in enumerate(probs)
                   if (edges[b] < p <= edges[b + 1]) or (b == 0 and p == 0.0)]
        if members:
            mean_p = sum(probs[i] for i in members) / len(members)
            frac = sum(labels[i] for i in members) / len(members)
            total += len(members) * abs(mean_p - frac)
    return total / len(probs)


def sklearn_metrics(labels, probs, threshold):
    pred = (probs >= threshold).astype(int)
    return {"ROC-AUC": skm.roc_auc_score(labels, probs),
            "PR-AUC": skm.average_precision_score(labels, probs),
            "log_loss": skm.log_loss(labels, probs, labels=[0, 1]),
            "Brier": skm.brier_score_loss(labels, probs),
            "accuracy": skm.accuracy_score(labels, pred),
            "precision": skm.precision_score(labels, pred, zero_division=0),
            "recall": skm.recall_score(labels, pred, zero_division=0),
            "F1": skm.f1_score(labels, pred, zero_division=0)}


@pytest.mark.parametrize("levels", [3, 11, 1000])
@pytest.mark.parametrize("threshold", [0.5, 0.3, 1.01])  # 0.5 is a tie level (>=); 1.01 predicts nothing
def test_metrics_match_sklearn_and_slow_ece(levels, threshold):
    rng = np.random.default_rng(levels)
    labels, probs = tied_case(rng, 700, levels)
    got = binary_metrics(labels, probs, threshold)
    assert list(got) == list(METRICS)
    for name, want in sklearn_metrics(labels, probs, threshold).items():
        np.testing.assert_allclose(got[name], want, rtol=RTOL, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(got["ECE"], slow_ece(labels, probs), rtol=RTOL, atol=ATOL)


def test_ece_bins_are_right_closed_at_every_edge():
    edges = np.linspace(0.0, 1.0, 16)
    assert binary.ece_bin_index(edges).tolist() == [0] + list(range(15))  # b/15 closes bin b-1
    rng = np.random.default_rng(5)
    probs = rng.choice(edges, size=400)  # every probability on an edge
    labels = (rng.random(400) < probs).astype(np.int64)
    np.testing.assert_allclose(binary_metrics(labels, probs)["ECE"], slow_ece(labels, probs),
                               rtol=RTOL, atol=ATOL)


def test_auc_ties_by_hand_and_log_loss_clipping():
    # Pairs (pos, neg): (0.5, 0.5) = 1/2, (0.5, 0.2) = 1, (0.8, 0.5) = 1, (0.8, 0.2) = 1 -> 3.5 / 4.
    got = binary_metrics([1, 0, 1, 0], [0.5, 0.5, 0.8, 0.2])
    assert got["ROC-AUC"] == 0.875
    # A confident miss costs -log(eps): the clip, not an infinity.
    got = binary_metrics([1, 0], [0.0, 0.0])
    assert got["log_loss"] == pytest.approx(-np.log(binary.LOG_LOSS_EPS) / 2, rel=RTOL)


def test_one_class_gives_nan_aucs_with_a_warning():
    with pytest.warns(RuntimeWarning, match="one class only"):
        got = binary_metrics([0, 0, 0], [0.1, 0.4, 0.9])
    assert np.isnan(got["ROC-AUC"]) and np.isnan(got["PR-AUC"])
    assert got["accuracy"] == pytest.approx(2 / 3) and got["precision"] == 0.0 and got["recall"] == 0.0


@pytest.mark.parametrize("bad, match", [(([0, 2], [0.1, 0.2]), "0/1"), (([0, 1], [0.1, 1.2]), r"\[0, 1\]"),
                                        (([0, 1], [0.1]), "equal length"),
                                        (([0, 1], [np.nan, 0.2]), "finite")])
def test_bad_inputs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        binary_metrics(*bad)


def brute_best_f1(labels, probs):
    """Every distinct score as a threshold, exact F1 as a fraction; ties go to the highest threshold."""
    best = None
    for t in sorted(set(probs.tolist()), reverse=True):
        pred = probs >= t
        tp = int(np.sum(pred & (labels == 1)))
        f1 = Fraction(2 * tp, int(pred.sum()) + int(labels.sum()))
        if best is None or f1 > best[0]:
            best = (f1, t)
    return best


@pytest.mark.parametrize("seed, levels", [(0, 4), (1, 9), (2, 50), (3, 100_000)])
def test_best_f1_threshold_matches_a_brute_force_scan(seed, levels):
    labels, probs = tied_case(np.random.default_rng(seed), 300, levels, base_rate=0.2)
    f1, t = brute_best_f1(labels, probs)
    assert best_f1_threshold(labels, probs) == t
    assert skm.f1_score(labels, probs >= t) == pytest.approx(float(f1), rel=RTOL)


def test_best_f1_tie_goes_to_the_highest_threshold_and_needs_a_positive():
    # F1 = 2TP / (PP + P), P = 2. t=0.9: 2/(1+2) = 2/3; t=0.5: 4/(4+2) = 2/3; t=0.1: 4/(6+2) = 1/2.
    labels = np.array([1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.1])
    assert best_f1_threshold(labels, probs) == 0.9
    with pytest.raises(ValueError, match="positive"):
        best_f1_threshold([0, 0], [0.2, 0.4])


def grouped_case(seed, num_groups, per_group=5, levels=20):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 2 * per_group, size=num_groups)
    groups = np.repeat(np.array([f"user{g:05d}" for g in range(num_groups)]), sizes)  # any dtype
    labels, probs = tied_case(rng, len(groups), levels)
    return labels, probs, groups


def materialised(labels, probs, groups, threshold, counts):
    """Slow reference: each resample built explicitly, every example of group g repeated counts[g] times."""
    _, group_of = np.unique(groups, return_inverse=True)
    rows = []
    for row in counts:
        repeat = row[group_of]
        rows.append(binary_metrics(np.repeat(labels, repeat), np.repeat(probs, repeat), threshold))
    return {name: np.array([r[name] for r in rows]) for name in METRICS}


def test_weighted_path_equals_materialised_resamples():
    labels, probs, groups = grouped_case(0, num_groups=60)
    counts = next(group_resample_counts(60, 6, seed=3))
    assert counts.shape == (6, 60) and (counts.sum(axis=1) == 60).all() and (counts == 0).any()
    got = metrics_from_group_counts(labels, probs, groups, 0.4, counts)
    want = materialised(labels, probs, groups, 0.4, counts)
    for name in METRICS:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


def test_bootstrap_ci_is_the_percentile_of_materialised_resamples_whatever_the_chunking(monkeypatch):
    labels, probs, groups = grouped_case(1, num_groups=40)
    counts = np.concatenate(list(group_resample_counts(40, 30, seed=7)))  # two blocks
    want = materialised(labels, probs, groups, 0.5, counts)
    ci = bootstrap_ci(labels, probs, groups, 0.5, n_resamples=30, seed=7, level=0.9)
    monkeypatch.setattr(binary, "_CHUNK_WEIGHTS", 1)  # one resample per chunk
    ci_one_row = bootstrap_ci(labels, probs, groups, 0.5, n_resamples=30, seed=7, level=0.9)
    for name in METRICS:
        np.testing.assert_allclose(ci[name], np.percentile(want[name], [5, 95]), rtol=RTOL, atol=ATOL,
                                   err_msg=name)
        np.testing.assert_allclose(ci_one_row[name], ci[name], rtol=RTOL, atol=ATOL, err_msg=name)


def smooth_case(seed, num_groups, per_group=5):
    """A miscalibrated model (probs sharpened around 0.5): every metric is a smooth mean-like statistic."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(num_groups), per_group)
    truth = rng.random(len(groups))
    labels = (rng.random(len(groups)) < truth).astype(np.int64)
    probs = np.clip(0.5 + 1.4 * (truth - 0.5) + 0.05 * rng.standard_normal(len(groups)), 0, 1)
    return labels, probs, groups


def test_intervals_contain_the_estimate_and_shrink_like_one_over_sqrt_n():
    small = smooth_case(0, num_groups=800)
    large = smooth_case(1, num_groups=3200)
    widths = {}
    for name_case, (labels, probs, groups) in {"small": small, "large": large}.items():
        full = binary_metrics(labels, probs, 0.5)
        ci = bootstrap_ci(labels, probs, groups, 0.5, n_resamples=400, seed=0)
        for name in METRICS:
            lo, hi = ci[name]
            assert lo < full[name] < hi, (name_case, name, lo, full[name], hi)
        widths[name_case] = {name: ci[name][1] - ci[name][0] for name in METRICS}
    # 4x the data: widths halve. Bound: a 95% percentile width from 400 resamples has a Monte Carlo
    # relative sd of about 5% (endpoint quantile sd ~ sqrt(.025*.975/400)/phi(1.96) sigma = 0.13 sigma
    # on a 3.92 sigma width), ~7% for a ratio of two; +-0.15 around 0.5 is ~4 sd.
    for name in METRICS:
        ratio = widths["large"][name] / widths["small"][name]
        assert 0.35 < ratio < 0.65, (name, ratio)


def test_groups_are_resampled_as_units():
    # Ten examples per group sharing label and (nearly) probability: the effective sample is the
    # groups, so group intervals are ~sqrt(10) = 3.2x wider than example intervals; asking 1.8x.
    rng = np.random.default_rng(0)
    num_groups, size = 300, 10
    group_label = (rng.random(num_groups) < 0.4).astype(np.int64)
    group_prob = np.clip(0.4 + 0.3 * (group_label - 0.4) + 0.2 * rng.standard_normal(num_groups), 0, 1)
    groups = np.repeat(np.arange(num_groups), size)
    labels = group_label[groups]
    probs = np.clip(group_prob[groups] + 0.01 * rng.standard_normal(len(groups)), 0, 1)
    by_group = bootstrap_ci(labels, probs, groups, 0.5, n_resamples=300, seed=0)
    by_example = bootstrap_ci(labels, probs, None, 0.5, n_resamples=300, seed=0)
    for name in METRICS:
        ratio = (by_group[name][1] - by_group[name][0]) / (by_example[name][1] - by_example[name][0])
        assert ratio > 1.8, (name, ratio)


def test_resamples_with_one_class_are_counted_and_left_out():
    labels = np.zeros(20, np.int64)
    labels[0] = 1
    probs = np.linspace(0.05, 0.95, 20)
    with pytest.warns(RuntimeWarning, match=r"of 200 resamples hold one class only"):
        ci = bootstrap_ci(labels, probs, np.arange(20), n_resamples=200, seed=0)
    assert np.isfinite(ci["ROC-AUC"]).all()


@pytest.mark.parametrize("metric", METRICS)
def test_paired_diff_of_a_model_with_itself_is_exactly_zero(metric):
    labels, probs, groups = grouped_case(2, num_groups=50)
    got = paired_bootstrap_diff(labels, probs, probs.copy(), groups, metric, 0.5, n_resamples=50)
    assert got == (0.0, 0.0, 0.0)


def test_paired_diff_uses_the_same_resamples_for_both_models():
    labels, probs_a, groups = grouped_case(3, num_groups=50)
    probs_b = np.clip(probs_a + 0.3 * np.random.default_rng(9).standard_normal(len(probs_a)), 0, 1)
    diff, lo, hi = paired_bootstrap_diff(labels, probs_a, probs_b, groups, "ROC-AUC", n_resamples=20, seed=5)
    counts = np.concatenate(list(group_resample_counts(50, 20, seed=5)))
    per_resample = (metrics_from_group_counts(labels, probs_a, groups, 0.5, counts)["ROC-AUC"]
                    - metrics_from_group_counts(labels, probs_b, groups, 0.5, counts)["ROC-AUC"])
    np.testing.assert_allclose((lo, hi), np.percentile(per_resample, [2.5, 97.5]), rtol=RTOL, atol=ATOL)
    full = binary_metrics(labels, probs_a)["ROC-AUC"] - binary_metrics(labels, probs_b)["ROC-AUC"]
    assert diff == pytest.approx(full, rel=RTOL) and 0 < lo < diff < hi  # the noisier model B is worse


def test_reliability_plot_writes_a_valid_png(tmp_path):
    labels, probs = tied_case(np.random.default_rng(0), 500, 1000)
    path = reliability_plot(labels, probs, tmp_path / "plots" / "reliability.png", "purchase, valid")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (550, 650)  # figsize 5.5 x 6.5 in at 100 dpi
    assert len(data) > 10_000
