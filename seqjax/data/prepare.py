"""`seqjax prepare`: a raw interaction log -> DATA_DIR with train/valid/test shards, vocabularies,
`report.json` (what was dropped and why) and `metadata.json` (what the dataset is and how it was made).

    seqjax prepare --format movielens --input ../shared/data/ml100k/u.data --out data/ml100k
    seqjax prepare --format generic --input log.csv --out data/x --split temporal --set valid_cut=q0.8
    seqjax prepare --format yoochoose --input clicks=yoochoose-clicks.dat --input buys=yoochoose-buys.dat --out data/yc
    seqjax prepare --format taobao --input UserBehavior.csv --out data/taobao --task purchase --set task.horizon=2d

With `--task purchase|churn` (or a `task:` section) prepare also writes labelled examples under
DATA_DIR/task/ (see seqjax.data.task_prepare).

Every option is a key of `PrepareConfig`: flags and `--set key=value` override a `--config` YAML file.
`metadata.json` is written last; a DATA_DIR without it is incomplete.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from seqjax.config import ConfigError, load, to_dict
from seqjax.data.clean import (
    Report,
    RowRules,
    cap_recent,
    drop_duplicates,
    k_core,
    sort_by_user_time,
    validate,
)
from seqjax.data.formats import (
    FORMATS,
    Columns,
    PrepareError,
    RawTable,
    read_cdnow,
    read_diginetica,
    read_generic,
    read_movielens,
    read_otto,
    read_retailrocket,
    read_sasrec,
    read_taobao,
    read_yoochoose,
)
from seqjax.data.schema import (
    EVENT_ALIASES,
    EXAMPLE_SCHEMA_VERSION,
    SCHEMA_VERSION,
    SPLITS,
    TASK_DIR,
)
from seqjax.data.shards import write_split
from seqjax.data.split import Split, has_repeats, make_split
from seqjax.data.task_prepare import (
    TaskOptions,
    check_events,
    check_input,
    config_problems,
    default_drop_duplicates,
    format_defaults_used,
    kcore_warning,
    resolve_options,
    summary_lines,
    warn,
    write_task,
)
from seqjax.data.timestamps import iso, parse_time

# Every input is an event log, read as one in the order given; yoochoose's official files are named by role.
INPUT_ROLES = ("events", "clicks", "buys")
_ROLE_FORMATS = {"clicks": ("yoochoose",), "buys": ("yoochoose",)}  # roles other than events: who takes them
_PATH_READERS = {"sasrec": read_sasrec, "movielens": read_movielens, "taobao": read_taobao,
                 "retailrocket": read_retailrocket, "diginetica": read_diginetica, "otto": read_otto,
                 "cdnow": read_cdnow}
_NOT_IN_CHECKSUM = ("out", "inputs", "strict")  # where files live and how errors are reported: not the data
_UNIT_PRICE_FORMATS = ("yoochoose",)  # price column is per unit: an event's value is price x quantity

__all__ = ["PrepareConfig", "PrepareError", "add_prepare_arguments", "main", "prepare", "run_prepare"]


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How to turn a raw log into a prepared dataset. Times: 'YYYY-MM-DD', ISO-8601 or unix seconds."""

    format: Literal["generic", "sasrec", "movielens", "taobao", "retailrocket", "yoochoose", "diginetica", "otto",
                    "cdnow"] = "generic"  # input format, see seqjax.data.formats
    inputs: tuple[str, ...] = ()  # 'PATH' or 'ROLE=PATH' (events; yoochoose: clicks, buys); several are read as one
    out: str = ""  # DATA_DIR to write
    split: Literal["loo", "temporal"] = "loo"  # evaluation protocol, see seqjax.data.split
    # temporal: start of validation: ISO-8601 (UTC unless it has an offset), unix seconds, or 'q<x>' = quantile of
    # event times
    valid_cut: str | dt.date = "q0.8"
    test_cut: str | dt.date = "q0.9"  # temporal: start of test; same forms
    user_col: str = "user_id"  # generic: column names
    item_col: str = "item_id"
    timestamp_col: str = "timestamp"  # '' = the log has no times: file order is time order
    event_col: str = "event_type"  # optional column
    category_col: str = "category_id"  # optional column
    column_names: tuple[str, ...] = ()  # generic CSV without a header row: the name of each field
    delimiter: str = ","  # generic CSV field separator ('\t' or 'tab' for tabs)
    timestamp_unit: Literal["auto", "s", "ms", "iso"] = "auto"  # auto: detected from the values
    min_timestamp: str | dt.date = "1990-01-01"  # rows before this are dropped (timestamp_out_of_range); ISO or unix s
    max_timestamp: str | dt.date = ""  # rows at/after this are dropped; '' = when prepare runs (recorded)
    event_map: dict[str, str] = dataclasses.field(default_factory=dict)  # raw event type -> canonical type
    unknown_events: Literal["drop", "error"] = "drop"  # what an event type outside the vocabulary does
    drop_duplicates: bool | None = None  # drop repeats of (user, item, timestamp, event); needs timestamps;
    #                                      None = on, except cdnow with a task (same-day purchases are real)
    min_user_count: int = 0  # k-core: keep users with at least this many events (0 = off)
    min_item_count: int = 0  # k-core: keep items with at least this many events (0 = off)
    kcore_one_pass: bool = False  # one filtering pass (as some papers did) instead of a fixed point
    max_events_per_user: int = 0  # keep each user's most recent N >= 3 events, before k-core (0 = all; loo only)
    strict: bool = False  # error at the first row a row-level reason would drop (see clean.ROW_REASONS)
    task: TaskOptions | None = None  # purchase/churn examples under DATA_DIR/task/ (task_prepare); None = none

    def __post_init__(self):
        # YAML reads an unquoted 1998-01-01 as a date: keep times as text.
        for name in ("valid_cut", "test_cut", "min_timestamp", "max_timestamp"):
            value = getattr(self, name)
            if isinstance(value, dt.date):
                object.__setattr__(self, name, value.isoformat())

    def validate(self) -> None:
        for name in ("min_user_count", "min_item_count", "max_events_per_user"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.event_map, dict):
            raise ConfigError(f"event_map: expected a mapping raw -> canonical, got {self.event_map!r}")
        for raw, canonical in self.event_map.items():
            if str(canonical).lower() not in EVENT_ALIASES:
                raise ConfigError(f"event_map.{raw}: {canonical!r} is not an event type "
                                  f"(one of {', '.join(sorted(set(EVENT_ALIASES.values())))})")
        if not self.delimiter:
            raise ConfigError("delimiter: must not be empty")
        if self.task is not None:
            self.task.validate()
            config_problems(self.task, self.split, self.max_events_per_user)
        if self.max_events_per_user > 0 and self.split == "temporal":
            raise ConfigError("max_events_per_user: cannot be used with split=temporal: it keeps each user's most "
                              "recent events counting back from the end of the log, so how much history a user "
                              "keeps before a cut depends on its events after it (leakage)")
        if 0 < self.max_events_per_user < 3:
            raise ConfigError(f"max_events_per_user: {self.max_events_per_user} leaves no user the 3 events a "
                              "leave-one-out valid and test record need; use 0 (no cap) or at least 3")


