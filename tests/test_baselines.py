"""Classical baselines against brute-force pure-Python references on tiny sequences."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from seqjax.models import baselines
from seqjax.models.baselines import (
    ItemKNN,
    ItemKNNConfig,
    Markov,
    MarkovConfig,
    Popularity,
    history_weights,
    top_k_per_row,
)

TOL = dict(rtol=2e-6, atol=1e-9)  # float32 matrices (scores summed in float64) against float64 references

V = 5
SEQS = [[1, 2, 3, 2], [2, 4, 3], [1, 3, 5, 3, 1, 2, 4], [4, 2, 4, 5]]  # repeats on purpose
HISTORY = np.array([[1, 2, 0, 0, 0], [3, 5, 3, 0, 0], [4, 2, 4, 5, 1], [0, 0, 0, 0, 0],
                    [5, 0, 0, 0, 0], [2, -1, 6, 0, 0]], np.int32)  # -1 and 6 are out of vocabulary


def arrays(seqs):
    return [np.array(s, np.int32) for s in seqs]


def valid_items(row, num_items):
    return [int(h) for h in row if 1 <= h <= num_items]


def brute_popularity(seqs, num_items):
    counts = Counter(i for s in seqs for i in s)
    return [counts[j] for j in range(num_items + 1)]


def with_backoff(raw, seqs, num_items, backoff):
    pop = brute_popularity(seqs, num_items)
    top = max(max(pop), 1)
    return [-math.inf] + [raw[j] + backoff * pop[j] / top for j in range(1, num_items + 1)]


def brute_transitions(seqs, num_items, normalise):
    counts = Counter((a, b) for s in seqs for a, b in zip(s, s[1:]))
    out = {}
    for i in range(1, num_items + 1):
        total = sum(counts[i, j] for j in range(1, num_items + 1))
        for j in range(1, num_items + 1):
            out[i, j] = counts[i, j] / total if normalise and total else float(counts[i, j])
    return out


def brute_markov_scores(seqs, history, num_items, cfg):
    trans = brute_transitions(seqs, num_items, cfg.normalise)
    rows = []
    for row in history:
        items = valid_items(row, num_items)
        raw = [0.0] * (num_items + 1)
        if items:
            raw = [0.0] + [trans[items[-1], j] for j in range(1, num_items + 1)]
        rows.append(with_backoff(raw, seqs, num_items, cfg.backoff))
    return np.array(rows)


def brute_similarity(seqs, num_items, cfg):
    """{(i, j): sim} over ordered pairs i != j, truncated to each row's top neighbours."""
    co = Counter()
    for s in seqs:
        for p, q in itertools.combinations(range(len(s)), 2):
            if (cfg.window == 0 or q - p <= cfg.window) and s[p] != s[q]:
                co[s[p], s[q]] += 1
                co[s[q], s[p]] += 1
    pop = brute_popularity(seqs, num_items)
    sim = {k: c / (math.sqrt(pop[k[0]] * pop[k[1]]) + cfg.shrink) for k, c in co.items()}
    if cfg.neighbours:
        kept = {}
        for i in range(1, num_items + 1):
            row = sorted(((-v, j) for (a, j), v in sim.items() if a == i))
            kept.update({(i, j): -v for v, j in row[:cfg.neighbours]})
        sim = kept
    return sim


def brute_knn_scores(seqs, history, num_items, cfg):
    sim = brute_similarity(seqs, num_items, cfg)
    rows = []
    for row in history:
        items = valid_items(row, num_items)
        if cfg.history_len:
            items = items[-cfg.history_len:]
        raw = [0.0] * (num_items + 1)
        for age, h in enumerate(reversed(items)):
            for j in range(1, num_items + 1):
                raw[j] += cfg.decay ** age * sim.get((h, j), 0.0)
        rows.append(with_backoff(raw, seqs, num_items, cfg.backoff))
    return np.array(rows)


def random_case(seed, num_users=25, num_items=12):
    rng = np.random.default_rng(seed)
    seqs = [list(rng.integers(1, num_items + 1, rng.integers(1, 15))) for _ in range(num_users)]
    history = np.zeros((num_users, 16), np.int32)
    for u in range(num_users):
        n = rng.integers(0, 16)
        history[u, :n] = rng.integers(1, num_items + 1, n)
    return seqs, history


# --- popularity -------------------------------------------------------------------------------


def test_popularity_counts_and_scores():
    model = Popularity().fit(arrays(SEQS), V)
    assert model.popularity.tolist() == brute_popularity(SEQS, V) == [0, 3, 5, 4, 4, 2]
    scores = model.score(HISTORY)
    assert scores.shape == (len(HISTORY), V + 1) and scores.dtype == np.float64
    expected = [-math.inf] + brute_popularity(SEQS, V)[1:]
    np.testing.assert_array_equal(scores, np.tile(expected, (len(HISTORY), 1)))


