"""Benchmark of the data-quality gates on the feature tables, in one run on one generated history:

1. generate events (features.synthetic.generate), ingest them (jobs/ingest.py), build the features as
   of D - 1 (full refresh) and as of D (the nightly incremental build): the build times;
2. validate the three feature tables' D partitions (previous partition D - 1, so row-count and drift
   checks run) with features.quality.validate_table: a few aggregates over the cached partition + GX on
   the statistics;
3. the peer: the same suites as plain GX expectations run by GX on the Spark partition (Spark
   datasource, ExpectColumnValuesToNotBeNull / ToBeUnique / ToBeBetween / UnexpectedRowsExpectation /
   ExpectColumnMeanToBeBetween ..., result_format SUMMARY), which is how GX on Spark is usually used.

Reports validation time / build time (aim <= 0.25), the statistics runner against the plain-GX peer
(time and Spark jobs), to bench/results/quality.md and bench/results/quality.json.

    .venv/bin/python bench/quality.py --events 10000000      # the issue's size (a real multi-core box)
    .venv/bin/python bench/quality.py --events 300000        # a quick run on a 2-core machine
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

FEATURE_TABLES = ("features/user_features", "features/item_features", "features/user_sequences")
START = dt.date(2024, 1, 1)


def _timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def _job(module, argv: list[str]) -> float:
    code, seconds = _timed(module.main, argv)
    if code != 0:
        raise SystemExit(f"{module.__name__} {' '.join(argv)} exited {code}")
    return seconds


def native_gx(df, table_name: str, run_date: dt.date, previous_df, config) -> dict:
    """The peer: the table's suite as native GX expectations, evaluated by GX on the Spark frame."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    expectations = _native_expectations(df, table_name, run_date, previous_df, config)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    name = f"native_{uuid.uuid4().hex[:6]}"
    batch = context.data_sources.add_spark(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for e in expectations:
        suite.add_expectation(e)
    # Batch.validate runs the same expectations without storing the result: the results store's JSON
    # serialiser trips over NumPy booleans that some expectations put in their results on Spark.
    result = batch.get_batch(batch_parameters={"dataframe": df}).validate(suite, result_format="SUMMARY")
    return {"expectations": len(expectations), "success": bool(result.success),
            "failed": sorted(r.expectation_config.type for r in result.results if not r.success)}


def _native_expectations(df, table_name: str, run_date: dt.date, previous_df, config) -> list:
    """One GX expectation per check of the suite that plain GX can run on the frame."""
    from features import quality, suites

    cfg = quality.settings(config)
    prev_count = previous_df.count() if previous_df is not None else None
    prev_stats = {}
    if previous_df is not None:
        exprs = {}
        for check in suites.suite(table_name):
            exprs.update(quality._comparable_exprs(check, cfg))
        prev_stats = quality._aggregate(previous_df, exprs)
    expectations = []
    for check in suites.suite(table_name):
        if all(c in df.columns for c in check.reads):
            expectation = _native_expectation(check, cfg, run_date, prev_count, prev_stats)
            expectations += [expectation] if expectation is not None else []
    return expectations


def _native_expectation(check, cfg: dict, run_date: dt.date, prev_count: int | None, prev_stats: dict):
    import great_expectations.expectations as gxe

    from features import quality

    k, col, p = check.kind, check.column, check.params
    if k == "not_null":
        return gxe.ExpectColumnValuesToNotBeNull(column=col)
    if k == "unique":
        return (gxe.ExpectColumnValuesToBeUnique(column=check.columns[0]) if len(check.columns) == 1
                else gxe.ExpectCompoundColumnsToBeUnique(column_list=list(check.columns)))
    if k == "in_set":
        return gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(p["values"]))
    if k == "between":
        lo, hi = quality._param(check, "min_value", cfg), quality._param(check, "max_value", cfg)
        return gxe.ExpectColumnValuesToBeBetween(column=col, min_value=lo, max_value=hi,
                                                 strict_min=bool(p.get("strict_min")))
    if k in ("matches", "not_matches"):
        pattern = quality._param(check, "pattern", cfg)
        if not pattern:
            return None
        return (gxe.ExpectColumnValuesToMatchRegex if k == "matches" else gxe.ExpectColumnValuesToNotMatchRegex)(
            column=col, regex=pattern)
    if k == "rows_satisfy":
        predicate = quality._predicate(check, cfg, run_date)
        return gxe.UnexpectedRowsExpectation(unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE NOT ({predicate})",
                                             description=check.description)
    if k == "freshness":
        return gxe.UnexpectedRowsExpectation(
            unexpected_rows_query=f"SELECT max({p['expr']}) AS latest FROM {{batch}} "
                                  f"HAVING datediff(DATE'{run_date}', to_date(max({p['expr']}))) > "
                                  f"{cfg['freshness_max_lag_days']}", description=check.description)
    if k == "row_count_change" and prev_count is not None:
        band = cfg["row_count_max_change"]
        return gxe.ExpectTableRowCountToBeBetween(min_value=int(prev_count * (1 - band)),
                                                  max_value=int(prev_count * (1 + band)) + 1)
    if k in ("drift_mean", "drift_quantile") and prev_stats.get(check.name) is not None:
        v = prev_stats[check.name]
        lo, hi = v - cfg["drift_max_change"] * abs(v), v + cfg["drift_max_change"] * abs(v)
        return (gxe.ExpectColumnMeanToBeBetween(column=col, min_value=lo, max_value=hi) if k == "drift_mean" else
                gxe.ExpectColumnQuantileValuesToBeBetween(column=col, quantile_ranges={
                    "quantiles": [p["quantile"]], "value_ranges": [[lo, hi]]}))
    return None


