"""Clean events -> leakage-free labelled examples for purchase and churn prediction.

An example is (user, item, cutoff): the model sees only events strictly before the cutoff (inside the
feature window) and predicts what happens in the label window [cutoff, cutoff + horizon).

* purchase / user: users with at least one event in the feature window; label 1 = a purchase event
  in the label window.
* purchase / user_item: (user, item) pairs the user touched in the feature window; label 1 = a
  purchase of that item in the label window.
* churn (user level): users with at least one event in the feature window; label 1 = no event at all
  in the label window.

Splits (`split_mode`):

* rolling: cutoffs on the data's day grid (local midnights in `timezone`): N training cutoffs
  `stride_days` apart, then one validation and one test cutoff. The global time rule holds: every
  training label window ends at or before the validation cutoff and every validation label window
  at or before the test cutoff, so no label a model is trained on lies in a period it is judged on.
* customer_disjoint (the classic CDNOW protocol): one calibration/holdout cutoff; customers are
  hashed with `seed` into train/valid/test, so the three splits share the time windows but not
  customers. With `horizon: 39w` on CDNOW the generated cutoff is 1997-10-01: 39 weeks of
  calibration, 39 weeks of holdout, and since every eligible customer has bought before, the label
  is a repeat purchase in the holdout.

The data is taken to cover whole days in `timezone`: from the midnight that starts the first event's
day to the midnight that ends the last event's day. Everything here is vectorised over users with
sorting and binary search; the only Python loops run over cutoffs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import re
import zoneinfo
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa

from seqjax.config import ConfigError
from seqjax.data.formats.base import PrepareError
from seqjax.data.schema import EVENT_ID, SPLITS
from seqjax.data.timestamps import parse_time

PURCHASE = EVENT_ID["purchase"]
DAY = 86_400
NO_TIME = np.iinfo(np.int64).min // 2  # "no lower bound" for a window start
EXCLUDED = ("no_events_before_cutoff", "no_events_in_feature_window")  # why a user is not an example
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """What to predict, from which history, and how examples are split. Durations: <number><s|m|h|d|w>."""

    task: Literal["purchase", "churn"] = "purchase"  # purchase: buys in the label window; churn: no event in it
    level: Literal["user", "user_item"] = "user"  # purchase only: one example per user, or per touched (user, item)
    horizon: str = "1d"  # label window [cutoff, cutoff + horizon), a fixed duration
    feature_window: str | None = None  # history seen: events in [cutoff - window, cutoff); None = all before cutoff
    split_mode: Literal["rolling", "customer_disjoint"] = "rolling"  # splits by time, or by customer (CDNOW)
    cutoffs: tuple[str | dt.date, ...] = ()  # explicit (ISO date/time in `timezone`, or unix seconds); () = generated
    num_train_cutoffs: int = 4  # rolling, generated: how many training cutoffs
    stride_days: int = 1  # rolling, generated: days between consecutive training cutoffs
    timezone: str = "UTC"  # IANA zone of the day grid and of hour/day-of-week features (taobao: Asia/Shanghai)
    session_gap: str = "30m"  # a gap longer than this starts a new session; a gap exactly this long does not
    valid_share: float = 0.1  # customer_disjoint: share of customers whose examples are validation
    test_share: float = 0.1  # customer_disjoint: share of customers whose examples are test
    seed: int = 0  # customer_disjoint: seed of the hash that assigns customers to splits

    def __post_init__(self):
        # YAML reads an unquoted 2024-01-05 as a date: keep cutoffs as text.
        object.__setattr__(self, "cutoffs", tuple(c.isoformat() if isinstance(c, dt.date) else c
                                                  for c in self.cutoffs))

    def validate(self) -> None:
        """Raises ConfigError (a ValueError) naming `task.<field>`."""
        if self.task not in ("purchase", "churn"):
            raise ConfigError(f"task.task: {self.task!r} is not one of ['purchase', 'churn']")
        if self.level not in ("user", "user_item"):
            raise ConfigError(f"task.level: {self.level!r} is not one of ['user', 'user_item']")
        if self.task == "churn" and self.level != "user":
            raise ConfigError("task.level: churn is a user-level task; user_item applies to purchase only")
        if self.split_mode not in ("rolling", "customer_disjoint"):
            raise ConfigError(f"task.split_mode: {self.split_mode!r} is not one of ['rolling', 'customer_disjoint']")
        parse_duration(self.horizon, "task.horizon")
        parse_duration(self.session_gap, "task.session_gap")
        if self.feature_window is not None:
            parse_duration(self.feature_window, "task.feature_window")
        if self.num_train_cutoffs < 1:
            raise ConfigError(f"task.num_train_cutoffs: must be >= 1, got {self.num_train_cutoffs}")
        if self.stride_days < 1:
            raise ConfigError(f"task.stride_days: must be >= 1, got {self.stride_days}")
        zone(self.timezone)
        for name in ("valid_share", "test_share"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"task.{name}: must be in (0, 1), got {getattr(self, name)}")
        if self.valid_share + self.test_share >= 1.0:
            raise ConfigError(f"task.valid_share + task.test_share: must be < 1 to leave training customers, "
                              f"got {self.valid_share} + {self.test_share}")
        if self.cutoffs:
            for c in self.cutoffs:
                parse_instant(c, self.timezone, "task.cutoffs")
            if self.split_mode == "rolling" and len(self.cutoffs) < 3:
                raise ConfigError(f"task.cutoffs: rolling needs at least 3 (training..., validation, test), "
                                  f"got {len(self.cutoffs)}")
            if self.split_mode == "customer_disjoint" and len(self.cutoffs) != 1:
                raise ConfigError(f"task.cutoffs: customer_disjoint takes exactly one calibration/holdout "
                                  f"cutoff, got {len(self.cutoffs)}")

    @property
    def horizon_s(self) -> int:
        return parse_duration(self.horizon, "task.horizon")

    @property
    def window_s(self) -> int | None:
        return None if self.feature_window is None else parse_duration(self.feature_window, "task.feature_window")

    @property
    def session_gap_s(self) -> int:
        return parse_duration(self.session_gap, "task.session_gap")


def parse_duration(text: str, what: str) -> int:
    """'1d', '12h', '30m', '39w', '90s' -> seconds (> 0); ConfigError naming `what` otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhdw])\s*", str(text))
    if not m:
        raise ConfigError(f"{what}: cannot read {text!r} as a duration <number><s|m|h|d|w>, e.g. 1d, 12h, 39w")
    seconds = round(float(m.group(1)) * _UNITS[m.group(2)])
    if seconds <= 0:
        raise ConfigError(f"{what}: must be longer than zero, got {text!r}")
    return seconds


def zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"task.timezone: unknown time zone {name!r} (an IANA name, e.g. UTC, "
                          "Asia/Shanghai)") from None


def parse_instant(text: str | float, timezone: str, what: str) -> int:
    """Unix seconds, or an ISO date / date-time (naive ones are local times in `timezone`) -> unix seconds."""
    return parse_time(text, what, zone(timezone), ConfigError)


def local_iso(seconds: int, timezone: str) -> str:
    """Unix seconds -> ISO time in `timezone`, e.g. '2017-12-02T00:00:00+08:00'."""
    return dt.datetime.fromtimestamp(int(seconds), zone(timezone)).isoformat()


def _local_date(seconds: int, tz: zoneinfo.ZoneInfo) -> dt.date:
    return dt.datetime.fromtimestamp(int(seconds), tz).date()


def _midnight(day: dt.date, tz: zoneinfo.ZoneInfo) -> int:
    return int(dt.datetime.combine(day, dt.time(), tz).timestamp())


def data_range(ts: np.ndarray, timezone: str) -> tuple[int, int]:
    """[start, end) unix seconds: local midnight of the first event's day .. midnight after the last's."""
    if not len(ts):
        raise PrepareError("no events: cannot place cutoffs")
    tz = zone(timezone)
    first, last = _local_date(int(np.min(ts)), tz), _local_date(int(np.max(ts)), tz)
    return _midnight(first, tz), _midnight(last + dt.timedelta(days=1), tz)


@dataclasses.dataclass(frozen=True)
class Cutoffs:
    """Resolved cutoffs, ascending, and the split each one's examples go to."""

    times: np.ndarray  # int64 [K], unix seconds, strictly increasing
    splits: tuple[str, ...]  # [K] 'train' | 'valid' | 'test'; customer_disjoint: 'by_customer'
    data_range: tuple[int, int]  # [start, end) unix seconds of the whole days the data covers
    chosen_by: str  # how they were chosen, for the protocol card


