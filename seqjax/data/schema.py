"""The one definition of prepared-data fields, ids, padding and the shard record codec.

Item ids are 1..num_items; 0 is padding. Event-type ids are 1..5 in `EVENT_TYPES` order; 0 means
"unknown / not recorded". Timestamps are int64 unix seconds (0 when the data has none).
"""

from __future__ import annotations

import dataclasses
import struct

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
