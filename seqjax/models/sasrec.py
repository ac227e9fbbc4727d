"""SASRec (Kang & McAuley, 2018): causal self-attention over a user's item sequence, in flax.nnx.

Pre-LN Transformer blocks, learned absolute positions counted from the oldest kept event, dropout,
and item scores as dot products with the (shared or separate) output item embeddings.
Shapes: B batch, T time, D model width, V items (+1 for padding id 0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.models.attention import Implementation
from seqjax.models.next_item import NextItemModel, lookup
from seqjax.models.transformer import LAYOUTS, AttentionDropout, Block, Layout, QKVInit


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    dim: int = 64  # model width D
    heads: int = 1  # attention heads; dim must divide by it
    blocks: int = 2  # Transformer blocks
    dropout: float = 0.2  # on embeddings, attention output and feed-forward
    ffn_mult: int = 1  # feed-forward width = ffn_mult * dim (the paper uses dim)
    shared_embeddings: bool = True  # score items with the input embedding table
    linear_init_std: float = 0.0  # std of the normal init of every dense kernel; 0 = LeCun normal
    # (flax's default). 0.02 is the BERT/GPT-2 init that K&V's SASRec+ uses: small residual branches at
    # the start, so the item embeddings dominate the residual stream early in training.
    layout: Layout = "pre_ln"  # block wiring: pre_ln (GPT-2) or sasrec (the authors' code, K&V's SASRec+);
    # see seqjax/models/transformer.py
    attention_dropout: AttentionDropout = "output"  # where attention dropout acts: on the block's attention
    # output, or on the attention weights (torch.nn.MultiheadAttention, K&V; needs model.attention=reference)
    qkv_init: QKVInit = "dense"  # query/key/value kernels: like the other dense kernels, or torch_mha
    # (Xavier-uniform of torch's fused in_proj, which K&V's GPT-2-style init leaves untouched)
    norm_eps: float = 1e-6  # LayerNorm epsilon (flax's default; the authors' code and K&V use 1e-8)

    def validate(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"model.sasrec.dim={self.dim} is not divisible by model.sasrec.heads={self.heads}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"model.sasrec.layout={self.layout!r} is not one of {LAYOUTS}")
        if self.linear_init_std < 0:
            raise ValueError(f"model.sasrec.linear_init_std={self.linear_init_std} must be >= 0")
        if self.norm_eps <= 0:
            raise ValueError(f"model.sasrec.norm_eps={self.norm_eps} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.sasrec.dropout={self.dropout} must be in [0, 1)")


class SASRec(NextItemModel):
    def __init__(self, num_items: int, max_len: int, cfg: SASRecConfig, *, rngs: nnx.Rngs,
                 attention_impl: Implementation = "reference"):
        self.num_items = num_items
        self.attention_impl = attention_impl
        init = nnx.initializers.normal(0.02)
        self.item_embed = nnx.Embed(num_items + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.pos_embed = nnx.Embed(max_len, cfg.dim, embedding_init=init, rngs=rngs)
        self.output_embed = None if cfg.shared_embeddings else nnx.Embed(
            num_items + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.blocks = nnx.List([Block(cfg.dim, cfg.heads, cfg.ffn_mult * cfg.dim, cfg.dropout, causal=True,
                                      activation=jax.nn.relu,  # ReLU, as in the paper
                                      init_std=cfg.linear_init_std, layout=cfg.layout,
                                      attention_dropout=cfg.attention_dropout, qkv_init=cfg.qkv_init,
                                      norm_eps=cfg.norm_eps, rngs=rngs)
                                for _ in range(cfg.blocks)])
        self.final_norm = nnx.LayerNorm(cfg.dim, epsilon=cfg.norm_eps, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)

    def encode(self, items: jax.Array, lengths: jax.Array, key: jax.Array | None = None,
               positions: jax.Array | None = None, segments: jax.Array | None = None) -> jax.Array:
        """items [B, T] right-padded with 0, lengths [B] -> hidden states [B, T, D].

        `key` enables dropout (training); None means deterministic inference. Packed rows
        (seqjax/data/packing.py) give `positions` and `segments` [B, T]: each sequence's own positions,
        and attention within its segment.
        """
        t = items.shape[1]
        per_block = self.blocks[0].num_keys if len(self.blocks) else 0
        keys = None if key is None else jax.random.split(key, 1 + per_block * len(self.blocks))
        x = lookup(self.item_embed, items) * self.item_embed.features ** 0.5  # a Python float keeps x's dtype
        x = x + lookup(self.pos_embed, jnp.arange(t)[None] if positions is None else positions)
        x = self.drop(x, deterministic=keys is None, rngs=None if keys is None else keys[0])
        for i, block in enumerate(self.blocks):
            block_keys = None if keys is None else keys[1 + per_block * i: 1 + per_block * (i + 1)]
            x = block(x, lengths, block_keys, self.attention_impl, segments)
        return self.final_norm(x)
