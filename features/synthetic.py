"""Synthetic behaviour events and an item catalogue with learnable, known structure, for tests,
benchmarks and demos without real data. ``jobs/generate.py`` (``warmstart generate``) calls
:func:`generate`; tests call it directly.

What it writes under ``out_dir``:

- ``events/part-NNNNN.<ext>``: one row per behaviour event in the bronze/events schema without the
  columns ingest adds (``event_id, event_date, source, ingested_at, run_id``):
  ``user_id, item_id, event_type, event_ts, quantity, price, session_id``.
- ``items/part-00000.<ext>``: one row per item in the bronze/items schema.
- ``truth.json``: each user's latent taste categories (and the generation parameters), so that tests
  and benchmarks can check that a model or a feature recovers them.

The structure a recommender can learn:

- ``categories`` categories, each with its own word list; item titles are ``<adjective> <colour>
  <noun>`` from their category's words, so item text carries the category.
- item popularity is power-law (Zipf, exponent ``zipf_exponent``) within each category.
- each user has 1-3 taste categories with Dirichlet weights; a session picks one of them with
  probability ``taste_strength``, otherwise a random category.
- a session views a geometric number of items of its category; each view may lead to a click, a click
  to an add_to_cart, a cart to a purchase (funnel probabilities), and a purchase, rarely, to a return
  1-14 days later.

Streaming: sessions are drawn in chunks of about ``chunk_events`` events with numpy (vectorised), each
chunk written as one file, so 50M events never need 50M rows in memory. Deterministic for a seed:
the catalogue and users draw from ``default_rng([seed, 0])``, chunk ``k`` from
``default_rng([seed, 1, k])``.

Bad records (``bad_rate`` > 0): that share of event rows is corrupted, each with exactly one fault of
one quarantine kind (``features.tables.QUARANTINE_REASONS``), so ingest must quarantine each with that
reason; the returned dict counts them per reason. For csv and jsonl, ``malformed_record`` faults are
real broken lines (truncated, wrong column count, non-UTF-8 bytes, non-object JSON). For parquet the
text-typed faults need text columns, so with ``bad_rate`` > 0 parquet ``event_ts``, ``quantity`` and
``price`` are written as strings (without bad records they keep their bronze types); parquet has no
malformed lines, so that kind is not injected there.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.contract import EVENT_TYPES

FORMATS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}   # --format -> file extension

# One vocabulary per category: nouns say what the thing is, adjectives how; colours are shared.
VOCABULARY: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "kitchen": (("mug", "teapot", "whisk", "skillet", "colander", "ladle", "grater", "kettle"),
                ("enamel", "cast-iron", "ceramic", "non-stick", "stoneware", "copper")),
    "garden": (("planter", "trowel", "hose", "birdhouse", "seed tray", "watering can", "lantern"),
               ("weatherproof", "galvanised", "terracotta", "hanging", "solar", "wooden")),
    "stationery": (("notebook", "fountain pen", "pencil case", "planner", "sticky notes", "envelope set"),
                   ("dotted", "leather-bound", "refillable", "pocket", "recycled", "spiral")),
    "toys": (("puzzle", "plush bear", "kite", "building blocks", "spinning top", "rag doll"),
             ("wooden", "musical", "glow-in-the-dark", "magnetic", "felt", "wind-up")),
    "bath": (("towel", "soap dish", "bath mat", "toothbrush holder", "shower caddy", "sponge"),
             ("bamboo", "cotton", "waffle-weave", "anti-slip", "organic", "quick-dry")),
    "lighting": (("string lights", "desk lamp", "tea light holder", "lampshade", "night light"),
                 ("dimmable", "battery", "frosted", "vintage", "warm-white", "led")),
    "textiles": (("cushion cover", "throw", "tablecloth", "tote bag", "apron", "napkin set"),
                 ("linen", "knitted", "embroidered", "quilted", "woven", "printed")),
    "party": (("bunting", "balloon pack", "paper plates", "party hats", "cake toppers", "streamers"),
              ("glitter", "biodegradable", "birthday", "neon", "confetti", "pastel")),
    "storage": (("jar", "basket", "storage box", "shelf", "hook rack", "drawer organiser"),
                ("stackable", "airtight", "collapsible", "wire", "rattan", "labelled")),
    "christmas": (("bauble", "advent calendar", "stocking", "wreath", "tree topper", "nativity set"),
                  ("glass", "hand-painted", "felt", "twinkling", "nordic", "gilded")),
    "jewellery": (("necklace", "bracelet", "earrings", "ring", "brooch", "charm"),
                  ("silver", "beaded", "enamel", "vintage", "minimalist", "gemstone")),
    "pets": (("dog bowl", "cat toy", "lead", "pet bed", "scratching post", "treat jar"),
             ("chew-proof", "washable", "orthopaedic", "catnip", "reflective", "elevated")),
}
COLOURS = ("red", "blue", "green", "ivory", "black", "pink", "grey", "mustard", "teal", "white")
BRANDS = ("Northwind", "Acme Home", "Bramble & Co", "Little Wren", "Harbour", "Oak Lane", "Kiln", "Fable")

BAD_KINDS_TYPED = ("missing_user_id", "missing_item_id", "unparseable_timestamp", "timestamp_in_future",
                   "unknown_event_type", "invalid_price", "invalid_quantity")


@dataclass(frozen=True)
class Funnel:
    """Session shape and conversion probabilities (defaults give about 4.5 events per session)."""

    views_per_session_mean: float = 3.0   # geometric number of views, at least 1
    p_click: float = 0.45                 # per view
    p_cart: float = 0.35                  # per click
    p_purchase: float = 0.55              # per add_to_cart
    p_return: float = 0.06                # per purchase, 1-14 days later
    taste_strength: float = 0.85          # a session's category comes from the user's tastes
    sessions_per_user_day: float = 0.25   # when no events target is given


def generate(out_dir: str | Path, *, users: int, items: int, days: int, start_date: dt.date | str,
             seed: int = 0, bad_rate: float = 0.0, fmt: str = "parquet", events: int | None = None,
             categories: int = len(VOCABULARY), zipf_exponent: float = 1.1, chunk_events: int = 1_000_000,
             funnel: Funnel = Funnel()) -> dict[str, Any]:
    """Write ``out_dir/events/``, ``out_dir/items/`` and ``out_dir/truth.json``; return a summary.

    ``events``: stop at exactly this many event rows (else ``users * days * sessions_per_user_day``
    sessions). Existing ``events/`` and ``items/`` folders are replaced, so a rerun with the same
    arguments leaves identical files."""
    check_params(users=users, items=items, days=days, bad_rate=bad_rate, fmt=fmt, categories=categories,
                 events=events, chunk_events=chunk_events)
    start = dt.date.fromisoformat(start_date) if isinstance(start_date, str) else start_date
    out = Path(out_dir)
    for sub in ("events", "items"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    world = _World.build(np.random.default_rng([seed, 0]), users=users, items=items,
                         categories=min(categories, len(VOCABULARY)), zipf_exponent=zipf_exponent)
    _write(world.item_table(start), out / "items" / f"part-00000.{FORMATS[fmt]}", fmt, bad_lines=None)
    sessions = None if events is not None else int(round(users * days * funnel.sessions_per_user_day))
    tally = _write_events(out / "events", world, funnel, start, days, seed=seed, bad_rate=bad_rate, fmt=fmt,
                          events=events, sessions=sessions, chunk_events=chunk_events)
    truth = {
        "seed": seed, "users": users, "items": items, "days": days, "start_date": start.isoformat(),
        "categories": world.category_names,
        "user_tastes": {f"u{u}": [world.category_names[c] for c in world.tastes[u] if c >= 0] for u in range(users)},
    }
    (out / "truth.json").write_text(json.dumps(truth, sort_keys=True))
    return {
        "out_dir": str(out), "format": fmt, "events": tally["events"], "event_files": tally["files"], "items": items,
        "users": users, "days": days, "start_date": start.isoformat(),
        "end_date": (start + dt.timedelta(days=days - 1)).isoformat(), "seed": seed,
        "events_by_type": tally["by_type"], "bad_records": tally["bad"],
        "bad_records_total": sum(tally["bad"].values()),
    }


def _write_events(folder: Path, world: "_World", funnel: Funnel, start: dt.date, days: int, *, seed: int,
                  bad_rate: float, fmt: str, events: int | None, sessions: int | None,
                  chunk_events: int) -> dict[str, Any]:
    """Draw sessions chunk by chunk (about ``chunk_events`` events each, one file per chunk) until
    ``events`` rows are written, or without ``events`` ``sessions`` sessions; returns the counts written."""
    start_us = int(dt.datetime(start.year, start.month, start.day, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    span_us = days * 86_400 * 1_000_000
    sessions_per_chunk = max(1, int(chunk_events / _expected_events_per_session(funnel)))
    tally = {"events": 0, "files": 0, "by_type": {t: 0 for t in EVENT_TYPES},
             "bad": {k: 0 for k in (*BAD_KINDS_TYPED, "malformed_record")}}
    sessions_done = 0
    while tally["events"] < events if events is not None else sessions_done < sessions:
        n_sessions = sessions_per_chunk if sessions is None else min(sessions_per_chunk, sessions - sessions_done)
        rng = np.random.default_rng([seed, 1, tally["files"]])   # chunk k's own stream
        chunk = _sessions(rng, world, funnel, n_sessions, sessions_done, start_us, span_us)
        sessions_done += n_sessions
        if events is not None and tally["events"] + len(chunk["user"]) > events:
            chunk = {k: v[: events - tally["events"]] for k, v in chunk.items()}
        if len(chunk["user"]) == 0:
            continue
        for i, name in enumerate(EVENT_TYPES):
            tally["by_type"][name] += int(np.count_nonzero(chunk["type"] == i))
        table, bad_lines, chunk_bad = _to_table(rng, world, chunk, bad_rate=bad_rate, fmt=fmt,
                                                future_us=start_us + span_us + 30 * 86_400 * 1_000_000)
        for k, v in chunk_bad.items():
            tally["bad"][k] += v
        _write(table, folder / f"part-{tally['files']:05d}.{FORMATS[fmt]}", fmt, bad_lines=bad_lines)
        tally["events"] += len(chunk["user"])
        tally["files"] += 1
    return tally


def check_params(*, users: int, items: int, days: int, bad_rate: float, fmt: str, categories: int,
                 events: int | None, chunk_events: int) -> None:
    """Raise ValueError on arguments :func:`generate` cannot honour."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if users < 1 or items < 1 or days < 1 or categories < 1 or chunk_events < 1:
        raise ValueError("users, items, days, categories and chunk_events must be at least 1")
    if not 0.0 <= bad_rate < 1.0:
        raise ValueError(f"bad_rate must be in [0, 1), got {bad_rate}")
    if events is not None and events < 0:
        raise ValueError(f"events must be >= 0, got {events}")


