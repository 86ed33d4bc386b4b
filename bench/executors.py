"""Executor scaling: how ingest, a full feature build, scoring and the ranker's Spark training speed
up when Spark gets a second core, side by side in one run on one generated drop. Each Spark master runs
in a fresh process of its own (its own JVM, its own lake: ingest -> features --full-refresh -> score ->
the XGBoost ranker through xgboost.spark, each timed in that process, JVM start-up not counted), in the
order given. ``local[N]``: one JVM with N task slots; ``standalone[N]``: a Spark standalone cluster on
loopback (infra/spark/standalone.py) with N one-core workers, the driver in this process (client mode).
The speed-up per job is ``seconds on the first master of the same kind / seconds on this one``: 2.0 is
linear for one core -> two.

    .venv/bin/python bench/executors.py           # 50,000 customers; local[1], local[2], standalone[1], standalone[2]
    .venv/bin/python bench/executors.py --users 5000 --ranker-groups 2000 --masters 'local[1],standalone[2]'

The transformer scored with is untrained (bench/ranker.py's: weights do not change throughput); ranking
is off in the score (the retrieval path). The ranker's training set is generated (``--ranker-groups``
users x 50 candidates x 24 features, a planted signal) and trained for a fixed number of rounds
(``--ranker-rounds``, no early stopping) with one xgboost.spark worker per executor core. Writes
bench/results/executors.md and bench/results/executors.json.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
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
JOBS = ("ingest", "features (full)", "score (retrieval)", "ranker training (xgboost.spark)")
RANKER_FEATURES = 24
RANKER_CANDIDATES = 50


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--masters", default="local[1],local[2],standalone[1],standalone[2]",
                   help="local[N] or standalone[N] (N one-core workers), comma-separated, in run order")
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--executor-memory", default="3g", help="each standalone worker's executor")
    p.add_argument("--ranker-groups", type=int, default=20_000, help="users in the ranker's training set")
    p.add_argument("--ranker-rounds", type=int, default=100)
    p.add_argument("--workdir", default=None, help="default: a temporary folder, removed at the end")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)   # internal: run one master, print its JSON
    ns = p.parse_args(argv)
    bad = [m for m in ns.masters.split(",") if not MASTER.match(m)]
    if bad:
        p.error(f"--masters: {', '.join(bad)} is not local[N] or standalone[N]")
    if not re.fullmatch(r"\d+g", ns.executor_memory):
        p.error(f"--executor-memory: {ns.executor_memory!r} is not a whole number of gigabytes (e.g. 3g)")
    return ns


STANDALONE = re.compile(r"standalone\[(\d+)\]$")
MASTER = re.compile(r"(local|standalone)\[[1-9]\d*\]$")


@contextlib.contextmanager
def _master_url(master: str, ns: argparse.Namespace, work: Path):
    """(Spark master URL, executor cores, extra spark conf): a local master as it is; ``standalone[N]`` a
    cluster of N one-core workers started here and stopped on exit, with this repository on the
    executors' PYTHONPATH (no spark-submit, so no --py-files)."""
    found = STANDALONE.match(master)
    if not found:
        yield master, int(re.search(r"\[(\d+)\]", master).group(1)), {}
        return
    from infra.spark import standalone

    workers = int(found.group(1))
    memory_mb = int(ns.executor_memory.rstrip("g")) * 1024 + 512      # the executor and its overhead
    with standalone.cluster(work / f"cluster-{workers}", workers=workers, cores=1, memory=f"{memory_mb}m",
                            repo_on_path=True) as c:
        yield c["master"], workers, {"spark.executor.memory": ns.executor_memory, "spark.executor.cores": 1,
                                     "spark.cores.max": workers, "spark.driver.host": "127.0.0.1",
                                     "spark.driver.bindAddress": "127.0.0.1"}


def _await_executors(spark, cores: int, timeout: float = 120.0) -> None:
    """A standalone app gets its executors after the session is up: time nothing before all have
    registered (the driver counts as one more entry)."""
    deadline = time.monotonic() + timeout
    while spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() < cores + 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {cores} executors registered in {timeout:.0f} s")
        time.sleep(0.5)


