"""Next-item losses over the full catalogue, computed in chunks of positions.

Holding [B, T, V] logits at once costs B*T*V floats (128 x 200 x 3,417 = 350 MB for ML-1M) in the
forward pass and again in the backward pass. Chunks of C positions are scored one at a time with a
custom VJP that keeps only each position's log-sum-exp: the backward pass recomputes a chunk's [C, V]
logits once and turns them into the gradient directly (softmax minus one-hot).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def _chunk_loss(hidden: jax.Array, targets: jax.Array, weights: jax.Array, items: jax.Array) -> jax.Array:
    """hidden [C, D], targets [C] in 1..V (0 = padding), weights [C], items [V, D] (rows 1..V of the
    table) -> weighted sum of softmax CE over the C positions."""
    return _chunk_forward(hidden, targets, weights, items)[0]


def _chunk_forward(hidden, targets, weights, items):
    logits = jnp.einsum("cd,vd->cv", hidden, items, preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # Padding targets (0) point at item 1's column: their weight is 0, so where() drops them.
    target_logit = jnp.take_along_axis(logits, jnp.maximum(targets - 1, 0)[:, None], axis=-1)[:, 0]
    return jnp.sum(jnp.where(weights > 0, (lse - target_logit) * weights, 0.0)), lse


def _chunk_fwd(hidden, targets, weights, items):
    loss, lse = _chunk_forward(hidden, targets, weights, items)
    return loss, (hidden, targets, weights, items, lse)  # only [C] extra: the logits are recomputed


def _chunk_grads(hidden, targets, weights, items, lse, g):
    """d loss / d logits = w * (softmax - onehot(target)), from the saved log-sum-exp: one matmul to
    recompute the logits, one exp, two matmuls for the gradients; no [C, V] tensor is kept.
    Returns (d_hidden [C, D] in hidden's dtype, d_items [V, D] float32)."""
    w = jnp.where(weights > 0, weights, 0.0) * g
    logits = jnp.einsum("cd,vd->cv", hidden, items, preferred_element_type=jnp.float32)
    onehot = jnp.arange(items.shape[0])[None, :] == (targets - 1)[:, None]
    dlogits = (jnp.exp(logits - lse[:, None]) - onehot) * w[:, None]
    d_hidden = jnp.einsum("cv,vd->cd", dlogits, items.astype(jnp.float32)).astype(hidden.dtype)
    return d_hidden, jnp.einsum("cv,cd->vd", dlogits, hidden.astype(jnp.float32))


def _chunk_bwd(res, g):
    hidden, targets, weights, items, lse = res
    d_hidden, d_items = _chunk_grads(hidden, targets, weights, items, lse, g)
    return d_hidden, None, None, d_items.astype(items.dtype)


_chunk_loss.defvjp(_chunk_fwd, _chunk_bwd)


def _active_chunks_loss(h, y, w, items, active):
    """Summed loss of the first `active` chunks of h [N, C, D], y, w [N, C]; later chunks are skipped."""
    return _active_chunks_forward(h, y, w, items, active)[0]


def _active_chunks_forward(h, y, w, items, active):
    def body(i, carry):
        total, lse = carry
        loss, chunk_lse = _chunk_forward(h[i], y[i], w[i], items)
        return total + loss, lse.at[i].set(chunk_lse)

    init = (jnp.zeros((), jnp.float32), jnp.zeros(y.shape, jnp.float32))
    return jax.lax.fori_loop(0, active, body, init)


def _active_chunks_fwd(h, y, w, items, active):
    total, lse = _active_chunks_forward(h, y, w, items, active)
    return total, (h, y, w, items, active, lse)


def _active_chunks_bwd(res, g):
    h, y, w, items, active, lse = res

    def body(i, carry):
        d_h, d_items = carry
        d_chunk, d_chunk_items = _chunk_grads(h[i], y[i], w[i], items, lse[i], g)
        return d_h.at[i].set(d_chunk), d_items + d_chunk_items

    init = (jnp.zeros_like(h), jnp.zeros(items.shape, jnp.float32))
    d_h, d_items = jax.lax.fori_loop(0, active, body, init)
    return d_h, None, None, d_items.astype(items.dtype), None


_active_chunks_loss = jax.custom_vjp(_active_chunks_loss)
_active_chunks_loss.defvjp(_active_chunks_fwd, _active_chunks_bwd)


def full_softmax_loss(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array,
                      chunk_size: int = 512, denominator: float | None = None,
                      skip_padding: bool = True) -> jax.Array:
    """Mean softmax cross-entropy over positions with weight > 0 (or their sum / `denominator`).

    hidden [B, T, D], table [V+1, D] (row 0 = padding, never a candidate), targets [B, T] item ids,
    weights [B, T] (0 on padding). `skip_padding` moves the real positions to the front and scores only
    the chunks that hold some (a loop with a data-dependent trip count); False scores every chunk, as a
    fixed `lax.map` (the reference for benchmarks).
    """
    d = hidden.shape[-1]
    h = jnp.asarray(hidden).reshape(-1, d)
    y = jnp.asarray(targets).reshape(-1)
    w = jnp.asarray(weights).reshape(-1).astype(jnp.float32)
    n = h.shape[0]
    chunk = min(chunk_size, n)
    pad = (-n) % chunk
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        y = jnp.pad(y, (0, pad))
        w = jnp.pad(w, (0, pad))
    chunks = n // chunk + bool(pad)
    items = jnp.asarray(table)[1:]
    if skip_padding:
        order = jnp.argsort(w <= 0, stable=True)  # real positions first, in their order
        h, y, w = h[order], y[order], w[order]
        active = (jnp.sum(w > 0) + chunk - 1) // chunk
        total = _active_chunks_loss(h.reshape(chunks, chunk, d), y.reshape(chunks, chunk),
                                    w.reshape(chunks, chunk), items, active)
    else:
        total = jnp.sum(jax.lax.map(lambda args: _chunk_loss(*args, items),
                                    (h.reshape(chunks, chunk, d), y.reshape(chunks, chunk),
                                     w.reshape(chunks, chunk))))
    if denominator is not None:
        return total / denominator
    return total / jnp.maximum(jnp.sum(w), 1.0)


def dense_softmax_loss(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """The slow reference: all [B, T, V+1] logits at once. Used by tests."""
    logits = jnp.einsum("btd,vd->btv", hidden, table).at[..., 0].set(-jnp.inf)
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    w = weights.astype(jnp.float32)
    return jnp.sum(jnp.where(w > 0, ce * w, 0.0)) / jnp.maximum(jnp.sum(w), 1.0)
