"""Full-catalogue ranks and metrics against a brute-force sort, and hand-computed tiny cases."""

import math

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.evaluation.ranking import miss_rank, ranking_metrics, repeat_target_share, target_ranks

KS = (1, 2, 5, 10, 20)


def brute_rank(scores, target, history, filter_seen):
    """Sorts the candidates explicitly; among equal scores the target is placed last."""
    num_items = len(scores) - 1
    seen = {int(h) for h in history if 1 <= h <= num_items}
    if not 1 <= target <= num_items or (filter_seen and target in seen):
        return num_items + 1
    candidates = [j for j in range(1, num_items + 1) if not (filter_seen and j in seen)]
    order = sorted(candidates, key=lambda j: (-scores[j], j == target))
    return order.index(target) + 1


def brute_metrics(ranks, num_items, ks):
    out = {}
    for k in ks:
        hits = [r <= min(k, num_items) for r in ranks]
        out[f"HR@{k}"] = sum(hits) / len(ranks)
        out[f"NDCG@{k}"] = sum(1 / math.log2(r + 1) for r, h in zip(ranks, hits) if h) / len(ranks)
    out["MRR"] = sum(1 / r for r in ranks if r <= num_items) / len(ranks)
    out["count"] = len(ranks)
    return out


def random_case(rng, batch, num_items, hist_len, levels):
    """Integer-valued scores from `levels` values: many ties. Targets include repeats and OOV."""
    scores = rng.integers(0, levels, size=(batch, num_items + 1)).astype(np.float32)
    scores[:, 0] = levels + 100  # padding column scores highest: it must never count
    lengths = rng.integers(0, hist_len + 1, size=batch)
    history = rng.integers(1, num_items + 1, size=(batch, hist_len))
    history[np.arange(hist_len)[None, :] >= lengths[:, None]] = 0
    targets = rng.integers(1, num_items + 1, size=batch)
    kind = rng.random(batch)
    has_history = lengths > 0
    repeat = (kind < 0.3) & has_history
    targets[repeat] = history[repeat, 0]  # a target that repeats a history item
    targets[(kind > 0.9)] = -1  # out of vocabulary
    return scores, targets.astype(np.int32), history.astype(np.int32)


@pytest.mark.parametrize("filter_seen", [False, True])
@pytest.mark.parametrize("levels", [3, 1000])
def test_ranks_and_metrics_match_brute_force(filter_seen, levels):
    rng = np.random.default_rng(levels + filter_seen)
    num_items = 23
    scores, targets, history = random_case(rng, batch=64, num_items=num_items, hist_len=6,
                                           levels=levels)
    ranks = np.asarray(target_ranks(scores, targets, history, filter_seen=filter_seen))
    expected = [brute_rank(s, t, h, filter_seen) for s, t, h in zip(scores, targets, history)]
    np.testing.assert_array_equal(ranks, expected)
    assert ranks.dtype == np.int32

    # The case must exercise what it claims to: ties, repeats and misses all occur.
    assert (targets == -1).any()
    repeats = np.array([t in h for t, h in zip(targets, history)])
    assert repeats.any()
    if filter_seen:
        assert (ranks[repeats] == miss_rank(num_items)).all()
    else:
        assert (ranks[repeats] <= num_items).all()

    got = ranking_metrics(ranks, num_items, ks=KS)
    want = brute_metrics(expected, num_items, KS)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12), key


