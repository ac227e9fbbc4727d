"""HSTU pointwise attention (Zhai et al., "Actions Speak Louder than Words", ICML 2024).

Shapes: B batch, T time, N heads, H head dim, G bias-table heads (1: one table shared by all heads,
or N: one per head), P position buckets, S time buckets, Q / K rows of one query / key block.

    out_i = c_i * sum_j m_ij * SiLU(q_i . k_j / sqrt(H) + pos[g, bp(i - j)] + time[g, bt(|t_i - t_j|)]) v_j

m_ij = (j <= i < length): causal, and both tokens valid (right padding, valid tokens first, as in
`attention.py`); padded query rows output zeros. There is no softmax: the weights are pointwise SiLUs
and c_i replaces the softmax denominator. `normalizer="length"`: c_i = 1 / length of the row (the
paper divides by the sequence length); `"causal"`: c_i = 1 / (i + 1), the number of keys query i sees,
so an output never depends on how many tokens follow it and a prefix encodes the same on its own.
HSTU layer-normalises the attention output per token, which cancels c_i up to the LayerNorm's epsilon;
"length" lets that epsilon dominate early positions of long rows ((i + 1) / length small), "causal" not.
The 1 / sqrt(H) on q . k (absent from the paper's equation) keeps the SiLU inputs O(1) at any H.

Relative biases: learned tables indexed by float-like buckets of an integer distance d >= 0 (`bucketize`):
d itself below 2^(m+1), then 2^m buckets per octave (the leading bit and the next m bits of d, as in a
float with an m-bit mantissa), the last bucket catching everything beyond. Integer bit arithmetic, so
both implementations (and every backend) agree on every boundary.
  position  d = i - j, m = POSITION_MANTISSA_BITS = 3: exact below 16, then 8 buckets per octave
            (P = 64 tells distances apart up to 1023).
  time      d = |t_i - t_j| in seconds, m = TIME_MANTISSA_BITS = 1: exact below 4 s, then 2 buckets per
            octave (S = 64 covers every int32 difference, 68 years). Used only when `timestamps` are given.
            The authors' code measures from the time of the event being predicted, t_(i+1) - t_j (at
            inference, the target's time); here it is the query's own time, which evaluation knows
            without the target's timestamp. ML-1M, the benchmark, has no timestamps, so no time bias.

Two implementations under `hstu_attention`: "reference" (dense [B, N, T, T], the slow truth) and
"blockwise" (`blockwise_attention.py`'s loop structure: row groups > query blocks > key blocks forward,
row groups > key blocks > query blocks backward, fully masked blocks never visited, the mask applied only
on blocks that cut it, any T). The blockwise path computes the bias of each [Q, K] tile from positions and
timestamps inside the loop, never a [T, T] array, and its custom VJP recomputes the scores tile by tile
and returns gradients for q, k, v and both bias tables (scatter-adds of the tile's score gradients into
the P or S buckets). No statistics are saved: without a softmax the backward pass needs only the inputs.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

# Shared block machinery of the softmax kernel (same [B, T, N, H] layout and row-group tiling).
from seqjax.models.blockwise_attention import (
    _TILE_ELEMENTS,
    _even_block,
    _group_lengths,
    _pad_time,
    _read,
    _write,
)

HSTU_IMPLEMENTATIONS: tuple[str, ...] = ("reference", "blockwise")  # cuDNN has no HSTU kernel
Normalizer = Literal["length", "causal"]
NORMALIZERS: tuple[str, ...] = ("length", "causal")
POSITION_MANTISSA_BITS = 3
TIME_MANTISSA_BITS = 1


def check_implementation(implementation: str) -> None:
    """Raises ValueError unless `implementation` is one HSTU supports (HSTU_IMPLEMENTATIONS)."""
    if implementation == "cudnn":
        raise ValueError("HSTU attention has no cuDNN implementation: cuDNN fuses softmax attention only, and "
                         "HSTU uses pointwise SiLU weights with relative position/time biases; use one of "
                         f"{HSTU_IMPLEMENTATIONS}")
    if implementation not in HSTU_IMPLEMENTATIONS:
        raise ValueError(f"HSTU attention implementation must be one of {HSTU_IMPLEMENTATIONS}, got {implementation!r}")


def bucketize(d: jax.Array, mantissa_bits: int, num_buckets: int) -> jax.Array:
    """Integer distances d >= 0 (negatives count as 0) -> int32 buckets in [0, num_buckets).

    d < 2^(m+1) keeps its own bucket; above, bucket = 2^m * (e - m) + (d >> (e - m)) with e = floor(log2 d):
    monotone, 2^m buckets per octave, the last bucket for everything past the table.
    """
    d = jnp.maximum(d.astype(jnp.int32), 0)
    exponent = 31 - lax.clz(jnp.maximum(d, 1))  # floor(log2 d)
    shift = jnp.maximum(exponent - mantissa_bits, 0)
    return jnp.minimum(shift * (1 << mantissa_bits) + (d >> shift), num_buckets - 1)


def hstu_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, pos_bias_table: jax.Array,
                   time_bias_table: jax.Array | None = None, timestamps: jax.Array | None = None, *,
                   implementation: str = "reference", normalizer: Normalizer = "length",
                   block_q: int = 128, block_k: int = 128) -> jax.Array:
    """HSTU attention (module docstring). q, k, v [B, T, N, H]; lengths [B]; pos_bias_table [G, P];
    time_bias_table [G, S] (needed with timestamps, ignored and given zero gradient without);
    timestamps [B, T] integer seconds or None -> [B, T, N, H] in q's dtype. G is 1 or N.
    block_q / block_k: upper bounds on the blockwise path's tile (evened out over T)."""
    check_implementation(implementation)
    _check_inputs(q, k, v, lengths, pos_bias_table, time_bias_table, timestamps, normalizer)
    if implementation == "reference":
        return reference_hstu_attention(q, k, v, lengths, pos_bias_table, time_bias_table, timestamps,
                                        normalizer=normalizer)
    return blockwise_hstu_attention(q, k, v, lengths, pos_bias_table, time_bias_table, timestamps,
                                    normalizer=normalizer, block_q=block_q, block_k=block_k)


