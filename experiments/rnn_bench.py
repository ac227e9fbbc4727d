"""GRU4Rec / LSTM encoder speed: input projection inside the scan step vs hoisted before it, scan `unroll`,
and step time against sequence length (it should be linear in T).

    python experiments/rnn_bench.py [--batch 128] [--dim 64] [--rounds 12]

Each row is one jitted forward+backward (value_and_grad over all parameters) of `encode` in training mode
(dropout on) followed by a next-item-like loss: -log sigmoid(h_t . e_{target_t}) over valid positions;
layers=1, lengths uniform in [T/2, T]. The rows are timed in --rounds interleaved passes of one call each
(the machine may be shared with other jobs): best_ms is the fastest call's wall time, median_ms shows the
noise, cpu_ms is the least process CPU time (all threads) of a call, which other jobs disturb less; the
ratios compare with inside/unroll=1 on both. compile_s is lower+compile wall time. Runs on the default
JAX backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqjax.models.recurrent import GRU4Rec, GRU4RecConfig, LSTMConfig, LSTMRec

MODELS = {"gru": (GRU4Rec, GRU4RecConfig), "lstm": (LSTMRec, LSTMConfig)}
NUM_ITEMS = 3_000


@dataclasses.dataclass
class Row:
    section: str
    cell: str
    projection: str
    unroll: int
    t: int
    compile_s: float = 0.0
    times_ms: list = dataclasses.field(default_factory=list)
    cpu_ms: list = dataclasses.field(default_factory=list)
    run: object = None  # () -> None: one timed step

    @property
    def best_ms(self) -> float:
        return min(self.times_ms)


def build(row: Row, batch: int, dim: int) -> None:
    cls, cfg_cls = MODELS[row.cell]
    cfg = cfg_cls(dim=dim, input_projection=row.projection, unroll=row.unroll)
    graphdef, params = nnx.split(cls(NUM_ITEMS, row.t, cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    lengths = jnp.asarray(rng.integers(row.t // 2, row.t + 1, batch), jnp.int32)
    valid = jnp.arange(row.t)[None] < lengths[:, None]
    items = jnp.where(valid, jnp.asarray(rng.integers(1, NUM_ITEMS + 1, (batch, row.t)), jnp.int32), 0)
    targets = jnp.where(valid, jnp.roll(items, -1, axis=1), 0)

    def loss_fn(params, key):
        model = nnx.merge(graphdef, params)
        h = model.encode(items, lengths, key)  # [B, T, D]
        pos = jnp.einsum("btd,btd->bt", h, jnp.take(model.item_table(), targets, axis=0))
        return -jnp.sum(jax.nn.log_sigmoid(pos) * valid) / jnp.sum(valid)

    step = jax.jit(jax.value_and_grad(loss_fn))
    key = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = step.lower(params, key).compile()
    row.compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, key))  # warm-up
    row.run = lambda: jax.block_until_ready(compiled(params, key))


def time_row(row: Row) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    row.run()
    row.times_ms.append(1e3 * (time.perf_counter() - t0))
    row.cpu_ms.append(1e3 * (time.process_time() - c0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--t", type=int, default=200, help="sequence length of the placement/unroll rows")
    ap.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    ap.add_argument("--unrolls", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--cells", nargs="+", default=["gru", "lstm"], choices=sorted(MODELS))
    ap.add_argument("--rounds", type=int, default=12, help="timed calls per row, interleaved across rows")
    args = ap.parse_args()

    rows = [Row("placement", c, p, u, args.t) for c in args.cells for p in ("inside", "hoisted")
            for u in args.unrolls]
    default = GRU4RecConfig()
    rows += [Row("length", c, default.input_projection, default.unroll, t) for c in args.cells
             for t in args.lengths if t != args.t or default.unroll not in args.unrolls]  # else: a placement row
    t_start = time.perf_counter()
    for row in rows:
        build(row, args.batch, args.dim)
    for _ in range(args.rounds):
        for row in rows:
            time_row(row)

    print(f"\n$ python {' '.join(sys.argv)}")
    print(f"# forward+backward, B={args.batch} D={args.dim} layers=1 dropout=0.2, {jax.devices()[0].device_kind}"
          f" ({jax.default_backend()}, {jax.device_count()} device), jax {jax.__version__}; {args.rounds} calls per row")
    print(f"{'cell':<5} {'projection':<10} {'unroll':>6} {'T':>5} {'compile_s':>9} {'best_ms':>8} {'median_ms':>9}"
          f" {'cpu_ms':>8} {'cpu/T_us':>8} {'vs inside,u=1 (wall, cpu)':>26}")
    base = {r.cell: r for r in rows if r.section == "placement" and r.projection == "inside" and r.unroll == 1}
    line = lambda r, rel="": print(
        f"{r.cell:<5} {r.projection:<10} {r.unroll:>6} {r.t:>5} {r.compile_s:>9.2f} {r.best_ms:>8.1f}"
        f" {statistics.median(r.times_ms):>9.1f} {min(r.cpu_ms):>8.1f} {1e3 * min(r.cpu_ms) / r.t:>8.0f} {rel:>26}")
    for r in rows:
        if r.section == "placement":
            b = base.get(r.cell)
            line(r, f"{r.best_ms / b.best_ms:.2f}x, {min(r.cpu_ms) / min(b.cpu_ms):.2f}x" if b else "")
    print(f"# length sweep of the default (projection={default.input_projection}, unroll={default.unroll}):"
          " cpu/T_us flat = linear in T")
    sweep = [r for r in rows if r.projection == default.input_projection and r.unroll == default.unroll
             and r.t in args.lengths]
    for r in sorted(sweep, key=lambda r: (args.cells.index(r.cell), r.t)):
        line(r)
    print(f"# total wall {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
