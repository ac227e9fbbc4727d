"""HSTU: blockwise attention against the dense reference (forward and gradients of q, k, v and both bias
tables), memory linear in T, and the model's causality, padding invariance and training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from seqjax.models.hstu import HSTU, HSTUConfig
from seqjax.models.hstu_attention import (
    POSITION_MANTISSA_BITS,
    TIME_MANTISSA_BITS,
    blockwise_hstu_attention,
    bucketize,
    hstu_attention,
    reference_hstu_attention,
)
from seqjax.train.losses import full_softmax_loss

# Tolerances, fixed in one place (elementwise |a - b| <= ATOL + RTOL * |b|).
# float32: both sides compute in float32 and differ only in summation order; observed max errors are
# 7e-7 on O(1) outputs and q, k, v gradients, 4.6e-6 on the table gradients (sums over every pair).
F32_ATOL, F32_RTOL = 1e-5, 1e-5
# bfloat16 inputs: both sides upcast to float32 and round their results to bfloat16, so float32 results
# that differ in the last bits can round one bfloat16 step apart (a step is at most 2^-7 = 0.78% of the
# value); observed: most values bit-identical, max error 1.5e-5. The bound allows one step plus margin.
BF16_ATOL, BF16_RTOL = 1e-2, 1e-2
TOL = {jnp.float32: (F32_ATOL, F32_RTOL), jnp.bfloat16: (BF16_ATOL, BF16_RTOL)}
# Model-level invariances (causality, padding) compare one implementation with itself: exact up to
# the summation order XLA picks for a different input.
MODEL_ATOL = 1e-6

N, H = 2, 8
BUCKETS = 64


def _timestamps(b, t, lengths, seed):
    """Increasing unix seconds with gaps from 0 (equal times) to months; zeros on padding like the shards."""
    rng = np.random.default_rng(seed)
    gaps = np.where(rng.random((b, t)) < 0.2, 0, np.exp(rng.uniform(0, 16, (b, t)))).astype(np.int64)
    ts = 1_700_000_000 + np.cumsum(gaps, axis=1)
    return jnp.asarray(np.where(np.arange(t)[None] < np.asarray(lengths)[:, None], ts, 0), jnp.int32)


def _inputs(b, t, dtype, per_head, seed=0):
    """q, k, v, a cotangent [B, T, N, H] and position / time tables [G, BUCKETS], standard normal."""
    rng = np.random.default_rng(seed)
    g = N if per_head else 1
    shapes = [(b, t, N, H)] * 4 + [(g, BUCKETS)] * 2
    return tuple(jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for shape in shapes)


def _out_and_grads(fn, args, ct):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(ct)


def _assert_close(actual, expected, dtype, what):
    atol, rtol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                               atol=atol, rtol=rtol, err_msg=what)


def _compare(lengths, q, k, v, ct, pos, tim, ts, normalizer, block_q, block_k):
    """(blockwise, reference) outputs and gradients for (q, k, v, pos table, time table)."""
    def run(impl):
        fn = lambda q, k, v, pos, tim: hstu_attention(q, k, v, lengths, pos, tim, ts, implementation=impl,
                                                      normalizer=normalizer, block_q=block_q, block_k=block_k)
        return jax.jit(lambda *a: _out_and_grads(fn, a[:5], a[5]))(q, k, v, pos, tim, ct)

    with jax.default_matmul_precision("float32"):
        return run("blockwise"), run("reference")


# (T, block_q, block_k, timestamps, normalizer, per-head tables, dtype): T a block multiple (64) and not
# (37), blocks equal, taller and wider, with and without timestamps, both normalizers and table shapes.
CASES = [
    (37, 16, 8, True, "length", False, jnp.float32),
    (64, 16, 16, False, "length", True, jnp.float32),
    (64, 16, 32, True, "causal", True, jnp.float32),
    (37, 16, 16, True, "length", True, jnp.bfloat16),
    (37, 32, 16, False, "causal", False, jnp.bfloat16),
]


@pytest.mark.parametrize("t, block_q, block_k, with_time, normalizer, per_head, dtype", CASES)
def test_forward_and_gradients_match_reference(t, block_q, block_k, with_time, normalizer, per_head, dtype):
    # A full row, a single token, a length that is no block multiple, and a fully padded row.
    lengths = jnp.array([t, 1, 20, 0])
    q, k, v, ct, pos, tim = _inputs(4, t, dtype, per_head)
    ts = _timestamps(4, t, lengths, seed=1) if with_time else None
    # The cotangent is non-zero on padded rows too: both sides output zeros there and must pass nothing back.
    fast, slow = _compare(lengths, q, k, v, ct, pos, tim, ts, normalizer, block_q, block_k)
    assert fast[0].dtype == dtype and all(g.dtype == dtype for g in fast[1])
    _assert_close(fast[0], slow[0], dtype, "output")
    for name, a, b in zip(["dq", "dk", "dv", "d pos table", "d time table"], fast[1], slow[1]):
        _assert_close(a, b, dtype, name)
    valid = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    assert not np.asarray(fast[0])[~valid].any()  # padded query rows (all of row 3) output zeros
    for g in fast[1][:3]:  # and padded positions of q, k, v receive nothing
        assert not np.asarray(g)[~valid].any()
    assert np.asarray(fast[1][3]).any()
    assert np.asarray(fast[1][4]).any() == with_time  # the time table only learns from timestamps


def test_unmasked_tiles_and_row_groups_match_reference():
    # Blocks of 150 (256 evened out over T = 300) make 6 batch rows run in 3 groups of 2. Group 1 is full
    # length, so its off-diagonal tiles take the branch without a mask (the CASES above always hold an
    # empty row, so they never do); group 2 (230, 170) takes it only below 170; group 3 (1, 90) skips
    # every tile past 90.
    t, lengths = 300, jnp.array([300, 300, 230, 170, 1, 90])
    q, k, v, ct, pos, tim = _inputs(6, t, jnp.float32, per_head=True, seed=4)
    ts = _timestamps(6, t, lengths, seed=5)
    fast, slow = _compare(lengths, q, k, v, ct, pos, tim, ts, "length", 256, 256)
    _assert_close(fast[0], slow[0], jnp.float32, "output")
    for name, a, b in zip(["dq", "dk", "dv", "d pos table", "d time table"], fast[1], slow[1]):
        _assert_close(a, b, jnp.float32, name)


def test_reference_matches_a_loop_over_pairs():
    """The dense reference against the formula written out one (row, head, i, j) at a time in numpy."""
    b, t = 2, 7
    lengths = np.array([7, 4])
    q, k, v, _, pos, tim = (np.asarray(x, np.float64) for x in _inputs(b, t, jnp.float32, True))
    ts = np.asarray(_timestamps(b, t, lengths, seed=2))
    expected = np.zeros((b, t, N, H))
    for r in range(b):
        for n in range(N):
            for i in range(lengths[r]):
                for j in range(i + 1):
                    pb = _brute_bucket(i - j, POSITION_MANTISSA_BITS, BUCKETS)
                    tb = _brute_bucket(abs(int(ts[r, i]) - int(ts[r, j])), TIME_MANTISSA_BITS, BUCKETS)
                    s = q[r, i, n] @ k[r, j, n] / np.sqrt(H) + pos[n, pb] + tim[n, tb]
                    expected[r, i, n] += s / (1 + np.exp(-s)) / lengths[r] * v[r, j, n]
    out = reference_hstu_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(lengths),
                                   jnp.asarray(pos, jnp.float32), jnp.asarray(tim, jnp.float32), jnp.asarray(ts))
    np.testing.assert_allclose(np.asarray(out), expected, atol=F32_ATOL, rtol=F32_RTOL)


def _brute_bucket(x: int, m: int, n: int) -> int:
    """`bucketize` in Python integers: exact below 2^(m+1), then the top m + 1 bits of x."""
    if x < 2 ** (m + 1):
        return min(x, n - 1)
    shift = x.bit_length() - 1 - m
    return min((shift << m) + (x >> shift), n - 1)


def test_bucketize_is_exact_then_logarithmic():
    d = np.concatenate([np.arange(5000), [2**20, 2**31 - 1]])
    for m, n in [(POSITION_MANTISSA_BITS, 64), (TIME_MANTISSA_BITS, 64), (2, 1000)]:
        got = np.asarray(bucketize(jnp.asarray(d, jnp.int32), m, n))
        np.testing.assert_array_equal(got, [_brute_bucket(int(x), m, n) for x in d])
        assert (np.diff(got[:5000]) >= 0).all()
    assert int(bucketize(jnp.array(1023), POSITION_MANTISSA_BITS, 64)) == 63  # 64 buckets reach 1023
    assert int(bucketize(jnp.array(2**31 - 1), TIME_MANTISSA_BITS, 64)) == 61  # and all of int32 for time
    assert int(bucketize(jnp.array(-5), 3, 64)) == 0


def _eqns(jaxpr):
    """Every equation of a jaxpr, recursing into loops, conds and custom-derivative calls."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _eqns(sub)


