"""Next-item losses that never score the whole catalogue: sampled softmax, in-batch softmax and gBCE.

`full_softmax_loss` scores every position against all V items; at V = 10M that is B*T*V logits per step.
These losses score each position against its own target and a small candidate set instead:

- `sampled_softmax_loss`: N negatives drawn once per step and shared by every position ([B*T, N] logits),
  uniformly or by popularity, with the log-Q correction and accidental hits masked.
- `in_batch_softmax_loss`: the other positions' targets are the negatives ([B*T, B*T] logits, in chunks).
- `gbce_loss`: gSASRec's generalised binary cross-entropy with k uniform negatives per sequence.

All share `full_softmax_loss`'s convention: hidden [B, T, D], table [V+1, D] (row 0 is padding and never a
candidate), targets [B, T], weights [B, T]; the result is the weighted mean over positions with weight > 0
(or, given `denominator`, the weighted sum divided by it: train.loss_norm=epoch).
No array of size V other than the table, its gradient and the popularity tables is ever built.
Shapes: B batch, T time, D width, V items, M = B*T positions, N candidates, C positions per chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.config import ConfigError
from seqjax.train.losses import full_softmax_loss

LossFn = Callable[..., jax.Array]


# --- popularity sampling ----------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Popularity:
    """An item distribution q over ids 1..V as an alias table (Walker 1977, Vose 1991).

    Sampling costs O(1) per draw: pick a bucket i uniformly in 1..V, keep i with probability
    threshold[i] / 2^32, else take alias[i]. Building it is O(V log V) once, on the host.
    `jax.random.categorical` over V log-probs would draw Gumbel noise of shape [N, V] (10^10 floats for
    N = 1024 at V = 10M) and, in its default mode, is biased for probabilities below ~1e-7, which is
    already the uniform probability at V = 10M; an inverse CDF needs a float32 cumulative sum that cannot
    resolve such items either. The alias table needs 8 bytes per item and resolves each bucket to 2^-32.

    `log_q` is the exact distribution of this table (recomputed from the quantised thresholds), so the
    log-Q correction matches what is drawn. Pass it to the jitted step as an argument, not a closure:
    jit embeds closed-over arrays in the executable.
    """

    log_q: jax.Array  # [V+1] float32 log-probability of drawing each id; -inf at 0 and at zero-count items
    threshold: jax.Array  # [V+1] uint32: keep bucket i when 32 random bits are < threshold[i]
    alias: jax.Array  # [V+1] int32: the id drawn from bucket i otherwise

    @property
    def num_items(self) -> int:
        return self.log_q.shape[0] - 1


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p [n] float64 with mean 1 -> (accept [n] in [0, 1], alias [n]) such that drawing a bucket i uniformly
    and keeping it with probability accept[i], else taking alias[i], draws i with probability p[i] / n.

    Vose's pairing in its sweep order, vectorised with prefix sums: light items (p < 1) in index order
    are topped up by the current heavy item (p > 1); a heavy item whose mass drops below 1 becomes a
    bucket itself, topped up by the next heavy one. With D_k the summed deficit (1 - p) of the first k
    light items and X_t the summed excess (p - 1) of the first t heavy ones, light item k+1 is topped up
    by the first heavy t with X_t >= D_k, and heavy t runs dry at the first k with D_k > X_t, keeping
    1 + X_t - D_k.
    """
    n = p.size
    accept, alias = np.ones(n), np.arange(n)
    light, heavy = np.flatnonzero(p < 1.0), np.flatnonzero(p > 1.0)
    if light.size == 0 or heavy.size == 0:  # all exactly 1: every bucket keeps its own item
        return accept, alias
    # The largest excess goes last, so floating-point slack in the prefix sums never strands an earlier one.
    heavy = np.append(np.delete(heavy, np.argmax(p[heavy])), heavy[np.argmax(p[heavy])])
    deficit = np.cumsum(1.0 - p[light])  # D_1..D_K
    excess = np.cumsum(p[heavy] - 1.0)  # X_1..X_M
    before = np.concatenate([[0.0], deficit[:-1]])  # D_0..D_{K-1}
    t = np.minimum(np.searchsorted(excess, before, side="left"), heavy.size - 1)
    accept[light], alias[light] = p[light], heavy[t]
    k = np.minimum(np.searchsorted(deficit, excess[:-1], side="right"), light.size - 1)
    accept[heavy[:-1]] = np.clip(1.0 + excess[:-1] - deficit[k], 0.0, 1.0)
    alias[heavy[:-1]] = heavy[1:]
    return accept, alias


