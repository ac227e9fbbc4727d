"""A synthetic e-commerce behaviour log with learnable sequential structure, written as CSV.

The log is built so that a next-item model has something to learn that popularity does not:

* Items belong to categories; inside a category they lie on a latent line, and popularity
  (Zipf) is assigned in random order along that line, so "near the current item" carries
  information that "popular" does not.
* Each user has up to three preferred categories. Visits mostly step to a nearby item of the
  same category, sometimes jump to a popular item of a preferred category or of any category,
  and sometimes come back to a recently visited item (repeats are common in real logs).
* A visit is a short funnel on one item: an optional search click, a view, then maybe a
  favourite, a cart and a purchase. Purchases almost always follow a view or cart of the item.
* Visits group into sessions (seconds to minutes apart); sessions are hours to days apart and
  start more often in the day and evening than at night. Sequence lengths are lognormal.

Everything is a pure function of the arguments and the seed. Ids are opaque strings
(`u00017`, `i000342`, `c012`) so that the id encoding of the pipeline is exercised.

    python -m seqjax.data.synthetic --out /tmp/log.csv --users 2000 --items 5000 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os

import numpy as np

from seqjax.data.schema import EVENT_TYPES

CSV_HEADER = "user_id,item_id,timestamp,event_type,category_id"

# Visit kinds: how the walk chose the item of a visit.
REPEAT, NEAR, PREFERRED, ANYWHERE = 0, 1, 2, 3

# Relative activity for each hour of the day (UTC), lowest before dawn, highest in the evening.
HOURLY_ACTIVITY = np.array([
    0.35, 0.2, 0.12, 0.08, 0.08, 0.12, 0.3, 0.55, 0.75, 0.85, 0.9, 1.0,
    1.1, 1.0, 0.9, 0.9, 0.95, 1.05, 1.25, 1.45, 1.6, 1.5, 1.1, 0.65])

# Funnel slots of a visit, in the order their events happen.
VISIT_SLOTS = ("search", "view", "favourite", "cart", "purchase")


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """How simulated users move through the catalogue. Probabilities are per visit."""

    repeat: float = 0.12  # inside a session: come back to one of the last `recent` items
    near: float = 0.58  # inside a session: step to a nearby item of the same category
    preferred: float = 0.20  # jump to a popular item of a preferred category; the rest: anywhere
    session_repeat: float = 0.25  # first visit of a session: come back to a recent item
    session_preferred: float = 0.60  # first visit of a session: a preferred category; rest: anywhere
    recent: int = 8  # how many past visits a repeat may go back to
    near_scale: float = 2.5  # mean distance of a step along the latent order of a category
    visits_per_session: float = 8.0  # mean visits per session (geometric)
    category_zipf: float = 1.0  # exponent of category popularity
    item_zipf: float = 1.1  # exponent of item popularity inside a category
    search: float = 0.25  # a jump visit starts with a search click on the item
    cart: float = 0.08  # a visit adds the item to the cart
    cart_on_repeat: float = 0.18  # ... when the user came back to the item
    favourite: float = 0.045  # a visit favourites the item
    buy_after_cart: float = 0.3  # a carted item is bought in the same visit
    buy_direct: float = 0.005  # an item is bought straight after a view
    checkout: float = 0.03  # a repeat visit is only a purchase (buying what was seen before)
    # A session whose last cart was not bought leaves an open cart; the user's next session opens by buying
    # it with this probability. Only the order of events shows an open cart (0: no such returns).
    cart_return: float = 0.0
    # > 0: such a returning session starts at most this many hours (uniform from 1) after the previous session's
    # planned start instead of at its own time, so an open cart also says the user is coming back soon.
    cart_return_hours: float = 0.0
    # An unbought cart ends its session right there with this probability (the user leaves at the cart).
    cart_exit: float = 0.0
    # True: only a session that ends on its open cart (the cart is its last visit) gets the return, so the signal
    # is the type of the session's last event, which no count or recency aggregate holds.
    cart_return_exit_only: bool = False
    length_sigma: float = 0.9  # sigma of the lognormal number of events per user
    min_events: int = 5  # no user has fewer events


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Items 0..V-1 sorted by category; an item's index inside its category is its latent position."""

    item_category: np.ndarray  # int64 [V]
    start: np.ndarray  # int64 [C], first item of each category
    size: np.ndarray  # int64 [C], items per category (>= 1)
    item_cdf: np.ndarray  # float64 [V], category + cumulative popularity inside it, in (c, c+1]
    category_cdf: np.ndarray  # float64 [C], cumulative category popularity


