"""Validate one partition of a table against its data-quality suite (features/suites.py) and write the
report: ``reports/<run_date>/quality/<table alias>.html`` (self-contained, readable offline) and
``.json`` (counts per severity, failing expectations with sample offending values, statistics).
Exits 3 (GateFailed) if a critical expectation failed, with the report path in the message.

    spark-submit --master local[*] jobs/validate.py --lake ./lake --table features/user_features --run-date 2011-12-09
    warmstart validate --table bronze/events --run-date 2011-12-09 [quality.severity.bronze_events.price_positive=critical]

Which rows are "the partition" of a run date:
- partitioned tables: ``<partition column> = run_date``; the previous partition is the latest earlier
  value of that column (row-count and drift checks compare against it);
- ``bronze/events`` with ``quality.events_scope: ingest_run`` (default): the rows written by the ingest
  run(s) of that run date (their ``run_id``s, from the lake's lineage records), since one ingest may load
  many event dates; the previous partition is the previous ingest run's rows. A run date with no ingest
  run recorded (a replay or backfill on the lake as it is) validates the events dated in the last
  ``freshness_max_lag_days`` + 1 days up to it instead (:func:`_replay_window` says why). ``event_date`` scope
  validates the ``event_date = run_date`` partition instead. The quarantine rate of the run comes from
  the ingest run's summary, or else from ``bronze/events_quarantine`` (``run_date`` partition);
- ``bronze/items`` (unpartitioned): the whole current table, no previous partition;
- ``candidates/user_candidates``: the ``run_date`` partition, checked as ``warmstart publish`` checks it
  (lists of min(K, catalogue) items as the latest score run of the date recorded, coverage of the run
  date's active users).
"""
from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features import quality, suites
from features.tables import EVENTS, QUARANTINE, USER_CANDIDATES, Table
from features.tables import table as declared_table
from jobs import lake, publish, runtime

# How the report names the scope of a run date without an ingest run (:func:`_replay_window`).
REPLAY_SCOPE = "no ingest run recorded for the run date (a replay on the lake as it is)"
# Keys an ingest run summary may use for its record counts (first present wins).
_READ_KEYS = ("records_read", "rows_read", "read", "input_records", "records_in")
_QUARANTINED_KEYS = ("quarantined", "records_quarantined", "rows_quarantined", "quarantined_records")


@dataclass(frozen=True)
class ValidateArgs(runtime.JobArgs):
    table: str = ""
    run_date: dt.date | None = None


def _partition(spark: SparkSession, args: ValidateArgs, t: Table) -> tuple[DataFrame, DataFrame | None, str]:
    """(this run date's rows, the previous partition's rows or None, a description of the scope)."""
    df = lake.read(spark, args.lake, t)
    if t.name == EVENTS.name and args.config.quality.events_scope == "ingest_run":
        runs = _ingest_runs(args)
        mine = [r["run_id"] for r in runs if r.get("run_date") == args.run_date.isoformat()]
        if not mine:
            return _replay_window(spark, df, args, t)
        earlier = sorted({r["run_date"] for r in runs if r.get("run_date") and r["run_date"] < args.run_date.isoformat()})
        prev = None
        if earlier:
            prev_ids = [r["run_id"] for r in runs if r.get("run_date") == earlier[-1]]
            prev = df.where(F.col("run_id").isin(prev_ids))
        return df.where(F.col("run_id").isin(mine)), prev, f"rows of ingest run(s) {', '.join(mine)}"
    if not t.partition_by:
        return df, None, "whole table"
    col = F.col(t.partition_by)
    before = max((d for d in _partition_dates(spark, args, t) if d < args.run_date), default=None)
    prev = df.where(col == F.lit(before)) if before is not None else None
    return df.where(col == F.lit(args.run_date)), prev, f"{t.partition_by} = {args.run_date}" + (
        f" (previous: {before})" if before else "")


def _replay_window(spark: SparkSession, df: DataFrame, args: ValidateArgs,
                   t: Table) -> tuple[DataFrame, DataFrame | None, str]:
    """bronze/events for a run date no ingest run was recorded for: a replay or backfill on the lake as it
    is (``warmstart nightly --run-date D`` without ``--events``, an Airflow task cleared after its ingest,
    a lake loaded by one ingest of the whole history). Nothing arrived for D, so there is no run's rows to
    judge; every row already there was gated by the run that landed it. What D's features add is the
    events dated up to D, and the question the gate must still answer is whether the lake holds D's
    events at all: so the rows of the last ``freshness_max_lag_days`` + 1 event dates up to D (a night
    with no trade, Online Retail's Saturdays, still finds the day before, as the freshness check allows),
    against the same number of days before them (row count and drift). Not the whole history up to D:
    that would re-read the lake on every replay to re-check rows that passed their own gate."""
    days = args.config.quality.freshness_max_lag_days + 1
    start = args.run_date - dt.timedelta(days=days - 1)
    col = F.col("event_date")
    current = df.where((col >= F.lit(start)) & (col <= F.lit(args.run_date)))
    prev_start = start - dt.timedelta(days=days)
    scope = f"{REPLAY_SCOPE}: event_date {start} .. {args.run_date}"
    if not any(prev_start <= d < start for d in _partition_dates(spark, args, t)):
        return current, None, scope     # nothing before: the comparisons are skipped, as on a first run
    previous = df.where((col >= F.lit(prev_start)) & (col < F.lit(start)))
    return current, previous, f"{scope} (previous: {prev_start} .. {start - dt.timedelta(days=1)})"