def _expected_events_per_session(f: Funnel) -> float:
    views = f.views_per_session_mean
    clicks = views * f.p_click
    carts = clicks * f.p_cart
    purchases = carts * f.p_purchase
    return views + clicks + carts + purchases + purchases * f.p_return


@dataclass
class _World:
    category_names: list[str]
    item_category: np.ndarray      # (items,) category index of each item
    item_price: np.ndarray         # (items,)
    cat_cdf: np.ndarray            # (items,) category index + within-category cumulative popularity
    cat_order: np.ndarray          # (items,) item index, sorted by category then popularity
    tastes: np.ndarray             # (users, 3) taste category indices, -1 padded
    taste_cdf: np.ndarray          # (users, 3) cumulative taste weights
    titles: list[str]
    descriptions: list[str]
    brands: list[str]

    @classmethod
    def build(cls, rng: np.random.Generator, *, users: int, items: int, categories: int,
              zipf_exponent: float) -> "_World":
        names = list(VOCABULARY)[:categories]
        item_category = rng.integers(0, categories, size=items)
        # Zipf popularity within each category: rank r gets weight r^-s (rank in a random order).
        rank = np.empty(items, dtype=np.int64)
        order = np.lexsort((rng.random(items), item_category))        # by category, random within
        cat_sorted = item_category[order]
        first = np.searchsorted(cat_sorted, np.arange(categories))
        rank[order] = np.arange(items) - first[cat_sorted] + 1
        weight = rank.astype(np.float64) ** -zipf_exponent
        w_sorted = weight[order]
        cum = np.cumsum(w_sorted)
        totals = np.bincount(item_category, weights=weight, minlength=categories)
        before = np.concatenate([[0.0], cum])[first[cat_sorted]]          # weight of earlier categories
        within = (cum - before) / totals[cat_sorted]
        cat_cdf = cat_sorted + np.minimum(within, 1.0)
        last = np.r_[np.diff(cat_sorted) != 0, True]                      # close each category at c + 1
        cat_cdf[last] = cat_sorted[last] + 1.0
        base_price = np.exp(rng.normal(1.5, 0.4, size=categories))     # each category its price level
        item_price = np.round(base_price[item_category] * np.exp(rng.normal(0, 0.35, size=items)), 2) + 0.0
        n_tastes = rng.integers(1, 4, size=users)
        tastes = np.full((users, 3), -1, dtype=np.int64)
        raw = np.argsort(rng.random((users, categories)), axis=1)[:, :3]
        cols = np.arange(3)[None, :] < n_tastes[:, None]
        tastes[cols] = raw[cols] if categories >= 3 else np.minimum(raw, categories - 1)[cols]
        w = rng.dirichlet(np.ones(3), size=users) * cols
        taste_cdf = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
        adj_i = rng.integers(0, 6, size=items)
        col_i = rng.integers(0, len(COLOURS), size=items)
        noun_i = rng.integers(0, 1 << 30, size=items)
        brand_i = rng.integers(0, len(BRANDS), size=items)
        titles, descriptions = [], []
        for i in range(items):
            nouns, adjectives = VOCABULARY[names[item_category[i]]]
            noun = nouns[noun_i[i] % len(nouns)]
            adjective = adjectives[adj_i[i] % len(adjectives)]
            titles.append(f"{adjective} {COLOURS[col_i[i]]} {noun}")
            descriptions.append(f"A {adjective} {noun} in {COLOURS[col_i[i]]}, from our {names[item_category[i]]} range.")
        return cls(category_names=names, item_category=item_category, item_price=item_price,
                   cat_cdf=cat_cdf, cat_order=order, tastes=tastes, taste_cdf=taste_cdf,
                   titles=titles, descriptions=descriptions, brands=[BRANDS[b] for b in brand_i])

    def item_table(self, start: dt.date) -> pa.Table:
        n = len(self.titles)
        updated = dt.datetime(start.year, start.month, start.day, tzinfo=dt.timezone.utc)
        return pa.table({
            "item_id": _ids("i", np.arange(n)),
            "title": pa.array(self.titles),
            "description": pa.array(self.descriptions),
            "category": pa.array([self.category_names[c] for c in self.item_category]),
            "brand": pa.array(self.brands),
            "price": pa.array(self.item_price, pa.float64()),
            "updated_at": pa.array([updated] * n, pa.timestamp("us", tz="UTC")),
        })