def popularity_from_counts(counts: np.ndarray) -> Popularity:
    """counts [V+1] (or any non-negative weights proportional to the wanted q; entry 0 is ignored).

    Count training targets, e.g. `np.bincount(targets, minlength=V + 1)`. Items with zero weight are never
    drawn and their log q is -inf, so they must never be targets of a popularity-corrected loss. Each bucket
    is resolved to 2^-32, so an item's q is exact to about 2^-32 / V (relative to its own q, 2^-32 / (V q)).
    """
    w = np.asarray(counts, np.float64)[1:]
    if w.ndim != 1 or w.size < 1 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("counts must be a finite, non-negative [V+1] vector with a positive sum over 1..V")
    v = w.size
    accept, alias = _alias_table(w * (v / w.sum()))
    # Rounded up, so an item with any weight keeps a non-zero probability and a finite log q.
    threshold = np.minimum(np.ceil(accept * 2.0**32), 2.0**32 - 1).astype(np.uint32)
    kept = threshold / 2.0**32  # the probability a bucket really keeps its item, after quantisation
    q = (np.bincount(np.arange(v), kept, minlength=v) + np.bincount(alias, 1.0 - kept, minlength=v)) / v
    with np.errstate(divide="ignore"):
        log_q = np.concatenate([[-np.inf], np.log(q)]).astype(np.float32)
    return Popularity(log_q=jnp.asarray(log_q),
                      threshold=jnp.asarray(np.concatenate([[0], threshold]).astype(np.uint32)),
                      alias=jnp.asarray(np.concatenate([[0], alias + 1]).astype(np.int32)))


def sample_items(key: jax.Array, shape: tuple[int, ...], num_items: int,
                 popularity: Popularity | None = None) -> jax.Array:
    """Item ids of `shape` drawn with replacement from 1..V: uniformly, or from `popularity`'s q."""
    bucket_key, keep_key = jax.random.split(key)
    bucket = jax.random.randint(bucket_key, shape, 1, num_items + 1, dtype=jnp.int32)
    if popularity is None:
        return bucket
    if popularity.num_items != num_items:
        raise ValueError(f"popularity covers {popularity.num_items} items; the table has {num_items}")
    keep = jax.random.bits(keep_key, shape, jnp.uint32) < popularity.threshold[bucket]
    return jnp.where(keep, bucket, popularity.alias[bucket])


# --- softmax over a shared candidate set ------------------------------------------------------------------


def _mean(total: jax.Array, weights: jax.Array, denominator: float | None) -> jax.Array:
    """The weighted sum over positions divided by their summed weight, or by `denominator` when given
    (train.loss_norm=epoch), as in `full_softmax_loss`."""
    return total / (denominator if denominator is not None else jnp.maximum(jnp.sum(weights), 1.0))


def _flatten(hidden: jax.Array, targets: jax.Array, weights: jax.Array, chunk_size: int):
    """[B, T, ...] -> ([chunks, C, D], [chunks, C], [chunks, C]), zero-padded to whole chunks."""
    d = hidden.shape[-1]
    h, y, w = hidden.reshape(-1, d), targets.reshape(-1), weights.reshape(-1).astype(jnp.float32)
    chunk = min(chunk_size, h.shape[0])
    pad = (-h.shape[0]) % chunk
    h, y, w = jnp.pad(h, ((0, pad), (0, 0))), jnp.pad(y, (0, pad)), jnp.pad(w, (0, pad))
    return h.reshape(-1, chunk, d), y.reshape(-1, chunk), w.reshape(-1, chunk)


