"""Incremental nightly builds equal a full refresh, row for row and column for column, on a generated
90-day history with late events, a skipped night and a rerun (the job's idempotency check).

Counts, sums, timestamps, ranks and sequences must be equal exactly; distinct counts (HLL sketches)
within three standard errors of the sketch (1.04 / sqrt(2^12) = 1.6% at lg_config_k=12), both between
the two builds and against exact distinct counts from the raw events.
"""
from __future__ import annotations

import datetime as dt
import math
import random

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from features import synthetic
from features.tables import EVENTS, FEATURE_BUILDS, ITEM_FEATURES, ITEMS, USER_FEATURES, USER_SEQUENCES
from jobs import lake as lake_io
from test_features import partition, run_job

START = dt.date(2024, 1, 1)
DAYS = 90
LAST = START + dt.timedelta(days=DAYS - 1)           # 2024-03-30: the as_of_date compared
FIRST_NIGHT = LAST - dt.timedelta(days=4)            # the full build the nightly runs extend
SKIPPED = LAST - dt.timedelta(days=2)                # no run that night: the next run covers two days
HLL_TOLERANCE = 3 * 1.04 / math.sqrt(2 ** 12)
SEQUENCE_LENGTH = 5                                   # small, so that the last-N cut is exercised


def history(tmp_path, seed: int = 3) -> tuple[list[dict], list[dict]]:
    """A small 90-day history from the project's generator (features/synthetic.py), with bronze's
    bookkeeping columns added, and some purchases turned into baskets (several items on one timestamp,
    as Online Retail's invoices) so that tie-breaking is exercised."""
    summary = synthetic.generate(tmp_path / "generated", users=60, items=40, days=DAYS, start_date=START,
                                 seed=seed, events=3000)
    assert summary["end_date"] == LAST.isoformat()
    rows = []
    for r in pq.read_table(tmp_path / "generated" / "events").to_pylist():
        at = r["event_ts"].astimezone(dt.timezone.utc).replace(tzinfo=None)
        lines = [r["item_id"]]
        if r["event_type"] == "purchase" and len(rows) % 3 == 0:
            lines += [f"i{(int(r['item_id'][1:]) + k) % 40}" for k in (7, 13)]
        for line in lines:
            rows.append({**r, "item_id": line, "event_ts": at, "event_date": at.date(),
                         "event_id": f"e{len(rows):06d}", "source": "generated", "run_id": "test"})
    catalogue = [{**r, "updated_at": r["updated_at"].astimezone(dt.timezone.utc).replace(tzinfo=None)}
                 for r in pq.read_table(tmp_path / "generated" / "items").to_pylist()]
    return rows, catalogue[:-3]     # the last three items are not in the catalogue


def ingested(rows: list[dict], at: dt.datetime) -> list[dict]:
    return [{**r, "ingested_at": at} for r in rows]


def night(date: dt.date) -> dt.datetime:
    return dt.datetime.combine(date + dt.timedelta(days=1), dt.time(1, 0))


pytestmark = pytest.mark.usefixtures("interpreted_sql")    # tiny inputs: see conftest


