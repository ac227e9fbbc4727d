"""GRU4Rec / LSTMRec: the lax.scan encoder against a slow Python-loop reference (forward and gradients),
padding, dropout, causality, the SASRec interface and config errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqjax import config as config_lib
from seqjax.models.recurrent import GRU4Rec, GRU4RecConfig, LSTMConfig, LSTMRec

# Tolerances, fixed in one place.
F32_ATOL = 1e-5
F32_RTOL = 1e-5

MODELS = {"gru": (GRU4Rec, GRU4RecConfig), "lstm": (LSTMRec, LSTMConfig)}
NUM_ITEMS = 30


# Compiled once per (config, shapes): nnx.jit caches on the module's graph. Compiles dominate the run time.
_encode = nnx.jit(lambda model, items, lengths, key: model.encode(items, lengths, key))
_encode_and_last = nnx.jit(lambda model, items, lengths: (model.encode(items, lengths),
                                                          model.last_hidden(items, lengths)))


def encode(model, items, lengths, key=None):
    """[B, T, D]; deterministic calls share one compile with `last_hidden`."""
    return _encode_and_last(model, items, lengths)[0] if key is None else _encode(model, items, lengths, key)


def last_hidden(model, items, lengths):
    return _encode_and_last(model, items, lengths)[1]


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
    """items [b, t] right-padded with 0, lengths [b] = t, 3, 1, 0, ... (t >= 3)."""
    lengths = np.array([t, 3, 1, 0, t - 1, 2][:b], np.int32)
    items = np.random.default_rng(seed).integers(1, NUM_ITEMS + 1, (b, t), dtype=np.int32)
    return jnp.asarray(np.where(np.arange(t)[None] < lengths[:, None], items, 0)), jnp.asarray(lengths)


@pytest.mark.parametrize("cell,projection,unroll", [
    ("gru", "inside", 1), ("gru", "hoisted", 1), ("lstm", "inside", 1),
    ("lstm", "hoisted", 2),  # 2 does not divide T=5: the scan's remainder step
])
def test_scan_equals_python_loop_forward_and_gradients(cell, projection, unroll):
    model = make(cell, layers=2, input_projection=projection, unroll=unroll)
    graphdef, params = nnx.split(model)
    items, lengths = batch(t=5)
    probe = jnp.asarray(np.random.default_rng(5).normal(size=(*items.shape, 8)), jnp.float32)  # weighs every output

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


# The behaviour tests share one model per cell and one batch shape [4, 8], so each compiles at most twice.
@pytest.fixture(scope="module", params=["gru", "lstm"])
def model(request):
    return make(request.param, layers=2, dropout=0.5)


def test_padding_keeps_the_carry(model):
    items, lengths = batch(t=8)  # row 1 has length 3 in T=8
    short = last_hidden(model, items[1:2, :3], lengths[1:2])  # only its first 3 items, T=3
    assert_close(last_hidden(model, items, lengths)[1], short[0])
    h = encode(model, items, lengths)
    assert_close(h[1, 3:], jnp.broadcast_to(h[1, 2], (5, 8)))  # padded steps repeat the last state
    garbage = items.at[1, 3:].set(jnp.array([7, 1, 30, 2, 9]))  # other ids in the padded slots
    h_garbage = encode(model, garbage, lengths)
    assert_close(h_garbage[1, :3], h[1, :3])
    assert_close(h_garbage[jnp.array([0, 2, 3])], h[jnp.array([0, 2, 3])])
    assert np.isfinite(np.asarray(h[3])).all()  # an empty row (length 0) stays finite


def test_dropout_only_with_a_key(model):
    items, lengths = batch(t=8)
    valid = np.arange(8)[None] < np.asarray(lengths)[:, None]
    plain = encode(model, items, lengths)
    assert_close(plain, reference_encode(model, items, lengths))  # key=None: deterministic, no dropout
    a = encode(model, items, lengths, jax.random.key(0))
    assert_close(a, encode(model, items, lengths, jax.random.key(0)))
    for other in (plain, encode(model, items, lengths, jax.random.key(1))):
        assert np.abs(np.asarray(a - other))[valid].max() > 1e-3


@pytest.mark.parametrize("key", [None, 3])
def test_causal(model, key):
    items, _ = batch(t=8)
    items, lengths = jnp.where(items == 0, 1, items), jnp.full((4,), 8, jnp.int32)
    k = None if key is None else jax.random.key(key)
    h = encode(model, items, lengths, k)
    for t in (0, 3, 6):
        changed = items.at[:, t + 1:].set((items[:, t + 1:] % NUM_ITEMS) + 1)  # new ids after t
        h_changed = encode(model, changed, lengths, k)
        assert_close(h_changed[:, :t + 1], h[:, :t + 1])
        assert np.abs(np.asarray(h_changed[:, t + 1] - h[:, t + 1])).max() > 1e-6  # the future did change


def test_sasrec_interface_and_dtypes(model):
    items, lengths = batch(t=8)
    h = encode(model, items, lengths)
    assert h.shape == (4, 8, 8)
    assert_close(model.item_table(), model.item_embed.embedding[...])  # shared_embeddings=True
    assert_close(last_hidden(model, items, lengths), h[jnp.arange(4), jnp.maximum(lengths - 1, 0)])
    # Compute dtype follows the parameters (the trainer casts them for train.dtype=bfloat16).
    graphdef, params = nnx.split(model)
    bf16 = nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.to_pure_dict(params)))
    assert jax.eval_shape(lambda: bf16.encode(items, lengths, jax.random.key(0))).dtype == jnp.bfloat16  # no compile
    # The SASRec constructor, attention_impl included; a separate output table.
    cls, cfg_cls = MODELS[model.layers[0].cell]
    separate = cls(NUM_ITEMS, 16, cfg_cls(dim=8, shared_embeddings=False), rngs=nnx.Rngs(0), attention_impl="xla")
    assert separate.item_table().shape == (NUM_ITEMS + 1, 8)
    assert not np.allclose(separate.item_table(), separate.item_embed.embedding[...])


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


@pytest.mark.parametrize("cfg_cls,section", [(GRU4RecConfig, "gru4rec"), (LSTMConfig, "lstm")])
def test_configs_load_through_the_config_system(cfg_cls, section):
    cfg = config_lib.from_dict(cfg_cls, {"input_projection": "hoisted", "layers": 2}, prefix=f"model.{section}.")
    assert (cfg.input_projection, cfg.layers, cfg.dim, cfg.unroll) == ("hoisted", 2, 64, 1)
    with pytest.raises(config_lib.ConfigError, match=f"model.{section}.input_projection: 'outside' is not one of"):
        config_lib.from_dict(cfg_cls, {"input_projection": "outside"}, prefix=f"model.{section}.")
    with pytest.raises(config_lib.ConfigError, match=f"model.{section}.unroll=0 must be >= 1"):
        config_lib.from_dict(cfg_cls, {"unroll": 0}, prefix=f"model.{section}.")