def _check_inputs(q, k, v, lengths, pos_table, time_table, timestamps, normalizer) -> None:
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one [B, T, N, H] shape, got {q.shape}, {k.shape}, {v.shape}")
    b, t, n, _ = q.shape
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [B]={(b,)}, got {lengths.shape}")
    tables = [("pos_bias_table", pos_table)] + ([("time_bias_table", time_table)] if time_table is not None else [])
    for name, table in tables:
        if table.ndim != 2 or table.shape[0] not in (1, n):
            raise ValueError(f"{name} must be [G, buckets] with G = 1 (shared) or N = {n}, got {table.shape}")
    if timestamps is not None:
        if time_table is None:
            raise ValueError("timestamps need a time_bias_table")
        if timestamps.shape != (b, t) or not jnp.issubdtype(timestamps.dtype, jnp.integer):
            raise ValueError(f"timestamps must be integer [B, T]={(b, t)}, got {timestamps.dtype} {timestamps.shape}")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")


# ---------------------------------------------------------------------------------------------------
# Reference: dense [B, N, T, T] scores, everything in float32, plain autodiff.


def reference_hstu_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, pos_bias_table: jax.Array,
                             time_bias_table: jax.Array | None = None, timestamps: jax.Array | None = None, *,
                             normalizer: Normalizer = "length") -> jax.Array:
    """The dense HSTU attention of the module docstring; same arguments and result as `hstu_attention`."""
    dtype, (_, t, _, h) = q.dtype, q.shape
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    s = jnp.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(h)
    i, j = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    pos = pos_bias_table.astype(jnp.float32)
    s = s + pos[:, bucketize(i - j, POSITION_MANTISSA_BITS, pos.shape[1])][None]  # [1, G, T, T]
    if timestamps is not None:
        ts = timestamps.astype(jnp.int32)
        tim = time_bias_table.astype(jnp.float32)
        buckets = bucketize(jnp.abs(ts[:, :, None] - ts[:, None, :]), TIME_MANTISSA_BITS, tim.shape[1])
        s = s + jnp.moveaxis(tim[:, buckets], 0, 1)  # [B, G, T, T]
    lengths = jnp.clip(lengths, 0, t)  # as the blockwise path: the "length" normalizer counts at most T
    valid = jnp.arange(t)[None, :] < lengths[:, None]  # [B, T]
    mask = (j <= i)[None, None] & valid[:, None, :, None] & valid[:, None, None, :]
    if normalizer == "length":
        c = 1.0 / jnp.maximum(lengths, 1).astype(jnp.float32)[:, None, None, None]
    else:
        c = 1.0 / (i + 1).astype(jnp.float32)
    weights = jnp.where(mask, jax.nn.silu(s), 0.0) * c
    return jnp.einsum("bnts,bsnh->btnh", weights, v).astype(dtype)


