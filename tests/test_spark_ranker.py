"""training/spark_ranker.py: the XGBoost ranker through xgboost.spark and the logistic-regression scorer
learn a planted signal on the shared Spark session; the Spark booster agrees with the single-process fit
and survives a JSON round trip through plain xgboost; candidate NDCG against hand-worked groups."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cluster_ranker_job import FEATURES, first_item_precision, planted

from training import ranker as R
from training import spark_ranker as S

# No row or column sampling: the workers draw their own samples, so with it the two fits differ by
# more than the distributed histogram cuts and the order comparison below would test the sampler.
# The cluster test (tests/cluster_ranker_job.py) trains with the default sampling.
PARAMS = R.TreeParams(max_rounds=50, early_stopping_rounds=10, subsample=1.0, colsample_bytree=1.0)


@pytest.fixture(scope="module")
def nights():
    return planted(200, 0, seed=1), planted(100, 1000, seed=2), planted(100, 2000, seed=3)


@pytest.fixture(scope="module")
def xgb_spark(spark, interpreted_sql, nights):     # tiny inputs: see conftest
    train, valid, _ = nights
    # several Arrow batches per worker, some without a validation row, as on real nights (the bug
    # training/spark_ranker.py's _with_feature_array steps around)
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    saved = spark.conf.get(key)
    spark.conf.set(key, "500")
    try:
        return S.fit_xgb_spark(spark, train, valid, FEATURES, PARAMS, num_workers=2)
    finally:
        spark.conf.set(key, saved)


def test_candidate_ndcg_against_hand_worked_groups():
    frame = pd.DataFrame({
        "qid":   [1, 1, 1,   2, 2, 2, 2,   3, 3,   4] + [5] * 11,
        "item":  [0, 1, 2,   0, 1, 2, 3,   0, 1,   0] + list(range(11)),
        "label": [0, 1, 0,   1, 0, 1, 0,   0, 0,   1] + [0] * 10 + [1],
    })
    score = np.array([0.9, 0.5, 0.1,               # q1: the positive second -> 1/log2(3) = 0.63093
                      0.8, 0.7, 0.6, 0.9,          # q2: positives 2nd and 4th ->
                                                   #     (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3)) = 0.65092
                      0.5, 0.4,                    # q3: no positive, left out
                      0.3,                         # q4: a lone positive -> 1.0
                      *[0.5] * 11])                # q5: all tied, lower item first: the positive (item 10)
                                                   #     is 11th, past k -> 0.0
    assert S.candidate_ndcg(frame, score, k=10) == pytest.approx((0.630930 + 0.650921 + 1.0 + 0.0) / 4, abs=1e-6)
    assert S.candidate_ndcg(frame[frame["qid"] == 5], score[-11:], k=11) == pytest.approx(1 / np.log2(12))
    assert np.isnan(S.candidate_ndcg(frame[frame["qid"] == 3], score[7:9]))


def test_spark_xgboost_learns_the_planted_signal_and_agrees_with_the_single_process_fit(spark, nights, xgb_spark):
    train, valid, test = nights
    model, info = xgb_spark
    spark_score = S.predict_spark(model, spark, test, FEATURES)
    assert first_item_precision(test, spark_score) > 0.9          # random would be ~0.16
    assert 1 <= info["rounds"] <= PARAMS.max_rounds
    assert info["train_groups"] == int((train.groupby("qid")["label"].max() > 0).sum())   # groups with a positive
    assert info["valid_rows"] == int(valid.groupby("qid")["label"].transform("max").gt(0).sum())
    assert info["validation_ndcg@10_in_candidates"] > 0.9
    booster, _ = R.fit(train, valid, FEATURES, PARAMS)
    local_score = R.predict(booster, test, FEATURES)
    rows = np.arange(test["row"].nunique())
    firsts = zip(R.top_lists(test, spark_score, rows, 1), R.top_lists(test, local_score, rows, 1))
    same_first = [a[0] == b[0] for a, b in firsts]
    assert np.mean(same_first) > 0.9
    ranked = test[["row"]].assign(spark=spark_score, local=local_score)
    ranked[["spark", "local"]] = ranked.groupby("row")[["spark", "local"]].rank()
    assert np.mean([g["spark"].corr(g["local"]) for _, g in ranked.groupby("row")]) > 0.95   # within each group
    gains = dict(R.importances(model.get_booster()))
    assert gains["signal"] > 0.5


def test_spark_xgboost_with_rounds_given_trains_exactly_that_many_without_early_stopping(spark, interpreted_sql,
                                                                                        nights):
    """The fixed-work path (bench/executors.py): no early-stopping pass, the refit alone, its trees
    counted in the booster, and still the planted signal learnt."""
    train, valid, test = nights
    model, info = S.fit_xgb_spark(spark, train, valid, FEATURES, PARAMS, num_workers=2, rounds=7)
    assert info["rounds"] == 7 and info["validation_ndcg@10_in_candidates"] is None
    assert model.get_booster().num_boosted_rounds() == 7
    assert first_item_precision(test, S.predict_spark(model, spark, test, FEATURES)) > 0.9


def test_spark_booster_saved_as_json_predicts_the_same_through_plain_xgboost(spark, nights, xgb_spark, tmp_path):
    import xgboost as xgb

    _, _, test = nights
    model, info = xgb_spark
    model.get_booster().save_model(str(tmp_path / "model.json"))
    booster = xgb.Booster()
    booster.load_model(str(tmp_path / "model.json"))
    assert booster.num_boosted_rounds() == info["rounds"]
    # shuffled rows: the Spark scores must come back in the frame's own order
    shuffled = test.sample(frac=1.0, random_state=0)
    spark_score = S.predict_spark(model, spark, shuffled, FEATURES)
    np.testing.assert_allclose(spark_score, R.predict(booster, shuffled, FEATURES), rtol=1e-5, atol=1e-6)
    # a Spark DataFrame comes back in its own (partition) order, here the shuffled frame's
    np.testing.assert_allclose(S.predict_spark(model, spark, spark.createDataFrame(shuffled), FEATURES), spark_score)
    assert len(np.unique(spark_score)) > 100                      # a graded score, not a few leaves


def test_logistic_regression_learns_the_planted_signal_with_a_missing_indicator(spark, interpreted_sql, nights):
    train, valid, test = nights
    model, info = S.fit_logreg(spark, train, valid, FEATURES)
    assert info["missing_indicators"] == ["signal"]                # noise has no NaN in train
    assert set(info["validation_ndcg@10_by_reg_param"]) == {"0.0", "0.01", "0.1"}
    assert info["validation_ndcg@10_in_candidates"] == max(info["validation_ndcg@10_by_reg_param"].values())
    assert info["train_rows"] == len(train) and info["valid_rows"] == len(valid)
    shuffled = test.sample(frac=1.0, random_state=0)
    score = S.predict_logreg(model, spark, shuffled, FEATURES)
    assert ((score >= 0) & (score <= 1)).all()
    assert first_item_precision(shuffled, score) > 0.9             # random would be ~0.16
    # row order kept: the same rows in the frame's own order give the same scores, permuted
    in_order = S.predict_logreg(model, spark, test, FEATURES)
    np.testing.assert_allclose(in_order[shuffled.index.to_numpy()], score, rtol=1e-12)
    # a not-proposed item scores below a proposed one of signal 0 (the indicator, not the 0 fill, decides)
    probe = pd.DataFrame({"signal": np.array([np.nan, 0.0], np.float32), "noise": np.zeros(2, np.float32)})
    assert np.diff(S.predict_logreg(model, spark, probe, FEATURES))[0] > 0


def test_fit_for_trains_through_xgboost_spark_when_the_engine_says_so(spark, interpreted_sql, nights):
    """jobs/ranking.fit_for with ``ranker.engine = xgboost-spark``: the same nights and features as the
    single-process engine, a plain Booster back (what save, score and the backtest take), and the
    transformer's columns dropped when a night had no model (all NaN here)."""
    import datetime as dt

    from jobs import ranking
    from jobs.config import RankerConfig

    d = dt.date(2024, 3, 1)
    train, valid, test = nights
    cfg = RankerConfig(engine="xgboost-spark", spark_workers=2, max_rounds=50, early_stopping_rounds=10)
    older = train[train["qid"] < 100], train[train["qid"] >= 100]
    by_night = dict(zip(ranking.training_nights(d, cfg), (valid, *older)))
    frames = {n: ranking.NightFrame(night=None, frame=f.assign(transformer_rank=np.nan)) for n, f in by_night.items()}
    booster, features, info = ranking.fit_for(frames, d, cfg, spark=spark)
    assert features == FEATURES and info["engine"] == "xgboost-spark" and info["num_workers"] == 2
    assert info["training_nights"] == [str(n) for n in ranking.training_nights(d, cfg)]
    assert info["valid_groups"] == int((valid.groupby("qid")["label"].max() > 0).sum())
    assert first_item_precision(test, R.predict(booster, test, features)) > 0.9
    local, _, local_info = ranking.fit_for(frames, d, RankerConfig(max_rounds=50, early_stopping_rounds=10))
    assert local_info["engine"] == "xgboost" and local_info["train_rows"] == info["train_rows"]
