"""Flash-style blockwise attention in pure JAX: memory linear in T, forward and backward.

Shapes: B batch, T time, N heads, H head dim, Q / K rows of one query / key block. Same contract as
`attention.reference_attention`: q, k, v [B, T, N, H] over right-padded rows, `lengths` [B] valid tokens.
Query i sees key j when both are valid (< length) and, if `causal`, j <= i; a sliding `window` keeps
i - window < j <= i (causal) or |i - j| < window (bidirectional). Rows with no visible key (padded
queries) output zeros and receive / pass on zero gradient.

Forward: online softmax over key blocks (running max m, denominator l, accumulator, all float32).
Backward (FlashAttention-2): keep only the output O and the row log-sum-exp; recompute P block by block,
D = rowsum(dO * O), dS = P * (dP - D). No [T, T] array exists in either pass.

Loop structure (chosen by measurement on a 2-core XLA:CPU; experiments/attention_bench.py):
  forward   fori_loop over row groups (C = batch_rows * N (batch, head) rows, sized so one [C, Q, K]
            score tile is ~512 KiB) -> fori_loop over query blocks -> fori_loop over key blocks;
  backward  fori_loop over row groups -> fori_loop over key blocks -> fori_loop over query blocks.
Fully masked blocks are never visited: the inner loop bounds depend on the outer block index and on
the group's longest row (causal: key blocks after the query block; window: key blocks before it;
padding: blocks past the longest row). Dynamic loop bounds skip that work outright, where vmap over
blocks would run every block (a batched bound becomes a masked while loop) and lax.cond per block
would still dispatch it. Blocks that are visited but cut by a mask (the diagonal, padding, window
edges) take a `lax.cond` branch that applies it; interior blocks skip the mask (15-30% faster
end to end than masking every block). Sequential loops beat vmap over query blocks here because the
per-step tile stays in cache; XLA still spreads each step's matmuls over both cores.
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
    batch_rows: int  # batch rows per loop step; C = batch_rows * N (batch, head) rows per score tile


# Score-tile size per loop step, C * Q * K float32 elements: 2^17 = 512 KiB, half of one core's L2, so
# the scores, probabilities and their reductions stay in cache between the fused ops of one step.
_TILE_ELEMENTS = 1 << 17


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, *, causal: bool,
                        window: int | None = None, block_q: int = 128, block_k: int = 128) -> jax.Array:
    """softmax(QK^T / sqrt(H)) V computed block by block. q, k, v: [B, T, N, H]; lengths [B] -> [B, T, N, H].

    Any T: a block size is first evened out over the blocks it needs (T = 200 with 128 -> two blocks
    of 100, not 128 + 72), which avoids padding whenever T divides evenly; otherwise q, k, v are padded
    to a block multiple and the padding is masked. block_q / block_k are upper bounds.
    """
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one [B, T, N, H] shape, got {q.shape}, {k.shape}, {v.shape}")
    if lengths.shape != q.shape[:1]:
        raise ValueError(f"lengths must be [B]={q.shape[:1]}, got {lengths.shape}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    b, t, n, _ = q.shape
    bq, bk = _even_block(t, block_q), _even_block(t, block_k)
    rows = max(r for r in range(1, b + 1) if b % r == 0 and (r == 1 or r * n * bq * bk <= _TILE_ELEMENTS))
    spec = _Spec(causal, window, bq, bk, t, rows)
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, t)
    return _attention(spec, q, k, v, lengths)


def _even_block(t: int, block: int) -> int:
    """The smallest block that covers T in as many blocks as `block` would (measured: padding T = 200
    to 256 cost 1.5x the time of two unpadded blocks of 100; blocks need not be multiples of 8)."""
    return -(-t // -(-t // block))


# ---------------------------------------------------------------------------------------------------
# Blocks. Loop steps read and write [batch_rows, block] slices of the [B, T, N, H] arrays directly; the
# slice, the cast to float32 and the [C, block, H] relayout fuse into one small copy per step, so no
# transposed or blocked copy of a whole input is ever made (on XLA:CPU every fresh large buffer also
# costs page faults on first touch, which made whole-array relayouts a measurable share of the time).


def _pad_time(x: jax.Array, block: int, axis: int = 1) -> jax.Array:
    """Zero-pads `axis` (time) up to a multiple of `block`."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, -x.shape[axis] % block)
    return x if pad[axis][1] == 0 else jnp.pad(x, pad)


def _read(x: jax.Array, g: jax.Array, rows: int, t0: jax.Array, size: int) -> jax.Array:
    """Rows [g * rows, +rows), times [t0, +size) of [B, T, N, H] as float32 [C, size, H], C = rows * N."""
    _, _, n, h = x.shape
    blk = lax.dynamic_slice(x, (g * rows, t0, 0, 0), (rows, size, n, h))
    return blk.astype(jnp.float32).transpose(0, 2, 1, 3).reshape(rows * n, size, h)


