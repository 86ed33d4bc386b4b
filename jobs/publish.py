"""Gate a run date's candidates and, if they pass, publish them: append one row to
``candidates/published`` (run_date, the user_candidates Delta version to read, model version, counts).
Online services read only published runs (``scoring.reader.load_latest``), so a run whose gate fails is
never served and the previous published run stays in service.

    spark-submit --master local[*] jobs/publish.py --lake ./lake --run-date 2011-12-09
    warmstart publish --run-date 2011-12-09 [publish.min_coverage=0.95 ...]

The gate is the ``candidates/user_candidates`` quality suite (``features/suites.py``), run by Great
Expectations (``features.quality.validate_table``) on the version written by the latest ``warmstart
score`` of the run date (found through the commit's userMetadata, which also gives K and the catalogue
size: lists hold min(K, catalogue) items); active users are those of the run date's feature tables.
After an erasure (``warmstart forget``) the night's lists are those of a later version, the forget's
delete: :func:`gated_version` gates and publishes that one, so a night is published again without
being scored again (after ``--vacuum-now`` the score commit's files are gone) and without the erased users.
Thresholds: ``publish.min_coverage``, ``publish.max_short_list_share``; severities:
``quality.severity.candidates_user_candidates.<check>``. It always writes
``reports/<run_date>/candidates/gate.json`` and ``gate.html`` (``scoring/gate.py``); a critical failure
exits 3 naming the report.

After a gate that passed (published now or already), publish runs the VACUUM of customer erasures whose
retention has passed (``jobs/forget.py``'s ``vacuum_due``: ``warmstart forget`` without ``--vacuum-now``
leaves a pending record under ``<lake>/_forget/pending/``), so the nightly flow and the Airflow DAG vacuum
them without a task of their own; the summary's ``erasures_vacuumed`` says which. A VACUUM that fails only
logs a warning (the erasure stays pending, tried again after the next publish) and never fails the publish.

Idempotent: publishing a run date whose gated version (its latest score commit, or the erasure after
it) is already published appends nothing.
The published table_version is read by time travel, so keep Delta's file retention
(``delta.deletedFileRetentionDuration``, VACUUM) longer than the time between two published runs.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features import quality
from features.quality import ValidationResult
from features.tables import PUBLISHED, USER_CANDIDATES, USER_FEATURES, USER_SEQUENCES
from jobs import chaos, forget, lake, runtime
from jobs.config import Config, QualityConfig
from scoring import gate

log = logging.getLogger("warmstart.publish")


@dataclass(frozen=True)
class PublishArgs(runtime.JobArgs):
    run_date: dt.date | None = None


def latest_score_commit(spark: SparkSession, lake_root: str, run_date: dt.date) -> tuple[int, dict]:
    """(version, userMetadata) of the newest user_candidates commit that wrote ``run_date``."""
    if not lake.exists(spark, lake_root, USER_CANDIDATES):
        raise runtime.UsageError(f"{USER_CANDIDATES.name} not found under {lake_root}; run `warmstart score` first")
    history = (DeltaTable.forPath(spark, lake.path_of(lake_root, USER_CANDIDATES)).history()
               .where(F.col("userMetadata").isNotNull()).select("version", "userMetadata").collect())
    found = []
    for row in history:
        try:
            meta = json.loads(row["userMetadata"])
        except (TypeError, ValueError):
            continue
        if meta.get("run_date") == run_date.isoformat():
            found.append((int(row["version"]), meta))
    if not found:
        raise runtime.UsageError(f"no `warmstart score` run for {run_date} in {USER_CANDIDATES.name}; "
                                 f"run `warmstart score --run-date {run_date}` first")
    return max(found, key=lambda f: f[0])


def gated_version(lake_root: str, run_date: dt.date, scored: int, newest: int | None) -> int:
    """The user_candidates version to gate and publish for ``run_date``: its latest score commit
    (``scored``), unless a later commit up to ``newest`` (the table's version read before the history that
    gave ``scored``, so that a rescore of the night committed meanwhile is not taken for one) changed that
    night's files, as ``warmstart forget``'s delete does (the score commit would still hold the erased
    users, and after ``--vacuum-now`` its files are gone). Then: the first version whose files for the
    night are ``newest``'s, found by bisection (after its score commit the night's files only lose rows,
    so every version from that one on holds them): the same version however many other nights are scored
    later (publish stays idempotent), and the one forget republished. Reads the Delta log only
    (delta-rs); where it cannot, gates ``scored`` as before."""
    if newest is None or newest <= scored:
        return scored
    current = _night_files(lake_root, newest, run_date)
    if current is None:    # e.g. storage that delta-rs cannot reach: the score commit, as before
        log.warning("cannot compare %s's files for %s after its score commit; gating version %d",
                    USER_CANDIDATES.name, run_date, scored)
        return scored
    if _night_files(lake_root, scored, run_date) == current:
        return scored
    low, high = scored + 1, newest            # high always holds newest's files for the night
    while low < high:
        middle = (low + high) // 2
        if _night_files(lake_root, middle, run_date) == current:
            high = middle
        else:
            low = middle + 1
    log.info("%s for %s changed after its score commit %d (an erasure): gating version %d",
             USER_CANDIDATES.name, run_date, scored, high)
    return high


def _night_files(lake_root: str, version: int, run_date: dt.date) -> frozenset[str] | None:
    """The data files of ``run_date`` in the version's snapshot; None where it cannot be read."""
    try:
        return frozenset(lake.snapshot_files(lake_root, USER_CANDIDATES, version, run_date)[1])
    except Exception as exc:  # noqa: BLE001 - a version whose log was cleaned up cannot be compared
        log.debug("%s v%d: %s", USER_CANDIDATES.name, version, runtime.printable(str(exc), 200))
        return None


