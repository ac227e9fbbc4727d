"""BERT4Rec: cloze masking in the data pipeline (deterministic, unbiased, padding-safe) and the model
(bidirectional, padding-invariant, mask-token inference against a hand-built reference, learns)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from seqjax.data.masking import MaskSpec, cloze_rows, mask_batch, mask_rng
from seqjax.data.pipeline import TrainBatches, TrainBatchSpec, records
from seqjax.models.bert4rec import BERT4Rec, BERT4RecConfig
from seqjax.models.sasrec import SASRec, SASRecConfig
from seqjax.train.losses import full_softmax_loss

# Tolerances, fixed in one place.
F32_ATOL = 1e-5
SIGMAS = 5.0  # two-sided normal bound on a sum of independent counts: P(false alarm) < 1e-6

V, T = 30, 8  # tiny catalogue and max_len of the model tests
SPEC = MaskSpec(mask_token=V + 1)


def _rows(n_rows, seed=0, max_len=T, min_len=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, V + 1, rng.integers(min_len, max_len + 1)).astype(np.int32) for _ in range(n_rows)]


def _mask(rows, seed=0, epoch=0, batch=0, spec=SPEC, batch_size=None, width=T):
    return mask_batch(rows, spec, mask_rng(seed, epoch, batch), batch_size=batch_size or len(rows), width=width)


# ---------------------------------------------------------------- masking


def test_masks_are_a_function_of_seed_epoch_and_batch():
    rows = _rows(64, min_len=4)
    a, b = _mask(rows, 0, 1, 2), _mask(rows, 0, 1, 2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    for other in [(0, 1, 3), (0, 2, 2), (1, 1, 2)]:
        assert not np.array_equal(_mask(rows, *other)["weights"], a["weights"]), other
    # The padded width (bucket) does not change the draws.
    wide = _mask(rows, 0, 1, 2, width=2 * T)
    np.testing.assert_array_equal(wide["weights"][:, :T], a["weights"])
    assert not wide["weights"][:, T:].any()


def test_masked_count_matches_its_exact_distribution():
    """Bernoulli(p) per position plus the one-mask-per-row rule: a row of length n has count C = X if
    X > 0 else 1, X ~ Binomial(n, p), so E[C] = np + q^n and E[C^2] = npq + (np)^2 + q^n."""
    p = SPEC.mask_prob
    q = 1.0 - p
    rows = _rows(4000, seed=1, max_len=60)
    w = _mask(rows, width=60)["weights"]
    n = np.array([len(r) for r in rows], np.float64)
    mean = n * p + q ** n
    var = n * p * q + (n * p) ** 2 + q ** n - mean ** 2
    assert abs(w.sum() - mean.sum()) < SIGMAS * np.sqrt(var.sum())
    # The bound is tight enough to tell 0.2 from 0.21 (~8 sigma here).
    assert abs(w.sum() - (mean.sum() + 0.01 * n.sum())) > SIGMAS * np.sqrt(var.sum())


def test_padding_is_never_masked_and_targets_follow_the_weights():
    rows = _rows(50, seed=2) + [np.zeros(0, np.int32), np.array([7], np.int32)]
    batch = _mask(rows, batch_size=64)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "items": ((64, T), np.int32), "targets": ((64, T), np.int32),
        "weights": ((64, T), np.float32), "lengths": ((64,), np.int32)}
    lengths = batch["lengths"]
    valid = np.arange(T)[None, :] < lengths[:, None]
    masked = batch["weights"] > 0
    assert not (masked & ~valid).any()
    np.testing.assert_array_equal(batch["targets"] == 0, ~masked)
    assert (batch["items"][masked] == SPEC.mask_token).all()
    assert not batch["items"][~valid].any()
    for r, row in enumerate(rows):
        n = len(row)
        assert lengths[r] == n
        np.testing.assert_array_equal(np.where(masked[r, :n], batch["targets"][r, :n], batch["items"][r, :n]), row)
        assert masked[r].any() == (n > 0)  # every non-empty row trains
    assert masked[len(rows) - 1, 0]  # a single-item row is always masked
    assert not lengths[len(rows):].any() and not masked[len(rows):].any()  # filler rows


def test_mask_last_prob_masks_the_last_item():
    rows = _rows(200, seed=3, min_len=2)
    last = lambda b: b["weights"][np.arange(len(rows)), b["lengths"][:len(rows)] - 1]
    assert last(_mask(rows, spec=MaskSpec(V + 1, mask_last_prob=1.0))).all()
    assert 0 < last(_mask(rows)).mean() < 0.5
    with pytest.raises(ValueError, match="mask_prob"):
        MaskSpec(V + 1, mask_prob=0.0).validate()


def test_train_batches_mask_in_the_pipeline_and_resume_with_the_same_masks(tiny_data):
    """TrainBatches with a MaskSpec: rows = last max_len items of the plan's records, masks drawn from
    (seed, epoch, index in the full plan), so an epoch resumed at batch 3 sees the same masks."""
    mspec = MaskSpec(mask_token=10_000)
    spec = TrainBatchSpec(batch_size=32, max_len=20, seed=0, buckets=(8, 20), sort_window=4, mask=mspec)
    tb = TrainBatches(tiny_data, spec)
    train = records(tiny_data, "train")
    plan = tb.plan(0)
    full = list(tb.epoch(0))
    assert len(full) == len(plan)
    for i, b in enumerate(full):
        rows = [cloze_rows(train[int(r)].items, spec.max_len) for r in plan[i]]
        width = tb.padded_length(max(len(r) for r in rows))
        expected = mask_batch(rows, mspec, mask_rng(spec.seed, 0, i), batch_size=spec.batch_size, width=width)
        for k in expected:
            np.testing.assert_array_equal(b[k], expected[k])
        for r, row in enumerate(rows):
            m = b["weights"][r, :len(row)] > 0
            np.testing.assert_array_equal(np.where(m, b["targets"][r, :len(row)], b["items"][r, :len(row)]), row)
            assert m.any()
    resumed = list(tb.epoch(0, start_batch=3))
    for a, b in zip(resumed, full[3:], strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


# ---------------------------------------------------------------- model


CFG = BERT4RecConfig(dim=16, heads=2, blocks=2)
encode = nnx.jit(lambda m, items, lengths: m.encode(items, lengths))
last_hidden = nnx.jit(lambda m, items, lengths: m.last_hidden(items, lengths))


@pytest.fixture(scope="module")
def model():
    return BERT4Rec(V, T, CFG, rngs=nnx.Rngs(0))  # initialising costs seconds on CPU: built once


def _right_padded(seqs, width):
    items = np.zeros((len(seqs), width), np.int32)
    for r, s in enumerate(seqs):
        items[r, :len(s)] = s
    return jnp.asarray(items), jnp.asarray([len(s) for s in seqs], jnp.int32)


@pytest.mark.parametrize("width", [T, T - 3])
def test_last_hidden_is_the_appended_mask_tokens_state(model, width):
    rng = np.random.default_rng(4)
    seqs = [rng.integers(1, V + 1, n) for n in (width, width - 1, 3, 1, 0)]
    got = last_hidden(model, *_right_padded(seqs, width))
    reference = []  # the slow reference: each row's input built by hand
    for s in seqs:
        row = list(s) + [model.mask_token]
        reference.append(row[1:] if len(row) > T else row)  # a full row drops its oldest item
    h = encode(model, *_right_padded(reference, T))
    for r, row in enumerate(reference):
        np.testing.assert_allclose(got[r], h[r, len(row) - 1], atol=F32_ATOL)


def test_attention_is_bidirectional_unlike_sasrec(model):
    items, lengths = _right_padded([[3, 4, 5, 6, 7, 8], [9, 10]], T)
    later = items.at[0, 4].set(9)
    assert np.abs(encode(model, items, lengths)[0, 1] - encode(model, later, lengths)[0, 1]).max() > 1e-3
    sas = SASRec(V, T, SASRecConfig(dim=16, blocks=2), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(encode(sas, items, lengths)[0, 1], encode(sas, later, lengths)[0, 1],
                               atol=F32_ATOL)


def test_padding_content_and_width_do_not_change_valid_outputs(model):
    items, lengths = _right_padded([[3, 4, 5], [6, 7, 8, 9, 10, 11]], T - 2)
    base = encode(model, items, lengths)
    wide = jnp.pad(items, ((0, 0), (0, 2)))  # [2, T]: the shape the other tests compile
    out = encode(model, wide, lengths)
    np.testing.assert_allclose(out[0, :3], base[0, :3], atol=F32_ATOL)
    np.testing.assert_allclose(out[1, :6], base[1, :6], atol=F32_ATOL)
    garbage = wide.at[0, 3:].set(V + 1).at[1, 6:].set(2)
    out = encode(model, garbage, lengths)
    np.testing.assert_allclose(out[0, :3], base[0, :3], atol=F32_ATOL)
    np.testing.assert_allclose(out[1, :6], base[1, :6], atol=F32_ATOL)


@pytest.mark.parametrize("impl", ["blockwise", "xla"])
def test_attention_implementations_agree_on_valid_positions(model, impl):
    items, lengths = _right_padded([[3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13]], T)
    fast = nnx.clone(model)
    fast.attention_impl = impl
    ref, out = encode(model, items, lengths), encode(fast, items, lengths)
    np.testing.assert_allclose(out[0, :3], ref[0, :3], atol=F32_ATOL)
    np.testing.assert_allclose(out[1], ref[1], atol=F32_ATOL)


def test_item_table_excludes_the_mask_row(model):
    assert model.item_embed.embedding.shape == (V + 2, 16)
    np.testing.assert_array_equal(model.item_table(), model.item_embed.embedding[...][:V + 1])
    separate = dataclasses.replace(CFG, shared_embeddings=False)
    table = jax.eval_shape(lambda: BERT4Rec(V, T, separate, rngs=nnx.Rngs(0)).item_table())
    assert table.shape == (V + 1, 16)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"model\.bert4rec\.dim"):
        BERT4RecConfig(dim=10, heads=3).validate()
    with pytest.raises(ValueError, match=r"model\.bert4rec\.mask_prob"):
        BERT4RecConfig(mask_prob=1.5).validate()


def test_a_few_steps_lower_the_masked_item_loss(model):
    """Rows walk the catalogue in steps of one, so a masked item follows from its neighbours. Each
    step draws fresh masks (as training does), so a step's loss is measured before it trains on them."""
    rng = np.random.default_rng(5)
    rows = [((s + np.arange(T)) % V + 1).astype(np.int32) for s in rng.integers(0, V, 64)]
    graphdef, params = nnx.split(model)
    tx = optax.adam(1e-2)

    def loss_fn(params, batch):
        m = nnx.merge(graphdef, params)
        return full_softmax_loss(m.encode(batch["items"], batch["lengths"]), m.item_table(),
                                 batch["targets"], batch["weights"])

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for i in range(40):
        params, opt_state, loss = step(params, opt_state, _mask(rows, batch=i))
        losses.append(loss)
    losses = np.array(losses)
    assert losses[0] > np.log(V) - 0.5  # starts near chance
    assert losses[-5:].mean() < 0.7 * losses[0]
