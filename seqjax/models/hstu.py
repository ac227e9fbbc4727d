"""HSTU (Zhai et al., "Actions Speak Louder than Words", ICML 2024) as a next-item encoder, in flax.nnx.

Each block: LayerNorm -> one Linear to U, V, Q, K -> SiLU -> HSTU attention (pointwise SiLU weights with
learned relative position and time biases, `hstu_attention.py`) -> LayerNorm(attention) * U -> Linear
-> dropout -> residual. A final LayerNorm; items are scored against the (shared or separate) output item
embeddings, as in SASRec. Shapes: B batch, T time, D model width, N heads, V items (+1 for padding id 0).

No absolute position embeddings: the relative position bias already gives every attention weight the
distance between the two events. Learned absolute positions counted from the oldest kept event mean
"first event ever" in a short history and "200th most recent" in a truncated long one, and they would tie
the model to max_len; relative distances mean the same at any length.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.models.hstu_attention import (
    NORMALIZERS,
    check_implementation,
    hstu_attention,
)
from seqjax.models.next_item import NextItemModel, lookup


@dataclasses.dataclass(frozen=True)
class HSTUConfig:
    dim: int = 64  # model width D (U, V, Q and K each have width D, split over the heads)
    heads: int = 2  # attention heads N; dim must divide by it
    blocks: int = 2  # HSTU blocks
    dropout: float = 0.2  # on the embeddings and on each block's output before the residual
    position_buckets: int = 64  # relative-position buckets: exact distances below 16, then 8 per octave
    time_buckets: int = 64  # relative-time buckets: exact below 4 s, then 2 per octave (64 covers 68 years)
    per_head_bias: bool = False  # one position and one time table per head instead of one per block
    normalizer: Literal["length", "causal"] = "causal"  # attention scale: 1 / row length, or 1 / (i + 1)
    shared_embeddings: bool = True  # score items with the input embedding table

    def validate(self) -> None:
        if self.dim < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"model.hstu.dim={self.dim} must be a positive multiple of model.hstu.heads={self.heads}")
        if self.blocks < 1:
            raise ValueError(f"model.hstu.blocks={self.blocks} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.hstu.dropout={self.dropout} must be in [0, 1)")
        for name in ("position_buckets", "time_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.hstu.{name}={getattr(self, name)} must be >= 1")
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"model.hstu.normalizer={self.normalizer!r} must be one of {NORMALIZERS}")


class HSTUBlock(nnx.Module):
    def __init__(self, cfg: HSTUConfig, *, rngs: nnx.Rngs):
        d = cfg.dim
        self.heads = cfg.heads
        self.normalizer = cfg.normalizer
        self.norm_in = nnx.LayerNorm(d, rngs=rngs)
        self.uvqk = nnx.Linear(d, 4 * d, rngs=rngs)
        self.norm_attn = nnx.LayerNorm(d, rngs=rngs)
        self.out = nnx.Linear(d, d, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)
        tables = cfg.heads if cfg.per_head_bias else 1
        # Zero biases: the block starts as plain pointwise attention and learns what distances mean.
        self.pos_bias = nnx.Param(jnp.zeros((tables, cfg.position_buckets)))  # [G, P]
        self.time_bias = nnx.Param(jnp.zeros((tables, cfg.time_buckets)))  # [G, S]

    def __call__(self, x: jax.Array, lengths: jax.Array, timestamps: jax.Array | None, key: jax.Array | None,
                 implementation: str) -> jax.Array:
        """x [B, T, D] -> [B, T, D]; key enables dropout."""
        b, t, d = x.shape
        u, v, q, k = jnp.split(jax.nn.silu(self.uvqk(self.norm_in(x))), 4, axis=-1)
        split = lambda a: a.reshape(b, t, self.heads, d // self.heads)
        a = hstu_attention(split(q), split(k), split(v), lengths, self.pos_bias[...], self.time_bias[...],
                           timestamps, implementation=implementation, normalizer=self.normalizer)
        y = self.out(self.norm_attn(a.reshape(b, t, d)) * u)
        return x + self.drop(y, deterministic=key is None, rngs=key)


class HSTU(NextItemModel):
    def __init__(self, num_items: int, max_len: int, cfg: HSTUConfig, *, rngs: nnx.Rngs,
                 attention_impl: str = "reference"):
        del max_len  # no absolute positions (module docstring): any length runs
        cfg.validate()
        check_implementation(attention_impl)
        self.num_items = num_items
        self.attention_impl = attention_impl
        init = nnx.initializers.normal(0.02)
        self.item_embed = nnx.Embed(num_items + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.output_embed = None if cfg.shared_embeddings else nnx.Embed(
            num_items + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.blocks = nnx.List([HSTUBlock(cfg, rngs=rngs) for _ in range(cfg.blocks)])
        self.final_norm = nnx.LayerNorm(cfg.dim, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)

    def encode(self, items: jax.Array, lengths: jax.Array, key: jax.Array | None = None,
               timestamps: jax.Array | None = None) -> jax.Array:
        """items [B, T] right-padded with 0, lengths [B] -> hidden states [B, T, D].

        `key` enables dropout (training); None means deterministic inference. `timestamps` [B, T]
        integer seconds of the input events (only differences matter: rebasing each row is fine), or
        None for data without times (no time bias). Padded positions' timestamps are ignored.
        """
        keys = None if key is None else jax.random.split(key, 1 + len(self.blocks))
        x = lookup(self.item_embed, items) * self.item_embed.features ** 0.5  # a Python float keeps x's dtype
        x = self.drop(x, deterministic=keys is None, rngs=None if keys is None else keys[0])
        for i, block in enumerate(self.blocks):
            x = block(x, lengths, timestamps, None if keys is None else keys[1 + i], self.attention_impl)
        return self.final_norm(x)

    def last_hidden(self, items: jax.Array, lengths: jax.Array, timestamps: jax.Array | None = None) -> jax.Array:
        """The user representation [B, D]: hidden state at each row's last valid position."""
        h = self.encode(items, lengths, timestamps=timestamps)
        return jnp.take_along_axis(h, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
