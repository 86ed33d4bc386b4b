"""Validate one partition of a declared table against its suite (``features/suites.py``) with Great
Expectations, at the cost of a few narrow Spark aggregates over the cached partition.

Who calls it: ``jobs/validate.py`` (``warmstart validate``) and ``jobs/publish.py`` (the candidates'
gate), through :func:`validate_table`. What it produces: a :class:`ValidationResult` per table and run
date, with the counts of passed / failed / skipped checks per severity, the failures with sample
offending values, a self-contained HTML report (jinja2, inline CSS, no network) and its JSON twin. It
writes nothing: the job writes the report files.

How the cost stays down (users see GX on Spark double a job's time when every expectation scans the
data): the partition is cached once; every check of the suite compiles to Spark aggregate
expressions (null counts, rows minus distinct keys, rows outside a range, regex hits, min / max,
means, ``percentile_approx``, groups breaking a predicate, keys missing from a reference frame),
evaluated in a few narrow ``agg`` over the cached partition (:func:`_source` says why not one), plus one
small ``agg`` over the previous partition for row-count and drift checks. Great Expectations then
evaluates the suite -- one ``ExpectColumnValuesToBeBetween`` per check, with the severity in its
``meta`` -- on the one-row pandas frame of those statistics. Only a failed check goes back to the
cached partition, for a handful of offending values.

This is the one library module that brings rows to the driver: a one-row statistics frame and at
most ``sample_size`` rows per failed check.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import os
import string
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
from features.contract import cutoff
from features.suites import CRITICAL, ROW_KINDS, WARNING, Check
from features.tables import table as declared_table
from jobs.config import PublishConfig, QualityConfig

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
log = logging.getLogger("warmstart.quality")

TEMPLATES = Path(__file__).with_name("templates")
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
DRIFT_KINDS = ("drift_mean", "drift_quantile")      # statistics compared with the previous partition's
RUNNER_SETTINGS = ("cache_partition", "sample_size", "quantile_accuracy")   # quality: keys that are not thresholds


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


def thresholds(config: QualityConfig | None = None, publish: PublishConfig | None = None) -> dict[str, Any]:
    """The values checks name, by name: the ``quality:`` section's, and the ``publish:`` section's that
    the candidates' gate names (their defaults without the sections)."""
    publish = publish or PublishConfig()
    return {**(config or QualityConfig()).thresholds, "min_coverage": publish.min_coverage,
            "max_short_list_share": publish.max_short_list_share}


def settings(config: QualityConfig | None, publish: PublishConfig | None = None) -> dict[str, Any]:
    """Thresholds (:func:`thresholds`) and the runner's settings of the ``quality:`` section, by name."""
    config = config or QualityConfig()
    return {**thresholds(config, publish), **{name: getattr(config, name) for name in RUNNER_SETTINGS}}


def severity_of(check: Check, table_name: str, config: QualityConfig | None) -> str:
    overrides = (config.severity if config else {}).get(suites.alias(table_name)) or {}
    severity = overrides.get(check.name, check.severity)
    if severity not in suites.SEVERITIES:
        raise ValueError(f"quality.severity.{suites.alias(table_name)}.{check.name}: {severity!r} is not one of "
                         f"{', '.join(suites.SEVERITIES)}")
    return severity


def _param(check: Check, key: str, cfg: Mapping[str, Any]) -> Any:
    """A check parameter; a string naming a threshold is looked up in the configuration."""
    value = check.params.get(key)
    if isinstance(value, str) and key in suites.THRESHOLD_PARAMS and value in cfg:
        return cfg[value]
    return value


def _predicate(check: Check, cfg: Mapping[str, Any], run_date: dt.date) -> str:
    return check.params["predicate"].format(run_date=run_date.isoformat(), cutoff=cutoff(run_date), **cfg)