def ranker_frames(groups: int, seed: int):
    """A ranker training night: ``groups`` users x 50 candidates x 24 features; a candidate is bought
    when a weighted sum of the first six features plus noise passes a threshold (about 5% of them),
    the rest are noise; a tenth of the values missing, as retrievers leave them."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = groups * RANKER_CANDIDATES
    x = rng.normal(size=(n, RANKER_FEATURES)).astype(np.float32)
    weights = np.zeros(RANKER_FEATURES, dtype=np.float32)
    weights[:6] = [1.0, 0.8, 0.6, -0.5, 0.4, 0.3]
    label = ((x @ weights + rng.normal(scale=0.5, size=n)) > 2.3).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(RANKER_FEATURES)])
    return frame.assign(row=np.repeat(np.arange(groups), RANKER_CANDIDATES),
                        item=np.tile(np.arange(RANKER_CANDIDATES), groups),
                        qid=np.repeat(np.arange(groups) + seed * groups, RANKER_CANDIDATES), label=label)


def _train_ranker(spark, ns: argparse.Namespace, cores: int) -> dict:
    from training.ranker import TreeParams
    from training.spark_ranker import fit_xgb_spark

    train, valid = ranker_frames(ns.ranker_groups, 1), ranker_frames(max(ns.ranker_groups // 5, 1), 2)
    features = [f"f{i}" for i in range(RANKER_FEATURES)]
    _, info = fit_xgb_spark(spark, train, valid, features, TreeParams(), num_workers=cores, rounds=ns.ranker_rounds)
    return info


def one_master(ns: argparse.Namespace, master: str, work: Path) -> dict:
    """ingest -> features (full) -> score -> ranker training on a fresh lake under ``master``, each timed."""
    from bench.ranker import job_args, register_transformer
    from jobs import build_features, ingest, runtime, score

    d = START + dt.timedelta(days=ns.days - 1)
    root = work / master.replace("[", "-").replace("]", "").replace("/", "_").replace(":", "")
    shutil.rmtree(root, ignore_errors=True)
    lake, drop = str(root / "lake"), work / "drop"
    seconds, out = {}, {}
    with _master_url(master, ns, root) as (url, cores, conf):
        config = runtime.load_config(overrides={"spark.master": url, "spark.driver_memory": ns.driver_memory,
                                                "spark.progress_every_s": 0, "spark.conf": conf, "score.rank": False})
        spark = runtime.spark_session(config, app_name=f"bench-executors-{master}")
        if conf:
            _await_executors(spark, cores)

        def timed(name: str, fn) -> None:
            t = time.perf_counter()
            out[name] = fn()
            seconds[name] = time.perf_counter() - t

        timed("ingest", lambda: ingest.run(spark, job_args(
            ingest.IngestArgs, lake, config, run_date=d + dt.timedelta(days=1),
            events=(str(drop / "events"),), items=(str(drop / "items"),))))
        timed("features (full)", lambda: build_features.run(spark, job_args(
            build_features.BuildFeaturesArgs, lake, config, run_date=d, full_refresh=True)))
        register_transformer(spark, lake, str(root / "models"), config)    # not timed: not scoring
        timed("score (retrieval)", lambda: score.run(spark, job_args(score.ScoreArgs, lake, config, run_date=d)))
        timed("ranker training (xgboost.spark)", lambda: _train_ranker(spark, ns, cores))
        spark.stop()
    return {"master": master, "cores": cores, "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "events": out["ingest"].get("events_inserted"), "users_scored": out["score (retrieval)"].get("active_users"),
            "ranker": out["ranker training (xgboost.spark)"], "load_average_after": round(os.getloadavg()[0], 1)}


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
        # the same arguments (argparse: the last of a repeated option wins), one master, this folder
        cmd = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), "--one", master,
               "--workdir", str(work)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT")), None)
        if done.returncode != 0 or line is None:
            print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
            return 1
        runs.append(json.loads(line[len("RESULT"):]))
    for r in runs:   # against the first master of the same kind (local or standalone)
        base = next(x for x in runs if _kind(x["master"]) == _kind(r["master"]))
        r["speedup"] = {j: round(base["seconds"][j] / r["seconds"][j], 2) for j in JOBS}
        r["baseline"] = base["master"]
    result = {"users": ns.users, "items": ns.items, "days": ns.days, "events_generated": generated["events"],
              "driver_memory": ns.driver_memory, "executor_memory": ns.executor_memory,
              "ranker": {"groups": ns.ranker_groups, "candidates": RANKER_CANDIDATES, "features": RANKER_FEATURES,
                         "rounds": ns.ranker_rounds}, "runs": runs, "load_average_before": round(load_before, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores visible",
              "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_results(result)
    if not ns.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


def _kind(master: str) -> str:
    return "standalone" if STANDALONE.match(master) else "local"


def write_results(r: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "executors.json").write_text(json.dumps(r, indent=2) + "\n")
    rows = [f"| `{x['master']}` | {x['cores']} | " + " | ".join(
        f"{x['seconds'][j]} ({x['speedup'][j]}x)" for j in JOBS) + f" | {x['load_average_after']} |" for x in r["runs"]]
    per_core = []
    for x in r["runs"]:
        base = next(b for b in r["runs"] if b["master"] == x["baseline"])
        if x["cores"] > base["cores"]:
            added = x["cores"] / base["cores"]
            per_core.append(f"- `{base['master']}` -> `{x['master']}`: " + ", ".join(
                f"{j} {round(x['speedup'][j] / added, 2)}" for j in JOBS))
    rk, last = r["ranker"], r["runs"][-1]
    md = f"""# Executor scaling (bench/executors.py)

{r['measured_at']}; machine: {r['machine']}; load average {r['load_average_before']} before. One generated drop
(features.synthetic.generate: {r['users']:,} customers, {r['items']:,} items, {r['days']} days,
{r['events_generated']:,} events); per Spark master a fresh process and lake: ingest, a full feature build,
scoring every active customer ({last['users_scored']:,}) with an untrained transformer (retrieval, no ranker),
then the XGBoost ranker through xgboost.spark on a generated training night ({rk['groups']:,} users x
{rk['candidates']} candidates x {rk['features']} features, {rk['rounds']} rounds, one xgboost worker per core).
`local[N]`: one JVM, N task slots (driver memory {r['driver_memory']}); `standalone[N]`: a standalone cluster
on loopback with N one-core workers ({r['executor_memory']} executors), the driver in the bench's process.
Seconds of each job's `run` (JVM and cluster start-up not counted); in brackets the speed-up over the
first master of the same kind.

| master | cores | {' | '.join(JOBS)} | load average after |
|---|---:|{'---:|' * len(JOBS)}---:|
{chr(10).join(rows)}

Speed-up per added core (1.0 = linear):
{chr(10).join(per_core)}

On this 2-core machine a one-core run still has the second core for its driver JVM, the Python workers
and the OS, and a two-core run shares its two cores with them: both understate what an added executor
core gives a cluster whose driver runs elsewhere.
"""
    (RESULTS / "executors.md").write_text(md)


if __name__ == "__main__":
    sys.exit(main())
