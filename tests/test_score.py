"""jobs/score.py on a tiny lake with explicit rows, scored with a real registered model (the project's
SeqRec, untrained, saved with training.registry.save_version): model users against a direct numpy
reference, exclusions, the catalogue rule, the cold-start fallback, determinism, usage errors.

The lake (run date 2024-03-10, popularity window 30 days):
  items     i01-i04 garden, i05-i08 kitchen, new1 kitchen (in the catalogue, not in the model vocabulary);
            "gone" is in the model vocabulary but no longer in the catalogue.
  u1 garden   purchased i01 (03-01), i02 (03-05); purchase of i03 on 03-11 is after the run date
  u2 kitchen  purchased i02, i05 (03-02), viewed i06
  u3 kitchen  is_cold_start: one purchase of i05 (03-09)         -> popular_fallback (kitchen list)
  u4 -        in user_features only, no sequence, no events     -> popular_fallback (global list)
  u5 garden   purchased i02 on 01-01 (outside the window: excluded, but not popular)
  u6 kitchen  purchased i06, i02 (03-08)
Popular (distinct purchasers in the window): global i02 3/4, i05 2/4, i01 1/4, i06 1/4, then 0 (by id);
kitchen users (u2, u3, u6): i02 2/3, i05 2/3, i06 1/3.
"""
from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from features import daily
from features.tables import EVENTS, ITEM_DAILY, ITEMS, USER_CANDIDATES, USER_FEATURES, USER_SEQUENCES
from jobs import lake as lakeio, runtime, score
from scoring.topk import brute_force
from conftest import args_for

RUN = dt.date(2024, 3, 10)
CATALOGUE = ["i01", "i02", "i03", "i04", "i05", "i06", "i07", "i08", "new1"]
VOCAB = ["i01", "i02", "i03", "i04", "i05", "i06", "i07", "i08", "gone"]
TS = lambda s: dt.datetime.fromisoformat(s)  # noqa: E731

EVENT_ROWS = [  # user, item, type, ts
    ("u1", "i04", "view", "2024-02-20T10:00:00"),
    ("u1", "i01", "purchase", "2024-03-01T10:00:00"),
    ("u1", "i02", "purchase", "2024-03-05T10:00:00"),
    ("u1", "i03", "purchase", "2024-03-11T09:00:00"),      # after the run date: ignored
    ("u2", "i06", "view", "2024-03-01T10:00:00"),
    ("u2", "i02", "purchase", "2024-03-02T10:00:00"),
    ("u2", "i05", "purchase", "2024-03-02T10:00:00"),
    ("u3", "i05", "purchase", "2024-03-09T10:00:00"),
    ("u5", "i02", "purchase", "2024-01-01T10:00:00"),      # before the window
    ("u5", "i07", "view", "2024-03-03T10:00:00"),
    ("u6", "i06", "purchase", "2024-03-08T10:00:00"),
    ("u6", "i02", "purchase", "2024-03-08T10:00:00"),
    ("u6", "gone", "view", "2024-03-08T11:00:00"),
]
SEGMENTS = {"u1": "garden", "u2": "kitchen", "u3": "kitchen", "u4": None, "u5": "garden", "u6": "kitchen"}
COLD = {"u3", "u4"}


def _events(spark):
    rows = []
    for user, item, kind, ts in EVENT_ROWS:
        t = TS(ts)
        rows.append((hashlib.sha256(f"{user}{item}{kind}{ts}".encode()).hexdigest(), user, item, kind, t, t.date(),
                     1, 1.0, None, "test", TS("2024-03-11T00:00:00"), "ingest-test"))
    return spark.createDataFrame(rows, EVENTS.schema)


def _sequences(spark):
    rows = []
    for user in ("u1", "u2", "u3", "u5", "u6"):
        steps = sorted((TS(ts), item, kind) for u, item, kind, ts in EVENT_ROWS if u == user and TS(ts) < TS("2024-03-11T00:00:00"))
        rows.append((user, RUN, [s[1] for s in steps], [s[2] for s in steps], [s[0] for s in steps], len(steps)))
    return spark.createDataFrame(rows, USER_SEQUENCES.schema)


def _user_features(spark):
    rows = []
    for user, segment in SEGMENTS.items():
        row = {}
        for f in USER_FEATURES.schema.fields:
            name, kind = f.name, f.dataType.simpleString()
            row[name] = (user if name == "user_id" else RUN if name == "as_of_date" else segment if name == "top_category"
                         else user in COLD if name == "is_cold_start" else TS("2024-03-09T00:00:00") if kind == "timestamp"
                         else 0.0 if kind == "double" else None if f.nullable else 0)
        rows.append(row)
    return spark.createDataFrame(rows, USER_FEATURES.schema)


def _items(spark):
    rows = [(i, f"title {i}", None, "garden" if i < "i05" else "kitchen", "brand", 1.0, TS("2024-01-01T00:00:00"))
            for i in CATALOGUE]
    return spark.createDataFrame(rows, ITEMS.schema)