def _sessions(rng: np.random.Generator, world: _World, f: Funnel, n_sessions: int, session_base: int,
              start_us: int, span_us: int) -> dict[str, np.ndarray]:
    """One chunk of sessions as flat event arrays, in session then time order."""
    users = len(world.tastes)
    categories = len(world.category_names)
    user = rng.integers(0, users, size=n_sessions)
    pick = (rng.random(n_sessions)[:, None] > world.taste_cdf[user]).sum(axis=1)     # index into tastes
    taste_cat = world.tastes[user, np.minimum(pick, 2)]
    taste_cat = np.where(taste_cat < 0, world.tastes[user, 0], taste_cat)
    cat = np.where(rng.random(n_sessions) < f.taste_strength, taste_cat, rng.integers(0, categories, size=n_sessions))
    n_views = rng.geometric(1.0 / f.views_per_session_mean, size=n_sessions)
    start = start_us + (rng.random(n_sessions) * (span_us - 3_600_000_000)).astype(np.int64)

    # one row per view
    v_session = np.repeat(np.arange(n_sessions), n_views)
    v_cat = cat[v_session]
    u = rng.random(len(v_session))
    pos = np.searchsorted(world.cat_cdf, v_cat + u, side="right")
    v_item = world.cat_order[np.minimum(pos, len(world.cat_order) - 1)]
    gaps = rng.integers(30_000_000, 300_000_000, size=len(v_session))          # 30 s - 5 min between views
    first_of_session = np.r_[0, np.cumsum(n_views)[:-1]]
    cum = np.cumsum(gaps)
    v_ts = start[v_session] + cum - (cum - gaps)[first_of_session][v_session]
    clicked = rng.random(len(v_session)) < f.p_click
    carted = clicked & (rng.random(len(v_session)) < f.p_cart)
    bought = carted & (rng.random(len(v_session)) < f.p_purchase)
    returned = bought & (rng.random(len(v_session)) < f.p_return)
    step = rng.integers(3_000_000, 9_000_000, size=(len(v_session), 3))       # 3-9 s per funnel step
    return_after = rng.integers(86_400_000_000, 14 * 86_400_000_000, size=len(v_session))
    qty = rng.integers(1, 4, size=len(v_session))

    # event rows: (view row, type) for each stage reached, ordered by view row then stage
    stages = [np.ones(len(v_session), bool), clicked, carted, bought, returned]
    offsets = [np.zeros(len(v_session), np.int64), step[:, 0], step[:, 0] + step[:, 1],
               step.sum(axis=1), step.sum(axis=1) + return_after]
    rows = np.concatenate([np.flatnonzero(s) for s in stages])
    types = np.concatenate([np.full(np.count_nonzero(s), i, np.int8) for i, s in enumerate(stages)])
    ts = np.concatenate([v_ts[s] + o[s] for s, o in zip(stages, offsets)])
    inside = ts < start_us + span_us          # a return 1-14 days on, or a long session, may fall past the span
    rows, types, ts = rows[inside], types[inside], ts[inside]
    order = np.lexsort((types, rows))
    rows, types, ts = rows[order], types[order], ts[order] // 1_000_000 * 1_000_000   # whole seconds
    has_qty = types >= 2
    return {
        "user": user[v_session[rows]],
        "item": v_item[rows],
        "type": types,
        "ts": ts,
        "quantity": np.where(has_qty, qty[rows], 0),
        "has_quantity": has_qty,
        "session": session_base + v_session[rows],
    }


