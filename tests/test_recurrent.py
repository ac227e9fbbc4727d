"""GRU4Rec / LSTMRec: the lax.scan encoder against a slow Python-loop reference (forward and gradients),
padding, dropout, causality, the SASRec interface and config errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from seqjax.models.recurrent import GRU4Rec, GRU4RecConfig, LSTMConfig, LSTMRec

# Tolerances, fixed in one place.
F32_ATOL = 1e-5
F32_RTOL = 1e-5

MODELS = {"gru": (GRU4Rec, GRU4RecConfig), "lstm": (LSTMRec, LSTMConfig)}
NUM_ITEMS = 30


# One compiled encoder per (config, shapes, key or not): nnx.jit caches on the module's graph.
_encode = nnx.jit(lambda model, items, lengths, key: model.encode(items, lengths, key))
_last_hidden = nnx.jit(lambda model, items, lengths: model.last_hidden(items, lengths))


def encode(model, items, lengths, key=None):
    return _encode(model, items, lengths, key)


def make(cell, **cfg):
    cls, cfg_cls = MODELS[cell]
    return cls(NUM_ITEMS, 16, cfg_cls(**{"dim": 8, **cfg}), rngs=nnx.Rngs(0))


def sigmoid(x):
    return 1 / (1 + jnp.exp(-x))


def reference_encode(model, items, lengths):
    """The slow reference: every gate written out, a Python loop over time (no scan), deterministic."""
    t_max = items.shape[1]
    x = model.item_embed.embedding[...][items]  # [B, T, D]
    for layer in model.layers:
        w_x, b_x, w_h = layer.w_x[...], layer.b_x[...], layer.w_h[...]
        d = w_h.shape[0]
        gate = lambda a, k: a[..., k * d:(k + 1) * d]
        h = jnp.zeros((items.shape[0], d))
        c = jnp.zeros_like(h)
        outs = []
        for t in range(t_max):
            xp = x[:, t] @ w_x + b_x
            hp = h @ w_h
            if layer.cell == "gru":
                hp = hp + layer.b_h[...]
                r = sigmoid(gate(xp, 0) + gate(hp, 0))
                z = sigmoid(gate(xp, 1) + gate(hp, 1))
                n = jnp.tanh(gate(xp, 2) + r * gate(hp, 2))
                h_new, c_new = (1 - z) * n + z * h, c
            else:
                i, f, g, o = (gate(xp, k) + gate(hp, k) for k in range(4))
                c_new = sigmoid(f) * c + sigmoid(i) * jnp.tanh(g)
                h_new = sigmoid(o) * jnp.tanh(c_new)
            keep = (t >= lengths)[:, None]
            h, c = jnp.where(keep, h, h_new), jnp.where(keep, c, c_new)
            outs.append(h)
        x = jnp.stack(outs, axis=1)
    return x @ model.out.kernel[...] + model.out.bias[...]


def assert_close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=F32_ATOL, rtol=F32_RTOL)


def batch(t=7, b=4, seed=0):
    lengths = jnp.array([t, 3, 1, 0, t - 1, 5][:b], jnp.int32)
    items = jax.random.randint(jax.random.key(seed), (b, t), 1, NUM_ITEMS + 1)
    return jnp.where(jnp.arange(t)[None] < lengths[:, None], items, 0), lengths


@pytest.mark.parametrize("cell,projection,unroll", [
    ("gru", "inside", 1), ("gru", "hoisted", 1), ("lstm", "inside", 1),
    ("lstm", "hoisted", 3),  # 3 does not divide T=7: the scan's remainder steps
])
def test_scan_equals_python_loop_forward_and_gradients(cell, projection, unroll):
    model = make(cell, layers=2, input_projection=projection, unroll=unroll)
    graphdef, params = nnx.split(model)
    items, lengths = batch()
    probe = jax.random.normal(jax.random.key(5), (*items.shape, 8))  # a loss that weighs every output

    def loss(params, fn):
        h = fn(nnx.merge(graphdef, params))
        return jnp.sum(h * probe), h

    fast = jax.jit(jax.value_and_grad(lambda p: loss(p, lambda m: m.encode(items, lengths)), has_aux=True))(params)
    # The reference runs op by op (jitting the unrolled loop only adds compile time).
    slow = jax.value_and_grad(lambda p: loss(p, lambda m: reference_encode(m, items, lengths)), has_aux=True)(params)
    (fast_loss, fast_h), fast_grads = fast
    (slow_loss, slow_h), slow_grads = slow
    assert_close(fast_h, slow_h)
    assert_close(fast_loss, slow_loss)
    assert jax.tree.structure(fast_grads) == jax.tree.structure(slow_grads)
    for g_fast, g_slow in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(slow_grads)):
        assert_close(g_fast, g_slow)
    # Every parameter takes part (a reference that skipped a gate would give zero there).
    assert all(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(slow_grads))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("projection", ["inside", "hoisted"])
def test_padding_keeps_the_carry(cell, projection):
    model = make(cell, layers=2, input_projection=projection)
    items = jax.random.randint(jax.random.key(1), (2, 8), 1, NUM_ITEMS + 1)
    lengths = jnp.array([3, 8])
    padded = items.at[0, 3:].set(0)
    short = _last_hidden(model, padded[:1, :3], lengths[:1])  # only the first 3 items, T=3
    assert_close(_last_hidden(model, padded, lengths)[0], short[0])
    h = encode(model, padded, lengths)
    assert_close(h[0, 3:], jnp.broadcast_to(h[0, 2], (5, 8)))  # padded steps repeat the last state
    garbage = padded.at[0, 3:].set(jnp.array([7, 1, 30, 2, 9]))  # other ids in the padded slots
    h_garbage = encode(model, garbage, lengths)
    assert_close(h_garbage[0, :3], h[0, :3])
    assert_close(h_garbage[1], h[1])
    assert np.isfinite(np.asarray(encode(model, items, jnp.array([0, 8])))).all()  # an empty row stays finite


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_dropout_only_with_a_key(cell):
    model = make(cell, layers=2, dropout=0.5)
    items, lengths = batch()
    valid = np.arange(items.shape[1])[None] < np.asarray(lengths)[:, None]
    assert_close(encode(model, items, lengths), encode(model, items, lengths, None))
    a = encode(model, items, lengths, jax.random.key(0))
    assert_close(a, encode(model, items, lengths, jax.random.key(0)))
    for other in (encode(model, items, lengths), encode(model, items, lengths, jax.random.key(1))):
        assert np.abs(np.asarray(a - other))[valid].max() > 1e-3
    assert_close(encode(make(cell, layers=2, dropout=0.0), items, lengths, jax.random.key(0)),
                 encode(make(cell, layers=2, dropout=0.0), items, lengths))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("key", [None, 3])
def test_causal(cell, key):
    model = make(cell, layers=2)
    items, lengths = batch(t=8, b=2)
    lengths = jnp.array([8, 8])
    items = jnp.where(items == 0, 1, items)
    k = None if key is None else jax.random.key(key)
    h = encode(model, items, lengths, k)
    for t in (0, 3, 6):
        changed = items.at[:, t + 1:].set((items[:, t + 1:] % NUM_ITEMS) + 1)  # new ids after t
        h_changed = encode(model, changed, lengths, k)
        assert_close(h_changed[:, :t + 1], h[:, :t + 1])
        assert np.abs(np.asarray(h_changed[:, t + 1] - h[:, t + 1])).max() > 1e-6  # the future did change


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_sasrec_interface_and_dtypes(cell):
    cls, cfg_cls = MODELS[cell]
    model = cls(NUM_ITEMS, 16, cfg_cls(dim=8, shared_embeddings=False), rngs=nnx.Rngs(0), attention_impl="xla")
    items, lengths = batch()
    assert model.encode(items, lengths).shape == (4, 7, 8)
    assert model.item_table().shape == (NUM_ITEMS + 1, 8)
    assert not np.allclose(model.item_table(), model.item_embed.embedding[...])  # a separate output table
    last = model.last_hidden(items, lengths)
    assert last.shape == (4, 8)
    assert_close(last[1], model.encode(items, lengths)[1, 2])  # length 3 -> position 2
    # Compute dtype follows the parameters (the trainer casts them for train.dtype=bfloat16).
    graphdef, params = nnx.split(model)
    bf16 = nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.to_pure_dict(params)))
    assert bf16.encode(items, lengths, jax.random.key(0)).dtype == jnp.bfloat16


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_learns_a_next_item_rule(cell):
    """Next item = previous item + 1 (mod V): the full-softmax loss must fall well below log V."""
    model = make(cell, dim=16, dropout=0.0)
    graphdef, params = nnx.split(model)
    start = jax.random.randint(jax.random.key(2), (32, 1), 0, NUM_ITEMS)
    seq = (start + jnp.arange(11)[None]) % NUM_ITEMS + 1  # [B, T+1]
    items, targets, lengths = seq[:, :-1], seq[:, 1:], jnp.full((32,), 10)
    tx = optax.adam(0.05)

    def loss_fn(p):
        m = nnx.merge(graphdef, p)
        logits = m.encode(items, lengths) @ m.item_table()[1:].T  # [B, T, V]
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets - 1).mean()

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s)
        return optax.apply_updates(p, u), s, loss

    state = tx.init(params)
    losses = []
    for _ in range(60):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[0] > 0.9 * np.log(NUM_ITEMS) and losses[-1] < 0.3 * losses[0], losses[::10]


@pytest.mark.parametrize("cfg_cls,section", [(GRU4RecConfig, "gru4rec"), (LSTMConfig, "lstm")])
@pytest.mark.parametrize("field,value,message", [
    ("dim", 0, "dim=0 must be >= 1"),
    ("layers", 0, "layers=0 must be >= 1"),
    ("dropout", 1.0, "dropout=1.0 must be in"),
    ("dropout", -0.1, "dropout=-0.1 must be in"),
    ("input_projection", "outside", "input_projection='outside' must be"),
    ("unroll", 0, "unroll=0 must be >= 1"),
])
def test_config_errors_name_the_field(cfg_cls, section, field, value, message):
    cfg_cls().validate()
    with pytest.raises(ValueError, match=f"^model\\.{section}\\.{message}"):
        dataclasses.replace(cfg_cls(), **{field: value}).validate()
