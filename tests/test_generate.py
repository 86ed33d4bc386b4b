"""The synthetic generator (features/synthetic.py, `warmstart generate`): deterministic for a seed,
streaming in chunks, the learnable structure it promises, and the bad records it injects."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from features import synthetic
from jobs import generate as generate_job


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _events(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "events").to_pandas()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "g"
    summary = synthetic.generate(out, users=400, items=300, days=20, start_date="2024-03-01", seed=7,
                                 events=60_000, chunk_events=20_000)
    return out, summary


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    kwargs = dict(users=50, items=40, days=5, start_date="2024-01-01", bad_rate=0.05, fmt="csv", chunk_events=300)
    a = synthetic.generate(tmp_path / "a", seed=3, **kwargs)
    b = synthetic.generate(tmp_path / "b", seed=3, **kwargs)
    rerun = synthetic.generate(tmp_path / "a", seed=3, **kwargs)   # overwrite in place
    synthetic.generate(tmp_path / "c", seed=4, **kwargs)
    assert a == rerun and {k: v for k, v in a.items() if k != "out_dir"} == {k: v for k, v in b.items() if k != "out_dir"}
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a")["events/part-00000.csv"] != _digest(tmp_path / "c")["events/part-00000.csv"]
    assert a["event_files"] > 1          # several chunks were streamed


def test_exact_event_target_schema_and_chunking(world):
    out, summary = world
    events = _events(out)
    assert summary["events"] == len(events) == 60_000
    assert summary["event_files"] == len(list((out / "events").glob("*.parquet"))) >= 3
    assert list(events.columns) == ["user_id", "item_id", "event_type", "event_ts", "quantity", "price", "session_id"]
    assert set(events["event_type"]) <= set(synthetic.EVENT_TYPES)
    assert summary["events_by_type"] == events["event_type"].value_counts().to_dict() | {
        t: 0 for t in synthetic.EVENT_TYPES if t not in set(events["event_type"])}
    # views and clicks carry no quantity/price; carts, purchases and returns do, all positive
    money = events["event_type"].isin(["add_to_cart", "purchase", "return"])
    assert events.loc[~money, ["quantity", "price"]].isna().all().all()
    assert (events.loc[money, "quantity"] >= 1).all() and (events.loc[money, "price"] > 0).all()
    ts = pd.to_datetime(events["event_ts"], utc=True)
    non_return = events["event_type"] != "return"
    assert ts[non_return].min() >= pd.Timestamp("2024-03-01", tz="UTC")
    assert ts[non_return].max() < pd.Timestamp("2024-03-21", tz="UTC")
    items = pq.read_table(out / "items").to_pandas()
    assert list(items.columns) == ["item_id", "title", "description", "category", "brand", "price", "updated_at"]
    assert len(items) == 300 and items["item_id"].is_unique and set(events["item_id"]) <= set(items["item_id"])


def test_funnel_order_within_sessions(world):
    out, _ = world
    events = _events(out)
    rank = {t: i for i, t in enumerate(synthetic.EVENT_TYPES)}
    events["stage"] = events["event_type"].map(rank)
    by = events.groupby(["session_id", "item_id", "event_type"])["event_ts"].min().unstack()
    # a click follows its view, a cart its click, a purchase its cart, a return its purchase
    for earlier, later in [("view", "click"), ("click", "add_to_cart"), ("add_to_cart", "purchase"), ("purchase", "return")]:
        pair = by[[earlier, later]].dropna()
        assert len(pair) > 0 and (pair[later] > pair[earlier]).all()
    counts = events["event_type"].value_counts()
    assert counts["view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > counts["return"] > 0


def test_users_follow_their_tastes_and_titles_carry_categories(world):
    out, _ = world
    truth = json.loads((out / "truth.json").read_text())
    items = pq.read_table(out / "items").to_pandas().set_index("item_id")
    events = _events(out).join(items["category"], on="item_id")
    in_taste = [c in truth["user_tastes"][u] for u, c in zip(events["user_id"], events["category"])]
    share = sum(in_taste) / len(in_taste)
    # sessions pick a taste category with p=0.85, plus random sessions landing in a taste by chance
    assert 0.85 <= share <= 0.95
    assert all(1 <= len(t) <= 3 for t in truth["user_tastes"].values())
    nouns_ok = [any(n in title for n in synthetic.VOCABULARY[cat][0]) for title, cat in zip(items["title"], items["category"])]
    assert all(nouns_ok)
    # power law: the most viewed item of a category gets many times the median item's views
    views = events[events["event_type"] == "view"].groupby(["category", "item_id"]).size()
    top = views.groupby(level=0).max()
    median = views.groupby(level=0).median()
    assert (top / median).median() > 5


def test_bad_records_one_kind_each(tmp_path):
    summary = synthetic.generate(tmp_path / "g", users=100, items=50, days=5, start_date="2024-01-01", seed=1,
                                 bad_rate=0.2, fmt="jsonl", events=3000)
    bad = summary["bad_records"]
    assert set(bad) == set(synthetic.BAD_KINDS_TYPED) | {"malformed_record"}
    assert all(v > 0 for v in bad.values()) and 450 < summary["bad_records_total"] < 750
    raw = (tmp_path / "g" / "events" / "part-00000.jsonl").read_bytes().split(b"\n")
    parsed, broken = 0, 0
    for line in raw[:-1]:
        try:
            doc = json.loads(line.decode("utf-8"))
            parsed += isinstance(doc, dict)
            broken += not isinstance(doc, dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            broken += 1
    assert broken == bad["malformed_record"] and parsed + broken == 3000


def test_cli_writes_manifest_and_rejects_bad_arguments(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = generate_job.main(["--out", str(out), "--users", "20", "--items", "10", "--days", "2", "--events", "500",
                            "--lake", str(tmp_path / "lake"), "--format", "csv", "--seed", "5"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["events"] == 500 and manifest["params"]["seed"] == 5 and manifest["format"] == "csv"
    capsys.readouterr()
    assert generate_job.main(["--out", str(out), "--bad-rate", "1.5", "--lake", str(tmp_path / "lake")]) == 2
    assert generate_job.main(["--out", str(out), "--format", "xml", "--lake", str(tmp_path / "lake")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "bad_rate" in err[0] and "invalid choice" in err[1]