@pytest.fixture(scope="module")
def builds(spark, config, tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental")
    rows, catalogue = history(root)
    rng = random.Random(1)
    # Late events: a few rows of earlier days that arrive only with the ingest after FIRST_NIGHT + 1.
    late = {r["event_id"] for r in rng.sample([r for r in rows if r["event_date"] <= FIRST_NIGHT], 12)}
    nightly, full = str(root / "nightly"), str(root / "full")

    def append(lake, batch, at):
        lake_io.append(spark, lake, EVENTS, spark.createDataFrame(ingested(batch, at), EVENTS.schema))

    for lake in (nightly, full):
        lake_io.append(spark, lake, ITEMS, spark.createDataFrame(catalogue, ITEMS.schema))
    append(nightly, [r for r in rows if r["event_date"] <= FIRST_NIGHT and r["event_id"] not in late],
           night(FIRST_NIGHT))
    summaries = [run_job(spark, nightly, config, run_date=FIRST_NIGHT,
                         overrides={"features.sequence_length": SEQUENCE_LENGTH})]
    delivered = {r["event_id"] for r in rows if r["event_date"] <= FIRST_NIGHT} - late
    day = FIRST_NIGHT
    while day < LAST:
        day += dt.timedelta(days=1)
        batch = [r for r in rows if r["event_date"] == day]
        if day == FIRST_NIGHT + dt.timedelta(days=1):
            batch += [r for r in rows if r["event_id"] in late]
        append(nightly, batch, night(day))
        delivered |= {r["event_id"] for r in batch}
        if day != SKIPPED:
            summaries.append(run_job(spark, nightly, config, run_date=day,
                                     overrides={"features.sequence_length": SEQUENCE_LENGTH}))
    assert delivered == {r["event_id"] for r in rows}

    append(full, rows, night(LAST))
    summaries.append(run_job(spark, full, config, run_date=LAST, full_refresh=True,
                             overrides={"features.sequence_length": SEQUENCE_LENGTH}))
    late_dates = sorted({r["event_date"].isoformat() for r in rows if r["event_id"] in late})
    return {"nightly": nightly, "full": full, "summaries": summaries, "late_dates": late_dates, "rows": rows}


def test_nightly_runs_were_incremental_and_rebuilt_the_late_dates(builds):
    modes = [s["mode"] for s in builds["summaries"]]
    assert modes == ["full", "incremental", "incremental", "incremental", "full"]
    after_late = builds["summaries"][1]
    assert after_late["late_dates"] == builds["late_dates"] and after_late["base_as_of_date"] == FIRST_NIGHT.isoformat()
    after_gap = builds["summaries"][2]
    assert after_gap["base_as_of_date"] == (SKIPPED - dt.timedelta(days=1)).isoformat()
    assert after_gap["daily_partitions_rebuilt"] == 2


def _split(frame, table):
    # Sketched: distinct items and users. Distinct categories are exact and compared with the rest.
    distinct = [c for c in table.columns if c.startswith("distinct_") and not c.startswith("distinct_categories_")]
    return frame.drop(*distinct), frame.select(table.keys[0], *distinct), distinct


@pytest.mark.parametrize("table", [USER_FEATURES, ITEM_FEATURES, USER_SEQUENCES], ids=lambda t: t.name)
def test_incremental_equals_full_refresh(spark, builds, table):
    nightly, full = partition(spark, builds["nightly"], table, LAST), partition(spark, builds["full"], table, LAST)
    assert nightly.count() == full.count() >= 30
    exact_n, sketched_n, distinct = _split(nightly, table)
    exact_f, sketched_f, _ = _split(full, table)
    assertDataFrameEqual(exact_n, exact_f)   # every exact column, every row (doubles come from exact sums)
    if distinct:
        key = table.keys[0]
        joined = sketched_n.alias("n").join(sketched_f.alias("f"), key)
        for c in distinct:
            worst = joined.agg(F.max(F.abs(F.col(f"n.{c}") - F.col(f"f.{c}")) / F.greatest(F.col(f"f.{c}"), F.lit(1))))
            assert worst.first()[0] <= HLL_TOLERANCE, c


def test_sketched_distinct_counts_are_within_the_stated_error_of_exact_ones(spark, builds):
    events = lake_io.read(spark, builds["full"], EVENTS).where(F.col("event_date") <= F.lit(LAST))
    exact = events.groupBy("item_id").agg(F.countDistinct("user_id").alias("exact"))
    got = partition(spark, builds["nightly"], ITEM_FEATURES, LAST).select("item_id", "distinct_users_all")
    worst = exact.join(got, "item_id").agg(
        F.max(F.abs(F.col("distinct_users_all") - F.col("exact")) / F.col("exact")), F.count(F.lit(1))).first()
    assert worst[1] == exact.count() >= 30 and worst[0] <= HLL_TOLERANCE


@pytest.mark.parametrize("days", [1, 7, 30, 90])
def test_distinct_categories_are_exact_over_each_window(spark, builds, days):
    events = lake_io.read(spark, builds["full"], EVENTS).where(
        (F.col("event_date") <= F.lit(LAST)) & (F.col("event_date") > F.lit(LAST - dt.timedelta(days=days))))
    categories = lake_io.read(spark, builds["full"], ITEMS).select("item_id", "category")
    exact = events.join(categories, "item_id").groupBy("user_id").agg(F.countDistinct("category").alias("exact"))
    got = partition(spark, builds["nightly"], USER_FEATURES, LAST).select("user_id", F.col(f"distinct_categories_{days}d"))
    compared = got.join(exact, "user_id", "left").fillna(0, subset=["exact"])
    several = compared.where(F.col("exact") > 1).count()            # users with several categories exist
    assert several >= (1 if days <= 7 else 10)
    assert compared.where(F.col(f"distinct_categories_{days}d") != F.col("exact")).count() == 0


def test_rerunning_the_last_night_changes_nothing(spark, builds, config):
    nightly = builds["nightly"]
    before = {t.name: partition(spark, nightly, t, LAST).localCheckpoint() for t in (USER_FEATURES, ITEM_FEATURES, USER_SEQUENCES)}
    again = run_job(spark, nightly, config, run_date=LAST, overrides={"features.sequence_length": SEQUENCE_LENGTH})
    assert again["mode"] == "incremental" and again["late_dates"] == []
    for t in (USER_FEATURES, ITEM_FEATURES, USER_SEQUENCES):
        assertDataFrameEqual(partition(spark, nightly, t, LAST), before[t.name])
    assert lake_io.read(spark, nightly, FEATURE_BUILDS).count() == 5  # 4 nightly builds + this rerun
