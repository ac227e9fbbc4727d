"""Sequence models for purchase / churn (and next-item as an auxiliary task): training, checkpoints, prediction.

    BinaryTrainer(SequenceTaskConfig(data_path="data/taobao", heads=("purchase",)), "runs/p").run()
    seqjax.train.task_predict.predict("runs/p", "test")  ->  {"purchase": (example_index, prob)}

The config lives in seqjax/train/task_config.py, the data a run reads in seqjax/train/task_data.py.

The run's examples, histories and splits are those of `data_path` (a `seqjax prepare --task` output).
Each binary head's label comes from a prepared task:

* the head named after data_path's task reads the examples' own labels;
* another binary head reads the labels of `<head>.data`, a directory prepared with `--task <head>` at
  user level from the same log, joined to data_path's examples on (user, cutoff) within the same split.
  Prepared with the same task options apart from `task`, the two have the same examples, so every
  example gets both labels; rows without a match are left out of that head's loss and metrics (the
  share matched is printed). A churn label joins a user_item purchase example through its user.

The next_item head adds the full-softmax next-item loss over each history's positions (the state at t
predicts item t+1), weighted by `next_item.weight`; it needs a causal encoder.

Everything a resumed run needs is in the newest intact checkpoint (seqjax.train.checkpoint): parameters,
optimizer state, RNG key, step, the data position (epoch, batch) and the early-stopping state
(seqjax.train.loop.Progress). Batches are a pure function of (seed, epoch, batch) (TaskTrainBatches) and
dropout keys of (seed, step), so a resumed run ends bit-identical on CPU to an uninterrupted one.
Validation: every binary head's seqjax.evaluation.binary metrics on its labelled validation examples;
the best checkpoint follows `metric` averaged over the binary heads. With a next_item head, validation also
ranks each history's next event (seqjax.evaluation.next_event) and the step with the best
next_item/NDCG@10 is kept as that head's own best checkpoint (what `evaluate --task next_item` loads);
early stopping then waits until neither has improved for `patience` evaluations, so the slower-learning
next-item head is not cut off by the binary heads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from seqjax import sharding
from seqjax.data.task_pipeline import TaskBatchSpec, TaskTrainBatches, task_eval_batches
from seqjax.evaluation.binary import METRICS, binary_metrics
from seqjax.evaluation.next_event import NextEventTargets, make_last_state_ranker, rank_next_events
from seqjax.evaluation.ranking import ranking_metrics
from seqjax.models.event_encoder import MultiTaskModel
from seqjax.models.repeat_head import repeat_loss
from seqjax.train import run_dir
from seqjax.train.checkpoint import CheckpointStore
from seqjax.train.config import OptimConfig
from seqjax.train.loop import CheckpointedRun, Progress, TrainingDiverged
from seqjax.train.sampled_losses import LossConfig
from seqjax.train.sampled_losses import make_loss as make_next_item_loss
from seqjax.train.step import init_state, learning_rate, optimizer, put_batch
from seqjax.train.task_config import SequenceTaskConfig
from seqjax.train.task_data import SideTable, TaskData, attach, bind, resolve_data, side_table
from seqjax.train.tensorboard import ScalarWriter

# -- model, losses and the jitted functions ---------------------------------------------------------

def build_model(cfg: SequenceTaskConfig, data: TaskData) -> MultiTaskModel:
    candidate = ("purchase",) if data.level == "user_item" and data.primary == "purchase" else ()
    return MultiTaskModel(data.num_items, data.num_categories, cfg.max_len, cfg.encoder, data.heads, candidate,
                          repeat=cfg.next_item.repeat, num_aggregates=data.num_aggregates, has_prices=data.has_prices,
                          rngs=nnx.Rngs(jax.random.key(cfg.seed, impl=cfg.rng_impl)))


def bce(logits: jax.Array, labels: jax.Array, weights: jax.Array, pos_weight: float) -> jax.Array:
    """Weighted mean binary cross-entropy of logits [B] against 0/1 labels [B]; positives count pos_weight."""
    y = labels.astype(jnp.float32)
    z = logits.astype(jnp.float32)
    per = pos_weight * y * jax.nn.softplus(-z) + (1.0 - y) * jax.nn.softplus(z)
    return jnp.sum(per * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def next_item_targets(items: jax.Array, lengths: jax.Array, weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The item after each position [B, T] (0 past the end) and weights [B, T]: 1 at t < length - 1 of real rows."""
    targets = jnp.concatenate([items[:, 1:], jnp.zeros_like(items[:, :1])], axis=1)
    t = jnp.arange(items.shape[1])[None, :]
    return targets, ((t < lengths[:, None] - 1) * weight[:, None]).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything the jitted step depends on besides the model structure; hashable, so two trainers of one
    config in a process (a resumed run, `predict` after training) share one compile (see `compiled`)."""

    heads: tuple[str, ...]
    weights: tuple[float, ...]  # loss weight of each head, in `heads` order
    pos_weights: tuple[float, ...]  # BCE positive weight of each head (unused for next_item)
    loss_chunk: int
    next_item_loss: LossConfig
    optim: OptimConfig
    total_steps: int  # the schedule's horizon
    rng_impl: str

    @classmethod
    def of(cls, cfg: SequenceTaskConfig, data: TaskData) -> StepSpec:
        section = lambda h: getattr(cfg, h)
        steps_per_epoch = -(-data.train_examples // cfg.batch_size)  # as TaskTrainBatches.batches_per_epoch
        return cls(data.heads, tuple(section(h).weight for h in data.heads),
                   tuple(getattr(section(h), "pos_weight", 1.0) for h in data.heads), cfg.next_item.loss_chunk,
                   cfg.next_item.loss, cfg.optim, cfg.epochs * steps_per_epoch, cfg.rng_impl)


def make_loss(graphdef: nnx.GraphDef, spec: StepSpec):
    """loss(params, batch, key) -> (total, {head: loss})."""
    weight = dict(zip(spec.heads, spec.weights))
    pos_weight = dict(zip(spec.heads, spec.pos_weights))
    next_item_loss = make_next_item_loss(spec.next_item_loss, spec.loss_chunk)

    def loss(params, batch, key):
        model = nnx.merge(graphdef, params)
        logits, enc = model(batch, key)
        logged = {}
        parts = {h: bce(v, batch[f"{h}_label"], batch[f"{h}_weight"], pos_weight[h]) for h, v in logits.items()}
        if "next_item" in spec.heads:
            targets, weights = next_item_targets(batch["items"], batch["lengths"], batch["weight"])
            explore = lambda w: next_item_loss(enc.states, model.item_table(), targets, w,
                                               jax.random.fold_in(key, 1))  # negatives apart from dropout
            if model.repeat is None:
                parts["next_item"] = explore(weights)
            else:
                gate, log_a, visible = model.repeat_parts(batch, enc)
                parts["next_item"], mix = repeat_loss(gate, log_a, visible, batch["items"], targets, weights, explore)
                logged = {f"next_item_{k}": v for k, v in mix.items()}
        total = sum(weight[h] * v for h, v in parts.items())
        return total, {**parts, **logged}
    return loss


@dataclasses.dataclass(frozen=True)
class _Optim:
    optim: OptimConfig  # what seqjax.train.step.learning_rate / optimizer read


@dataclasses.dataclass(frozen=True)
class Compiled:
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    step: Any  # jitted (state, batch) -> (state, metrics), donating the state
    probs: Any  # jitted (params, batch) -> {binary head: P(label = 1) [B]}


@functools.lru_cache(maxsize=16)
def compiled(graphdef: nnx.GraphDef, spec: StepSpec, mesh) -> Compiled:
    """The optimizer and the jitted step and prediction functions (as seqjax.train.step: pure step,
    RNG = fold_in(rng, step), explicit shardings, donated state), one per (model, spec, mesh) in a process."""
    schedule = learning_rate(_Optim(spec.optim), spec.total_steps)
    tx = optimizer(_Optim(spec.optim), schedule)
    loss_fn = make_loss(graphdef, spec)

    def step(state, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"], impl=spec.rng_impl), state["step"])
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, key)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
               "step": state["step"] + 1, "rng": state["rng"]}
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
                   "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm), **{f"{h}_loss": v for h, v in parts.items()}}
        return new, metrics

    def probs(params, batch):
        logits, _ = nnx.merge(graphdef, params)(batch)
        return {h: jax.nn.sigmoid(v.astype(jnp.float32)) for h, v in logits.items()}

    rep, split = sharding.replicated(mesh), sharding.logical(mesh, "batch")
    return Compiled(tx, schedule,
                    jax.jit(step, in_shardings=(rep, split), out_shardings=(rep, rep), donate_argnums=0),
                    jax.jit(probs, in_shardings=(rep, split), out_shardings=rep))


def model_graphdef(cfg: SequenceTaskConfig, data: TaskData) -> nnx.GraphDef:
    return nnx.graphdef(nnx.eval_shape(lambda: build_model(cfg, data)))


def state_factory(cfg: SequenceTaskConfig, data: TaskData, tx: optax.GradientTransformation, mesh):
    """(create, abstract_state): `create()` builds the state directly on the mesh (as seqjax.train.step);
    `abstract_state` carries shapes, dtypes and shardings for restores."""
    rep = sharding.replicated(mesh)

    def create():
        return init_state(build_model(cfg, data), tx, cfg.seed, cfg.rng_impl)

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), jax.eval_shape(create))
    return jax.jit(create, out_shardings=rep), abstract


def predict_split(probs_fn, params, cfg: SequenceTaskConfig, split: str, table: SideTable, mesh,
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(example index int64 [E], {binary head: prob float32 [E]}) for every example of `split`, in file order."""
    spec = TaskBatchSpec(cfg.eval_batch_size, cfg.max_len, cfg.seed, cfg.length_buckets())
    index, out = [], {}
    for batch in task_eval_batches(cfg.data_path, split, spec):
        real = batch["weight"] > 0
        probs = jax.device_get(probs_fn(params, put_batch(attach(batch, table), mesh)))
        index.append(batch["example"][real])
        for h, p in probs.items():
            out.setdefault(h, []).append(np.asarray(p)[real])
    return (np.concatenate(index) if index else np.zeros(0, np.int64),
            {h: np.concatenate(v) for h, v in out.items()})


