"""Fast paths against slow references: chunked loss vs dense loss, attention implementations, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import config as config_lib
from seqjax.models.attention import attention, reference_attention
from seqjax.train.config import ExperimentConfig
from seqjax.train.losses import dense_softmax_loss, full_softmax_loss

# Tolerances, fixed in one place.
F32_ATOL = 1e-5


@pytest.mark.parametrize("skip_padding", [True, False])
@pytest.mark.parametrize("chunk", [3, 16, 64])
def test_chunked_loss_equals_dense_forward_and_gradients(chunk, skip_padding):
    k = jax.random.split(jax.random.key(0), 4)
    h = jax.random.normal(k[0], (3, 7, 8))
    table = jax.random.normal(k[1], (12, 8))
    weights = (jax.random.uniform(k[3], (3, 7)) > 0.3).astype(jnp.float32)
    weights = weights.at[1, 2:].set(0.0)  # a mostly padded row: whole chunks of padding once sorted
    targets = jnp.where(weights > 0, jax.random.randint(k[2], (3, 7), 1, 12), 0)
    fast = jax.jit(jax.value_and_grad(lambda h, t: full_softmax_loss(h, t, targets, weights, chunk,
                                                                     skip_padding=skip_padding),
                                      argnums=(0, 1)))(h, table)
    slow = jax.value_and_grad(lambda h, t: dense_softmax_loss(h, t, targets, weights), argnums=(0, 1))(h, table)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(slow)):
        np.testing.assert_allclose(a, b, atol=F32_ATOL)
    # Row 0 of the table (padding) is never a candidate: its gradient is exactly zero.
    assert not np.asarray(fast[1][1][0]).any()


@pytest.mark.parametrize("skip_padding", [True, False])
@pytest.mark.parametrize("chunk", [3, 16])
def test_own_items_loss_equals_dense_with_a_brute_force_mask(chunk, skip_padding):
    """Packed rows: row 0 holds two sequences, row 1 one, row 2 one with BERT4Rec's mask token (V + 1)."""
    v, k = 11, jax.random.split(jax.random.key(3), 2)
    h, table = jax.random.normal(k[0], (3, 6, 8)), jax.random.normal(k[1], (v + 1, 8))
    items = jnp.array([[3, 5, 7, 2, 4, 0], [1, 9, 9, 6, 0, 0], [8, 12, 10, 12, 0, 0]])
    targets = jnp.array([[5, 7, 0, 4, 3, 0], [9, 9, 6, 2, 0, 0], [0, 11, 0, 8, 0, 0]])
    segments = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]])
    weights = (targets > 0).astype(jnp.float32)
    drop = np.zeros((3, 6, v + 1), bool)  # brute force: every item of the same sequence but the target
    for b in range(3):
        for t in range(6):
            same = [int(x) for s_, x in zip(np.r_[segments[b], segments[b]], np.r_[items[b], targets[b]])
                    if s_ == segments[b, t] and 1 <= x <= v]
            drop[b, t, same] = True
            drop[b, t, targets[b, t]] = False
    assert drop[0, 0, [3, 7]].all() and not drop[0, 0, [2, 4, 5]].any()  # row 0's two sequences stay apart
    own = (items, segments)
    fast = jax.jit(jax.value_and_grad(lambda h, t: full_softmax_loss(h, t, targets, weights, chunk,
                                                                     skip_padding=skip_padding, own_items=own),
                                      argnums=(0, 1)))(h, table)
    slow = jax.value_and_grad(lambda h, t: dense_softmax_loss(h, t, targets, weights, jnp.asarray(drop)),
                              argnums=(0, 1))(h, table)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(slow)):
        np.testing.assert_allclose(a, b, atol=F32_ATOL)
    # Unpacked rows (no segments: one sequence per row): rows 1 and 2 alone.
    unpacked = full_softmax_loss(h[1:], table, targets[1:], weights[1:], chunk, skip_padding=skip_padding,
                                 own_items=(items[1:], None))
    np.testing.assert_allclose(unpacked, dense_softmax_loss(h[1:], table, targets[1:], weights[1:],
                                                            jnp.asarray(drop[1:])), atol=F32_ATOL)
    plain = full_softmax_loss(h, table, targets, weights, chunk, skip_padding=skip_padding)
    assert float(fast[0]) < float(plain)  # leaving items out of a softmax lowers every position's loss
    # The masks sized to the batch's 4 sequences (data.batch_size in training) give the same loss; 3 cannot
    # hold them and must not.
    tight = full_softmax_loss(h, table, targets, weights, chunk, skip_padding=skip_padding, own_items=own,
                              max_sequences=4)
    np.testing.assert_allclose(tight, fast[0], atol=F32_ATOL)
    short = full_softmax_loss(h, table, targets, weights, chunk, skip_padding=skip_padding, own_items=own,
                              max_sequences=3)
    assert abs(float(short) - float(fast[0])) > 1e-3