def _unset_thresholds(check: Check, cfg: Mapping[str, Any]) -> list[str]:
    """Thresholds the check names that are not set. A ``between`` bound left unset is no bound, not a
    reason to skip."""
    named = [] if check.kind == "between" else [v for k, v in check.params.items()
                                                 if k in suites.THRESHOLD_PARAMS and isinstance(v, str)]
    if "predicate" in check.params:
        named += [field for _, field, _, _ in string.Formatter().parse(check.params["predicate"]) if field]
    return [name for name in named if name in cfg and cfg[name] in (None, "")]


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
        return ~F.coalesce(F.expr(_predicate(check, cfg, run_date)), F.lit(True))   # nulls: the not_null checks'
    return None


def _skip_reason(check: Check, columns: list[str], declared: list[str], cfg: Mapping[str, Any],
                 context: Mapping[str, Any], references: Mapping[str, DataFrame], has_previous: bool) -> str | None:
    missing = [c for c in check.reads if c not in declared or c not in columns]
    if missing:
        return f"column(s) {', '.join(missing)} not in the table's declaration / frame"
    unset = _unset_thresholds(check, cfg)
    if unset:
        return f"threshold {', '.join(unset)} is not set"
    if check.kind in suites.REFERENCE_KINDS and check.params["reference"] not in references:
        return f"no {check.params['reference']} given to compare with"
    if check.kind == "quarantine_rate" and not (context.get("read_count") or 0) > 0:
        return "no quarantined / read counts for the run"
    if check.kind in ("row_count_change", *DRIFT_KINDS) and not has_previous:
        return "no previous partition"
    return None


def _source(check: Check) -> tuple[str, ...]:
    """The aggregate that computes a check's statistics; checks of one source share it.

    Apart rather than one wide ``agg``: an exact distinct count makes Spark run every other aggregate of
    the same ``agg`` once per key, which cost seconds of planning on small tables (docs/quality.md)."""
    if check.kind == "unique":
        return ("unique", check.name)
    if check.kind in DRIFT_KINDS:
        return ("compared",)      # the same aggregate the previous partition gets
    if check.kind == "groups_satisfy":
        return ("groups", *check.params["by"])
    if check.kind in suites.REFERENCE_KINDS:
        return ("reference", check.params["reference"], check.column)
    return ("plain",)             # counts of offending rows, column ranges, freshness, the row count


def _ok(check: Check) -> str:
    return f"_ok_{check.name}"


def _groups(df: DataFrame, by: tuple[str, ...], checks: list[Check], cfg: Mapping[str, Any],
            run_date: dt.date) -> DataFrame:
    """One row per group of ``by``: its rows, and whether each check's predicate holds (null holds)."""
    return df.groupBy(*by).agg(F.count(F.lit(1)).alias("_rows"), *[
        F.coalesce(F.expr(_predicate(c, cfg, run_date)), F.lit(True)).alias(_ok(c)) for c in checks])


def _against_reference(df: DataFrame, reference: DataFrame, column: str) -> DataFrame:
    """One row per distinct ``column`` value of the partition or the reference, flagged by where it is."""
    mine = df.select(column).distinct().withColumn("_in_partition", F.lit(True))
    theirs = reference.select(column).distinct().withColumn("_in_reference", F.lit(True))
    return mine.join(theirs, column, "full_outer")


def _frame(df: DataFrame, source: tuple[str, ...], checks: list[Check], cfg: Mapping[str, Any], run_date: dt.date,
           references: Mapping[str, DataFrame]) -> DataFrame:
    """The frame a source's aggregate runs over."""
    if source[0] == "groups":
        return _groups(df, source[1:], checks, cfg, run_date)
    if source[0] == "reference":
        return _against_reference(df, references[source[1]], source[2])
    return df


def _current_exprs(check: Check, cfg: Mapping[str, Any], run_date: dt.date) -> dict[str, Column]:
    """Statistics of the current partition this check needs, by name, over its source's frame."""
    name = check.name
    if check.kind == "groups_satisfy":
        return {name: F.count_if(~F.col(_ok(check))), f"{name}__groups": F.count(F.lit(1))}
    if check.kind == "coverage":
        listed = F.col("_in_reference").isNotNull()
        return {f"{name}__covered": F.count_if(listed & F.col("_in_partition").isNotNull()),
                f"{name}__reference": F.count_if(listed)}
    if check.kind == "in_reference":
        return {name: F.count_if(F.col("_in_partition").isNotNull() & F.col("_in_reference").isNull())}
    violation = _violation(check, cfg, run_date)
    if violation is not None:
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