# ---------------------------------------------------------------------------------------------------
# Blockwise


class _Spec(NamedTuple):
    """Static configuration of one call (hashable: custom_vjp nondiff argument)."""
    block_q: int
    block_k: int
    t: int  # unpadded sequence length
    batch_rows: int  # batch rows per loop step; C = batch_rows * N (batch, head) rows per score tile
    normalizer: str
    has_time: bool


def blockwise_hstu_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, pos_bias_table: jax.Array,
                             time_bias_table: jax.Array | None = None, timestamps: jax.Array | None = None, *,
                             normalizer: Normalizer = "length", block_q: int = 128, block_k: int = 128) -> jax.Array:
    """HSTU attention block by block, memory linear in T; arguments as `hstu_attention`."""
    _check_inputs(q, k, v, lengths, pos_bias_table, time_bias_table, timestamps, normalizer)
    b, t, n, _ = q.shape
    bq, bk = _even_block(t, block_q), _even_block(t, block_k)
    rows = max(r for r in range(1, b + 1) if b % r == 0 and (r == 1 or r * n * bq * bk <= _TILE_ELEMENTS))
    has_time = timestamps is not None
    spec = _Spec(bq, bk, t, rows, normalizer, has_time)
    if time_bias_table is None:  # a stand-in that receives a zero gradient
        time_bias_table = jnp.zeros((1, 1), pos_bias_table.dtype)
    ts = timestamps.astype(jnp.int32) if has_time else jnp.zeros((b, 1), jnp.int32)
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, t)
    return _hstu(spec, q, k, v, pos_bias_table, time_bias_table, lengths, ts)