def active_users(spark: SparkSession, lake_root: str, run_date: dt.date):
    """Users of the run date's feature tables (the same set `warmstart score` scores)."""
    frames = [lake.read(spark, lake_root, t).where(F.col("as_of_date") == F.lit(run_date)).select("user_id")
              for t in (USER_SEQUENCES, USER_FEATURES) if lake.exists(spark, lake_root, t)]
    if not frames:
        raise runtime.UsageError(f"no feature tables under {lake_root}; cannot tell which users are active")
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out.distinct()


def suite_inputs(spark: SparkSession, lake_root: str, run_date: dt.date, config: Config,
                 meta: dict) -> tuple[QualityConfig, dict[str, DataFrame]]:
    """What the candidates' suite needs besides the rows: the quality section with ``max_rank`` = the
    list length the score run aimed at (min(K, catalogue items), from its commit's ``meta``), and the
    run date's active users (its ``active_users`` reference)."""
    expected = min(int(meta["k"]), int(meta["catalogue_items"]))
    return (dataclasses.replace(config.quality_bounds, max_rank=expected),
            {"active_users": active_users(spark, lake_root, run_date)})


def run(spark: SparkSession, args: PublishArgs) -> dict:
    if args.run_date is None:
        raise runtime.UsageError("give --run-date D")
    d = args.run_date
    newest = lake.version(spark, args.lake, USER_CANDIDATES)     # before the history: see gated_version
    scored, meta = latest_score_commit(spark, args.lake, d)
    version = gated_version(args.lake, d, scored, newest)
    quality_config, references = suite_inputs(spark, args.lake, d, args.config, meta)
    candidates = lake.read(spark, args.lake, USER_CANDIDATES, version).where(F.col("run_date") == F.lit(d)).persist()
    try:   # cached here, not by the validation: the report frames read the partition too
        result = quality.validate_table(
            spark, candidates, USER_CANDIDATES.name, d, context={"table_version": version},
            config=dataclasses.replace(quality_config, cache_partition=False), publish=args.config.publish,
            references=references)
        frames = {name: [r.asDict() for r in df.collect()] for name, df in gate.report_frames(candidates).items()}
    finally:
        candidates.unpersist()
    report = _report(args, version, meta, result, frames)
    folder = f"{args.reports_root}/{d.isoformat()}/candidates"
    runtime.write_json(f"{folder}/gate.json", {**report, "histogram": frames["histogram"]})
    runtime.write_text(f"{folder}/gate.html", gate.render_html(report, gate.plots(frames["histogram"], frames["mix"])))

    passed, failed = report["gate"]["passed"], report["gate"]["failed"]
    already = _already_published(spark, args.lake, d, version)
    summary = {"run_date": d.isoformat(), "table_version": version, "score_version": scored,
               "model_version": meta.get("model_version"),
               "gate_passed": passed, "failed_checks": failed, "users": report["stats"]["users"],
               "rows": report["stats"]["rows"], "coverage": report["coverage"], "published": passed and not already,
               "already_published": already, "report": f"{folder}/gate.html"}
    chaos.point("publish.before_pointer")     # the gate report is written, the published row is not
    outputs = {PUBLISHED.name: _publish(spark, args, version, meta, report["stats"])} if summary["published"] else {}
    if passed:
        summary["erasures_vacuumed"] = _vacuum_due_erasures(spark, args.lake)
    runtime.record_lineage(args, run_date=d, inputs={USER_CANDIDATES.name: version}, outputs=outputs,
                           summary=summary, status="succeeded" if passed else "gate_failed")
    if not passed:
        raise runtime.GateFailed(f"candidates for {d} failed the gate ({', '.join(failed)}); nothing "
                                 f"published, the previous run stays served; report: {folder}/gate.html")
    return summary