def _chunk_ce(h, y, w, pos, cand, cand_ids, cand_bias, cand_ok):
    """One chunk: h [C, D], y [C], w [C], pos [C] target logits; cand [N, D], cand_ids/cand_bias/cand_ok [N]
    -> sum over the chunk of w * CE(own target + candidates other than it)."""
    logits = jnp.einsum("cd,nd->cn", h, cand, preferred_element_type=jnp.float32) - cand_bias
    # Accidental hits (a candidate equal to the own target) and unusable candidates are not negatives.
    logits = jnp.where((cand_ids[None] == y[:, None]) | ~cand_ok[None], -jnp.inf, logits)
    lse = jnp.logaddexp(pos, jax.nn.logsumexp(logits, axis=-1))
    return jnp.sum(jnp.where(w > 0, (lse - pos) * w, 0.0))


def softmax_over_candidates(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array,
                            candidates: jax.Array, log_q: jax.Array | None = None,
                            candidate_ok: jax.Array | None = None, chunk_size: int = 512,
                            denominator: float | None = None) -> jax.Array:
    """Softmax CE of each position's target against the target plus a candidate set shared by all positions.

    hidden [B, T, D], table [V+1, D], targets/weights [B, T], candidates [N] ids, candidate_ok [N] bool
    (default all). Every logit, the target's included, has log q of its id subtracted when `log_q` [V+1]
    is given; a candidate equal to the position's target, or not ok, is left out. Positions are scored C at
    a time under `jax.checkpoint`: [C, N] logits live at once. Weighted mean over positions with weight > 0
    (or the weighted sum / `denominator`).
    """
    hs, ys, ws = _flatten(hidden, targets, weights, chunk_size)
    valid = ws > 0
    ys = jnp.where(valid, ys, 1)  # a padding position scores item 1: finite, and its weight is 0
    cand = jnp.take(table, candidates, axis=0)
    ok = jnp.ones(candidates.shape, bool) if candidate_ok is None else candidate_ok
    # Target logits outside the chunk loop: inside it the table's gradient would be a [V+1, D] loop carry.
    pos = jnp.einsum("gcd,gcd->gc", hs, jnp.take(table, ys, axis=0), preferred_element_type=jnp.float32)
    cand_bias = jnp.zeros(candidates.shape, jnp.float32)
    if log_q is not None:
        pos = pos - jnp.take(log_q, ys, axis=0).astype(jnp.float32)
        cand_bias = jnp.where(ok, jnp.take(log_q, candidates, axis=0), 0.0).astype(jnp.float32)
    step = jax.checkpoint(lambda args: _chunk_ce(*args, cand, candidates, cand_bias, ok))
    per_chunk = jax.lax.map(step, (hs, ys, ws, pos))
    return _mean(jnp.sum(per_chunk), ws, denominator)


def sampled_softmax_loss(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array,
                         key: jax.Array, num_negatives: int, popularity: Popularity | None = None,
                         chunk_size: int = 512, denominator: float | None = None) -> jax.Array:
    """Sampled softmax CE with N = num_negatives negatives drawn once with `key` and shared by all positions.

    Negatives come from 1..V with replacement, uniformly (popularity None) or from `popularity`. Each logit,
    the target's and the negatives', has the log of its expected count N q subtracted (the log-Q correction
    of Jean et al. 2015 / Bengio & Senecal 2008, as in TensorFlow's `sampled_softmax_loss`); log N and, for
    uniform sampling, log q are the same for every logit and cancel, so only log q of popularity is
    applied. With this convention E[exp(loss)] = 1 + N q_y (exp(full CE) - 1) at each position (y its
    target): exp(loss) estimates exp(full CE) without bias exactly when N q_y = 1 (uniform with N = V);
    otherwise the negatives weigh N q_y times what they weigh in the full softmax. Accidental hits (a negative equal to the position's target) are masked; duplicate negatives are kept,
    as the expected-count correction assumes.
    """
    negatives = sample_items(key, (num_negatives,), table.shape[0] - 1, popularity)
    return softmax_over_candidates(hidden, table, targets, weights, negatives,
                                   None if popularity is None else popularity.log_q, chunk_size=chunk_size,
                                   denominator=denominator)