def head_metrics(index: np.ndarray, probs: dict[str, np.ndarray], table: SideTable) -> dict[str, float]:
    """`<head>/<metric>` for every binary head on its labelled examples, `<head>/count`, and each metric
    averaged over the heads (the value early stopping and the best checkpoint follow)."""
    out: dict[str, float] = {}
    for h, p in probs.items():
        keep = table.labelled[h][index] > 0
        out.update({f"{h}/{k}": v for k, v in binary_metrics(table.labels[h][index][keep], p[keep]).items()})
        out[f"{h}/count"] = float(keep.sum())
    for k in METRICS:
        out[k] = float(np.mean([out[f"{h}/{k}"] for h in probs]))
    return out


NEXT_ITEM_METRIC = "next_item/NDCG@10"  # the next_item head's own best checkpoint follows it


def checkpoint_store(workdir: Path, cfg: SequenceTaskConfig) -> CheckpointStore:
    extra = {NEXT_ITEM_METRIC: "max"} if "next_item" in cfg.heads else None
    return CheckpointStore(workdir / "checkpoints", keep_latest=cfg.keep_latest, keep_best=cfg.keep_best,
                           best_metric=cfg.metric, best_mode=cfg.best_mode, extra_best=extra)


# -- training -----------------------------------------------------------------------------------------

