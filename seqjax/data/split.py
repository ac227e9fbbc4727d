"""Clean events -> final ids and train/valid/test `SequenceRecord`s, by leave-one-out or by time.

Ids are given by first appearance in time order (time to the microsecond, then read order), so they do not
depend on how the raw ids look: users 0..U-1, items 1..V (0 is padding), categories 1..C (0 = none).

`loo`: a user's last event is the test target and the second-last the validation target.
  train = events[:-2]; valid = (events[:-2] -> events[-2]); test = (events[:-1] -> events[-1]), so the
  test history contains the validation target. Users with < 3 events only train, with all their events.
`temporal`: two cut times, valid_cut < test_cut.
  train = each user's events before valid_cut (users with none get no train record);
  valid = for users with an event in [valid_cut, test_cut): events before valid_cut -> first event at/after it;
  test  = for users with an event >= test_cut: events before test_cut -> first event at/after it.
  The item and category vocabularies are the training period's only (other categories read as 0, none).
  History items outside it are dropped from histories (counted as `oov_history_events`); a target outside
  it is kept with target id -1 (OOV_TARGET): evaluation must count it as a miss, and its share is reported
  as `oov_target_share`. Valid/test histories may be empty under `temporal` (a user first seen after the
  cut); never under `loo`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from seqjax.data.clean import Events
from seqjax.data.formats.base import PrepareError
from seqjax.data.schema import SPLITS, SequenceRecord
from seqjax.data.timestamps import iso, parse_time

OOV_TARGET = -1  # temporal split: the target item was never seen in training; counts as a miss


@dataclasses.dataclass
class Split:
    """The records of each split (in user order), the id -> raw id tables, and per-split statistics."""

    records: dict[str, list[SequenceRecord]]
    users: pa.Array  # raw user id of user u at [u]
    items: pa.Array  # raw item id of item i at [i - 1]
    categories: pa.Array  # raw category id of category c at [c - 1]
    stats: dict[str, dict]  # split -> records, events, repeat_target_share, oov_*
    protocol: dict  # kind, and for temporal the cuts (ISO, unix, how chosen)


def first_appearance_ids(codes: np.ndarray, num_codes: int, start: int = 0) -> np.ndarray:
    """int64 [num_codes]: `start`, `start + 1`, ... in order of first occurrence in `codes`; -1 if absent."""
    ids = np.full(num_codes, -1, np.int64)
    present, first = np.unique(codes, return_index=True)
    ids[present[np.argsort(first)]] = np.arange(start, start + len(present))
    return ids


def resolve_cut(spec: str, timestamps: np.ndarray, what: str) -> tuple[int, str]:
    """(unix seconds, how chosen) for 'q0.8' (a quantile of all event times) or a date/ISO time/unix seconds."""
    text = str(spec).strip()
    if text.lower().startswith("q"):
        try:
            q = float(text[1:])
        except ValueError:
            q = -1.0
        if not 0.0 < q < 1.0:
            raise PrepareError(f"{what}: quantile {text!r} must be q<x> with 0 < x < 1, e.g. q0.8")
        cut = int(np.quantile(timestamps, q, method="higher"))
        return cut, f"quantile {q} of the {len(timestamps):,} clean event timestamps"
    return parse_time(text, what), "given"


def has_repeats(records: list[SequenceRecord]) -> bool:
    """Does any record's history hold an item twice? On the training records this decides filter_seen=auto
    without looking at the evaluation targets."""
    if not records:
        return False
    items = np.concatenate([r.items for r in records]).astype(np.int64)
    record = np.repeat(np.arange(len(records), dtype=np.int64), [len(r.items) for r in records])
    key = record * (int(items.max(initial=0)) + 1) + items
    return len(np.unique(key)) < len(key)


def make_split(events: Events, kind: str, valid_cut: str = "q0.8", test_cut: str = "q0.9",
               has_timestamps: bool = True) -> Split:
    """Assigns final ids and builds the records of `kind` ('loo' or 'temporal'); see the module doc."""
    if not len(events):
        raise PrepareError("no events left to split")
    time = events.time_key()
    by_time = np.lexsort((events.order, time))
    user_id = first_appearance_ids(events.user[by_time], len(events.user_names))
    protocol: dict = {"kind": kind}
    if kind == "loo":
        train_mask = np.ones(len(events), bool)
        protocol["description"] = "leave-one-out: last event -> test target, second-last -> valid target"
    elif kind == "temporal":
        if not has_timestamps:
            raise PrepareError("split 'temporal' needs timestamps, and this data has none (use split: loo)")
        v_cut, v_how = resolve_cut(valid_cut, events.timestamp, "valid_cut")
        t_cut, t_how = resolve_cut(test_cut, events.timestamp, "test_cut")
        if v_cut >= t_cut:
            raise PrepareError(f"valid_cut ({iso(v_cut)}) must be before test_cut ({iso(t_cut)})")
        protocol.update(valid_cut={"iso": iso(v_cut), "unix": v_cut, "chosen_by": v_how, "spec": str(valid_cut)},
                        test_cut={"iso": iso(t_cut), "unix": t_cut, "chosen_by": t_how, "spec": str(test_cut)},
                        oov_target_id=OOV_TARGET)
        train_mask = events.timestamp < v_cut
    else:
        raise PrepareError(f"unknown split {kind!r} (use loo or temporal)")
    item_id = first_appearance_ids(events.item[by_time][train_mask[by_time]], len(events.item_names), start=1)
    # Categories, like items, are known from the training period only (0 = none for the others).
    cats = events.category[by_time][train_mask[by_time]]
    cat_id = np.zeros(len(events.category_names) + 1, np.int64)  # code 0 (none) stays id 0
    cat_id[1:] = first_appearance_ids(cats[cats > 0] - 1, len(events.category_names), start=1)

    # Final-id columns, each user's events together and oldest first.
    uid = user_id[events.user]
    order = np.lexsort((events.order, time, uid))
    cols = _Columns(user=uid[order], item=item_id[events.item[order]].astype(np.int32),
                    ts=events.timestamp[order], event=events.event[order].astype(np.int8),
                    category=_category_ids(events.category[order], cat_id))
    if kind == "loo":
        records, oov_hist = _loo(cols), {s: 0 for s in SPLITS}
    else:
        records, oov_hist = _temporal(cols, v_cut, t_cut)
    stats = {s: _stats(records[s], oov_hist[s], has_targets=s != "train") for s in SPLITS}
    return Split(records=records, users=_names(events.user_names, user_id),
                 items=_names(events.item_names, item_id - 1), categories=_names(events.category_names, cat_id[1:] - 1),
                 stats=stats, protocol=protocol)


def _category_ids(codes: np.ndarray, cat_id: np.ndarray) -> np.ndarray:
    """Final category ids; 0 for none and for categories absent from the training period (id -1)."""
    return np.maximum(cat_id[codes], 0).astype(np.int32)


def _names(names: pa.Array, ids: np.ndarray) -> pa.Array:
    """Raw names ordered by id: the name of code c goes to position ids[c]; codes with id < 0 are left out."""
    present = np.flatnonzero(ids >= 0)
    return names.take(pa.array(present[np.argsort(ids[present])]))


@dataclasses.dataclass
class _Columns:
    """Final-id event columns sorted by (user, time, read order); N rows."""

    user: np.ndarray  # int64 [N]
    item: np.ndarray  # int32 [N], -1 for items outside the vocabulary (temporal only)
    ts: np.ndarray  # int64 [N]
    event: np.ndarray  # int8 [N]
    category: np.ndarray  # int32 [N]

    def users(self):
        """Yields (user, start, end) row ranges, in user order."""
        starts = np.flatnonzero(np.r_[True, self.user[1:] != self.user[:-1]])
        ends = np.r_[starts[1:], len(self.user)]
        for s, e in zip(starts.tolist(), ends.tolist()):
            yield int(self.user[s]), s, e

    def record(self, user: int, rows: slice | np.ndarray, target: int | None = None) -> SequenceRecord:
        extra = {} if target is None else dict(target=int(self.item[target]), target_timestamp=int(self.ts[target]),
                                               target_event=int(self.event[target]))
        return SequenceRecord(user=user, items=self.item[rows], timestamps=self.ts[rows], events=self.event[rows],
                              categories=self.category[rows], **extra)


def _loo(cols: _Columns) -> dict[str, list[SequenceRecord]]:
    out: dict[str, list[SequenceRecord]] = {s: [] for s in SPLITS}
    for user, s, e in cols.users():
        if e - s < 3:
            out["train"].append(cols.record(user, slice(s, e)))
            continue
        out["train"].append(cols.record(user, slice(s, e - 2)))
        out["valid"].append(cols.record(user, slice(s, e - 2), target=e - 2))
        out["test"].append(cols.record(user, slice(s, e - 1), target=e - 1))
    return out


def _temporal(cols: _Columns, valid_cut: int, test_cut: int) -> tuple[dict[str, list[SequenceRecord]], dict[str, int]]:
    out: dict[str, list[SequenceRecord]] = {s: [] for s in SPLITS}
    oov_hist = {s: 0 for s in SPLITS}
    for user, s, e in cols.users():
        v = s + int(np.searchsorted(cols.ts[s:e], valid_cut))
        t = s + int(np.searchsorted(cols.ts[s:e], test_cut))
        if v > s:
            out["train"].append(cols.record(user, slice(s, v)))  # all in vocabulary by construction
        if v < e and cols.ts[v] < test_cut:
            out["valid"].append(cols.record(user, slice(s, v), target=v))
        if t < e:
            known = np.flatnonzero(cols.item[s:t] >= 0) + s
            oov_hist["test"] += (t - s) - len(known)
            out["test"].append(cols.record(user, known, target=t))
    return out, oov_hist


def _stats(records: list[SequenceRecord], oov_history_events: int, has_targets: bool) -> dict:
    n = len(records)
    stats: dict = {"records": n, "events": int(sum(len(r.items) for r in records))}
    if has_targets:
        targets = np.array([r.target for r in records], np.int64)
        repeats = sum(bool(np.any(r.items == r.target)) for r in records)
        stats.update(repeat_target_share=repeats / n if n else 0.0,
                     oov_target_share=float(np.mean(targets == OOV_TARGET)) if n else 0.0,
                     oov_history_events=oov_history_events)
    return stats
