"""Sampled, in-batch and gBCE losses against slow per-position references; the log-Q correction against its
definition by enumeration; the alias sampler against its distribution; no catalogue-sized intermediates."""

import itertools

import jax
import jax.extend.core as jex
import numpy as np
import pytest

from seqjax.config import ConfigError
from seqjax.train.losses import dense_softmax_loss, full_softmax_loss
from seqjax.train.sampled_losses import (
    LossConfig,
    gbce_beta,
    gbce_loss,
    in_batch_softmax_loss,
    make_loss,
    popularity_from_counts,
    sample_items,
    sampled_softmax_loss,
    softmax_over_candidates,
)

# Every comparison of a float32 loss or gradient with its reference uses these.
RTOL, ATOL = 1e-5, 1e-6
# Sampling checks: an empirical mean may differ from its expectation by this many standard errors.
Z_SAMPLING = 5.0
# The alias table keeps a bucket with probability threshold / 2^32: the whole distribution is exact to 2^-32.
ALIAS_RESOLUTION = 2.0**-32

B, T, D, V = 3, 4, 5, 7
COUNTS = np.array([0, 9, 1, 4, 0, 2, 12, 3], np.float64)  # item 4 is never a target, so never drawn


def _inputs(seed=0):
    """hidden [B, T, D], table [V+1, D], targets [B, T] with repeats and padding, weights [B, T]."""
    rng = np.random.default_rng(seed)
    hidden = (0.7 * rng.standard_normal((B, T, D))).astype(np.float32)
    table = (0.7 * rng.standard_normal((V + 1, D))).astype(np.float32)
    targets = np.array([[1, 3, 3, 6], [6, 2, 0, 0], [5, 7, 1, 6]], np.int32)
    weights = np.array([[1.0, 1.0, 0.5, 1.0], [2.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    return hidden, table, targets, weights


# Tests draw the ids a loss draws inside with the same call; jitted, as eager ops compile one by one.
_sample = jax.jit(sample_items, static_argnums=(1, 2))


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)


# --- slow references: numpy float64, one position at a time, written from the definitions ------------------
# Gradients by hand: for CE over candidates c with logits s_c = h . e_c - bias_c, dCE/ds_c = softmax_c - [c is
# the target]; for gBCE, d/ds+ = -beta (1 - sigmoid(s+)) and d/ds- = sigmoid(s-). Then dh += g e_c, de_c += g h.


def _softmax_ce_reference(hidden, table, targets, weights, candidates_of, log_q):
    """candidates_of(i, y_i) -> the ids that compete with position i's target (the target itself excluded)."""
    h, y, w = hidden.reshape(-1, D), np.asarray(targets).reshape(-1), np.asarray(weights, np.float64).reshape(-1)
    bias = np.zeros(V + 1) if log_q is None else np.asarray(log_q, np.float64)
    value, dh, de = 0.0, np.zeros_like(h), np.zeros_like(table)
    for i in np.flatnonzero(w > 0):
        ids = [y[i]] + list(candidates_of(i, y[i]))
        logits = np.array([h[i] @ table[j] - bias[j] for j in ids])
        p = np.exp(logits - logits.max())
        p /= p.sum()
        value += w[i] * -np.log(p[0])
        g = w[i] * (p - np.eye(len(ids))[0]) / w.sum()
        for gc, j in zip(g, ids):
            dh[i] += gc * table[j]
            de[j] += gc * h[i]
    return value / w.sum(), dh.reshape(hidden.shape), de


def _ref_sampled(targets, weights, negatives, log_q):
    """CE over [target] + [each negative != target], every logit minus log q of its id (if given)."""
    negatives = np.asarray(negatives)
    return lambda hidden, table: _softmax_ce_reference(hidden, table, targets, weights,
                                                       lambda i, y: negatives[negatives != y], log_q)


def _ref_in_batch(targets, weights, log_q):
    """CE over [target] + [the target of every other valid position, unless it is the same item]."""
    y_all = np.asarray(targets).reshape(-1)[np.asarray(weights).reshape(-1) > 0]
    return lambda hidden, table: _softmax_ce_reference(hidden, table, targets, weights,
                                                       lambda i, y: y_all[y_all != y], log_q)


def _ref_gbce(targets, weights, negatives, t):
    """-log(sigmoid(s+)^beta) - sum log(1 - sigmoid(s-)) over the sequence's negatives other than the target,
    beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = k / (V - 1) (Petrov & Macdonald 2023)."""
    y, w, negatives = np.asarray(targets), np.asarray(weights, np.float64), np.asarray(negatives)
    alpha = negatives.shape[1] / (V - 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))

    def reference(hidden, table):
        value, dh, de = 0.0, np.zeros_like(hidden), np.zeros_like(table)
        for b, s in zip(*np.nonzero(w > 0)):
            pos = hidden[b, s] @ table[y[b, s]]
            value += w[b, s] * -np.log(sigmoid(pos) ** beta)
            terms = [(y[b, s], -beta * (1 - sigmoid(pos)))]
            for n in negatives[b][negatives[b] != y[b, s]]:
                neg = hidden[b, s] @ table[n]
                value += w[b, s] * -np.log(1 - sigmoid(neg))
                terms.append((n, sigmoid(neg)))
            for j, g in terms:
                dh[b, s] += w[b, s] * g * table[j] / w.sum()
                de[j] += w[b, s] * g * hidden[b, s] / w.sum()
        return value / w.sum(), dh, de

    return reference


# --- the alias sampler ------------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [COUNTS, np.ones(V + 1), np.r_[0.0, 0, 0, 5, 0], np.r_[0.0, 1e9, 1, 1, 3]])
def test_alias_table_encodes_the_counts(counts):
    pop = popularity_from_counts(counts)
    v = counts.size - 1
    keep = np.asarray(pop.threshold, np.float64)[1:] / 2.0**32
    alias = np.asarray(pop.alias)[1:]
    # The table's own meaning: bucket i (drawn with probability 1/V) gives i w.p. keep[i], else alias[i].
    q = np.zeros(v + 1)
    for i in range(1, v + 1):
        q[i] += keep[i - 1] / v
        q[alias[i - 1]] += (1 - keep[i - 1]) / v
    expected = counts / counts[1:].sum()
    expected[0] = 0.0
    np.testing.assert_allclose(q, expected, rtol=RTOL, atol=ALIAS_RESOLUTION)
    np.testing.assert_allclose(np.exp(np.asarray(pop.log_q, np.float64)), q, rtol=RTOL, atol=0)
    assert np.all(alias >= 1) and np.all(q[counts == 0] == 0)


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_sampler_frequencies_match_q(sampler):
    pop = popularity_from_counts(COUNTS) if sampler == "popularity" else None
    n = 400_000
    ids = np.asarray(_sample(jax.random.key(3), (n,), V, pop))
    freq = np.bincount(ids, minlength=V + 1) / n
    q = np.r_[0.0, np.full(V, 1 / V)] if pop is None else np.exp(np.asarray(pop.log_q, np.float64))
    assert np.all(np.abs(freq - q) <= Z_SAMPLING * np.sqrt(q * (1 - q) / n))
    assert freq[0] == 0


# --- each loss against its reference ----------------------------------------------------------------------

POP = popularity_from_counts(COUNTS)
SAMPLED_KEY, N = jax.random.key(11), 6
GBCE_KEY, K, GBCE_T = jax.random.key(5), 4, 0.75
# The losses under test, jitted once each (with value_and_grad) and shared by the tests below.
LOSSES = {
    "sampled_uniform": lambda h, e, y, w: sampled_softmax_loss(h, e, y, w, SAMPLED_KEY, N, None, chunk_size=5),
    "sampled_popularity": lambda h, e, y, w: sampled_softmax_loss(h, e, y, w, SAMPLED_KEY, N, POP, chunk_size=5),
    "in_batch": lambda h, e, y, w: in_batch_softmax_loss(h, e, y, w, None, chunk_size=5),
    "in_batch_logq": lambda h, e, y, w: in_batch_softmax_loss(h, e, y, w, POP, chunk_size=5),
    "gbce": lambda h, e, y, w: gbce_loss(h, e, y, w, GBCE_KEY, K, GBCE_T),
}
GRADS = {name: jax.jit(jax.value_and_grad(loss, argnums=(0, 1))) for name, loss in LOSSES.items()}


def _reference(name: str, targets, weights):
    if name.startswith("sampled"):
        pop = POP if name == "sampled_popularity" else None
        negatives = np.asarray(_sample(SAMPLED_KEY, (N,), V, pop))
        assert np.isin(negatives, targets[weights > 0]).any()  # accidental hits happen
        return _ref_sampled(targets, weights, negatives, None if pop is None else pop.log_q)
    if name.startswith("in_batch"):
        return _ref_in_batch(targets, weights, POP.log_q if name == "in_batch_logq" else None)
    negatives = np.asarray(_sample(GBCE_KEY, (B, K), V))
    assert (negatives[:, None, :] == targets[..., None]).any()  # accidental hits happen
    return _ref_gbce(targets, weights, negatives, GBCE_T)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_matches_reference(name):
    hidden, table, targets, weights = _inputs()
    value, (dh, de) = GRADS[name](hidden, table, targets, weights)
    ref_value, ref_dh, ref_de = _reference(name, targets, weights)(hidden.astype(np.float64),
                                                                    table.astype(np.float64))
    _close(value, ref_value)
    _close(dh, ref_dh)
    _close(de, ref_de)
    assert np.abs(ref_de).sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_padding_positions_contribute_nothing(name):
    hidden, table, targets, weights = _inputs()
    pad = weights == 0
    noisy = np.where(pad[..., None], np.float32(1e4), hidden)  # huge hidden states at the padding positions
    value, grads = GRADS[name](hidden, table, targets, weights)
    noisy_value, (dh, de) = GRADS[name](noisy, table, targets, weights)
    _close(noisy_value, value)
    _close(de, grads[1])
    dh, de = np.asarray(dh), np.asarray(de)
    assert np.all(np.isfinite(dh)) and np.all(dh[pad] == 0) and np.all(de[0] == 0)


def test_denominator_replaces_the_summed_weight():
    """train.loss_norm=epoch: loss(denominator=d) * d == loss() * sum(weights), for every loss."""
    hidden, table, targets, weights = _inputs()
    d = 13.0
    pairs = lambda h, e: [
        (sampled_softmax_loss(h, e, targets, weights, SAMPLED_KEY, N, POP, 5),
         sampled_softmax_loss(h, e, targets, weights, SAMPLED_KEY, N, POP, 5, d)),
        (in_batch_softmax_loss(h, e, targets, weights, POP, 5), in_batch_softmax_loss(h, e, targets, weights, POP, 5, d)),
        (gbce_loss(h, e, targets, weights, GBCE_KEY, K), gbce_loss(h, e, targets, weights, GBCE_KEY, K, 0.75, d)),
    ]
    for mean, summed in jax.jit(pairs)(hidden, table):
        _close(summed * d, mean * weights.sum())


def test_candidates_covering_the_catalogue_give_full_softmax():
    """All of 1..V once each: the accidental hit is the target itself, and a uniform log q cancels."""
    hidden, table, targets, weights = _inputs()
    every = np.arange(1, V + 1)
    uniform_log_q = np.full(V + 1, -np.log(V), np.float32)
    loss = lambda h, e: softmax_over_candidates(h, e, targets, weights, every, uniform_log_q, chunk_size=4)
    dense = lambda h, e: dense_softmax_loss(h, e, targets, weights)
    got, want = jax.jit(lambda h, e: (jax.value_and_grad(loss, (0, 1))(h, e), jax.value_and_grad(dense, (0, 1))(h, e)))(
        hidden, table)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _close(a, b)


def test_log_q_correction_against_its_definition_by_enumeration():
    """With every logit, the target's too, corrected by log(N q) and hits removed,
    exp(loss) - 1 = N q_y exp(-s_y) sum_k exp(s_k) / (N q_k) over the negatives k != y, whose expectation is
    N q_y exp(-s_y) sum_{j != y} exp(s_j): E[exp(loss) - 1] = N q_y (exp(full CE) - 1). Enumerates all V^N
    ordered draws of N = 3 popularity negatives for each target; then checks that `sampled_softmax_loss`
    with random keys averages to the enumerated expectation of the loss."""
    hidden, table, _, _ = _inputs(seed=1)
    # q > 0 on all of 1..V: importance sampling cannot account for items it never draws.
    pop = popularity_from_counts(np.where(COUNTS == 0, 1.0, COUNTS))
    q = np.exp(np.asarray(pop.log_q, np.float64))
    n = 3
    draws = np.array(list(itertools.product(range(1, V + 1), repeat=n)))  # [V^N, N] every possible draw
    prob = np.prod(q[draws], axis=1)
    h, one = hidden[:1, :1], np.ones((1, 1), np.float32)
    enumerated = jax.jit(jax.vmap(lambda y, ids: softmax_over_candidates(h, table, y, one, ids, pop.log_q),
                                  in_axes=(None, 0)))
    sampled = jax.jit(jax.vmap(lambda y, key: sampled_softmax_loss(h, table, y, one, key, n, pop),
                               in_axes=(None, 0)))
    logits = table[1:].astype(np.float64) @ h[0, 0].astype(np.float64)
    for y in range(1, V + 1):
        target = np.full((1, 1), y, np.int32)
        losses = np.asarray(enumerated(target, draws), np.float64)
        full = np.log(np.exp(logits).sum()) - logits[y - 1]  # full softmax CE over 1..V
        np.testing.assert_allclose(prob @ (np.exp(losses) - 1), n * q[y] * (np.exp(full) - 1), rtol=RTOL)

        keys = jax.random.split(jax.random.key(y), 4000)
        mean, var = prob @ losses, prob @ (losses - prob @ losses) ** 2
        assert abs(np.asarray(sampled(target, keys)).mean() - mean) <= Z_SAMPLING * np.sqrt(var / keys.shape[0])


def test_gbce_beta_endpoints():
    """t = 0 is plain BCE (beta 1); t = 1 calibrates fully (beta = alpha = k / (V - 1))."""
    assert gbce_beta(256, 1001, 0.0) == pytest.approx(1.0)
    assert gbce_beta(256, 1001, 1.0) == pytest.approx(256 / 1000)
    assert gbce_beta(256, 1001, 0.75) == pytest.approx(1 - 0.75 * (1 - 256 / 1000))


def test_gbce_is_finite_for_extreme_logits():
    hidden, table, targets, weights = _inputs()
    value, grads = GRADS["gbce"](300.0 * hidden, table, targets, weights)
    assert np.isfinite(float(value)) and float(value) > 100
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_gbce_rejects_more_negatives_than_items():
    hidden, table, targets, weights = _inputs()
    with pytest.raises(ValueError, match="num_negatives"):
        gbce_loss(hidden, table, targets, weights, jax.random.key(0), V)


# --- no catalogue-sized intermediates ---------------------------------------------------------------------


def _intermediate_shapes(jaxpr) -> list[tuple[int, ...]]:
    """The shape of every value computed anywhere in a jaxpr, sub-jaxprs (scan, remat, pjit, ...) included."""
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jex.ClosedJaxpr):
                    shapes += _intermediate_shapes(sub.jaxpr)
                elif isinstance(sub, jex.Jaxpr):
                    shapes += _intermediate_shapes(sub)
    return shapes


