"""Headroom of the planted open-cart signal in a generated purchase table: how much does an oracle feature
"the user's last session before the cutoff ended with an open cart (its last cart not bought)" add to logreg?

Fits logistic regression on [logit(logreg's probability), open_cart] on the validation examples and scores the
test examples; prints test ROC-AUC / PR-AUC of logreg alone and with the feature. --hours H counts an open cart
only when its session started within H hours of the cutoff (the window in which a cart_return_hours=H return
lands in the next-day label); --exit-only counts it only when the session ended on the cart (its last event),
the signal of a cart_return_exit_only log.

    python experiments/open_cart_headroom.py runs/binary_generated_purchase_cart_return_12h [--hours 12]

RUN is a binary_table.py output folder with the logreg run done: a generated dataset, or a Taobao one with
--taobao pointing at its raw file (does the real log hold the planted signal?):

    python experiments/open_cart_headroom.py runs/binary_taobao_purchase --hours 24 --exit-only \
        --taobao ../shared/data/taobao_userbehavior_head/UserBehavior_head.csv
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np
import pyarrow.csv as pacsv
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from seqjax.data.formats import taobao
from seqjax.data.schema import EVENT_ALIASES

SESSION_GAP = 1800  # seconds, as the task preparation's default session_gap


def open_carts(log: dict[str, np.ndarray], cutoff: int, hours: float, exit_only: bool = False) -> dict[str, bool]:
    """Raw user id -> whether the user's last session before `cutoff` (started within `hours`) left a cart open
    (exit_only: and ended on that cart, its last event a cart)."""
    keep = log["ts"] < cutoff
    user, item, ts, event = (log[k][keep] for k in ("user", "item", "ts", "event"))
    out, open_item, start = {}, None, 0
    for i in range(len(user)):
        if i == 0 or user[i] != user[i - 1] or ts[i] - ts[i - 1] > SESSION_GAP:
            open_item, start = None, ts[i]
        if event[i] == "cart":
            open_item = item[i]
        elif event[i] == "purchase" and item[i] == open_item:
            open_item = None
        out[user[i]] = (open_item is not None and cutoff - start < hours * 3600
                        and (event[i] == "cart" or not exit_only))
    return out


def read_generic(path: str) -> dict[str, np.ndarray]:
    table = pacsv.read_csv(path).to_pydict()
    return {k: np.array(table[c]) for k, c in (("user", "user_id"), ("item", "item_id"), ("ts", "timestamp"),
                                                ("event", "event_type"))}


def read_taobao(path: str) -> dict[str, np.ndarray]:
    raw = taobao.read_taobao(path)  # the prepare reader: a cut-off last line is a bad row, left out
    event = np.array([EVENT_ALIASES[b] for b in raw.event.to_pylist()])
    return {"user": np.array(raw.user.to_pylist()), "item": np.array(raw.item.to_pylist()),
            "ts": np.array(raw.timestamp.to_pylist(), np.int64), "event": event}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--hours", type=float, default=float("inf"))
    ap.add_argument("--exit-only", action="store_true", help="count a session only when its last event is the cart")
    ap.add_argument("--taobao", metavar="CSV", help="the run's raw UserBehavior file (default: RUN/log.csv, generic)")
    args = ap.parse_args()
    print("command: python experiments/open_cart_headroom.py " + " ".join(sys.argv[1:]))
    cols = read_taobao(args.taobao) if args.taobao else read_generic(f"{args.run}/log.csv")
    order = np.lexsort((cols["ts"], cols["user"]))
    log = {k: v[order] for k, v in cols.items()}
    with open(f"{args.run}/data/vocab/users.tsv") as f:
        raw_user = {int(r["id"]): r["raw_id"] for r in csv.DictReader(f, delimiter="\t")}
    splits = {}
    for split in ("valid", "test"):
        with open(f"{args.run}/logreg/{split}.per_example.csv") as f:
            rows = list(csv.DictReader(f))
        flags = open_carts(log, int(rows[0]["cutoff"]), args.hours, args.exit_only)
        label = np.array([int(r["label"]) for r in rows])
        prob = np.array([float(r["prob"]) for r in rows])
        is_open = np.array([flags.get(raw_user[int(r["user"])], False) for r in rows])
        splits[split] = (np.c_[np.log(prob / (1 - prob)), is_open], label, prob)
        print(f"{split}: {len(rows)} examples, open cart {is_open.mean():.3f}, P(label | open) "
              f"{label[is_open].mean():.3f}, P(label | not) {label[~is_open].mean():.3f}")
    x, y, _ = splits["valid"]
    combined = LogisticRegression().fit(x, y)
    x, y, prob = splits["test"]
    both = combined.predict_proba(x)[:, 1]
    print(f"test logreg alone:         ROC-AUC {roc_auc_score(y, prob):.3f}  PR-AUC {average_precision_score(y, prob):.3f}")
    print(f"test logreg + open cart:   ROC-AUC {roc_auc_score(y, both):.3f}  PR-AUC {average_precision_score(y, both):.3f}")


if __name__ == "__main__":
    main()