def make_catalogue(rng: np.random.Generator, num_items: int, num_categories: int,
                   b: Behaviour) -> Catalogue:
    if num_items < num_categories:
        raise ValueError(f"need at least one item per category: {num_items} < {num_categories}")
    weights = rng.lognormal(0.0, 0.8, num_categories)
    size = 1 + rng.multinomial(num_items - num_categories, weights / weights.sum())
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    item_category = np.repeat(np.arange(num_categories), size)

    # Popularity rank inside each category, shuffled against the latent order.
    shuffled = np.argsort(item_category + rng.random(num_items), kind="stable")
    rank = np.empty(num_items, np.int64)
    rank[shuffled] = np.arange(num_items) - start[item_category[shuffled]]
    pop = (rank + 1.0) ** -b.item_zipf
    csum = np.cumsum(pop)
    before = (csum[start] - pop[start])[item_category]
    total = np.add.reduceat(pop, start)[item_category]
    item_cdf = item_category + (csum - before) / total
    item_cdf[start + size - 1] = np.arange(num_categories) + 1.0  # exact, despite rounding

    cat_pop = (rng.permutation(num_categories) + 1.0) ** -b.category_zipf
    return Catalogue(item_category, start, size, item_cdf, np.cumsum(cat_pop) / cat_pop.sum())


def sample_in_categories(rng: np.random.Generator, cats: np.ndarray, cat: Catalogue) -> np.ndarray:
    """One Zipf-popular item of each category in `cats` [N]; returns item indices [N]."""
    found = np.searchsorted(cat.item_cdf, cats + rng.random(len(cats)), side="right")
    return np.clip(found, cat.start[cats], cat.start[cats] + cat.size[cats] - 1)


def sample_categories(rng: np.random.Generator, n: int, cat: Catalogue) -> np.ndarray:
    found = np.searchsorted(cat.category_cdf, rng.random(n), side="right")
    return np.minimum(found, len(cat.start) - 1)


