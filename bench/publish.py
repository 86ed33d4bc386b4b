"""Publish benchmark, side by side in one run on one lake: ``warmstart publish`` for a night (the
candidates' quality gate with its reports, then the pointer row in ``candidates/published``) against
- the bound: one Spark pass over the night's candidates partition that any gate must make (rows per
  user counted, written to the ``noop`` sink);
- the peer: the same suite as plain Great Expectations on the Spark partition (bench/quality.py's
  ``native_gx``: one GX expectation per check, result_format SUMMARY).

The lake is built by the real jobs on generated data (ingest, a full feature build, scoring every
active customer with bench/ranker.py's untrained transformer, retrieval only); those steps are not the
measurement. Publish runs twice: the first publishes, the second finds the night published (the gate
still runs, nothing is appended). Spark ``local[2]``.

    .venv/bin/python bench/publish.py                    # 50,000 customers x 100 candidates
    .venv/bin/python bench/publish.py --users 5000       # a quick look

Writes bench/results/publish.md and bench/results/publish.json.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
START = dt.date(2024, 1, 1)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--workdir", default=None, help="default: a temporary folder, removed at the end")
    return p.parse_args(argv)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 1)


def build_lake(spark, config, work: Path, ns: argparse.Namespace, night: dt.date) -> dict:
    """Generated events -> ingest -> full features -> the transformer registered -> scored: the night's
    candidates, ready to publish. Returns the steps' seconds."""
    from bench.ranker import job_args, register_transformer
    from features.synthetic import generate
    from jobs import build_features, ingest, score

    lake = str(work / "lake")
    generate(work / "drop", users=ns.users, items=ns.items, days=ns.days, start_date=START, seed=0)
    seconds = {}
    _, seconds["ingest"] = _timed(lambda: ingest.run(spark, job_args(
        ingest.IngestArgs, lake, config, run_date=night + dt.timedelta(days=1),
        events=(str(work / "drop" / "events"),), items=(str(work / "drop" / "items"),))))
    _, seconds["features (full)"] = _timed(lambda: build_features.run(spark, job_args(
        build_features.BuildFeaturesArgs, lake, config, run_date=night, full_refresh=True)))
    register_transformer(spark, lake, str(work / "models"), config)
    _, seconds["score (retrieval)"] = _timed(lambda: score.run(spark, job_args(
        score.ScoreArgs, lake, config, run_date=night)))
    return seconds


def measure(spark, config, lake: str, night: dt.date) -> dict:
    """Publish twice, the one-pass bound and the plain-GX peer, on the same partition."""
    from bench.quality import native_gx
    from bench.ranker import job_args
    from features import suites
    from features.tables import USER_CANDIDATES
    from jobs import lake as lakeio
    from jobs import publish

    partition = lakeio.read(spark, lake, USER_CANDIDATES).where(f"run_date = DATE'{night}'")
    first, first_s = _timed(lambda: publish.run(spark, job_args(publish.PublishArgs, lake, config, run_date=night)))
    again, again_s = _timed(lambda: publish.run(spark, job_args(publish.PublishArgs, lake, config, run_date=night)))
    _, scan_s = _timed(lambda: partition.groupBy("user_id").count().write.format("noop").mode("overwrite").save())
    peer, peer_s = _timed(lambda: native_gx(partition, USER_CANDIDATES.name, night, None, config.quality))
    if not (first["published"] and again["already_published"]):
        raise SystemExit(f"publish did not publish then find it published: {first} / {again}")
    return {"rows": first["rows"], "users": first["users"], "gate_passed": first["gate_passed"],
            "publish_s": first_s, "publish_again_s": again_s, "scan_s": scan_s, "native_gx_s": peer_s,
            "suite_checks": len(suites.suite(USER_CANDIDATES.name)),
            "native_gx_expectations": peer["expectations"], "native_gx_failed": peer["failed"]}


def main(argv: list[str] | None = None) -> int:
    from jobs import runtime

    ns = _parse_args(argv)
    work = Path(ns.workdir or tempfile.mkdtemp(prefix="bench-publish-"))
    shutil.rmtree(work / "lake", ignore_errors=True)
    night = START + dt.timedelta(days=ns.days - 1)
    config = runtime.load_config(overrides={"spark.master": "local[2]", "spark.progress_every_s": 0,
                                            "score.rank": False})
    spark = runtime.spark_session(config, app_name="bench-publish")
    build = build_lake(spark, config, work, ns, night)
    load_before = os.getloadavg()[0]
    figures = measure(spark, config, str(work / "lake"), night)
    result = {"customers": ns.users, "items": ns.items, "days": ns.days, "night": night.isoformat(), "build_s": build,
              **figures, "load_average_before": round(load_before, 1),
              "load_average_after": round(os.getloadavg()[0], 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores visible",
              "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    spark.stop()
    write_results(result)
    if not ns.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


def write_results(r: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "publish.json").write_text(json.dumps(r, indent=2) + "\n")
    per_s = r["rows"] / r["publish_s"]
    md = f"""# Publish benchmark (bench/publish.py)

{r['measured_at']}; machine: {r['machine']}; Spark `local[2]`; load average {r['load_average_before']} before the
measurements, {r['load_average_after']} after. One generated drop ({r['customers']:,} customers, {r['items']:,} items,
{r['days']} days) built by the real jobs; the night {r['night']} scored with an untrained transformer (retrieval):
{r['users']:,} users' lists, {r['rows']:,} candidate rows. Gate passed: {r['gate_passed']}.

| step, same partition, same process | seconds | rows/s | against publish |
|---|---:|---:|---:|
| `warmstart publish` (gate, reports, pointer) | {r['publish_s']} | {per_s:,.0f} | 1.0x |
| `warmstart publish` again (the gate runs, nothing appended) | {r['publish_again_s']} | {r['rows'] / r['publish_again_s']:,.0f} | {r['publish_again_s'] / r['publish_s']:.2f}x |
| bound: one pass over the partition (rows per user, `noop` sink) | {r['scan_s']} | {r['rows'] / r['scan_s']:,.0f} | {r['scan_s'] / r['publish_s']:.2f}x |
| peer: the suite as plain GX on Spark ({r['native_gx_expectations']} expectations for its {r['suite_checks']} checks) | {r['native_gx_s']} | {r['rows'] / r['native_gx_s']:,.0f} | {r['native_gx_s'] / r['publish_s']:.2f}x |

Building the lake (not the measurement): {', '.join(f'{k} {v} s' for k, v in r['build_s'].items())}.
Publish's cost per row is an upper bound at this size: part of it is fixed (the suite's Spark jobs,
the reports, the pointer's Delta commit).
"""
    (RESULTS / "publish.md").write_text(md)


if __name__ == "__main__":
    sys.exit(main())
