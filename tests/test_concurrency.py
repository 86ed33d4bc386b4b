"""Two writers on one table at once, as two runs of different dates do (the run lock of jobs/lock.py is
per run date, so it does not keep them apart): the real Delta conflict, made certain rather than left to
timing. Writer A's frame waits inside its Spark job (a UDF polling a flag file), so its transaction has
read the table and holds its files unwritten while writer B commits; then A is let go and commits.

- features for two dates at once: both replace the daily layer's overlapping dates (`replace_where`):
  Delta refuses A's commit (ConcurrentAppendException), jobs/lake.py writes it again, and both succeed
  with one row per key;
- two publishes at once (different nights): both append to candidates/published; blind appends do not
  conflict, and both rows are there.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType

from features import daily
from features.tables import ITEM_DAILY, PUBLISHED
from jobs import lake as lakeio
from test_score import _events


def _held(frame, flag: Path, entered: Path):
    """``frame`` whose rows wait in the Python worker until ``flag`` exists (``entered`` says they do)."""
    def gate(_):
        entered.touch()
        deadline = time.time() + 120
        while not flag.exists() and time.time() < deadline:
            time.sleep(0.05)
        return True

    return frame.where(F.udf(gate, BooleanType())(F.lit(1)))


def _race(write_a, write_b, flag: Path, entered: Path) -> list[BaseException]:
    """Start A (held inside its job), run B to its commit, let A go; the errors each raised."""
    errors: list[BaseException] = []

    def run_a():
        try:
            write_a()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    a = threading.Thread(target=run_a)
    a.start()
    deadline = time.time() + 120
    while not entered.exists() and a.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    try:
        write_b()
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)
    finally:
        flag.touch()
        a.join(timeout=180)
    return errors


@pytest.mark.slow        # a Python worker per writer, the retry's backoff: ~60 s on a busy 2-core machine
def test_overlapping_daily_rewrites_of_two_runs_are_retried_and_both_succeed(spark, lake, tmp_path, caplog):
    rows = daily.item_daily(_events(spark), 12).select(*ITEM_DAILY.columns)
    condition = "event_date >= '2024-01-01'"                 # both runs rebuild every day since (full refresh)
    lakeio.append(spark, lake, ITEM_DAILY, rows.where(F.col("event_date") < "2024-03-05"))
    base = lakeio.version(spark, lake, ITEM_DAILY)
    flag, entered = tmp_path / "go", tmp_path / "entered"
    caplog.set_level(logging.WARNING, logger="warmstart.lake")

    errors = _race(lambda: lakeio.replace_where(spark, lake, ITEM_DAILY, _held(rows, flag, entered), condition),
                   lambda: lakeio.replace_where(spark, lake, ITEM_DAILY, rows, condition), flag, entered)
    assert errors == []
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1 and "ConcurrentAppendException" in retries[0], retries
    table = lakeio.read(spark, lake, ITEM_DAILY)
    assert lakeio.version(spark, lake, ITEM_DAILY) == base + 2          # B's commit, then A's retried one
    keys = table.select("item_id", "event_date")
    assert table.count() == keys.distinct().count() == rows.count()
    assert sorted(map(tuple, table.collect())) == sorted(map(tuple, rows.collect()))


def test_two_publishes_of_different_nights_at_once_both_land(spark, lake, tmp_path):
    def row(day: dt.date, version: int):
        return spark.createDataFrame([(day, version, "v1", 3, 9, f"publish-{day}", dt.datetime(2024, 3, 12))],
                                     PUBLISHED.schema)

    d1, d2 = dt.date(2024, 3, 10), dt.date(2024, 3, 11)
    lakeio.ensure(spark, lake, PUBLISHED)
    flag, entered = tmp_path / "go", tmp_path / "entered"
    errors = _race(lambda: lakeio.append(spark, lake, PUBLISHED, _held(row(d1, 1), flag, entered)),
                   lambda: lakeio.append(spark, lake, PUBLISHED, row(d2, 2)), flag, entered)
    assert errors == []
    published = lakeio.read(spark, lake, PUBLISHED).orderBy("run_date").collect()
    assert [(r["run_date"], r["table_version"]) for r in published] == [(d1, 1), (d2, 2)]
