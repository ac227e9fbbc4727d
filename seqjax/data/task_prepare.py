"""`seqjax prepare --task purchase|churn`: clean events -> labelled examples in DATA_DIR/task/.

    seqjax prepare --format taobao --input UserBehavior.csv --out data/taobao --task purchase
    seqjax prepare --format cdnow --input CDNOW_master.txt --out data/cdnow --task churn

Written next to the next-item dataset, with the same ids (vocab/*.tsv):

* task/{train,valid,test}.parquet: one row per example, in the order of `labels.Examples` (cutoff,
  user, item): user, item (the candidate; 0 at user level), cutoff (unix s), label, then the
  aggregates of `features.aggregate_features` (column descriptions in metadata.json and in the
  Parquet field metadata).
* task/{train,valid,test}/part-XXXXX.array_record: one `schema.ExampleRecord` per Parquet row, same
  order: the user's last `max_len` events strictly before the cutoff and inside the feature window,
  with per-event context features.
* task/{train,valid,test}_next.parquet: per Parquet row, same order, the user's first event in the label
  window [cutoff, cutoff + horizon): next_item (0 when there is none), next_event, next_time. The target
  of `seqjax evaluate --task next_item` on a multi-task run; kept apart so no feature table holds it.

Nothing at or after an example's cutoff reaches its features or its history: labels.py and
features.py read only [cutoff - feature_window, cutoff), and histories are cut at the cutoff here.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqjax.config import ConfigError, to_dict
from seqjax.data.clean import Events
from seqjax.data.features import aggregate_features, describe, event_features, price_bucket
from seqjax.data.formats.base import PrepareError
from seqjax.data.labels import (
    NO_TIME,
    PURCHASE,
    Examples,
    TaskConfig,
    TimeIndex,
    build_examples,
)
from seqjax.data.schema import EVENT_TYPES, EXAMPLE_SCHEMA_VERSION, SPLITS, TASK_DIR, encode_examples
from seqjax.data.shards import write_shards
from seqjax.data.split import Split

KEY_COLUMNS = ("user", "item", "cutoff", "label")  # the first Parquet columns, in this order
EVENT_FEATURES = {  # the per-event features of an ExampleRecord (features.event_features and price_bucket)
    "hour": "local hour 0..23 of the event in task.timezone",
    "weekday": "local day of week 0..6 (Monday = 0) in task.timezone",
    "session_position": "0 = the first event of its session (a gap over task.session_gap opens one)",
    "gap_bucket": ("log2 bucket of the seconds since the user's previous event (0: none, 1: same second, "
                   "b >= 2: [2^(b-2), 2^(b-1)) s), see features.gap_bucket"),
    "price_bucket": ("log2 bucket of the event's money value (0: none; b >= 1: [2^(b-8), 2^(b-7))), see "
                     "features.price_bucket"),
}
CHUNK_EXAMPLES = 65_536  # examples encoded per gather: bounds the memory of the gathered events
_GENERIC = {f.name: f.default for f in dataclasses.fields(TaskConfig)}
# Options a format sets when they are not given (None); the rest come from TaskConfig.
FORMAT_DEFAULTS = {
    "taobao": {"timezone": "Asia/Shanghai"},  # UserBehavior's times are Beijing days
    "cdnow": {"split_mode": "customer_disjoint", "horizon": "39w"},  # the classic calibration/holdout protocol
}


@dataclasses.dataclass(frozen=True)
class TaskOptions(TaskConfig):
    """The `task:` section of PrepareConfig: a TaskConfig whose None fields take the format's default."""

    horizon: str | None = None  # label window [cutoff, cutoff + horizon); None: cdnow 39w, else 1d
    split_mode: Literal["rolling", "customer_disjoint"] | None = None  # None: cdnow customer_disjoint, else rolling
    timezone: str | None = None  # IANA zone of the day grid and time features; None: taobao Asia/Shanghai, else UTC
    max_len: int = 200  # events per example history: the user's most recent before the cutoff

    def validate(self) -> None:
        if self.max_len < 1:
            raise ConfigError(f"task.max_len: must be >= 1, got {self.max_len}")
        TaskConfig.validate(resolve_options(self, ""))


