"""Next-item losses over the full catalogue, computed in chunks of positions.

Holding [B, T, V] logits at once costs B*T*V floats (128 x 200 x 3,417 = 350 MB for ML-1M) in the
forward pass and again in the backward pass. Chunks of C positions are scored one at a time with a
custom VJP. The default path (skip_padding) turns each chunk's [C, V] logits into the gradients while it
holds them (softmax minus one-hot), in the forward pass, and keeps only the [C, D] and [V, D] results; the
`lax.map` reference keeps each position's log-sum-exp and recomputes the logits in the backward pass.

Optionally (`own_items`) each position's softmax leaves out the other items of its own sequence, past and
future: the items evaluation removes as seen, and the ones K&V's SASRec+ 3000 never samples as negatives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# own_items per chunk: (sequence index [C] of each position, the sequences' item masks [E, V]); None scores
# every item.
OwnItems = tuple[jax.Array, jax.Array] | None


def _sequence_items(inputs, targets, segments, num_items, max_sequences):
    """(sequence index [R*T] of each position, [E, V] True for every item of each sequence, its inputs and
    targets). A sequence is a run of one segment value within a row; padding (segment 0) and ids past V
    (BERT4Rec's mask token) go to index E, which the scatter drops. E must bound the batch's sequences:
    past it, masks would be lost and shared (the test shows it)."""
    r, t = targets.shape
    seg = segments.reshape(-1)
    starts = (seg > 0) & ((jnp.arange(r * t) % t == 0) | (seg != jnp.roll(seg, 1)))
    seq = jnp.where(seg > 0, jnp.cumsum(starts) - 1, max_sequences)
    masks = jnp.zeros((max_sequences, num_items), bool)
    for ids in (inputs.reshape(-1), targets.reshape(-1)):
        real = (ids >= 1) & (ids <= num_items)
        masks = masks.at[jnp.where(real, seq, max_sequences), ids - 1].set(True, mode="drop")
    return seq, masks


def _drop_mask(targets: jax.Array, own: OwnItems, num_items: int) -> jax.Array | None:
    """[C, V] True where a position's logit leaves its softmax: an item of its own sequence other than its
    target. A row gather from the per-sequence masks (built once per step), not a scatter per chunk."""
    if own is None:
        return None
    seq, masks = own
    rows = masks[jnp.minimum(seq, masks.shape[0] - 1)]  # padding positions (seq = E) have weight 0
    return rows & (jnp.arange(num_items)[None, :] != (targets - 1)[:, None])


def _logits(hidden, targets, items, own):
    logits = jnp.einsum("cd,vd->cv", hidden, items, preferred_element_type=jnp.float32)
    drop = _drop_mask(targets, own, items.shape[0])
    return logits if drop is None else jnp.where(drop, -jnp.inf, logits)


@jax.custom_vjp
def _chunk_loss(hidden: jax.Array, targets: jax.Array, weights: jax.Array, items: jax.Array,
                own: OwnItems = None) -> jax.Array:
    """hidden [C, D], targets [C] in 1..V (0 = padding), weights [C], items [V, D] (rows 1..V of the
    table) -> weighted sum of softmax CE over the C positions."""
    return _chunk_forward(hidden, targets, weights, items, own)[0]


def _chunk_forward(hidden, targets, weights, items, own=None):
    """(weighted CE sum, log-sum-exp [C], logits [C, V])."""
    logits = _logits(hidden, targets, items, own)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # Padding targets (0) point at item 1's column: their weight is 0, so where() drops them.
    target_logit = jnp.take_along_axis(logits, jnp.maximum(targets - 1, 0)[:, None], axis=-1)[:, 0]
    return jnp.sum(jnp.where(weights > 0, (lse - target_logit) * weights, 0.0)), lse, logits


def _chunk_fwd(hidden, targets, weights, items, own=None):
    loss, lse, _ = _chunk_forward(hidden, targets, weights, items, own)
    return loss, (hidden, targets, weights, items, own, lse)  # only [C] extra: the logits are recomputed


def _chunk_grads(hidden, targets, weights, items, logits, lse, g):
    """d loss / d logits = w * (softmax - onehot(target)), from the chunk's logits and log-sum-exp: one exp
    and two matmuls; no [C, V] tensor outlives the chunk. A left-out item's exp(-inf) gives it no gradient.
    Returns (d_hidden [C, D] in hidden's dtype, d_items [V, D] float32)."""
    w = jnp.where(weights > 0, weights, 0.0) * g
    onehot = jnp.arange(items.shape[0])[None, :] == (targets - 1)[:, None]
    dlogits = (jnp.exp(logits - lse[:, None]) - onehot) * w[:, None]
    d_hidden = jnp.einsum("cv,vd->cd", dlogits, items.astype(jnp.float32)).astype(hidden.dtype)
    return d_hidden, jnp.einsum("cv,cd->vd", dlogits, hidden.astype(jnp.float32))


def _chunk_bwd(res, g):
    hidden, targets, weights, items, own, lse = res
    logits = _logits(hidden, targets, items, own)  # recomputed: the reference keeps only the lse
    d_hidden, d_items = _chunk_grads(hidden, targets, weights, items, logits, lse, g)
    return d_hidden, None, None, d_items.astype(items.dtype), None


_chunk_loss.defvjp(_chunk_fwd, _chunk_bwd)


def _own_chunk(own, i):
    """Chunk i's share of own items: the positions' sequence indices [N, C] sliced, the masks whole."""
    return None if own is None else (own[0][i], own[1])


def _active_chunks_loss(h, y, w, items, active, own, denominator):
    """Summed loss of the first `active` chunks of h [N, C, D], y, w [N, C], over `denominator`; later
    chunks are skipped."""
    total = jax.lax.fori_loop(0, active, lambda i, t: t + _chunk_forward(h[i], y[i], w[i], items,
                                                                         _own_chunk(own, i))[0],
                              jnp.zeros((), jnp.float32))
    return total / denominator


def _active_chunks_fwd(h, y, w, items, active, own, denominator):
    """The loss and its gradients in one pass: each chunk's logits are computed once, not again in the
    backward pass. The gradients assume the output's cotangent is 1 (a loss) and are scaled by the
    actual one in `_active_chunks_bwd`, which is then exact: x * 1.0 == x."""
    g = jnp.ones((), jnp.float32) / denominator  # what d(total / denominator) / d total is in float32

    def body(i, carry):
        total, d_h, d_items = carry
        loss, lse, logits = _chunk_forward(h[i], y[i], w[i], items, _own_chunk(own, i))
        d_chunk, d_chunk_items = _chunk_grads(h[i], y[i], w[i], items, logits, lse, g)
        return total + loss, d_h.at[i].set(d_chunk), d_items + d_chunk_items

    init = (jnp.zeros((), jnp.float32), jnp.zeros_like(h), jnp.zeros(items.shape, jnp.float32))
    total, d_h, d_items = jax.lax.fori_loop(0, active, body, init)
    return total / denominator, (d_h, d_items.astype(items.dtype))


def _active_chunks_bwd(res, g):
    d_h, d_items = res
    return (d_h * g.astype(d_h.dtype), None, None, d_items * g.astype(d_items.dtype), None, None, None)


_active_chunks_loss = jax.custom_vjp(_active_chunks_loss)
_active_chunks_loss.defvjp(_active_chunks_fwd, _active_chunks_bwd)


def full_softmax_loss(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array,
                      chunk_size: int = 512, denominator: float | None = None,
                      skip_padding: bool = True, own_items: tuple | None = None,
                      max_sequences: int | None = None) -> jax.Array:
    """Mean softmax cross-entropy over positions with weight > 0 (or their sum / `denominator`).

    hidden [B, T, D], table [V+1, D] (row 0 = padding, never a candidate), targets [B, T] item ids,
    weights [B, T] (0 on padding). `skip_padding` moves the real positions to the front and scores only
    the chunks that hold some (a loop with a data-dependent trip count); False scores every chunk, as a
    fixed `lax.map` (the reference for benchmarks).
    `own_items` = (inputs [B, T], segments [B, T] or None) leaves out of position (b, t)'s softmax every
    item of row b's inputs and targets in its segment (packed rows, data.pack; else the whole row), except
    its own target. `max_sequences` bounds the sequences in the batch (data.batch_size; default: one per
    row unpacked, one per position packed): the masks are [max_sequences, V], built once per step.
    """
    d = hidden.shape[-1]
    h = jnp.asarray(hidden).reshape(-1, d)
    y = jnp.asarray(targets).reshape(-1)
    w = jnp.asarray(weights).reshape(-1).astype(jnp.float32)
    n = h.shape[0]
    chunk = min(chunk_size, n)
    pad = (-n) % chunk
    chunks = n // chunk + bool(pad)
    flat = [h, y, w]
    if own_items is not None:  # each position's sequence index travels with it through padding and sorting
        inputs, segments = own_items
        unpacked = segments is None
        segments = jnp.ones(targets.shape, jnp.int32) if unpacked else jnp.asarray(segments)
        if max_sequences is None:
            max_sequences = targets.shape[0] if unpacked else n
        seq, masks = _sequence_items(jnp.asarray(inputs), jnp.asarray(targets), segments, table.shape[0] - 1,
                                     max_sequences)
        flat.append(seq)
    if pad:
        flat = [jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)) for a in flat]
    if skip_padding:
        order = jnp.argsort(flat[2] <= 0, stable=True)  # real positions first, in their order
        flat = [a[order] for a in flat]
    h, y, w, *pos = [a.reshape(chunks, chunk, *a.shape[1:]) for a in flat]
    own = None if own_items is None else (pos[0], masks)
    items = jnp.asarray(table)[1:]
    denominator = jnp.maximum(jnp.sum(w), 1.0) if denominator is None else jnp.float32(denominator)
    if skip_padding:
        return _active_chunks_loss(h, y, w, items, (jnp.sum(w > 0) + chunk - 1) // chunk, own, denominator)
    total = jnp.sum(jax.lax.map(lambda i: _chunk_loss(h[i], y[i], w[i], items, _own_chunk(own, i)),
                                jnp.arange(chunks)))
    return total / denominator


def dense_softmax_loss(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array,
                       drop: jax.Array | None = None) -> jax.Array:
    """The slow reference: all [B, T, V+1] logits at once; `drop` [B, T, V+1] True leaves an item out of
    that position's softmax. Used by tests."""
    logits = jnp.einsum("btd,vd->btv", hidden, table).at[..., 0].set(-jnp.inf)
    if drop is not None:
        logits = jnp.where(drop, -jnp.inf, logits)
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    w = weights.astype(jnp.float32)
    return jnp.sum(jnp.where(w > 0, ce * w, 0.0)) / jnp.maximum(jnp.sum(w), 1.0)
