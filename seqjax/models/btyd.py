"""BG/NBD "buy till you die" (Fader, Hardie & Lee 2005): repeat purchasing from calibration-period RFM.

Model, per customer, from their first purchase at time 0 (time in periods, e.g. weeks):
* while alive, purchases come as a Poisson process with rate lambda ~ Gamma(shape r, rate alpha);
* after every repeat purchase the customer dies (for good) with probability p ~ Beta(a, b);
  no death at the first purchase, so a customer with no repeat purchase is alive.
Data per customer: x repeat purchases in (0, T], the time t_x of the last one (0 if x = 0), age T.

Formulas (FHL 2005; P(alive) from Fader and Hardie's note on it), with z = t / (alpha + T + t):
* LL_i = ln G(r+x) - ln G(r) + r ln alpha + ln B(a, b+x) - ln B(a, b)
         + ln[ (alpha+T)^-(r+x) + [x>0] a/(b+x-1) (alpha+t_x)^-(r+x) ]      (no hypergeometric function)
* P(alive | x, t_x, T) = 1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))
* E[Y(t) | x, t_x, T] = (a+b+x-1)/(a-1) [1 - (1-z)^(r+x) 2F1(r+x, b+x; a+b+x-1; z)] P(alive)
  computed through Euler's transformation (1-z)^(r+x) 2F1(r+x, b+x; a+b+x-1; z)
  = (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z): small upper parameters whatever x is, so the series
  converges fast and nothing overflows; (1-z)^(r+x) 2F1(...) itself would overflow for large x. The
  formula holds for a < 1 as well as a > 1; at a = 1 exactly it is 0/0 (not handled).
* P(at least one purchase in (T, T+t] | x, t_x, T) = P(alive) (1 - ((alpha+T)/(alpha+T+t))^(r+x)):
  an alive customer cannot die before their next purchase, so given lambda it is 1 - exp(-lambda t);
  given alive, the posterior of lambda is Gamma(r+x, alpha+T) (the likelihood of the alive branch is
  lambda^x e^(-lambda T) (1-p)^x, which factorises), and E[exp(-lambda t)] under it is the power.

Fitting: maximum likelihood over log(r, alpha, a, b) with L-BFGS-B and the analytic gradient, on the
distinct (x, t_x, T) rows weighted by their counts. Standard errors: the inverse observed information
(central differences of the analytic gradient, on the log scale), mapped by the delta method.

RFM comes from a purchase log (`summarise_rfm`: one transaction per distinct timestamp) or, for
purchase-only data such as CDNOW, from the task table's features (`rfm_from_features`). `simulate`
draws customers from the generative process (tests, and checking a fit against its own model).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import optimize, special

DAY = 86_400
LOG_BOUNDS = (-12.0, 12.0)  # log-parameter box for the optimiser: parameters in [6e-6, 1.6e5]
HESSIAN_STEP = 1e-5  # central-difference step on the log scale


@dataclasses.dataclass(frozen=True)
class BGNBDParams:
    r: float  # shape of the purchase-rate gamma
    alpha: float  # rate of the purchase-rate gamma (in 1 / period): mean rate r / alpha
    a: float  # beta of the dropout probability: mean a / (a + b)
    b: float

    def as_array(self) -> np.ndarray:
        return np.array([self.r, self.alpha, self.a, self.b])


@dataclasses.dataclass(frozen=True)
class BGNBDFit:
    params: BGNBDParams
    log_likelihood: float  # total over customers, at params
    se: BGNBDParams  # standard errors (delta method from the log-scale information); NaN if singular
    log_cov: np.ndarray  # float64 [4, 4] covariance of log(r, alpha, a, b)
    customers: int
    converged: bool
    message: str  # the optimiser's
    iterations: int


@dataclasses.dataclass(frozen=True)
class RFM:
    """Calibration summaries of the customers with a purchase before the cutoff, sorted by user (C rows)."""

    user: np.ndarray  # int64 [C]
    x: np.ndarray  # float64 [C] repeat purchases: distinct purchase times after the first, before the cutoff
    t_x: np.ndarray  # float64 [C] periods from the first purchase to the last (0 when x = 0)
    T: np.ndarray  # float64 [C] periods from the first purchase to the cutoff
    first: np.ndarray  # int64 [C] unix seconds of the first purchase
    period_days: float

    def lookup(self, users: np.ndarray) -> np.ndarray:
        """int64 [n]: row of each user, -1 for users without a purchase before the cutoff."""
        users = np.asarray(users, np.int64)
        pos = np.minimum(np.searchsorted(self.user, users), max(len(self.user) - 1, 0))
        found = (self.user[pos] == users) if len(self.user) else np.zeros(len(users), bool)
        return np.where(found, pos, -1)


def summarise_rfm(user: np.ndarray, ts: np.ndarray, cutoff: int, period_days: float = 7.0) -> RFM:
    """RFM of every user from a purchase log (user int [N], ts int64 unix seconds [N], any order).

    Only purchases strictly before `cutoff` count. Purchases at the same timestamp are one transaction
    (CDNOW has day-resolution dates, where this merges same-day orders, as Fader and Hardie do).
    """
    user, ts = np.asarray(user, np.int64), np.asarray(ts, np.int64)
    if not period_days > 0:
        raise ValueError(f"period_days must be > 0, got {period_days}")
    keep = ts < cutoff
    pairs = np.unique(np.stack([user[keep], ts[keep]], axis=1), axis=0)  # sorted by user, then time
    u, t = pairs[:, 0], pairs[:, 1]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(u)]
    period = period_days * DAY
    first, last = t[starts], t[ends - 1]
    return RFM(user=u[starts], x=(ends - starts - 1).astype(np.float64), t_x=(last - first) / period,
               T=(cutoff - first) / period, first=first, period_days=float(period_days))


def rfm_from_features(table: pa.Table, period_days: float = 7.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T) float64 [N] of every row of a task table (seqjax.data.features columns), in periods.

    x = n_purchase - 1, T = secs_since_first_event, t_x = T - secs_since_last_purchase. Right only for
    purchase-only logs (CDNOW), where the first event is the first purchase (a row with other events
    raises ValueError), and tasks without a feature_window (all history before the cutoff). Every
    purchase event counts, so same-day orders kept by prepare are separate transactions here, unlike
    `summarise_rfm`, which merges purchases at one timestamp.
    """
    need = ("n_events", "n_purchase", "secs_since_first_event", "secs_since_last_purchase")
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}")
    events, buys, first, last = (pc.cast(table.column(c), pa.float64()).to_numpy(zero_copy_only=False)
                                 for c in need)
    if np.any(events != buys) or np.any(buys < 1):
        raise ValueError("rows with events other than purchases (or none): the first event need not be the first "
                         "purchase; use summarise_rfm on the purchase log")
    period = period_days * DAY
    return buys - 1, (first - last) / period, first / period