def _write(x: jax.Array, blk: jax.Array, g: jax.Array, rows: int, t0: jax.Array) -> jax.Array:
    """Stores blk [C, size, H] into x [B, T, N, H] at rows [g * rows, +rows), times [t0, +size)."""
    c, size, h = blk.shape
    blk = blk.reshape(rows, c // rows, size, h).transpose(0, 2, 1, 3).astype(x.dtype)
    return lax.dynamic_update_slice(x, blk, (g * rows, t0, 0, 0))


def _read_rows(x: jax.Array, g: jax.Array, rows: int, t0: jax.Array, size: int) -> jax.Array:
    """Per-row statistics: x [B, N, T] -> [C, size]."""
    n = x.shape[1]
    return lax.dynamic_slice(x, (g * rows, 0, t0), (rows, n, size)).reshape(rows * n, size)


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


def _mask(spec: _Spec, i: jax.Array, j: jax.Array, lengths: jax.Array, keys_first: bool = False) -> jax.Array:
    """Visibility of key block j from query block i, per row: [C, Q, K] bool ([C, K, Q] if keys_first)."""
    shape = (spec.block_k, spec.block_q) if keys_first else (spec.block_q, spec.block_k)
    qpos = i * spec.block_q + lax.broadcasted_iota(jnp.int32, shape, 1 if keys_first else 0)
    kpos = j * spec.block_k + lax.broadcasted_iota(jnp.int32, shape, 0 if keys_first else 1)
    ok = jnp.ones(shape, bool)
    if spec.causal:
        ok = kpos <= qpos
        if spec.window is not None:
            ok &= qpos - kpos < spec.window
    elif spec.window is not None:
        ok = jnp.abs(qpos - kpos) < spec.window
    n = lengths[:, None, None]
    return ok[None] & (qpos[None] < n) & (kpos[None] < n)


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


def _group_lengths(lengths: jax.Array, g: jax.Array, rows: int, n: int):
    """Lengths of the C = rows * N (batch, head) rows of group g, and their max and min."""
    lens = jnp.repeat(lax.dynamic_slice_in_dim(lengths, g * rows, rows), n)
    return lens, jnp.max(lens), jnp.min(lens)


# ---------------------------------------------------------------------------------------------------
# Forward


def _forward(spec: _Spec, q, k, v, lengths):
    """Returns out [B, T, N, H] (q.dtype) and lse [B, N, Tq] float32 (+inf on rows with no key)."""
    b, _, n, h = q.shape
    bq, bk, rows = spec.block_q, spec.block_k, spec.batch_rows
    scale = 1.0 / math.sqrt(h)
    qp, kp, vp = _pad_time(q, bq), _pad_time(k, bk), _pad_time(v, bk)
    tq = qp.shape[1]

    def group(g, carry):
        lens, max_len, min_len = _group_lengths(lengths, g, rows, n)

        def query_block(i, carry):
            out, lse = carry
            qi = _read(qp, g, rows, i * bq, bq) * scale  # [C, Q, H], the scale folded into q

            def step(masked, j, carry):
                m, l, acc = carry
                s = jnp.einsum("cqh,ckh->cqk", qi, _read(kp, g, rows, j * bk, bk))
                if masked:
                    s = jnp.where(_mask(spec, i, j, lens), s, _NEG)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.exp(s - m_new[..., None])
                alpha = jnp.exp(m - m_new)
                pv = jnp.einsum("cqk,ckh->cqh", p, _read(vp, g, rows, j * bk, bk))
                return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + pv

            def key_block(j, carry):  # the mask only on blocks that cut through it (diagonal, padding)
                return lax.cond(_needs_mask(spec, i, j, min_len), functools.partial(step, True),
                                functools.partial(step, False), j, carry)

            c = qi.shape[0]
            init = (jnp.full((c, bq), _NEG, jnp.float32), jnp.zeros((c, bq), jnp.float32),
                    jnp.zeros((c, bq, h), jnp.float32))
            m, l, acc = lax.fori_loop(*_key_block_range(spec, i, max_len), key_block, init)
            # m still at _NEG: no visible key was seen (masked scores may have left garbage in l, acc).
            empty = m <= _NEG / 2
            safe_l = jnp.where(empty, 1.0, l)
            out = _write(out, jnp.where(empty[..., None], 0.0, acc / safe_l[..., None]), g, rows, i * bq)
            lse_i = jnp.where(empty, jnp.inf, m + jnp.log(safe_l)).reshape(rows, n, bq)
            return out, lax.dynamic_update_slice(lse, lse_i, (g * rows, 0, i * bq))

        # Query blocks past the group's longest row keep their zero output and +inf lse.
        return lax.fori_loop(0, -(-max_len // bq), query_block, carry)

    init = (jnp.zeros((b, tq, n, h), q.dtype), jnp.full((b, n, tq), jnp.inf, jnp.float32))
    out, lse = lax.fori_loop(0, b // rows, group, init)
    return out[:, :spec.t], lse


# ---------------------------------------------------------------------------------------------------
# Backward


def _backward(spec: _Spec, q, k, v, lengths, out, lse, d_out):
    """FlashAttention-2 backward: outer loop over key blocks, inner over the query blocks that see them.

    dK, dV of key block j accumulate in the inner carry; dQ of the row group in a float32
    [nq, C, H, Q] carry that every key block updates in place, stored once the group is done.
    Scores are computed transposed ([C, K, Q]) so that all five matmuls contract the last axis of their
    left operand: XLA:CPU runs a left operand contracted on its first axis about 1.5x slower.
    """
    b, _, n, h = q.shape
    bq, bk, rows = spec.block_q, spec.block_k, spec.batch_rows
    scale = 1.0 / math.sqrt(h)
    qp, dop = _pad_time(q, bq), _pad_time(d_out, bq)
    kp, vp = _pad_time(k, bk), _pad_time(v, bk)
    nq = qp.shape[1] // bq
    # D = rowsum(dO * O): [B, N, Tq]
    delta = _pad_time(jnp.einsum("btnh,btnh->bnt", d_out.astype(jnp.float32), out.astype(jnp.float32)), bq, 2)

    def group(g, carry):
        lens, max_len, min_len = _group_lengths(lengths, g, rows, n)

        def key_block(j, carry):
            dq_g, dk, dv = carry
            kj, vj = _read(kp, g, rows, j * bk, bk), _read(vp, g, rows, j * bk, bk)  # [C, K, H]
            kj_t = kj.transpose(0, 2, 1)  # [C, H, K]

            def step(masked, i, dk_j, dv_j):
                qi = _read(qp, g, rows, i * bq, bq) * scale
                doi = _read(dop, g, rows, i * bq, bq)
                s_t = jnp.einsum("ckh,cqh->ckq", kj, qi)
                if masked:
                    s_t = jnp.where(_mask(spec, i, j, lens, keys_first=True), s_t, _NEG)
                # 0 where masked and on rows with no visible key (lse = +inf there).
                p_t = jnp.exp(s_t - _read_rows(lse, g, rows, i * bq, bq)[:, None, :])
                dv_j = dv_j + jnp.einsum("ckq,cqh->ckh", p_t, doi)
                dp_t = jnp.einsum("ckh,cqh->ckq", vj, doi)
                ds_t = p_t * (dp_t - _read_rows(delta, g, rows, i * bq, bq)[:, None, :])
                dk_j = dk_j + jnp.einsum("ckq,cqh->ckh", ds_t, qi)  # qi carries the scale already
                return dk_j, dv_j, jnp.einsum("chk,ckq->chq", kj_t, ds_t)

            def query_block(i, carry):
                dk_j, dv_j, dq_g = carry  # dq_g stays out of the cond: a cond operand would be copied
                dk_j, dv_j, dq_i = lax.cond(_needs_mask(spec, i, j, min_len), functools.partial(step, True),
                                            functools.partial(step, False), i, dk_j, dv_j)
                return dk_j, dv_j, dq_g.at[i].add(dq_i)

            zeros = jnp.zeros(kj.shape, jnp.float32)
            lo, hi = _query_block_range(spec, j, max_len)
            dk_j, dv_j, dq_g = lax.fori_loop(lo, hi, query_block, (zeros, zeros, dq_g))
            return dq_g, _write(dk, dk_j, g, rows, j * bk), _write(dv, dv_j, g, rows, j * bk)

        dq, dk, dv = carry
        dq_g = jnp.zeros((nq, rows * n, h, bq), jnp.float32)  # dQ^T per query block
        # Key blocks past the group's longest row keep their zero gradient.
        dq_g, dk, dv = lax.fori_loop(0, -(-max_len // bk), key_block, (dq_g, dk, dv))
        store = lambda i, dq: _write(dq, dq_g[i].transpose(0, 2, 1) * scale, g, rows, i * bq)
        return lax.fori_loop(0, nq, store, dq), dk, dv

    init = (jnp.zeros(qp.shape, q.dtype), jnp.zeros(kp.shape, k.dtype), jnp.zeros(vp.shape, v.dtype))
    dq, dk, dv = lax.fori_loop(0, b // rows, group, init)
    return dq[:, :spec.t], dk[:, :spec.t], dv[:, :spec.t]


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
