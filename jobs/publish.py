"""Gate a run date's candidates and, if they pass, publish them: append one row to
``candidates/published`` (run_date, the user_candidates Delta version to read, model version, counts).
Online services read only published runs (``scoring.reader.load_latest``), so a run whose gate fails is
never served and the previous published run stays in service.

    spark-submit --master local[*] jobs/publish.py --lake ./lake --run-date 2011-12-09
    warmstart publish --run-date 2011-12-09 [publish.min_coverage=0.95 ...]

The gate (``scoring/gate.py``) runs on the user_candidates version written by the latest
``warmstart score`` of the run date (found through the commit's userMetadata, which also gives K and the
catalogue size); active users are those of the run date's feature tables. It always writes
``reports/<run_date>/candidates/gate.json`` and ``gate.html``; a failure exits 3 naming the report.

Idempotent: publishing a run date whose latest scored version is already published appends nothing.
The published table_version is read by time travel, so keep Delta's file retention
(``delta.deletedFileRetentionDuration``, VACUUM) longer than the time between two published runs.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from features.tables import PUBLISHED, USER_CANDIDATES, USER_FEATURES, USER_SEQUENCES
from jobs import lake, runtime
from scoring import gate


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


def run(spark: SparkSession, args: PublishArgs) -> dict:
    if args.run_date is None:
        raise runtime.UsageError("give --run-date D")
    d = args.run_date
    cfg = args.config
    version, meta = latest_score_commit(spark, args.lake, d)
    expected = min(int(meta["k"]), int(meta["catalogue_items"]))
    candidates = lake.read(spark, args.lake, USER_CANDIDATES, version).where(F.col("run_date") == F.lit(d)).persist()
    try:
        stats = gate.gate_stats(candidates, active_users(spark, args.lake, d), expected).first().asDict()
        result = gate.evaluate(stats, expected_per_user=expected,
                               min_coverage=float(cfg.get("publish.min_coverage", 0.99)),
                               max_short_list_share=float(cfg.get("publish.max_short_list_share", 0.001)))
        frames = {name: [r.asDict() for r in df.collect()] for name, df in gate.report_frames(candidates).items()}
    finally:
        candidates.unpersist()

    already = _already_published(spark, args.lake, d, version)
    published = result.passed and not already
    report = {
        "run_date": d.isoformat(), "table_version": version, "model_version": meta.get("model_version"),
        "k": int(meta["k"]), "catalogue_items": int(meta["catalogue_items"]), "expected_per_user": expected,
        "gate": result.to_dict(), "stats": stats,
        "coverage": stats["covered_users"] / stats["active_users"] if stats["active_users"] else 0.0,
        "mix": frames["mix"], "top_items": frames["top_items"],
        "distinct_items": frames["distinct_items"][0]["distinct_items"],
        "item_coverage": frames["distinct_items"][0]["distinct_items"] / max(1, int(meta["catalogue_items"])),
        "published": result.passed, "reason": None if result.passed else "gate failed: " + ", ".join(result.failed),
        "run_id": args.run_id,
    }
    folder = f"{args.reports_root}/{d.isoformat()}/candidates"
    runtime.write_json(f"{folder}/gate.json", {**report, "histogram": frames["histogram"]})
    runtime.write_text(f"{folder}/gate.html", gate.render_html(report, gate.plots(frames["histogram"], frames["mix"])))

    summary = {"run_date": d.isoformat(), "table_version": version, "model_version": meta.get("model_version"),
               "gate_passed": result.passed, "failed_checks": result.failed, "users": stats["users"],
               "rows": stats["rows"], "coverage": report["coverage"], "published": published,
               "already_published": already, "report": f"{folder}/gate.html"}
    outputs = {}
    if published:
        row = [(d, version, meta.get("model_version"), stats["users"], stats["rows"], args.run_id,
                dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))]
        outputs[PUBLISHED.name] = lake.append(spark, args.lake, PUBLISHED, spark.createDataFrame(row, PUBLISHED.schema))
    runtime.record_lineage(args, run_date=d, inputs={USER_CANDIDATES.name: version}, outputs=outputs,
                           summary=summary, status="succeeded" if result.passed else "gate_failed")
    if not result.passed:
        raise runtime.GateFailed(f"candidates for {d} failed the gate ({', '.join(result.failed)}); nothing "
                                 f"published, the previous run stays served; report: {folder}/gate.html")
    return summary


def _already_published(spark: SparkSession, lake_root: str, run_date: dt.date, version: int) -> bool:
    if not lake.exists(spark, lake_root, PUBLISHED):
        return False
    return lake.read(spark, lake_root, PUBLISHED).where(
        (F.col("run_date") == F.lit(run_date)) & (F.col("table_version") == version)).limit(1).count() > 0


def main(argv: list[str] | None = None) -> int:
    parser = runtime.job_parser("publish", "gate a run date's candidates and publish them for online services")
    parser.add_argument("--run-date", type=runtime.parse_date, required=True)
    return runtime.run_job("publish", parser, lambda ns, common: runtime.dataclass_from(PublishArgs, ns, common),
                           run, argv)


if __name__ == "__main__":
    sys.exit(main())