def _jobs_in(spark, fn):
    """(result, seconds, Spark jobs run) of ``fn()``."""
    from features.quality import SparkJobCount

    with SparkJobCount(spark, "bench") as count:
        out, seconds = _timed(fn)
    return out, seconds, count.jobs


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=None, help="default: events / 100")
    ap.add_argument("--items", type=int, default=None, help="default: events / 500, at least 200")
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="2g")
    ap.add_argument("--no-peer", action="store_true", help="skip the plain-GX-on-Spark peer")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed after)")
    ap.add_argument("--reuse", action="store_true", help="with --work: keep its ingested bronze tables")
    return ap.parse_args()


def main() -> int:
    from jobs.runtime import load_config, spark_session

    a = _parse_args()
    users = a.users or max(a.events // 100, 100)
    items = a.items or max(a.events // 500, 200)
    run_date = START + dt.timedelta(days=a.days - 1)
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-quality-"))
    overrides = {"spark.master": a.master, "spark.driver_memory": a.driver_memory,
                 "spark.shuffle_partitions": 4 if a.master == "local[2]" else 16}
    cfg = load_config(overrides=overrides)
    spark = spark_session(cfg, app_name="bench-quality")
    figures: dict = {"events": a.events, "users": users, "items": items, "days": a.days,
                     "run_date": run_date.isoformat(), "master": a.master, "driver_memory": a.driver_memory,
                     "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        common = ["--lake", str(work / "lake")] + [f"{k}={v}" for k, v in overrides.items()]
        figures.update(_build(a, work, common, users, items, run_date))
        # GX's import is paid once per process (the nightly flow imports it once): measured apart.
        _, figures["gx_import_s"] = _timed(__import__, "great_expectations")
        per_table = _validate_tables(spark, str(work / "lake"), run_date, cfg.quality_bounds)
        figures["tables"] = per_table
        total = sum(r["validate_s"] for r in per_table.values())
        figures["validate_total_s"] = round(total, 3)
        figures["ratio_validate_to_incremental_build"] = round(total / figures["build_incremental_s"], 3)
        figures["ratio_validate_to_full_build"] = round(total / figures["build_full_prev_s"], 3)
        write_results(figures)     # the required figures first; the peer below can take long
        if not a.no_peer:
            peer_total = _peer(spark, str(work / "lake"), run_date, cfg.quality_bounds, per_table)
            figures["native_gx_total_s"] = round(peer_total, 3)
            figures["ratio_native_gx_to_incremental_build"] = round(peer_total / figures["build_incremental_s"], 3)
            figures["speedup_vs_native_gx"] = round(peer_total / total, 2)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    write_results(figures)
    return 0


def _build(a: argparse.Namespace, work: Path, common: list[str], users: int, items: int,
           run_date: dt.date) -> dict:
    """Generate and ingest the events (unless --reuse finds them), build the features as of D - 1 (full)
    and D (incremental); returns the step times."""
    from features import synthetic
    from jobs import build_features, ingest

    figures: dict = {}
    if a.reuse and (work / "lake" / "bronze" / "events" / "_delta_log").is_dir():
        figures["generate_s"] = figures["ingest_s"] = None      # a kept --work folder: bronze is there
    else:
        _, figures["generate_s"] = _timed(synthetic.generate, work / "gen", users=users, items=items,
                                          days=a.days, start_date=START, seed=0, events=a.events, fmt="parquet")
        figures["ingest_s"] = _job(ingest, common + ["--run-date", run_date.isoformat(), "--format", "parquet",
                                                     "--events", str(work / "gen" / "events"),
                                                     "--items", str(work / "gen" / "items")])
    prev_date = run_date - dt.timedelta(days=1)
    figures["build_full_prev_s"] = _job(build_features, common + ["--run-date", prev_date.isoformat(), "--full-refresh"])
    figures["build_incremental_s"] = _job(build_features, common + ["--run-date", run_date.isoformat()])
    return figures


def _partitions(spark, lake_root: str, name: str, run_date: dt.date):
    """The run date's and the previous date's partition of a feature table."""
    from features.tables import table as declared_table
    from jobs import lake

    t = declared_table(name)
    df = lake.read(spark, lake_root, t)
    prev_date = run_date - dt.timedelta(days=1)
    return df.where(f"{t.partition_by} = DATE'{run_date}'"), df.where(f"{t.partition_by} = DATE'{prev_date}'")


def _validate_tables(spark, lake_root: str, run_date: dt.date, config) -> dict:
    from features import quality

    per_table = {}
    for name in FEATURE_TABLES:
        current, previous = _partitions(spark, lake_root, name, run_date)
        result, seconds, jobs = _jobs_in(spark, lambda: quality.validate_table(
            spark, current, name, run_date, previous, {}, config=config))
        row = {"rows": result.rows, "previous_rows": result.previous_rows, "validate_s": round(seconds, 3),
               "spark_jobs": jobs, "checks": len(result.results),
               "failed": [f"{f['check']} ({f['severity']})" for f in result.failures],
               "timings": result.timings}
        per_table[name] = row
        print(name, json.dumps(row, default=str), flush=True)
    return per_table


def _peer(spark, lake_root: str, run_date: dt.date, config, per_table: dict) -> float:
    """The same suites as plain GX expectations; adds their figures to ``per_table``, returns the total."""
    for name in FEATURE_TABLES:
        current, previous = _partitions(spark, lake_root, name, run_date)
        peer, p_seconds, p_jobs = _jobs_in(spark, lambda: native_gx(current, name, run_date, previous, config))
        per_table[name].update({"native_gx_s": round(p_seconds, 3), "native_gx_spark_jobs": p_jobs,
                                "native_gx_expectations": peer["expectations"], "native_gx_failed": peer["failed"]})
        print(name, "plain GX", json.dumps(per_table[name], default=str), flush=True)
    return sum(r["native_gx_s"] for r in per_table.values())


def write_results(f: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(f, indent=2, default=str))
    peer = "native_gx_total_s" in f and "speedup_vs_native_gx" in f
    lines = [
        "# Data-quality gates: validation cost vs the feature build",
        "",
        f"One run of `bench/quality.py`: {f['events']:,} generated events, {f['users']:,} users, {f['items']:,} items, "
        f"{f['days']} days; Spark `{f['master']}`, driver {f['driver_memory']}, {f['cpu_count']} CPUs seen "
        f"({f['platform']}).",
        "",
        "| step | seconds |",
        "|---|---:|",
        f"| ingest | {f['ingest_s'] or float('nan'):.1f} |",
        f"| feature build as of D-1, full refresh | {f['build_full_prev_s']:.1f} |",
        f"| feature build as of D, incremental (the nightly) | {f['build_incremental_s']:.1f} |",
        f"| import great_expectations (once per process, not in the ratios) | {f['gx_import_s']:.1f} |",
        f"| validate the 3 feature tables (a few aggregates each + GX on statistics) | {f['validate_total_s']:.1f} |",
    ]
    if peer:
        lines.append(f"| peer: the same suites as plain GX expectations on the Spark frame | {f['native_gx_total_s']:.1f} |")
    lines += [
        "",
        f"**validation / incremental build = {f['ratio_validate_to_incremental_build']:.3f}**, "
        f"validation / full build = {f['ratio_validate_to_full_build']:.3f} (aim: <= 0.25)."
        + (f" Plain GX on Spark / incremental build = {f['ratio_native_gx_to_incremental_build']:.3f}; "
           f"the statistics runner is {f['speedup_vs_native_gx']:.1f}x faster." if peer else ""),
        "",
        "| table | rows | checks | validate s | Spark jobs | stats pass s | GX s | failed checks |"
        + (" plain GX s | plain GX Spark jobs |" if peer else ""),
        "|---|---:|---:|---:|---:|---:|---:|---|" + ("---:|---:|" if peer else ""),
    ]
    for name, r in f["tables"].items():
        line = (f"| {name} | {r['rows']:,} | {r['checks']} | {r['validate_s']:.2f} | {r['spark_jobs']} | "
                f"{r['timings'].get('statistics_pass_s', 0):.2f} | {r['timings'].get('great_expectations_s', 0):.2f} | "
                f"{', '.join(r['failed']) or '-'} |")
        if peer:
            line += f" {r['native_gx_s']:.2f} | {r['native_gx_spark_jobs']} |"
        lines.append(line)
    lines += ["", "Spark jobs: jobs Spark ran inside the validation call, counted by a job tag (AQE runs each shuffle "
              "stage as a job: an aggregate is 2 jobs, one with an exact distinct count 3; the Delta scan's "
              "planning can add some); a failed row-level check adds one or two jobs for its sample values. "
              "A load average near the CPU count means the timings are noisy."]
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
