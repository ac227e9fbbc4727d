"""The pre-LN Transformer block shared by SASRec (causal, ReLU) and BERT4Rec (bidirectional, GELU).

x + Dropout(Attn(LN(x))), then x + Dropout(FFN(LN(x))). Shapes: B batch, T time, D width.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.models.attention import Implementation, attention


class Block(nnx.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, *, causal: bool,
                 activation: Callable[[jax.Array], jax.Array], init_std: float = 0.0, rngs: nnx.Rngs):
        """`init_std` > 0: normal init of the dense kernels with that std; 0: LeCun normal."""
        self.heads = heads
        self.causal = causal
        self.activation = activation
        init = nnx.initializers.normal(init_std) if init_std > 0 else nnx.initializers.lecun_normal()
        linear = lambda i, o: nnx.Linear(i, o, kernel_init=init, rngs=rngs)
        self.norm_attn = nnx.LayerNorm(dim, rngs=rngs)
        self.qkv = linear(dim, 3 * dim)
        self.out = linear(dim, dim)
        self.norm_ffn = nnx.LayerNorm(dim, rngs=rngs)
        self.ffn_in = linear(dim, ffn_dim)
        self.ffn_out = linear(ffn_dim, dim)
        self.drop = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, lengths: jax.Array, keys: jax.Array | None,
                 implementation: Implementation) -> jax.Array:
        """x [B, T, D], lengths [B]; `keys` (two PRNG keys) enables dropout, None is inference."""
        b, t, d = x.shape
        train = keys is not None
        q, k, v = jnp.split(self.qkv(self.norm_attn(x)), 3, axis=-1)
        split = lambda a: a.reshape(b, t, self.heads, d // self.heads)
        a = attention(split(q), split(k), split(v), lengths, causal=self.causal, implementation=implementation)
        a = self.out(a.reshape(b, t, d))
        x = x + self.drop(a, deterministic=not train, rngs=keys[0] if train else None)
        h = self.ffn_out(self.activation(self.ffn_in(self.norm_ffn(x))))
        return x + self.drop(h, deterministic=not train, rngs=keys[1] if train else None)