def count_between(rfm_users: np.ndarray, user: np.ndarray, ts: np.ndarray, start: int, end: int) -> np.ndarray:
    """float64 [C]: distinct purchase times of each of `rfm_users` in [start, end) (holdout transactions)."""
    user, ts = np.asarray(user, np.int64), np.asarray(ts, np.int64)
    keep = (ts >= start) & (ts < end)
    pairs = np.unique(np.stack([user[keep], ts[keep]], axis=1), axis=0)
    who, n = np.unique(pairs[:, 0], return_counts=True)
    rfm_users = np.asarray(rfm_users, np.int64)
    pos = np.minimum(np.searchsorted(who, rfm_users), max(len(who) - 1, 0))
    hit = (who[pos] == rfm_users) if len(who) else np.zeros(len(rfm_users), bool)
    return np.where(hit, n[pos] if len(who) else 0, 0).astype(np.float64)


def _check(x, t_x, T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, t_x, T = (np.asarray(v, np.float64) for v in (x, t_x, T))
    x, t_x, T = np.broadcast_arrays(x, t_x, T)
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise ValueError("x (repeat purchases) must be whole numbers >= 0")
    if np.any(t_x < 0) or np.any(t_x > T):
        raise ValueError("need 0 <= t_x <= T")
    if np.any((x == 0) & (t_x != 0)):
        raise ValueError("t_x must be 0 when x = 0")
    return x, t_x, T


def _terms(theta: np.ndarray, x, t_x, T):
    """Per-customer LL [C] and its gradient [C, 4] with respect to log(r, alpha, a, b)."""
    r, alpha, a, b = np.exp(theta)
    buyer = x > 0
    xm1 = np.where(buyer, x - 1, 0.0)
    A1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    A2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    A3 = -(r + x) * np.log(alpha + T)
    A4 = np.where(buyer, np.log(a) - np.log(b + xm1) - (r + x) * np.log(alpha + t_x), -np.inf)
    lse = np.logaddexp(A3, A4)
    w3, w4 = np.exp(A3 - lse), np.exp(A4 - lse)
    d_r = special.digamma(r + x) - special.digamma(r) + np.log(alpha) - w3 * np.log(alpha + T) \
        - w4 * np.log(alpha + t_x)
    d_alpha = r / alpha - w3 * (r + x) / (alpha + T) - w4 * (r + x) / (alpha + t_x)
    d_a = special.digamma(a + b) - special.digamma(a + b + x) + w4 / a
    d_b = special.digamma(a + b) + special.digamma(b + x) - special.digamma(b) - special.digamma(a + b + x) \
        - w4 / (b + xm1)
    grad = np.stack([d_r * r, d_alpha * alpha, d_a * a, d_b * b], axis=-1)
    return A1 + A2 + lse, grad


def log_likelihood(params: BGNBDParams, x, t_x, T) -> np.ndarray:
    """float64 [C]: each customer's log-likelihood under `params`."""
    x, t_x, T = _check(x, t_x, T)
    return _terms(np.log(params.as_array()), x, t_x, T)[0]


def fit_bgnbd(x, t_x, T, init: BGNBDParams = BGNBDParams(1.0, 1.0, 1.0, 1.0), max_iter: int = 1000) -> BGNBDFit:
    """Maximum-likelihood BG/NBD on calibration RFM (x, t_x, T [C] in periods); see the module doc."""
    x, t_x, T = _check(x, t_x, T)
    if not len(x):
        raise ValueError("no customers to fit")
    rows, count = np.unique(np.stack([x, t_x, T], axis=1), axis=0, return_counts=True)
    ux, ut, uT = rows.T
    n = float(len(x))

    def total(theta):
        ll, grad = _terms(theta, ux, ut, uT)
        return count @ ll, count @ grad

    def objective(theta):
        ll, grad = total(theta)
        if not np.isfinite(ll):
            return np.inf, np.zeros(4)
        return -ll / n, -grad / n

    res = optimize.minimize(objective, np.log(init.as_array()), jac=True, method="L-BFGS-B",
                            bounds=[LOG_BOUNDS] * 4, options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-10})
    theta = res.x
    hess = np.empty((4, 4))
    for j in range(4):
        step = np.zeros(4)
        step[j] = HESSIAN_STEP
        hess[:, j] = (total(theta + step)[1] - total(theta - step)[1]) / (2 * HESSIAN_STEP)
    hess = (hess + hess.T) / 2
    try:
        log_cov = np.linalg.inv(-hess)
        se_log = np.sqrt(np.diag(log_cov))
    except np.linalg.LinAlgError:
        log_cov, se_log = np.full((4, 4), np.nan), np.full(4, np.nan)
    params = np.exp(theta)
    return BGNBDFit(params=BGNBDParams(*params.tolist()), log_likelihood=float(total(theta)[0]),
                    se=BGNBDParams(*(params * se_log).tolist()), log_cov=log_cov, customers=len(x),
                    converged=bool(res.success), message=str(res.message), iterations=int(res.nit))