@pytest.fixture
def tiny_lake(spark, lake, tmp_path, config):
    from training.model import SeqRec, SeqRecConfig
    from training.registry import promote, save_version

    lakeio.append(spark, lake, EVENTS, _events(spark))
    lakeio.append(spark, lake, ITEMS, _items(spark))
    lakeio.replace_partition(spark, lake, USER_SEQUENCES, _sequences(spark), RUN)
    lakeio.replace_partition(spark, lake, USER_FEATURES, _user_features(spark), RUN)
    lakeio.append(spark, lake, ITEM_DAILY, daily.item_daily(_events(spark), 12).select(*ITEM_DAILY.columns))
    torch.manual_seed(0)
    cfg = SeqRecConfig(num_items=len(VOCAB), dim=16, num_layers=1, num_heads=2, max_seq_len=8, dropout=0.0,
                       use_text=False, recent_days=7)
    model = SeqRec(cfg).eval()
    with torch.no_grad():
        model.recent_weight.fill_(0.8)             # the recent-popularity column counts in the ranking
    models = tmp_path / "models"
    save_version(str(models), config.train.name, "v1", model, VOCAB, {}, {"val_ndcg@10": 0.1}, {})
    promote(str(models), config.train.name, "v1", margin=0.0)
    return {"lake": lake, "models": str(models), "reports": str(tmp_path / "reports"), "name": config.train.name}


def _args(tiny_lake, config, k=4, run_date=RUN, **overrides):
    return args_for(score.ScoreArgs, tiny_lake["lake"], config, run_date=run_date, k=k, model_version="latest",
                    overrides={"paths.models": tiny_lake["models"], "paths.reports": tiny_lake["reports"], **overrides})


def _rows(spark, lake):
    df = lakeio.read(spark, lake, USER_CANDIDATES).where(F.col("run_date") == F.lit(RUN))
    return sorted(tuple(r) for r in df.collect())


def _lists(rows):
    out: dict[str, list] = {}
    for user, rank, item, value, strategy, *_ in sorted(rows, key=lambda r: (r[0], r[1])):
        out.setdefault(user, []).append((item, value, strategy))
    return out


def _reference(tiny_lake, k, excluded):
    """Direct computation: the registered model's embeddings, full score matrix, lexsort."""
    import pandas as pd

    from training.registry import load_model

    model = load_model(tiny_lake["models"], tiny_lake["name"])
    items = pd.DataFrame([{"item_id": i, "title": f"title {i}", "description": None,
                           "category": "garden" if i < "i05" else "kitchen", "brand": "brand", "price": 1.0,
                           "updated_at": TS("2024-01-01T00:00:00")} for i in CATALOGUE])
    # recent popularity of the day served (RUN + 1): purchases on RUN - 6 .. RUN, counted here by hand
    window = {RUN - dt.timedelta(days=n) for n in range(7)}
    bought = [item for _, item, kind, ts in EVENT_ROWS if kind == "purchase" and TS(ts).date() in window]
    matrix = model.item_embeddings(items, recent=np.log1p([bought.count(i) for i in CATALOGUE]))
    assert matrix[:, -1].tolist() == pytest.approx([0.8 * np.log1p(n) for n in (0, 2, 0, 0, 1, 1, 0, 0, 0)])
    out = {}
    for user in ("u1", "u2", "u5", "u6"):
        steps = sorted((TS(ts), item, kind) for u, item, kind, ts in EVENT_ROWS if u == user and TS(ts) < TS("2024-03-11T00:00:00"))
        seq = ([[s[1] for s in steps]], [[s[2] for s in steps]], [[s[0] for s in steps]])
        vec = model.user_embeddings(*seq)
        # the repeat head: the user's past items (vocabulary positions) lifted by learned weights
        _, vocab_idx, values = model.repeat_boosts(*seq)
        boost = {CATALOGUE.index(model.item_ids[j]): float(v) for j, v in zip(vocab_idx, values)
                 if model.item_ids[j] in CATALOGUE}
        assert boost                                        # every scored user has past catalogue items
        skip = {CATALOGUE.index(i) for i in excluded.get(user, ()) if i in CATALOGUE}
        ids = brute_force(vec, matrix, k, [skip], [boost])[0]
        out[user] = ([CATALOGUE[j] for j in ids], (vec @ matrix.T)[0, ids] + [boost.get(j, 0.0) for j in ids])
    return out


