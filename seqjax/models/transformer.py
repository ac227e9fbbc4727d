"""The Transformer block shared by SASRec (causal, ReLU), BERT4Rec (bidirectional, GELU) and the event encoder.

Two wirings (`layout`), shapes B batch, T time, D width:
- `pre_ln`: x + Dropout(Attn(LN(x))), then x + Dropout(FFN(LN(x))) (GPT-2 style).
- `sasrec`: the SASRec authors' code (kept by pmixer's PyTorch port and K&V's SASRec+): queries from
  q = LN(x), keys and values from x itself, and the residual stream restarts from the normalised
  tensors: y = q + Dropout(Attn), then n = LN(y), n + Dropout(FFN(n)) with dropout also inside the FFN.

`attention_dropout="weights"` moves the attention dropout from the block's attention output onto the
attention weights (torch.nn.MultiheadAttention, which that code uses); `qkv_init="torch_mha"` draws the
query/key/value kernels as torch.nn.MultiheadAttention's in_proj does (Xavier-uniform over [3D, D]).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.models.attention import Implementation, attention

Layout = Literal["pre_ln", "sasrec"]
LAYOUTS: tuple[str, ...] = ("pre_ln", "sasrec")
AttentionDropout = Literal["output", "weights"]
QKVInit = Literal["dense", "torch_mha"]


def torch_mha_init(dim: int) -> nnx.Initializer:
    """Uniform(+-sqrt(6 / (D + 3D))): Xavier-uniform of torch's fused [3D, D] in_proj, whichever slice of it
    a kernel holds."""
    bound = (6.0 / (4 * dim)) ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class FlatLinear(nnx.Linear):
    """nnx.Linear over [..., D] as one [N, D] matrix product: XLA:CPU runs the kernel gradient of a
    [B, T, D] dot_general ~1.7x slower than the same 2-D GEMM (experiments/step_breakdown.py)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)


class Block(nnx.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, *, causal: bool,
                 activation: Callable[[jax.Array], jax.Array], init_std: float = 0.0,
                 layout: Layout = "pre_ln", attention_dropout: AttentionDropout = "output",
                 qkv_init: QKVInit = "dense", norm_eps: float = 1e-6, rngs: nnx.Rngs):
        """`init_std` > 0: normal init of the dense kernels with that std; 0: LeCun normal."""
        if layout not in LAYOUTS:
            raise ValueError(f"unknown block layout {layout!r}; expected one of {LAYOUTS}")
        self.heads = heads
        self.causal = causal
        self.activation = activation
        self.layout = layout
        self.attention_dropout = attention_dropout
        init = nnx.initializers.normal(init_std) if init_std > 0 else nnx.initializers.lecun_normal()
        linear = lambda i, o, kernel_init=init: FlatLinear(i, o, kernel_init=kernel_init, rngs=rngs)
        qkv = init if qkv_init == "dense" else torch_mha_init(dim)
        self.norm_attn = nnx.LayerNorm(dim, epsilon=norm_eps, rngs=rngs)
        if layout == "pre_ln":
            self.qkv = linear(dim, 3 * dim, qkv)
        else:  # queries see the normalised stream, keys and values the raw one: two projections
            self.q = linear(dim, dim, qkv)
            self.kv = linear(dim, 2 * dim, qkv)
        self.out = linear(dim, dim)
        self.norm_ffn = nnx.LayerNorm(dim, epsilon=norm_eps, rngs=rngs)
        self.ffn_in = linear(dim, ffn_dim)
        self.ffn_out = linear(ffn_dim, dim)
        self.drop = nnx.Dropout(dropout)

    @property
    def num_keys(self) -> int:
        """PRNG keys one training call consumes (one per dropout site)."""
        return 2 if self.layout == "pre_ln" else 3

    def __call__(self, x: jax.Array, lengths: jax.Array, keys: jax.Array | None,
                 implementation: Implementation, segments: jax.Array | None = None) -> jax.Array:
        """x [B, T, D], lengths [B]; `keys` ([num_keys] PRNG keys) enables dropout, None is inference;
        `segments` [B, T] restricts attention to each packed sequence."""
        b, t, d = x.shape
        train = keys is not None
        drop = lambda a, i: self.drop(a, deterministic=not train, rngs=keys[i] if train else None)
        split = lambda a: a.reshape(b, t, self.heads, d // self.heads)
        normed = self.norm_attn(x)
        if self.layout == "pre_ln":
            q, k, v = jnp.split(self.qkv(normed), 3, axis=-1)
        else:
            q = self.q(normed)
            k, v = jnp.split(self.kv(x), 2, axis=-1)
        on_weights = self.attention_dropout == "weights"
        a = attention(split(q), split(k), split(v), lengths, causal=self.causal, implementation=implementation,
                      dropout_rate=self.drop.rate if on_weights else 0.0,
                      dropout_key=keys[0] if train and on_weights else None, segments=segments)
        a = self.out(a.reshape(b, t, d))
        a = a if on_weights else drop(a, 0)
        if self.layout == "pre_ln":
            x = x + a
            return x + drop(self.ffn_out(self.activation(self.ffn_in(self.norm_ffn(x)))), 1)
        n = self.norm_ffn(normed + a)
        return n + drop(self.ffn_out(drop(self.activation(self.ffn_in(n)), 1)), 2)
