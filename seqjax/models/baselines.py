"""Classical next-item baselines: popularity, first-order Markov transitions, co-occurrence item-KNN.

Every baseline follows one protocol (`Baseline`): `fit(sequences, num_items)` on the users' training
sequences (int arrays of item ids 1..V, oldest first), then `score(history)` for a batch of histories
[B, L] right-padded with 0 -> float64 scores [B, V+1] whose column 0 (padding) is -inf (float64: the
1e-6 popularity back-off must still break ties between scores near 1). History ids outside 1..V are
ignored, as padding.
`save(path)` writes one `.npz` (config, popularity counts, sparse matrices as their CSR arrays);
`load(path)` reads any baseline back.

Matrices are built from all events at once (pairs -> COO -> CSR, duplicates summed) and a batch is
scored as one sparse product: a history-weight matrix W [B, V+1] times an item-item matrix [V+1, V+1].
Markov and item-KNN add `backoff * popularity / max popularity` so items the matrix says nothing about
(zero rows, empty histories, unseen pairs) are still ordered, by popularity.
Shapes: B batch, L history length, V items (+1 for padding id 0), N training events.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Protocol, Self

import numpy as np
import scipy.sparse as sp


@dataclasses.dataclass(frozen=True)
class PopularityConfig:
    pass  # nothing to choose: the score of an item is its number of training events


@dataclasses.dataclass(frozen=True)
class MarkovConfig:
    normalise: bool = True  # divide each transition row by its total (P(next | last)); False = raw counts
    backoff: float = 1e-6  # weight of normalised popularity added to every score (breaks ties, fills zero rows)

    def validate(self) -> None:
        if self.backoff < 0:
            raise ValueError(f"model.markov.backoff={self.backoff} must be >= 0")


@dataclasses.dataclass(frozen=True)
class ItemKNNConfig:
    """Defaults chosen on the ML-1M validation split (leave-one-out, full ranking, seen filtered)."""

    window: int = 3  # co-occurrence only between events at most this many steps apart; 0 = whole sequence
    shrink: float = 0.0  # sim(i, j) = count(i, j) / (sqrt(count(i) count(j)) + shrink)
    neighbours: int = 100  # keep the top this many similarities per item; 0 = keep all
    history_len: int = 20  # score from the user's last this many history items; 0 = all of them
    decay: float = 0.7  # weight of a history item = decay ** (items after it in the history); 1 = none
    backoff: float = 1e-6  # weight of normalised popularity added to every score

    def validate(self) -> None:
        for name in ("window", "neighbours", "history_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.itemknn.{name}={getattr(self, name)} must be >= 0")
        if self.shrink < 0 or self.backoff < 0:
            raise ValueError("model.itemknn.shrink and model.itemknn.backoff must be >= 0")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"model.itemknn.decay={self.decay} must be in (0, 1]")


class Baseline(Protocol):
    num_items: int

    def fit(self, sequences: list[np.ndarray], num_items: int) -> Self: ...
    def score(self, history: np.ndarray) -> np.ndarray: ...
    def save(self, path: str | Path) -> None: ...


def flatten(sequences: list[np.ndarray], num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """All training events in one array: (items int64 [N], sequence index int64 [N]), in order."""
    lengths = np.fromiter((len(s) for s in sequences), np.int64, len(sequences))
    if not lengths.sum():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    items = np.concatenate([np.asarray(s).reshape(-1) for s in sequences]).astype(np.int64)
    bad = (items < 1) | (items > num_items)
    if bad.any():
        raise ValueError(f"training item ids must be in 1..{num_items}; got {items[bad][0]}")
    return items, np.repeat(np.arange(len(sequences)), lengths)


def pairs_at_offset(items: np.ndarray, seq: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """(earlier item, later item) for every two events of one sequence `offset` steps apart."""
    same = seq[offset:] == seq[:-offset]
    return items[:-offset][same], items[offset:][same]


def count_matrix(rows: np.ndarray, cols: np.ndarray, size: int) -> sp.csr_matrix:
    """float64 [size, size] CSR with the number of times each (row, col) pair occurs."""
    return sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size)).tocsr()


def top_k_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """float32 CSR keeping the k largest entries of every row (ties: the lower column id wins)."""
    m = m.tocsr().astype(np.float32)
    m.sum_duplicates()  # canonical: columns ascending within each row
    row = np.repeat(np.arange(m.shape[0], dtype=np.uint64), np.diff(m.indptr))
    # One stable sort of a uint64 key (row, value descending) -- a lexsort of 10M entries is 5x
    # slower. Negated float32 bits map to uint32 in order; equal values keep CSR (column) order.
    bits = (-m.data).view(np.uint32)
    descending = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64)
    order = np.argsort((row << np.uint64(32)) | descending, kind="stable")
    rank = np.arange(len(order)) - m.indptr[row[order].astype(np.int64)]
    keep = order[rank < k]
    return sp.csr_matrix((m.data[keep], (row[keep].astype(np.int64), m.indices[keep])), shape=m.shape)


def history_weights(history: np.ndarray, num_items: int, history_len: int = 0,
                    decay: float = 1.0) -> sp.csr_matrix:
    """float32 CSR [B, V+1]: decay ** age summed per item over each row's last `history_len` items.

    history: int [B, L] right-padded; ids outside 1..V are skipped. age = valid items after this one
    (0 for the last). history_len = 0 keeps them all. An empty row stays empty.
    """
    history = np.asarray(history)
    if history.ndim != 2:
        raise ValueError(f"history must be [B, L]; got shape {history.shape}")
    valid = (history >= 1) & (history <= num_items)
    age = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1] - 1
    keep = valid & (age < history_len) if history_len > 0 else valid
    rows, cols = np.nonzero(keep)
    weights = np.power(decay, age[rows, cols], dtype=np.float64).astype(np.float32)
    return sp.coo_matrix((weights, (rows, history[rows, cols].astype(np.int64))),
                         shape=(history.shape[0], num_items + 1)).tocsr()


class _Fitted:
    """Popularity counts, save/load and the shared scoring path; subclasses add their matrix."""

    kind = ""
    config_cls: type = PopularityConfig

    def __init__(self, cfg=None):
        self.cfg = cfg if cfg is not None else self.config_cls()
        if hasattr(self.cfg, "validate"):
            self.cfg.validate()
        self.num_items = 0
        self.popularity: np.ndarray | None = None  # int64 [V+1] training events per item, [0] = 0
        self.matrix: sp.csr_matrix | None = None  # float32 [V+1, V+1], row = context item

    def _fit_popularity(self, items: np.ndarray, num_items: int) -> None:
        self.num_items = num_items
        self.popularity = np.bincount(items, minlength=num_items + 1).astype(np.int64)

    def _check_fitted(self) -> None:
        if self.popularity is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load() first")

    def _sparse_scores(self, weights: sp.csr_matrix, backoff: float) -> np.ndarray:
        """(W [B, V+1] @ matrix).dense + backoff * normalised popularity, float64; column 0 = -inf."""
        scores = (weights @ self.matrix).toarray().astype(np.float64)
        top = max(int(self.popularity.max()), 1)
        scores += backoff * (self.popularity / top)
        scores[:, 0] = -np.inf
        return scores

    def save(self, path: str | Path) -> None:
        self._check_fitted()
        arrays = {"kind": np.array(self.kind), "config": np.array(json.dumps(dataclasses.asdict(self.cfg))),
                  "num_items": np.array(self.num_items), "popularity": self.popularity}
        if self.matrix is not None:
            m = self.matrix.tocsr()
            arrays.update(matrix_data=m.data, matrix_indices=m.indices, matrix_indptr=m.indptr)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Reads a file written by `save` of this same kind."""
        model = load(path)
        if not isinstance(model, cls):
            raise ValueError(f"{path} holds a {model.kind} baseline, not {cls.kind}")
        return model

    @classmethod
    def _from_arrays(cls, z) -> Self:
        model = cls(cls.config_cls(**json.loads(str(z["config"]))))
        model.num_items = int(z["num_items"])
        model.popularity = z["popularity"]
        if "matrix_data" in z:
            size = model.num_items + 1
            model.matrix = sp.csr_matrix((z["matrix_data"], z["matrix_indices"], z["matrix_indptr"]),
                                         shape=(size, size))
        return model