def test_blockwise_memory_is_linear_in_t():
    t = 4096
    x = jax.random.normal(jax.random.key(0), (1, t, 1, 8))
    lengths, ts = jnp.array([t]), _timestamps(1, t, [t], seed=0)
    pos, tim = jnp.zeros((1, BUCKETS)), jnp.zeros((1, BUCKETS))

    def grads(impl):
        loss = lambda q, k, v, p, s: jnp.sum(hstu_attention(q, k, v, lengths, p, s, ts, implementation=impl) ** 2)
        return jax.grad(loss, argnums=(0, 1, 2, 3, 4))

    fast = grads("blockwise")
    jaxpr = jax.make_jaxpr(fast)(x, x, x, pos, tim).jaxpr
    largest = max((int(np.prod(v.aval.shape)), tuple(v.aval.shape))
                  for e in _eqns(jaxpr) for v in e.outvars if hasattr(v.aval, "shape"))
    assert largest[0] < t * t // 64, largest  # no array anywhere near [T, T], forward or backward
    analysis = jax.jit(fast).lower(x, x, x, pos, tim).compile().memory_analysis()
    assert analysis is not None  # available on XLA:CPU in this jax
    assert analysis.temp_size_in_bytes < t * t * 4 // 16, analysis.temp_size_in_bytes  # one [T, T] f32 = 64 MiB
    # The check can fail: the dense reference's buffers hold several [T, T] arrays.
    dense = jax.jit(grads("reference")).lower(x, x, x, pos, tim).compile().memory_analysis()
    assert dense.temp_size_in_bytes > t * t * 4


