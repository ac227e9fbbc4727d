"""What a sequence-task run reads: its prepared directories, per-example side tables (labels joined on
(user, cutoff), cutoff gaps), and the record of both in the run directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from seqjax import config as config_lib
from seqjax.config import ConfigError
from seqjax.data.features import gap_bucket
from seqjax.data.schema import EXAMPLE_SCHEMA_VERSION, TASK_DIR
from seqjax.data.task_pipeline import SEQUENCE_FIELDS
from seqjax.models.event_encoder import BINARY_HEADS
from seqjax.train import run_dir
from seqjax.train.task_config import CONFIG_FILE, DATA_FILE, SECTION, SequenceTaskConfig


@dataclasses.dataclass(frozen=True)
class TaskData:
    """What a run reads: data_path's task and the label source of every head."""

    primary: str  # data_path's task (purchase or churn)
    level: str  # data_path's example level (user or user_item)
    num_items: int
    num_categories: int
    train_examples: int
    heads: tuple[str, ...]  # resolved heads, in HEADS order
    sources: dict[str, str]  # binary head -> prepared directory of its labels
    checksums: dict[str, str]  # prepared directory -> metadata checksum
    num_aggregates: int = 0  # width of `aggregate_inputs` when the run feeds them to the binary heads, else 0
    has_prices: bool = False  # the events carry money values: the encoder embeds price_bucket


def _task_section(path: str, metadata: dict) -> dict:
    if "task" not in metadata:
        raise run_dir.RunDirError(f"{path} has no task examples: prepare it with `seqjax prepare --task purchase|churn`")
    version = metadata["task"].get("example_schema_version")
    if version != EXAMPLE_SCHEMA_VERSION:
        raise run_dir.RunDirError(f"{path}: task examples in schema version {version}, this seqjax reads "
                                  f"{EXAMPLE_SCHEMA_VERSION}; prepare the data again")
    return metadata["task"]["config"]


def _users_digest(path: str) -> str:
    return hashlib.sha256((Path(path) / "vocab" / "users.tsv").read_bytes()).hexdigest()


def resolve_data(cfg: SequenceTaskConfig) -> TaskData:
    """Checks data_path and every head's label directory; raises ConfigError / RunDirError naming them."""
    meta = run_dir.load_metadata(cfg.data_path)
    task = _task_section(cfg.data_path, meta)
    heads = cfg.heads or (task["task"],)
    checksums = {cfg.data_path: meta["checksum"]}
    sources = {}
    for head in (h for h in BINARY_HEADS if h in heads):
        source = getattr(cfg, head).data
        if not source or source == cfg.data_path:
            if task["task"] != head:
                raise ConfigError(f"{SECTION}.{head}.data: data_path {cfg.data_path} holds {task['task']} labels; "
                                  f"give a directory prepared with --task {head} for the {head} head")
            source = cfg.data_path
        elif source != cfg.data_path:
            other = run_dir.load_metadata(source)
            other_task = _task_section(source, other)
            if other_task["task"] != head or other_task["level"] != "user":
                raise ConfigError(f"{SECTION}.{head}.data: {source} holds {other_task['task']} labels at "
                                  f"{other_task['level']} level; the {head} head needs {head} at user level")
            if _users_digest(source) != _users_digest(cfg.data_path):
                raise ConfigError(f"{SECTION}.{head}.data: {source} has other user ids than {cfg.data_path} "
                                  "(vocab/users.tsv differs): prepare both from the same log and options")
            checksums[source] = other["checksum"]
        sources[head] = source
    order = ("next_item", *BINARY_HEADS)
    width = aggregate_preprocessor(cfg.data_path).width if cfg.aggregates else 0
    return TaskData(task["task"], task["level"], meta["num_items"], meta["num_categories"],
                    meta["task"]["counts"]["train"]["examples"], tuple(h for h in order if h in heads), sources, checksums,
                    width, meta["task"].get("has_prices", False))


def aggregate_preprocessor(data_path: str):
    """The logreg preparation of the RFM aggregates (task/train.parquet, the classical models' table) fitted
    on the training split: signed log1p of the heavy-tailed columns, median fill and missingness
    indicators, standardised."""
    from seqjax.models.classical import RECIPES, Preprocessor, feature_columns, feature_matrix

    train = pq.read_table(Path(data_path) / TASK_DIR / "train.parquet")
    columns, _ = feature_columns(train.schema)
    return Preprocessor.fit(feature_matrix(train, columns), columns, *RECIPES["logreg"])


def aggregate_inputs(data_path: str, split: str) -> np.ndarray:
    """float32 [E, D]: `split`'s aggregates through `aggregate_preprocessor`: every statistic comes from the
    training split, so nothing of valid or test leaks."""
    from seqjax.models.classical import feature_matrix

    prep = aggregate_preprocessor(data_path)
    table = pq.read_table(Path(data_path) / TASK_DIR / f"{split}.parquet", columns=list(prep.columns))
    return prep.transform(feature_matrix(table, prep.columns)).astype(np.float32)