def test_score_writes_model_and_fallback_lists_and_rerun_changes_nothing(spark, tiny_lake, config):
    args = _args(tiny_lake, config, k=4, **{"score.exclude_event_types": ["purchase"]})
    summary = score.run(spark, args)
    first = _rows(spark, tiny_lake["lake"])
    v1 = lakeio.version(spark, tiny_lake["lake"], USER_CANDIDATES)
    lists = _lists(first)

    assert summary["active_users"] == 6 and summary["users_model"] == 4 and summary["users_popular_fallback"] == 2
    assert summary["rows_written"] == 24 and summary["catalogue_items"] == 9
    assert summary["vocabulary_items_not_in_catalogue"] == 1 and summary["catalogue_items_not_in_vocabulary"] == 1

    # Model users: the reference's ids exactly (bought items excluded; u1's purchase after the run date is not).
    excluded = {"u1": {"i01", "i02"}, "u2": {"i02", "i05"}, "u5": {"i02"}, "u6": {"i06", "i02"}}
    for user, (ids, scores) in _reference(tiny_lake, 4, excluded).items():
        assert [i for i, _, _ in lists[user]] == ids, user
        np.testing.assert_allclose([s for _, s, _ in lists[user]], scores, rtol=1e-5, atol=1e-6)
        assert {s for _, _, s in lists[user]} == {"model"}
        assert not excluded[user] & set(ids)
    assert "i03" not in excluded["u1"]

    # Cold start: u3 (kitchen; i05 bought) gets the kitchen list then the global one; u4 the global list.
    assert lists["u3"] == [("i02", pytest.approx(2 / 3), "popular_fallback"), ("i06", pytest.approx(1 / 3), "popular_fallback"),
                           ("i01", 0.25, "popular_fallback"), ("i03", 0.0, "popular_fallback")]
    assert lists["u4"] == [("i02", 0.75, "popular_fallback"), ("i05", 0.5, "popular_fallback"),
                           ("i01", 0.25, "popular_fallback"), ("i06", 0.25, "popular_fallback")]

    # Every row carries the pinned model version and the deterministic generated_at.
    assert {r[5] for r in first} == {"v1"}
    assert {r[6] for r in first} == {dt.datetime(2024, 3, 11)}

    # Second run: a new commit, the same content.
    score.run(spark, _args(tiny_lake, config, k=4, **{"score.exclude_event_types": ["purchase"]}))
    assert lakeio.version(spark, tiny_lake["lake"], USER_CANDIDATES) == v1 + 1
    assert _rows(spark, tiny_lake["lake"]) == first


def test_only_catalogue_items_are_candidates_and_new_items_are_scored(spark, tiny_lake, config):
    score.run(spark, _args(tiny_lake, config, k=20, **{"score.fallback_for_cold_start": False}))
    lists = _lists(_rows(spark, tiny_lake["lake"]))
    # K above the catalogue: every model user gets the whole catalogue (9 items) once, "gone" never,
    # and the out-of-vocabulary "new1" through its text-only embedding.
    assert set(lists) == {"u1", "u2", "u3", "u4", "u5", "u6"}
    for user in ("u1", "u2", "u3", "u5", "u6"):
        assert sorted(i for i, _, _ in lists[user]) == CATALOGUE
        scores = [s for _, s, _ in lists[user]]
        assert scores == sorted(scores, reverse=True)
    # u4 has no sequence: fallback even with the cold-start rule off; the global list is the whole catalogue.
    assert [i for i, _, _ in lists["u4"]] == ["i02", "i05", "i01", "i06", "i03", "i04", "i07", "i08", "new1"]

    # a category that is never recommended (Online Retail's postage and fees: non_product) leaves both
    # the model lists and the popular fallback
    score.run(spark, _args(tiny_lake, config, k=20, **{"score.fallback_for_cold_start": False,
                                                        "score.exclude_categories": ["garden"]}))
    lists = _lists(_rows(spark, tiny_lake["lake"]))
    garden = {"i01", "i02", "i03", "i04"}
    assert all(sorted(i for i, _, _ in lists[u]) == sorted(set(CATALOGUE) - garden) for u in ("u1", "u5"))
    assert [i for i, _, _ in lists["u4"]] == ["i05", "i06", "i07", "i08", "new1"]


def test_missing_inputs_are_usage_errors(spark, tiny_lake, config, tmp_path):
    with pytest.raises(runtime.UsageError, match="no as_of_date=2024-03-11 partition"):
        score.run(spark, _args(tiny_lake, config, run_date=RUN + dt.timedelta(days=1)))
    with pytest.raises(runtime.UsageError, match="no LATEST model"):
        score.run(spark, _args(tiny_lake, config, **{"paths.models": str(tmp_path / "nowhere")}))
    with pytest.raises(runtime.UsageError, match="no LATEST model for 'other-model'"):   # the registry name is train.name
        score.run(spark, _args(tiny_lake, config, **{"train.name": "other-model"}))
    with pytest.raises(runtime.UsageError, match="--k must be"):
        score.run(spark, _args(tiny_lake, config, k=-1))


def test_cli_without_features_exits_2(lake, capsys):
    code = score.main(["--lake", lake, "--run-date", "2024-03-10", "spark.master=local[2]"])
    assert code == 2
    assert "not found" in capsys.readouterr().err