def _statistics(df: DataFrame, todo: list[tuple[Check, str]], cfg: Mapping[str, Any], run_date: dt.date,
                references: Mapping[str, DataFrame]) -> dict[str, Any]:
    """Every statistic of the partition the checks need, by name (in suite order), one narrow
    aggregate per :func:`_source`; the plain one first, so that it fills the cache."""
    sources: dict[tuple[str, ...], tuple[list[Check], dict[str, Column]]] = {
        ("plain",): ([], {"__rows": F.count(F.lit(1))})}
    names = ["__rows"]
    for check, _ in todo:
        checks, exprs = sources.setdefault(_source(check), ([], {}))
        checks.append(check)
        mine = _current_exprs(check, cfg, run_date)
        exprs.update(mine)
        names += mine
    values: dict[str, Any] = {}
    for source, (checks, exprs) in sources.items():
        values.update(_aggregate(_frame(df, source, checks, cfg, run_date, references), exprs))
    return {name: values[name] for name in names}


def _bounds(check: Check, cfg: Mapping[str, Any], stats: dict[str, Any], prev: dict[str, Any] | None,
            context: Mapping[str, Any]) -> tuple[Any, Any, Any, str]:
    """(observed, expected_min, expected_max, detail) of one evaluated check."""
    name = check.name
    if check.kind in ROW_KINDS:
        return stats[name], 0, 0, _row_detail(check, cfg, stats)
    if check.kind == "groups_satisfy":
        failing, groups, by = stats[name], stats[f"{name}__groups"], ", ".join(check.params["by"])
        if "max_share" not in check.params:
            return failing, 0, 0, f"groups of ({by}) that break it, of {groups:,}"
        share = failing / groups if groups else None
        return share, 0.0, float(_param(check, "max_share", cfg)), f"{failing:,} of {groups:,} groups of ({by})"
    if check.kind == "coverage":
        covered, listed = stats[f"{name}__covered"], stats[f"{name}__reference"]
        detail = f"{covered:,} of {listed:,} {check.params['reference']} have rows"
        return (covered / listed if listed else 0.0), float(_param(check, "min_value", cfg)), None, detail
    if check.kind == "in_reference":
        return stats[name], 0, 0, f"distinct {check.column} values not among {check.params['reference']}"
    if check.kind == "row_count":
        return stats["__rows"], _param(check, "min_value", cfg), _param(check, "max_value", cfg), "rows"
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


def _row_detail(check: Check, cfg: Mapping[str, Any], stats: dict[str, Any]) -> str:
    if check.kind == "unique":
        return "rows minus distinct keys"
    if check.kind != "between":
        return "offending rows"
    lo, hi = _param(check, "min_value", cfg), _param(check, "max_value", cfg)
    allowed = " and ".join(([f"{'>' if check.params.get('strict_min') else '>='} {lo}"] if lo is not None else [])
                           + ([f"<= {hi}"] if hi is not None else []))
    return (f"offending rows; column range [{stats.get(check.name + '__min')}, {stats.get(check.name + '__max')}], "
            f"allowed {allowed}")


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


