"""Validate one partition of a declared table against its suite (``features/suites.py``) with Great
Expectations, at the cost of a few narrow Spark aggregates over the cached partition.

Who calls it: ``jobs/validate.py`` (``warmstart validate``) and any job that gates its own output
(:func:`validate_table`). What it produces: a :class:`ValidationResult` per table and run date, with
the counts of passed / failed / skipped checks per severity, the failures with sample offending
values, a self-contained HTML report (jinja2, inline CSS, no network) and its JSON twin. It writes
nothing: the job writes the report files.

How the cost stays down (users see GX on Spark double a job's time when every expectation scans the
data): the partition is cached once; every check of the suite compiles to Spark aggregate
expressions (null counts, rows minus distinct keys, rows outside a range, regex hits, min / max,
means, ``percentile_approx``), evaluated in three kinds of narrow ``agg`` over the cached partition
(:func:`_statistics` says why not one), plus one small ``agg`` over the previous partition for
row-count and drift checks. Great Expectations then evaluates
the suite -- one ``ExpectColumnValuesToBeBetween`` per check, with the severity in its ``meta`` --
on the one-row pandas frame of those statistics. Only a failed row-level check goes back to the
cached partition, for a handful of offending rows.

This is the one library module that brings rows to the driver: a one-row statistics frame and at
most ``sample_size`` rows per failed check.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from features import suites
from features.suites import CRITICAL, ROW_KINDS, WARNING, Check
from features.tables import table as declared_table

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
log = logging.getLogger("warmstart.quality")

TEMPLATES = Path(__file__).with_name("templates")
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
DRIFT_KINDS = ("drift_mean", "drift_quantile")      # statistics compared with the previous partition's

# Settings of the `quality:` section besides thresholds, with their defaults (see jobs/defaults.yaml).
DEFAULT_SETTINGS: dict[str, Any] = {
    "cache_partition": True,
    "sample_size": 5,
    "quantile_accuracy": 10000,
}


@dataclass
class CheckResult:
    check: str
    kind: str
    severity: str
    description: str
    status: str                        # passed | failed | skipped
    columns: list[str]
    observed: Any = None               # the statistic GX saw
    expected_min: Any = None
    expected_max: Any = None
    expectation: str | None = None     # the GX expectation type that evaluated it
    detail: str = ""                   # observed column range, previous value, why skipped
    sample_values: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ValidationResult:
    table: str
    run_date: dt.date
    rows: int
    previous_rows: int | None
    success_critical: bool              # False if any critical check failed
    counts: dict[str, dict[str, int]]   # severity -> {passed, failed, skipped}
    failures: list[dict[str, Any]]      # failed checks (both severities), with sample offending values
    results: list[CheckResult]
    statistics: dict[str, Any]
    timings: dict[str, float]
    spark_jobs: int                     # Spark jobs the validation ran (the cost measure)
    report_json: dict[str, Any] = field(default_factory=dict)
    report_html: str = ""

    def result(self, check: str) -> CheckResult:
        for r in self.results:
            if r.check == check:
                return r
        raise KeyError(check)

    def summary_line(self) -> str:
        c, w = self.counts[CRITICAL], self.counts[WARNING]
        verdict = "PASSED" if self.success_critical else "FAILED"
        return (f"{self.table} {self.run_date}: {verdict} - {self.rows:,} rows; critical {c[PASSED]} passed, "
                f"{c[FAILED]} failed; warning {w[PASSED]} passed, {w[FAILED]} failed; "
                f"{c[SKIPPED] + w[SKIPPED]} skipped")


# --------------------------------------------------------------------------------------------------
# Configuration

def settings(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Thresholds and settings: the suite defaults overlaid with the ``quality:`` section."""
    out = {**suites.DEFAULT_THRESHOLDS, **DEFAULT_SETTINGS}
    for key, value in (config or {}).items():
        if key != "severity":
            out[key] = value
    return out


def severity_of(check: Check, table_name: str, config: Mapping[str, Any] | None) -> str:
    overrides = ((config or {}).get("severity") or {}).get(suites.alias(table_name)) or {}
    severity = overrides.get(check.name, check.severity)
    if severity not in suites.SEVERITIES:
        raise ValueError(f"quality.severity.{suites.alias(table_name)}.{check.name}: {severity!r} is not one of "
                         f"{', '.join(suites.SEVERITIES)}")
    return severity