def resolve_options(options: TaskConfig, fmt: str) -> TaskOptions:
    """Fills the options left None with `fmt`'s defaults (FORMAT_DEFAULTS), then TaskConfig's."""
    if not isinstance(options, TaskOptions):
        options = TaskOptions(**{f.name: getattr(options, f.name) for f in dataclasses.fields(TaskConfig)})
    defaults = {**_GENERIC, **FORMAT_DEFAULTS.get(fmt, {})}
    return dataclasses.replace(options, **{k: defaults[k] for k in ("horizon", "split_mode", "timezone")
                                           if getattr(options, k) is None})


def format_defaults_used(options: TaskConfig, fmt: str) -> dict[str, str]:
    """option -> value for the options `fmt` set because they were not given (None), for the card."""
    return {k: v for k, v in FORMAT_DEFAULTS.get(fmt, {}).items() if getattr(options, k) is None}


def default_drop_duplicates(fmt: str, task: TaskConfig | None) -> bool:
    """CDNOW has day dates and one placeholder item: same-day purchases look like duplicates but are real."""
    return not (task is not None and fmt == "cdnow")


def config_problems(task: TaskConfig, split: str, max_events_per_user: int) -> None:
    """ConfigError for prepare options a task cannot be built with."""
    if max_events_per_user > 0:
        raise ConfigError("max_events_per_user: cannot be used with a task: it keeps each user's most recent "
                          "events, chosen with events after the cutoffs (label leakage); task.max_len bounds "
                          "the histories instead, counting back from each cutoff")
    if split != "loo":
        raise ConfigError(f"split: {split!r} does not go with a task, which splits by its own cutoffs "
                          "(task.split_mode); leave split at loo so every item has an id")


def kcore_warning(min_user_count: int, min_item_count: int) -> str | None:
    if min_user_count <= 1 and min_item_count <= 1:
        return None
    return (f"k-core filtering (min_user_count={min_user_count}, min_item_count={min_item_count}) counts "
            "events over the whole log, after the cutoffs too: which users and items remain depends on the "
            "future of each example")


def check_input(task: TaskConfig, has_timestamps: bool, has_event_types: bool) -> None:
    """PrepareError for a log the task cannot be built from (checked right after reading)."""
    if not has_timestamps:
        raise PrepareError(f"task {task.task}: needs timestamps, and this log has none")
    if task.task == "purchase" and not has_event_types:
        raise PrepareError("task purchase: needs event types to find purchases, and this log has none "
                           "(give an event column, or use --task churn)")


def check_events(task: TaskConfig, events: Events) -> None:
    """PrepareError for clean events the task cannot be built from."""
    if task.task == "purchase" and not np.any(events.event == PURCHASE):
        seen = ", ".join(EVENT_TYPES[e - 1] if e else "unrecorded" for e in np.unique(events.event).tolist())
        raise PrepareError(f"task purchase: the clean log has no purchase events (event types seen: {seen}; "
                           "map the raw purchase type with event_map, or use --task churn)")


@dataclasses.dataclass
class TaskEvents:
    """Clean events in final ids (vocab/*.tsv), sorted by user, then time, then read order (N rows)."""

    user: np.ndarray  # int64 [N], 0-based user id
    item: np.ndarray  # int64 [N], item id 1..V
    timestamp: np.ndarray  # int64 [N]
    event: np.ndarray  # int8 [N]
    category: np.ndarray  # int64 [N], 0 = none
    price: np.ndarray  # float64 [N], NaN = unknown


def _ids(codes: np.ndarray, names: pa.Array, vocab: pa.Array, first: int) -> np.ndarray:
    """Final id of each code: position of its raw name in `vocab` (the split's id order) + `first`."""
    at = pc.index_in(names.cast(pa.large_string()), value_set=vocab.cast(pa.large_string()))
    ids = pc.fill_null(at, -1).to_numpy(zero_copy_only=False).astype(np.int64)[codes]  # names k-core dropped: -1
    if len(ids) and ids.min() < 0:
        raise AssertionError("the split's vocabulary lacks ids of clean events")
    return ids + first


