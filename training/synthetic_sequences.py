"""Small user_sequences + items rows with known user tastes, for the training tests and bench/train.py
(the platform-wide generator is features.synthetic; this one writes the training input directly).

Each user likes ``tastes_per_user`` of ``categories`` categories. A user's history is a run of baskets
(one timestamp each); a basket's items come from the liked categories with probability ``taste_prob``
(else from anywhere), preceded by views of the same items. Item titles name their category, so the
text encoder has something to find. Pure: returns pandas DataFrames in the tables' columns.
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
             as_of: dt.date = dt.date(2024, 3, 1), max_len: int = 50, seed: int = 0
             ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    """(user_sequences rows, items rows, {user_id: liked categories})."""
    if categories > len(CATEGORY_WORDS):
        raise ValueError(f"at most {len(CATEGORY_WORDS)} categories")
    rng = np.random.default_rng(seed)
    cats = CATEGORY_WORDS[:categories]
    item_rows, by_cat = [], {c: [] for c in cats}
    updated = dt.datetime.combine(as_of, dt.time()) - dt.timedelta(days=60)
    for c in cats:
        for k in range(items_per_category):
            item_id = f"{c[:3].upper()}{k:03d}"
            by_cat[c].append(item_id)
            item_rows.append({"item_id": item_id, "title": f"{ADJECTIVES[k % len(ADJECTIVES)]} {c} {k}",
                              "description": f"a {c} for the home", "category": c, "brand": "acme",
                              "price": float(1 + k % 7), "updated_at": updated})
    all_items = [r["item_id"] for r in item_rows]
    seq_rows, truth = [], {}
    start = dt.datetime.combine(as_of, dt.time()) - dt.timedelta(days=baskets_per_user + 1)
    for u in range(users):
        user = f"u{u:04d}"
        liked = list(rng.choice(cats, size=tastes_per_user, replace=False))
        truth[user] = liked
        events: list[tuple[dt.datetime, str, str]] = []
        for b in range(baskets_per_user):
            ts = start + dt.timedelta(days=b, hours=int(rng.integers(0, 20)))
            basket = [str(rng.choice(by_cat[str(rng.choice(liked))])) if rng.random() < taste_prob
                      else str(rng.choice(all_items)) for _ in range(basket_size)]
            if with_views:
                for i, item in enumerate(basket):
                    events.append((ts - dt.timedelta(minutes=10 - i), item, "view"))
            events += [(ts, item, "purchase") for item in dict.fromkeys(basket)]
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        events = events[-max_len:]
        seq_rows.append({"user_id": user, "as_of_date": as_of, "item_ids": [e[1] for e in events],
                         "event_types": [e[2] for e in events], "event_ts": [e[0] for e in events],
                         "sequence_length": len(events)})
    return pd.DataFrame(seq_rows), pd.DataFrame(item_rows), truth