def resolve_cutoffs(ts: np.ndarray, cfg: TaskConfig) -> Cutoffs:
    """Generates the cutoffs (or checks the explicit ones) against the data's time range and the time rule.

    Raises PrepareError naming the data's range for a cutoff outside it or a label window past its end,
    and naming the offending cutoffs when explicit ones break the global time rule.
    """
    cfg.validate()
    tz = zone(cfg.timezone)
    start, end = data_range(np.asarray(ts), cfg.timezone)
    h = cfg.horizon_s
    span = (f"the data covers {local_iso(start, cfg.timezone)} .. {local_iso(end, cfg.timezone)} "
            f"({(end - start) / DAY:g} days in {cfg.timezone})")

    def latest_midnight(limit: int) -> int:
        """The last local midnight c with c + h <= limit."""
        return _midnight(_local_date(limit - h, tz), tz)

    if cfg.cutoffs:
        times = [parse_instant(c, cfg.timezone, "task.cutoffs") for c in cfg.cutoffs]
        shown = [local_iso(t, cfg.timezone) for t in times]
        for t, s in zip(times, shown):
            if not start < t < end:
                raise PrepareError(f"task.cutoffs: cutoff {s} is outside the data's time range: {span}")
            if t + h > end:
                raise PrepareError(f"task.horizon: {cfg.horizon} after cutoff {s} ends at "
                                   f"{local_iso(t + h, cfg.timezone)}, after the data ends: {span}")
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise PrepareError(f"task.cutoffs: must be strictly increasing, got {', '.join(shown)}")
        chosen_by = "given"
    elif cfg.split_mode == "customer_disjoint":
        times = [latest_midnight(end)]
        if times[0] <= start:
            raise PrepareError(f"task.horizon: {cfg.horizon} leaves no history before the calibration/holdout "
                               f"cutoff: {span}")
        chosen_by = f"generated: the last local midnight with a full {cfg.horizon} holdout before the data ends"
    else:
        test = latest_midnight(end)
        valid = latest_midnight(test)
        last_train = _local_date(latest_midnight(valid), tz)
        times = [_midnight(last_train - dt.timedelta(days=cfg.stride_days * k), tz)
                 for k in range(cfg.num_train_cutoffs - 1, -1, -1)] + [valid, test]
        if times[0] <= start:
            raise PrepareError(
                f"task: {cfg.num_train_cutoffs} training cutoffs every {cfg.stride_days} day(s) with horizon "
                f"{cfg.horizon} need more data (first cutoff would be {local_iso(times[0], cfg.timezone)}): "
                f"{span}; lower task.num_train_cutoffs, task.stride_days or task.horizon")
        chosen_by = (f"generated: {cfg.num_train_cutoffs} training cutoffs every {cfg.stride_days} day(s) at local "
                     f"midnight, then validation and test, each label window ending at or before the next split")

    if cfg.split_mode == "customer_disjoint":
        return Cutoffs(np.array(times, np.int64), ("by_customer",), (start, end), chosen_by)
    splits = ("train",) * (len(times) - 2) + ("valid", "test")
    check_time_rule(times, splits, h, cfg.timezone)
    return Cutoffs(np.array(times, np.int64), splits, (start, end), chosen_by)


def check_time_rule(times: Sequence[int], splits: Sequence[str], horizon: int, timezone: str) -> None:
    """Every training label window ends at or before the validation cutoff, every validation one at or
    before the test cutoff; PrepareError naming each offending cutoff otherwise."""
    bad = []
    for later in ("valid", "test"):
        earlier = "train" if later == "valid" else "valid"
        bound = min(t for t, s in zip(times, splits) if s == later)
        for t, s in zip(times, splits):
            if s == earlier and t + horizon > bound:
                bad.append(f"{'training' if earlier == 'train' else 'validation'} cutoff {local_iso(t, timezone)} "
                           f"(label window to {local_iso(t + horizon, timezone)}) ends after the "
                           f"{'validation' if later == 'valid' else 'test'} cutoff {local_iso(bound, timezone)}")
    if bad:
        raise PrepareError("task.cutoffs: break the global time rule (a label window must end at or before the "
                           "next split's cutoff): " + "; ".join(bad))


