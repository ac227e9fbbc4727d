"""The repeat-explore next-item head (seqjax.models.repeat_head) against slow NumPy references: the repeat
attention is causal and normalised, the loss is the mixture's negative log-likelihood, and the ranking
scores are the mixture's log-probabilities (they sum to one over the catalogue)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqjax.models.repeat_head import RECENCY_BUCKETS, RepeatHead, mixture_scores, recency_bucket, repeat_loss
from seqjax.train.losses import full_softmax_loss

B, T, D, V = 3, 7, 8, 12


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([7, 4, 1])
    items = rng.integers(1, 5, (B, T))  # few ids: plenty of repeats
    items[np.arange(T)[None, :] >= lengths[:, None]] = 0
    states = rng.normal(size=(B, T, D)).astype(np.float32)
    inputs = rng.normal(size=(B, T, D)).astype(np.float32)
    table = rng.normal(size=(V + 1, D)).astype(np.float32)
    return items, lengths, states, inputs, table


def _head(seed=0):
    head = RepeatHead(D, rngs=nnx.Rngs(seed))
    head.recency[...] = jnp.asarray(np.random.default_rng(seed).normal(size=RECENCY_BUCKETS), jnp.float32)
    return head


def test_recency_buckets_are_log2():
    np.testing.assert_array_equal(recency_bucket(jnp.array([0, 1, 2, 3, 4, 7, 8, 10**6])),
                                  [0, 1, 1, 2, 2, 3, 3, RECENCY_BUCKETS - 1])


def test_repeat_attention_is_causal_and_normalised():
    _, lengths, states, inputs, _ = _inputs()
    head = _head()
    gate, log_a, visible = head(jnp.asarray(states), jnp.asarray(inputs), jnp.asarray(lengths))
    a = np.exp(np.asarray(log_a)) * np.asarray(visible)
    for b in range(B):
        for t in range(lengths[b]):
            assert a[b, t].sum() == pytest.approx(1.0, abs=1e-5)
            assert visible[b, t].tolist() == [s <= t for s in range(T)]
    # Changing everything after position 3 leaves positions 0..3 unchanged.
    states2, inputs2 = states.copy(), inputs.copy()
    states2[:, 4:] += 1.0
    inputs2[:, 4:] -= 1.0
    gate2, log_a2, _ = head(jnp.asarray(states2), jnp.asarray(inputs2), jnp.asarray(lengths))
    np.testing.assert_allclose(np.asarray(log_a2)[:, :4, :4], np.asarray(log_a)[:, :4, :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gate2)[:, :4], np.asarray(gate)[:, :4], rtol=1e-6)


def _slow_scores(head, states, inputs, lengths):
    """(gate [B, T], a [B, T, T]) in float64 from the head's parameters, position by position."""
    q = states @ np.asarray(head.query.kernel[...], np.float64)
    k = inputs @ np.asarray(head.key.kernel[...], np.float64)
    rec = np.asarray(head.recency[...], np.float64)
    gate = (states @ np.asarray(head.gate.kernel[...], np.float64))[..., 0] + float(head.gate.bias[...][0])
    a = np.zeros((B, T, T))
    for b in range(B):
        for t in range(T):
            visible = [s for s in range(min(t + 1, lengths[b]))]
            if not visible:
                continue
            z = np.array([q[b, t] @ k[b, s] / np.sqrt(D) + rec[min(int(np.log2(t - s + 1)), RECENCY_BUCKETS - 1)]
                          for s in visible])
            a[b, t, visible] = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return gate, a


