"""The two-stage ranker on a generated lake: `warmstart train-ranker` registers a ranker fitted on the
nights before D (its transformer retriever from a version registered before them), `warmstart score`
writes its lists in the candidates table, and a night's training rows see nothing after that night.

Generated: 90 users, 60 items, 49 days from 2024-01-01; D = 2024-02-11, training nights 02-04 (validation),
01-28, 01-21. The transformer is an untrained SeqRec registered for 2024-01-14 (its scores are noise,
but every code path that reads them runs).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from conftest import args_for

pytestmark = pytest.mark.slow

D = dt.date(2024, 2, 11)
NIGHT = dt.date(2024, 1, 21)           # the oldest training night: the leakage test's night
SMALL = {"features.sequence_length": 12, "score.k": 10, "ranker.transformer_n": 20, "ranker.neighbour_n": 20,
         "ranker.popular_n": 10, "ranker.max_rounds": 40, "ranker.early_stopping_rounds": 10}


def _register_transformer(spark, lake: str, models: str, config) -> str:
    import torch

    from features.tables import ITEMS
    from jobs import lake as lakeio
    from training.model import SeqRec, SeqRecConfig
    from training.registry import promote, save_version

    vocab = sorted(r["item_id"] for r in lakeio.read(spark, lake, ITEMS).select("item_id").collect())
    torch.manual_seed(0)
    model = SeqRec(SeqRecConfig(num_items=len(vocab), dim=16, num_layers=1, num_heads=2, max_seq_len=12,
                                dropout=0.0, use_text=False, recent_days=0)).eval()
    version = "20240114-test"
    save_version(models, config.train.name, version, model, vocab, {}, {"val_ndcg@10": 0.1}, {})
    promote(models, config.train.name, version, margin=0.0)
    return version


@pytest.fixture(scope="module")
def world(spark, config, tmp_path_factory):
    from features.synthetic import generate
    from jobs import build_features, ingest

    root = tmp_path_factory.mktemp("ranker")
    config = config.with_overrides({**SMALL, "paths.models": str(root / "models"), "paths.reports": str(root / "reports")})
    lake = str(root / "lake")
    generate(root / "drop", users=90, items=60, days=49, start_date="2024-01-01", seed=5)
    ingest.run(spark, args_for(ingest.IngestArgs, lake, config, run_date=dt.date(2024, 2, 19),
                               events=(str(root / "drop" / "events"),), items=(str(root / "drop" / "items"),)))
    transformer = _register_transformer(spark, lake, str(root / "models"), config)
    build_features.run(spark, args_for(build_features.BuildFeaturesArgs, lake, config, run_date=D))
    return {"root": root, "lake": lake, "config": config, "transformer": transformer}


@pytest.fixture(scope="module")
def trained(spark, world):
    from jobs import train_ranker

    first = train_ranker.run(spark, args_for(train_ranker.TrainRankerArgs, world["lake"], world["config"], run_date=D))
    again = train_ranker.run(spark, args_for(train_ranker.TrainRankerArgs, world["lake"], world["config"], run_date=D))
    return first, again


def test_train_ranker_registers_a_portable_model_with_lineage_and_reuses_it(trained, world):
    from training import ranker as R
    from training.versions import latest_version, read_json

    first, again = trained
    models, name = str(world["root"] / "models"), world["config"].ranker.name
    assert first["training_nights"] == "2024-02-04, 2024-01-28, 2024-01-21"
    assert first["features_built_for"] == "2024-02-04, 2024-01-28, 2024-01-21"     # the lake had only D's
    assert first["retrievers"] == "transformer, past, tifu_knn, cooccurrence, popular"
    assert first["transformer_versions"].count(world["transformer"]) == 3
    assert first["promoted"] and latest_version(models, name) == first["version"]
    assert again["version"] == first["version"] and again["reused"] and not first["reused"]
    loaded = R.load(models, name)
    assert {"transformer_score", "past_score", "ui_baskets_with_item", "user_spend_30d", "item_conversion_rate_30d"} \
        <= set(loaded.features)
    assert (Path(first["path"]) / "model.json").read_text().startswith("{")        # XGBoost's JSON, no pickle
    lineage = read_json(Path(first["path"]) / "lineage.json")
    assert lineage["training_nights"] == ["2024-02-04", "2024-01-28", "2024-01-21"]
    assert set(lineage["transformer_versions"].values()) == {world["transformer"]}
    assert first["train_groups"] > 0 and 1 <= first["rounds"] <= 40


def test_score_writes_the_rankers_lists_and_a_rerun_changes_nothing(spark, trained, world):
    from features.tables import ITEMS, USER_CANDIDATES
    from jobs import lake as lakeio, ranking, score
    from training import ranker as R

    def scored(**overrides):
        config = world["config"].with_overrides(overrides)
        summary = score.run(spark, args_for(score.ScoreArgs, world["lake"], config, run_date=D))
        rows = (lakeio.read(spark, world["lake"], USER_CANDIDATES).where(F.col("run_date") == F.lit(D))
                .select("user_id", "rank", "item_id", "score", "strategy").toPandas())
        return summary, rows.sort_values(["user_id", "rank"]).reset_index(drop=True)

    summary, rows = scored()
    assert summary["ranker"].endswith(trained[0]["version"])
    ranked = rows[rows["strategy"] == "ranker"]
    assert summary["users_ranked"] == ranked["user_id"].nunique() > 0
    per_user = ranked.groupby("user_id")["rank"].agg(list)
    assert all(r == list(range(1, 11)) for r in per_user)                          # K = 10, ranks 1..K
    assert not ranked.duplicated(["user_id", "item_id"]).any()
    assert set(ranked["item_id"]) <= {r["item_id"] for r in lakeio.read(spark, world["lake"], ITEMS).collect()}
    assert (ranked.groupby("user_id")["score"].apply(lambda s: bool(np.all(np.diff(s.to_numpy()) <= 0)))).all()
    assert {"retrievers", "features", "predict", "top k"} <= set(summary["ranking_worker_seconds"])
    assert summary["ranking_candidates"] >= summary["users_ranked"] * 10     # the ranker orders >= K a user
    _, rerun = scored(**{"score.rank_chunk_users": 7, "score.partitions": 3, "score.arrow_batch_users": 5})
    assert summary["users_ranked"] > 7
    pd.testing.assert_frame_equal(rows, rerun)        # deterministic; the chunks and partitions change nothing
    config = world["config"]                          # the workers' lists: the in-process function's on the same rows
    lists, _, _ = score.candidate_lists(spark, args_for(score.ScoreArgs, world["lake"], config, run_date=D,
                                                        k=config.ranker.transformer_n))
    context = ranking.rank_context(spark, world["lake"], config, D, R.load(str(world["root"] / "models"),
                                                                            config.ranker.name), 10)
    reference = ranking.rank_users(context, lists).sort_values(["user_id", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, reference, check_dtype=False)
    _, plain = scored(**{"score.rank": False})
    assert set(plain["strategy"]) <= {"model", "popular_fallback"}
    both = ranked.merge(plain, on=["user_id", "rank"], suffixes=("", "_model"))
    assert (both["item_id"] != both["item_id_model"]).mean() > 0.5                 # the ranker reorders


def test_a_nights_training_rows_see_nothing_after_it(spark, world, trained):
    """Night 01-21's rows on the full lake (events to 02-18, feature partitions to D) equal its rows on a
    lake holding only the events before its labels' end and only its own feature partition."""
    from features.tables import EVENTS, ITEMS
    from jobs import build_features, lake as lakeio, ranking
    from jobs.backtest import read_purchases
    from training import heuristics as H

    config = world["config"]
    cut = dt.datetime(2024, 1, 29)            # cutoff(01-21) + the 7 label days
    short = str(world["root"] / "short")
    lakeio.append(spark, short, EVENTS, lakeio.read(spark, world["lake"], EVENTS).where(F.col("event_ts") < F.lit(cut)))
    lakeio.append(spark, short, ITEMS, lakeio.read(spark, world["lake"], ITEMS))
    build_features.run(spark, args_for(build_features.BuildFeaturesArgs, short, config, run_date=NIGHT))

    def frame(lake: str) -> pd.DataFrame:
        catalogue, recommendable, purchases, _ = read_purchases(spark, lake, config)
        nights = {NIGHT: ranking.training_set(purchases, recommendable, NIGHT + dt.timedelta(days=7), config.ranker)[NIGHT]}
        frames = ranking.night_frames(spark, lake, nights, catalogue, lambda _: None, H.TifuKnnParams(k=10),
                                      ranking.pools(config.ranker))
        return frames[NIGHT].frame

    full, alone = frame(world["lake"]), frame(short)
    assert len(full) > 0 and full["label"].sum() > 0
    assert full["user_spend_30d"].notna().mean() > 0.9          # the night's own feature partition was joined
    pd.testing.assert_frame_equal(full, alone)


