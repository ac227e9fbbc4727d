"""The `seqjax` command: thin wrappers that parse arguments and call library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from seqjax import config as config_lib


def _trainer(cfg):
    """The library function that trains cfg: a fitting pass for classical/BG-NBD kinds, else the epoch loop."""
    from seqjax.train.config import BINARY_ONLY_KINDS, BINARY_TASKS
    if cfg.model.kind in BINARY_ONLY_KINDS:
        from seqjax.train.classical_tasks import train
        return train
    if cfg.task in BINARY_TASKS:
        raise config_lib.ConfigError(f"model.kind={cfg.model.kind} with task={cfg.task}: sequence models for "
                                     "purchase/churn are configured under `sequence_task:` (e.g. "
                                     "configs/purchase_lstm_taobao.yaml), not `model:`")
    from seqjax.train.loop import train
    return train


def _is_sequence_task_config(path: str) -> bool:
    """Sequence-model purchase/churn configs have one top-level section, `sequence_task`."""
    return "sequence_task" in config_lib.read_yaml(path)


def _train_sequence_task(args: argparse.Namespace) -> int:
    from seqjax.train.binary_loop import train_sequence_task
    from seqjax.train.task_config import SequenceTaskRun
    cfg = config_lib.load(SequenceTaskRun, args.config, args.set).sequence_task
    summary = train_sequence_task(cfg, args.workdir, allow_config_change=args.allow_config_change)
    print(f"training ended: {summary['stopped']}; best epoch {summary['best_epoch']}; "
          f"checkpoints: {Path(args.workdir) / 'checkpoints'}; curves: tensorboard --logdir "
          f"{Path(args.workdir) / 'tensorboard'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from seqjax.train.config import ExperimentConfig
    if _is_sequence_task_config(args.config):
        return _train_sequence_task(args)
    cfg = config_lib.load(ExperimentConfig, args.config, args.set)
    summary = _trainer(cfg)(cfg, args.workdir, allow_config_change=args.allow_config_change)
    best = summary["best_valid"][cfg.train.metric]
    best_text = "no validation split" if best is None else f"{cfg.train.metric}={best:.4f}"
    if summary["best_epoch"] is None:
        print(f"{summary['stopped']}; valid {best_text}; artefact in {args.workdir}")
        return 0
    print(f"training ended: {summary['stopped']}; best epoch {summary['best_epoch']} ({best_text}); "
          f"steady {summary['seconds_per_epoch_steady']:.1f} s/epoch")
    print(f"checkpoints: {Path(args.workdir) / 'checkpoints'}; curves: tensorboard --logdir {Path(args.workdir) / 'tensorboard'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from seqjax.train.task_config import CONFIG_FILE
    if (Path(args.workdir) / CONFIG_FILE).exists():  # a sequence-model purchase/churn run
        from seqjax.evaluation.sequence_task_eval import evaluate_sequence_task
        evaluate_sequence_task(args.workdir, args.split, args.checkpoint, args.json, args.task)
        return 0
    from seqjax.evaluation.evaluate import evaluate
    evaluate(args.workdir, args.split, args.checkpoint, args.json, args.task)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from seqjax.evaluation.compare import compare, print_comparison
    metrics = tuple(args.metrics)
    try:
        result = compare(args.a, args.b, metrics, args.resamples, args.seed)
    except ValueError as e:  # evaluations that cannot be paired (other users, protocol or metric): a refusal
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"command: seqjax compare {args.a} {args.b} --metrics {' '.join(metrics)} --resamples {args.resamples} "
          f"--seed {args.seed}")
    print_comparison(result, args.a, args.b, metrics)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from seqjax.data.prepare import run_prepare
    return run_prepare(args)


def _download(args: argparse.Namespace) -> int:
    from seqjax.data.download import run_download
    return run_download(args)


def _demo(args: argparse.Namespace) -> int:
    from seqjax.demo import run_demo
    return run_demo(args.out, args.users)


def build_parser() -> argparse.ArgumentParser:
    from seqjax.data.download import add_download_arguments
    from seqjax.data.prepare import add_prepare_arguments
    parser = argparse.ArgumentParser(prog="seqjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="raw interaction log -> cleaned, split ArrayRecord shards")
    add_prepare_arguments(p)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("download", help="fetch a public dataset, or print where to get one that needs a login")
    add_download_arguments(p)
    p.set_defaults(func=_download)

    p = sub.add_parser("train", help="train a model from a config; re-running resumes")
    p.add_argument("--config", required=True, help="YAML experiment config, e.g. configs/sasrec_tiny.yaml")
    p.add_argument("--workdir", required=True, help="run directory: checkpoints, TensorBoard logs, config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--allow-config-change", action="store_true", help="resume even if the config changed")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="full-catalogue ranking metrics, or purchase/churn binary metrics with "
                                        "bootstrap intervals, with a protocol card")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", choices=("valid", "test"), default="valid")
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP (checkpointed models)")
    p.add_argument("--task", choices=("next_item", "purchase", "churn"), default=None,
                   help="the task to evaluate; default: the run's (a single-task run refuses another)")
    p.add_argument("--json", default=None, help="also write metrics and protocol card here")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("compare", help="B - A of two next-item evaluations of the same users, with paired "
                                       "bootstrap intervals (`seqjax evaluate --json` outputs)")
    p.add_argument("a", help="evaluation JSON of the baseline")
    p.add_argument("b", help="evaluation JSON of the model compared with it")
    p.add_argument("--metrics", nargs="+", default=["NDCG@10", "HR@10", "MRR"])
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap's resampling")
    p.add_argument("--json", default=None, help="also write the comparison here")
    p.set_defaults(func=_compare)

    p = sub.add_parser("demo", help="generate a synthetic shop log, prepare, train sasrec_tiny, evaluate")
    p.add_argument("--out", default="runs/demo", help="folder for the data and the run")
    p.add_argument("--users", type=int, default=2000)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from seqjax.train.loop import TrainingDiverged
    from seqjax.train.run_dir import RunDirError
    try:
        return args.func(args)
    except (config_lib.ConfigError, RunDirError, TrainingDiverged, FileNotFoundError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