def _report(args: PublishArgs, version: int, meta: dict, result: ValidationResult,
            frames: dict[str, list[dict]]) -> dict[str, Any]:
    """What gate.json holds and gate.html shows."""
    summary = gate.gate_summary(result)
    totals = frames["totals"][0]
    stats = {"rows": totals["rows"], "users": totals["users"],
             "active_users": result.statistics.get("coverage__reference"),
             "covered_users": result.statistics.get("coverage__covered")}
    catalogue = int(meta["catalogue_items"])
    return {
        "run_date": args.run_date.isoformat(), "table_version": version, "model_version": meta.get("model_version"),
        "k": int(meta["k"]), "catalogue_items": catalogue, "expected_per_user": min(int(meta["k"]), catalogue),
        "gate": summary, "stats": stats, "thresholds": result.report_json["thresholds"],
        "coverage": stats["covered_users"] / stats["active_users"] if stats["active_users"] else 0.0,
        "mix": frames["mix"], "top_items": frames["top_items"], "distinct_items": totals["distinct_items"],
        "item_coverage": totals["distinct_items"] / max(1, catalogue),
        "published": summary["passed"],
        "reason": None if summary["passed"] else "gate failed: " + ", ".join(summary["failed"]), "run_id": args.run_id,
    }


def _vacuum_due_erasures(spark: SparkSession, lake_root: str) -> dict[str, Any]:
    """``forget.vacuum_due``, which never fails the publish: the pointer is already written, and an erasure
    whose VACUUM did not run stays pending for the next night."""
    try:
        return forget.vacuum_due(spark, lake_root)
    except Exception as exc:  # noqa: BLE001 - e.g. the lake's storage not listable: warn, try next night
        message = f"{type(exc).__name__}: {runtime.printable(str(exc), 300)}"
        log.warning("vacuum of due erasures failed (%s); they stay pending for the next publish", message)
        return {"error": message}


def _publish(spark: SparkSession, args: PublishArgs, version: int, meta: dict, stats: dict) -> int:
    """Append the run's row to candidates/published; returns the version written."""
    row = [(args.run_date, version, meta.get("model_version"), stats["users"], stats["rows"], args.run_id,
            dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))]
    return lake.append(spark, args.lake, PUBLISHED, spark.createDataFrame(row, PUBLISHED.schema))


def _already_published(spark: SparkSession, lake_root: str, run_date: dt.date, version: int) -> bool:
    if not lake.exists(spark, lake_root, PUBLISHED):
        return False
    return lake.read(spark, lake_root, PUBLISHED).where(
        (F.col("run_date") == F.lit(run_date)) & (F.col("table_version") == version)).limit(1).count() > 0


def main(argv: list[str] | None = None) -> int:
    parser = runtime.job_parser("publish", "gate a run date's candidates and publish them for online services")
    parser.add_argument("--run-date", type=runtime.parse_date, required=True)
    return runtime.run_job("publish", parser, PublishArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main())