def _samples(df: DataFrame, check: Check, keys: tuple[str, ...], cfg: Mapping[str, Any], run_date: dt.date,
             references: Mapping[str, DataFrame], n: int) -> list[dict[str, Any]]:
    """A few offending values of a failed check, from the cached partition ([] for table statistics)."""
    if check.kind == "unique":
        rows = (df.groupBy(*check.columns).count().where(F.col("count") > 1)
                .orderBy(F.desc("count")).limit(n).collect())
    elif check.kind == "groups_satisfy":
        by = check.params["by"]
        rows = (_groups(df, by, [check], cfg, run_date).where(~F.col(_ok(check)))
                .select(*by, F.col("_rows").alias("rows")).orderBy(*by).limit(n).collect())
    elif check.kind in suites.REFERENCE_KINDS:
        rows = _reference_samples(df, check, references[check.params["reference"]], n)
    elif check.kind in ("in_set", "matches", "not_matches", "between"):
        # distinct offending values with how often they occur: more telling than n arbitrary rows
        rows = (df.where(_violation(check, cfg, run_date)).groupBy(check.column).count()
                .withColumnRenamed("count", "rows").orderBy(F.desc("rows"), check.column).limit(n).collect())
    elif check.kind in ROW_KINDS:
        shown = list(dict.fromkeys([c for c in keys if c in df.columns] + list(check.reads)))
        rows = df.where(_violation(check, cfg, run_date)).select(*shown).limit(n).collect()
    else:
        rows = []
    return [{k: _plain(v) for k, v in r.asDict().items()} for r in rows]