def test_loss_is_the_mixture_negative_log_likelihood():
    items, lengths, states, inputs, table = _inputs(1)
    head = _head(1)
    targets = np.concatenate([items[:, 1:], np.zeros((B, 1), int)], axis=1)
    weights = (np.arange(T)[None, :] < lengths[:, None] - 1).astype(np.float32)
    gate, log_a, visible = head(jnp.asarray(states), jnp.asarray(inputs), jnp.asarray(lengths))
    explore = lambda w: full_softmax_loss(jnp.asarray(states), jnp.asarray(table), jnp.asarray(targets), w, 4)
    loss, parts = repeat_loss(gate, log_a, visible, jnp.asarray(items), jnp.asarray(targets), jnp.asarray(weights),
                              explore)

    g, a = _slow_scores(head, states.astype(np.float64), inputs.astype(np.float64), lengths)
    logits = states.astype(np.float64) @ table[1:].T.astype(np.float64)
    nll, n_repeat = [], 0
    for b in range(B):
        for t in range(lengths[b] - 1):
            y = targets[b, t]
            mass = sum(a[b, t, s] for s in range(t + 1) if items[b, s] == y)
            if mass > 0:  # a repeat: the gate says repeat, the attention finds the item
                n_repeat += 1
                nll.append(-np.log(1 / (1 + np.exp(-g[b, t]))) - np.log(mass))
            else:  # explore: softmax over the catalogue (as the configured loss computes it)
                lse = np.log(np.exp(logits[b, t] - logits[b, t].max()).sum()) + logits[b, t].max()
                nll.append(-np.log(1 / (1 + np.exp(g[b, t]))) - (logits[b, t, y - 1] - lse))
    assert 0 < n_repeat < len(nll)  # both modes are exercised
    assert float(loss) == pytest.approx(np.mean(nll), rel=1e-5)
    assert float(sum(parts.values())) == pytest.approx(float(loss), rel=1e-6)


def test_loss_gradients_are_finite_with_padding_rows():
    items, lengths, states, inputs, table = _inputs(2)
    lengths = np.array([5, 0, 1])  # an empty (padding) row and a one-event row
    items[np.arange(T)[None, :] >= lengths[:, None]] = 0
    targets = np.concatenate([items[:, 1:], np.zeros((B, 1), int)], axis=1)
    weights = jnp.asarray((np.arange(T)[None, :] < lengths[:, None] - 1).astype(np.float32))
    head = _head(2)

    def f(s, x):
        gate, log_a, visible = head(s, x, jnp.asarray(lengths))
        explore = lambda w: full_softmax_loss(s, jnp.asarray(table), jnp.asarray(targets), w, 4)
        return repeat_loss(gate, log_a, visible, jnp.asarray(items), jnp.asarray(targets), weights, explore)[0]

    grads = jax.grad(f, argnums=(0, 1))(jnp.asarray(states), jnp.asarray(inputs))
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
        assert np.abs(np.asarray(g)[1]).max() == 0.0  # the padding row gets no gradient


def test_mixture_scores_are_log_probabilities():
    items, lengths, states, inputs, table = _inputs(3)
    head = _head(3)
    gate, log_a, visible = head(jnp.asarray(states), jnp.asarray(inputs), jnp.asarray(lengths))
    last = lengths - 1
    rows = np.arange(B)
    explore_logits = jnp.asarray(np.einsum("bd,vd->bv", states[rows, last], table))
    scores = np.asarray(mixture_scores(gate[rows, last], log_a[rows, last], visible[rows, last], jnp.asarray(items),
                                       explore_logits))
    g, a = _slow_scores(head, states.astype(np.float64), inputs.astype(np.float64), lengths)
    for b in range(B):
        t = last[b]
        assert np.exp(scores[b, 1:]).sum() == pytest.approx(1.0, abs=1e-5)
        assert scores[b, 0] == -np.inf
        gate_p = 1 / (1 + np.exp(-g[b, t]))
        seen = set(items[b, :lengths[b]].tolist())
        unseen = [v for v in range(1, V + 1) if v not in seen]
        z = np.asarray(explore_logits)[b, unseen].astype(np.float64)
        p_unseen = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        for v in range(1, V + 1):
            if v in seen:
                want = gate_p * sum(a[b, t, s] for s in range(lengths[b]) if items[b, s] == v)
            else:
                want = (1 - gate_p) * p_unseen[unseen.index(v)]
            assert np.exp(scores[b, v]) == pytest.approx(want, rel=1e-4, abs=1e-9), (b, v)
