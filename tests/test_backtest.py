"""The backtest's pure part (training/backtest.py): a night's pool, judged users and targets from
hand-written purchases, the lists' top-K and exclusions, and the per-user metrics."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from training import backtest as B

D = dt.date(2024, 3, 10)           # cut-off 2024-03-11 00:00; a 7-day window up to 2024-03-18 00:00


def _purchases(rows):
    return pd.DataFrame(rows, columns=["user_id", "item", "event_ts"]).astype({"event_ts": "datetime64[ns]"})


ROWS = [
    ("u1", 0, "2024-03-01 10:00"), ("u1", 1, "2024-03-01 10:00"),   # u1's first basket: items 0, 1
    ("u1", 1, "2024-03-10 23:59"),                                   # second basket, the last minute before the cut-off
    ("u1", 2, "2024-03-11 00:00"),                                   # a target: the cut-off itself is after
    ("u1", 3, "2024-03-12 09:00"),                                   # a target, but item 3 is not recommendable
    ("u2", 2, "2024-02-01 08:00"),                                   # u2 bought 42 days before: outside both windows
    ("u2", 2, "2024-03-17 23:00"), ("u2", 2, "2024-03-16 23:00"),   # the same target twice: counted once
    ("u3", 0, "2024-03-12 12:00"),                                   # no history before the cut-off: not judged
    ("u4", 4, "2024-03-05 12:00"),                                   # history, but no target: not judged
    ("u1", 4, "2024-03-18 00:00"),                                   # after the window: not a target
]


def test_night_pool_judged_users_targets_and_windows():
    recommendable = np.array([True, True, True, False, True])
    n = B.night(_purchases(ROWS), D, 7, recommendable)
    assert list(n.user_ids) == ["u1", "u2", "u4"]                    # purchases before the cut-off
    assert [[b.tolist() for b in u] for u in n.baskets] == [[[0, 1], [1]], [[2]], [[4]]]
    assert n.evaluated.tolist() == [0, 1]                            # u1 and u2 (u4 has no target)
    assert [t.tolist() for t in n.targets] == [[2], [2]]             # item 3 is not recommendable
    assert [p.tolist() for p in n.past_items] == [[0, 1], [2]]
    # last 7 days before the cut-off (03-04 .. 03-10): u1's item 1 (03-10) and u4's item 4 (03-05)
    assert n.recent_log1p.tolist() == pytest.approx(np.log1p([0, 1, 0, 0, 1]).tolist())
    # distinct buyers over 30 days (02-10 .. 03-10): u1 bought 0 and 1 (1 twice), u4 bought 4
    assert n.popular.tolist() == [1, 1, 0, 0, 1]


def test_top_lists_keep_k_allowed_items_best_first_without_exclusions():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.2],
                       [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    allowed = np.array([True, True, True, False, True])
    lists = B.top_lists(scores, 3, allowed, excluded=[np.array([2]), np.array([], dtype=np.int64)])
    assert [x.tolist() for x in lists] == [[1, 4, 0], [0, 1, 2]]     # item 3 never; ties to the lower index


def test_judge_on_hand_ranks():
    recommendable = np.ones(5, dtype=bool)
    rows = [("a", 0, "2024-03-01 10:00"), ("a", 1, "2024-03-12 10:00"), ("a", 0, "2024-03-12 10:00"),
            ("b", 2, "2024-03-01 10:00"), ("b", 3, "2024-03-13 10:00")]
    n = B.night(_purchases(rows), D, 7, recommendable)
    lists = [np.array([0, 4, 1]), np.array([2, 0, 1, 4])]           # a: targets {0, 1}; b: target {3}
    m = B.judge(lists, n, ks=(2, 3))
    # a: ranks 1 and 3 -> NDCG@2 = 1 / (1 + 1/log2 3), NDCG@3 = (1 + 0.5) / (1 + 1/log2 3), MRR 1
    idcg2 = 1 + 1 / np.log2(3)
    assert m["ndcg@2"].tolist() == pytest.approx([1 / idcg2, 0.0])
    assert m["ndcg@3"].tolist() == pytest.approx([1.5 / idcg2, 0.0])
    assert m["recall@2"].tolist() == [0.5, 0.0] and m["recall@3"].tolist() == [1.0, 0.0]
    assert m["mrr"].tolist() == [1.0, 0.0] and m["hit@10"].tolist() == [1.0, 0.0]
    assert m["repeat_share@10"].tolist() == pytest.approx([1 / 3, 1 / 4])
    # explore: a's new target 1 against [4, 1] (0 removed) -> rank 2; b's target 3 is absent
    assert m["explore_ndcg@10"].tolist() == pytest.approx([1 / np.log2(3), 0.0])
    assert B.coverage(lists, n, k=2) == pytest.approx(3 / 5)


def test_tuning_picks_the_validation_best_and_records_every_point():
    recommendable = np.ones(3, dtype=bool)
    rows = [("a", 0, "2024-03-01 10:00"), ("a", 2, "2024-03-12 10:00")]
    n = B.night(_purchases(rows), D, 7, recommendable)

    def scorer(_, p):            # w = 2 puts the target (item 2) first
        return np.array([[1.0, 0.0, p["w"] / 2]], dtype=np.float32)

    tuned = B.tune("toy", scorer, n, [{"w": 1.0}, {"w": 4.0}, {"w": 8.0}], k=3)
    assert tuned.params == {"w": 4.0}                                # the first of the tied best
    assert tuned.validation_ndcg10 == {"w=1.0": pytest.approx(1 / np.log2(3)), "w=4.0": 1.0, "w=8.0": 1.0}


def test_baskets_as_a_groupby_per_user_and_timestamp_would_make_them():
    rng = np.random.default_rng(5)
    n = 3_000
    events = pd.DataFrame({"user_id": rng.choice([f"u{i:03d}" for i in range(300)], n).astype(object),
                           "event_ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 30, n), unit="D"),
                           "item": rng.integers(0, 20, n)})              # repeats inside baskets, shared timestamps
    baskets, users = B._baskets(events)
    expected_users = sorted(events["user_id"].unique())
    assert list(users) == expected_users
    for user, got in zip(expected_users, baskets):
        mine = events[events["user_id"] == user]
        expected = [np.unique(g.to_numpy()) for _, g in mine.groupby("event_ts", sort=True)["item"]]
        assert len(got) == len(expected) and all(np.array_equal(x, y) for x, y in zip(got, expected)), user
    assert B._baskets(events.iloc[:0])[0] == []