@pytest.mark.parametrize("denominator", [None, 9.0])
def test_chunked_loss_gradients_follow_the_outer_cotangent(denominator):
    """The skip-padding path computes its gradients in the forward pass for a cotangent of 1 and scales
    them by the real one: a loss weighted by 3 (a multi-task sum, say) gets 3x the dense gradients."""
    k = jax.random.split(jax.random.key(5), 4)
    h, table = jax.random.normal(k[0], (2, 9, 8)), jax.random.normal(k[1], (14, 8))
    weights = (jax.random.uniform(k[3], (2, 9)) > 0.2).astype(jnp.float32)
    targets = jnp.where(weights > 0, jax.random.randint(k[2], (2, 9), 1, 14), 0)
    fast = jax.jit(jax.grad(lambda h, t: 3.0 * full_softmax_loss(h, t, targets, weights, 4, denominator),
                            argnums=(0, 1)))(h, table)
    scale = 1.0 if denominator is None else float(weights.sum()) / denominator
    slow = jax.grad(lambda h, t: 3.0 * scale * dense_softmax_loss(h, t, targets, weights), argnums=(0, 1))(h, table)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, atol=F32_ATOL)


def test_loss_matches_numpy_cross_entropy():
    h = np.random.default_rng(0).normal(size=(1, 2, 4)).astype(np.float32)
    table = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    targets, weights = np.array([[2, 4]]), np.array([[1.0, 1.0]], np.float32)
    logits = h[0] @ table[1:].T  # items 1..4
    ce = [np.log(np.exp(l).sum()) - l[t - 1] for l, t in zip(logits, targets[0])]
    assert float(full_softmax_loss(h, table, targets, weights)) == pytest.approx(np.mean(ce), rel=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_xla_attention_matches_reference_on_valid_rows(causal):
    k = jax.random.split(jax.random.key(1), 3)
    q, kk, v = (jax.random.normal(x, (2, 9, 2, 8)) for x in k)
    lengths = jnp.array([9, 5])
    ref = reference_attention(q, kk, v, lengths, causal)
    xla = attention(q, kk, v, lengths, causal=causal, implementation="xla")
    valid = np.arange(9)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(ref)[valid], np.asarray(xla)[valid], atol=F32_ATOL)


def test_reference_attention_is_causal_and_ignores_padding():
    q = jax.random.normal(jax.random.key(2), (1, 6, 1, 4))
    base = reference_attention(q, q, q, jnp.array([4]), causal=True)
    changed = q.at[0, 3:].set(7.0)  # the future and the padding
    out = reference_attention(changed, changed, changed, jnp.array([4]), causal=True)
    np.testing.assert_allclose(base[0, :3], out[0, :3], atol=F32_ATOL)
    bi = reference_attention(q, q, q, jnp.array([4]), causal=False)
    padded = q.at[0, 4:].set(7.0)
    np.testing.assert_allclose(bi[0, :4], reference_attention(padded, padded, padded, jnp.array([4]), False)[0, :4],
                               atol=F32_ATOL)


def test_config_errors_name_the_key():
    with pytest.raises(config_lib.ConfigError, match="unknown config key model.sasrec.width"):
        config_lib.load(ExperimentConfig, None, ["model.sasrec.width=3"])
    with pytest.raises(config_lib.ConfigError, match="model.sasrec.dim=50 is not divisible"):
        config_lib.load(ExperimentConfig, None, ["model.sasrec.dim=50", "model.sasrec.heads=4"])
    with pytest.raises(config_lib.ConfigError, match="train.epochs: expected an integer"):
        config_lib.load(ExperimentConfig, None, ["train.epochs=many"])
    with pytest.raises(config_lib.ConfigError, match="data.batch_size=30 does not divide"):
        config_lib.load(ExperimentConfig, None, ["data.batch_size=30", "train.num_devices=8"])
    cfg = config_lib.load(ExperimentConfig, None, ["optim.lr=1e-4", "data.buckets=[16,200]"])
    assert cfg.optim.lr == 1e-4 and cfg.data.buckets == (16, 200)


def test_epoch_loss_norm_divides_the_summed_loss_by_a_fixed_denominator():
    k = jax.random.split(jax.random.key(1), 3)
    h, table = jax.random.normal(k[0], (2, 5, 4)), jax.random.normal(k[1], (9, 4))
    weights = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
    targets = jnp.where(weights > 0, jax.random.randint(k[2], (2, 5), 1, 9), 0)
    mean = full_softmax_loss(h, table, targets, weights, 4)
    fixed = full_softmax_loss(h, table, targets, weights, 4, denominator=20.0)
    np.testing.assert_allclose(fixed * 20.0, mean * 8.0, rtol=1e-6)  # both are the same sum over 8 positions