def final_events(events: Events, split: Split) -> TaskEvents:
    """The clean events in the ids `split` gave (the next-item dataset's), sorted by user and time."""
    user = _ids(events.user, events.user_names, split.users, 0)
    item = _ids(events.item, events.item_names, split.items, 1)
    category = np.zeros(len(events), np.int64)
    has = events.category > 0
    if has.any():
        category[has] = _ids(events.category[has] - 1, events.category_names, split.categories, 1)
    order = np.lexsort((events.order, events.time_key(), user))
    return TaskEvents(user[order], item[order], events.timestamp[order], events.event[order], category[order],
                      events.price[order])


@dataclasses.dataclass
class Histories:
    """Per example, the rows [start, end) of TaskEvents that make its history (E examples)."""

    start: np.ndarray  # int64 [E]
    end: np.ndarray  # int64 [E], the first row at or after the cutoff
    in_window: np.ndarray  # int64 [E], events in the feature window before truncation to max_len


def histories(ev: TaskEvents, examples: Examples, task: TaskOptions) -> Histories:
    idx = TimeIndex(ev.user, ev.timestamp)
    if not np.array_equal(idx.order, np.arange(len(idx))):
        raise AssertionError("TaskEvents must be sorted by user, then time")
    window = task.window_s
    lower = np.full(len(examples), NO_TIME, np.int64) if window is None else examples.cutoff - window
    a, b = idx.find(examples.user, lower), idx.find(examples.user, examples.cutoff)
    return Histories(start=np.maximum(a, b - task.max_len), end=b, in_window=b - a)


def encoded_examples(ev: TaskEvents, context: dict[str, np.ndarray], examples: Examples, hist: Histories,
                     rows: np.ndarray) -> Iterator[bytes]:
    """The encoded ExampleRecords of `rows` (indices into `examples`), in that order."""
    chunk = CHUNK_EXAMPLES
    cols = {"items": ev.item, "timestamps": ev.timestamp, "events": ev.event, "categories": ev.category,
            **{k: context[k] for k in EVENT_FEATURES if k in context}, "price_bucket": price_bucket(ev.price)}
    for at in range(0, len(rows), chunk):
        r = rows[at:at + chunk]
        start, length = hist.start[r], hist.end[r] - hist.start[r]
        first = np.concatenate([[0], np.cumsum(length)[:-1]])
        gather = np.repeat(start - first, length) + np.arange(int(length.sum()))  # event rows, example by example
        yield from encode_examples(examples.user[r], examples.item[r], examples.cutoff[r], examples.label[r], length,
                                   {k: v[gather] for k, v in cols.items()})


def next_events(ev: TaskEvents, examples: Examples, hist: Histories, horizon_s: int) -> pa.Table:
    """Per example, the user's first event in [cutoff, cutoff + horizon): next_item (0 = none),
    next_event (-1 = none) and next_time (-1 = none). `hist.end` is already that event's row."""
    row = np.minimum(hist.end, max(len(ev.user) - 1, 0))
    has = (hist.end < len(ev.user)) & (ev.user[row] == examples.user) & (
        ev.timestamp[row] < examples.cutoff + horizon_s) if len(ev.user) else np.zeros(len(examples), bool)
    return pa.table({"next_item": np.where(has, ev.item[row], 0).astype(np.int64),
                     "next_event": np.where(has, ev.event[row], -1).astype(np.int8),
                     "next_time": np.where(has, ev.timestamp[row], -1).astype(np.int64)})


