"""Next-item losses over the full catalogue, computed in chunks of positions.

Holding [B, T, V] logits at once costs B*T*V floats (128 x 200 x 3,417 = 350 MB for ML-1M) in the
forward pass and again in the backward pass. Chunks of C positions are scored one at a time under
`jax.checkpoint`, so only [C, V] logits live at once and the backward pass recomputes them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _chunk_loss(hidden: jax.Array, targets: jax.Array, weights: jax.Array, table: jax.Array) -> jax.Array:
    """hidden [C, D], targets [C], weights [C], table [V+1, D] -> weighted sum of CE over C."""
    logits = jnp.einsum("cd,vd->cv", hidden, table, preferred_element_type=jnp.float32)
    logits = logits.at[:, 0].set(-jnp.inf)  # padding id is never a candidate
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    # where, not multiply: a padding target's logit is -inf and 0 * inf is NaN.
    return jnp.sum(jnp.where(weights > 0, (lse - target_logit) * weights, 0.0))


def full_softmax_loss(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array,
                      chunk_size: int = 512) -> jax.Array:
    """Mean softmax cross-entropy over positions with weight > 0.

    hidden [B, T, D], table [V+1, D], targets [B, T] item ids, weights [B, T] (0 on padding).
    """
    d = hidden.shape[-1]
    h = hidden.reshape(-1, d)
    y = targets.reshape(-1)
    w = weights.reshape(-1).astype(jnp.float32)
    n = h.shape[0]
    chunk = min(chunk_size, n)
    pad = (-n) % chunk
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        y = jnp.pad(y, (0, pad))
        w = jnp.pad(w, (0, pad))
    chunks = n // chunk + bool(pad)
    step = jax.checkpoint(lambda args: _chunk_loss(*args, table))
    per_chunk = jax.lax.map(step, (h.reshape(chunks, chunk, d), y.reshape(chunks, chunk),
                                   w.reshape(chunks, chunk)))
    return jnp.sum(per_chunk) / jnp.maximum(jnp.sum(w), 1.0)


def dense_softmax_loss(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """The slow reference: all [B, T, V+1] logits at once. Used by tests."""
    logits = jnp.einsum("btd,vd->btv", hidden, table).at[..., 0].set(-jnp.inf)
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    w = weights.astype(jnp.float32)
    return jnp.sum(jnp.where(w > 0, ce * w, 0.0)) / jnp.maximum(jnp.sum(w), 1.0)