def _param(check: Check, key: str, cfg: Mapping[str, Any]) -> Any:
    """A check parameter; a string naming a threshold is looked up in the configuration."""
    value = check.params.get(key)
    if isinstance(value, str) and key in ("min_value", "max_value", "pattern") and value in cfg:
        return cfg[value]
    return value


# --------------------------------------------------------------------------------------------------
# Checks -> Spark aggregate expressions

def _violation(check: Check, cfg: Mapping[str, Any], run_date: dt.date) -> Column | None:
    """True on a row that breaks a row-level check (None for table-level kinds)."""
    col = F.col(check.column) if check.column else None
    if check.kind == "not_null":
        return col.isNull()
    if check.kind == "in_set":
        return col.isNotNull() & ~col.isin(list(check.params["values"]))
    if check.kind == "between":
        lo, hi = _param(check, "min_value", cfg), _param(check, "max_value", cfg)
        cond = F.lit(False)
        if lo is not None:
            cond = cond | ((col <= F.lit(lo)) if check.params.get("strict_min") else (col < F.lit(lo)))
        if hi is not None:
            cond = cond | (col > F.lit(hi))
        return col.isNotNull() & cond
    if check.kind == "matches":
        return col.isNotNull() & ~col.rlike(_param(check, "pattern", cfg))
    if check.kind == "not_matches":
        return col.isNotNull() & col.rlike(_param(check, "pattern", cfg))
    if check.kind == "rows_satisfy":
        predicate = check.params["predicate"].format(run_date=run_date.isoformat(), **cfg)
        return ~F.coalesce(F.expr(predicate), F.lit(True))   # null columns are the not_null checks' business
    return None


def _skip_reason(check: Check, columns: list[str], declared: list[str], cfg: Mapping[str, Any],
                 context: Mapping[str, Any]) -> str | None:
    missing = [c for c in check.reads if c not in declared or c not in columns]
    if missing:
        return f"column(s) {', '.join(missing)} not in the table's declaration / frame"
    if check.kind in ("matches", "not_matches") and not _param(check, "pattern", cfg):
        return f"threshold {check.params['pattern']} is not set"
    if check.kind == "quarantine_rate" and not (context.get("read_count") or 0) > 0:
        return "no quarantined / read counts for the run"
    return None


def _current_exprs(check: Check, cfg: Mapping[str, Any], run_date: dt.date) -> dict[str, Column]:
    """Statistics of the current partition this check needs, by name (all go into one ``agg``)."""
    name = check.name
    violation = _violation(check, cfg, run_date)
    if violation is not None and check.kind != "unique":
        exprs = {name: F.sum(F.when(violation, 1).otherwise(0))}
        if check.kind == "between":
            exprs[f"{name}__min"] = F.min(check.column)
            exprs[f"{name}__max"] = F.max(check.column)
        return exprs
    if check.kind == "unique":
        return {name: F.count(F.lit(1)) - F.count_distinct(F.struct(*check.columns))}
    if check.kind == "freshness":
        return {name: F.datediff(F.lit(run_date), F.max(F.to_date(F.expr(check.params["expr"]))))}
    return _comparable_exprs(check, cfg)


def _comparable_exprs(check: Check, cfg: Mapping[str, Any]) -> dict[str, Column]:
    """Statistics compared against the previous partition (computed on both)."""
    if check.kind == "drift_mean":
        return {check.name: F.avg(check.column)}
    if check.kind == "drift_quantile":
        return {check.name: F.percentile_approx(check.column, float(check.params["quantile"]),
                                                int(cfg["quantile_accuracy"]))}
    return {}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def _aggregate(df: DataFrame, exprs: dict[str, Column]) -> dict[str, Any]:
    """The statistics ``exprs`` in one Spark aggregate."""
    if not exprs:
        return {}
    row = df.agg(*[e.alias(n) for n, e in exprs.items()]).first()
    return {k: _plain(v) for k, v in row.asDict().items()}