def _key_blocks_end(spec: _Spec, i: jax.Array, max_len: jax.Array) -> jax.Array:
    """Key blocks [0, end) hold every key visible from query block i (causal, < the group's max length)."""
    q0 = i * spec.block_q
    return jnp.where(q0 < max_len, -(-jnp.minimum(q0 + spec.block_q, max_len) // spec.block_k), 0)


def _query_blocks(spec: _Spec, j: jax.Array, max_len: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Query blocks [lo, hi) that see any key of key block j."""
    lo = j * spec.block_k // spec.block_q
    return lo, jnp.maximum(jnp.where(j * spec.block_k < max_len, -(-max_len // spec.block_q), lo), lo)


def _positions(spec: _Spec, i: jax.Array, j: jax.Array, keys_first: bool) -> tuple[jax.Array, jax.Array]:
    """Query and key positions of tile (i, j), each broadcast to [Q, K] ([K, Q] if keys_first)."""
    shape = (spec.block_k, spec.block_q) if keys_first else (spec.block_q, spec.block_k)
    qpos = i * spec.block_q + lax.broadcasted_iota(jnp.int32, shape, 1 if keys_first else 0)
    kpos = j * spec.block_k + lax.broadcasted_iota(jnp.int32, shape, 0 if keys_first else 1)
    return qpos, kpos


def _mask(spec: _Spec, i, j, lens, keys_first: bool) -> jax.Array:
    """Causal and valid-token visibility of tile (i, j) per row: [C, Q, K] bool ([C, K, Q] if keys_first)."""
    qpos, kpos = _positions(spec, i, j, keys_first)
    return (kpos <= qpos)[None] & (qpos[None] < lens[:, None, None])  # kpos <= qpos < length


def _needs_mask(spec: _Spec, i, j, min_len) -> jax.Array:
    """False when every query of block i sees every key of block j in every row of the group."""
    q0, k0 = i * spec.block_q, j * spec.block_k
    return ~((q0 + spec.block_q - 1 < min_len) & (k0 + spec.block_k - 1 <= q0))


def _bias_buckets(spec: _Spec, ts_q, ts_k, g, i, j, keys_first: bool, num_pos: int, num_time: int):
    """Bucket indices of tile (i, j): position [Q, K] and time [R, Q, K] (None without timestamps);
    [K, Q] / [R, K, Q] if keys_first. R = batch_rows. ts_q / ts_k: [B, T] padded to the block sizes."""
    qpos, kpos = _positions(spec, i, j, keys_first)
    pos = bucketize(qpos - kpos, POSITION_MANTISSA_BITS, num_pos)
    if not spec.has_time:
        return pos, None
    rows = spec.batch_rows
    tq = lax.dynamic_slice(ts_q, (g * rows, i * spec.block_q), (rows, spec.block_q))
    tk = lax.dynamic_slice(ts_k, (g * rows, j * spec.block_k), (rows, spec.block_k))
    dt = jnp.abs(tk[:, :, None] - tq[:, None, :]) if keys_first else jnp.abs(tq[:, :, None] - tk[:, None, :])
    return pos, bucketize(dt, TIME_MANTISSA_BITS, num_time)


def _bias(pos_table, time_table, pos_idx, time_idx, rows: int, n: int) -> jax.Array:
    """Tile bias [C, Q, K] (or keys first) gathered from the float32 tables [G, P], [G, S]."""
    bias = jnp.take(pos_table, pos_idx, axis=1, mode="clip")[None]  # [1, G, Q, K]
    if time_idx is not None:
        bias = bias + jnp.moveaxis(jnp.take(time_table, time_idx, axis=1, mode="clip"), 0, 1)  # [R, G, Q, K]
    return jnp.broadcast_to(bias, (rows, n) + pos_idx.shape).reshape((rows * n,) + pos_idx.shape)


def _bias_grads(ds, pos_idx, time_idx, d_pos, d_time, rows: int, n: int):
    """Scatter-adds the tile's score gradient ds [C, A, B] into the bucket gradients d_pos [G, P] and
    d_time [G, S] (float32); the heads are summed first when a table is shared (G = 1)."""
    ds = ds.reshape((rows, n) + ds.shape[1:])

    def per_table(x, idx, acc):  # x [R', N, A, B], idx [R', A, B] or [A, B] -> acc [G, buckets]
        if acc.shape[0] == 1:
            x = x.sum(1, keepdims=True)
        ids = jnp.broadcast_to(idx, (x.shape[0],) + x.shape[2:]).reshape(-1)
        x = jnp.moveaxis(x, 1, -1).reshape(-1, acc.shape[0])  # [R' * A * B, G]
        return acc + jax.ops.segment_sum(x, ids, num_segments=acc.shape[1]).T

    d_pos = per_table(ds.sum(0, keepdims=True), pos_idx, d_pos)
    if time_idx is not None:
        d_time = per_table(ds, time_idx, d_time)
    return d_pos, d_time


def _row_scale(spec: _Spec, lens, i) -> jax.Array:
    """c for the queries of block i: [C, 1] ("length") or [1, Q] ("causal"), float32."""
    if spec.normalizer == "length":
        return 1.0 / jnp.maximum(lens, 1).astype(jnp.float32)[:, None]
    return 1.0 / (i * spec.block_q + 1 + jnp.arange(spec.block_q, dtype=jnp.float32))[None, :]


def _forward(spec: _Spec, q, k, v, pos_table, time_table, lengths, ts):
    b, _, n, h = q.shape
    bq, bk, rows = spec.block_q, spec.block_k, spec.batch_rows
    scale = 1.0 / math.sqrt(h)
    qp, kp, vp = _pad_time(q, bq), _pad_time(k, bk), _pad_time(v, bk)
    ts_q, ts_k = _pad_time(ts, bq), _pad_time(ts, bk)
    pos_f, time_f = pos_table.astype(jnp.float32), time_table.astype(jnp.float32)

    def group(g, out):
        lens, max_len, min_len = _group_lengths(lengths, g, rows, n)

        def query_block(i, out):
            qi = _read(qp, g, rows, i * bq, bq) * scale  # [C, Q, H], the scale folded into q

            def step(masked, j, acc):
                pos_idx, time_idx = _bias_buckets(spec, ts_q, ts_k, g, i, j, False, pos_f.shape[1], time_f.shape[1])
                s = jnp.einsum("cqh,ckh->cqk", qi, _read(kp, g, rows, j * bk, bk))
                a = jax.nn.silu(s + _bias(pos_f, time_f, pos_idx, time_idx, rows, n))
                if masked:
                    a = jnp.where(_mask(spec, i, j, lens, False), a, 0.0)
                return acc + jnp.einsum("cqk,ckh->cqh", a, _read(vp, g, rows, j * bk, bk))

            def key_block(j, acc):  # the mask only on tiles that cut it (diagonal, padding)
                return lax.cond(_needs_mask(spec, i, j, min_len), functools.partial(step, True),
                                functools.partial(step, False), j, acc)

            acc = lax.fori_loop(0, _key_blocks_end(spec, i, max_len), key_block,
                                jnp.zeros((rows * n, bq, h), jnp.float32))
            return _write(out, acc * _row_scale(spec, lens, i)[..., None], g, rows, i * bq)

        # Query blocks past the group's longest row keep their zero output.
        return lax.fori_loop(0, -(-max_len // bq), query_block, out)

    out = lax.fori_loop(0, b // rows, group, jnp.zeros((b, qp.shape[1], n, h), q.dtype))
    return out[:, :spec.t]


def _backward(spec: _Spec, q, k, v, pos_table, time_table, lengths, ts, d_out):
    """Outer loop over key blocks, inner over the query blocks that see them; scores transposed ([C, K, Q])
    as in `blockwise_attention._backward`. With a = SiLU(s) and dO' = c * dO:
    dV = a^T dO', dA = dO' V^T, dS = dA * SiLU'(s), dQ = dS K, dK = dS^T Q, d table[b] = sum of dS over b."""
    b, _, n, h = q.shape
    bq, bk, rows = spec.block_q, spec.block_k, spec.batch_rows
    scale = 1.0 / math.sqrt(h)
    qp, dop = _pad_time(q, bq), _pad_time(d_out, bq)
    kp, vp = _pad_time(k, bk), _pad_time(v, bk)
    ts_q, ts_k = _pad_time(ts, bq), _pad_time(ts, bk)
    nq = qp.shape[1] // bq
    pos_f, time_f = pos_table.astype(jnp.float32), time_table.astype(jnp.float32)

    def group(g, carry):
        dq, dk, dv, d_pos, d_time = carry
        lens, max_len, min_len = _group_lengths(lengths, g, rows, n)

        def key_block(j, carry):
            dq_g, dk, dv, d_pos, d_time = carry
            kj, vj = _read(kp, g, rows, j * bk, bk), _read(vp, g, rows, j * bk, bk)  # [C, K, H]
            kj_t = kj.transpose(0, 2, 1)  # [C, H, K]

            def step(masked, i, dk_j, dv_j, d_pos, d_time):
                qi = _read(qp, g, rows, i * bq, bq) * scale
                doi = _read(dop, g, rows, i * bq, bq) * _row_scale(spec, lens, i)[..., None]
                pos_idx, time_idx = _bias_buckets(spec, ts_q, ts_k, g, i, j, True, pos_f.shape[1], time_f.shape[1])
                s_t = jnp.einsum("ckh,cqh->ckq", kj, qi) + _bias(pos_f, time_f, pos_idx, time_idx, rows, n)
                sig = jax.nn.sigmoid(s_t)
                a_t = s_t * sig
                ds_t = jnp.einsum("ckh,cqh->ckq", vj, doi) * (sig * (1.0 + s_t * (1.0 - sig)))
                if masked:
                    visible = _mask(spec, i, j, lens, True)
                    a_t, ds_t = jnp.where(visible, a_t, 0.0), jnp.where(visible, ds_t, 0.0)
                dv_j = dv_j + jnp.einsum("ckq,cqh->ckh", a_t, doi)
                dk_j = dk_j + jnp.einsum("ckq,cqh->ckh", ds_t, qi)  # qi carries the scale already
                d_pos, d_time = _bias_grads(ds_t, pos_idx, time_idx, d_pos, d_time, rows, n)
                return dk_j, dv_j, jnp.einsum("chk,ckq->chq", kj_t, ds_t), d_pos, d_time

            def query_block(i, carry):
                dk_j, dv_j, dq_g, d_pos, d_time = carry  # dq_g stays out of the cond (it would be copied)
                dk_j, dv_j, dq_i, d_pos, d_time = lax.cond(
                    _needs_mask(spec, i, j, min_len), functools.partial(step, True), functools.partial(step, False),
                    i, dk_j, dv_j, d_pos, d_time)
                return dk_j, dv_j, dq_g.at[i].add(dq_i), d_pos, d_time

            zeros = jnp.zeros(kj.shape, jnp.float32)
            dk_j, dv_j, dq_g, d_pos, d_time = lax.fori_loop(*_query_blocks(spec, j, max_len), query_block,
                                                            (zeros, zeros, dq_g, d_pos, d_time))
            return dq_g, _write(dk, dk_j, g, rows, j * bk), _write(dv, dv_j, g, rows, j * bk), d_pos, d_time

        dq_g = jnp.zeros((nq, rows * n, h, bq), jnp.float32)  # dQ^T per query block
        # Key blocks past the group's longest row keep their zero gradient.
        dq_g, dk, dv, d_pos, d_time = lax.fori_loop(0, -(-max_len // bk), key_block, (dq_g, dk, dv, d_pos, d_time))
        store = lambda i, dq: _write(dq, dq_g[i].transpose(0, 2, 1) * scale, g, rows, i * bq)
        return lax.fori_loop(0, nq, store, dq), dk, dv, d_pos, d_time

    init = (jnp.zeros(qp.shape, q.dtype), jnp.zeros(kp.shape, k.dtype), jnp.zeros(vp.shape, v.dtype),
            jnp.zeros(pos_f.shape, jnp.float32), jnp.zeros(time_f.shape, jnp.float32))
    dq, dk, dv, d_pos, d_time = lax.fori_loop(0, b // rows, group, init)
    t = spec.t
    return dq[:, :t], dk[:, :t], dv[:, :t], d_pos.astype(pos_table.dtype), d_time.astype(time_table.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _hstu(spec: _Spec, q, k, v, pos_table, time_table, lengths, ts):
    return _forward(spec, q, k, v, pos_table, time_table, lengths, ts)


def _hstu_fwd(spec: _Spec, q, k, v, pos_table, time_table, lengths, ts):
    # No softmax statistics to keep: the backward pass recomputes everything from the inputs.
    return _forward(spec, q, k, v, pos_table, time_table, lengths, ts), (q, k, v, pos_table, time_table, lengths, ts)


def _hstu_bwd(spec: _Spec, residuals, d_out):
    q, k, v, pos_table, time_table, lengths, ts = residuals
    grads = _backward(spec, q, k, v, pos_table, time_table, lengths, ts, d_out)
    return grads + (None, None)  # lengths, timestamps: integer inputs, no cotangent


_hstu.defvjp(_hstu_fwd, _hstu_bwd)