@dataclasses.dataclass
class SideTable:
    """Per example of one split (index = the `example` of its batches): what the batch lacks."""

    cutoff_gap: np.ndarray  # int32 [E], log2 bucket of the seconds from the last history event to the cutoff
    labels: dict[str, np.ndarray]  # binary head -> int32 [E]
    labelled: dict[str, np.ndarray]  # binary head -> float32 [E], 1 where the head has a label
    aggregates: np.ndarray | None = None  # float32 [E, D] `aggregate_inputs`, when the run uses them


def side_table(data: TaskData, split: str, data_path: str) -> SideTable:
    """Reads data_path's task/<split>.parquet (and each other head's) and joins labels on (user, cutoff)."""
    keys = pq.read_table(Path(data_path) / TASK_DIR / f"{split}.parquet",
                         columns=["user", "cutoff", "label", "secs_since_last_event"])
    secs = keys.column("secs_since_last_event").to_numpy(zero_copy_only=False).astype(np.float64)
    none = ~np.isfinite(secs)
    gap = gap_bucket(np.where(none, 0, secs).astype(np.int64), none).astype(np.int32)
    n = keys.num_rows
    labels, labelled = {}, {}
    for head, source in data.sources.items():
        if source == data_path:
            labels[head] = keys.column("label").to_numpy().astype(np.int32)
            labelled[head] = np.ones(n, np.float32)
            continue
        other = pq.read_table(Path(source) / TASK_DIR / f"{split}.parquet", columns=["user", "cutoff", "label"])
        left = pa.table({"user": keys.column("user"), "cutoff": keys.column("cutoff"), "row": np.arange(n)})
        joined = left.join(other.rename_columns(["user", "cutoff", "y"]), keys=["user", "cutoff"],
                           join_type="left outer").sort_by("row")
        if joined.num_rows != n:
            raise ValueError(f"{source}: (user, cutoff) is not unique in its {split} split")
        y = joined.column("y")
        labelled[head] = y.is_valid().to_numpy(zero_copy_only=False).astype(np.float32)
        labels[head] = y.fill_null(0).to_numpy().astype(np.int32)
        if n and labelled[head].mean() < 1.0:
            print(f"warning: {head} labels from {source} cover {labelled[head].mean():.1%} of the {split} examples "
                  f"of {data_path} (joined on user and cutoff); the rest are left out of the {head} head",
                  file=sys.stderr, flush=True)
    aggregates = aggregate_inputs(data_path, split) if data.num_aggregates else None
    return SideTable(gap, labels, labelled, aggregates)


def attach(batch: dict[str, np.ndarray], table: SideTable) -> dict[str, np.ndarray]:
    """The model's inputs of a task batch: sequences, lengths, candidate, weight, cutoff_gap, and per binary
    head `<head>_label` / `<head>_weight` (0 on padding rows and rows without that head's label)."""
    rows = np.maximum(batch["example"], 0)
    real = batch["weight"]
    out = {k: batch[k] for k in (*SEQUENCE_FIELDS, "lengths", "candidate", "weight")}
    out["cutoff_gap"] = np.where(real > 0, table.cutoff_gap[rows], 0).astype(np.int32)
    for head in table.labels:
        out[f"{head}_label"] = table.labels[head][rows]
        out[f"{head}_weight"] = table.labelled[head][rows] * real
    if table.aggregates is not None:
        out["aggregates"] = np.where(real[:, None] > 0, table.aggregates[rows], 0.0).astype(np.float32)
    return out


def bind(workdir: Path, cfg: SequenceTaskConfig, data: TaskData, allow_config_change: bool) -> None:
    """Records the config and data checksums in a new run dir, or checks them against an existing one."""
    workdir.mkdir(parents=True, exist_ok=True)
    resolved = config_lib.to_dict(cfg)
    path = workdir / CONFIG_FILE
    if path.exists():
        changed = config_lib.diff(yaml.safe_load(path.read_text()) or {}, resolved)
        if changed and not allow_config_change:
            raise run_dir.RunDirError(f"{workdir} was started with a different config (changed: {', '.join(changed)});"
                                      " use a new workdir, or allow the config change to resume anyway")
    check_data(workdir, data)
    run_dir.write_atomic(path, yaml.safe_dump(resolved, sort_keys=False))
    run_dir.write_atomic(workdir / DATA_FILE, json.dumps(
        {str(Path(p).resolve()): c for p, c in data.checksums.items()}, indent=1))


def check_data(workdir: Path, data: TaskData) -> None:
    """Refuses prepared data whose checksum differs from what the run was trained on."""
    path = workdir / DATA_FILE
    if not path.exists():
        return
    trained = json.loads(path.read_text())
    for p, checksum in data.checksums.items():
        before = trained.get(str(Path(p).resolve()))
        if before is not None and before != checksum:
            raise run_dir.RunDirError(f"data checksum of {p} differs from the one {workdir} was trained on")


def head_labels(cfg: SequenceTaskConfig, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{binary head: (example index int64, label int32)} of the examples of `split` that have that head's label."""
    table = side_table(resolve_data(cfg), split, cfg.data_path)
    return {h: (np.flatnonzero(table.labelled[h] > 0), table.labels[h][table.labelled[h] > 0]) for h in table.labels}
