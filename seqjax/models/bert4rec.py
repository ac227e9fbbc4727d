"""BERT4Rec (Sun et al., 2019): bidirectional self-attention trained to fill in masked items, in flax.nnx.

Training rows are a user's last max_len items with some replaced by the mask token; the loss is the
full softmax at the masked positions only (masking lives in the data pipeline: seqjax.data.masking).
At inference the mask token is appended after the last item and its hidden state is the user
representation (`last_hidden`).

Item ids: 0 padding, 1..V items, V+1 the mask token. The input embedding has V+2 rows; `item_table`
returns rows 0..V only, so the mask token is never a candidate. Learned absolute positions count from
the oldest kept event (right padding). Embeddings are summed, layer-normed and dropped out as in BERT;
the blocks are pre-LN with GELU feed-forward and a final LayerNorm (pre-LN trains without warmup
tricks; the paper's post-LN blocks are not reproduced). Items are scored by a dot product with the tied
input table, as in Klenitskiy & Vasilev's code, without the paper's GELU projection and per-item bias.
Shapes: B batch, T time, D model width, N heads, V items.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.models.attention import Implementation
from seqjax.models.next_item import NextItemModel, lookup
from seqjax.models.transformer import Block


@dataclasses.dataclass(frozen=True)
class BERT4RecConfig:
    dim: int = 64  # model width D
    heads: int = 2  # attention heads; dim must divide by it
    blocks: int = 2  # Transformer blocks
    dropout: float = 0.1  # on embeddings, attention output and feed-forward
    mask_prob: float = 0.2  # per-item masking probability of training rows (read by the data pipeline)
    mask_last_prob: float = 0.0  # probability of also masking a training row's last item; 0 = off
    ffn_mult: int = 4  # feed-forward width = ffn_mult * dim (GELU, as in BERT)
    shared_embeddings: bool = True  # score items with the input embedding table

    def validate(self) -> None:
        p = "model.bert4rec"
        if self.dim < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"{p}.dim={self.dim} must be a positive multiple of {p}.heads={self.heads}")
        if self.blocks < 1:
            raise ValueError(f"{p}.blocks={self.blocks} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{p}.dropout={self.dropout} must be in [0, 1)")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"{p}.mask_prob={self.mask_prob} must be in (0, 1]")
        if not 0.0 <= self.mask_last_prob <= 1.0:
            raise ValueError(f"{p}.mask_last_prob={self.mask_last_prob} must be in [0, 1]")
        if self.ffn_mult < 1:
            raise ValueError(f"{p}.ffn_mult={self.ffn_mult} must be >= 1")


class BERT4Rec(NextItemModel):
    def __init__(self, num_items: int, max_len: int, cfg: BERT4RecConfig, *, rngs: nnx.Rngs,
                 attention_impl: Implementation = "reference"):
        cfg.validate()
        self.num_items = num_items
        self.max_len = max_len
        self.mask_token = num_items + 1
        self.attention_impl = attention_impl
        init = nnx.initializers.normal(0.02)
        self.item_embed = nnx.Embed(num_items + 2, cfg.dim, embedding_init=init, rngs=rngs)
        self.pos_embed = nnx.Embed(max_len, cfg.dim, embedding_init=init, rngs=rngs)
        self.output_embed = None if cfg.shared_embeddings else nnx.Embed(
            num_items + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.embed_norm = nnx.LayerNorm(cfg.dim, rngs=rngs)
        self.blocks = nnx.List([Block(cfg.dim, cfg.heads, cfg.ffn_mult * cfg.dim, cfg.dropout, causal=False,
                                      activation=jax.nn.gelu, rngs=rngs)
                                for _ in range(cfg.blocks)])
        self.final_norm = nnx.LayerNorm(cfg.dim, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)

    def item_table(self) -> jax.Array:
        """Output item embeddings [V+1, D] (rows 0..V; never the mask row); row 0 is masked by the caller."""
        return super().item_table()[:self.num_items + 1]

    def encode(self, items: jax.Array, lengths: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """items [B, T] (ids 0..V+1) right-padded with 0, lengths [B] -> hidden states [B, T, D], T <= max_len.

        Every valid position attends to every valid position. `key` enables dropout (training).
        """
        t = items.shape[1]
        if t > self.max_len:
            raise ValueError(f"input length {t} exceeds max_len {self.max_len}")
        keys = None if key is None else jax.random.split(key, 1 + 2 * len(self.blocks))
        x = self.embed_norm(lookup(self.item_embed, items) + lookup(self.pos_embed, jnp.arange(t))[None])
        x = self.drop(x, deterministic=keys is None, rngs=None if keys is None else keys[0])
        for i, block in enumerate(self.blocks):
            x = block(x, lengths, None if keys is None else keys[1 + 2 * i: 3 + 2 * i], self.attention_impl)
        return self.final_norm(x)

    def last_hidden(self, items: jax.Array, lengths: jax.Array) -> jax.Array:
        """items [B, T], lengths [B] -> [B, D]: the hidden state of a mask token appended after each
        row's last item. Inputs widen to min(T + 1, max_len); a row that already fills that width
        drops its oldest item to make room."""
        b, t = items.shape
        w = min(t + 1, self.max_len)
        if w < t:
            raise ValueError(f"input length {t} exceeds max_len {self.max_len}")
        x = jnp.pad(items, ((0, 0), (0, w - t)))
        full = lengths >= w
        x = jnp.where(full[:, None], jnp.roll(x, -1, axis=1), x)
        pos = jnp.minimum(lengths, w - 1)  # items kept = the mask token's position
        rows = jnp.arange(b)
        x = x.at[rows, pos].set(self.mask_token)
        h = self.encode(x, pos + 1)
        return h[rows, pos]