def _layer_norm(x, scale, bias, eps=1e-6):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def test_sasrec_layout_block_is_the_authors_wiring():
    """Queries from LN(x), keys and values from raw x; residuals restart from the normalised tensors."""
    from flax import nnx

    from seqjax.models.transformer import Block

    block = Block(8, 2, 8, 0.0, causal=True, activation=jax.nn.relu, init_std=0.3, layout="sasrec",
                  rngs=nnx.Rngs(0))
    x = np.asarray(jax.random.normal(jax.random.key(3), (1, 5, 8)))
    got = np.asarray(block(jnp.asarray(x), jnp.array([5]), None, "reference"))
    p = lambda lin: (np.asarray(lin.kernel[...]), np.asarray(lin.bias[...]))
    ln = lambda norm, a: _layer_norm(a, np.asarray(norm.scale[...]), np.asarray(norm.bias[...]), norm.epsilon)
    normed = ln(block.norm_attn, x[0])
    (wq, bq), (wkv, bkv), (wo, bo) = p(block.q), p(block.kv), p(block.out)
    q, kv = normed @ wq + bq, x[0] @ wkv + bkv
    k, v = kv[:, :8], kv[:, 8:]
    heads = []
    for h in range(2):
        s = q[:, 4 * h:4 * h + 4] @ k[:, 4 * h:4 * h + 4].T / 2.0
        s = np.where(np.tril(np.ones((5, 5), bool)), s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        heads.append((a / a.sum(-1, keepdims=True)) @ v[:, 4 * h:4 * h + 4])
    n = ln(block.norm_ffn, normed + np.concatenate(heads, -1) @ wo + bo)
    (w1, b1), (w2, b2) = p(block.ffn_in), p(block.ffn_out)
    want = n + np.maximum(n @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(got[0], want, atol=F32_ATOL)


def test_unknown_block_layout_is_refused_at_config_load():
    with pytest.raises(config_lib.ConfigError, match="model.sasrec.layout"):
        config_lib.load(ExperimentConfig, None, ["model.sasrec.layout=post_ln"])


def test_attention_weight_dropout_drops_and_rescales_the_softmax_weights():
    from seqjax.models.attention import reference_attention

    k = jax.random.split(jax.random.key(5), 4)
    q, kk, v = (jax.random.normal(k[i], (2, 6, 1, 4)) for i in range(3))
    got = np.asarray(reference_attention(q, kk, v, jnp.array([6, 4]), True, 0.25, k[3]))
    s = np.einsum("btnh,bsnh->bnts", np.asarray(q), np.asarray(kk)) / 2.0
    s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    keep = np.asarray(jax.random.bernoulli(k[3], 0.75, w.shape))  # the mask the function draws from its key
    want = np.einsum("bnts,bsnh->btnh", np.where(keep, w / 0.75, 0.0), np.asarray(v))
    np.testing.assert_allclose(got, want, atol=F32_ATOL)
    assert 0 < (~keep).sum() < keep.size  # some weights were dropped, not all


def test_torch_mha_init_draws_qkv_kernels_uniform_within_the_fused_xavier_bound():
    from flax import nnx

    from seqjax.models.transformer import Block

    block = Block(64, 1, 64, 0.1, causal=True, activation=jax.nn.relu, init_std=0.02, layout="sasrec",
                  qkv_init="torch_mha", rngs=nnx.Rngs(0))
    bound = (6.0 / 256) ** 0.5
    for kernel in (np.asarray(block.q.kernel[...]), np.asarray(block.kv.kernel[...])):
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
        np.testing.assert_allclose(kernel.std(), bound / 3 ** 0.5, rtol=0.05)
    assert np.asarray(block.out.kernel[...]).std() < 0.03  # other kernels keep init_std


def test_attention_weight_dropout_needs_the_reference_attention():
    cfg = ["model.sasrec.attention_dropout=weights"]
    assert config_lib.load(ExperimentConfig, None, cfg).model.sasrec.attention_dropout == "weights"
    with pytest.raises(config_lib.ConfigError, match="attention_dropout=weights"):
        config_lib.load(ExperimentConfig, None, [*cfg, "model.attention=blockwise"])


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec", "hstu", "gru4rec", "lstm"])
def test_bfloat16_parameters_give_bfloat16_activations(kind):
    # train.dtype=bfloat16 casts the parameters as below; every activation must then be bfloat16 (cuDNN's
    # attention refuses float32 queries, and float32 activations would give no bfloat16 speed-up)
    from flax import nnx

    from seqjax.train.step import build_model
    cfg = config_lib.load(ExperimentConfig, None, [f"model.kind={kind}", "data.max_len=8"])
    graphdef, params = nnx.split(build_model(cfg, num_items=20, seed=0))
    cast = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    model = nnx.merge(graphdef, cast)
    items, lengths = jnp.array([[3, 4, 5, 0], [7, 0, 0, 0]]), jnp.array([3, 1])
    assert model.encode(items, lengths).dtype == jnp.bfloat16
    assert model.last_hidden(items, lengths).dtype == jnp.bfloat16