class TimeIndex:
    """Events of each group (a user, or a (user, item) pair) together, oldest first, searchable by time.

    group: int [N] >= 0; ts: int64 [N]. `order` [N] sorts the input (stable: equal times keep input
    order). `find(g, t)` is the first sorted row of group g with ts >= t, so the rows of g before t are
    `find(g, NO_TIME) .. find(g, t)`; one binary search on a 64-bit (group, time) key, no loop.
    """

    def __init__(self, group: np.ndarray, ts: np.ndarray):
        group, ts = np.asarray(group, np.int64), np.asarray(ts, np.int64)
        if len(group) and group.min() < 0:
            raise ValueError("group ids must be >= 0")
        self.order = np.lexsort((ts, group))
        self.group, self.ts = group[self.order], ts[self.order]
        self.t0 = int(ts.min()) if len(ts) else 0
        self.span = (int(ts.max()) - self.t0 + 2) if len(ts) else 2
        top = int(group.max()) + 1 if len(group) else 1
        if top > (1 << 62) // self.span:
            raise ValueError(f"{top:,} groups x {self.span:,} s of time do not fit a 64-bit search key")
        self.key = self.group * self.span + (self.ts - self.t0)

    def __len__(self) -> int:
        return len(self.key)

    def find(self, g: np.ndarray, t: np.ndarray | int) -> np.ndarray:
        t = np.clip(np.asarray(t, np.int64), self.t0, self.t0 + self.span - 1)
        return np.searchsorted(self.key, np.asarray(g, np.int64) * self.span + (t - self.t0), side="left")

    def prefix(self, flags: np.ndarray) -> np.ndarray:
        """Running count [N + 1] of `flags` (input order) in sorted order: rows a..b hold c[b] - c[a]."""
        return np.concatenate([[0], np.cumsum(np.asarray(flags)[self.order], dtype=np.int64)])