class BinaryTrainer(CheckpointedRun):
    def __init__(self, cfg: SequenceTaskConfig, workdir: str | Path, allow_config_change: bool = False):
        cfg.validate()
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.data = resolve_data(cfg)
        bind(self.workdir, cfg, self.data, allow_config_change)
        self.mesh = sharding.make_mesh(cfg.num_devices)
        self.batches = TaskTrainBatches(cfg.data_path, TaskBatchSpec(cfg.batch_size, cfg.max_len, cfg.seed,
                                                                     cfg.length_buckets()))
        self.steps_per_epoch = self.batches.batches_per_epoch
        self.tables = {s: side_table(self.data, s, cfg.data_path) for s in ("train", "valid")}
        self.compiled = compiled(model_graphdef(cfg, self.data), StepSpec.of(cfg, self.data), self.mesh)
        self._create, self.abstract_state = state_factory(cfg, self.data, self.compiled.tx, self.mesh)
        self.step_fn, self.probs_fn = self.compiled.step, self.compiled.probs
        self.store = checkpoint_store(self.workdir, cfg)
        self.better = (lambda a, b: a > b) if cfg.best_mode == "max" else (lambda a, b: a < b)
        self.next_targets = None
        if "next_item" in self.data.heads:  # loaded now: data prepared without next-event targets fails early
            self.next_targets = NextEventTargets(cfg.data_path, "valid")
            self.rank_fn = make_last_state_ranker(model_graphdef(cfg, self.data), self.mesh)

    def validate(self, params) -> dict[str, float]:
        cfg = self.cfg
        index, probs = predict_split(self.probs_fn, params, cfg, "valid", self.tables["valid"], self.mesh)
        metrics = head_metrics(index, probs, self.tables["valid"])
        if self.next_targets is not None:
            spec = TaskBatchSpec(cfg.eval_batch_size, cfg.max_len, cfg.seed, cfg.length_buckets())
            ranked = rank_next_events(self.rank_fn, params, cfg.data_path, "valid", spec, self.tables["valid"],
                                      self.next_targets, self.mesh)
            if len(ranked["rank"]):
                metrics.update({f"next_item/{k}": v for k, v in
                                ranking_metrics(ranked["rank"], self.data.num_items).items()})
        return metrics

    def _limits(self) -> tuple[int, int]:
        return self.cfg.epochs, self.cfg.max_steps

    def _epochs(self, state: dict, progress: Progress, tb: ScalarWriter) -> None:
        cfg = self.cfg
        while not progress.stopped:
            if progress.epoch >= cfg.epochs:
                progress.stopped = f"reached epochs={cfg.epochs}"
                break
            t0 = time.perf_counter()
            state, hit_max_steps = self._train_epoch(state, progress, tb)
            if hit_max_steps:
                progress.stopped = f"reached max_steps={cfg.max_steps}"
                break
            progress.epoch_seconds.append(time.perf_counter() - t0)
            progress.epoch, progress.batch = progress.epoch + 1, 0
            metrics = None
            if progress.epoch % cfg.eval_every_epochs == 0 or progress.epoch == cfg.epochs:
                metrics = self._validate_and_track(state, progress, tb)
            if progress.epoch == cfg.epochs:
                progress.stopped = f"reached epochs={cfg.epochs}"
            self._save(state, progress, metrics)
            tb.flush()
        self._save(state, progress)

    def _validate_and_track(self, state: dict, progress: Progress, tb: ScalarWriter) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        metrics = self.validate(state["params"])
        progress.eval_seconds.append(time.perf_counter() - t0)
        step = int(state["step"])
        tb.scalars(step, {f"valid/{k}": v for k, v in metrics.items() if math.isfinite(v)})
        value = metrics[cfg.metric]  # NaN when a head's validation labels hold one class: never the best
        improved = math.isfinite(value) and (progress.best_metric is None or self.better(value, progress.best_metric))
        if improved or value == progress.best_metric:  # a tie moves the record: the store keeps the later step
            progress.best_metric, progress.best_step, progress.best_epoch = value, step, progress.epoch
        heads = "  ".join(f"{h} {metrics[f'{h}/{cfg.metric}']:.4f} (ROC-AUC {metrics[f'{h}/ROC-AUC']:.4f})"
                          for h in self.data.sources)
        best = "none yet" if progress.best_metric is None else \
            f"{progress.best_metric:.4f} at epoch {progress.best_epoch}"
        watched = cfg.metric
        if self.next_targets is not None:
            watched += f" or {NEXT_ITEM_METRIC}"
            next_value = metrics.get(NEXT_ITEM_METRIC, math.nan)
            next_best = progress.head_best.get("next_item")
            if math.isfinite(next_value) and (next_best is None or next_value >= next_best[0]):
                improved = improved or next_best is None or next_value > next_best[0]
                # a tie moves the record, as for the binary metric
                progress.head_best["next_item"] = next_best = [next_value, step, progress.epoch]
            if next_best is not None:
                heads += f"  next_item NDCG@10 {next_value:.4f} (best {next_best[0]:.4f} at epoch {next_best[2]})"
        progress.bad_evals = 0 if improved else progress.bad_evals + 1
        print(f"epoch {progress.epoch}: valid {cfg.metric}: {heads} (best {best}); "
              f"train {progress.epoch_seconds[-1]:.1f}s, valid {progress.eval_seconds[-1]:.1f}s", flush=True)
        if cfg.patience and progress.bad_evals >= cfg.patience and progress.epoch < cfg.epochs:
            progress.stopped = f"early stop: no {watched} gain in {cfg.patience} evaluations"
        return metrics

    def _train_epoch(self, state: dict, progress: Progress, tb: ScalarWriter) -> tuple[dict, bool]:
        cfg = self.cfg
        n = self.steps_per_epoch
        table = self.tables["train"]
        batches = self.batches.epoch(progress.epoch, progress.batch, cfg.reader_threads)
        bar = tqdm(total=n, initial=progress.batch, desc=f"epoch {progress.epoch + 1}/{cfg.epochs}", unit="batch",
                   file=sys.stdout, mininterval=1.0 if sys.stdout.isatty() else 15.0, leave=False)
        pending: list[tuple[int, dict]] = []
        window = {"t": time.perf_counter(), "examples": 0}

        def drain():  # metrics read a step late: no host sync per step
            for step, m in pending:
                m = jax.device_get(m)
                if not m["finite"]:
                    latest = max(self.store.all_steps(), default=None)
                    raise TrainingDiverged(f"non-finite loss or gradient at step {step + 1} (loss={m['loss']}); "
                                           f"stopped; last good checkpoint: step {latest}")
                if (step + 1) % cfg.log_every_steps == 0:
                    now = time.perf_counter()
                    rate = window["examples"] / max(now - window["t"], 1e-9)
                    tb.scalars(step + 1, {**{f"train/{k}": v for k, v in m.items() if k != "finite"},
                                          "train/examples_per_sec": rate})
                    bar.set_postfix(loss=f"{m['loss']:.4f}", ex_s=f"{rate:.0f}", refresh=False)
                    window.update(t=now, examples=0)
            pending.clear()

        try:
            for b in range(progress.batch, n):
                global_step = progress.epoch * n + b
                if cfg.max_steps and global_step >= cfg.max_steps:
                    drain()
                    return state, True
                host = next(batches)
                state, metrics = self.step_fn(state, put_batch(attach(host, table), self.mesh))
                drain()
                pending.append((global_step, metrics))
                window["examples"] += int(host["weight"].sum())
                bar.update(1)
                progress.batch = b + 1
                if cfg.checkpoint_every_steps and (b + 1) < n and (global_step + 1) % cfg.checkpoint_every_steps == 0:
                    drain()  # a checkpoint only after its step's loss is known to be finite
                    self._save(state, progress)
            drain()
        finally:
            bar.close()
        return state, False

    def _summary(self, progress: Progress) -> dict[str, Any]:
        steady = progress.epoch_seconds[1:] or progress.epoch_seconds
        summary = {
            "stopped": progress.stopped, "epochs": progress.epoch, "heads": list(self.data.heads),
            "best_epoch": progress.best_epoch, "best_step": progress.best_step,
            "best_valid": {self.cfg.metric: progress.best_metric},
            "seconds_per_epoch_steady": float(np.median(steady)) if steady else None,
            "first_epoch_seconds_incl_compile": progress.epoch_seconds[0] if progress.epoch_seconds else None,
            "valid_seconds_mean": float(np.mean(progress.eval_seconds)) if progress.eval_seconds else None,
            "train_seconds_total": float(np.sum(progress.epoch_seconds)),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "steps_per_epoch": self.steps_per_epoch,
        }
        if "next_item" in progress.head_best:
            value, step, epoch = progress.head_best["next_item"]
            summary["next_item_best"] = {"epoch": epoch, "step": step, NEXT_ITEM_METRIC: value}
        if progress.best_step is not None:
            best = self.store.metrics_of(progress.best_step) if progress.best_step in self.store.all_steps() else None
            if best:
                summary["best_valid"] = {k: v for k, v in best.items() if "/" in k or k == self.cfg.metric}
        run_dir.write_atomic(self.workdir / "summary.json", json.dumps(summary, indent=1))
        return summary


def train_sequence_task(cfg: SequenceTaskConfig, workdir: str | Path, allow_config_change: bool = False,
                        ) -> dict[str, Any]:
    return BinaryTrainer(cfg, workdir, allow_config_change).run()