def prepare(cfg: PrepareConfig, *, command: str | None = None, echo: bool = True) -> dict:
    """Reads, cleans, splits and writes the dataset described by `cfg`; returns the metadata written.

    Raises PrepareError (one-line message naming the file/line) for input that cannot be prepared.
    """
    started = time.monotonic()
    cfg.validate()
    if not cfg.out:
        raise PrepareError("no output directory (give --out DATA_DIR or out: in the config)")
    task = None if cfg.task is None else resolve_options(cfg.task, cfg.format)
    dedup = default_drop_duplicates(cfg.format, task) if cfg.drop_duplicates is None else cfg.drop_duplicates
    warnings = []  # about the task's data, printed now and kept in its card
    if task is not None and (w := kcore_warning(cfg.min_user_count, cfg.min_item_count)):
        warnings.append(w)
        warn(w)
    inputs = _parse_inputs(cfg.inputs)
    tables = [_read(cfg, role, path) for role, path in inputs]
    for t in tables:
        if t.rows_read == 0:
            raise PrepareError(f"input file has no data rows: {t.path}")
    has_timestamps = tables[0].timestamp is not None
    has_event_types = any(t.event is not None for t in tables)
    if task is not None:
        check_input(task, has_timestamps, has_event_types)
    resolved, time_range = dataclasses.replace(cfg, drop_duplicates=dedup, task=task), None
    if has_timestamps:
        upper = parse_time(cfg.max_timestamp, "max_timestamp") if cfg.max_timestamp else int(time.time())
        time_range = (parse_time(cfg.min_timestamp, "min_timestamp"), upper)
        resolved = dataclasses.replace(resolved, max_timestamp=iso(upper))
    rules = RowRules(time_range=time_range or (0, 0), timestamp_unit=cfg.timestamp_unit,
                     event_map={k: EVENT_ALIASES[str(v).lower()] for k, v in cfg.event_map.items()},
                     unknown_events=cfg.unknown_events, strict=cfg.strict,
                     unit_price=cfg.format in _UNIT_PRICE_FORMATS)
    events, report, unit = validate(tables, rules)
    if has_timestamps and dedup:
        events = drop_duplicates(events, report)
    # The cap before k-core, so that the users and items kept meet the k-core thresholds.
    events = cap_recent(sort_by_user_time(events, report), cfg.max_events_per_user, report)
    events = k_core(events, cfg.min_user_count, cfg.min_item_count, cfg.kcore_one_pass, report)
    if not len(events):
        raise PrepareError(f"no events left after cleaning ({_drops_text(report)})")
    if task is not None:
        check_events(task, events)
    split = make_split(events, cfg.split, cfg.valid_cut, cfg.test_cut, has_timestamps)
    if cfg.split == "temporal" and (w := kcore_warning(cfg.min_user_count, cfg.min_item_count)):
        warn(w)
        split.protocol["warnings"] = [w]
    report.users, report.items = len(split.users), len(split.items)

    out = Path(cfg.out)
    _clear_outputs(out)
    _write_vocab(out / "vocab", split)
    for name in SPLITS:
        write_split(out, name, split.records[name])
    section = None
    if task is not None:
        defaults_used = format_defaults_used(cfg.task, cfg.format)
        if cfg.drop_duplicates is None and not dedup:
            defaults_used["drop_duplicates"] = False
        section = write_task(out, events, split, task, has_prices=any(t.price is not None for t in tables),
                             warnings=warnings, defaults_used=defaults_used)
    report_dict = report.as_dict()
    if section is not None:  # per cutoff: examples, positives, users excluded by reason
        report_dict["task_per_cutoff"] = section["protocol"]["per_cutoff"]
    (out / "report.json").write_text(json.dumps(report_dict, indent=2, ensure_ascii=False) + "\n")
    meta = _metadata(resolved, inputs, tables, split, report_dict, has_timestamps, unit, time_range,
                     repeats=has_repeats(split.records["train"]),
                     command=command if command is not None else shlex.join(sys.argv))
    if section is not None:
        meta["task"] = section
    (out / "metadata.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    if echo:
        print(_summary(meta, report, out, time.monotonic() - started))
    return meta


def _parse_inputs(specs: tuple[str, ...]) -> list[tuple[str, str]]:
    """['PATH', 'ROLE=PATH'] -> [(role, path)]; a bare path is an 'events' input."""
    if not specs:
        raise PrepareError("no input given (use --input PATH or inputs: in the config)")
    out = []
    for spec in specs:
        role, sep, path = spec.partition("=")
        if not sep or not role.isidentifier() or Path(spec).exists():
            role, path = "events", spec
        if role not in INPUT_ROLES:
            raise PrepareError(f"unknown input role {role!r} in {spec!r} (known: {', '.join(INPUT_ROLES)})")
        out.append((role, path))
    return out


def _read(cfg: PrepareConfig, role: str, path: str) -> RawTable:
    if role != "events" and cfg.format not in _ROLE_FORMATS[role]:
        raise PrepareError(f"input role {role!r} is for --format {' or '.join(_ROLE_FORMATS[role])}, "
                           f"not {cfg.format} (give the path alone)")
    if cfg.format == "yoochoose":
        return read_yoochoose(path, role)
    if cfg.format in _PATH_READERS:
        return _PATH_READERS[cfg.format](path)
    if cfg.format == "generic":
        columns = Columns(cfg.user_col, cfg.item_col, cfg.timestamp_col, cfg.event_col, cfg.category_col)
        delimiter = {"tab": "\t", "\\t": "\t"}.get(cfg.delimiter, cfg.delimiter)
        return read_generic(path, columns, delimiter, cfg.column_names)
    raise PrepareError(f"unknown format {cfg.format!r} (known: {', '.join(FORMATS)})")


def _clear_outputs(out: Path) -> None:
    """Removes what an earlier prepare wrote here, so no stale shard survives a smaller re-run."""
    (out / "metadata.json").unlink(missing_ok=True)
    for name in SPLITS:
        for old in [*(out / name).glob("part-*.array_record"), *(out / TASK_DIR / name).glob("part-*.array_record")]:
            old.unlink()
        (out / TASK_DIR / f"{name}.parquet").unlink(missing_ok=True)
        (out / TASK_DIR / f"{name}_next.parquet").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _write_vocab(folder: Path, split: Split) -> None:
    """vocab/{users,items,categories}.tsv: `id<TAB>raw_id`; tab, newline and backslash escaped as \\t \\n \\\\."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, names, first in (("users", split.users, 0), ("items", split.items, 1),
                               ("categories", split.categories, 1)):
        raw = names.cast(pa.large_string())
        if len(raw) and pc.any(pc.match_substring_regex(raw, r"[\t\n\r\\]")).as_py():
            for a, b in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
                raw = pc.replace_substring(raw, a, b)
        lines = [f"{i}\t{v}" for i, v in enumerate(raw.to_pylist(), start=first)]
        (folder / f"{name}.tsv").write_text("\n".join(["id\traw_id", *lines]) + "\n", encoding="utf-8")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


# Bumped whenever the same inputs and config give other data, so that runs refuse data prepared by another
# version (2: sub-second order and exact duplicates, the cap before k-core, training-period categories).
CLEANING_VERSION = 2


def _metadata(cfg: PrepareConfig, inputs, tables, split: Split, report: dict, has_timestamps: bool,
              unit: str | None, time_range, repeats: bool, command: str) -> dict:
    files = [{"role": role, "path": str(Path(path).resolve()), "sha256": _sha256(path),
              "bytes": Path(path).stat().st_size} for role, path in inputs]
    config = to_dict(cfg)
    identity = {"schema_version": SCHEMA_VERSION, "cleaning_version": CLEANING_VERSION,
                "inputs": sorted(f"{f['role']}:{f['sha256']}" for f in files),
                "config": {k: v for k, v in config.items() if k not in _NOT_IN_CHECKSUM}}
    if cfg.task is None:
        del identity["config"]["task"]  # datasets prepared before tasks existed keep their checksum
    else:
        identity["example_schema_version"] = EXAMPLE_SCHEMA_VERSION
    counts = {s: {k: v for k, v in st.items() if k in ("records", "events", "oov_history_events")}
              for s, st in split.stats.items()}
    return {
        "schema_version": SCHEMA_VERSION,
        "format": cfg.format,
        "num_items": len(split.items),
        "num_users": len(split.users),
        "num_categories": len(split.categories),
        "counts": counts,
        "split": split.protocol,
        "has_timestamps": has_timestamps,
        "has_event_types": any(t.event is not None for t in tables),
        "timestamp_unit": unit,
        "valid_time_range": None if time_range is None else {
            "iso": [iso(time_range[0]), iso(time_range[1])], "unix": list(time_range)},
        "train_has_repeats": repeats,
        "repeat_target_share": {s: split.stats[s]["repeat_target_share"] for s in ("valid", "test")},
        "oov_target_share": {s: split.stats[s]["oov_target_share"] for s in ("valid", "test")},
        "inputs": files,
        "checksum": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(),
        "command": command,
        "config": config,
        "report": report,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _drops_text(report: Report) -> str:
    parts = [f"{r} {n:,}" for r, n in report.dropped.items() if n]
    return "dropped: " + (", ".join(parts) if parts else "none")


def _summary(meta: dict, report: Report, out: Path, seconds: float) -> str:
    c = meta["counts"]
    lines = [
        (f"prepared {meta['format']} ({len(meta['inputs'])} file(s)) in {seconds:.1f}s: "
         f"{report.rows_read:,} rows read, {report.rows_kept:,} events kept"),
        f"  users {meta['num_users']:,}  items {meta['num_items']:,}  categories {meta['num_categories']:,}",
        f"  {_drops_text(report)}",
        *([f"  out of time order in the input: {report.out_of_order:,} events (kept, sorted by time)"]
          if report.out_of_order else []),
        "  " + "  ".join(f"{s} {c[s]['records']:,} records / {c[s]['events']:,} events" for s in SPLITS),
        f"  wrote {out}/{{train,valid,test}}/, {out}/vocab/, report.json, metadata.json",
    ]
    if "task" in meta:
        lines += summary_lines(meta["task"], out)
    return "\n".join(lines)


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """The `seqjax prepare` flags; each is shorthand for a PrepareConfig key."""
    parser.add_argument("--format", choices=FORMATS, metavar="FORMAT",
                        help="input format: " + ", ".join(FORMATS) + " (see seqjax.data.formats)")
    parser.add_argument("--input", action="append", metavar="[ROLE=]PATH", help="input file; repeat for several")
    parser.add_argument("--out", metavar="DATA_DIR", help="output directory")
    parser.add_argument("--split", choices=("loo", "temporal"), help="evaluation split protocol")
    parser.add_argument("--config", metavar="FILE", help="YAML file of PrepareConfig keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--strict", action="store_true", default=None, help="stop at the first bad row")
    parser.add_argument("--task", choices=("purchase", "churn"),
                        help="also write purchase/churn examples under DATA_DIR/task/ (sets task.task; other "
                             "task options: --set task.horizon=2d etc.)")


def run_prepare(args: argparse.Namespace) -> int:
    """Runs `seqjax prepare`; returns the exit code (2 with a one-line `error:` on stderr for bad input)."""
    flags = {"format": args.format, "inputs": args.input, "out": args.out, "split": args.split,
             "strict": args.strict}
    # JSON is YAML: each flag value reaches the config exactly as typed (no 'yes' -> True surprises).
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    if args.task is not None:
        overrides.append(f"task.task={json.dumps(args.task)}")
    overrides += list(args.set)
    try:
        cfg = load(PrepareConfig, args.config, overrides)
        prepare(cfg)
    except (PrepareError, ConfigError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:
        print(f"error: cannot parse {args.config}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seqjax prepare", description=__doc__.split("\n")[0])
    add_prepare_arguments(parser)
    return run_prepare(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
