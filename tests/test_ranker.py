"""training/ranker.py: the candidate union and its retrieval features, labels, recall, lists, the
category cap and the rank:ndcg fit, on hand-written purchases."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from training import backtest as B
from training import heuristics as H
from training import ranker as R

D = dt.date(2024, 3, 10)
V = 8


def _purchases() -> pd.DataFrame:
    rows = [  # user, item, timestamp
        ("u1", 0, "2024-03-01 10:00"), ("u1", 1, "2024-03-01 10:00"),   # u1's first basket: 0 and 1
        ("u1", 0, "2024-03-08 09:00"),                                 # u1 buys 0 again: two baskets
        ("u2", 2, "2024-03-09 12:00"), ("u2", 3, "2024-03-09 12:00"),
        ("u3", 2, "2024-03-05 08:00"),                                 # u3 has no target: not judged
        ("u1", 4, "2024-03-12 10:00"),                                 # target of u1 (never bought before)
        ("u1", 0, "2024-03-13 10:00"),                                 # target of u1 (a repeat)
        ("u2", 7, "2024-03-12 10:00"),                                 # item 7 is not recommendable
        ("u2", 2, "2024-03-20 10:00"),                                 # after the horizon: no target
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item", "event_ts"])
    frame["event_ts"] = pd.to_datetime(frame["event_ts"])
    return frame


def _night() -> B.Night:
    recommendable = np.ones(V, bool)
    recommendable[7] = False
    return B.night(_purchases(), D, 7, recommendable)


def _candidates(night, transformer=None, pools=R.Pools(transformer_n=3, neighbour_n=2, popular_n=2)):
    return R.candidates(night, np.arange(len(night.user_ids)), transformer=transformer,
                        tifu=H.TifuKnnParams(k=2), cooccurrence=R.cooccurrence_model(night), pools=pools)


def test_union_holds_every_past_item_the_popular_top_and_the_transformer_rows():
    night = _night()
    transformer = pd.DataFrame({"row": [0, 0], "item": [6, 5], "score": [2.5, 1.5], "rank": [1.0, 2.0]})
    frame = _candidates(night, transformer)
    by_user = {r: set(g) for r, g in frame.groupby("row")["item"]}
    # u1 (row 0): past 0 and 1, the transformer's 6 and 5, popular top 2 (2 has two buyers; then 0 ... ties lower index)
    assert {0, 1, 5, 6} <= by_user[0]
    assert all({2, 0} <= items for items in by_user.values())          # popular: 2 (2 buyers), 0 (1 buyer, lowest index)
    assert 7 not in set(frame["item"])                                   # never a non-recommendable item
    u1 = frame[frame["row"] == 0].set_index("item")
    assert u1.loc[0, "past_score"] == 2.0 and u1.loc[1, "past_score"] == 1.0   # baskets that held it
    assert u1.loc[6, "transformer_rank"] == 1.0 and u1.loc[6, "transformer_score"] == 2.5
    assert np.isnan(u1.loc[0, "transformer_rank"])                      # not proposed by the transformer
    assert u1.loc[2, "popular_rank"] == 1.0 and u1.loc[2, "popular_score"] == pytest.approx(np.log1p(2))
    assert not frame.duplicated(["row", "item"]).any()
    assert list(frame["row"]) == sorted(frame["row"])


def test_labels_mark_the_targets_of_judged_users_only():
    night = _night()
    frame = _candidates(night)
    y = pd.Series(R.labels(frame, night), index=pd.MultiIndex.from_frame(frame[["row", "item"]]))
    assert y[(0, 0)] == 1.0                      # u1 rebuys 0 in the window
    assert y.sum() == 1.0                        # u1's 4 is nobody's candidate here; u2's 7 is not recommendable
    recall = R.union_recall(frame, night)
    # judged: u1 only (u2's one target is item 7, outside the catalogue's recommendable part)
    assert recall["union_recall"] == pytest.approx(0.5)


def test_top_lists_orders_by_score_then_item_and_category_cap_keeps_k():
    frame = pd.DataFrame({"row": [0, 0, 0, 0, 1], "item": [3, 1, 2, 0, 5]})
    score = np.array([0.5, 0.9, 0.9, 0.1, 1.0])
    assert [list(x) for x in R.top_lists(frame, score, np.array([0, 1, 2]), 3)] == [[1, 2, 3], [5], []]
    categories = np.array([0, 0, 0, 1, 0, 0])       # items 0-2 and 4-5 share category 0, item 3 is alone
    capped = R.category_cap(frame, score, np.array([0]), 3, categories, cap=1)
    assert list(capped[0]) == [1, 3, 2]             # 2 skipped (category 0 full), then filled back at the end
    assert R.intra_list_diversity(capped, categories, k=2) == 1.0


def test_fit_learns_a_planted_signal_and_early_stops_on_the_validation_night():
    rng = np.random.default_rng(0)

    def nights(n_users, offset):
        rows = []
        for u in range(n_users):
            signal = rng.normal(size=20)
            noise = rng.normal(size=20)
            label = (signal > 1.0).astype(np.float32)      # items past a threshold are bought (~16% of them)
            rows.append(pd.DataFrame({"row": u, "item": np.arange(20), "qid": u + offset, "signal": signal,
                                      "noise": noise, "label": label}))
        return pd.concat(rows, ignore_index=True)

    train, valid, test = nights(200, 0), nights(100, 1000), nights(100, 2000)
    booster, info = R.fit(train, valid, ["signal", "noise"], R.TreeParams(max_rounds=50, early_stopping_rounds=10))
    lists = R.top_lists(test, R.predict(booster, test, ["signal", "noise"]), np.arange(100), 1)
    has = test.groupby("row")["label"].max().to_numpy() > 0
    hits = [test[(test["row"] == u) & (test["item"] == lst[0])]["label"].iloc[0] for u, lst in enumerate(lists)]
    assert np.mean(np.asarray(hits)[has]) > 0.95     # the first item bought; random would be ~0.16
    assert 1 <= info["rounds"] <= 50
    assert info["train_groups"] == int((train.groupby("qid")["label"].max() > 0).sum())   # groups with a positive
    gains = dict(R.importances(booster))
    assert set(gains) <= {"signal", "noise"} and sum(gains.values()) == pytest.approx(1.0, abs=1e-3)
    assert R.importances(booster)[0][0] == "signal" and gains["signal"] > 0.5


def test_predict_scores_as_a_dmatrix_would_and_refuses_other_features():
    import xgboost as xgb

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"row": np.repeat(np.arange(50), 8), "item": np.tile(np.arange(8), 50),
                          "a": rng.normal(size=400).astype(np.float32), "b": rng.normal(size=400)})
    frame.loc[rng.random(400) < 0.3, "b"] = np.nan          # nulls stay missing values
    frame["qid"], frame["label"] = frame["row"], (frame["a"] > 0.8).astype(np.float32)
    booster, _ = R.fit(frame, frame, ["a", "b"], R.TreeParams(max_rounds=5, early_stopping_rounds=5))
    reference = booster.predict(xgb.DMatrix(frame[["a", "b"]].astype(np.float32), missing=np.nan,
                                            feature_names=["a", "b"]))
    assert np.array_equal(R.predict(booster, frame, ["a", "b"]), reference)
    with pytest.raises(ValueError, match="other features"):
        R.predict(booster, frame, ["b", "a"])                  # same columns, the wrong order