class Popularity(_Fitted):
    """Score of item j = its number of training events, the same for every user."""

    kind = "popularity"
    config_cls = PopularityConfig

    def fit(self, sequences: list[np.ndarray], num_items: int) -> Self:
        items, _ = flatten(sequences, num_items)
        self._fit_popularity(items, num_items)
        return self

    def score(self, history: np.ndarray) -> np.ndarray:
        """history int [B, L] (only B is used) -> float64 [B, V+1]."""
        self._check_fitted()
        row = self.popularity.astype(np.float64)
        row[0] = -np.inf
        return np.tile(row, (np.asarray(history).shape[0], 1))


class Markov(_Fitted):
    """First-order transitions: score of j = count(last -> j) (row-normalised), + popularity backoff."""

    kind = "markov"
    config_cls = MarkovConfig

    def fit(self, sequences: list[np.ndarray], num_items: int) -> Self:
        items, seq = flatten(sequences, num_items)
        self._fit_popularity(items, num_items)
        counts = count_matrix(*pairs_at_offset(items, seq, 1), num_items + 1)
        if self.cfg.normalise:
            totals = np.asarray(counts.sum(axis=1)).ravel()
            counts = sp.diags(1.0 / np.maximum(totals, 1.0)) @ counts
        self.matrix = counts.astype(np.float32).tocsr()
        return self

    def score(self, history: np.ndarray) -> np.ndarray:
        """history int [B, L] right-padded -> float64 [B, V+1]; the last valid item picks the row."""
        self._check_fitted()
        return self._sparse_scores(history_weights(history, self.num_items, history_len=1),
                                   self.cfg.backoff)


