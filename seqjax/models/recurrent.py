"""Recurrent sequence encoders: GRU4Rec (Hidasi et al., 2016) and an LSTM variant, in flax.nnx.

item embedding -> dropout -> L stacked GRU/LSTM layers, each one `jax.lax.scan` over time, with dropout
between layers -> a Linear D -> D (the recurrent state is tanh-bounded; the projection lets the logit
scale be learned, as RecBole's GRU4Rec does) -> hidden states [B, T, D]. No final LayerNorm (GRU4Rec has
none). Items are scored against the (shared or separate) output item embeddings, like SASRec.

The cells are written out (not flax's RNN wrappers) so the input projection x @ W_x + b can be computed
either inside the scan step ("inside") or for all steps at once before the scan ("hoisted": one
[B*T, D] x [D, G*D] matmul). Steps at t >= length keep the carry, so right padding never reaches the
state; the output at a padded step repeats the last valid state. The slow reference (a Python loop over
time, every gate written out) lives in tests/test_recurrent.py; experiments/rnn_bench.py measures the two
placements and `unroll` (inside, unroll=1 was fastest forward+backward on XLA:CPU; on an accelerator the
hoisted matmul may win: rerun the bench there).
Shapes: B batch, T time, D width, G gates (GRU 3, LSTM 4), V items (+1 for padding id 0).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.models.next_item import NextItemModel, lookup

Projection = Literal["inside", "hoisted"]


@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
    section: ClassVar[str] = "recurrent"  # config path of the subclass, for error messages
    dim: int = 64  # embedding and hidden width D
    layers: int = 1  # stacked recurrent layers
    dropout: float = 0.2  # on the item embeddings and between layers
    shared_embeddings: bool = True  # score items with the input embedding table
    input_projection: Projection = "inside"  # x @ W_x inside the scan step, or hoisted before it as one
    # matmul; experiments/rnn_bench.py, XLA:CPU, B=128 T=200 D=64 fwd+bwd: hoisted 1.2-1.25x slower
    unroll: int = 1  # lax.scan unroll factor; same bench: 2 was no faster (GRU 1.01x, LSTM 1.06x), 4 slower,
    # and compile time grows with it

    def validate(self) -> None:
        p = f"model.{self.section}"
        if self.dim < 1:
            raise ValueError(f"{p}.dim={self.dim} must be >= 1")
        if self.layers < 1:
            raise ValueError(f"{p}.layers={self.layers} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{p}.dropout={self.dropout} must be in [0, 1)")
        if self.input_projection not in ("inside", "hoisted"):
            raise ValueError(f"{p}.input_projection={self.input_projection!r} must be 'inside' or 'hoisted'")
        if self.unroll < 1:
            raise ValueError(f"{p}.unroll={self.unroll} must be >= 1")


@dataclasses.dataclass(frozen=True)
class GRU4RecConfig(RecurrentConfig):
    section: ClassVar[str] = "gru4rec"


@dataclasses.dataclass(frozen=True)
class LSTMConfig(RecurrentConfig):
    section: ClassVar[str] = "lstm"


def gru_step(x_proj: jax.Array, h: jax.Array, w_h: jax.Array, b_h: jax.Array) -> jax.Array:
    """One GRU step (PyTorch/cuDNN form: the reset gate multiplies W_hn h + b_hn).

    x_proj [B, 3D] = x @ W_x + b_x (gate order r, z, n), h [B, D], w_h [D, 3D], b_h [3D] -> h' [B, D].
    """
    xr, xz, xn = jnp.split(x_proj, 3, axis=-1)
    hr, hz, hn = jnp.split(h @ w_h + b_h, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def lstm_step(x_proj: jax.Array, carry: tuple[jax.Array, jax.Array], w_h: jax.Array,
              ) -> tuple[jax.Array, jax.Array]:
    """One LSTM step. x_proj [B, 4D] = x @ W_x + b (gate order i, f, g, o), carry (h, c) [B, D] -> (h', c')."""
    h, c = carry
    i, f, g, o = jnp.split(x_proj + h @ w_h, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


class RecurrentLayer(nnx.Module):
    """One GRU or LSTM layer over a right-padded batch: x [B, T, D_in], lengths [B] -> states [B, T, D]."""

    def __init__(self, cell: Literal["gru", "lstm"], d_in: int, dim: int, *, rngs: nnx.Rngs):
        self.cell = cell
        g = 3 if cell == "gru" else 4
        if cell == "lstm":  # forget-gate bias 1 (Jozefowicz et al., 2015): remember by default at init
            bias_init = lambda key, shape, dtype: jnp.zeros(shape, dtype).at[dim:2 * dim].set(1.0)
        else:
            bias_init = nnx.initializers.zeros_init()
        self.w_x = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (d_in, g * dim)))  # [D_in, G*D]
        self.b_x = nnx.Param(bias_init(rngs.params(), (g * dim,), jnp.float32))  # [G*D]
        self.w_h = nnx.Param(nnx.initializers.orthogonal()(rngs.params(), (dim, g * dim)))  # [D, G*D]
        # GRU keeps a separate hidden bias (it sits inside the reset gate); for the LSTM it would only
        # duplicate b_x.
        self.b_h = nnx.Param(jnp.zeros((g * dim,), jnp.float32)) if cell == "gru" else None
        self.dim = dim

    def __call__(self, x: jax.Array, lengths: jax.Array, projection: Projection = "inside",
                 unroll: int = 1) -> jax.Array:
        b, t, _ = x.shape
        w_x, b_x, w_h = self.w_x[...], self.b_x[...], self.w_h[...]
        b_h = None if self.b_h is None else self.b_h[...]
        xs = jnp.swapaxes(x, 0, 1)  # [T, B, D_in]: scan runs over the leading axis
        if projection == "hoisted":
            xs = xs @ w_x + b_x  # [T, B, G*D] in one matmul
        valid = jnp.arange(t)[:, None] < lengths[None, :]  # [T, B]
        h0 = jnp.zeros((b, self.dim), xs.dtype)
        carry0 = h0 if self.cell == "gru" else (h0, h0)

        def step(carry, inputs):
            x_t, valid_t = inputs  # [B, D_in] or [B, G*D]; [B]
            x_proj = x_t if projection == "hoisted" else x_t @ w_x + b_x
            new = gru_step(x_proj, carry, w_h, b_h) if self.cell == "gru" else lstm_step(x_proj, carry, w_h)
            # Padding steps keep the carry: the state after the last valid item survives to the end.
            new = jax.tree.map(lambda n, o: jnp.where(valid_t[:, None], n, o), new, carry)
            return new, (new if self.cell == "gru" else new[0])

        _, hs = jax.lax.scan(step, carry0, (xs, valid), unroll=unroll)
        return jnp.swapaxes(hs, 0, 1)  # [B, T, D]


class _RecurrentRec(NextItemModel):
    cell: ClassVar[Literal["gru", "lstm"]]

    def __init__(self, num_items: int, max_len: int, cfg: RecurrentConfig, *, rngs: nnx.Rngs,
                 attention_impl: str | None = None):
        del max_len, attention_impl  # no positions and no attention: same constructor as SASRec
        self.num_items = num_items
        self.projection = cfg.input_projection
        self.unroll = cfg.unroll
        init = nnx.initializers.normal(0.02)
        self.item_embed = nnx.Embed(num_items + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.output_embed = None if cfg.shared_embeddings else nnx.Embed(
            num_items + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.layers = nnx.List([RecurrentLayer(self.cell, cfg.dim, cfg.dim, rngs=rngs) for _ in range(cfg.layers)])
        self.out = nnx.Linear(cfg.dim, cfg.dim, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)

    def encode(self, items: jax.Array, lengths: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """items [B, T] right-padded with 0, lengths [B] -> hidden states [B, T, D].

        `key` enables dropout (training); None means deterministic inference. The state at t depends
        only on items[:, :t+1]; at t >= length it repeats the state at length-1.
        """
        keys = None if key is None else jax.random.split(key, len(self.layers))
        x = lookup(self.item_embed, items)  # [B, T, D]
        for i, layer in enumerate(self.layers):  # dropout on the embeddings, then between layers
            x = self.drop(x, deterministic=keys is None, rngs=None if keys is None else keys[i])
            x = layer(x, lengths, self.projection, self.unroll)
        return self.out(x)


class GRU4Rec(_RecurrentRec):
    """GRU4Rec: `GRU4Rec(num_items, max_len, GRU4RecConfig(), rngs=...)`, the SASRec interface."""
    cell = "gru"


class LSTMRec(_RecurrentRec):
    """The LSTM counterpart of GRU4Rec: `LSTMRec(num_items, max_len, LSTMConfig(), rngs=...)`."""
    cell = "lstm"
