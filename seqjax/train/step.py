"""The train state, optimizer and the pure, jitted train step.

State is a plain pytree {params, opt_state, step, rng} so Orbax saves and restores it as is;
the model structure (nnx graphdef) is rebuilt from the config, never checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from seqjax import sharding
from seqjax.models.bert4rec import BERT4Rec
from seqjax.models.hstu import HSTU
from seqjax.models.recurrent import GRU4Rec, LSTMRec
from seqjax.models.sasrec import SASRec
from seqjax.train.config import ExperimentConfig
from seqjax.train.sampled_losses import Popularity, make_loss

State = dict[str, Any]


MODELS = {"sasrec": SASRec, "bert4rec": BERT4Rec, "hstu": HSTU, "gru4rec": GRU4Rec, "lstm": LSTMRec}
TIME_AWARE_KINDS = ("hstu",)


def build_model(cfg: ExperimentConfig, num_items: int, seed: int) -> nnx.Module:
    """The active kind's model; all share encode / item_table / last_hidden."""
    return MODELS[cfg.model.kind](num_items, cfg.data.max_len, getattr(cfg.model, cfg.model.kind),
                                  rngs=nnx.Rngs(seed), attention_impl=cfg.model.attention)


def uses_timestamps(cfg: ExperimentConfig, metadata: dict) -> bool:
    """Time-aware encoders (HSTU's relative time bias) get event times when the data has them."""
    return cfg.model.kind in TIME_AWARE_KINDS and bool(metadata.get("has_timestamps"))


def learning_rate(cfg: ExperimentConfig, total_steps: int) -> optax.Schedule:
    o = cfg.optim
    warmup = optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1))
    decay_steps = max((o.decay_steps or total_steps) - o.warmup_steps, 1)
    decay = {"constant": optax.constant_schedule(o.lr),
             "cosine": optax.cosine_decay_schedule(o.lr, decay_steps),
             "linear": optax.linear_schedule(o.lr, 0.0, decay_steps)}[o.schedule]
    return optax.join_schedules([warmup, decay], [o.warmup_steps])


def optimizer(cfg: ExperimentConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    o = cfg.optim
    parts = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
    return optax.chain(*parts)


def init_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int, rng_impl: str) -> State:
    params = nnx.to_pure_dict(nnx.state(model))
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed + 1, impl=rng_impl))}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    cfg: ExperimentConfig, mesh: Mesh, positions_per_batch: float | None = None,
                    use_timestamps: bool = False, popularity: Popularity | None = None,
                    ) -> Callable[[State, dict], tuple[State, dict]]:
    """Returns `step(state, batch) -> (state, metrics)`, jitted, donating the old state.

    `positions_per_batch` (the epoch's mean) is the loss denominator when train.loss_norm=epoch;
    `use_timestamps` passes the batch's event times to the encoder (see `uses_timestamps`);
    `popularity` (training item counts) is for losses that sample by or correct for popularity. It is
    a replicated argument of the jitted step, not a closure, so it is not baked into the program."""
    denominator = positions_per_batch if cfg.train.loss_norm == "epoch" else None
    compute_dtype = jnp.dtype(cfg.train.dtype)

    # A batch holds at most data.batch_size sequences (packed or not): the own-item masks' size.
    loss_impl = make_loss(cfg.train.loss, cfg.train.loss_chunk, denominator, max_sequences=cfg.data.batch_size)

    def loss_fn(params, batch, key, popularity):
        p = jax.tree.map(lambda x: x.astype(compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
        model = nnx.merge(graphdef, p)
        extra = {"timestamps": batch["timestamps"]} if use_timestamps else {}
        if "segments" in batch:  # packed rows (data.pack): per-sequence positions, segment-masked attention
            extra |= {"positions": batch["positions"], "segments": batch["segments"]}
        hidden = model.encode(batch["items"], batch["lengths"], key, **extra)
        own = (batch["items"], batch.get("segments")) if cfg.train.loss.exclude_own_items else None
        # The loss draws from its own stream; the encoder's dropout keeps `key` as before.
        return loss_impl(hidden, model.item_table(), batch["targets"], batch["weights"],
                         jax.random.fold_in(key, 1), popularity, own)

    def step(state: State, batch: dict, popularity) -> tuple[State, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"], impl=cfg.train.rng_impl), state["step"])
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key, popularity)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # The finite flag is computed on device and read a step late: no host sync per step.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]), "finite": finite}
        return new, metrics

    rep = sharding.replicated(mesh)
    # One sharding for the whole batch dict (a pytree prefix): every array splits on its first axis.
    jitted = jax.jit(step, in_shardings=(rep, sharding.logical(mesh, "batch"), rep), out_shardings=(rep, rep),
                     donate_argnums=0)
    popularity = None if popularity is None else jax.device_put(popularity, rep)

    def run(state: State, batch: dict) -> tuple[State, dict]:
        return jitted(state, batch, popularity)

    run.compiled_shapes = jitted._cache_size  # tests: one compile per padded length
    return run


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Host batch -> global arrays split over the data axis (one process: plain device_put)."""
    s = sharding.logical(mesh, "batch")
    return {k: jax.device_put(v, s) for k, v in batch.items()}


def state_factory(cfg: ExperimentConfig, num_items: int, tx: optax.GradientTransformation, mesh: Mesh,
                  ) -> tuple[nnx.GraphDef, Callable[[], State], State]:
    """(graphdef, create, abstract_state): `create()` builds the state directly on the mesh (no full
    copy on one device first); `abstract_state` carries shapes, dtypes and shardings for restores."""
    seed = cfg.train.seed
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(cfg, num_items, seed)))
    rep = sharding.replicated(mesh)

    def create() -> State:
        return init_state(build_model(cfg, num_items, seed), tx, seed, cfg.train.rng_impl)

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), jax.eval_shape(create))
    return graphdef, jax.jit(create, out_shardings=rep), abstract