def walk(rng: np.random.Generator, cat: Catalogue, lengths: np.ndarray, session_start: np.ndarray,
         b: Behaviour) -> tuple[np.ndarray, np.ndarray]:
    """The item and kind of every visit; users' visits are contiguous in the flat arrays.

    lengths: int [U], visits per user, sorted descending so the users still walking at step t
      are a prefix; session_start: bool [sum(lengths)], a visit opens a session.
    Returns items int64 [sum(lengths)] and kinds int8 [sum(lengths)].
    """
    num_users = len(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    prefs = sample_categories(rng, 3 * num_users, cat).reshape(num_users, 3)
    pref_cdf = np.cumsum(rng.dirichlet(np.full(3, 0.7), num_users), axis=1)
    items = np.zeros(lengths.sum(), np.int64)
    kinds = np.zeros(lengths.sum(), np.int8)
    recent = np.zeros((num_users, b.recent), np.int64)  # ring buffer of the last visits
    current = np.zeros(num_users, np.int64)

    for t in range(int(lengths.max(initial=0))):
        k = int(np.searchsorted(-lengths, -t, side="left"))  # users with more than t visits
        at = offsets[:k] + t
        starts = session_start[at]
        p_repeat = np.where(starts, b.session_repeat, b.repeat) if t > 0 else np.zeros(k)
        p_near = np.where(starts, 0.0, b.near)
        p_pref = np.where(starts, b.session_preferred, b.preferred)
        r = rng.random(k)
        kind = np.select([r < p_repeat, r < p_repeat + p_near, r < p_repeat + p_near + p_pref],
                         [REPEAT, NEAR, PREFERRED], ANYWHERE)

        # Repeats favour the latest visits but skip the current item when there is another.
        back = np.minimum(rng.geometric(0.5, k), max(min(t, b.recent) - 1, 0))
        repeat_item = recent[np.arange(k), (t - 1 - back) % b.recent]

        cur = current[:k]
        cur_cat = cat.item_category[cur]
        step = rng.geometric(1.0 / b.near_scale, k) * rng.choice(np.array([-1, 1]), k)
        near_item = cat.start[cur_cat] + (cur - cat.start[cur_cat] + step) % cat.size[cur_cat]

        slot = np.minimum((rng.random(k)[:, None] > pref_cdf[:k]).sum(1), 2)
        pref_item = sample_in_categories(rng, prefs[np.arange(k), slot], cat)
        any_item = sample_in_categories(rng, sample_categories(rng, k, cat), cat)

        new = np.choose(kind, [repeat_item, near_item, pref_item, any_item])
        items[at], kinds[at] = new, kind
        recent[:k, t % b.recent] = new
        current[:k] = new
    return items, kinds


def funnel(rng: np.random.Generator, kinds: np.ndarray, b: Behaviour) -> np.ndarray:
    """Which funnel events each visit emits: bool [visits, len(VISIT_SLOTS)]."""
    u = rng.random((len(kinds), 5))
    repeat = kinds == REPEAT
    checkout = repeat & (u[:, 4] < b.checkout)
    search = ((kinds == PREFERRED) | (kinds == ANYWHERE)) & (u[:, 0] < b.search)
    cart = (u[:, 1] < np.where(repeat, b.cart_on_repeat, b.cart)) & ~checkout
    favourite = (u[:, 2] < b.favourite) & ~checkout
    buy = np.where(cart, u[:, 3] < b.buy_after_cart, u[:, 3] < b.buy_direct) | checkout
    return np.stack([search, ~checkout, favourite, cart, buy], axis=1)


def abandon_at_carts(rng: np.random.Generator, rows: np.ndarray, session_start: np.ndarray,
                     visit_user: np.ndarray, p: float) -> None:
    """Ends the session after each unbought cart visit with probability p: the user's next visit opens a new
    session (session_start [visits] is updated in place; the walk drew that visit as an in-session step)."""
    left = np.flatnonzero(rows[:-1, 3] & ~rows[:-1, 4] & (visit_user[1:] == visit_user[:-1]))
    session_start[left[rng.random(len(left)) < p] + 1] = True


def return_to_open_carts(rng: np.random.Generator, rows: np.ndarray, items: np.ndarray, kinds: np.ndarray,
                         session_start: np.ndarray, visit_user: np.ndarray, p: float,
                         exit_only: bool = False) -> np.ndarray:
    """Makes the first visit of a session, with probability p, a checkout of the previous session's open cart
    (its last cart, not bought; with exit_only, only when that cart was the session's last visit). Updates
    funnel rows [visits, 5], items and kinds [visits] in place; returns the visits that became checkouts."""
    session = np.cumsum(session_start) - 1
    first = np.flatnonzero(session_start)
    last_cart = np.full(len(first), -1)
    carts = np.flatnonzero(rows[:, 3])
    np.maximum.at(last_cart, session[carts], carts)
    same_user_next = np.append(visit_user[first[1:]] == visit_user[first[:-1]], False)
    s = np.flatnonzero((last_cart >= 0) & same_user_next)
    s = s[~rows[last_cart[s], 4]]
    if exit_only:
        s = s[last_cart[s] == first[s + 1] - 1]
    s = s[rng.random(len(s)) < p]
    source, target = last_cart[s], first[s + 1]
    keep = ~np.isin(source, target)  # a visit that becomes a checkout no longer leaves a cart open
    source, target = source[keep], target[keep]
    items[target], kinds[target] = items[source], REPEAT
    rows[target] = np.array([False, False, False, False, True])
    return target


def timestamps(rng: np.random.Generator, user: np.ndarray, new_visit: np.ndarray,
               new_session: np.ndarray, num_users: int, days: float, soon: np.ndarray | None = None,
               soon_hours: float = 0.0) -> np.ndarray:
    """Seconds since the log start of each event, strictly increasing inside a user.

    user: int [N] internal user of each event (grouped); new_visit / new_session: bool [N].
    """
    n = len(user)
    # Inside a session: seconds between events of a visit, about a minute between visits.
    gap = np.where(new_visit, rng.lognormal(np.log(45.0), 1.0, n), rng.lognormal(np.log(20.0), 0.8, n))
    gap = np.clip(np.rint(gap), 1, 1800).astype(np.int64)
    gap[new_session] = 0
    csum = np.cumsum(gap)
    first = np.flatnonzero(new_session)
    session = np.cumsum(new_session) - 1
    offset = csum - csum[first][session]
    duration = offset[np.concatenate([first[1:] - 1, [n - 1]])]

    # Session starts: each user is active over a random part of the window; the gaps between
    # sessions are lognormal in "activity days", then mapped through the diurnal curve.
    s_user = user[first]
    ns = len(first)
    user_first = np.searchsorted(s_user, np.arange(num_users))
    origin = rng.uniform(0.0, 0.25 * days, num_users)
    span = (days - origin) * rng.uniform(0.3, 1.0, num_users)
    g = rng.lognormal(0.0, 1.2, ns)
    trailing = rng.lognormal(0.0, 1.2, num_users)
    gsum = np.cumsum(g)
    g_within = gsum - (gsum[user_first] - g[user_first])[s_user]
    g_total = np.add.reduceat(g, user_first) + trailing
    activity = origin[s_user] + span[s_user] * g_within / g_total[s_user]
    wanted = activity_to_seconds(activity)
    if soon is not None:  # sessions that start soon after the user's previous one (never a user's first)
        pulled = np.flatnonzero(soon[first])
        delay = np.rint(rng.uniform(1.0, soon_hours, len(pulled)) * 3600).astype(np.int64)
        while True:  # repeated until a fixed point, so a return that follows a return follows its new start
            earlier = np.minimum(wanted[pulled], wanted[pulled - 1] + delay)
            if (earlier == wanted[pulled]).all():
                break
            wanted[pulled] = earlier

    # Push a session later if it would start before the previous one ends (+10 min):
    # start_k = C_k + cummax(wanted_k - C_k), C_k the summed durations before k, per user.
    need = duration + 600
    csum_need = np.cumsum(need)
    before = csum_need - need - (csum_need[user_first] - need[user_first])[s_user]
    shift = s_user.astype(np.int64) << 42  # keeps the running max from crossing users
    start = before + np.maximum.accumulate(wanted - before + shift) - shift
    return start[session] + offset


def activity_to_seconds(activity_days: np.ndarray) -> np.ndarray:
    """Maps uniform "activity time" to wall-clock seconds with the diurnal activity curve."""
    day = np.floor(activity_days)
    cdf = np.concatenate([[0.0], np.cumsum(HOURLY_ACTIVITY)]) / HOURLY_ACTIVITY.sum()
    seconds = np.interp(activity_days - day, cdf, np.arange(25) * 3600.0)
    return (day * 86400 + seconds).astype(np.int64)


def simulate(num_users: int = 2000, num_items: int = 5000, num_categories: int = 50, seed: int = 0,
             days: float = 90.0, mean_events: float = 50.0,
             behaviour: Behaviour = Behaviour()) -> dict[str, np.ndarray]:
    """The log as integer columns, sorted by user then time.

    Returns user int64 [N] (0..U-1), item int64 [N] (0..V-1, an opaque id, not the latent order),
    timestamp int64 [N] (seconds from the start of the window), event int8 [N] (index into
    `EVENT_TYPES`) and category int64 [N] (0..C-1).
    """
    b = behaviour
    rng = np.random.default_rng(seed)
    cat = make_catalogue(rng, num_items, num_categories, b)

    mu = np.log(mean_events) - b.length_sigma ** 2 / 2
    lengths = np.rint(rng.lognormal(mu, b.length_sigma, num_users)).astype(np.int64)
    lengths = -np.sort(-np.clip(lengths, b.min_events, int(20 * mean_events)))
    # One visit per wanted event is enough: a visit emits at least one event, extras are cut.
    session_start = rng.random(lengths.sum()) < 1.0 / b.visits_per_session
    session_start[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True
    visit_item, visit_kind = walk(rng, cat, lengths, session_start, b)

    rows = funnel(rng, visit_kind, b)
    visit_user = np.repeat(np.arange(num_users), lengths)
    returns = np.zeros(0, np.int64)
    if b.cart_exit > 0:  # no draw otherwise, so logs without exits stay as they were
        abandon_at_carts(rng, rows, session_start, visit_user, b.cart_exit)
    if b.cart_return > 0:
        returns = return_to_open_carts(rng, rows, visit_item, visit_kind, session_start, visit_user, b.cart_return,
                                       b.cart_return_exit_only)
    flat = np.flatnonzero(rows.ravel())
    visit, slot = flat // len(VISIT_SLOTS), flat % len(VISIT_SLOTS)
    user = visit_user[visit]
    first_of_user = np.searchsorted(user, np.arange(num_users))
    keep = np.arange(len(user)) - first_of_user[user] < lengths[user]
    visit, slot, user = visit[keep], slot[keep], user[keep]

    new_visit = np.concatenate([[True], visit[1:] != visit[:-1]])
    new_session = new_visit & session_start[visit]
    soon = None
    if b.cart_return_hours > 0:
        soon = np.isin(visit, returns) & new_session
    seconds = timestamps(rng, user, new_visit, new_session, num_users, days, soon, b.cart_return_hours)

    slot_event = np.array([EVENT_TYPES.index(s) for s in VISIT_SLOTS], np.int8)
    item = visit_item[visit]
    user_name = rng.permutation(num_users)  # ids unrelated to sequence length
    item_name = rng.permutation(num_items)  # ids unrelated to the latent order
    order = np.argsort(user_name[user], kind="stable")
    return {
        "user": user_name[user][order],
        "item": item_name[item][order],
        "timestamp": seconds[order],
        "event": slot_event[slot][order],
        "category": cat.item_category[item][order],
    }


def log_stats(log: dict[str, np.ndarray]) -> dict:
    """Counts and the sequential signal of a log given as integer columns grouped by user."""
    user, item, category = log["user"], log["item"], log["category"]
    n = len(user)
    same_user = user[1:] == user[:-1]
    lengths = np.unique(user, return_counts=True)[1]
    key = user.astype(np.int64) * (int(item.max(initial=0)) + 1) + item
    _, first = np.unique(key, return_index=True)
    moved = same_user & (item[1:] != item[:-1])  # consecutive pairs that change item
    cat_share = np.bincount(category) / max(n, 1)
    return {
        "events": int(n),
        "users": len(lengths),
        "items": len(np.unique(item)),
        "categories": len(np.unique(category)),
        "event_counts": {name: int((log["event"] == i).sum())
                         for i, name in enumerate(EVENT_TYPES)},
        "events_per_user": {"min": int(lengths.min(initial=n)), "median": float(np.median(lengths)),
                            "mean": float(lengths.mean()), "max": int(lengths.max(initial=0))},
        # Share of events whose item the same user already touched earlier.
        "repeat_share": float(1.0 - len(first) / max(n, 1)),
        # P(next item in the same category | the item changes) vs. chance under the marginal.
        "next_same_category": float((category[1:] == category[:-1])[moved].mean())
                              if moved.any() else 0.0,
        "same_category_base_rate": float((cat_share ** 2).sum()),
    }


def generate_log(path: str | os.PathLike, num_users: int = 2000, num_items: int = 5000,
                 num_categories: int = 50, seed: int = 0, days: float = 90.0,
                 start: str = "2024-01-01", mean_events: float = 50.0,
                 behaviour: Behaviour = Behaviour()) -> dict:
    """Writes the CSV log (`CSV_HEADER`, sorted by user then time) and returns its `log_stats`.

    timestamp is integer unix seconds from `start` (UTC midnight); the log spans about `days`.
    """
    log = simulate(num_users, num_items, num_categories, seed, days, mean_events, behaviour)
    epoch = int(datetime.datetime.fromisoformat(start).replace(tzinfo=datetime.UTC).timestamp())
    columns = (
        id_names("u", 5, num_users)[log["user"]],
        id_names("i", 6, num_items)[log["item"]],
        (log["timestamp"] + epoch).astype(str),
        np.array(EVENT_TYPES)[log["event"]],
        id_names("c", 3, num_categories)[log["category"]],
    )
    with open(path, "w") as f:
        f.write(CSV_HEADER + "\n")
        f.writelines(",".join(row) + "\n" for row in zip(*(c.tolist() for c in columns)))
    stats = log_stats(log)
    for key, seconds in (("first_time", log["timestamp"].min()), ("last_time", log["timestamp"].max())):
        stats[key] = datetime.datetime.fromtimestamp(epoch + int(seconds), datetime.UTC).isoformat()
    return stats


def id_names(prefix: str, min_width: int, count: int) -> np.ndarray:
    """`prefix` + zero-padded 0..count-1, e.g. u00017; str [count]."""
    width = max(min_width, len(str(count - 1)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(count)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="CSV path to write")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--days", type=float, default=90.0)
    parser.add_argument("--start", default="2024-01-01")
    parser.add_argument("--mean-events", type=float, default=50.0)
    parser.add_argument("--cart-return", type=float, default=0.0, help="Behaviour.cart_return")
    parser.add_argument("--cart-return-hours", type=float, default=0.0, help="Behaviour.cart_return_hours")
    parser.add_argument("--cart-exit", type=float, default=0.0, help="Behaviour.cart_exit")
    parser.add_argument("--cart-return-exit-only", action="store_true", help="Behaviour.cart_return_exit_only")
    args = parser.parse_args(argv)
    behaviour = Behaviour(cart_return=args.cart_return, cart_return_hours=args.cart_return_hours,
                          cart_exit=args.cart_exit, cart_return_exit_only=args.cart_return_exit_only)
    stats = generate_log(args.out, args.users, args.items, args.categories, args.seed, args.days,
                         args.start, args.mean_events, behaviour)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