def pair_ids(user: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair id [N], user of each pair [P], item of each pair [P]); pairs numbered in (user, item) order."""
    user, item = np.asarray(user, np.int64), np.asarray(item, np.int64)
    if len(item) and item.min() < 0:
        raise ValueError("item ids must be >= 0")
    width = int(item.max()) + 1 if len(item) else 1
    keys, pair = np.unique(user * width + item, return_inverse=True)
    return pair.ravel(), keys // width, keys % width


def customer_split(user: np.ndarray, seed: int, valid_share: float, test_share: float) -> np.ndarray:
    """int8 split index (into SPLITS) of each user: a seeded 64-bit hash (splitmix64) of the user id."""
    with np.errstate(over="ignore"):
        z = np.asarray(user).astype(np.uint64) + np.uint64((seed + 1) * 0x9E3779B97F4A7C15 % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(u < 1.0 - valid_share - test_share, 0, np.where(u < 1.0 - test_share, 1, 2)).astype(np.int8)


@dataclasses.dataclass
class Examples:
    """Labelled examples, ordered by cutoff, then user, then item (E rows)."""

    user: np.ndarray  # int64 [E], user id as given
    item: np.ndarray  # int64 [E], item id as given (user_item level); 0 at user level
    cutoff: np.ndarray  # int64 [E], unix seconds: features use events strictly before it
    split: np.ndarray  # int8 [E], index into SPLITS
    label: np.ndarray  # int8 [E], 0/1
    cutoffs: Cutoffs
    counts: list[dict]  # per cutoff: examples, positives, users excluded by reason (see EXCLUDED)
    cfg: TaskConfig

    def __len__(self) -> int:
        return len(self.user)

    def table(self) -> pa.Table:
        """user, item, cutoff, split (name), label: one row per example."""
        return pa.table({"user": self.user, "item": self.item, "cutoff": self.cutoff,
                         "split": pa.DictionaryArray.from_arrays(self.split.astype(np.int32), list(SPLITS)),
                         "label": self.label})

    def balance(self) -> dict[str, dict]:
        out = {}
        for k, name in enumerate(SPLITS):
            mask = self.split == k
            n, pos = int(mask.sum()), int(self.label[mask].sum())
            out[name] = {"examples": n, "positives": pos, "positive_rate": pos / n if n else 0.0}
        return out

    def protocol(self) -> dict:
        """What the examples are, for the protocol card and metadata.json."""
        cfg, tz = self.cfg, self.cfg.timezone
        what = {("purchase", "user"): "1 if the user has a purchase event in [cutoff, cutoff + horizon)",
                ("purchase", "user_item"): "1 if the user purchases that item in [cutoff, cutoff + horizon)",
                ("churn", "user"): "1 if the user has no event at all in [cutoff, cutoff + horizon)"}
        eligible = ("(user, item) pairs the user touched" if cfg.level == "user_item" else "users with an event")
        window = "all history before the cutoff" if cfg.feature_window is None else cfg.feature_window
        out = {
            "task": cfg.task, "level": cfg.level, "label": what[(cfg.task, cfg.level)],
            "eligible": f"{eligible} in the feature window [cutoff - feature_window, cutoff)",
            "horizon": cfg.horizon, "horizon_seconds": cfg.horizon_s,
            "feature_window": window, "feature_window_seconds": cfg.window_s,
            "timezone": tz, "split_mode": cfg.split_mode,
            "cutoffs": [{"split": s, "iso": local_iso(t, tz), "unix": int(t)}
                        for t, s in zip(self.cutoffs.times, self.cutoffs.splits)],
            "cutoffs_chosen_by": self.cutoffs.chosen_by,
            "data_range": {"iso": [local_iso(t, tz) for t in self.cutoffs.data_range],
                           "unix": [int(t) for t in self.cutoffs.data_range]},
            "class_balance": self.balance(),
            "per_cutoff": self.counts,
            "seed": cfg.seed,
        }
        if cfg.split_mode == "rolling":
            out["time_rule"] = ("every training label window ends at or before the validation cutoff and every "
                                "validation label window at or before the test cutoff")
        else:
            out["customer_split"] = (f"customers hashed with seed {cfg.seed}: {1 - cfg.valid_share - cfg.test_share:g} "
                                     f"train / {cfg.valid_share:g} valid / {cfg.test_share:g} test; the splits "
                                     f"share the calibration and holdout windows and differ in customers")
        return out


def build_examples(user: np.ndarray, item: np.ndarray, ts: np.ndarray, event: np.ndarray,
                   cutoffs: Cutoffs | None, cfg: TaskConfig) -> Examples:
    """Eligible examples and their labels at every cutoff (see the module doc); `cutoffs=None` resolves them.

    user, item: int [N] >= 0 (any order); ts: int64 [N] unix seconds; event: int [N], EVENT_ID values.
    Eligibility reads only events in [cutoff - feature_window, cutoff); labels only [cutoff, cutoff + horizon).
    """
    cfg.validate()
    user, item = np.asarray(user, np.int64), np.asarray(item, np.int64)
    ts, event = np.asarray(ts, np.int64), np.asarray(event)
    if cutoffs is None:
        cutoffs = resolve_cutoffs(ts, cfg)
    h, window = cfg.horizon_s, cfg.window_s
    if cfg.split_mode == "rolling":  # cutoffs resolved under another horizon must still keep the rule
        check_time_rule(cutoffs.times.tolist(), cutoffs.splits, h, cfg.timezone)
    users_idx = TimeIndex(user, ts)
    users = np.unique(user)
    if cfg.level == "user_item":
        pair, pair_user, pair_item = pair_ids(user, item)
        idx, groups, g_user, g_item = TimeIndex(pair, ts), np.arange(len(pair_user)), pair_user, pair_item
    else:
        idx, groups, g_user, g_item = users_idx, users, users, np.zeros(len(users), np.int64)
    buys = idx.prefix(event == PURCHASE)
    u_first = users_idx.find(users, NO_TIME)

    parts, counts = [], []
    for k, c in enumerate(cutoffs.times.tolist()):
        w = NO_TIME if window is None else c - window
        a, b = idx.find(groups, w), idx.find(groups, c)
        keep = np.flatnonzero(b > a)
        e = idx.find(groups[keep], c + h)
        if cfg.task == "purchase":
            label = buys[e] > buys[b[keep]]
        else:
            label = e == b[keep]
        if cfg.split_mode == "rolling":
            split = np.full(len(keep), SPLITS.index(cutoffs.splits[k]), np.int8)
        else:
            split = customer_split(g_user[keep], cfg.seed, cfg.valid_share, cfg.test_share)
        parts.append((g_user[keep], g_item[keep], np.full(len(keep), c, np.int64), split, label.astype(np.int8)))

        ub = users_idx.find(users, c)
        before = ub > u_first
        active = ub > users_idx.find(users, w)
        counts.append({"cutoff": local_iso(c, cfg.timezone), "unix": c, "split": cutoffs.splits[k],
                       "examples": len(keep), "positives": int(label.sum()), "users": len(users),
                       "users_with_examples": int(active.sum()),
                       "excluded_users": dict(zip(EXCLUDED, (int((~before).sum()), int((before & ~active).sum()))))})
    cols = [np.concatenate(p) for p in zip(*parts)]
    return Examples(*cols, cutoffs=cutoffs, counts=counts, cfg=cfg)
