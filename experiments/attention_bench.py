"""Causal attention forward + backward on CPU: blockwise (flash-style) vs dense reference vs XLA's
jax.nn.dot_product_attention. Batch 8, 4 heads, head dim 64, float32, every row full length.

    python experiments/attention_bench.py [--lengths 200 1024 4096 8192] [--runs 3]

Each (T, implementation) runs in its own subprocess so that its peak RSS is its own. Figures:
  time      median wall time of --runs calls of jit(grad(sum(attention(q, k, v) * ct))) after compile
            and one warm-up call (2 calls when the warm-up took > 15 s); cpu-s is the process CPU time
            of the same calls (all threads).
  GFLOP/s   useful causal FLOPs / time: forward 2 * 2 * B*N*T*T*H / 2 (QK^T and PV over the lower
            triangle), backward 2.5x forward (five matmuls instead of two), 3.5x forward in all.
            Masked or recomputed work is not counted. "per cpu-s" divides by CPU time instead, which
            stays meaningful when other jobs share the cores.
  XLA peak  compiled.memory_analysis(): arguments + outputs + temporaries of XLA's buffer assignment,
            known before running; inputs q, k, v, ct and outputs dq, dk, dv are 7 * B*T*N*H*4 bytes of
            it (T=8192: 448 MiB), "temp" is the rest: the attention's own working memory.
  RSS       ru_maxrss high-water mark at the end minus after the CPU backend started: inputs,
            compilation and execution of this configuration (its own subprocess).
Dense paths whose XLA peak exceeds --dense-limit-gib are compiled (for the estimate) but not run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

B, N, H = 8, 4, 64
# Block sizes for the blockwise path by sequence length (upper bounds; tuned on this 2-core CPU,
# see the module docstring of seqjax/models/blockwise_attention.py).
BLOCKS = {200: (128, 128), 1024: (256, 256), 4096: (256, 256), 8192: (256, 256)}
DEFAULT_BLOCKS = (128, 128)


def useful_flops(t: int) -> float:
    forward = 2 * 2 * B * N * t * t * H / 2
    return 3.5 * forward


def worker(t: int, impl: str, block_q: int, block_k: int, runs: int, dense_limit: float) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from seqjax.models.attention import reference_attention
    from seqjax.models.blockwise_attention import blockwise_attention

    jax.block_until_ready(jnp.zeros(()) + 1)  # backend up: the RSS baseline holds the runtime itself
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, ct = (jax.random.normal(x, (B, t, N, H), jnp.float32) for x in keys)
    lengths = jnp.full((B,), t, jnp.int32)
    attn = {
        "blockwise": lambda q, k, v: blockwise_attention(q, k, v, lengths, causal=True,
                                                         block_q=block_q, block_k=block_k),
        "reference": lambda q, k, v: reference_attention(q, k, v, lengths, True),
        "xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"),
    }[impl]
    step = jax.jit(jax.grad(lambda q, k, v, ct: jnp.sum(attn(q, k, v) * ct), argnums=(0, 1, 2)))
    t0 = time.perf_counter()
    compiled = step.lower(q, k, v, ct).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    row = {"t": t, "impl": impl, "blocks": f"{block_q}/{block_k}" if impl == "blockwise" else "-",
           "xla_peak": peak, "temp": mem.temp_size_in_bytes, "compile_s": compile_s}
    if impl != "blockwise" and peak > dense_limit:
        row["skipped"] = f"needs {peak / 2**30:.1f} GiB > {dense_limit / 2**30:.0f} GiB"
        return row
    w = time.perf_counter()
    jax.block_until_ready(compiled(q, k, v, ct))  # warm-up
    if time.perf_counter() - w > 15:
        runs = min(runs, 2)  # keeps the whole benchmark under 10 minutes
    walls, cpus = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(q, k, v, ct))
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    row.update(time=float(np.median(walls)), cpu=float(np.median(cpus)), runs=runs,
               rss=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_base) * 1024)
    return row


def matmul_roof() -> float:
    """GFLOP/s of one 2048^3 float32 matmul (median of 5), the practical ceiling on this CPU now."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * 2048**3 / float(np.median(times)) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[200, 1024, 4096, 8192])
    ap.add_argument("--impls", nargs="+", default=["blockwise", "reference", "xla"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--blocks", nargs="+", default=None,
                    help="blockwise block sizes as Q/K (several to compare); default: the tuned table")
    ap.add_argument("--dense-limit-gib", type=float, default=16.0)
    ap.add_argument("--worker", nargs=5, metavar=("T", "IMPL", "BQ", "BK", "RUNS"), help=argparse.SUPPRESS)
    ap.add_argument("--roof", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    limit = args.dense_limit_gib * 2**30
    if args.worker:
        t, impl, bq, bk, runs = args.worker
        print(json.dumps(worker(int(t), impl, int(bq), int(bk), int(runs), limit)))
        return
    if args.roof:
        print(matmul_roof())
        return

    print("$ python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]), flush=True)
    print(f"B={B} N={N} H={H} float32, causal, full-length rows; {os.cpu_count()} CPUs; "
          f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    start = time.perf_counter()
    rows = []
    for t in args.lengths:
        for impl in args.impls:
            configs = [None]
            if impl == "blockwise":
                configs = ([tuple(map(int, b.split("/"))) for b in args.blocks] if args.blocks
                           else [BLOCKS.get(t, DEFAULT_BLOCKS)])
            for cfg in configs:
                bq, bk = cfg or (0, 0)
                cmd = [sys.executable, __file__, "--worker", str(t), impl, str(bq), str(bk), str(args.runs),
                       "--dense-limit-gib", str(args.dense_limit_gib)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    rows.append({"t": t, "impl": impl, "blocks": "-", "skipped": f"failed: {out.stderr[-300:]}"})
                else:
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print("  done", rows[-1]["t"], rows[-1]["impl"], rows[-1].get("time", rows[-1].get("skipped")),
                      flush=True)
    roof = subprocess.run([sys.executable, __file__, "--roof"], capture_output=True, text=True).stdout.split()
    print()
    header = (f"{'T':>5} {'impl':<10} {'blocks':>7} {'time s':>8} {'cpu-s':>7} {'GFLOP/s':>8} {'/cpu-s':>7} "
              f"{'XLA peak':>9} {'temp':>9} {'RSS':>9}  note")
    print(header)
    print("-" * len(header))
    for r in rows:
        gib = lambda x: f"{x / 2**20:7.0f}Mi" if x < 2**30 else f"{x / 2**30:7.2f}Gi"
        if "time" in r:
            fl = useful_flops(r["t"])
            print(f"{r['t']:>5} {r['impl']:<10} {r['blocks']:>7} {r['time']:>8.3f} {r['cpu']:>7.2f} "
                  f"{fl / r['time'] / 1e9:>8.1f} {fl / r['cpu'] / 1e9:>7.1f} {gib(r['xla_peak']):>9} "
                  f"{gib(r['temp']):>9} {gib(r['rss']):>9}  runs={r['runs']}")
        else:
            peak = gib(r["xla_peak"]) if "xla_peak" in r else "-"
            print(f"{r['t']:>5} {r['impl']:<10} {r['blocks']:>7} {'-':>8} {'-':>7} {'-':>8} {'-':>7} {peak:>9} "
                  f"{'-':>9} {'-':>9}  skipped: {r['skipped']}")
    print(f"\nmatmul now (2048^3 float32, jit): {float(roof[-1]) if roof else float('nan'):.0f} GFLOP/s "
          f"(nominal 2 cores x 2.45 GHz x 32 FLOP/cycle = 157); load average after: "
          f"{os.getloadavg()[0]:.1f}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
