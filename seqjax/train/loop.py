"""`seqjax train`: the epoch loop with validation, early stopping, checkpoints and exact resume.

Everything a resumed run needs is in the newest intact checkpoint: parameters, optimizer state,
the RNG key, the step, the data position (epoch, batch in epoch) and the early-stopping state.
Because batches and dropout keys are pure functions of (seed, epoch, batch) and the step, a run
killed at any moment and started again ends bit-identical (on CPU) to one never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from seqjax import sharding
from seqjax.data.masking import MaskSpec
from seqjax.data.pipeline import TrainBatches, TrainBatchSpec
from seqjax.evaluation.ranking import ranking_metrics
from seqjax.evaluation.scoring import make_rank_fn, neural_ranker, rank_split
from seqjax.train import run_dir
from seqjax.train.checkpoint import CheckpointStore, manifest_problem
from seqjax.train.config import COUNT_KINDS, ExperimentConfig
from seqjax.train.sampled_losses import popularity_from_counts
from seqjax.train.step import (
    learning_rate,
    make_train_step,
    optimizer,
    put_batch,
    state_factory,
    uses_timestamps,
)
from seqjax.train.tensorboard import ScalarWriter


def sequences_in(batch: dict) -> int:
    """Users in a training batch: rows with a position, or the segments of packed rows."""
    if "segments" in batch:
        return int(batch["segments"].max(axis=1).sum())
    return int(batch["lengths"].astype(bool).sum())


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became non-finite."""


@dataclasses.dataclass
class Progress:
    """Host-side state saved with every checkpoint (JSON)."""
    epoch: int = 0  # epoch in progress
    batch: int = 0  # next batch of that epoch
    best_metric: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    bad_evals: int = 0  # evaluations since the best one (multi-task: since any tracked head improved)
    head_best: dict[str, list] = dataclasses.field(default_factory=dict)  # head -> [value, step, epoch]
    stopped: str = ""  # why training ended ("" while it runs)
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)  # train time per finished epoch
    eval_seconds: list[float] = dataclasses.field(default_factory=list)


class CheckpointedRun:
    """Restore-or-create, save-once and the resumable run over a CheckpointStore, shared by the next-item and
    sequence-task trainers. Subclasses set `store`, `abstract_state`, `workdir`, `limit_prefix` and `_create`,
    `_limits`, `_epochs`, `_summary`."""

    limit_prefix = ""  # how stop reasons name the epoch and step limits: "train." or "" (sequence tasks)

    def run(self) -> dict[str, Any]:
        state, progress, resumed = self._restore()
        step, (epochs, max_steps), p = int(state["step"]), self._limits(), self.limit_prefix
        if not progress.stopped and 0 < max_steps <= step:
            # the checkpoint at max_steps was saved (at an epoch end or checkpoint_every_steps) before the stop
            progress.stopped = f"reached {p}max_steps={max_steps}"
        # A run stopped by its epoch or step limit goes on when a (--allow-config-change) config raises that
        # limit; an early stop or divergence stays final.
        if (progress.stopped.startswith(f"reached {p}epochs=") and progress.epoch < epochs) or \
                (progress.stopped.startswith(f"reached {p}max_steps=") and (max_steps == 0 or step < max_steps)):
            print(f"continuing a run that had {progress.stopped}: the config now allows more", flush=True)
            progress.stopped = ""
        if progress.stopped:
            print(f"run in {self.workdir} already finished ({progress.stopped}); nothing to do", flush=True)
            return self._summary(progress)
        tb = ScalarWriter(self.workdir / "tensorboard")
        if resumed:
            tb.start(step + 1)  # keeps what the checkpoint step itself logged
        try:
            self._epochs(state, progress, tb)  # updates `progress` in place
        finally:
            tb.close()
        return self._summary(progress)

    def _restore(self) -> tuple[dict, Progress, bool]:
        restored = self.store.restore(self.abstract_state)
        if restored is None:
            return self._create(), Progress(), False
        step, state, meta = restored
        print(f"resuming from checkpoint step {step} (epoch {meta['progress']['epoch']}, "
              f"batch {meta['progress']['batch']})", flush=True)
        return state, Progress(**meta["progress"]), True

    def _save(self, state: dict, progress: Progress, metrics: dict[str, float] | None = None) -> None:
        step = int(state["step"])
        if step in self.store.all_steps() and manifest_problem(self.store.directory / str(step)) is None:
            return  # already saved intact (e.g. the epoch-end save of the final step)
        self.store.save(step, state, {"progress": dataclasses.asdict(progress)}, metrics)


