"""The one definition of prepared-data fields, ids, padding and the shard record codecs: `SequenceRecord`
(next-item splits) and `ExampleRecord` (purchase/churn examples under DATA_DIR/task/), each with its own
version byte.

Item ids are 1..num_items; 0 is padding. Event-type ids are 1..5 in `EVENT_TYPES` order; 0 means
"unknown / not recorded". Timestamps are int64 unix seconds (0 when the data has none).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

import numpy as np

SCHEMA_VERSION = 1
PAD_ID = 0
NO_TARGET = 0  # `target` of a train record: it has none.

EVENT_TYPES = ("view", "search", "cart", "favourite", "purchase")
EVENT_ID = {name: i + 1 for i, name in enumerate(EVENT_TYPES)}
EVENT_ALIASES = {
    "view": "view", "pv": "view", "click": "view", "clicks": "view", "views": "view",
    "search": "search", "searches": "search",
    "cart": "cart", "carts": "cart", "addtocart": "cart", "add_to_cart": "cart",
    "favourite": "favourite", "favorite": "favourite", "fav": "favourite", "like": "favourite",
    "purchase": "purchase", "buy": "purchase", "buys": "purchase", "order": "purchase",
    "orders": "purchase", "transaction": "purchase",
}

SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class SequenceRecord:
    """One user's input history for one split, oldest event first.

    train records: the training events, `target == NO_TARGET`.
    valid/test records: the history the model may see, and the single held-out `target`.
    """

    user: int  # encoded user index (0-based row in vocab/users.tsv)
    items: np.ndarray  # int32 [n], item ids in 1..num_items
    timestamps: np.ndarray  # int64 [n], unix seconds, zeros when the data has none
    events: np.ndarray  # int8 [n], event-type ids, zeros when unknown
    categories: np.ndarray  # int32 [n], category ids (1-based), zeros when absent
    target: int = NO_TARGET  # held-out item id; NO_TARGET on train records
    target_timestamp: int = 0
    target_event: int = 0


_HEADER = struct.Struct("<BqiqBi")  # version, user, target, target_ts, target_event, n


def encode_record(rec: SequenceRecord) -> bytes:
    n = len(rec.items)
    head = _HEADER.pack(SCHEMA_VERSION, rec.user, rec.target, rec.target_timestamp, rec.target_event, n)
    return b"".join((
        head,
        np.asarray(rec.items, np.int32).tobytes(),
        np.asarray(rec.timestamps, np.int64).tobytes(),
        np.asarray(rec.events, np.int8).tobytes(),
        np.asarray(rec.categories, np.int32).tobytes(),
    ))


def decode_record(buf: bytes) -> SequenceRecord:
    version, user, target, target_ts, target_event, n = _HEADER.unpack_from(buf, 0)
    if version != SCHEMA_VERSION:
        raise ValueError(f"shard record has schema version {version}, this seqjax reads {SCHEMA_VERSION}")
    off = _HEADER.size
    items = np.frombuffer(buf, np.int32, n, off); off += 4 * n
    ts = np.frombuffer(buf, np.int64, n, off); off += 8 * n
    ev = np.frombuffer(buf, np.int8, n, off); off += n
    cat = np.frombuffer(buf, np.int32, n, off)
    return SequenceRecord(user, items, ts, ev, cat, target, target_ts, target_event)


EXAMPLE_SCHEMA_VERSION = 2  # version byte of every ExampleRecord; bumped whenever its encoding changes
TASK_DIR = "task"  # DATA_DIR/task/: labelled examples of `seqjax prepare --task`
NO_CANDIDATE = 0  # `candidate` of a user-level example


@dataclasses.dataclass(frozen=True)
class ExampleRecord:
    """One labelled purchase/churn example: the user's history before the cutoff, oldest event first.

    The history is the user's last `max_len` events strictly before `cutoff` and inside the feature
    window; nothing at or after the cutoff is in it. Per-event context features come from
    seqjax.data.features.event_features (computed on the user's whole past, so the first event's gap
    and session position may reflect events before the feature window, never after the cutoff).
    """

    user: int  # encoded user index (0-based row in vocab/users.tsv)
    items: np.ndarray  # int32 [n], item ids in 1..num_items
    timestamps: np.ndarray  # int64 [n], unix seconds, all < cutoff
    events: np.ndarray  # int8 [n], event-type ids, zeros when unknown
    categories: np.ndarray  # int32 [n], category ids (1-based), zeros when absent
    hour: np.ndarray  # int8 [n], local hour 0..23 in task.timezone
    weekday: np.ndarray  # int8 [n], local day of week 0..6, Monday = 0
    session_position: np.ndarray  # int32 [n], 0 = the first event of its session
    gap_bucket: np.ndarray  # int8 [n], log2 bucket of the gap to the previous event (features.gap_bucket)
    price_bucket: np.ndarray  # int8 [n], log2 bucket of the event's money value, 0 = none (features.price_bucket)
    candidate: int = NO_CANDIDATE  # user_item level: the item the label is about; NO_CANDIDATE at user level
    cutoff: int = 0  # unix seconds: the history is strictly before it, the label window starts at it
    label: int = 0  # 0/1


_EXAMPLE_HEADER = struct.Struct("<BqiqBi")  # version, user, candidate, cutoff, label, n
# (field, dtype) of the per-event arrays, in encoding order.
EXAMPLE_ARRAYS = (("items", np.int32), ("timestamps", np.int64), ("events", np.int8), ("categories", np.int32),
                  ("hour", np.int8), ("weekday", np.int8), ("session_position", np.int32), ("gap_bucket", np.int8),
                  ("price_bucket", np.int8))


def encode_example(rec: ExampleRecord) -> bytes:
    n = len(rec.items)
    for name, _ in EXAMPLE_ARRAYS:
        if len(getattr(rec, name)) != n:
            raise ValueError(f"ExampleRecord.{name} has {len(getattr(rec, name))} values, items has {n}")
    head = _EXAMPLE_HEADER.pack(EXAMPLE_SCHEMA_VERSION, rec.user, rec.candidate, rec.cutoff, rec.label, n)
    return b"".join([head] + [np.asarray(getattr(rec, name), dtype).tobytes() for name, dtype in EXAMPLE_ARRAYS])


def encode_examples(user, candidate, cutoff, label, lengths, arrays: dict[str, np.ndarray]) -> Iterator[bytes]:
    """`encode_example` of E examples at once, byte for byte: the fast path of prepare.

    user, candidate, cutoff, label, lengths: int [E]; arrays: name -> the E examples' per-event values
    concatenated in example order (sum(lengths) rows), for every name of EXAMPLE_ARRAYS.
    """
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).tolist()
    columns = [(np.ascontiguousarray(arrays[name], dtype).tobytes(), np.dtype(dtype).itemsize)
               for name, dtype in EXAMPLE_ARRAYS]
    pack = _EXAMPLE_HEADER.pack
    heads = zip(np.asarray(user).tolist(), np.asarray(candidate).tolist(), np.asarray(cutoff).tolist(),
                np.asarray(label).tolist())
    for e, (u, c, t, y) in enumerate(heads):
        a, b = offsets[e], offsets[e + 1]
        yield b"".join([pack(EXAMPLE_SCHEMA_VERSION, u, c, t, y, b - a)] + [buf[a * k:b * k] for buf, k in columns])


def decode_example(buf: bytes) -> ExampleRecord:
    version, user, candidate, cutoff, label, n = _EXAMPLE_HEADER.unpack_from(buf, 0)
    if version != EXAMPLE_SCHEMA_VERSION:
        raise ValueError(f"example record has schema version {version}, this seqjax reads {EXAMPLE_SCHEMA_VERSION}")
    off, arrays = _EXAMPLE_HEADER.size, {}
    for name, dtype in EXAMPLE_ARRAYS:
        arrays[name] = np.frombuffer(buf, dtype, n, off)
        off += np.dtype(dtype).itemsize * n
    return ExampleRecord(user=user, candidate=candidate, cutoff=cutoff, label=label, **arrays)
