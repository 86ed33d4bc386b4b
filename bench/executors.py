"""Executor scaling: how ingest, a full feature build and scoring speed up when Spark gets a second
core, side by side in one run on one generated drop. Each Spark master runs in a fresh process of its
own (its own JVM, its own lake: ingest -> features --full-refresh -> score, each job's ``run`` timed in
that process, JVM start-up not counted), in the order given, and the speed-up per job is
``seconds on the first master / seconds on the second``: 2.0 is linear for local[1] -> local[2].

    .venv/bin/python bench/executors.py                                 # 50,000 customers, local[1] vs local[2]
    .venv/bin/python bench/executors.py --users 5000 --masters 'local[1],local[2]'   # a quick look

The transformer scored with is untrained (bench/ranker.py's: weights do not change throughput); ranking
is off (the retrieval path). Writes bench/results/executors.md and bench/results/executors.json.
Not measured here: a standalone cluster with one and two workers (tests/test_spark_cluster.py starts one
for correctness; on a 2-core machine its workers would share the same two cores as local[2]).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
START = dt.date(2024, 1, 1)
JOBS = ("ingest", "features (full)", "score (retrieval)")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--masters", default="local[1],local[2]", help="Spark masters, comma-separated, in run order")
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--workdir", default=None, help="default: a temporary folder, removed at the end")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)   # internal: run one master, print its JSON
    return p.parse_args(argv)


def one_master(ns: argparse.Namespace, master: str, work: Path) -> dict:
    """ingest -> features (full) -> score on a fresh lake under ``master``, each job's run timed."""
    from bench.ranker import job_args, register_transformer
    from jobs import build_features, ingest, runtime, score

    d = START + dt.timedelta(days=ns.days - 1)
    config = runtime.load_config(overrides={"spark.master": master, "spark.driver_memory": ns.driver_memory,
                                            "spark.progress_every_s": 0, "score.rank": False})
    spark = runtime.spark_session(config, app_name=f"bench-executors-{master}")
    cores = spark.sparkContext.defaultParallelism
    root = work / master.replace("[", "-").replace("]", "").replace("/", "_").replace(":", "")
    shutil.rmtree(root, ignore_errors=True)
    lake = str(root / "lake")
    drop = work / "drop"
    seconds, out = {}, {}
    t = time.perf_counter()
    out["ingest"] = ingest.run(spark, job_args(ingest.IngestArgs, lake, config, run_date=d + dt.timedelta(days=1),
                                               events=(str(drop / "events"),), items=(str(drop / "items"),)))
    seconds["ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    out["features"] = build_features.run(spark, job_args(build_features.BuildFeaturesArgs, lake, config, run_date=d,
                                                         full_refresh=True))
    seconds["features (full)"] = time.perf_counter() - t
    register_transformer(spark, lake, str(root / "models"), config)
    t = time.perf_counter()
    out["score"] = score.run(spark, job_args(score.ScoreArgs, lake, config, run_date=d))
    seconds["score (retrieval)"] = time.perf_counter() - t
    return {"master": master, "default_parallelism": cores, "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "events": out["ingest"].get("events_inserted"), "users_scored": out["score"].get("active_users"),
            "load_average_after": round(os.getloadavg()[0], 1)}


def main(argv: list[str] | None = None) -> int:
    ns = _parse_args(argv)
    work = Path(ns.workdir or tempfile.mkdtemp(prefix="bench-executors-"))
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if ns.one:
        print("RESULT" + json.dumps(one_master(ns, ns.one, work)))
        return 0
    from features.synthetic import generate

    work.mkdir(parents=True, exist_ok=True)
    generated = generate(work / "drop", users=ns.users, items=ns.items, days=ns.days, start_date=START, seed=0)
    runs, load_before = [], os.getloadavg()[0]
    for master in ns.masters.split(","):
        cmd = [sys.executable, __file__, "--one", master, "--workdir", str(work), "--users", str(ns.users),
               "--items", str(ns.items), "--days", str(ns.days), "--driver-memory", ns.driver_memory]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT")), None)
        if done.returncode != 0 or line is None:
            print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
            return 1
        runs.append(json.loads(line[len("RESULT"):]))
    first = runs[0]
    for r in runs:
        r["speedup"] = {j: round(first["seconds"][j] / r["seconds"][j], 2) for j in JOBS}
    result = {"users": ns.users, "items": ns.items, "days": ns.days, "events_generated": generated["events"],
              "driver_memory": ns.driver_memory, "runs": runs, "load_average_before": round(load_before, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores visible",
              "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_results(result)
    if not ns.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


def write_results(r: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "executors.json").write_text(json.dumps(r, indent=2) + "\n")
    rows = [f"| `{x['master']}` | {x['default_parallelism']} | " + " | ".join(
        f"{x['seconds'][j]} ({x['speedup'][j]}x)" for j in JOBS) + f" | {x['load_average_after']} |" for x in r["runs"]]
    first, last = r["runs"][0], r["runs"][-1]
    per_core = {j: round(last["speedup"][j] / (last["default_parallelism"] / first["default_parallelism"]), 2)
                for j in JOBS}
    md = f"""# Executor scaling (bench/executors.py)

{r['measured_at']}; machine: {r['machine']}; load average {r['load_average_before']} before. One generated drop
(features.synthetic.generate: {r['users']:,} customers, {r['items']:,} items, {r['days']} days,
{r['events_generated']:,} events); per Spark master a fresh process and lake: ingest, a full feature build, then
scoring every active customer ({last['users_scored']:,}) with an untrained transformer (retrieval, no ranker).
Seconds of each job's `run` (JVM start-up not counted); in brackets the speed-up over the first row.

| master | cores | {' | '.join(JOBS)} | load average after |
|---|---:|{'---:|' * len(JOBS)}---:|
{chr(10).join(rows)}

Speed-up per added core, `{first['master']}` -> `{last['master']}` (1.0 = linear):
{', '.join(f'{j} {v}' for j, v in per_core.items())}. On a 2-core machine `local[1]` still has the second core for
its driver JVM, the Python workers and the OS, so this understates what an added executor core gives a cluster.
"""
    (RESULTS / "executors.md").write_text(md)


if __name__ == "__main__":
    sys.exit(main())