def _statistics(df: DataFrame, todo: list[tuple[Check, str]], cfg: Mapping[str, Any],
                run_date: dt.date) -> dict[str, Any]:
    """Every statistic of the partition the checks need, by name, from three kinds of narrow aggregate.

    One wide ``agg`` of everything cost 14 s on 20,000 rows, nearly all of it Spark's, not the data's:
    an exact distinct count makes Spark group by the keys first and run every other aggregate of the
    same ``agg`` once per key (a ``percentile_approx`` digest per user), in four aggregate operators
    that each compile all the expressions. Apart, they take about a second in all:
    - the counts of offending rows, column min / max, freshness and the row count: plain sums, mins
      and maxes, one hash aggregate (the first, so it fills the cache);
    - rows minus distinct keys, one aggregate per uniqueness check;
    - the statistics compared with the previous partition (means, ``percentile_approx``), together:
      the same aggregate the previous partition gets.
    """
    aggregates: dict[str, dict[str, Column]] = {"plain": {"__rows": F.count(F.lit(1))}}
    names = ["__rows"]       # the order of the statistics in the report
    for check, _ in todo:
        exprs = _current_exprs(check, cfg, run_date)
        key = check.name if check.kind == "unique" else "compared" if check.kind in DRIFT_KINDS else "plain"
        aggregates.setdefault(key, {}).update(exprs)
        names += exprs
    values: dict[str, Any] = {}
    for exprs in aggregates.values():
        values.update(_aggregate(df, exprs))
    return {name: values[name] for name in names}


# --------------------------------------------------------------------------------------------------
# Great Expectations over the statistics

def _bounds(check: Check, cfg: Mapping[str, Any], stats: dict[str, Any], prev: dict[str, Any] | None,
            context: Mapping[str, Any]) -> tuple[Any, Any, Any, str]:
    """(observed, expected_min, expected_max, detail) of one evaluated check."""
    name = check.name
    if check.kind in ROW_KINDS:
        detail = "offending rows"
        if check.kind == "between":
            lo, hi = _param(check, "min_value", cfg), _param(check, "max_value", cfg)
            allowed = " and ".join(([f"{'>' if check.params.get('strict_min') else '>='} {lo}"] if lo is not None else [])
                                   + ([f"<= {hi}"] if hi is not None else []))
            detail = (f"offending rows; column range [{stats.get(name + '__min')}, {stats.get(name + '__max')}], "
                      f"allowed {allowed}")
        elif check.kind == "unique":
            detail = "rows minus distinct keys"
        return stats[name], 0, 0, detail
    if check.kind == "freshness":
        return stats[name], None, cfg["freshness_max_lag_days"], "days from the latest timestamp's date to the run date"
    if check.kind == "quarantine_rate":
        q, r = int(context.get("quarantined_count") or 0), int(context["read_count"])
        return q / r, 0.0, float(cfg["quarantine_rate_max"]), f"{q:,} quarantined of {r:,} read"
    if check.kind == "row_count_change":
        band = float(cfg["row_count_max_change"])
        p = prev["__rows"]
        return stats["__rows"], p * (1 - band), p * (1 + band), f"previous partition: {p:,} rows"
    band = float(cfg["drift_max_change"])     # drift_mean / drift_quantile
    p = prev[name]
    spread = band * max(abs(p), 1e-9)
    return stats[name], p - spread, p + spread, f"previous partition: {p:.6g}"


