"""Multi-head attention over right-padded sequences (valid tokens first).

Shapes: B batch, T time, N heads, H head dim. `lengths` [B] counts the valid tokens of each row.
With right padding a causal mask already hides padded keys from every valid query, so padding only
needs handling for bidirectional attention; padded query rows produce values that callers ignore.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from seqjax.models.blockwise_attention import blockwise_attention

Implementation = Literal["reference", "blockwise", "cudnn", "xla"]


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array,
                        causal: bool, dropout_rate: float = 0.0, dropout_key: jax.Array | None = None,
                        segments: jax.Array | None = None) -> jax.Array:
    """softmax(QK^T / sqrt(H)) V with causal and key-padding masks. q, k, v: [B, T, N, H].

    `dropout_key` drops attention weights with `dropout_rate` (inverted dropout), as
    torch.nn.MultiheadAttention does in training; None means no dropout. `segments` [B, T] (packed rows)
    lets a query see only keys of its own segment.
    """
    t = q.shape[1]
    logits = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
    if causal:  # right padding: the causal mask alone hides padded keys from valid queries
        mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
    else:
        mask = (jnp.arange(t)[None, :] < lengths[:, None])[:, None, None, :]
    if segments is not None:
        mask = mask & (segments[:, :, None] == segments[:, None, :])[:, None]
    # Rows with no visible key (padded queries) get uniform weights instead of NaN.
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout_key is not None and dropout_rate > 0:
        keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    weights = weights.astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", weights, v)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, *, causal: bool,
              implementation: Implementation = "reference", dropout_rate: float = 0.0,
              dropout_key: jax.Array | None = None, segments: jax.Array | None = None) -> jax.Array:
    """Dispatches to one attention implementation; all share the masking contract above.

    Dropout on the attention weights and segment masks (packed rows) exist only in `reference`."""
    if segments is not None and implementation != "reference":
        raise ValueError(f"segment-masked (packed) attention needs implementation=reference, not {implementation!r}")
    if dropout_key is not None and dropout_rate > 0 and implementation != "reference":
        raise ValueError(f"attention-weight dropout needs implementation=reference, not {implementation!r}")
    if implementation == "reference":
        return reference_attention(q, k, v, lengths, causal, dropout_rate, dropout_key, segments)
    if implementation == "blockwise":
        return blockwise_attention(q, k, v, lengths, causal=causal)
    if implementation in ("xla", "cudnn"):  # cudnn: GPU, bf16/fp16; the config refuses other settings
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, key_value_seq_lengths=lengths,
                                            implementation=implementation)
    raise ValueError(f"unknown attention implementation {implementation!r}")