class ItemKNN(_Fitted):
    """Cosine co-occurrence neighbours: score of j = sum_h w_h sim(h, j) over recent history items h.

    count(i, j) = pairs of events (i, j) in one user's sequence at most `window` steps apart (any
    distance when window = 0, computed as X^T X of the user-item count matrix X); count(i) = events of i.
    Self-similarity is dropped; every row keeps its `neighbours` largest similarities.
    """

    kind = "itemknn"
    config_cls = ItemKNNConfig

    def fit(self, sequences: list[np.ndarray], num_items: int) -> Self:
        items, seq = flatten(sequences, num_items)
        self._fit_popularity(items, num_items)
        size = num_items + 1
        if self.cfg.window == 0:
            users = sp.csr_matrix((np.ones(len(items)), (seq, items)), shape=(len(sequences), size))
            counts = (users.T @ users).tocsr()
        else:
            counts = sp.csr_matrix((size, size))
            for offset in range(1, self.cfg.window + 1):  # loops over offsets, each over all events
                if offset >= len(items):
                    break
                counts = counts + count_matrix(*pairs_at_offset(items, seq, offset), size)
            counts = counts + counts.T
        counts = counts.tocoo()
        off_diagonal = counts.row != counts.col
        rows, cols, co = counts.row[off_diagonal], counts.col[off_diagonal], counts.data[off_diagonal]
        pop = self.popularity.astype(np.float64)
        sim = co / (np.sqrt(pop[rows] * pop[cols]) + self.cfg.shrink)
        matrix = sp.csr_matrix((sim, (rows, cols)), shape=(size, size))
        if self.cfg.neighbours > 0:
            matrix = top_k_per_row(matrix, self.cfg.neighbours)
        self.matrix = matrix.astype(np.float32).tocsr()
        return self

    def score(self, history: np.ndarray) -> np.ndarray:
        """history int [B, L] right-padded -> float64 [B, V+1]."""
        self._check_fitted()
        weights = history_weights(history, self.num_items, self.cfg.history_len, self.cfg.decay)
        return self._sparse_scores(weights, self.cfg.backoff)


BASELINES: dict[str, type[_Fitted]] = {"popularity": Popularity, "markov": Markov, "itemknn": ItemKNN}


def load(path: str | Path) -> Popularity | Markov | ItemKNN:
    """Reads any baseline written by `save`; the kind is stored in the file."""
    with np.load(path, allow_pickle=False) as z:
        kind = str(z["kind"])
        if kind not in BASELINES:
            raise ValueError(f"{path}: unknown baseline kind {kind!r} (known: {', '.join(BASELINES)})")
        return BASELINES[kind]._from_arrays(z)
