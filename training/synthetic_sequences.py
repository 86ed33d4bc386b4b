"""Small user_sequences + items rows with known user tastes (or a known item order), for the training
tests and bench/train.py (the platform-wide generator is features.synthetic; this one writes the training
input directly).

Each user likes ``tastes_per_user`` of ``categories`` categories. A user's history is a run of baskets
(one timestamp each); a basket's items come from the liked categories with probability ``taste_prob``
(else from anywhere), preceded by views of the same items; with ``rebuy=False`` a user never buys an
item twice (a catalogue bought once: its items drop out of later baskets). Item titles name their
category, so the text encoder has something to find.

``generate_chains`` plants an order instead of a taste: the catalogue's items form chains (A -> B -> C
...), and a user who buys a chain's item in one basket buys the item after it in the next basket; nobody
buys an item twice. Pure: returns pandas DataFrames in the tables' columns.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

CATEGORY_WORDS = ["mug", "candle", "lamp", "scarf", "notebook", "teapot", "cushion", "clock", "basket", "vase",
                  "umbrella", "bag", "frame", "plate", "towel", "mirror"]
ADJECTIVES = ["red", "blue", "vintage", "small", "large", "green", "white", "floral", "striped", "golden"]


def generate(users: int = 200, categories: int = 8, items_per_category: int = 12, baskets_per_user: int = 6,
             basket_size: int = 2, tastes_per_user: int = 1, taste_prob: float = 0.9, with_views: bool = True,
             as_of: dt.date = dt.date(2024, 3, 1), max_len: int = 50, seed: int = 0, rebuy: bool = True
             ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    """(user_sequences rows, items rows, {user_id: liked categories})."""
    if categories > len(CATEGORY_WORDS):
        raise ValueError(f"at most {len(CATEGORY_WORDS)} categories")
    rng = np.random.default_rng(seed)
    cats = CATEGORY_WORDS[:categories]
    item_rows, by_cat = _catalogue(cats, items_per_category, as_of)
    all_items = [r["item_id"] for r in item_rows]
    seq_rows, truth = [], {}
    start = dt.datetime.combine(as_of, dt.time()) - dt.timedelta(days=baskets_per_user + 1)
    for u in range(users):
        user = f"u{u:04d}"
        liked = list(rng.choice(cats, size=tastes_per_user, replace=False))
        truth[user] = liked
        events: list[tuple[dt.datetime, str, str]] = []
        bought: set[str] = set()
        for b in range(baskets_per_user):
            ts = start + dt.timedelta(days=b, hours=int(rng.integers(0, 20)))
            basket = [str(rng.choice(by_cat[str(rng.choice(liked))])) if rng.random() < taste_prob
                      else str(rng.choice(all_items)) for _ in range(basket_size)]
            if not rebuy:
                basket = [item for item in basket if item not in bought]
                bought.update(basket)
            events += _basket_events(ts, basket, with_views)
        seq_rows.append(_sequence_row(user, events, as_of, max_len))
    return pd.DataFrame(seq_rows), pd.DataFrame(item_rows), truth


def generate_chains(users: int = 400, chains: int = 12, chain_length: int = 10, noise_categories: int = 4,
                    visits_per_user: int = 8, noise_prob: float = 0.3, with_views: bool = False,
                    as_of: dt.date = dt.date(2024, 3, 1), max_len: int = 50, seed: int = 0
                    ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """(user_sequences rows, items rows, {item_id: the item after it in its chain}).

    Category c's ``chain_length`` items, in id order, are chain c (MUG000 -> MUG001 -> ...) for the first
    ``chains`` categories; the next ``noise_categories`` hold noise items, in no chain. A user's history
    is ``visits_per_user`` visits, two baskets each: a chain item A, then the item after it, B, in the
    next basket (A at any position but the chain's last, with A and B both new to the user); each basket
    holds one new noise item besides with probability ``noise_prob``. So every user's last basket holds
    the B of the A in the basket before it. Entering chains in the middle is what hides the order from
    co-occurrence: an A inside a chain is bought by as many users with the item before it as with B.
    The defaults are tests/test_sequential_pattern.py's (eight visits: many items beside B that
    co-occur with a user's history; 400 users: each link is seen about 25 times in training).
    """
    if chains + noise_categories > len(CATEGORY_WORDS) or chain_length < 2:
        raise ValueError(f"at most {len(CATEGORY_WORDS)} categories in all and chains of at least 2 items")
    rng = np.random.default_rng(seed)
    cats = CATEGORY_WORDS[:chains + noise_categories]
    item_rows, by_cat = _catalogue(cats, chain_length, as_of)
    links = [(by_cat[c][p], by_cat[c][p + 1]) for c in cats[:chains] for p in range(chain_length - 1)]
    noise = [i for c in cats[chains:] for i in by_cat[c]]
    seq_rows = []
    start = dt.datetime.combine(as_of, dt.time()) - dt.timedelta(days=2 * visits_per_user + 1)
    for u in range(users):
        events: list[tuple[dt.datetime, str, str]] = []
        bought: set[str] = set()
        for v in range(visits_per_user):
            fresh = [link for link in links if not bought & set(link)]
            if not fresh:
                raise ValueError("a user ran out of chain links: fewer visits_per_user or more chains")
            for b, item in enumerate(fresh[int(rng.integers(len(fresh)))]):
                basket = [item]
                unseen = [i for i in noise if i not in bought]
                if unseen and rng.random() < noise_prob:
                    basket.append(unseen[int(rng.integers(len(unseen)))])
                bought.update(basket)
                ts = start + dt.timedelta(days=2 * v + b, hours=int(rng.integers(0, 20)))
                events += _basket_events(ts, basket, with_views)
        seq_rows.append(_sequence_row(f"u{u:04d}", events, as_of, max_len))
    return pd.DataFrame(seq_rows), pd.DataFrame(item_rows), dict(links)


def _catalogue(cats: list[str], items_per_category: int, as_of: dt.date) -> tuple[list[dict], dict[str, list[str]]]:
    """(items rows, {category: its item ids in order}); titles name the category."""
    item_rows, by_cat = [], {c: [] for c in cats}
    updated = dt.datetime.combine(as_of, dt.time()) - dt.timedelta(days=60)
    for c in cats:
        for k in range(items_per_category):
            item_id = f"{c[:3].upper()}{k:03d}"
            by_cat[c].append(item_id)
            item_rows.append({"item_id": item_id, "title": f"{ADJECTIVES[k % len(ADJECTIVES)]} {c} {k}",
                              "description": f"a {c} for the home", "category": c, "brand": "acme",
                              "price": float(1 + k % 7), "updated_at": updated})
    return item_rows, by_cat


def _basket_events(ts: dt.datetime, basket: list[str], with_views: bool) -> list[tuple[dt.datetime, str, str]]:
    """One basket's events: views of its items just before (``with_views``), then one purchase per item."""
    views = [(ts - dt.timedelta(minutes=10 - i), item, "view") for i, item in enumerate(basket)] if with_views else []
    return views + [(ts, item, "purchase") for item in dict.fromkeys(basket)]


def _sequence_row(user: str, events: list[tuple[dt.datetime, str, str]], as_of: dt.date, max_len: int) -> dict:
    """One user_sequences row: the user's last ``max_len`` events, oldest first."""
    events = sorted(events, key=lambda e: (e[0], e[1], e[2]))[-max_len:]
    return {"user_id": user, "as_of_date": as_of, "item_ids": [e[1] for e in events],
            "event_types": [e[2] for e in events], "event_ts": [e[0] for e in events],
            "sequence_length": len(events)}
