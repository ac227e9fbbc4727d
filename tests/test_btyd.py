"""BG/NBD: formulas against numerical integration over (lambda, p), conditional expectations against
simulation, maximum-likelihood recovery of known parameters, RFM summaries, and the CDNOW figures."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import missing_shared_data
from scipy import integrate, optimize, special, stats

from seqjax.models import btyd
from seqjax.models.btyd import (
    DAY,
    BGNBDParams,
    count_between,
    expected_purchases,
    fit_bgnbd,
    log_likelihood,
    p_alive,
    prob_any_purchase,
    rfm_from_features,
    simulate,
    summarise_rfm,
)

CDNOW_LIKE = BGNBDParams(r=0.25, alpha=4.0, a=0.8, b=2.5)  # near FHL's CDNOW-sample estimates: a < 1, r < 1
SMOOTH = BGNBDParams(r=1.5, alpha=6.0, a=1.6, b=3.0)  # a > 1, r > 1: the other side of a = 1
QUAD_RTOL = 1e-7  # dblquad's requested relative error; the tests allow 10x that
HOLDOUT = 39.0


def reference(params, x, t_x, T, t):
    """(log-likelihood, P(alive), E[Y(t)]) by integrating over lambda ~ Gamma(r, alpha) and p ~ Beta(a, b)
    numerically. Variables are the priors' CDFs (u, v) in (0, 1)^2, which removes the densities'
    singularities at 0 for r < 1 or a < 1. Given (lambda, p): L = (1-p)^x lambda^x e^(-lambda T)
    (alive) + [x>0] p (1-p)^(x-1) lambda^x e^(-lambda t_x) (died after the last purchase), and an
    alive customer makes (1 - e^(-lambda p t)) / p purchases in the next t on average (FHL)."""
    def parts(v, u):
        lam = special.gammaincinv(params.r, u) / params.alpha
        p = special.betaincinv(params.a, params.b, v)
        alive = (1 - p) ** x * lam ** x * np.exp(-lam * T)
        dead = p * (1 - p) ** (x - 1) * lam ** x * np.exp(-lam * t_x) if x > 0 else 0.0
        return alive, dead, lam, p

    def integral(f):
        return integrate.dblquad(f, 0, 1, 0, 1, epsabs=0, epsrel=QUAD_RTOL)[0]

    total = integral(lambda v, u: sum(parts(v, u)[:2]))
    alive = integral(lambda v, u: parts(v, u)[0])

    def future(v, u):
        a, _, lam, p = parts(v, u)
        return a * -np.expm1(-lam * p * t) / p

    return np.log(total), alive / total, integral(future) / total


@pytest.mark.parametrize("params, customer", [
    (CDNOW_LIKE, (0, 0.0, 30.0)), (CDNOW_LIKE, (4, 30.0, 35.0)), (CDNOW_LIKE, (7, 36.9, 37.0)),
    (SMOOTH, (7, 36.9, 37.0)),
])
def test_formulas_match_numerical_integration(params, customer):
    ll, alive, future = reference(params, *customer, HOLDOUT)
    np.testing.assert_allclose(log_likelihood(params, *customer), ll, rtol=0, atol=10 * QUAD_RTOL)
    np.testing.assert_allclose(p_alive(params, *customer), alive, rtol=10 * QUAD_RTOL)
    np.testing.assert_allclose(expected_purchases(params, HOLDOUT, *customer), future, rtol=10 * QUAD_RTOL)


@pytest.mark.parametrize("params", [CDNOW_LIKE, SMOOTH])
def test_expected_purchases_euler_form_equals_the_printed_formula(params):
    """The transformed hypergeometric term against FHL's conditional expectation as printed (2F1(r+x, b+x;
    a+b+x-1; z) directly), at values where that does not overflow."""
    r, alpha, a, b = params.as_array()
    x = np.array([0, 1, 2, 5, 12, 30.0])
    t_x = np.array([0, 3.0, 20.0, 11.0, 38.0, 30.0])
    T = np.array([10.0, 39.0, 25.0, 39.0, 39.0, 31.0])
    for t in (1.0, 13.0, 39.0, 200.0):
        z = t / (alpha + T + t)
        printed = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x)
                                               * special.hyp2f1(r + x, b + x, a + b + x - 1, z))
        printed /= 1 + (x > 0) * a / (b + np.maximum(x - 1, 0)) * ((alpha + T) / (alpha + t_x)) ** (r + x)
        np.testing.assert_allclose(expected_purchases(params, t, x, t_x, T), printed, rtol=1e-10)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    T = rng.uniform(20, 39, 300)
    sim = simulate(CDNOW_LIKE, T, seed=1)
    for theta in (np.log(CDNOW_LIKE.as_array()), np.log(SMOOTH.as_array())):
        def total(th):
            return btyd._terms(th, sim["x"], sim["t_x"], T)[0].sum()
        numeric = optimize.approx_fprime(theta, total, 1e-7)
        analytic = btyd._terms(theta, sim["x"], sim["t_x"], T)[1].sum(axis=0)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-4)


def test_edge_cases():
    P = CDNOW_LIKE
    T = np.array([0.5, 10.0, 39.0, 1e4])
    assert np.all(p_alive(P, 0, 0.0, T) == 1.0)  # no repeat purchase: no chance to have died yet
    x = np.array([1.0, 3.0, 50.0])
    np.testing.assert_allclose(p_alive(P, x, 20.0, 20.0), (P.b + x - 1) / (P.a + P.b + x - 1), rtol=1e-12)
    alive = p_alive(P, 5, 10.0, np.array([10.0, 20.0, 40.0, 80.0]))
    assert np.all(np.diff(alive) < 0)  # the longer the silence, the likelier dead
    extreme = {"x": np.array([0, 1, 500, 500, 2000.0]), "t_x": np.array([0, 1e-3, 1e-2, 39.0, 1e4]),
               "T": np.array([1e-9, 1e5, 39.0, 39.0, 1e4])}
    for f in (lambda **k: p_alive(P, **k), lambda **k: expected_purchases(P, 39.0, **k),
              lambda **k: prob_any_purchase(P, 39.0, **k)):
        v = f(**extreme)
        assert np.all(np.isfinite(v)) and np.all(v >= 0)
    assert p_alive(P, **extreme)[2] < 1e-100  # 500 purchases, then silence for 39 periods
    assert np.all(prob_any_purchase(P, 39.0, **extreme) <= p_alive(P, **extreme))
    assert np.all(expected_purchases(P, 0.0, x, 5.0, 20.0) == 0)
    assert np.all(prob_any_purchase(P, 0.0, x, 5.0, 20.0) == 0)
    e = expected_purchases(P, np.array([1.0, 5.0, 20.0, 100.0]), 3, 15.0, 20.0)
    assert np.all(np.diff(e) > 0)
    np.testing.assert_allclose(prob_any_purchase(P, 13.0, 0, 0.0, 30.0),
                               1 - ((P.alpha + 30) / (P.alpha + 43)) ** P.r, rtol=1e-12)
    for bad in [(1, 5.0, 4.0), (0, 1.0, 4.0), (-1, 0.0, 4.0), (1.5, 1.0, 4.0)]:
        with pytest.raises(ValueError):
            p_alive(P, *bad)


def test_conditional_expectations_match_simulation():
    """Tower property: among customers grouped by their calibration data, the mean of E[Y | data] must equal
    the mean of simulated holdout purchases (and P(alive), P(any) the matching frequencies), within 4
    standard errors of the difference in each group."""
    rng = np.random.default_rng(5)
    T = rng.uniform(27.0, 39.0, 100_000)
    sim = simulate(CDNOW_LIKE, T, holdout=HOLDOUT, seed=6)
    x, t_x = sim["x"], sim["t_x"]
    predicted = {
        "holdout purchases": (expected_purchases(CDNOW_LIKE, HOLDOUT, x, t_x, T), sim["holdout"]),
        "alive": (p_alive(CDNOW_LIKE, x, t_x, T), sim["alive"]),
        "any purchase": (prob_any_purchase(CDNOW_LIKE, HOLDOUT, x, t_x, T), sim["holdout"] > 0),
    }
    recent = t_x > T / 2
    groups = {"all": x >= 0, "x=0": x == 0, "x=1 early": (x == 1) & ~recent, "x=1 recent": (x == 1) & recent,
              "x=2-4 early": (x >= 2) & (x <= 4) & ~recent, "x=2-4 recent": (x >= 2) & (x <= 4) & recent,
              "x>=5": x >= 5}
    for name, (pred, actual) in predicted.items():
        for g, mask in groups.items():
            assert mask.sum() > 500, g
            diff = actual[mask] - pred[mask]
            se = diff.std() / np.sqrt(mask.sum())
            assert abs(diff.mean()) <= 4 * se, f"{name}, {g}: {pred[mask].mean():.4f} vs {actual[mask].mean():.4f}"


def test_mle_recovers_parameters():
    """20,000 simulated customers (ages 27-39 periods, as a 12-week cohort seen for 39): every estimate within
    4 standard errors of the truth (a false alarm about 1 in 4,000 for a correct fit), standard errors small
    enough (< 12% of the value) that a wrong likelihood would not pass, and the likelihood-ratio statistic
    against the true parameters in [0, chi2_4 at 0.9999]."""
    rng = np.random.default_rng(0)
    T = rng.uniform(27.0, 39.0, 20_000)
    sim = simulate(CDNOW_LIKE, T, seed=1)
    fit = fit_bgnbd(sim["x"], sim["t_x"], T)
    assert fit.converged, fit.message
    est, se, true = fit.params.as_array(), fit.se.as_array(), CDNOW_LIKE.as_array()
    assert np.all(np.abs(est - true) < 4 * se), (fit.params, fit.se)
    assert np.all(se < 0.12 * true), fit.se
    lr = 2 * (fit.log_likelihood - log_likelihood(CDNOW_LIKE, sim["x"], sim["t_x"], T).sum())
    assert 0 <= lr < stats.chi2.ppf(0.9999, 4)
    other = fit_bgnbd(sim["x"], sim["t_x"], T, init=BGNBDParams(2.0, 0.5, 5.0, 0.3))
    np.testing.assert_allclose(other.params.as_array(), est, rtol=1e-4)


def test_summarise_rfm_and_holdout_counts():
    day = DAY
    # user 7: days 0, 0 (same time: one transaction), 3, 10; cutoff day 14; day 20 in the holdout
    # user 2: day 5 only; user 9: only after the cutoff
    user = np.array([7, 7, 2, 7, 9, 7, 7])
    ts = np.array([0, 0, 5, 3, 16, 10, 20]) * day + 1_000_000
    cutoff = 14 * day + 1_000_000
    rfm = summarise_rfm(user, ts, cutoff, period_days=7)
    np.testing.assert_array_equal(rfm.user, [2, 7])
    np.testing.assert_array_equal(rfm.x, [0, 2])
    np.testing.assert_allclose(rfm.t_x, [0, 10 / 7])
    np.testing.assert_allclose(rfm.T, [9 / 7, 14 / 7])
    np.testing.assert_array_equal(rfm.lookup(np.array([9, 7, 2])), [-1, 1, 0])
    np.testing.assert_array_equal(count_between(rfm.user, user, ts, cutoff, cutoff + 7 * day), [0, 1])

    rng = np.random.default_rng(0)  # against a loop
    user, ts = rng.integers(0, 40, 600), rng.integers(0, 100, 600) * day
    rfm = summarise_rfm(user, ts, 60 * day, period_days=1)
    for u, x, t_x, T in zip(rfm.user, rfm.x, rfm.t_x, rfm.T):
        times = sorted({int(t) for uu, t in zip(user, ts) if uu == u and t < 60 * day})
        assert (x, t_x, T) == (len(times) - 1, (times[-1] - times[0]) / day, (60 * day - times[0]) / day)
    assert len(rfm.user) == len({int(u) for u, t in zip(user, ts) if t < 60 * day})


def test_rfm_from_features_equals_summarise_rfm():
    """On a purchase-only log (distinct times), the task table's features give the same RFM as the log."""
    from seqjax.data.features import aggregate_features
    from seqjax.data.labels import TaskConfig, build_examples
    from seqjax.data.schema import EVENT_ID

    rng = np.random.default_rng(0)
    n = 3000
    user = rng.integers(0, 400, n)
    ts = 1_000_000_000 + rng.permutation(200 * DAY)[:n]  # distinct seconds over 200 days
    buy = np.full(n, EVENT_ID["purchase"])
    cfg = TaskConfig(horizon="30d", split_mode="customer_disjoint")
    ex = build_examples(user, np.zeros(n, np.int64), ts, buy, None, cfg)
    table = aggregate_features(user, np.zeros(n, np.int64), ts, buy, np.zeros(n, np.int64), None, ex, cfg)
    x, t_x, T = rfm_from_features(table)
    rfm = summarise_rfm(user, ts, int(ex.cutoffs.times[0]))
    rows = rfm.lookup(ex.user)
    assert np.all(rows >= 0)
    np.testing.assert_array_equal(x, rfm.x[rows])
    np.testing.assert_allclose(t_x, rfm.t_x[rows], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(T, rfm.T[rows], rtol=1e-12)
    mixed = aggregate_features(user, np.zeros(n, np.int64), ts, np.where(rng.random(n) < 0.1, 1, buy),
                               np.zeros(n, np.int64), None, ex, cfg)
    with pytest.raises(ValueError, match="other than purchases"):
        rfm_from_features(mixed)


def cdnow_purchases(shared_data_dir):
    from seqjax.data.formats import read_cdnow
    path = shared_data_dir / "cdnow" / "CDNOW_master.txt"
    if not path.is_file():
        missing_shared_data(f"CDNOW master file not found at {path}")
    raw = read_cdnow(path)
    user = pc.cast(raw.user, pa.int64()).to_numpy()
    ts = pc.cast(pc.strptime(raw.timestamp, "%Y-%m-%d", "s"), pa.int64()).to_numpy()
    return user, ts


def test_cdnow_calibration_and_holdout(shared_data_dir):
    """The full CDNOW master file (23,570 customers, all first buying in Q1 1997), weeks, 39 + 39 weeks from
    1997-01-01; same-day orders are one transaction. Figures this code gave (FHL's 1/10 sample of 2,357
    customers: r 0.243, alpha 4.414, a 0.793, b 2.426, LL -9582.4, a different sample)."""
    user, ts = cdnow_purchases(shared_data_dir)
    start = int(dt.datetime(1997, 1, 1, tzinfo=dt.UTC).timestamp())
    cutoff, end = start + 273 * DAY, start + 546 * DAY  # 1997-10-01, 1998-07-01
    rfm = summarise_rfm(user, ts, cutoff, period_days=7)
    cohort = rfm.first < int(dt.datetime(1997, 4, 1, tzinfo=dt.UTC).timestamp())
    assert cohort.all() and len(rfm.user) == 23_570
    assert rfm.x.sum() == 24_337
    # counted plainly: repeat transactions = distinct purchase days before the cutoff, less the first
    days = {}
    for u, s in zip(user.tolist(), ts.tolist()):
        days.setdefault(u, set()).add(s // DAY)
    assert sum(len({d for d in ds if d * DAY < cutoff}) - 1 for ds in days.values()) == 24_337
    assert sum(len({d for d in ds if cutoff <= d * DAY < end}) for ds in days.values()) == 19_684
    fit = fit_bgnbd(rfm.x, rfm.t_x, rfm.T)
    assert fit.converged
    # a maximum: moving any parameter 1% either way lowers the summed log-likelihood
    theta = fit.params.as_array()
    best = btyd.log_likelihood(fit.params, rfm.x, rfm.t_x, rfm.T).sum()
    np.testing.assert_allclose(best, fit.log_likelihood, rtol=1e-12)
    for i in range(4):
        for step in (0.99, 1.01):
            moved = btyd.BGNBDParams(*np.where(np.arange(4) == i, theta * step, theta))
            assert btyd.log_likelihood(moved, rfm.x, rfm.t_x, rfm.T).sum() < best, (i, step)
    np.testing.assert_allclose(fit.params.as_array(), [0.25066, 4.7650, 0.74602, 2.2160], rtol=1e-4)
    np.testing.assert_allclose(fit.log_likelihood, -95443.79, atol=0.01)
    actual = count_between(rfm.user, user, ts, cutoff, end)
    predicted = expected_purchases(fit.params, 39.0, rfm.x, rfm.t_x, rfm.T)
    assert actual.sum() == 19_684
    np.testing.assert_allclose(predicted.sum(), 16_622.9, atol=0.5)  # 15.5% under the actual holdout total
    any_purchase = prob_any_purchase(fit.params, 39.0, rfm.x, rfm.t_x, rfm.T)
    np.testing.assert_allclose([any_purchase.mean(), (actual > 0).mean()], [0.26351, 0.29945], atol=5e-5)
