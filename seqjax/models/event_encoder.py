"""Sequence models for purchase / churn prediction: an encoder of typed, timed event histories and heads.

`EventEncoder` turns a right-padded history (the arrays of seqjax.data.task_pipeline's batches) into
per-position states and one user representation:

    sum of the enabled feature embeddings at each event   [B, T, D]  (item, event type, category, hour,
        weekday, log2 gap bucket, session position clipped to `max_session_position`, log2 price bucket
        where the data has prices; the item table is
        its own, the others share one table in blocks of rows; the transformer adds a learned position
        counted from the oldest kept event)
    -> LayerNorm -> dropout -> GRU / LSTM layers (seqjax.models.recurrent, a Linear D -> D after them)
       or pre-LN Transformer blocks (seqjax.models.transformer.Block, causal or bidirectional) + LayerNorm
    -> states [B, T, D]; user = states at each row's last valid position [B, D], plus the embedding of
       `cutoff_gap` (log2 bucket of the seconds from the last event to the cutoff) when enabled.

hour, weekday, session_position and gap_bucket use 0 as a real value, so padding is never told apart by
its ids: padded positions are zeroed after the embedding sum and every encoder masks them with `lengths`
(the recurrent scan keeps its carry, attention hides padded keys), so nothing written at t >= length
changes a valid state or the user representation. With a causal encoder the state at t sees events
0..t only, which is what the next-item head's loss needs.

`BinaryHead`: user representation -> logit; at user_item level it also sees the candidate item's
embedding, an attention pooling of the history states with the candidate as query, and the candidate's
history statistics (`candidate_stats`: how often it occurs, whether at all, how many events ago last).
`MultiTaskModel`: one encoder and any subset of the heads `next_item` (scores against the item embedding
table), `purchase` and `churn`; with `num_aggregates` the binary heads also read the example's prepared RFM
aggregates (`batch["aggregates"]`, seqjax.train.task_data.aggregate_inputs).
Shapes: B batch, T time, D width, V items (+1 for padding id 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqjax.data.features import GAP_BUCKETS, PRICE_BUCKETS
from seqjax.data.schema import EVENT_TYPES
from seqjax.models.attention import Implementation
from seqjax.models.recurrent import RecurrentLayer
from seqjax.models.repeat_head import RepeatHead
from seqjax.models.transformer import Block

# Per-event features that can be embedded (besides `items`, which is always), and the per-example one.
EVENT_FEATURES = ("events", "categories", "hour", "weekday", "gap_bucket", "session_position", "price_bucket")
FEATURES = ("items", *EVENT_FEATURES, "cutoff_gap")
BINARY_HEADS = ("purchase", "churn")
HEADS = ("next_item", *BINARY_HEADS)


@dataclasses.dataclass(frozen=True)
class EventEncoderConfig:
    section: ClassVar[str] = "sequence_task.encoder"  # config path, for error messages
    kind: Literal["gru", "lstm", "transformer"] = "gru"  # the sequence encoder over the event embeddings
    dim: int = 64  # embedding and state width D
    layers: int = 1  # stacked GRU/LSTM layers (recurrent kinds)
    blocks: int = 2  # Transformer blocks (transformer)
    heads: int = 2  # attention heads (transformer); dim must divide by it
    ffn_mult: int = 2  # feed-forward width = ffn_mult * dim (transformer)
    causal: bool = True  # transformer: causal attention (needed by the next_item head); False: bidirectional
    dropout: float = 0.1  # on the summed embeddings, between layers, in the blocks and in the heads
    features: tuple[str, ...] = FEATURES  # which inputs to embed; "items" is needed by the candidate and
    # next-item heads (they score against its table); "cutoff_gap" is per example, added to the user state
    max_session_position: int = 31  # session positions above this share the last embedding
    head_hidden: int = 0  # hidden width of each binary head's MLP; 0 = dim
    attention: Implementation = "reference"  # attention implementation (transformer)

    def validate(self) -> None:
        p = self.section
        if self.kind not in ("gru", "lstm", "transformer"):
            raise ValueError(f"{p}.kind={self.kind!r} must be one of gru, lstm, transformer")
        for name in ("dim", "layers", "blocks", "heads", "ffn_mult", "max_session_position"):
            if getattr(self, name) < 1:
                raise ValueError(f"{p}.{name}={getattr(self, name)} must be >= 1")
        if self.kind == "transformer" and self.dim % self.heads:
            raise ValueError(f"{p}.dim={self.dim} is not divisible by {p}.heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{p}.dropout={self.dropout} must be in [0, 1)")
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"{p}.features: unknown {unknown}; choose from {list(FEATURES)}")
        if self.head_hidden < 0:
            raise ValueError(f"{p}.head_hidden={self.head_hidden} must be >= 0")


class Encoded(NamedTuple):
    states: jax.Array  # [B, T, D] per-position states (padded positions repeat or hold garbage: use mask)
    user: jax.Array  # [B, D] the user representation at the cutoff
    mask: jax.Array  # bool [B, T], True at valid positions
    inputs: jax.Array  # [B, T, D] the summed feature embeddings (`embed`), zero at padding: the repeat head's keys


def vocab_sizes(num_items: int, num_categories: int, max_session_position: int) -> dict[str, int]:
    """Embedding rows of every feature (ids 0..size-1)."""
    return {"items": num_items + 1, "events": len(EVENT_TYPES) + 1, "categories": num_categories + 1,
            "hour": 24, "weekday": 7, "gap_bucket": GAP_BUCKETS, "session_position": max_session_position + 1,
            "price_bucket": PRICE_BUCKETS, "cutoff_gap": GAP_BUCKETS}


class EventEncoder(nnx.Module):
    def __init__(self, num_items: int, num_categories: int, max_len: int, cfg: EventEncoderConfig, *,
                 has_prices: bool = False, rngs: nnx.Rngs):
        cfg.validate()
        self.kind = cfg.kind
        # price_bucket only where the data has prices: elsewhere it is always 0 and would only change the table's init
        self.features = tuple(f for f in EVENT_FEATURES if f in cfg.features and (f != "price_bucket" or has_prices))
        self.max_session_position = cfg.max_session_position
        self.attention = cfg.attention
        sizes = vocab_sizes(num_items, num_categories, cfg.max_session_position)
        init = nnx.initializers.normal(0.02)
        embed = lambda name: nnx.Embed(sizes[name], cfg.dim, embedding_init=init, rngs=rngs)
        self.item_embed = embed("items") if "items" in cfg.features else None
        # The other per-event features share one table, each in its own block of rows (`offsets`): one
        # gather (and one scatter-add in the backward pass) for all of them.
        self.offsets = tuple(int(x) for x in np.cumsum([0] + [sizes[f] for f in self.features])[:-1])
        self.feature_embed = nnx.Embed(sum(sizes[f] for f in self.features), cfg.dim, embedding_init=init,
                                       rngs=rngs) if self.features else None
        self.cutoff_embed = embed("cutoff_gap") if "cutoff_gap" in cfg.features else None
        self.pos_embed = nnx.Embed(max_len, cfg.dim, embedding_init=init, rngs=rngs) \
            if cfg.kind == "transformer" else None
        self.input_norm = nnx.LayerNorm(cfg.dim, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)
        if cfg.kind == "transformer":
            self.layers = nnx.List([Block(cfg.dim, cfg.heads, cfg.ffn_mult * cfg.dim, cfg.dropout, causal=cfg.causal,
                                          activation=jax.nn.gelu, rngs=rngs) for _ in range(cfg.blocks)])
            self.final = nnx.LayerNorm(cfg.dim, rngs=rngs)
        else:
            self.layers = nnx.List([RecurrentLayer(cfg.kind, cfg.dim, cfg.dim, rngs=rngs) for _ in range(cfg.layers)])
            self.final = nnx.Linear(cfg.dim, cfg.dim, rngs=rngs)  # as GRU4Rec: the tanh-bounded state, rescaled

    def item_table(self) -> jax.Array:
        """Item embeddings [V+1, D]; row 0 (padding) must be masked by the caller."""
        return self.item_embed.embedding[...]

    def embed(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """Sum of the enabled feature embeddings [B, T, D], zero at padded positions."""
        items = batch["items"]
        if self.item_embed is not None:
            x = jnp.take(self.item_table(), items, axis=0)
        else:
            x = jnp.zeros(items.shape + (self.input_norm.num_features,), self.input_norm.scale.dtype)
        if self.features:
            ids = [jnp.minimum(batch[f], self.max_session_position) if f == "session_position" else batch[f]
                   for f in self.features]
            ids = jnp.stack([i.astype(jnp.int32) + o for i, o in zip(ids, self.offsets)], axis=-1)  # [B, T, F]
            x = x + jnp.sum(jnp.take(self.feature_embed.embedding[...], ids, axis=0), axis=2)
        if self.pos_embed is not None:
            x = x + self.pos_embed.embedding[...][None, :items.shape[1]]
        mask = jnp.arange(items.shape[1])[None, :] < batch["lengths"][:, None]
        return jnp.where(mask[..., None], x, 0.0)

    def __call__(self, batch: Mapping[str, jax.Array], key: jax.Array | None = None) -> Encoded:
        """batch: `items` and the enabled EVENT_FEATURES [B, T] (right-padded), `lengths` [B], and
        `cutoff_gap` [B] when that feature is enabled. `key` enables dropout; None is inference."""
        lengths = batch["lengths"]
        n = len(self.layers)
        keys = None if key is None else jax.random.split(key, 1 + 2 * n)
        inputs = self.embed(batch)
        x = self.input_norm(inputs)
        x = self.drop(x, deterministic=keys is None, rngs=None if keys is None else keys[0])
        for i, layer in enumerate(self.layers):
            if self.kind == "transformer":
                x = layer(x, lengths, None if keys is None else keys[1 + 2 * i:3 + 2 * i], self.attention)
            else:
                if i:  # dropout between recurrent layers
                    x = self.drop(x, deterministic=keys is None, rngs=None if keys is None else keys[1 + 2 * i])
                x = layer(x, lengths)
        states = self.final(x)
        mask = jnp.arange(states.shape[1])[None, :] < lengths[:, None]
        user = jnp.take_along_axis(states, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
        if self.cutoff_embed is not None:
            user = user + jnp.take(self.cutoff_embed.embedding[...], batch["cutoff_gap"], axis=0)
        return Encoded(states, user, mask, inputs)


NUM_CANDIDATE_STATS = 3


def candidate_stats(items: jax.Array, lengths: jax.Array, candidate: jax.Array) -> jax.Array:
    """[B, 3]: log1p(occurrences of the candidate in the history), 1 if it occurs at all, log1p(events
    since its last occurrence) (0 when absent). items [B, T], lengths [B], candidate [B]; padding ignored."""
    t = jnp.arange(items.shape[1])[None, :]
    hit = (t < lengths[:, None]) & (items == candidate[:, None])
    last = jnp.max(jnp.where(hit, t, -1), axis=1)
    present = last >= 0
    since = jnp.where(present, lengths - 1 - last, 0)
    return jnp.stack([jnp.log1p(hit.sum(axis=1)), present, jnp.log1p(since)], axis=1).astype(jnp.float32)


class BinaryHead(nnx.Module):
    """Encoded history (and at user_item level the candidate) -> one logit per row."""

    def __init__(self, dim: int, hidden: int, dropout: float, *, candidate: bool, aggregates: int = 0,
                 rngs: nnx.Rngs):
        self.candidate = candidate
        if candidate:
            self.query = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
            # [user, pooled history, candidate, user * candidate, candidate_stats]
            d_in = 4 * dim + NUM_CANDIDATE_STATS
        else:
            d_in = dim
        d_in += aggregates  # the example's prepared RFM aggregates, appended as they are
        self.hidden = nnx.Linear(d_in, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)
        self.drop = nnx.Dropout(dropout)

    def __call__(self, enc: Encoded, cand: jax.Array | None = None, stats: jax.Array | None = None,
                 key: jax.Array | None = None, aggregates: jax.Array | None = None) -> jax.Array:
        """enc; cand [B, D] the candidate's embedding and stats [B, NUM_CANDIDATE_STATS] its
        `candidate_stats` (user_item level only); aggregates [B, A] when the head takes them; `key` enables
        dropout -> logits [B]."""
        x = enc.user
        if self.candidate:
            d = cand.shape[-1]
            scores = jnp.einsum("btd,bd->bt", enc.states, self.query(cand)) / jnp.sqrt(d).astype(cand.dtype)
            scores = jnp.where(enc.mask, scores, jnp.finfo(scores.dtype).min)
            pooled = jnp.einsum("bt,btd->bd", jax.nn.softmax(scores, axis=-1), enc.states)
            x = jnp.concatenate([x, pooled, cand, x * cand, stats.astype(x.dtype)], axis=-1)
        if aggregates is not None:
            x = jnp.concatenate([x, aggregates.astype(x.dtype)], axis=-1)
        h = self.drop(jax.nn.gelu(self.hidden(x)), deterministic=key is None, rngs=key)
        return self.out(h)[:, 0]


class MultiTaskModel(nnx.Module):
    """One EventEncoder and the heads in `heads` (any subset of HEADS).

    `candidate_heads`: the binary heads whose examples are (user, item) pairs (purchase at user_item
    level); they read `batch["candidate"]`. The next_item head has no parameters of its own: it scores
    the per-position states against the encoder's item table (and needs a causal encoder); with `repeat`
    it becomes a repeat-explore mixture (seqjax.models.repeat_head), whose gate and repeat attention are
    the only parameters it adds.
    """

    def __init__(self, num_items: int, num_categories: int, max_len: int, cfg: EventEncoderConfig,
                 heads: tuple[str, ...], candidate_heads: tuple[str, ...] = (), *, repeat: bool = False,
                 num_aggregates: int = 0, has_prices: bool = False, rngs: nnx.Rngs):
        unknown = [h for h in (*heads, *candidate_heads) if h not in HEADS]
        if unknown or not heads:
            raise ValueError(f"heads must be a non-empty subset of {list(HEADS)}, got {list(heads)}")
        if "next_item" in heads and cfg.kind == "transformer" and not cfg.causal:
            raise ValueError(f"{cfg.section}.causal=false: the next_item head needs a causal encoder")
        item_heads = [h for h in heads if h == "next_item" or h in candidate_heads]
        if item_heads and "items" not in cfg.features:
            raise ValueError(f"{cfg.section}.features must include 'items' for the {item_heads} head(s): "
                             "they score items against its table")
        self.heads = tuple(h for h in HEADS if h in heads)
        self.binary_heads = tuple(h for h in BINARY_HEADS if h in heads)
        self.encoder = EventEncoder(num_items, num_categories, max_len, cfg, has_prices=has_prices, rngs=rngs)
        hidden = cfg.head_hidden or cfg.dim
        self.binary = nnx.Dict({h: BinaryHead(cfg.dim, hidden, cfg.dropout, candidate=h in candidate_heads,
                                              aggregates=num_aggregates, rngs=rngs) for h in self.binary_heads})
        if repeat and "next_item" not in heads:
            raise ValueError("repeat=True is a form of the next_item head, which is not among the heads")
        self.repeat = RepeatHead(cfg.dim, rngs=rngs) if repeat else None

    def item_table(self) -> jax.Array:
        return self.encoder.item_table()

    def __call__(self, batch: Mapping[str, jax.Array], key: jax.Array | None = None,
                 ) -> tuple[dict[str, jax.Array], Encoded]:
        """-> ({binary head: logits [B]}, the encoded histories). `key` enables dropout."""
        keys = [None] * (1 + len(self.binary)) if key is None else list(jax.random.split(key, 1 + len(self.binary)))
        enc = self.encoder(batch, keys[0])
        logits = {}
        for k, (name, head) in enumerate(self.binary.items()):
            cand = stats = None
            if head.candidate:
                cand = jnp.take(self.item_table(), batch["candidate"], axis=0)
                stats = candidate_stats(batch["items"], batch["lengths"], batch["candidate"])
            logits[name] = head(enc, cand, stats, keys[1 + k], batch.get("aggregates"))
        return logits, enc

    def repeat_parts(self, batch: Mapping[str, jax.Array], enc: Encoded) -> tuple[jax.Array, jax.Array, jax.Array]:
        """RepeatHead's (gate logits [B, T], log a [B, T, T], visible [B, T, T]); keys from the event inputs."""
        return self.repeat(enc.states, enc.inputs, batch["lengths"])

    def next_item_scores(self, enc: Encoded) -> jax.Array:
        """Scores of every item after each position [B, T, V+1] (column 0, padding, is -inf)."""
        scores = jnp.einsum("btd,vd->btv", enc.states, self.item_table())
        return scores.at[..., 0].set(-jnp.inf)