# --- Markov ---------------------------------------------------------------------------------


@pytest.mark.parametrize("normalise", [True, False])
def test_markov_matches_brute_force(normalise):
    cfg = MarkovConfig(normalise=normalise)
    model = Markov(cfg).fit(arrays(SEQS), V)
    trans = brute_transitions(SEQS, V, normalise)
    dense = model.matrix.toarray()
    assert not dense[0].any() and not dense[:, 0].any()
    for (i, j), value in trans.items():
        assert dense[i, j] == pytest.approx(value, rel=TOL["rtol"])
    np.testing.assert_allclose(model.score(HISTORY), brute_markov_scores(SEQS, HISTORY, V, cfg), **TOL)


def test_markov_random_cases_match_brute_force():
    for seed in range(3):
        seqs, history = random_case(seed)
        cfg = MarkovConfig()
        got = Markov(cfg).fit(arrays(seqs), 12).score(history)
        np.testing.assert_allclose(got, brute_markov_scores(seqs, history, 12, cfg), **TOL)


def test_markov_most_frequent_successor_wins():
    seqs = arrays([[1, 2, 4], [3, 2, 4, 1], [2, 3], [5, 5, 5, 5, 5, 1]])  # after 2: 4 twice, 3 once
    scores = Markov().fit(seqs, V).score(np.array([[5, 1, 2, 0]]))
    assert scores[0].argmax() == 4
    assert scores[0, 4] > scores[0, 3] > scores[0, 5]  # 3 followed 2 once; 5 never (popular or not)


def test_markov_backs_off_to_popularity_for_an_unseen_predecessor():
    seqs = [[2] * 6, [3] * 5, [4] * 4, [1, 1], [1, 5]]  # popularity 2 > 3 > 4 > 1 > 5, all distinct
    model = Markov().fit(arrays(seqs), V)
    assert not model.matrix[5].nnz  # item 5 is never followed by anything
    scores = model.score(np.array([[1, 5]]))[0]
    assert np.isfinite(scores[1:]).all()
    pop = np.array(brute_popularity(seqs, V))
    np.testing.assert_allclose(scores[1:], 1e-6 * pop[1:] / pop.max(), **TOL)
    assert list(np.argsort(-scores[1:]) + 1) == [2, 3, 4, 1, 5]


# --- item-KNN -------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    ItemKNNConfig(window=0, neighbours=0, history_len=0, decay=1.0),
    ItemKNNConfig(window=2, shrink=1.5, neighbours=0, history_len=2, decay=1.0),
    ItemKNNConfig(window=1, neighbours=2, history_len=3, decay=0.5),
    ItemKNNConfig(),
], ids=["whole-sequence", "window-shrink", "window1-top2-decay", "defaults"])
def test_itemknn_matches_brute_force(cfg):
    model = ItemKNN(cfg).fit(arrays(SEQS), V)
    dense = model.matrix.toarray()
    sim = brute_similarity(SEQS, V, cfg)
    expected = np.zeros((V + 1, V + 1))
    for (i, j), value in sim.items():
        expected[i, j] = value
    np.testing.assert_allclose(dense, expected, **TOL)
    np.testing.assert_allclose(model.score(HISTORY), brute_knn_scores(SEQS, HISTORY, V, cfg), **TOL)


def test_itemknn_whole_sequence_cosine_by_hand():
    # 1 and 2 share one user of two; count(1) = 2, count(2) = 1 -> 1 / sqrt(2)
    model = ItemKNN(ItemKNNConfig(window=0, neighbours=0)).fit(arrays([[1, 2], [1, 3]]), 3)
    assert model.matrix[1, 2] == pytest.approx(1 / math.sqrt(2))
    assert model.matrix[2, 3] == 0 and model.matrix[1, 1] == 0


@pytest.mark.parametrize("window", [0, 2, 4])
def test_itemknn_random_cases_match_brute_force(window):
    cfg = ItemKNNConfig(window=window, neighbours=3, shrink=0.5, history_len=5, decay=0.8)
    for seed in range(2):
        seqs, history = random_case(seed)
        got = ItemKNN(cfg).fit(arrays(seqs), 12).score(history)
        np.testing.assert_allclose(got, brute_knn_scores(seqs, history, 12, cfg), **TOL)


def test_itemknn_window_limits_pairs():
    seqs = arrays([[1, 2, 3, 4]])
    near = ItemKNN(ItemKNNConfig(window=1, neighbours=0)).fit(seqs, 4).matrix.toarray()
    assert near[1, 2] > 0 and near[2, 3] > 0 and near[1, 3] == 0 and near[1, 4] == 0
    mid = ItemKNN(ItemKNNConfig(window=2, neighbours=0)).fit(seqs, 4).matrix.toarray()
    assert mid[1, 3] > 0 and mid[2, 4] > 0 and mid[1, 4] == 0
    whole = ItemKNN(ItemKNNConfig(window=0, neighbours=0)).fit(seqs, 4).matrix.toarray()
    assert whole[1, 4] > 0
    np.testing.assert_array_equal(near, near.T)