def _reference_samples(df: DataFrame, check: Check, reference: DataFrame, n: int) -> list:
    """in_reference: values the reference lacks, with their rows; coverage: reference values without rows."""
    column = check.column
    if check.kind == "in_reference":
        return (df.join(reference.select(column).distinct(), column, "left_anti").groupBy(column).count()
                .withColumnRenamed("count", "rows").orderBy(F.desc("rows"), column).limit(n).collect())
    return reference.select(column).distinct().join(df.select(column), column, "left_anti").orderBy(column) \
        .limit(n).collect()


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
                   config: QualityConfig | None = None, publish: PublishConfig | None = None,
                   references: Mapping[str, DataFrame] | None = None) -> ValidationResult:
    """Validate ``df`` (one partition of ``table_name``) for ``run_date``.

    ``previous_df``: the previous partition, for the row-count and drift checks (skipped without it).
    ``context``: run facts the data can't tell, e.g. ``{"quarantined_count": q, "read_count": r}`` of
    the ingest run (bronze/events' quarantine_rate check). ``config``: the ``quality:`` section
    (thresholds, ``severity`` overrides, runner settings), ``publish``: the ``publish:`` section (the
    candidates' coverage and short-list thresholds); their defaults without them. ``references``: frames
    the reference checks compare with, by name (the candidates' ``active_users``: ``user_id`` of every
    active user of the run date); those checks are skipped without them.
    """
    context, references = dict(context or {}), dict(references or {})
    cfg = settings(config, publish)
    checks = suites.suite(table_name)
    jobs = SparkJobCount(spark, f"warmstart-quality-{suites.alias(table_name)}")
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    cached = df.persist(StorageLevel.MEMORY_AND_DISK) if cfg["cache_partition"] else df
    timings["plan_and_cache_s"] = time.perf_counter() - t_all    # persist plans the scan (Delta snapshot, file skipping)
    try:
        results, todo = _plan(checks, table_name, df.columns, cfg, context, references, previous_df is not None,
                              config)
        stats, prev_stats = _measure(cached, previous_df, todo, cfg, run_date, references, timings)
        results.update(_judge(cached, table_name, run_date, todo, stats, prev_stats, cfg, context, references,
                              timings))
    finally:
        t = time.perf_counter()
        if cfg["cache_partition"]:
            cached.unpersist()
        timings["unpersist_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_all
        spark_jobs = jobs.stop()
    out = _result(table_name, run_date, [results[c.name] for c in checks], stats, prev_stats, timings, spark_jobs)
    out.report_json = _report_json(out, cfg, context)
    out.report_html = render_html(out.report_json)
    return out


def _plan(checks: list[Check], table_name: str, columns: list[str], cfg: Mapping[str, Any],
          context: Mapping[str, Any], references: Mapping[str, DataFrame], has_previous: bool,
          config: QualityConfig | None) -> tuple[dict[str, CheckResult], list[tuple[Check, str]]]:
    """The skipped checks' results, and the (check, severity) pairs to evaluate."""
    declared = declared_table(table_name).columns
    skipped: dict[str, CheckResult] = {}
    todo: list[tuple[Check, str]] = []
    for check in checks:
        severity = severity_of(check, table_name, config)
        reason = _skip_reason(check, columns, declared, cfg, context, references, has_previous)
        if reason:
            skipped[check.name] = CheckResult(check.name, check.kind, severity, check.description, SKIPPED,
                                              list(check.reads), detail=reason)
        else:
            todo.append((check, severity))
    return skipped, todo


def _measure(cached: DataFrame, previous_df: DataFrame | None, todo: list[tuple[Check, str]],
             cfg: Mapping[str, Any], run_date: dt.date, references: Mapping[str, DataFrame],
             timings: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The partition's statistics (a few narrow aggregates, the first fills the cache) and, with a
    previous partition, its row count and drift statistics (one aggregate)."""
    t = time.perf_counter()
    stats = _statistics(cached, todo, cfg, run_date, references)
    timings["statistics_pass_s"] = time.perf_counter() - t
    if previous_df is None:
        return stats, None
    t = time.perf_counter()
    prev_exprs: dict[str, Column] = {"__rows": F.count(F.lit(1))}
    for check, _ in todo:
        prev_exprs.update(_comparable_exprs(check, cfg))
    prev_stats = _aggregate(previous_df, prev_exprs)
    timings["previous_pass_s"] = time.perf_counter() - t
    return stats, prev_stats


def _judge(cached: DataFrame, table_name: str, run_date: dt.date, todo: list[tuple[Check, str]],
           stats: dict[str, Any], prev_stats: dict[str, Any] | None, cfg: Mapping[str, Any],
           context: Mapping[str, Any], references: Mapping[str, DataFrame],
           timings: dict[str, float]) -> dict[str, CheckResult]:
    """Great Expectations' verdict on each measured check, with sample offending values of the failed."""
    results: dict[str, CheckResult] = {}
    evaluated, details = [], {}
    for check, severity in todo:
        if check.kind in DRIFT_KINDS and prev_stats.get(check.name) is None:
            results[check.name] = CheckResult(check.name, check.kind, severity, check.description, SKIPPED,
                                              list(check.reads), detail="previous partition has no values")
            continue
        observed, lo, hi, details[check.name] = _bounds(check, cfg, stats, prev_stats, context)
        evaluated.append((check, severity, observed, lo, hi))
    t = time.perf_counter()
    verdicts = _gx_validate(table_name, run_date, evaluated)
    timings["great_expectations_s"] = time.perf_counter() - t

    t = time.perf_counter()
    keys = declared_table(table_name).keys
    for check, severity, observed, lo, hi in evaluated:
        success, expectation = verdicts[check.name]
        result = CheckResult(check.name, check.kind, severity, check.description, PASSED if success else FAILED,
                             list(check.reads), observed=observed, expected_min=lo, expected_max=hi,
                             expectation=expectation, detail=details[check.name])
        if not success and (stats["__rows"] or check.kind == "coverage"):
            result.sample_values = _samples(cached, check, keys, cfg, run_date, references, int(cfg["sample_size"]))
        results[check.name] = result
    timings["samples_s"] = time.perf_counter() - t
    return results


def _result(table_name: str, run_date: dt.date, ordered: list[CheckResult], stats: dict[str, Any],
            prev_stats: dict[str, Any] | None, timings: dict[str, float], spark_jobs: int) -> ValidationResult:
    counts = {s: {PASSED: 0, FAILED: 0, SKIPPED: 0} for s in suites.SEVERITIES}
    for r in ordered:
        counts[r.severity][r.status] += 1
    failures = [r.as_dict() for r in ordered if r.status == FAILED]
    return ValidationResult(
        table=table_name, run_date=run_date, rows=int(stats["__rows"]),
        previous_rows=int(prev_stats["__rows"]) if prev_stats else None,
        success_critical=counts[CRITICAL][FAILED] == 0, counts=counts,
        failures=sorted(failures, key=lambda f: (f["severity"] != CRITICAL, f["check"])),
        results=ordered, statistics=stats, timings={k: round(v, 4) for k, v in timings.items()},
        spark_jobs=spark_jobs)


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
        "thresholds": {k: v for k, v in cfg.items() if k not in RUNNER_SETTINGS},
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
