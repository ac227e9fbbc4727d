"""Predictions of a trained sequence-task run: the chosen checkpoint's probabilities per binary head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from seqjax import sharding
from seqjax.data.schema import TASK_DIR
from seqjax.train import run_dir
from seqjax.train.binary_loop import (
    NEXT_ITEM_METRIC,
    StepSpec,
    checkpoint_store,
    compiled,
    model_graphdef,
    predict_split,
    state_factory,
)
from seqjax.train.task_config import SequenceTaskConfig, load_task_config
from seqjax.train.task_data import TaskData, check_data, resolve_data, side_table


def restore_params(workdir: Path, cfg: SequenceTaskConfig, data: TaskData, mesh, checkpoint: str,
                   head: str | None = None):
    """(compiled functions, params, how the step was chosen) of `checkpoint`: best, latest or a step number.
    "best" for head="next_item" is the step with the best validation next_item/NDCG@10; for the binary heads
    (or a run trained before next-item validation existed) the best by the run's `metric`."""
    comp = compiled(model_graphdef(cfg, data), StepSpec.of(cfg, data), mesh)
    _, abstract = state_factory(cfg, data, comp.tx, mesh)
    store = checkpoint_store(workdir, cfg)
    steps = store.all_steps()
    if not steps:
        raise run_dir.RunDirError(f"no checkpoints under {store.directory}: train first")
    if checkpoint == "best":
        step = store.best_step(NEXT_ITEM_METRIC) if head == "next_item" else None
        chosen = f"best validation {NEXT_ITEM_METRIC}"
        if step is None:
            step = store.best_step()
            chosen = f"best validation {cfg.metric}" + (" (no next_item validation saved)" if head == "next_item" else "")
        if step is None:
            step, chosen = max(steps), "latest (no validation metric saved)"
    elif checkpoint == "latest":
        step, chosen = store.latest_intact_step(), "latest"
    else:
        step, chosen = int(checkpoint), f"step {checkpoint}, as asked"
    restored_step, state, _ = store.restore(abstract, step=step)
    return comp, state["params"], {"step": restored_step, "chosen": chosen}


def _predict(workdir: Path, split: str, checkpoint: str):
    cfg = load_task_config(workdir)
    data = resolve_data(cfg)
    check_data(workdir, data)
    mesh = sharding.make_mesh(cfg.num_devices)
    comp, params, chosen = restore_params(workdir, cfg, data, mesh, checkpoint)
    table = side_table(data, split, cfg.data_path)
    index, probs = predict_split(comp.probs, params, cfg, split, table, mesh)
    return cfg, table, index, probs, chosen


def predict(workdir: str | Path, split: str = "test", checkpoint: str = "best",
            ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{binary head: (example index int64 [E], P(label = 1) float32 [E])}: every example of `split` once,
    in file order (the index is the row of DATA_DIR/task/<split>.parquet). `checkpoint`: best (by
    validation metric; the latest when none was saved), latest, or a step number."""
    _, _, index, probs, _ = _predict(Path(workdir), split, checkpoint)
    return {h: (index, p) for h, p in probs.items()}


def scored_examples(workdir: str | Path, split: str = "test", checkpoint: str = "best",
                    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """What a binary evaluation needs, per binary head, over the examples that have that head's label:
    {"example", "user" (the bootstrap group), "label", "prob"} arrays [E_h]; and {"step", "chosen"}, the
    checkpoint used."""
    cfg, table, index, probs, chosen = _predict(Path(workdir), split, checkpoint)
    users = pq.read_table(Path(cfg.data_path) / TASK_DIR / f"{split}.parquet", columns=["user"]).column("user")
    users = users.to_numpy()[index]
    out = {}
    for h, p in probs.items():
        keep = table.labelled[h][index] > 0
        out[h] = {"example": index[keep], "user": users[keep], "label": table.labels[h][index][keep], "prob": p[keep]}
    return out, chosen
