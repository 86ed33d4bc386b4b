"""scoring.reader: load_latest serves the latest *published* run at its published table version, never a
scored-but-unpublished run nor a later rewrite of the published partition; it reads without Spark."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from features.tables import PUBLISHED, USER_CANDIDATES
from jobs import lake as lakeio
from scoring import reader

D1, D2, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)


def _candidates(spark, run_date, lists, strategy="model"):
    rows = [(user, rank, item, float(10 - rank), strategy, "v1", dt.datetime(2024, 3, 4), run_date)
            for user, items in lists.items() for rank, item in enumerate(items, start=1)]
    return spark.createDataFrame(rows, USER_CANDIDATES.schema)


def _publish(spark, lake, run_date, version, at):
    row = [(run_date, version, "v1", 0, 0, f"publish-{run_date}", at)]
    lakeio.append(spark, lake, PUBLISHED, spark.createDataFrame(row, PUBLISHED.schema))


def test_reader_serves_the_latest_published_run_at_its_version(spark, lake):
    with pytest.raises(reader.NothingPublished):
        reader.load_latest(lake)
    v_d1 = lakeio.replace_partition(spark, lake, USER_CANDIDATES, _candidates(spark, D1, {"a": ["x", "y"], "b": ["y"]}), D1)
    _publish(spark, lake, D1, v_d1, dt.datetime(2024, 3, 2, 1))
    v_d2 = lakeio.replace_partition(spark, lake, USER_CANDIDATES,
                                    _candidates(spark, D2, {"a": ["z", "x", "y"], "c": ["x"]}), D2)
    _publish(spark, lake, D2, v_d2, dt.datetime(2024, 3, 3, 1))
    # After publishing: D2 rescored with other content, and D3 scored but never published.
    lakeio.replace_partition(spark, lake, USER_CANDIDATES, _candidates(spark, D2, {"a": ["WRONG"]}), D2)
    lakeio.replace_partition(spark, lake, USER_CANDIDATES, _candidates(spark, D3, {"a": ["NEW"]}), D3)

    served = reader.load_latest(lake)
    assert (served.run_date, served.table_version, served.model_version) == (D2, v_d2, "v1")
    assert len(served) == 2 and served.rows == 4
    assert served.items("a") == ["z", "x", "y"]
    assert served.candidates("c") == [("x", 9.0)]
    assert served.strategy("a") == "model"
    assert served.items("b") == [] and "b" not in served          # D1's user is not in D2's run
    assert served.nbytes() > 0

    older = reader.load_run(lake, D1, v_d1)
    assert older.items("a") == ["x", "y"] and older.items("b") == ["y"]


def test_rank_check_and_run_reordering():
    ranks = np.array([1, 2, 3, 1, 2, 1], dtype=np.int32)
    assert reader._ranks_count_up(ranks, np.array([0, 3, 5]))
    assert not reader._ranks_count_up(np.array([1, 3, 2, 1, 2, 1]), np.array([0, 3, 5]))   # out of order
    assert not reader._ranks_count_up(ranks, np.array([0, 3]))                              # user 2 starts at 2
    assert not reader._ranks_count_up(np.array([2, 3, 1]), np.array([0, 2]))                # starts at rank 2
    # Runs (start 4, length 2), (0, 3), (3, 1) read back to back.
    assert reader._rows_of_runs(np.array([4, 0, 3]), np.array([2, 3, 1]), 6).tolist() == [4, 5, 0, 1, 2, 3]


def test_rows_stored_out_of_order_are_sorted_on_load(spark, lake):
    # Written shuffled (user b first, ranks reversed): the reader must still return rank order.
    rows = [("b", 2, "q", 1.0), ("a", 3, "z", 1.0), ("b", 1, "p", 2.0), ("a", 1, "x", 3.0), ("a", 2, "y", 2.0)]
    df = spark.createDataFrame([(u, r, i, s, "model", "v1", dt.datetime(2024, 3, 2), D1) for u, r, i, s in rows],
                               USER_CANDIDATES.schema).coalesce(1)
    version = lakeio.replace_partition(spark, lake, USER_CANDIDATES, df, D1)
    served = reader.load_run(lake, D1, version)
    assert served.items("a") == ["x", "y", "z"] and served.items("b") == ["p", "q"]
    assert served.candidates("b") == [("p", 2.0), ("q", 1.0)]
    # One user's rows together but in reverse rank order: sorted row by row.
    rows = [("a", 3, "z", 1.0), ("a", 2, "y", 2.0), ("a", 1, "x", 3.0), ("b", 1, "p", 2.0)]
    df = spark.createDataFrame([(u, r, i, s, "model", "v1", dt.datetime(2024, 3, 2), D1) for u, r, i, s in rows],
                               USER_CANDIDATES.schema).coalesce(1)
    served = reader.load_run(lake, D1, lakeio.replace_partition(spark, lake, USER_CANDIDATES, df, D1))
    assert served.items("a") == ["x", "y", "z"] and served.items("b") == ["p"]
    # A rank missing (1, 3): refused with the reason, not served.
    rows = [("a", 1, "x", 3.0), ("a", 3, "z", 1.0)]
    df = spark.createDataFrame([(u, r, i, s, "model", "v1", dt.datetime(2024, 3, 2), D1) for u, r, i, s in rows],
                               USER_CANDIDATES.schema).coalesce(1)
    with pytest.raises(ValueError, match="ranks are not 1..n per user"):
        reader.load_run(lake, D1, lakeio.replace_partition(spark, lake, USER_CANDIDATES, df, D1))


@pytest.mark.parametrize("batch_rows", [2, 3])
def test_users_split_by_batch_borders_are_joined(spark, lake, monkeypatch, batch_rows):
    # Batches of 2 or 3 rows cut every user's list; each batch has its own dictionaries.
    monkeypatch.setattr(reader, "BATCH_ROWS", batch_rows)
    lists = {"a": ["x", "y", "z", "w"], "b": ["y"], "c": ["w", "v", "x"], "d": ["z", "y"]}
    rows = [(user, rank, item, float(10 - rank), "model" if user != "c" else "popular_fallback", "v1",
             dt.datetime(2024, 3, 2), D1) for user, items in lists.items() for rank, item in enumerate(items, start=1)]
    version = lakeio.replace_partition(spark, lake, USER_CANDIDATES,
                                       spark.createDataFrame(rows, USER_CANDIDATES.schema).coalesce(1), D1)
    served = reader.load_run(lake, D1, version)
    assert len(served) == 4 and served.rows == 10
    assert {user: served.items(user) for user in lists} == lists
    assert served.strategy("c") == "popular_fallback" and served.strategy("d") == "model"
    assert served.candidates("a")[-1] == ("w", 6.0)