def _catalogue_sized(loss) -> list[tuple[int, ...]]:
    """Intermediates of value_and_grad that have a dimension V or V+1, other than the table's own shape.
    V = 37 is unlike every other dimension here (B 2, T 3, D 4, N 5, chunks of 4, B*T 6 and their pads)."""
    v = 37
    hidden = np.ones((2, 3, 4), np.float32)
    table = np.ones((v + 1, 4), np.float32)
    targets = np.array([[1, 2, 3], [4, 0, 0]], np.int32)
    weights = (targets > 0).astype(np.float32)
    pop = popularity_from_counts(np.arange(v + 1.0))
    fn = jax.value_and_grad(lambda h, e, p: loss(h, e, targets, weights, p), argnums=(0, 1))
    shapes = _intermediate_shapes(jax.make_jaxpr(fn)(hidden, table, pop).jaxpr)
    return [s for s in shapes if s != table.shape and {v, v + 1} & set(s)]


@pytest.mark.parametrize("name", ["sampled_uniform", "sampled_popularity", "in_batch", "in_batch_logq", "gbce"])
def test_no_catalogue_sized_intermediates(name):
    key = jax.random.key(0)
    loss = {
        "sampled_uniform": lambda h, e, y, w, p: sampled_softmax_loss(h, e, y, w, key, 5, chunk_size=4),
        "sampled_popularity": lambda h, e, y, w, p: sampled_softmax_loss(h, e, y, w, key, 5, p, 4),
        "in_batch": lambda h, e, y, w, p: in_batch_softmax_loss(h, e, y, w, chunk_size=4),
        "in_batch_logq": lambda h, e, y, w, p: in_batch_softmax_loss(h, e, y, w, p, 4),
        "gbce": lambda h, e, y, w, p: gbce_loss(h, e, y, w, key, 5),
    }[name]
    assert _catalogue_sized(loss) == []


