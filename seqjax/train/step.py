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
from seqjax.models.recurrent import GRU4Rec, LSTMRec
from seqjax.models.sasrec import SASRec
from seqjax.train.config import ExperimentConfig
from seqjax.train.losses import full_softmax_loss

State = dict[str, Any]
BATCH_KEYS = ("items", "targets", "weights", "lengths")


MODELS = {"sasrec": SASRec, "bert4rec": BERT4Rec, "gru4rec": GRU4Rec, "lstm": LSTMRec}


def build_model(cfg: ExperimentConfig, num_items: int, seed: int) -> nnx.Module:
    """The active kind's model; all share encode / item_table / last_hidden."""
    return MODELS[cfg.model.kind](num_items, cfg.data.max_len, getattr(cfg.model, cfg.model.kind),
                                  rngs=nnx.Rngs(seed), attention_impl=cfg.model.attention)


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
                    ) -> Callable[[State, dict], tuple[State, dict]]:
    """Returns a jitted `step(state, batch) -> (state, metrics)` that donates the old state.

    `positions_per_batch` (the epoch's mean) is the loss denominator when train.loss_norm=epoch."""
    denominator = positions_per_batch if cfg.train.loss_norm == "epoch" else None
    compute_dtype = jnp.dtype(cfg.train.dtype)

    def loss_fn(params, batch, key):
        p = jax.tree.map(lambda x: x.astype(compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
        model = nnx.merge(graphdef, p)
        hidden = model.encode(batch["items"], batch["lengths"], key)
        return full_softmax_loss(hidden, model.item_table(), batch["targets"], batch["weights"],
                                 cfg.train.loss_chunk, denominator)

    def step(state: State, batch: dict) -> tuple[State, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"], impl=cfg.train.rng_impl), state["step"])
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # The finite flag is computed on device and read a step late: no host sync per step.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]), "finite": finite,
                   "positions": jnp.sum(batch["weights"])}
        return new, metrics

    rep = sharding.replicated(mesh)
    batch_sharding = {k: sharding.logical(mesh, "batch") for k in BATCH_KEYS}
    return jax.jit(step, in_shardings=(rep, batch_sharding), out_shardings=(rep, rep), donate_argnums=0)


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Host batch -> global arrays split over the data axis (one process: plain device_put)."""
    s = sharding.logical(mesh, "batch")
    return {k: jax.device_put(batch[k], s) for k in BATCH_KEYS}


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