def _gx_validate(table_name: str, run_date: dt.date, evaluated: list[tuple[Check, str, Any, Any, Any]]) -> dict[str, Any]:
    """Run the GX suite (one expectation per evaluated check) on the one-row statistics frame.
    Returns check name -> (success, expectation type, observed GX reports)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if not evaluated:
        return {}
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    alias = suites.alias(table_name)
    batch = (context.data_sources.add_pandas(f"{alias}_statistics")
             .add_dataframe_asset(alias)
             .add_batch_definition_whole_dataframe(f"{alias}_{run_date}"))
    suite = context.suites.add(gx.ExpectationSuite(name=f"warmstart.{alias}"))
    for check, severity, _, lo, hi in evaluated:
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
            column=check.name, min_value=lo, max_value=hi,
            meta={"check": check.name, "severity": severity, "kind": check.kind, "description": check.description}))
    frame = pd.DataFrame([{check.name: (math.nan if obs is None else obs) for check, _, obs, _, _ in evaluated}])
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{alias}-{run_date}-{uuid.uuid4().hex[:6]}", data=batch, suite=suite))
    run = definition.run(batch_parameters={"dataframe": frame}, result_format="BASIC")
    out = {}
    for r in run.results:
        cfg = r.expectation_config
        # A missing statistic (no rows to measure) is a failure, not a vacuous pass.
        missing = bool((r.result or {}).get("missing_count"))
        out[cfg.meta["check"]] = (bool(r.success) and not missing, cfg.type)
    return out


# --------------------------------------------------------------------------------------------------
# Sample offending values (failed row-level checks only; reads the cached partition)

def _samples(df: DataFrame, check: Check, keys: tuple[str, ...], cfg: Mapping[str, Any], run_date: dt.date,
             n: int) -> list[dict[str, Any]]:
    if check.kind == "unique":
        rows = (df.groupBy(*check.columns).count().where(F.col("count") > 1)
                .orderBy(F.desc("count")).limit(n).collect())
        return [{k: _plain(v) for k, v in r.asDict().items()} for r in rows]
    shown = list(dict.fromkeys([c for c in keys if c in df.columns] + list(check.reads)))
    if check.kind in ("in_set", "matches", "not_matches", "between"):
        # distinct offending values with how often they occur: more telling than n arbitrary rows
        rows = (df.where(_violation(check, cfg, run_date)).groupBy(check.column).count()
                .orderBy(F.desc("count"), check.column).limit(n).collect())
        return [{check.column: _plain(r[0]), "rows": r[1]} for r in rows]
    rows = df.where(_violation(check, cfg, run_date)).select(*shown).limit(n).collect()
    return [{k: _plain(v) for k, v in r.asDict().items()} for r in rows]


# --------------------------------------------------------------------------------------------------
# The entry point

class SparkJobCount:
    """Counts the Spark jobs this thread runs from construction to :meth:`stop` (or over a ``with`` block).

    By a job tag, not a job group: tags nest, so a caller counting its own jobs around
    :func:`validate_table` (bench/quality.py) sees the validation's too, where a job group of the
    validation's own replaced the caller's, whose count then read 0."""

    def __init__(self, spark: SparkSession, label: str = "warmstart") -> None:
        self._sc = spark.sparkContext
        self._tag = f"{label}-{uuid.uuid4().hex[:8]}"
        self._sc.addJobTag(self._tag)
        self.jobs = 0

    def stop(self) -> int:
        self._sc.removeJobTag(self._tag)
        # PySpark's StatusTracker lacks getJobIdsForTag; the JVM's has it (Spark 4.0+).
        self.jobs = len(self._sc._jsc.sc().statusTracker().getJobIdsForTag(self._tag))
        return self.jobs

    def __enter__(self) -> SparkJobCount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def validate_table(spark: SparkSession, df: DataFrame, table_name: str, run_date: dt.date,
                   previous_df: DataFrame | None = None, context: Mapping[str, Any] | None = None, *,
                   config: Mapping[str, Any] | None = None) -> ValidationResult:
    """Validate ``df`` (one partition of ``table_name``) for ``run_date``.

    ``previous_df``: the previous partition, for the row-count and drift checks (skipped without it).
    ``context``: run facts the data can't tell, e.g. ``{"quarantined_count": q, "read_count": r}`` of
    the ingest run (bronze/events' quarantine_rate check). ``config``: the ``quality:`` section
    (thresholds, ``severity`` overrides); suite defaults without it.
    """
    context = dict(context or {})
    cfg = settings(config)
    checks = suites.suite(table_name)
    decl = declared_table(table_name)
    declared = decl.columns
    jobs = SparkJobCount(spark, f"warmstart-quality-{suites.alias(table_name)}")
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    cached = df.persist(StorageLevel.MEMORY_AND_DISK) if cfg["cache_partition"] else df
    timings["plan_and_cache_s"] = time.perf_counter() - t_all    # persist plans the scan (Delta snapshot, file skipping)
    try:
        results: dict[str, CheckResult] = {}
        todo: list[tuple[Check, str]] = []
        for check in checks:
            severity = severity_of(check, table_name, config)
            reason = _skip_reason(check, df.columns, declared, cfg, context)
            if reason is None and check.kind in ("row_count_change", *DRIFT_KINDS) and previous_df is None:
                reason = "no previous partition"
            if reason:
                results[check.name] = CheckResult(check.name, check.kind, severity, check.description, SKIPPED,
                                                  list(check.reads), detail=reason)
            else:
                todo.append((check, severity))

        # Pass 1: every statistic of the partition, a few narrow aggregates (the first fills the cache).
        t = time.perf_counter()
        stats = _statistics(cached, todo, cfg, run_date)
        timings["statistics_pass_s"] = time.perf_counter() - t

        # Pass 2 (only with a previous partition): its row count and the drift statistics.
        prev_stats = None
        if previous_df is not None:
            t = time.perf_counter()
            prev_exprs: dict[str, Column] = {"__rows": F.count(F.lit(1))}
            for check, _ in todo:
                prev_exprs.update(_comparable_exprs(check, cfg))
            prev_stats = _aggregate(previous_df, prev_exprs)
            timings["previous_pass_s"] = time.perf_counter() - t

        evaluated = []
        details: dict[str, str] = {}
        for check, severity in todo:
            if check.kind in DRIFT_KINDS and prev_stats.get(check.name) is None:
                results[check.name] = CheckResult(check.name, check.kind, severity, check.description, SKIPPED,
                                                  list(check.reads), detail="previous partition has no values")
                continue
            observed, lo, hi, detail = _bounds(check, cfg, stats, prev_stats, context)
            evaluated.append((check, severity, observed, lo, hi))
            details[check.name] = detail

        # Great Expectations evaluates the suite on the statistics.
        t = time.perf_counter()
        verdicts = _gx_validate(table_name, run_date, evaluated)
        timings["great_expectations_s"] = time.perf_counter() - t

        t = time.perf_counter()
        for check, severity, observed, lo, hi in evaluated:
            success, expectation = verdicts[check.name]
            result = CheckResult(check.name, check.kind, severity, check.description, PASSED if success else FAILED,
                                 list(check.reads), observed=observed, expected_min=lo, expected_max=hi,
                                 expectation=expectation, detail=details[check.name])
            if not success and check.kind in ROW_KINDS and stats["__rows"]:
                result.sample_values = _samples(cached, check, decl.keys, cfg, run_date, int(cfg["sample_size"]))
            results[check.name] = result
        timings["samples_s"] = time.perf_counter() - t
    finally:
        t = time.perf_counter()
        if cfg["cache_partition"]:
            cached.unpersist()
        timings["unpersist_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_all
        spark_jobs = jobs.stop()

    ordered = [results[c.name] for c in checks]
    counts = {s: {PASSED: 0, FAILED: 0, SKIPPED: 0} for s in suites.SEVERITIES}
    for r in ordered:
        counts[r.severity][r.status] += 1
    failures = [r.as_dict() for r in ordered if r.status == FAILED]
    out = ValidationResult(
        table=table_name, run_date=run_date, rows=int(stats["__rows"]),
        previous_rows=int(prev_stats["__rows"]) if prev_stats else None,
        success_critical=counts[CRITICAL][FAILED] == 0, counts=counts,
        failures=sorted(failures, key=lambda f: (f["severity"] != CRITICAL, f["check"])),
        results=ordered, statistics=stats, timings={k: round(v, 4) for k, v in timings.items()},
        spark_jobs=spark_jobs)
    out.report_json = _report_json(out, cfg, context)
    out.report_html = render_html(out.report_json)
    return out


def _report_json(r: ValidationResult, cfg: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "table": r.table,
        "run_date": r.run_date.isoformat(),
        "verdict": "passed" if r.success_critical else "failed",
        "success_critical": r.success_critical,
        "rows": r.rows,
        "previous_rows": r.previous_rows,
        "counts": r.counts,
        "failures": r.failures,
        "results": [x.as_dict() for x in r.results],
        "statistics": r.statistics,
        "thresholds": {k: cfg[k] for k in suites.DEFAULT_THRESHOLDS},
        "context": {k: _plain(v) for k, v in context.items()},
        "timings": r.timings,
        "spark_jobs": r.spark_jobs,
        "engine": "Great Expectations (ExpectColumnValuesToBeBetween per check) over a few Spark aggregates",
    }


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS, no scripts, no external links)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"]))
    env.filters["fmt"] = _fmt
    return env.get_template("quality_report.html.j2").render(r=report, critical=CRITICAL, warning=WARNING)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
