"""Flash-style blockwise attention in pure JAX: memory linear in T, forward and backward.

Shapes: B batch, T time, N heads, H head dim, Q / K rows of one query / key block. Same contract as
`attention.reference_attention`: q, k, v [B, T, N, H] over right-padded rows, `lengths` [B] valid tokens.
Query i sees key j when both are valid (< length) and, if `causal`, j <= i; a sliding `window` keeps
i - window < j <= i (causal) or |i - j| < window (bidirectional). Rows with no visible key (padded
queries) output zeros and receive / pass on zero gradient.

Forward: online softmax over key blocks (running max m, denominator l, accumulator, all float32).
Backward (FlashAttention-2): keep only the output O and the row log-sum-exp; recompute P block by block,
D = rowsum(dO * O), dS = P * (dP - D). No [T, T] array exists in either pass.

Loop structure (measured on XLA:CPU, see experiments/attention_bench.py): `lax.map` over query blocks,
and inside it a `lax.fori_loop` over key blocks whose bounds depend on the query block index and on
max(lengths). Dynamic loop bounds skip fully masked blocks outright (causal: key blocks after the
query block; window: key blocks before it; padding: blocks past the longest row), where `lax.cond`
would still pay per-block dispatch and `vmap` over query blocks would turn the bounds into a masked
while loop that runs the longest trip for every block. Blocks are sliced straight out of the
[B, T, N, H] inputs, so no transposed or blocked copy of q, k, v is ever made.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

_NEG = -1e30  # finite "minus infinity" for masked scores: exp(_NEG - m) == 0 without inf - inf = NaN


class _Spec(NamedTuple):
    """Static configuration of one call (hashable: custom_vjp nondiff argument)."""
    causal: bool
    window: int | None
    block_q: int
    block_k: int
    t: int  # unpadded sequence length


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, *, causal: bool,
                        window: int | None = None, block_q: int = 128, block_k: int = 128) -> jax.Array:
    """softmax(QK^T / sqrt(H)) V computed block by block. q, k, v: [B, T, N, H]; lengths [B] -> [B, T, N, H].

    Any T: inputs are padded internally to a multiple of the block sizes and the padding is masked.
    Block sizes are clipped to T (rounded up to 8) so short sequences are not padded to a full block.
    """
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one [B, T, N, H] shape, got {q.shape}, {k.shape}, {v.shape}")
    if lengths.shape != q.shape[:1]:
        raise ValueError(f"lengths must be [B]={q.shape[:1]}, got {lengths.shape}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    t = q.shape[1]
    cap = -(-t // 8) * 8
    spec = _Spec(causal, window, min(block_q, cap), min(block_k, cap), t)
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, t)
    return _attention(spec, q, k, v, lengths)


# ---------------------------------------------------------------------------------------------------
# Block bookkeeping


def _pad_time(x: jax.Array, block: int) -> jax.Array:
    """[B, T, ...] -> [B, ceil(T / block) * block, ...] with zeros."""
    pad = -x.shape[1] % block
    return x if pad == 0 else jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def _key_block_range(spec: _Spec, i: jax.Array, max_len: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Key blocks [lo, hi) that hold any key visible from query block i."""
    q0 = i * spec.block_q
    q1 = jnp.minimum(q0 + spec.block_q, max_len)  # valid queries of the block: [q0, q1)
    k_lo = jnp.zeros_like(q0) if spec.window is None else jnp.maximum(q0 - spec.window + 1, 0)
    k_hi = max_len
    if spec.causal:
        k_hi = jnp.minimum(k_hi, q1)
    if spec.window is not None and not spec.causal:
        k_hi = jnp.minimum(k_hi, q1 - 1 + spec.window)
    lo = k_lo // spec.block_k
    hi = jnp.where(q0 < max_len, -(-k_hi // spec.block_k), lo)
    return lo, jnp.maximum(hi, lo)


def _query_block_range(spec: _Spec, j: jax.Array, max_len: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Query blocks [lo, hi) that see any key of key block j (the transpose of `_key_block_range`)."""
    k0 = j * spec.block_k
    k1 = jnp.minimum(k0 + spec.block_k, max_len)  # valid keys of the block: [k0, k1)
    if spec.causal:
        q_lo = k0
    elif spec.window is not None:
        q_lo = jnp.maximum(k0 - spec.window + 1, 0)
    else:
        q_lo = jnp.zeros_like(k0)
    q_hi = max_len if spec.window is None else jnp.minimum(max_len, k1 - 1 + spec.window)
    lo = q_lo // spec.block_q
    hi = jnp.where(k0 < max_len, -(-q_hi // spec.block_q), lo)
    return lo, jnp.maximum(hi, lo)


def _mask(spec: _Spec, q0: jax.Array, k0: jax.Array, lengths: jax.Array) -> jax.Array:
    """Visibility of keys [k0, k0 + K) from queries [q0, q0 + Q): [B, 1, Q, K] bool."""
    qpos = q0 + lax.broadcasted_iota(jnp.int32, (spec.block_q, spec.block_k), 0)
    kpos = k0 + lax.broadcasted_iota(jnp.int32, (spec.block_q, spec.block_k), 1)
    ok = jnp.ones((spec.block_q, spec.block_k), bool)
    if spec.causal:
        ok = kpos <= qpos
        if spec.window is not None:
            ok &= qpos - kpos < spec.window
    elif spec.window is not None:
        ok = jnp.abs(qpos - kpos) < spec.window
    n = lengths[:, None, None]
    return (ok[None] & (qpos[None] < n) & (kpos[None] < n))[:, None]


def _needs_mask(spec: _Spec, i: jax.Array, j: jax.Array, min_len: jax.Array) -> jax.Array:
    """False when every query of block i sees every key of block j in every row (no mask to apply)."""
    q0, k0 = i * spec.block_q, j * spec.block_k
    q1, k1 = q0 + spec.block_q - 1, k0 + spec.block_k - 1  # last positions
    full = (q1 < min_len) & (k1 < min_len)
    if spec.causal:
        full &= k1 <= q0
    if spec.window is not None:
        full &= (q1 - k0 < spec.window) if spec.causal else (jnp.maximum(q1 - k0, k1 - q0) < spec.window)
    return ~full


def _to_blocks(x: jax.Array, block: int) -> jax.Array:
    """[B, T, N, H] -> float32 [T / block, B, N, block, H] (T padded with zeros to a block multiple)."""
    x = _pad_time(x, block).astype(jnp.float32)
    b, t, n, h = x.shape
    return x.reshape(b, t // block, block, n, h).transpose(1, 0, 3, 2, 4)


def _from_blocks(x: jax.Array, t: int, dtype) -> jax.Array:
    """Inverse of `_to_blocks`: [T / block, B, N, block, H] -> [B, T, N, H] in `dtype`."""
    nb, b, n, block, h = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, nb * block, n, h)[:, :t].astype(dtype)


# ---------------------------------------------------------------------------------------------------
# Forward


def _forward(spec: _Spec, q, k, v, lengths):
    """Returns out [B, T, N, H] (q.dtype) and lse [nq, B, N, Q] float32 (+inf on rows with no key)."""
    b, _, n, h = q.shape
    bq, bk = spec.block_q, spec.block_k
    qb = _to_blocks(q, bq) * (1.0 / math.sqrt(h))  # the scale folded into q once
    kb, vb = _to_blocks(k, bk), _to_blocks(v, bk)
    max_len, min_len = jnp.max(lengths), jnp.min(lengths)

    def query_block(args):
        qi, i = args  # [B, N, Q, H]

        def step(masked, j, carry):
            m, l, acc = carry
            s = jnp.einsum("bnqh,bnkh->bnqk", qi, kb[j])
            if masked:
                s = jnp.where(_mask(spec, i * bq, j * bk, lengths), s, _NEG)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            alpha = jnp.exp(m - m_new)
            return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + jnp.einsum("bnqk,bnkh->bnqh", p, vb[j])

        def key_block(j, carry):
            return lax.cond(_needs_mask(spec, i, j, min_len), functools.partial(step, True),
                            functools.partial(step, False), j, carry)

        init = (jnp.full((b, n, bq), _NEG, jnp.float32), jnp.zeros((b, n, bq), jnp.float32),
                jnp.zeros((b, n, bq, h), jnp.float32))
        lo, hi = _key_block_range(spec, i, max_len)
        m, l, acc = lax.fori_loop(lo, hi, key_block, init)
        # m still at _NEG: no visible key was seen (masked scores may have left garbage in l, acc).
        empty = m <= _NEG / 2
        out = jnp.where(empty[..., None], 0.0, acc / jnp.where(empty, 1.0, l)[..., None])
        return out, jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))

    out, lse = lax.map(query_block, (qb, jnp.arange(qb.shape[0])))  # [nq, B, N, Q, H], [nq, B, N, Q]
    return _from_blocks(out, spec.t, q.dtype), lse


# ---------------------------------------------------------------------------------------------------
# Backward


def _backward(spec: _Spec, q, k, v, lengths, out, lse, d_out):
    """FlashAttention-2 backward: outer loop over key blocks, inner over the query blocks that see them.

    dK, dV of key block j accumulate in the inner carry; dQ in a float32 [nq, B, N, Q, H] carry that
    every key block updates in place.
    """
    b, _, n, h = q.shape
    bq, bk = spec.block_q, spec.block_k
    scale = 1.0 / math.sqrt(h)
    qb, dob = _to_blocks(q, bq) * scale, _to_blocks(d_out, bq)
    kb, vb = _to_blocks(k, bk), _to_blocks(v, bk)
    delta = jnp.einsum("ibnqh,ibnqh->ibnq", dob, _to_blocks(out, bq))  # D = rowsum(dO * O)
    max_len, min_len = jnp.max(lengths), jnp.min(lengths)

    def key_block(dq, args):
        kj, vj, j = args  # [B, N, K, H]

        def step(masked, i, dk, dv):
            qi, doi = qb[i], dob[i]
            s = jnp.einsum("bnqh,bnkh->bnqk", qi, kj)
            if masked:
                s = jnp.where(_mask(spec, i * bq, j * bk, lengths), s, _NEG)
            p = jnp.exp(s - lse[i][..., None])  # 0 where masked and on rows with no key (lse = +inf)
            dv = dv + jnp.einsum("bnqk,bnqh->bnkh", p, doi)
            dp = jnp.einsum("bnqh,bnkh->bnqk", doi, vj)
            ds = p * (dp - delta[i][..., None])
            dk = dk + jnp.einsum("bnqk,bnqh->bnkh", ds, qi)  # qi carries the scale already
            return dk, dv, jnp.einsum("bnqk,bnkh->bnqh", ds, kj)

        def query_block(i, carry):
            dk, dv, dq = carry  # dq stays out of the cond: its operands would be copied
            dk, dv, dq_i = lax.cond(_needs_mask(spec, i, j, min_len), functools.partial(step, True),
                                    functools.partial(step, False), i, dk, dv)
            return dk, dv, dq.at[i].add(dq_i)

        zeros = jnp.zeros((b, n, bk, h), jnp.float32)
        lo, hi = _query_block_range(spec, j, max_len)
        dk, dv, dq = lax.fori_loop(lo, hi, query_block, (zeros, zeros, dq))
        return dq, (dk, dv)

    dq, (dk, dv) = lax.scan(key_block, jnp.zeros_like(qb), (kb, vb, jnp.arange(kb.shape[0])))
    return (_from_blocks(dq * scale, spec.t, q.dtype), _from_blocks(dk, spec.t, k.dtype),
            _from_blocks(dv, spec.t, v.dtype))


# ---------------------------------------------------------------------------------------------------
# custom_vjp wiring


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(spec: _Spec, q, k, v, lengths):
    return _forward(spec, q, k, v, lengths)[0]


def _attention_fwd(spec: _Spec, q, k, v, lengths):
    out, lse = _forward(spec, q, k, v, lengths)
    return out, (q, k, v, lengths, out, lse)


def _attention_bwd(spec: _Spec, residuals, d_out):
    q, k, v, lengths, out, lse = residuals
    dq, dk, dv = _backward(spec, q, k, v, lengths, out, lse, d_out)
    return dq, dk, dv, None  # lengths: integer input, no cotangent


_attention.defvjp(_attention_fwd, _attention_bwd)