def _ids(prefix: str, idx: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(pa.scalar(prefix), pc.cast(pa.array(idx), pa.string()), "")


def _to_table(rng: np.random.Generator, world: _World, c: dict[str, np.ndarray], *, bad_rate: float, fmt: str,
              future_us: int) -> tuple[pa.Table, dict[int, bytes] | None, dict[str, int]]:
    n = len(c["user"])
    price = world.item_price[c["item"]]
    has_price = c["type"] >= 2
    user_id = _ids("u", c["user"])
    item_id = _ids("i", c["item"])
    event_type = pa.DictionaryArray.from_arrays(pa.array(c["type"]), pa.array(EVENT_TYPES)).cast(pa.string())
    event_ts = pa.array(c["ts"], pa.timestamp("us", tz="UTC"))
    quantity = pa.array(c["quantity"].astype(np.int32), mask=~c["has_quantity"])
    price_arr = pa.array(price, pa.float64(), mask=~has_price)
    session_id = _ids("s", c["session"])
    bad_counts: dict[str, int] = {}
    bad_lines: dict[int, bytes] | None = None
    if bad_rate > 0:
        kinds = list(BAD_KINDS_TYPED) + (["malformed_record"] if fmt != "parquet" else [])
        bad_rows = np.flatnonzero(rng.random(n) < bad_rate)
        bad_kind = rng.integers(0, len(kinds), size=len(bad_rows))
        # text columns so that text faults can be written (see module docstring)
        ts_text = _iso(event_ts).to_numpy(zero_copy_only=False).astype(object)
        qty_text = np.array([None] * n, dtype=object)
        qty_text[c["has_quantity"]] = c["quantity"][c["has_quantity"]].astype(str)
        price_text = np.array([None] * n, dtype=object)
        price_text[has_price] = np.char.mod("%.2f", price[has_price])
        users_o = user_id.to_numpy(zero_copy_only=False).astype(object)
        items_o = item_id.to_numpy(zero_copy_only=False).astype(object)
        types_o = event_type.to_numpy(zero_copy_only=False).astype(object)
        future_text = dt.datetime.fromtimestamp(future_us / 1e6, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        malformed_rows = []
        for row, k in zip(bad_rows, bad_kind):
            kind = kinds[k]
            bad_counts[kind] = bad_counts.get(kind, 0) + 1
            if kind == "missing_user_id":
                users_o[row] = None
            elif kind == "missing_item_id":
                items_o[row] = None
            elif kind == "unparseable_timestamp":
                ts_text[row] = "yesterday at noon"
            elif kind == "timestamp_in_future":
                ts_text[row] = future_text
            elif kind == "unknown_event_type":
                types_o[row] = "wishlist"
            elif kind == "invalid_price":
                price_text[row] = "-4.99" if row % 2 else "twelve pounds"
            elif kind == "invalid_quantity":
                qty_text[row] = "0" if row % 2 else "a few"
            else:
                malformed_rows.append(row)
        table = pa.table({"user_id": pa.array(users_o, pa.string()), "item_id": pa.array(items_o, pa.string()),
                          "event_type": pa.array(types_o, pa.string()), "event_ts": pa.array(ts_text, pa.string()),
                          "quantity": pa.array(qty_text, pa.string()), "price": pa.array(price_text, pa.string()),
                          "session_id": session_id})
        if malformed_rows:
            bad_lines = {int(r): b"" for r in malformed_rows}
        return table, bad_lines, bad_counts
    table = pa.table({"user_id": user_id, "item_id": item_id, "event_type": event_type, "event_ts": event_ts,
                      "quantity": quantity, "price": price_arr, "session_id": session_id})
    return table, None, bad_counts


def _write(table: pa.Table, path: Path, fmt: str, bad_lines: dict[int, bytes] | None) -> None:
    if fmt == "parquet":
        pq.write_table(table, path, compression="snappy")
        return
    if fmt == "csv":
        table = _text_timestamps(table)
        buf = pa.BufferOutputStream()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=True, quoting_style="needed"))
        data = buf.getvalue().to_pybytes()
        header_lines = 1
    else:
        data = _jsonl(_text_timestamps(table))
        header_lines = 0
    if bad_lines:
        lines = data.split(b"\n")
        for n, row in enumerate(sorted(bad_lines)):
            i = row + header_lines
            lines[i] = _break(lines[i], fmt, n)
        data = b"\n".join(lines)
    path.write_bytes(data)


