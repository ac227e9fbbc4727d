"""A repeat-explore next-item head (after RepeatNet, Ren et al., AAAI 2019) for shop logs, where users often
come back to an item they already touched.

The next item after position t is a mixture of two modes, chosen by a gate g_t = sigmoid(w . h_t):

    p(v | t) = g_t * p_repeat(v | t)  + (1 - g_t) * p_explore(v | t)
    p_repeat(v | t)  = sum of a_ts over the positions s <= t holding item v,
                       a_ts = softmax_s(q(h_t) . k(x_s) / sqrt(D) + recency bias[log2 bucket of t - s])
    p_explore(v | t) = softmax over the items not in events 0..t of h_t . e_v (the item table)

h are the encoder states, x_s the event's input embedding (item, event type, time features), so a cart or
a recent view can weigh more than an old one. The modes partition the catalogue, so the log-likelihood
splits exactly into three terms that are trained separately (`repeat_loss`): the gate's binary
cross-entropy on "the target is in the history", the repeat distribution's cross-entropy on repeat
targets, and the explore loss on the others. The explore term is the configured next-item loss (full or
sampled softmax), whose normaliser also counts the history items: that only pushes history items down in
p_explore, and `mixture_scores` renormalises over the non-history items, as the model defines it.
Shapes: B batch, T time, D width, V items (+1 for padding id 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

RECENCY_BUCKETS = 16  # log2 buckets of the distance t - s in events: 0, 1-2, 3-6, 7-14, ... (enough for 2^15)
# Stands in for log 0 where a position is hidden: finite, so masked rows (padding) keep finite gradients.
NEG = -1e30


def recency_bucket(distance: jax.Array) -> jax.Array:
    """floor(log2(distance + 1)), clipped to RECENCY_BUCKETS - 1; distance >= 0."""
    d = jnp.maximum(distance, 0).astype(jnp.float32)
    return jnp.minimum(jnp.floor(jnp.log2(d + 1.0)), RECENCY_BUCKETS - 1).astype(jnp.int32)


class RepeatHead(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.gate = nnx.Linear(dim, 1, rngs=rngs)
        self.query = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.key = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        # Starts favouring recent events, so the head ranks by recency before it has learnt anything else.
        self.recency = nnx.Param(-0.5 * jnp.arange(RECENCY_BUCKETS, dtype=jnp.float32))

    def __call__(self, states: jax.Array, inputs: jax.Array, lengths: jax.Array,
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """states, inputs [B, T, D], lengths [B] -> (gate logits [B, T], log a [B, T, T] over s (NEG where
        hidden), visible bool [B, T, T]: s <= t and s a real event)."""
        t = states.shape[1]
        d = states.shape[-1]
        scores = jnp.einsum("btd,bsd->bts", self.query(states), self.key(inputs),
                            preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(d))
        pos = jnp.arange(t)
        scores = scores + self.recency[...][recency_bucket(pos[:, None] - pos[None, :])][None]
        visible = (pos[None, None, :] <= pos[None, :, None]) & (pos[None, None, :] < lengths[:, None, None])
        log_a = jax.nn.log_softmax(jnp.where(visible, scores, NEG), axis=-1)
        return self.gate(states)[..., 0].astype(jnp.float32), jnp.where(visible, log_a, NEG), visible


def repeat_loss(gate: jax.Array, log_a: jax.Array, visible: jax.Array, items: jax.Array, targets: jax.Array,
                weights: jax.Array, explore_loss) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean negative log-likelihood of the mixture over positions with weight > 0.

    gate [B, T], log_a, visible [B, T, T] from RepeatHead; items [B, T] the history, targets [B, T] the item after
    each position (0 = none), weights [B, T]; explore_loss(weights) -> the mean explore loss over the
    positions with weight > 0 (the configured next-item loss). Returns (loss, {gate, repeat, explore}): the
    three terms, each summed over its positions and divided by the total weight, so they add up to loss.
    """
    # [B, T (position), T (s)]: event s, visible from the position, is the position's target.
    hit = visible & (items[:, None, :] == targets[:, :, None]) & (targets[:, :, None] > 0)
    log_p_repeat = jax.nn.logsumexp(jnp.where(hit, log_a, NEG), axis=-1)
    is_repeat = hit.any(axis=-1) & (weights > 0)
    w = jnp.where(weights > 0, weights, 0.0).astype(jnp.float32)
    total = jnp.maximum(jnp.sum(w), 1e-9)
    w_repeat = jnp.where(is_repeat, w, 0.0)
    w_explore = w - w_repeat
    gate_nll = jnp.where(is_repeat, jax.nn.softplus(-gate), jax.nn.softplus(gate))
    parts = {
        "gate": jnp.sum(w * gate_nll) / total,
        "repeat": -jnp.sum(jnp.where(is_repeat, w * log_p_repeat, 0.0)) / total,
        "explore": explore_loss(w_explore) * (jnp.sum(w_explore) / total),
    }
    return parts["gate"] + parts["repeat"] + parts["explore"], parts


def mixture_scores(gate: jax.Array, log_a: jax.Array, visible: jax.Array, history: jax.Array,
                   explore_logits: jax.Array) -> jax.Array:
    """log p(v) of the mixture at one position per row, [B, V+1] (column 0 -inf).

    gate [B], log_a, visible [B, T] the repeat weights over the history positions and which are visible,
    history [B, T] item ids (0 = padding), explore_logits [B, V+1] = h . e_v.
    """
    rows = jnp.arange(history.shape[0])[:, None]
    repeat_mass = jnp.zeros(explore_logits.shape, jnp.float32).at[rows, history].add(
        jnp.where(visible, jnp.exp(log_a), 0.0))
    in_history = jnp.zeros(explore_logits.shape, jnp.int32).at[rows, history].add(visible.astype(jnp.int32)) > 0
    explore = jnp.where(in_history, -jnp.inf, explore_logits.astype(jnp.float32)).at[:, 0].set(-jnp.inf)
    log_explore = jax.nn.log_softmax(explore, axis=-1)
    log_g, log_not_g = jax.nn.log_sigmoid(gate)[:, None], jax.nn.log_sigmoid(-gate)[:, None]
    scores = jnp.where(in_history, log_g + jnp.log(repeat_mass), log_not_g + log_explore)
    return scores.at[:, 0].set(-jnp.inf)
