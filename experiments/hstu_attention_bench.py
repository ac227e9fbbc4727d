"""HSTU attention forward + backward on CPU: blockwise (custom VJP, biases computed per tile) vs the dense
reference. Batch 8, 4 heads, head dim 64, float32, every row full length, per-head bias tables of 64
buckets, with timestamps (the time bias on) unless --no-time.

    python experiments/hstu_attention_bench.py [--lengths 200 1024 4096] [--runs 3] [--no-time]

Each (T, implementation) runs in its own subprocess so that its peak RSS is its own. Figures:
  time      median wall time of --runs calls of jit(grad(sum(hstu_attention(...) * ct))) with respect to
            q, k, v and both tables, after compile and one warm-up call (1 timed call when the warm-up
            took > 15 s); cpu-s is the process CPU time of the same calls (all threads), which stays
            meaningful when other jobs share the cores.
  GFLOP/s   useful causal matmul FLOPs / time: forward 2 * 2 * B*N*T*T*H / 2 (QK^T and AV over the lower
            triangle), backward 2.5x forward (five matmuls), 3.5x forward in all; the SiLU, the bias
            gathers and the table scatter-adds are not counted.
  XLA peak  compiled.memory_analysis(): arguments + outputs + temporaries of XLA's buffer assignment, known
            before running; "temp" is the temporaries alone (the attention's working memory).
  RSS       ru_maxrss high-water mark at the end minus after the CPU backend started.
Dense runs whose XLA peak exceeds --dense-limit-gib are compiled (for the estimate) but not run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

B, N, H, BUCKETS = 8, 4, 64, 64
BLOCKS = (256, 256)  # blockwise tile upper bounds (evened out over T: T = 200 runs as one 200 x 200 tile)


def useful_flops(t: int) -> float:
    return 3.5 * 2 * 2 * B * N * t * t * H / 2


def worker(t: int, impl: str, runs: int, with_time: bool, dense_limit: float) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from seqjax.models.hstu_attention import hstu_attention

    jax.block_until_ready(jnp.zeros(()) + 1)  # backend up: the RSS baseline holds the runtime itself
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = np.random.default_rng(0)
    q, k, v, ct = (jnp.asarray(rng.standard_normal((B, t, N, H), np.float32)) for _ in range(4))
    pos, tim = (jnp.asarray(rng.standard_normal((N, BUCKETS), np.float32)) for _ in range(2))
    gaps = np.exp(rng.uniform(0, 14, (B, t))).astype(np.int64)  # seconds to weeks between events
    ts = jnp.asarray(np.cumsum(gaps, axis=1), jnp.int32) if with_time else None
    lengths = jnp.full((B,), t, jnp.int32)

    def loss(q, k, v, pos, tim, ct):
        out = hstu_attention(q, k, v, lengths, pos, tim, ts, implementation=impl, block_q=BLOCKS[0], block_k=BLOCKS[1])
        return jnp.sum(out * ct)

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
    t0 = time.perf_counter()
    compiled = step.lower(q, k, v, pos, tim, ct).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    row = {"t": t, "impl": impl, "xla_peak": peak, "temp": mem.temp_size_in_bytes, "compile_s": compile_s}
    if impl == "reference" and peak > dense_limit:
        row["skipped"] = f"needs {peak / 2**30:.1f} GiB > {dense_limit / 2**30:.0f} GiB"
        return row
    w = time.perf_counter()
    jax.block_until_ready(compiled(q, k, v, pos, tim, ct))  # warm-up
    if time.perf_counter() - w > 15:
        runs = 1  # keeps the whole benchmark short
    walls, cpus = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(q, k, v, pos, tim, ct))
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    row.update(time=float(np.median(walls)), cpu=float(np.median(cpus)), runs=runs,
               rss=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_base) * 1024)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[200, 1024, 4096])
    ap.add_argument("--impls", nargs="+", default=["blockwise", "reference"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-time", action="store_true", help="no timestamps: position bias only")
    ap.add_argument("--dense-limit-gib", type=float, default=8.0)
    ap.add_argument("--worker", nargs=2, metavar=("T", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    limit = args.dense_limit_gib * 2**30
    if args.worker:
        t, impl = args.worker
        print(json.dumps(worker(int(t), impl, args.runs, not args.no_time, limit)))
        return

    print("$ python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]), flush=True)
    print(f"B={B} N={N} H={H} float32, causal, full-length rows, timestamps {'off' if args.no_time else 'on'}, "
          f"blocks <= {BLOCKS[0]}/{BLOCKS[1]}; {os.cpu_count()} CPUs; load average before: "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    start = time.perf_counter()
    rows = []
    for t in args.lengths:
        for impl in args.impls:
            cmd = [sys.executable, __file__, "--worker", str(t), impl, "--runs", str(args.runs),
                   "--dense-limit-gib", str(args.dense_limit_gib)] + (["--no-time"] if args.no_time else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                rows.append({"t": t, "impl": impl, "skipped": f"failed: {out.stderr[-300:]}"})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print("  done", t, impl, rows[-1].get("time", rows[-1].get("skipped")), flush=True)
    print()
    header = (f"{'T':>5} {'impl':<10} {'time s':>8} {'cpu-s':>7} {'GFLOP/s':>8} {'/cpu-s':>7} "
              f"{'XLA peak':>9} {'temp':>9} {'RSS':>9}  note")
    print(header)
    print("-" * len(header))
    gib = lambda x: f"{x / 2**20:7.0f}Mi" if x < 2**30 else f"{x / 2**30:7.2f}Gi"
    for r in rows:
        if "time" in r:
            fl = useful_flops(r["t"])
            print(f"{r['t']:>5} {r['impl']:<10} {r['time']:>8.3f} {r['cpu']:>7.2f} {fl / r['time'] / 1e9:>8.1f} "
                  f"{fl / r['cpu'] / 1e9:>7.1f} {gib(r['xla_peak']):>9} {gib(r['temp']):>9} {gib(r['rss']):>9}"
                  f"  runs={r['runs']}")
        else:
            peak = gib(r["xla_peak"]) if "xla_peak" in r else "-"
            print(f"{r['t']:>5} {r['impl']:<10} {'-':>8} {'-':>7} {'-':>8} {'-':>7} {peak:>9} {'-':>9} {'-':>9}"
                  f"  skipped: {r['skipped']}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
