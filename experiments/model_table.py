"""ML-1M model table: one protocol for every model kind. Prepares the data once, trains one process per
(kind, seed) from configs/<kind>_ml1m.yaml, evaluates test at the validation-chosen checkpoint, and
prints one table of means and standard errors over seeds with time and throughput.

    python experiments/model_table.py [--kinds sasrec gru4rec pop] [--seeds 0 1 2]
        [--data-file ../shared/data/ml1m/ml-1m_sasrec_format.txt] [--set train.epochs=50 ...] [--parallel 1]
        [--out runs/table_wide --data runs/table_kv/data]  (a variant table on data already prepared)
        [--config sasrec=configs/sasrec_ml1m_wide.yaml]  (another config for a kind)

--parallel N trains N (kind, seed) runs at once, each logging to RUN_DIR.log. On this 2-core machine that does
not pay: HSTU beside BERT4Rec went from 38.5 to about 100 s per epoch and BERT4Rec from 25 to 49 s, 0.9x the
throughput of one after the other (2026-12-06). Use 1 (the default) for timings.

Count-based kinds (pop, markov, itemknn) are deterministic: they run once whatever --seeds says.
A (kind, seed) whose test.json exists is not run again, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SEQJAX_DATA_DIR", ROOT.parent / "shared" / "data"))
DEFAULT_DATA = DATA_DIR / "ml1m" / "ml-1m_sasrec_format.txt"
COUNT_KINDS = ("pop", "markov", "itemknn")
ALL_KINDS = ("sasrec", "bert4rec", "hstu", "gru4rec", "lstm", "pop", "markov", "itemknn")


def run(cmd: list[str], log: Path | None = None) -> None:
    print("$", " ".join(cmd) + (f"  >> {log}" if log else ""), flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
        return
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)


def train_and_test(kind: str, seed: int, data: Path, out: Path, overrides: list[str], config: Path,
                   quiet: bool = False) -> dict:
    workdir = out / f"{kind}_seed{seed}"
    result_path = workdir / "test.json"
    log = out / f"{kind}_seed{seed}.log" if quiet else None
    seqjax = [sys.executable, "-m", "seqjax.cli"]
    if not result_path.exists():
        run(seqjax + ["train", "--config", str(config), "--workdir", str(workdir),
                      "--set", f"data.path={data}", "--set", f"train.seed={seed}",
                      *[arg for s in overrides for arg in ("--set", s)]], log)
        run(seqjax + ["evaluate", "--workdir", str(workdir), "--split", "test", "--json", str(result_path)], log)
    result = json.loads(result_path.read_text())
    return {"kind": kind, "seed": seed, **result["metrics"], "protocol": result["protocol"],
            "summary": json.loads((workdir / "summary.json").read_text())}


def mean_se(values: list[float]) -> str:
    v = np.asarray(values, float)
    if len(v) < 2:
        return f"{v.mean():.4f}"
    return f"{v.mean():.4f} +- {v.std(ddof=1) / np.sqrt(len(v)):.4f}"


def print_table(rows: list[dict], args, train_users: int) -> None:
    p = rows[0]["protocol"]
    keys = ("candidates", "filter_seen", "split")
    differ = sorted({r["kind"] for r in rows if any(r["protocol"].get(k) != p.get(k) for k in keys)})
    if differ:  # e.g. --set eval.filter_seen=... reaches the neural kinds only
        print(f"warning: {', '.join(differ)} evaluated under another protocol than {rows[0]['kind']} "
              f"({', '.join(keys)}): not comparable rows")
    print(f"\n# ML-1M model table: {Path(args.data_file).name}")
    print(f"protocol: leave-one-out, test split, {p['candidates']}, filter_seen={p['filter_seen']['applied']}, "
          "checkpoint = best validation NDCG@10 (count models: the one fit), mean +- standard error over seeds")
    print("train s / to best: training seconds summed over every epoch (resumed stretches included, validation "
          "excluded), in total and up to the chosen epoch (count models: the fit); a loaded machine's times when "
          "--parallel > 1")
    print("s/epoch: mean over seeds of each run's median training epoch (validation and the compiling first epoch "
          "excluded); seq/s: training users / s/epoch")
    print(f"{'kind':<9} {'seeds':>5} {'NDCG@10':>16} {'HR@10':>16} {'MRR':>16} {'best ep':>8} {'s/epoch':>8} "
          f"{'seq/s':>7} {'train s':>8} {'to best':>8}")
    for kind in dict.fromkeys(r["kind"] for r in rows):
        rs = [r for r in rows if r["kind"] == kind]
        s = [r["summary"] for r in rs]
        epoch_s = [x["seconds_per_epoch_steady"] for x in s if x.get("seconds_per_epoch_steady")]
        per_epoch = f"{np.mean(epoch_s):.1f}" if epoch_s else "-"
        seq_s = f"{train_users / np.mean(epoch_s):.0f}" if epoch_s else "-"
        best = "/".join(str(x["best_epoch"]) for x in s) if s[0]["best_epoch"] is not None else "-"
        print(f"{kind:<9} {len(rs):>5} {mean_se([r['NDCG@10'] for r in rs]):>16} "
              f"{mean_se([r['HR@10'] for r in rs]):>16} {mean_se([r['MRR'] for r in rs]):>16} {best:>8} "
              f"{per_epoch:>8} {seq_s:>7} {np.mean([x.get('train_seconds_total', x.get('fit_seconds')) for x in s]):>8.0f} "
              f"{np.mean([x.get('train_seconds_to_best', x.get('fit_seconds')) for x in s]):>8.0f}")
    print("command: python experiments/model_table.py " + " ".join(sys.argv[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", default=list(ALL_KINDS), choices=ALL_KINDS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-file", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=None, help="default: runs/table_<data file stem>")
    ap.add_argument("--data", default=None, help="an already prepared --data-file (default: OUT/data)")
    ap.add_argument("--set", action="append", default=[], help="config override for every neural run")
    ap.add_argument("--parallel", type=int, default=1, help="(kind, seed) runs trained at once")
    ap.add_argument("--config", action="append", default=[], metavar="KIND=PATH",
                    help="train KIND from PATH instead of configs/KIND_ml1m.yaml")
    args = ap.parse_args()
    configs = {kind: ROOT / "configs" / f"{kind}_ml1m.yaml" for kind in ALL_KINDS}
    for pair in args.config:
        kind, _, path = pair.partition("=")
        if kind not in ALL_KINDS or not path:
            ap.error(f"--config {pair}: expected KIND=PATH with KIND one of {', '.join(ALL_KINDS)}")
        configs[kind] = Path(path).resolve()
    out = Path(args.out or ROOT / "runs" / f"table_{Path(args.data_file).stem}")
    data = Path(args.data) if args.data else out / "data"
    out.mkdir(parents=True, exist_ok=True)  # run logs go here even when --data was prepared elsewhere
    if not (data / "metadata.json").exists():
        run([sys.executable, "-m", "seqjax.cli", "prepare", "--format", "sasrec", "--input", args.data_file,
             "--out", str(data)])
    train_users = json.loads((data / "metadata.json").read_text())["num_users"]
    jobs = [(kind, seed) for kind in args.kinds for seed in (args.seeds[:1] if kind in COUNT_KINDS else args.seeds)]
    job = lambda ks: train_and_test(*ks, data, out, [] if ks[0] in COUNT_KINDS else args.set, configs[ks[0]],
                                    args.parallel > 1)
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        rows = list(pool.map(job, jobs))
    print_table(rows, args, train_users)


if __name__ == "__main__":
    main()