def test_itemknn_keeps_top_neighbours():
    # item 1 co-occurs with 2 (x3), 3 (x2), 4 (x1): top-2 of row 1 keeps 2 and 3
    seqs = arrays([[1, 2], [1, 2], [1, 2, 3], [1, 3], [1, 4]])
    full = ItemKNN(ItemKNNConfig(window=0, neighbours=0)).fit(seqs, 4).matrix.toarray()
    top2 = ItemKNN(ItemKNNConfig(window=0, neighbours=2)).fit(seqs, 4).matrix.toarray()
    assert (full[1, 2:] > 0).all() and full[1, 2] > full[1, 3] > full[1, 4]
    assert (top2 > 0).sum(axis=1).max() == 2
    assert top2[1, 2] == full[1, 2] and top2[1, 3] == full[1, 3] and top2[1, 4] == 0


def test_top_k_per_row_ties_go_to_the_lower_column():
    import scipy.sparse as sp
    m = sp.csr_matrix(np.array([[0, 2, 1, 2, 2], [3, 0, -1, 0, 0]], np.float32))
    np.testing.assert_array_equal(top_k_per_row(m, 2).toarray(), [[0, 2, 0, 2, 0], [3, 0, -1, 0, 0]])


def test_history_weights_keep_the_last_items_with_decay():
    w = history_weights(np.array([[1, 2, 7, 1, 3, 0], [0, 0, 0, 0, 0, 0]]), 5, history_len=3, decay=0.5)
    # valid items 1, 2, 1, 3 (7 ignored); the last three are 2 (age 2), 1 (age 1), 3 (age 0)
    np.testing.assert_allclose(w.toarray(), [[0, 0.5, 0.25, 1, 0, 0], [0] * 6])


# --- shared behaviour -----------------------------------------------------------------------

MODELS = [Popularity, Markov, ItemKNN]


@pytest.mark.parametrize("cls", MODELS)
def test_save_load_round_trip(cls, tmp_path):
    model = cls().fit(arrays(SEQS), V)
    model.save(tmp_path / "model.npz")
    for loaded in (baselines.load(tmp_path / "model.npz"), cls.load(tmp_path / "model.npz")):
        assert type(loaded) is cls and loaded.cfg == model.cfg and loaded.num_items == V
        np.testing.assert_array_equal(loaded.score(HISTORY), model.score(HISTORY))
    other = next(c for c in MODELS if c is not cls)
    with pytest.raises(ValueError, match="not"):
        other.load(tmp_path / "model.npz")


@pytest.mark.parametrize("cls", MODELS)
def test_padding_never_top_and_empty_history_gets_popularity(cls):
    seqs, history = random_case(7)
    model = cls().fit(arrays(seqs), 12)
    scores = model.score(history)
    assert scores.dtype == np.float64 and scores.shape == (len(history), 13)
    assert (scores[:, 0] == -np.inf).all() and (scores.argmax(axis=1) != 0).all()
    assert np.isfinite(scores[:, 1:]).all()
    empty = model.score(np.zeros((2, 4), np.int32))
    pop = np.array(brute_popularity(seqs, 12), np.float64)
    scale = 1.0 if cls is Popularity else 1e-6 / pop.max()
    np.testing.assert_allclose(empty[:, 1:], np.tile(scale * pop[1:], (2, 1)), **TOL)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="1..5"):
        Markov().fit(arrays([[1, 6]]), V)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        Markov().fit(arrays(SEQS), V).score(np.array([1, 2]))
    with pytest.raises(RuntimeError, match="not fitted"):
        ItemKNN().score(HISTORY)
    with pytest.raises(ValueError, match="decay"):
        ItemKNN(ItemKNNConfig(decay=0.0))


def test_popularity_back_off_breaks_ties_near_one():
    # After item 1 come items 2 and 3 once each: both P(next | 1) = 0.5. Item 3 is a little more popular
    # (100 events vs 99); the back-off 1e-6 * popularity / max separates them by 1e-8, below float32's
    # resolution at 0.5, so ranking in float32 would tie them and count the tie against the target.
    from seqjax.evaluation.scoring import count_model_ranker
    sequences = [np.array([1, 2]), np.array([1, 3])] + [np.array([2])] * 98 + [np.array([3])] * 99
    model = Markov(MarkovConfig()).fit(sequences, num_items=3)
    scores = model.score(np.array([[1]]))
    assert scores[0, 3] - scores[0, 2] == pytest.approx(1e-8, rel=1e-6)
    batch = {"history": np.array([[1], [1]]), "targets": np.array([3, 2])}
    ranks, _ = count_model_ranker(model, filter_seen=False)(batch)
    assert np.asarray(ranks).tolist() == [1, 2]