def example_table(examples: Examples, features: pa.Table) -> pa.Table:
    """KEY_COLUMNS, then the feature columns (with their descriptions), one row per example."""
    keys = examples.table()
    columns = [keys.column(k) for k in KEY_COLUMNS] + features.columns
    fields = [keys.schema.field(k) for k in KEY_COLUMNS] + list(features.schema)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def write_task(out: Path, events: Events, split: Split, task: TaskOptions, has_prices: bool,
               warnings: list[str], defaults_used: dict[str, str]) -> dict:
    """Builds and writes DATA_DIR/task/; returns metadata.json's "task" section."""
    ev = final_events(events, split)
    examples = build_examples(ev.user, ev.item, ev.timestamp, ev.event, None, task)
    if not len(examples):
        raise PrepareError("task: no examples: no user has an event in the feature window before any cutoff")
    features = aggregate_features(ev.user, ev.item, ev.timestamp, ev.event, ev.category,
                                  ev.price if has_prices else None, examples, task)
    table = example_table(examples, features)
    context = event_features(ev.user, ev.timestamp, task.timezone, task.session_gap_s)
    hist = histories(ev, examples, task)
    following = next_events(ev, examples, hist, task.horizon_s)
    folder = out / TASK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for k, name in enumerate(SPLITS):
        rows = np.flatnonzero(examples.split == k)
        pq.write_table(table.take(pa.array(rows)), folder / f"{name}.parquet")
        pq.write_table(following.take(pa.array(rows)), folder / f"{name}_next.parquet")
        written = write_shards(folder / name, encoded_examples(ev, context, examples, hist, rows))
        length = hist.end[rows] - hist.start[rows]
        counts[name] = {
            "examples": written, "users": len(np.unique(examples.user[rows])),
            "cutoffs": len(np.unique(examples.cutoff[rows])),
            "history_events_mean": float(length.mean()) if len(rows) else 0.0,
            "history_events_max": int(length.max()) if len(rows) else 0,
            "histories_truncated": int((hist.in_window[rows] > task.max_len).sum()),
            "with_next_event": int((following.column("next_item").to_numpy()[rows] > 0).sum()),
        }
    protocol = examples.protocol()
    protocol["warnings"] = warnings
    return {
        "example_schema_version": EXAMPLE_SCHEMA_VERSION,
        "config": to_dict(task),
        "format_defaults_used": defaults_used,
        "protocol": protocol,
        "counts": counts,
        "class_balance": examples.balance(),
        "excluded_users": _excluded_totals(examples.counts),
        "columns": table.column_names,
        "features": describe(features),
        "event_features": EVENT_FEATURES,
        "has_prices": has_prices,
        "warnings": warnings,
        "files": {"parquet": [f"{TASK_DIR}/{s}.parquet" for s in SPLITS],
                  "next_events": [f"{TASK_DIR}/{s}_next.parquet" for s in SPLITS],
                  "shards": [f"{TASK_DIR}/{s}/part-*.array_record" for s in SPLITS]},
    }


def _excluded_totals(per_cutoff: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in per_cutoff:
        for reason, n in c["excluded_users"].items():
            out[reason] = out.get(reason, 0) + n
    return out


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def summary_lines(section: dict, out: Path) -> list[str]:
    """Every resolved task option, the cutoffs, the class balance and the files, for prepare's printout."""
    cfg, proto = section["config"], section["protocol"]
    options = "  ".join(f"{k}={v}" for k, v in cfg.items())
    lines = [f"  task: {options}"]
    if section["format_defaults_used"]:
        lines.append("  task options from the format's defaults: "
                     + ", ".join(f"{k}={v}" for k, v in section["format_defaults_used"].items()))
    lines.append("  task cutoffs: " + ", ".join(f"{c['split']} {c['iso']}" for c in proto["cutoffs"]))
    lines.append("  task examples: " + "  ".join(
        f"{s} {b['examples']:,} ({b["positive_rate"]:.2%} positive)" for s, b in section["class_balance"].items()))
    lines += [f"  warning: {w}" for w in section["warnings"]]
    lines.append(f"  wrote {out}/{TASK_DIR}/{{train,valid,test}}.parquet and {out}/{TASK_DIR}/{{train,valid,test}}/")
    return lines
