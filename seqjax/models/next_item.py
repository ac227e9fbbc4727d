"""The interface every neural next-item model shares: encode a sequence, score against item embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def lookup(table: nnx.Embed, ids: jax.Array) -> jax.Array:
    """Rows of an embedding table in the parameters' dtype. (Calling nnx.Embed promotes to the dtype it was
    built with, float32, so bfloat16 parameters would still give float32 activations.)"""
    return jnp.take(table.embedding[...], ids, axis=0)


class NextItemModel(nnx.Module):
    """Subclasses define `item_embed`, `output_embed` (None when shared) and
    `encode(items [B, T], lengths [B], key=None) -> [B, T, D]`."""

    item_embed: nnx.Embed
    output_embed: nnx.Embed | None

    def item_table(self) -> jax.Array:
        """Output item embeddings [V+1, D]; row 0 (padding) must be masked by the caller."""
        table = self.item_embed if self.output_embed is None else self.output_embed
        return table.embedding[...]

    def last_hidden(self, items: jax.Array, lengths: jax.Array) -> jax.Array:
        """The user representation: hidden state at each row's last valid position [B, D]."""
        h = self.encode(items, lengths)
        return jnp.take_along_axis(h, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
