"""Training-step time and peak memory against catalogue size: sampled losses vs the chunked full softmax.

    python experiments/catalogue_size_bench.py [--steps 5] [--budget-s 100] [--configs full:100000 ...]

Each configuration `LOSS:V` (LOSS one of full, sampled, sampled_pop, in_batch, gbce) runs in a fresh
subprocess, so its peak resident memory (resource.getrusage ru_maxrss) is its own; the driver prints one
table. The step is the library's training computation on synthetic data: SASRec (dim 64, 2 blocks, 1 head,
shared item embeddings, dropout 0.2), batch 128 x T 50 (lengths uniform in [25, 50]), jitted
value_and_grad + optax.adam(1e-3) over all parameters, parameters and Adam state donated. Parameters and
Adam state are created inside jit. step_ms is the median of up to --steps steps after the compiling one
(fewer if --budget-s runs out); state_GB is parameters + Adam moments (3 x V x 64 x 4 bytes for the table);
init_GB is the peak RSS once the state exists, peak_GB the peak over the whole run. Runs on the default JAX
backend. sampled_pop draws negatives from a Zipf(1.1)-like popularity (alias table, built on the host).

Result on 2 shared CPU cores (load average 6-8 from other jobs), 24 GiB RAM, jax 0.12.0.1:

    $ python experiments/catalogue_size_bench.py --steps 3 --budget-s 45 --timeout-s 420
    loss                  V   step_ms steps 1st_step_s  init_s state_GB init_GB peak_GB   loss0    loss
    full            100,000     19595     3       28.8     6.3     0.08    0.42    0.93  11.524  11.345
    sampled         100,000       521     3       13.7     5.6     0.08    0.42    0.63   6.945   6.849
    sampled       1,000,000      1110     3       15.8    11.8     0.77    1.71    1.71   6.941   6.848
    full          1,000,000    136285     1      153.7     8.5     0.77    1.71    3.84  13.827  13.772
    sampled      10,000,000      3738     3       15.8    51.3     7.68   14.59   14.59   6.943   6.841

At 10M the step is the dense Adam update of the [V+1, 64] table (params, m, v and the dense gradient:
4 x 2.56 GB touched per step); init_GB = peak_GB there is the jitted initialisation's temporaries.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_CONFIGS = ["full:100000", "sampled:100000", "sampled:1000000", "full:1000000", "sampled:10000000"]
BATCH, MAX_LEN, DIM, NEGATIVES, GBCE_NEGATIVES = 128, 50, 64, 1024, 256


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_one(spec: str, steps: int, budget_s: float) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from seqjax.models.sasrec import SASRec, SASRecConfig
    from seqjax.train.losses import full_softmax_loss
    from seqjax.train.sampled_losses import (
        gbce_loss,
        in_batch_softmax_loss,
        popularity_from_counts,
        sampled_softmax_loss,
    )

    kind, v = spec.split(":")
    v = int(v)
    cfg = SASRecConfig(dim=DIM, blocks=2, heads=1)
    build = lambda: SASRec(v, MAX_LEN, cfg, rngs=nnx.Rngs(0))
    graphdef = nnx.graphdef(nnx.eval_shape(build))
    tx = optax.adam(1e-3)

    def create():
        params = nnx.to_pure_dict(nnx.state(build()))
        return params, tx.init(params)

    t0 = time.perf_counter()
    params, opt_state = jax.block_until_ready(jax.jit(create)())
    state_gb = sum(x.nbytes for x in jax.tree.leaves((params, opt_state))) / 1e9
    popularity = None
    if kind == "sampled_pop":
        counts = np.r_[0.0, 1.0 / np.arange(1, v + 1) ** 1.1]
        popularity = popularity_from_counts(counts)
    init_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    lengths = rng.integers(MAX_LEN // 2, MAX_LEN + 1, BATCH)
    valid = np.arange(MAX_LEN + 1)[None] < lengths[:, None] + 1
    seqs = np.where(valid, rng.integers(1, v + 1, (BATCH, MAX_LEN + 1)), 0)
    batch = {"items": jnp.asarray(seqs[:, :-1], jnp.int32), "lengths": jnp.asarray(lengths, jnp.int32),
             "targets": jnp.asarray(seqs[:, 1:], jnp.int32),
             "weights": jnp.asarray(seqs[:, 1:] > 0, jnp.float32)}

    def loss_fn(params, batch, key, popularity):
        dropout_key, loss_key = jax.random.split(key)
        model = nnx.merge(graphdef, params)
        hidden = model.encode(batch["items"], batch["lengths"], dropout_key)
        args = (hidden, model.item_table(), batch["targets"], batch["weights"])
        if kind == "full":
            return full_softmax_loss(*args)
        if kind in ("sampled", "sampled_pop"):
            return sampled_softmax_loss(*args, loss_key, NEGATIVES, popularity)
        if kind == "in_batch":
            return in_batch_softmax_loss(*args)
        return gbce_loss(*args, loss_key, GBCE_NEGATIVES)

    def step(params, opt_state, batch, key, popularity):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key, popularity)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    init_gb = _peak_gb()
    key = jax.random.key(1)
    t0 = time.perf_counter()
    params, opt_state, loss = jax.block_until_ready(
        step(params, opt_state, batch, jax.random.fold_in(key, 0), popularity))
    first_loss = float(loss)
    compile_s = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        params, opt_state, loss = jax.block_until_ready(
            step(params, opt_state, batch, jax.random.fold_in(key, i), popularity))
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return {"config": spec, "step_ms": 1e3 * statistics.median(times), "steps": len(times),
            "first_step_s": compile_s, "init_s": init_s, "state_gb": state_gb, "init_gb": init_gb,
            "peak_gb": _peak_gb(), "loss0": first_loss, "loss": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="LOSS:V, one subprocess each")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after the compiling one")
    ap.add_argument("--budget-s", type=float, default=100.0, help="stop timing a configuration after this")
    ap.add_argument("--timeout-s", type=float, default=600.0, help="kill a configuration's process after this")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.budget_s)))
        return

    import jax  # only for the header line; the children do the work

    rows = []
    for spec in args.configs:
        cmd = [sys.executable, __file__, "--one", spec, "--steps", str(args.steps), "--budget-s", str(args.budget_s)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.timeout_s)
            if proc.returncode == 0:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                why = "killed (out of memory?)" if proc.returncode in (-9, 137) else proc.stderr.strip()[-300:]
                rows.append({"config": spec, "error": f"rc={proc.returncode}: {why}"})
        except subprocess.TimeoutExpired:
            rows.append({"config": spec, "error": f"timed out after {args.timeout_s:.0f} s"})
        print(f"# {spec}: {time.perf_counter() - t0:.0f} s wall", file=sys.stderr, flush=True)

    print(f"\n$ python {' '.join(sys.argv)}")
    print(f"# SASRec d={DIM} 2 blocks, B={BATCH} T={MAX_LEN}, adam; sampled: {NEGATIVES} shared negatives, "
          f"gbce: {GBCE_NEGATIVES} per sequence; {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"jax {jax.__version__}")
    print(f"{'loss':<12} {'V':>10} {'step_ms':>9} {'steps':>5} {'1st_step_s':>10} {'init_s':>7} {'state_GB':>8}"
          f" {'init_GB':>7} {'peak_GB':>7} {'loss0':>7} {'loss':>7}")
    for r in rows:
        kind, v = r["config"].split(":")
        if "error" in r:
            print(f"{kind:<12} {int(v):>10,} {r['error']}")
            continue
        print(f"{kind:<12} {int(v):>10,} {r['step_ms']:>9.0f} {r['steps']:>5} {r['first_step_s']:>10.1f}"
              f" {r['init_s']:>7.1f} {r['state_gb']:>8.2f} {r['init_gb']:>7.2f} {r['peak_gb']:>7.2f}"
              f" {r['loss0']:>7.3f} {r['loss']:>7.3f}")


if __name__ == "__main__":
    main()