class Trainer(CheckpointedRun):
    def __init__(self, cfg: ExperimentConfig, workdir: str | Path, allow_config_change: bool = False):
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.metadata = run_dir.load_metadata(cfg.data.path)
        run_dir.bind(self.workdir, cfg, self.metadata, allow_config_change)
        self.mesh = sharding.make_mesh(cfg.train.num_devices)
        mask = None
        if cfg.model.kind == "bert4rec":  # cloze batches, masked in the pipeline
            b4r = cfg.model.bert4rec
            mask = MaskSpec(self.metadata["num_items"] + 1, b4r.mask_prob, b4r.mask_last_prob)
        self.batches = TrainBatches(cfg.data.path, TrainBatchSpec(
            cfg.data.batch_size, cfg.data.max_len, cfg.train.seed, cfg.data.buckets, cfg.data.sort_window, mask,
            cfg.data.pack, 8 * cfg.train.num_devices, cfg.data.train_history))
        self.steps_per_epoch = self.batches.batches_per_epoch
        self.schedule = learning_rate(cfg, cfg.train.epochs * self.steps_per_epoch)
        self.tx = optimizer(cfg, self.schedule)
        self.graphdef, self._create, self.abstract_state = state_factory(
            cfg, self.metadata["num_items"], self.tx, self.mesh)
        self.store = checkpoint_store(self.workdir, cfg)
        times = uses_timestamps(cfg, self.metadata)
        cfg.train.loss.validate(self.metadata["num_items"])
        popularity = None
        if cfg.train.loss.needs_popularity:  # training targets' counts: what the sampled loss corrects for
            popularity = popularity_from_counts(self.batches.target_counts(self.metadata["num_items"]))
        self.step_fn = make_train_step(self.graphdef, self.tx, self.schedule, cfg, self.mesh,
                                       self.batches.positions_per_batch, times, popularity)
        self.rank_fn = make_rank_fn(self.graphdef, self.mesh, run_dir.filter_seen(cfg, self.metadata), times)

    # -- validation --------------------------------------------------------------------------
    def validate(self, params) -> dict[str, float]:
        ranked = rank_split(neural_ranker(self.rank_fn, params), self.cfg.data.path, "valid",
                            self.cfg.data.eval_batch_size, self.cfg.data.max_len,
                            tuple(self.cfg.data.buckets) or None)
        return ranking_metrics(ranked["ranks"], self.metadata["num_items"], self.cfg.eval.ks)

    # -- the loop ----------------------------------------------------------------------------
    limit_prefix = "train."

    def _limits(self) -> tuple[int, int]:
        return self.cfg.train.epochs, self.cfg.train.max_steps

    def _epochs(self, state: dict, progress: Progress, tb: ScalarWriter) -> tuple[dict, Progress]:
        cfg = self.cfg
        has_valid = self.metadata["counts"]["valid"]["records"] > 0
        while not progress.stopped:
            if progress.epoch >= cfg.train.epochs:
                progress.stopped = f"reached train.epochs={cfg.train.epochs}"
                break
            t0 = time.perf_counter()
            state, hit_max_steps = self._train_epoch(state, progress, tb)
            train_seconds = time.perf_counter() - t0
            if hit_max_steps:
                progress.stopped = f"reached train.max_steps={cfg.train.max_steps}"
                self._save(state, progress)
                break
            progress.epoch_seconds.append(train_seconds)
            progress.epoch, progress.batch = progress.epoch + 1, 0
            metrics = None
            if has_valid and (progress.epoch % cfg.train.eval_every_epochs == 0 or progress.epoch == cfg.train.epochs):
                metrics = self._validate_and_track(state, progress, tb)
            elif progress.epoch == cfg.train.epochs:
                progress.stopped = f"reached train.epochs={cfg.train.epochs}"
            self._save(state, progress, metrics)
            tb.flush()
        self._save(state, progress)
        return state, progress

    def _validate_and_track(self, state: dict, progress: Progress, tb: ScalarWriter) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        metrics = self.validate(state["params"])
        progress.eval_seconds.append(time.perf_counter() - t0)
        step = int(state["step"])
        tb.scalars(step, {f"valid/{k}": v for k, v in metrics.items() if k != "count"})
        value = metrics[cfg.train.metric]
        improved = progress.best_metric is None or value > progress.best_metric
        if improved or value == progress.best_metric:  # a tie moves the record: the store keeps the later step
            progress.best_metric, progress.best_step, progress.best_epoch = value, step, progress.epoch
        progress.bad_evals = 0 if improved else progress.bad_evals + 1
        print(f"epoch {progress.epoch}: valid {cfg.train.metric}={value:.4f} HR@10={metrics.get('HR@10', 0):.4f} "
              f"(best {progress.best_metric:.4f} at epoch {progress.best_epoch}); "
              f"train {progress.epoch_seconds[-1]:.1f}s, valid {progress.eval_seconds[-1]:.1f}s", flush=True)
        if progress.epoch == cfg.train.epochs:
            progress.stopped = f"reached train.epochs={cfg.train.epochs}"
        elif cfg.train.patience and progress.bad_evals >= cfg.train.patience:
            progress.stopped = f"early stop: no {cfg.train.metric} gain in {cfg.train.patience} evaluations"
        return metrics

    def _train_epoch(self, state: dict, progress: Progress, tb: ScalarWriter) -> tuple[dict, bool]:
        cfg = self.cfg
        n = self.steps_per_epoch
        batches = self.batches.epoch(progress.epoch, progress.batch, cfg.data.reader_threads)
        bar = tqdm(total=n, initial=progress.batch, desc=f"epoch {progress.epoch + 1}/{cfg.train.epochs}",
                   unit="batch", file=sys.stdout, mininterval=1.0 if sys.stdout.isatty() else 15.0, leave=False)
        pending: list[tuple[int, dict]] = []
        window = {"t": time.perf_counter(), "seqs": 0}

        def drain():
            for step, m in pending:
                m = jax.device_get(m)
                if not m["finite"]:
                    latest = max(self.store.all_steps(), default=None)
                    raise TrainingDiverged(f"non-finite loss or gradient at step {step + 1} (loss={m['loss']}); "
                                           f"stopped; last good checkpoint: step {latest}")
                if (step + 1) % cfg.train.log_every_steps == 0:
                    now = time.perf_counter()
                    rate = window["seqs"] / max(now - window["t"], 1e-9)
                    tb.scalars(step + 1, {"train/loss": m["loss"], "train/lr": m["lr"],
                                          "train/grad_norm": m["grad_norm"], "train/sequences_per_sec": rate})
                    bar.set_postfix(loss=f"{m["loss"]:.4f}", seq_s=f"{rate:.0f}", refresh=False)
                    window.update(t=now, seqs=0)
            pending.clear()

        try:
            for b in range(progress.batch, n):
                global_step = progress.epoch * n + b  # host counter: no device sync per step
                if cfg.train.max_steps and global_step >= cfg.train.max_steps:
                    drain()
                    return state, True
                host_batch = next(batches)
                state, metrics = self.step_fn(state, put_batch(host_batch, self.mesh))
                drain()  # the previous step's metrics: read one step late
                pending.append((global_step, metrics))
                window["seqs"] += sequences_in(host_batch)
                bar.update(1)
                progress.batch = b + 1
                if cfg.train.checkpoint_every_steps and (b + 1) < n and \
                        (global_step + 1) % cfg.train.checkpoint_every_steps == 0:
                    drain()  # a checkpoint only after its step's loss is known to be finite
                    self._save(state, progress)
            drain()
        finally:
            bar.close()
        return state, False

    def _summary(self, progress: Progress) -> dict[str, Any]:
        steady = progress.epoch_seconds[1:] or progress.epoch_seconds
        summary = {
            "stopped": progress.stopped, "epochs": progress.epoch, "best_epoch": progress.best_epoch,
            "best_step": progress.best_step, "best_valid": {self.cfg.train.metric: progress.best_metric},
            "seconds_per_epoch_steady": float(np.median(steady)) if steady else None,
            "first_epoch_seconds_incl_compile": progress.epoch_seconds[0] if progress.epoch_seconds else None,
            "valid_seconds_mean": float(np.mean(progress.eval_seconds)) if progress.eval_seconds else None,
            "train_seconds_total": float(np.sum(progress.epoch_seconds)),
            "train_seconds_to_best": float(np.sum(progress.epoch_seconds[:progress.best_epoch or 0])),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "steps_per_epoch": self.steps_per_epoch,
        }
        run_dir.write_atomic(self.workdir / "summary.json", json.dumps(summary, indent=1))
        return summary


def checkpoint_store(workdir: Path, cfg: ExperimentConfig) -> CheckpointStore:
    return CheckpointStore(workdir / "checkpoints", keep_latest=cfg.train.keep_latest, keep_best=cfg.train.keep_best,
                           best_metric=cfg.train.metric, best_mode="max")


def train(cfg: ExperimentConfig, workdir: str | Path, allow_config_change: bool = False) -> dict[str, Any]:
    if cfg.model.kind in COUNT_KINDS:
        from seqjax.train.count_models import fit_count_model
        return fit_count_model(cfg, Path(workdir), allow_config_change)
    return Trainer(cfg, workdir, allow_config_change).run()