def test_the_night_lookup_gives_every_candidate_the_spark_as_of_joins_features(spark, world):
    """The ranker reads its features through ranking.NightLookup (collected once a night, joined in arrays);
    on night D's candidates it must give every row exactly what features.historical.get_historical_features,
    the Spark as-of join of one row per candidate, gives."""
    from features.historical import get_historical_features
    from features.tables import EVENTS, ITEM_FEATURES, ITEMS, USER_FEATURES
    from jobs import lake as lakeio, ranking
    from jobs.backtest import read_purchases
    from training import backtest as B
    from training import heuristics as H
    from training import ranker as R

    lake, config = world["lake"], world["config"]
    catalogue, recommendable, purchases, _ = read_purchases(spark, lake, config)    # the week after D: who to judge
    night = B.night(purchases, D, 7, recommendable)
    frame = R.candidates(night, night.evaluated, transformer=None, tifu=H.TifuKnnParams(k=10),
                         cooccurrence=R.cooccurrence_model(night), pools=ranking.pools(config.ranker))
    users = night.user_ids[np.unique(frame["row"].to_numpy(np.int64))]
    got = ranking.night_lookup(spark, lake, D, users, catalogue).attach(frame, night.user_ids)

    keys = pd.DataFrame({"user_id": night.user_ids[frame["row"].to_numpy()].astype(str),
                         "item_id": np.asarray(catalogue, dtype=object)[frame["item"].to_numpy()],
                         "as_of_date": D, "row": frame["row"].to_numpy(np.int64),
                         "item": frame["item"].to_numpy(np.int64)})
    joined = get_historical_features(spark.createDataFrame(keys), user_features=lakeio.read(spark, lake, USER_FEATURES),
                                     item_features=lakeio.read(spark, lake, ITEM_FEATURES),
                                     events=lakeio.read(spark, lake, EVENTS), items=lakeio.read(spark, lake, ITEMS))
    want = ranking._numeric(joined, ("row", "item")).sort_values(["row", "item"]).reset_index(drop=True)
    assert len(want) == len(frame) == len(got) and len(want.columns) > 60
    # every kind of value is there to be compared: bought before, never bought, in a known category, not
    assert 0 < got["ui_days_since_last_purchase"].notna().mean() < 1
    assert 0 < got["ui_category_share"].notna().mean() and (got["ui_category_share"] > 0).any()
    assert got["ui_price_vs_user_mean"].notna().any() and got["user_spend_30d"].notna().any()
    pd.testing.assert_frame_equal(got[want.columns].astype(want.dtypes.to_dict()), want, check_exact=True)