def test_four_item_catalogue_by_hand():
    # Item:    pad   1    2    3    4
    scores = [[9.0, 0.1, 0.9, 0.5, 0.9],   # target 3: items 2 and 4 outrank it -> rank 3
              [9.0, 0.1, 0.9, 0.5, 0.9],   # target 2 ties with 4 -> pessimistic rank 2
              [9.0, 0.1, 0.9, 0.5, 0.9],   # target 3, history holds 2
              [9.0, 0.1, 0.9, 0.5, 0.9]]   # target -1: out of vocabulary
    targets = [3, 2, 3, -1]
    history = [[0, 0], [0, 0], [2, 0], [1, 2]]
    unfiltered = np.asarray(target_ranks(jnp.array(scores), jnp.array(targets),
                                         jnp.array(history), filter_seen=False))
    np.testing.assert_array_equal(unfiltered, [3, 2, 3, 5])
    filtered = np.asarray(target_ranks(jnp.array(scores), jnp.array(targets),
                                       jnp.array(history), filter_seen=True))
    np.testing.assert_array_equal(filtered, [3, 2, 2, 5])

    m = ranking_metrics(filtered, num_items=4, ks=(1, 2, 5))
    assert m["HR@1"] == 0.0
    assert m["HR@2"] == pytest.approx(2 / 4)
    assert m["HR@5"] == pytest.approx(3 / 4)
    # NDCG: rank 3 -> 1/log2(4) = 0.5; rank 2 -> 1/log2(3), twice; the miss adds 0.
    assert m["NDCG@5"] == pytest.approx((0.5 + 2 / math.log2(3)) / 4)
    assert m["NDCG@2"] == pytest.approx((2 / math.log2(3)) / 4)
    assert m["MRR"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 4)
    assert m["count"] == 4


def test_constant_scores_rank_last_and_padding_never_counts():
    scores = np.zeros((2, 6), np.float32)
    scores[:, 0] = np.inf
    ranks = np.asarray(target_ranks(scores, np.array([1, 5]), np.zeros((2, 3), np.int32),
                                    filter_seen=False))
    np.testing.assert_array_equal(ranks, [5, 5])


def test_padding_target_and_nan_score_are_misses():
    scores = np.array([[0.0, 1.0, np.nan, 0.5]], np.float32).repeat(3, axis=0)
    targets = np.array([0, 2, 1])
    ranks = np.asarray(target_ranks(scores, targets, np.zeros((3, 1), np.int32), filter_seen=False))
    np.testing.assert_array_equal(ranks, [4, 4, 1])  # NaN item 2 does not outrank item 1


def test_no_intermediate_larger_than_scores():
    batch, num_items, hist_len = 3, 31, 50  # a history one-hot would be [3, 50, 32]
    args = (jnp.zeros((batch, num_items + 1)), jnp.ones(batch, jnp.int32),
            jnp.ones((batch, hist_len), jnp.int32))
    jaxpr = jax.make_jaxpr(lambda s, t, h: target_ranks(s, t, h, filter_seen=True))(*args)

    def sizes(jp):
        for eqn in jp.eqns:
            for var in eqn.outvars:
                yield int(np.prod(var.aval.shape))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from sizes(getattr(sub, "jaxpr", sub))

    all_sizes = list(sizes(jaxpr.jaxpr))
    assert len(all_sizes) > 10  # the jitted body was walked, not just the outer call
    # Scatter indices of the history are [B, L, 2]; anything else is at most [B, V+1].
    assert max(all_sizes) <= max(batch * (num_items + 1), batch * hist_len * 2)


def test_k_beyond_catalogue_does_not_count_the_sentinel():
    m = ranking_metrics(np.array([4, 5]), num_items=4, ks=(10,))
    assert m["HR@10"] == 0.5
    assert m["MRR"] == pytest.approx(0.25 / 2)


def test_metrics_reject_bad_ranks():
    with pytest.raises(ValueError, match="at least one"):
        ranking_metrics(np.array([], np.int32), num_items=4)
    with pytest.raises(ValueError, match="1-based"):
        ranking_metrics(np.array([0, 1]), num_items=4)


def test_repeat_target_share():
    targets = np.array([3, 4, -1, 0, 2])
    history = np.array([[1, 3, 0], [1, 2, 0], [1, 0, 0], [1, 0, 0], [2, 2, 0]])
    assert repeat_target_share(targets, history) == pytest.approx(2 / 5)
    assert repeat_target_share(np.zeros(0, int), np.zeros((0, 3), int)) == 0.0