def _text_timestamps(table: pa.Table) -> pa.Table:
    """ISO-8601 UTC text for event_ts / updated_at in text formats (what Spark and people read alike)."""
    for name in ("event_ts", "updated_at"):
        if name in table.column_names and pa.types.is_timestamp(table.schema.field(name).type):
            text = _iso(table[name])
            table = table.set_column(table.schema.get_field_index(name), name, text)
    return table


def _iso(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
    return pc.strftime(ts.cast(pa.timestamp("s", tz="UTC"), safe=False), format="%Y-%m-%dT%H:%M:%SZ")


def _jsonl(table: pa.Table) -> bytes:
    frame = table.to_pandas(integer_object_nulls=True)   # quantities stay integers (3, not 3.0) next to nulls
    return frame.to_json(orient="records", lines=True, force_ascii=False).encode()


def _break(line: bytes, fmt: str, n: int) -> bytes:
    """A truly malformed line, cycling through the ways real files break."""
    way = n % 3
    if way == 0:                                   # truncated mid-record (a cut-off write)
        return line[: max(1, len(line) // 3)]
    if way == 1:                                   # bytes that are not UTF-8 (a Latin-1 export)
        return line[:4] + b"\xff\xfe\xe9" + line[4:]
    if fmt == "csv":                               # wrong column count
        return line + b",surplus,fields"
    return b"[" + line + b"]"                      # JSON, but not an object
