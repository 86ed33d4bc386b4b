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


def test_ids_are_numbered_in_order_of_first_sight():
    import pyarrow as pa

    codes = reader._Codes()
    assert codes.add(pa.array(["x", "y"])).tolist() == [0, 1]
    assert codes.add(pa.array(["y", "z", "x", "z"])).tolist() == [1, 2, 0, 2]    # a repeated entry: one code
    assert codes.find(pa.array(["z", "q", "x"])).tolist() == [2, -1, 0]          # find never adds
    assert codes.values().tolist() == ["x", "y", "z"] and codes.index == {"x": 0, "y": 1, "z": 2}
    vocabulary = reader._Vocabulary()                # the same numbering, kept in Arrow (item ids)
    assert vocabulary.add(pa.array(["x", "y"])).tolist() == [0, 1]
    assert vocabulary.add(pa.array(["y", "z", "x"])).tolist() == [1, 2, 0]
    assert vocabulary.values().tolist() == ["x", "y", "z"]


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


def _write_delta_rs(lake, rows, run_date=D1, mode="append", row_group_rows=None):
    """Append (user, rank, item, score, strategy) rows with delta-rs, in the order given; returns the version."""
    import pyarrow as pa
    from deltalake import DeltaTable, WriterProperties, write_deltalake

    users, ranks, items, scores, strategies = (list(c) for c in zip(*rows)) if rows else ([],) * 5
    n = len(rows)
    table = pa.table({
        "user_id": pa.array(users, pa.string()), "rank": pa.array(ranks, pa.int32()),
        "item_id": pa.array(items, pa.string()), "score": pa.array(scores, pa.float32()),
        "strategy": pa.array(strategies, pa.string()), "model_version": pa.array(["v1"] * n, pa.string()),
        "generated_at": pa.array([dt.datetime(2024, 3, 2)] * n, pa.timestamp("us")),
        "run_date": pa.array([run_date] * n, pa.date32())})
    path = f"{lake}/{USER_CANDIDATES.name}"
    props = WriterProperties(max_row_group_size=row_group_rows) if row_group_rows else None
    write_deltalake(path, table, mode=mode, partition_by=["run_date"], writer_properties=props)
    return DeltaTable(path).version()


def test_users_spanning_row_groups_and_files_in_any_order(lake):
    # Written by delta-rs in row groups of 2 rows, in this shuffled order, over two appended files:
    # "a" spans both files and three row groups, its rank 1 comes last; "c" has one row.
    first = [("b", 2, "q", 1.0, "model"), ("a", 3, "z", 1.0, "model"), ("a", 1, "x", 3.0, "model"),
             ("c", 1, "w", 5.0, "popular_fallback"), ("b", 1, "p", 2.0, "model")]
    second = [("a", 4, "v", 0.5, "model"), ("b", 3, "r", 0.5, "model"), ("a", 2, "y", 2.0, "model")]
    _write_delta_rs(lake, first, row_group_rows=2)
    version = _write_delta_rs(lake, second, row_group_rows=2)
    import glob

    import pyarrow.parquet as pq
    files = glob.glob(f"{lake}/{USER_CANDIDATES.name}/run_date=*/*.parquet")
    assert len(files) == 2 and sum(pq.ParquetFile(f).metadata.num_row_groups for f in files) == 5   # really split
    served = reader.load_run(lake, D1, version)
    assert len(served) == 3 and served.rows == 8
    assert served.items("a") == ["x", "y", "z", "v"] and served.items("b") == ["p", "q", "r"]
    assert served.candidates("a") == [("x", 3.0), ("y", 2.0), ("z", 1.0), ("v", 0.5)]
    assert served.candidates("c") == [("w", 5.0)] and served.strategy("c") == "popular_fallback"
    assert served.strategy("a") == "model" and served.items("d") == []
    # CSR: users in order of first sight (files come in the log's order), each slice as long as its list
    assert sorted(served.user_ids.tolist()) == ["a", "b", "c"]
    assert np.diff(served.offsets).tolist() == [{"a": 4, "b": 3, "c": 1}[u] for u in served.user_ids]
    assert sorted(served.item_vocab.tolist()) == list("pqrvwxyz")
    assert reader.load_run(lake, D2, version).rows == 0          # only the run_date partition's files are read


def test_empty_partition_loads_as_no_users(lake):
    version = _write_delta_rs(lake, [], row_group_rows=2)
    served = reader.load_run(lake, D1, version)
    assert len(served) == 0 and served.rows == 0 and served.offsets.tolist() == [0]
    assert served.items("a") == [] and served.candidates("a") == [] and served.strategy("a") is None


@pytest.mark.parametrize("rows", [
    [("a", 1, "x", 1.0, "model"), ("a", 1, "y", 1.0, "model")],                              # rank repeated
    [("a", 0, "x", 1.0, "model"), ("a", 1, "y", 1.0, "model")],                              # rank 0
    [("a", 1, "x", 1.0, "model"), ("a", 3, "z", 1.0, "model"), ("b", 1, "p", 1.0, "model"),
     ("b", 2, "q", 1.0, "model")],                          # a's rank 3 lands in b's first slot: a's 2nd is left
    [("a", 2, "x", 1.0, "model"), ("b", 1, "p", 1.0, "model"), ("b", 2, "q", 1.0, "model")],  # a's 2 past the end
    [("a", 2, "x", 1.0, "model"), ("a", 3, "y", 1.0, "model")],                              # starts at rank 2
])
def test_ranks_that_are_not_1_to_n_are_refused(lake, rows):
    version = _write_delta_rs(lake, rows, row_group_rows=2)
    with pytest.raises(ValueError, match="ranks are not 1..n per user"):
        reader.load_run(lake, D1, version)


def test_null_ids_are_refused(lake):
    version = _write_delta_rs(lake, [("a", 1, "x", 1.0, "model"), ("a", 2, None, 1.0, "model")])
    with pytest.raises(ValueError, match="null item_id"):
        reader.load_run(lake, D1, version)