def _partition_dates(spark: SparkSession, args: ValidateArgs, t: Table) -> set[dt.date]:
    """The table's partition values from the Delta log (delta-rs: no Spark job, no data read); a Spark
    query where delta-rs can't open the path."""
    try:
        from deltalake import DeltaTable as RsTable

        values = {p[t.partition_by] for p in RsTable(lake.path_of(args.lake, t)).partitions()}
        return {dt.date.fromisoformat(v) for v in values if v}
    except Exception:  # noqa: BLE001 - a filesystem delta-rs lacks credentials or support for
        rows = lake.read(spark, args.lake, t).select(t.partition_by).distinct().collect()
        return {r[0] for r in rows if r[0] is not None}


def _ingest_runs(args: ValidateArgs) -> list[dict[str, Any]]:
    return [r for r in runtime.read_lineage(args.lake) if r.get("job") == "ingest" and r.get("status") == "succeeded"]


def _quarantine_context(spark: SparkSession, args: ValidateArgs, events: DataFrame) -> dict[str, Any]:
    """Quarantined and read record counts of the run date's ingest (for the quarantine_rate check)."""
    for record in reversed(_ingest_runs(args)):
        if record.get("run_date") != args.run_date.isoformat():
            continue
        summary = record.get("summary") or {}
        read = next((summary[k] for k in _READ_KEYS if isinstance(summary.get(k), int)), None)
        quarantined = next((summary[k] for k in _QUARANTINED_KEYS if isinstance(summary.get(k), int)), None)
        if read and quarantined is not None:
            return {"quarantined_count": quarantined, "read_count": read, "counts_from": f"ingest run {record['run_id']}"}
    if not lake.exists(spark, args.lake, QUARANTINE):
        return {}
    quarantined = (lake.read(spark, args.lake, QUARANTINE)
                   .where(F.col("run_date") == F.lit(args.run_date)).count())
    # Read = landed + quarantined; re-delivered duplicates are not counted (they left no row).
    landed = events.count()
    return {"quarantined_count": quarantined, "read_count": landed + quarantined,
            "counts_from": "bronze/events_quarantine + landed events"}


def report_paths(args: ValidateArgs) -> tuple[str, str]:
    base = f"{args.reports_root}/{args.run_date.isoformat()}/quality/{suites.alias(args.table)}"
    return base + ".html", base + ".json"


def run(spark: SparkSession, args: ValidateArgs) -> dict[str, Any]:
    try:
        t = declared_table(args.table)
        suites.suite(args.table)
    except KeyError as exc:
        raise runtime.UsageError(str(exc.args[0])) from None
    if not lake.exists(spark, args.lake, t):
        raise runtime.UsageError(f"table {t.name} does not exist under {args.lake}")
    table_version = lake.version(spark, args.lake, t)
    current, previous, scope = _partition(spark, args, t)
    context: dict[str, Any] = {"scope": scope, "table_version": table_version}
    if t.name == EVENTS.name and not scope.startswith(REPLAY_SCOPE):   # a replay read nothing: no rate
        context.update(_quarantine_context(spark, args, current))
    config, references = args.config.quality_bounds, {}
    if t.name == USER_CANDIDATES.name:
        _, meta = publish.latest_score_commit(spark, args.lake, args.run_date)
        config, references = publish.suite_inputs(spark, args.lake, args.run_date, args.config, meta)
    result = quality.validate_table(spark, current, t.name, args.run_date, previous, context, config=config,
                                    publish=args.config.publish, references=references)

    html_path, json_path = report_paths(args)
    runtime.write_text(html_path, result.report_html)
    runtime.write_json(json_path, {**result.report_json, "report_html": html_path, "run_id": args.run_id})
    summary = {
        "table": t.name,
        "run_date": args.run_date.isoformat(),
        "verdict": "passed" if result.success_critical else "failed",
        "rows": result.rows,
        "critical_failed": result.counts[suites.CRITICAL][quality.FAILED],
        "warning_failed": result.counts[suites.WARNING][quality.FAILED],
        "passed": result.counts[suites.CRITICAL][quality.PASSED] + result.counts[suites.WARNING][quality.PASSED],
        "skipped": result.counts[suites.CRITICAL][quality.SKIPPED] + result.counts[suites.WARNING][quality.SKIPPED],
        "failed_checks": [f"{f['check']} ({f['severity']})" for f in result.failures],
        "validation_s": result.timings["total_s"],
        "report_html": html_path,
        "report_json": json_path,
    }
    summary["lineage"] = runtime.record_lineage(
        args, run_date=args.run_date, inputs={t.name: table_version}, outputs={"report": html_path},
        summary=summary, status="succeeded" if result.success_critical else "gate_failed")
    print(result.summary_line())
    if not result.success_critical:
        failed = ", ".join(f["check"] for f in result.failures if f["severity"] == suites.CRITICAL)
        raise runtime.GateFailed(f"critical data-quality checks failed on {t.name} for {args.run_date}: "
                                 f"{failed}; report: {html_path}")
    return summary


def parser():
    p = runtime.job_parser("validate", "Run a table's data-quality suite for one partition and write its report.")
    p.add_argument("--table", required=True, help=f"one of: {', '.join(sorted(suites.SUITES))}")
    p.add_argument("--run-date", required=True, type=runtime.parse_date, help="YYYY-MM-DD: the partition to validate")
    return p


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("validate", parser(), ValidateArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main())
