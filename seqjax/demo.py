"""`seqjax demo`: the README's first command, end to end on a generated shop log, CPU only."""

from __future__ import annotations

import argparse
from pathlib import Path

from seqjax import config as config_lib
from seqjax.data.prepare import add_prepare_arguments, run_prepare
from seqjax.data.synthetic import generate_log
from seqjax.evaluation.evaluate import evaluate
from seqjax.train.config import ExperimentConfig
from seqjax.train.loop import train

TINY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "sasrec_tiny.yaml"


def run_demo(out: str | Path, users: int = 2000) -> int:
    out = Path(out)
    log = out / "shop_log.csv"
    data_dir, workdir = out / "data", out / "run"
    print(f"[1/4] generating a synthetic e-commerce log with {users} users -> {log}")
    out.mkdir(parents=True, exist_ok=True)
    print(generate_log(log, num_users=users, seed=0))
    print(f"[2/4] seqjax prepare --format generic --input {log} --out {data_dir} --set max_timestamp=2100-01-01")
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    code = run_prepare(parser.parse_args(["--format", "generic", "--input", str(log), "--out", str(data_dir),
                                          "--set", "max_timestamp=2100-01-01"]))
    if code:
        return code
    print(f"[3/4] seqjax train --config {TINY_CONFIG} --workdir {workdir} --set data.path={data_dir}")
    cfg = config_lib.load(ExperimentConfig, TINY_CONFIG, [f"data.path={data_dir}"])
    train(cfg, workdir)
    print(f"[4/4] seqjax evaluate --workdir {workdir} --split test")
    evaluate(workdir, "test", "best")
    print(f"\ncheckpoints: {workdir / 'checkpoints'}\n"
          f"curves:      tensorboard --logdir {workdir / 'tensorboard'}  (then open http://localhost:6006)\n"
          f"resume:      re-run the train command above; it continues from the newest intact checkpoint")
    return 0