def test_catalogue_check_catches_the_full_softmax():
    """The check above can fail: the chunked full softmax has [C, V] (or [C, V+1]) logits."""
    shapes = _catalogue_sized(lambda h, e, y, w, p: full_softmax_loss(h, e, y, w, chunk_size=4))
    assert {(4, 37), (4, 38)} & set(shapes)


# --- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("kind", "sampeld"), ("sampler", "zipf"), ("num_negatives", 0),
                                         ("gbce_t", 1.5), ("gbce_t", -0.1)])
def test_loss_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=rf"train\.loss\.{field}="):
        LossConfig(**{field: value}).validate()


def test_loss_config_checks_negatives_against_the_catalogue():
    LossConfig(kind="gbce", num_negatives=6).validate(num_items=V)
    with pytest.raises(ConfigError, match=r"train\.loss\.num_negatives="):
        LossConfig(kind="gbce", num_negatives=7).validate(num_items=V)


def test_make_loss_dispatches_each_kind():
    """make_loss(cfg) traces to the same computation as the direct call it stands for."""
    args = (*_inputs(), jax.random.key(4), POP)
    cases = [
        (LossConfig(kind="full"), lambda h, e, y, w, k, p: full_softmax_loss(h, e, y, w, 4)),
        (LossConfig(kind="sampled", num_negatives=5),
         lambda h, e, y, w, k, p: sampled_softmax_loss(h, e, y, w, k, 5, None, 4)),
        (LossConfig(kind="sampled", num_negatives=5, sampler="popularity"),
         lambda h, e, y, w, k, p: sampled_softmax_loss(h, e, y, w, k, 5, p, 4)),
        (LossConfig(kind="in_batch"), lambda h, e, y, w, k, p: in_batch_softmax_loss(h, e, y, w, p, 4)),
        (LossConfig(kind="in_batch", in_batch_logq=False),
         lambda h, e, y, w, k, p: in_batch_softmax_loss(h, e, y, w, None, 4)),
        (LossConfig(kind="gbce", num_negatives=3, gbce_t=0.5),
         lambda h, e, y, w, k, p: gbce_loss(h, e, y, w, k, 3, 0.5)),
        (LossConfig(kind="gbce", num_negatives=3), lambda h, e, y, w, k, p: gbce_loss(h, e, y, w, k, 3, 0.75, 9.0)),
    ]
    for i, (cfg, direct) in enumerate(cases):
        made = make_loss(cfg, chunk_size=4, denominator=9.0 if i == len(cases) - 1 else None)
        assert str(jax.make_jaxpr(made)(*args)) == str(jax.make_jaxpr(direct)(*args))
    assert str(jax.make_jaxpr(cases[1][1])(*args)) != str(jax.make_jaxpr(cases[2][1])(*args))
    with pytest.raises(ValueError, match="popularity"):
        make_loss(LossConfig(kind="sampled", sampler="popularity"))(*args[:5])


def test_loss_config_errors_name_where_the_config_sits(tmp_path):
    from seqjax import config as config_lib
    from seqjax.train.config import ExperimentConfig
    from seqjax.train.task_config import SequenceTaskRun
    path = tmp_path / "c.yaml"
    path.write_text("sequence_task:\n  next_item:\n    loss:\n      num_negatives: 0\n")
    with pytest.raises(ConfigError, match=r"^sequence_task\.next_item\.loss\.num_negatives=0"):
        config_lib.load(SequenceTaskRun, str(path), [])
    with pytest.raises(ConfigError, match=r"^train\.loss\.num_negatives=0"):
        config_lib.from_dict(ExperimentConfig, {"train": {"loss": {"num_negatives": 0}}})