def test_dispatcher_rejects_cudnn_and_bad_inputs():
    x = jnp.zeros((2, 8, 2, 4))
    lengths, pos = jnp.array([8, 3]), jnp.zeros((1, 16))
    with pytest.raises(ValueError, match="no cuDNN implementation"):
        hstu_attention(x, x, x, lengths, pos, implementation="cudnn")
    with pytest.raises(ValueError, match="must be one of"):
        hstu_attention(x, x, x, lengths, pos, implementation="xla")
    with pytest.raises(ValueError, match="G = 1"):
        hstu_attention(x, x, x, lengths, jnp.zeros((3, 16)))
    with pytest.raises(ValueError, match="need a time_bias_table"):
        hstu_attention(x, x, x, lengths, pos, None, jnp.zeros((2, 8), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        blockwise_hstu_attention(x, x, x, lengths, pos, pos, jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match="normalizer"):
        hstu_attention(x, x, x, lengths, pos, normalizer="softmax")


# ---------------------------------------------------------------------------------------------------
# The model

TINY = HSTUConfig(dim=16, heads=2, blocks=2, dropout=0.1, position_buckets=32, time_buckets=32)


def _batch(b=3, t=12, num_items=30, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([t, 7, 1][:b])
    items = np.where(np.arange(t)[None] < lengths[:, None], rng.integers(1, num_items + 1, (b, t)), 0)
    return jnp.asarray(items, jnp.int32), jnp.asarray(lengths, jnp.int32), _timestamps(b, t, lengths, seed)


def _jit_encode(model):
    """A jitted `encode(items, lengths, timestamps)` of the model in inference mode."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, items, lengths, ts: nnx.merge(graphdef, state).encode(items, lengths, timestamps=ts))
    return lambda items, lengths, ts: np.asarray(fn(state, items, lengths, ts))


def test_encode_is_causal_ignores_padding_and_implementations_agree():
    items, lengths, ts = _batch()
    pad = np.arange(12)[None] >= np.asarray(lengths)[:, None]
    outputs = {}
    for impl in ("reference", "blockwise"):
        model = HSTU(30, 12, TINY, rngs=nnx.Rngs(0), attention_impl=impl)
        rng = np.random.default_rng(0)
        for block in model.blocks:  # trained-looking biases (they start at zero), so that times matter
            block.pos_bias[...] = rng.standard_normal(block.pos_bias.shape, np.float32)
            block.time_bias[...] = rng.standard_normal(block.time_bias.shape, np.float32)
        encode = _jit_encode(model)
        for times in (ts, None):
            base = outputs[impl, times is None] = encode(items, lengths, times)
            # Changing position 5 (item and time) leaves positions 0..4 of the valid rows alone ...
            changed = encode(items.at[:2, 5].set(29), lengths, None if times is None else times.at[:2, 5].add(10**6))
            np.testing.assert_allclose(changed[:2, :5], base[:2, :5], atol=MODEL_ATOL)
            assert np.abs(changed[:2, 5:7] - base[:2, 5:7]).max() > 1e-3  # ... and does change position 5 on.
            # Padded items and timestamps change nothing at valid positions, through both blocks.
            noisy = encode(jnp.where(pad, 17, items), lengths, None if times is None else jnp.where(pad, 123, times))
            np.testing.assert_allclose(noisy[~pad], base[~pad], atol=MODEL_ATOL)
    for no_time in (False, True):
        np.testing.assert_allclose(outputs["blockwise", no_time][~pad], outputs["reference", no_time][~pad],
                                   atol=F32_ATOL)
    assert np.abs(outputs["reference", False] - outputs["reference", True])[~pad].max() > 1e-3  # times matter
    last = nnx.jit(lambda m, items, lengths, ts: m.last_hidden(items, lengths, ts))(model, items, lengths, ts)
    np.testing.assert_allclose(np.asarray(last), outputs["blockwise", False][np.arange(3), np.asarray(lengths) - 1],
                               atol=F32_ATOL)


def test_training_lowers_the_loss():
    """A few Adam steps on a tiny batch where the next item is the current one + 1 (time gaps included)."""
    num_items, b, t = 20, 8, 10
    rng = np.random.default_rng(0)
    start = rng.integers(1, num_items + 1, (b, 1))
    seq = (start + np.arange(t + 1)[None] - 1) % num_items + 1
    lengths = np.array([t, t, 9, 8, 7, 6, 5, 3])
    valid = np.arange(t)[None] < lengths[:, None]
    items = jnp.asarray(np.where(valid, seq[:, :-1], 0), jnp.int32)
    targets = jnp.asarray(np.where(valid, seq[:, 1:], 0), jnp.int32)
    weights, lengths = jnp.asarray(valid, jnp.float32), jnp.asarray(lengths, jnp.int32)
    ts = _timestamps(b, t, lengths, seed=3)
    model = HSTU(num_items, t, HSTUConfig(dim=16, heads=2, blocks=1, dropout=0.0), rngs=nnx.Rngs(0),
                 attention_impl="blockwise")
    graphdef, params = nnx.split(model)
    tx = optax.adam(1e-2)

    def loss_fn(params):
        m = nnx.merge(graphdef, params)
        return full_softmax_loss(m.encode(items, lengths, jax.random.key(0), timestamps=ts), m.item_table(),
                                 targets, weights)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state = tx.init(params)
    losses = []
    for i in range(30):
        params, opt_state, loss, grads = step(params, opt_state)
        losses.append(float(loss))
        if i == 0:  # both bias tables of the block are trained
            assert np.abs(np.asarray(grads["blocks"][0]["pos_bias"][...])).max() > 0
            assert np.abs(np.asarray(grads["blocks"][0]["time_bias"][...])).max() > 0
    assert losses[-1] < 0.5 * losses[0], losses


def test_config_errors_name_the_key():
    for bad, key in [(HSTUConfig(dim=10, heads=3), "model.hstu.dim"), (HSTUConfig(blocks=0), "model.hstu.blocks"),
                     (HSTUConfig(dropout=1.0), "model.hstu.dropout"),
                     (HSTUConfig(time_buckets=0), "model.hstu.time_buckets"),
                     (HSTUConfig(normalizer="softmax"), "model.hstu.normalizer")]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            bad.validate()
    with pytest.raises(ValueError, match="cuDNN"):
        HSTU(10, 8, HSTUConfig(), rngs=nnx.Rngs(0), attention_impl="cudnn")