def in_batch_softmax_loss(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array,
                          popularity: Popularity | None = None, chunk_size: int = 512,
                          denominator: float | None = None) -> jax.Array:
    """Softmax CE against the targets of every position of the batch with weight > 0 (M = B*T candidates).

    Columns with the position's own target id (its own column and repeats of it) leave the negatives, so
    the target counts once; other repeated ids stay, one column per occurrence. With `popularity`, log q of
    each candidate's id is subtracted from its logit, the target's included (Yi et al., RecSys 2019): the
    batch's targets are draws from the target distribution q, so `popularity` should count targets.
    [C, M] logits live at once.
    """
    ids = targets.reshape(-1)
    return softmax_over_candidates(hidden, table, targets, weights, ids,
                                   None if popularity is None else popularity.log_q,
                                   candidate_ok=weights.reshape(-1) > 0, chunk_size=chunk_size,
                                   denominator=denominator)


# --- gBCE -------------------------------------------------------------------------------------------------


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """gSASRec's beta = alpha (t (1 - 1/alpha) + 1/alpha) with sampling rate alpha = k / (V - 1)."""
    alpha = num_negatives / (num_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(hidden: jax.Array, table: jax.Array, targets: jax.Array, weights: jax.Array, key: jax.Array,
              num_negatives: int, t: float = 0.75, denominator: float | None = None) -> jax.Array:
    """Generalised binary cross-entropy of gSASRec (Petrov & Macdonald, RecSys 2023).

    k = num_negatives negatives are drawn uniformly from 1..V once per sequence and shared by its T
    positions ([B, k] ids, [B, T, k] logits; sampling per position would gather B*T*k table rows). Per
    position: -beta log sigmoid(s+) - sum_j log sigmoid(-s_j), i.e. -log(sigmoid(s+)^beta) - sum_j
    log(1 - sigmoid(s_j)), where beta comes from `gbce_beta`; t = 0 is plain BCE, t = 1 gives beta = alpha.
    A negative equal to the position's target (an accidental hit) is left out.
    """
    b = hidden.shape[0]
    num_items = table.shape[0] - 1
    if not 1 <= num_negatives <= num_items - 1:
        raise ValueError(f"gbce needs 1 <= num_negatives <= V - 1 = {num_items - 1}; got {num_negatives}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"gbce t must be in [0, 1]; got {t}")
    beta = gbce_beta(num_negatives, num_items, t)
    w = weights.astype(jnp.float32)
    y = jnp.where(w > 0, targets, 1)
    negatives = sample_items(key, (b, num_negatives), num_items)
    pos = jnp.einsum("btd,btd->bt", hidden, jnp.take(table, y, axis=0), preferred_element_type=jnp.float32)
    neg = jnp.einsum("btd,bkd->btk", hidden, jnp.take(table, negatives, axis=0),
                     preferred_element_type=jnp.float32)
    neg_term = jnp.where(negatives[:, None, :] == y[..., None], 0.0, jax.nn.log_sigmoid(-neg))
    per_position = -beta * jax.nn.log_sigmoid(pos) - jnp.sum(neg_term, axis=-1)
    return _mean(jnp.sum(jnp.where(w > 0, per_position * w, 0.0)), w, denominator)


# --- configuration ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossConfig:
    kind: Literal["full", "sampled", "in_batch", "gbce"] = "full"  # training loss; all but full skip the V logits
    num_negatives: int = 1024  # sampled: negatives per step shared by all positions; gbce: per sequence
    sampler: Literal["uniform", "popularity"] = "uniform"  # sampled: how negatives are drawn
    in_batch_logq: bool = True  # in_batch: subtract log popularity of each candidate (needs item counts)
    gbce_t: float = 0.75  # gbce: calibration t in [0, 1]; 0 = plain BCE, 1 = beta equal to the sampling rate
    skip_padding: bool = True  # full: score only chunks that hold real positions; false scores padding too
    # (the reference in experiments/epoch_speed.py)
    # full: leave each position's other own-sequence items (past and future) out of its softmax. They are
    # the items evaluation filters as seen, and K&V's SASRec+ 3000 never samples them as negatives.
    exclude_own_items: bool = False

    @property
    def needs_popularity(self) -> bool:
        """Whether the loss needs a `Popularity` built from training counts."""
        return ((self.kind == "sampled" and self.sampler == "popularity")
                or (self.kind == "in_batch" and self.in_batch_logq))

    def validate(self, num_items: int | None = None, prefix: str = "train.loss") -> None:
        """Raises ConfigError (a ValueError) naming the field under `prefix` (where this config sits: train.loss,
        sequence_task.next_item.loss); `num_items` adds the checks that need V."""
        if self.kind not in ("full", "sampled", "in_batch", "gbce"):
            raise ConfigError(f"{prefix}.kind={self.kind!r}: use full, sampled, in_batch or gbce")
        if self.sampler not in ("uniform", "popularity"):
            raise ConfigError(f"{prefix}.sampler={self.sampler!r}: use uniform or popularity")
        if self.num_negatives < 1:
            raise ConfigError(f"{prefix}.num_negatives={self.num_negatives} must be at least 1")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ConfigError(f"{prefix}.gbce_t={self.gbce_t} must be in [0, 1]")
        if self.exclude_own_items and self.kind != "full":
            raise ConfigError(f"{prefix}.exclude_own_items=true needs {prefix}.kind=full, not {self.kind!r}")
        if self.kind == "gbce" and num_items is not None and self.num_negatives > num_items - 1:
            raise ConfigError(f"{prefix}.num_negatives={self.num_negatives} exceeds V - 1 = {num_items - 1}"
                              " (gbce samples at most every other item)")


def make_loss(cfg: LossConfig, chunk_size: int = 512, denominator: float | None = None,
              max_sequences: int | None = None) -> LossFn:
    """`loss(hidden, table, targets, weights, key, popularity=None, own_items=None) -> scalar` for the
    configured kind.

    `key` is used by sampled and gbce; `popularity` must be given when `cfg.needs_popularity`;
    `own_items` = (inputs, segments or None) of the batch when `cfg.exclude_own_items`;
    `chunk_size` is train.loss_chunk and `denominator`, `max_sequences` (the most sequences a batch holds) as
    in `full_softmax_loss`.
    """
    cfg.validate()

    def loss(hidden, table, targets, weights, key, popularity=None, own_items=None):
        if cfg.needs_popularity and popularity is None:
            raise ValueError(f"train.loss.kind={cfg.kind} with these options needs item popularity counts")
        if cfg.exclude_own_items and own_items is None:
            raise ValueError("train.loss.exclude_own_items needs each batch's own items")
        if cfg.kind == "full":
            return full_softmax_loss(hidden, table, targets, weights, chunk_size, denominator, cfg.skip_padding,
                                     own_items if cfg.exclude_own_items else None, max_sequences)
        if cfg.kind == "sampled":
            return sampled_softmax_loss(hidden, table, targets, weights, key, cfg.num_negatives,
                                        popularity if cfg.sampler == "popularity" else None, chunk_size,
                                        denominator)
        if cfg.kind == "in_batch":
            return in_batch_softmax_loss(hidden, table, targets, weights,
                                         popularity if cfg.in_batch_logq else None, chunk_size, denominator)
        return gbce_loss(hidden, table, targets, weights, key, cfg.num_negatives, cfg.gbce_t, denominator)

    return loss