def _alive_logit(params: BGNBDParams, x, t_x, T) -> np.ndarray:
    """-logit P(alive): ln[a/(b+x-1)] + (r+x) ln[(alpha+T)/(alpha+t_x)] for x > 0; -inf for x = 0."""
    r, alpha, a, b = params.as_array()
    buyer = x > 0
    return np.where(buyer, np.log(a) - np.log(b + np.where(buyer, x - 1, 0.0))
                    + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x)), -np.inf)


def p_alive(params: BGNBDParams, x, t_x, T) -> np.ndarray:
    """float64 [C]: P(alive at T | x, t_x, T); exactly 1 when x = 0."""
    x, t_x, T = _check(x, t_x, T)
    return special.expit(-_alive_logit(params, x, t_x, T))


def expected_purchases(params: BGNBDParams, t, x, t_x, T) -> np.ndarray:
    """float64 [C]: E[purchases in (T, T + t] | x, t_x, T] (t in periods, scalar or [C])."""
    x, t_x, T = _check(x, t_x, T)
    t = np.asarray(t, np.float64)
    if np.any(t < 0):
        raise ValueError("t must be >= 0")
    r, alpha, a, b = params.as_array()
    z = t / (alpha + T + t)
    tail = np.exp((a - 1) * np.log1p(-z)) * special.hyp2f1(a + b - 1 - r, a - 1, a + b + x - 1, z)
    return (a + b + x - 1) / (a - 1) * (1 - tail) * special.expit(-_alive_logit(params, x, t_x, T))


def prob_any_purchase(params: BGNBDParams, t, x, t_x, T) -> np.ndarray:
    """float64 [C]: P(at least one purchase in (T, T + t] | x, t_x, T), the binary-task probability."""
    x, t_x, T = _check(x, t_x, T)
    t = np.asarray(t, np.float64)
    if np.any(t < 0):
        raise ValueError("t must be >= 0")
    r, alpha, _, _ = params.as_array()
    none_if_alive = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t)))
    return special.expit(-_alive_logit(params, x, t_x, T)) * (1 - none_if_alive)


def simulate(params: BGNBDParams, T, holdout: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Customers from the generative process, each first buying at 0 and observed to T + holdout.

    T: float [C] calibration ages. Returns float64 x, t_x (calibration), holdout (purchases in
    (T, T + holdout]), and bool alive (alive at T), each [C].
    """
    rng = np.random.default_rng(seed)
    T = np.asarray(T, np.float64)
    n = len(T)
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    end = T + holdout
    now, x, t_x, held = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    death = np.full(n, np.inf)
    active = np.arange(n)
    while len(active):
        now[active] += rng.exponential(1.0 / lam[active])
        active = active[now[active] < end[active]]
        cal = now[active] < T[active]
        x[active[cal]] += 1
        t_x[active[cal]] = now[active[cal]]
        held[active[~cal]] += 1
        dies = rng.random(len(active)) < p[active]
        death[active[dies]] = now[active[dies]]
        active = active[~dies]
    return {"x": x, "t_x": t_x, "holdout": held, "alive": death >= T}
