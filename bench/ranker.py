"""The two-stage ranker's cost beside the retrieval it re-ranks, side by side in one run and one Spark
session, on a generated lake (features.synthetic.generate -> jobs.ingest -> jobs.build_features for D):

- ``train-ranker``: ``jobs.train_ranker.run`` for D (its three weekly training nights' features, the
  transformer's candidates for each night, the other retrievers, the Spark feature join, XGBoost), with
  its training rows and groups;
- ``score``: ``jobs.score.run`` for D with ``score.rank=false`` (retrieval only: the transformer's top K)
  and with the ranker (``score.rank=true``), same K; users/s of each and the ratio ranked / retrieval
  per user (the aim: ranking costs at most 2x retrieval per user).

The transformer is an untrained SeqRec (dim 32, one layer, max_seq_len 20; weights do not change
throughput) registered for a date before the training nights, so every night has transformer candidates,
as in tests/test_ranker_job.py. Where the time goes is measured by wrapping the functions the jobs call
(their time, calls; nested parts are inside their parents'), not from log lines. The ranked score ranks
inside Spark's Python workers, which these wrappers do not reach: its parts there come from the score
summary's ``ranking_worker_seconds`` (an accumulator, summed over the tasks).

    .venv/bin/python bench/ranker.py [--users 100000] [--items 5000] [--days 35] [--events N] [--k 100]
                                     [--driver-memory 8g] [--workdir DIR] [--keep]

Writes bench/results/ranker.md and ranker.json.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
for key, value in {"GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "SPARK_LOCAL_IP": "127.0.0.1", "PYARROW_IGNORE_TIMEZONE": "1"}.items():
    os.environ.setdefault(key, value)

START = dt.date(2024, 1, 1)
TRANSFORMER_VERSION = "20240110-bench"      # registered before the oldest training night (D - 21)
log = logging.getLogger("warmstart.bench.ranker")


class Clock:
    """Seconds and calls per wrapped function, by call path (a part called inside another wrapped part is
    keyed ``parent > child``), reset per phase."""

    def __init__(self):
        self.parts: dict[str, dict] = {}
        self.counts: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []

    def reset(self):
        self.parts, self.counts, self.stack = {}, defaultdict(float), []

    def wrap(self, owner, name: str, label=None, count=None):
        """Time ``owner.name`` (a module's function or a class's method); ``label``: a string, or a function of
        the call's arguments that names the part (default ``module.name``)."""
        fn = getattr(owner, name)
        default = f"{getattr(owner, '__module__', '')}.{getattr(owner, '__name__', '')}.{name}"

        @functools.wraps(fn)
        def timed(*a, **kw):
            if threading.current_thread() is not threading.main_thread():
                return fn(*a, **kw)
            self.stack.append((label(*a, **kw) if callable(label) else label) or default)
            part = self.parts.setdefault(" > ".join(self.stack), {"seconds": 0.0, "calls": 0})   # in order of first call
            start = time.perf_counter()
            try:
                out = fn(*a, **kw)
                if count is not None:
                    for k, v in count(out, *a, **kw).items():
                        self.counts[k] += v
                return out
            finally:
                part["seconds"] += time.perf_counter() - start
                part["calls"] += 1
                self.stack.pop()

        setattr(owner, name, timed)

    def snapshot(self) -> dict:
        return {"parts": {k: {"seconds": round(v["seconds"], 2), "calls": v["calls"]} for k, v in list(self.parts.items())},
                "counts": dict(self.counts)}


class Memory:
    """Peak resident memory of this process tree (the driver's Python, the JVM, Spark's Python workers),
    sampled once a second from /proc. A watchdog too, since the machine is shared: when the tree passes
    ``limit_mb`` or the machine's available memory falls under ``floor_mb``, it logs where the run was and
    kills this tree (only it), so that the kernel's OOM killer never picks another job."""

    def __init__(self, clock: Clock, limit_mb: float, floor_mb: float = 1500.0, progress_s: float = 300.0):
        self.peak_mb, self.clock, self.limit_mb, self.floor_mb = 0.0, clock, limit_mb, floor_mb
        self.where, self._page, self._progress_s = "setup", os.sysconf("SC_PAGE_SIZE"), progress_s
        threading.Thread(target=self._run, daemon=True).start()

    def reset(self, where: str):
        self.where, self.peak_mb = where, self.tree()[0]

    def tree(self) -> tuple[float, list[int]]:
        children: dict[int, list[int]] = defaultdict(list)
        rss = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                rss[int(entry)] = int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * self._page
                children[ppid].append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        total, todo, pids = 0, [os.getpid()], []
        while todo:
            pid = todo.pop()
            pids.append(pid)
            total += rss.get(pid, 0)
            todo.extend(children.get(pid, []))
        return total / 2 ** 20, pids

    @staticmethod
    def available_mb() -> float:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
        return float("inf")

    def _run(self):
        last = time.monotonic()
        while True:
            time.sleep(1.0)
            mb, pids = self.tree()
            self.peak_mb = max(self.peak_mb, mb)
            available = self.available_mb()
            if time.monotonic() - last > self._progress_s:
                last = time.monotonic()
                log.info("bench progress [%s]: tree %.0f MB (peak %.0f), available %.0f MB, parts %s", self.where, mb,
                         self.peak_mb, available, json.dumps(self.clock.snapshot()))
            if mb > self.limit_mb or available < self.floor_mb:
                log.error("bench ABORTED in %s: process tree %.0f MB (limit %.0f), machine available %.0f MB "
                          "(floor %.0f); parts so far %s", self.where, mb, self.limit_mb, available, self.floor_mb,
                          json.dumps(self.clock.snapshot()))
                for pid in pids:
                    if pid != os.getpid():
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                os._exit(3)


def instrument(clock: Clock) -> None:
    """Wrap what train-ranker and score call, to see where their time goes."""
    from pyspark.sql import DataFrame, SparkSession

    from jobs import backtest, build_features, lake, ranking, score, train_ranker
    from training import backtest as B
    from training import heuristics as H
    from training import ranker as R

    def candidate_count(out, night, rows, **_):
        return {"candidate_rows": len(out), "candidate_users": len(rows)}

    def numeric_label(features, keys):
        what = {"user_id": "user_features as-of join", "item_id": "item_features as-of join"}
        return f"Spark run + collect: {next((v for k, v in what.items() if k in keys), keys)} (ranking._numeric)"

    for owner, name, label in (
        (build_features, "ensure", "features for the training nights (build_features.ensure)"),
        (train_ranker, "read_purchases", "read purchases (Spark -> pandas)"),
        (backtest, "read_purchases", "read purchases (Spark -> pandas)"),
        (B, "night", "nights: baskets per user (training.backtest.night)"),
        (ranking, "tune_tifu", "tune TIFU-KNN on the validation night (ranking.tune_tifu)"),
        (train_ranker, "transformer_rows", "transformer candidates per night (score.candidate_lists)"),
        (R, "cooccurrence_model", "co-occurrence model fit (R.cooccurrence_model)"),
        (H, "tifu_knn_scores", "TIFU-KNN scores, all calls (H.tifu_knn_scores)"),
        (H, "tifu_user_vectors", "TIFU vectors of every pool user (H.tifu_user_vectors)"),
        (H, "nearest_neighbours", "nearest neighbours (H.nearest_neighbours)"),
        (ranking, "attach_features", "feature join (ranking.attach_features)"),
        (ranking, "night_lookup", "the night's features, collected once (ranking.night_lookup)"),
        (ranking, "_assemble", "collected frames to arrays (ranking._assemble)"),
        (ranking.NightLookup, "attach", "feature join in arrays (NightLookup.attach)"),
        (SparkSession, "createDataFrame", "Spark createDataFrame from pandas"),
        (DataFrame, "toPandas", "Spark run + collect (DataFrame.toPandas)"),
        (R, "fit", "XGBoost fit: early-stopped, then refit (R.fit)"),
        (R, "union_recall", "validation recall (R.union_recall)"),
        (R, "predict", "XGBoost predict (R.predict)"),
        (R, "top_rows", "top K per user (R.top_rows)"),
        (ranking, "rank_context", "the night's ranking context, built once and broadcast (ranking.rank_context)"),
        (score, "_read_inputs", "score: read inputs"),
        (score, "_embed_catalogue", "score: embed catalogue"),
        (score, "_write_candidates", "score: retrieval (+ ranking in the workers) + write (score._write_candidates)"),
        (lake, "replace_partition", "Delta partition write (lake.replace_partition)"),
        (score, "_summary", "score: summary read-back"),
    ):
        clock.wrap(owner, name, label)
    clock.wrap(R, "candidates", "candidates: retrievers' union (R.candidates)", count=candidate_count)
    clock.wrap(ranking, "_numeric", numeric_label)


def register_transformer(spark, lake_root: str, models: str, config) -> str:
    """An untrained SeqRec over the lake's catalogue, registered and promoted (tests/test_ranker_job.py)."""
    import torch

    from features.tables import ITEMS
    from jobs import lake as lakeio
    from training.model import SeqRec, SeqRecConfig
    from training.registry import promote, save_version

    vocab = sorted(r["item_id"] for r in lakeio.read(spark, lake_root, ITEMS).select("item_id").collect())
    torch.manual_seed(0)
    model = SeqRec(SeqRecConfig(num_items=len(vocab), dim=32, num_layers=1, num_heads=2, max_seq_len=20,
                                dropout=0.0, use_text=False, recent_days=0)).eval()
    save_version(models, config.train.name, TRANSFORMER_VERSION, model, vocab, {}, {"val_ndcg@10": 0.1}, {})
    promote(models, config.train.name, TRANSFORMER_VERSION, margin=0.0)
    return TRANSFORMER_VERSION


def job_args(cls, lake_root: str, config, **fields):
    """A job's frozen ``*Args`` as its ``main`` would build them (tests/conftest.py's ``args_for``)."""
    import dataclasses

    from jobs import cli, runtime

    module = cls.__module__.rpartition(".")[2]
    job = next((name for name, (mod, _) in cli.COMMANDS.items() if mod == module), module)
    common = runtime.job_args(job, lake_root, config, fields.get("run_date"))
    return cls(**{f.name: getattr(common, f.name) for f in dataclasses.fields(runtime.JobArgs)}, **fields)


def phase(name: str, clock: Clock, memory: Memory, fn, partial: Path, done: dict):
    clock.reset()
    memory.reset(name)
    load = os.getloadavg()[0]
    log.info("bench: %s", name)
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    done[name] = {"seconds": round(seconds, 2), "summary": out, **clock.snapshot(), "peak_rss_mb": round(memory.peak_mb),
                  "loadavg_before": round(load, 2), "loadavg_after": round(os.getloadavg()[0], 2)}
    partial.write_text(json.dumps(done, indent=2, default=str))     # what a killed run leaves behind
    return done[name]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--days", type=int, default=35, help="D is the last day; training nights D-7, D-14, D-21")
    p.add_argument("--events", type=int, help="cap on generated events (default: generate's 0.25 sessions/user/day)")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--driver-memory", default="8g")
    p.add_argument("--max-rss-gb", type=float, default=19.0,
                   help="abort when this process tree passes it (the machine is shared; default 19)")
    p.add_argument("--workdir", help="where the lake and models go (default: a temp folder, removed); a workdir "
                                     "whose lake was built by an earlier run with the same sizes is reused")
    p.add_argument("--ranker-from", metavar="MODELS_DIR",
                   help="skip train-ranker: score with the LATEST ranker registered under this models folder "
                        "(an earlier run's, e.g. on a smaller lake of the same catalogue)")
    a = p.parse_args()

    from jobs import runtime

    runtime.setup_logging()
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="bench-ranker-"))
    workdir.mkdir(parents=True, exist_ok=True)
    d = START + dt.timedelta(days=a.days - 1)
    overrides = {"spark.master": "local[2]", "spark.driver_memory": a.driver_memory,
                 "features.sequence_length": 20, "score.k": a.k,
                 "paths.models": str(workdir / "models"), "paths.reports": str(workdir / "reports")}
    config = runtime.load_config(overrides=overrides)
    started = time.time()
    clock = Clock()
    memory = Memory(clock, a.max_rss_gb * 1024)
    try:
        result = bench(a, workdir, d, config, overrides, clock, memory)
    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["wall_s"] = round(time.time() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "ranker.json"
    runs = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
    key = (result["lake"]["users"], result["ranker_trained_on_users"])
    runs = sorted([r for r in runs if (r["lake"]["users"], r["ranker_trained_on_users"]) != key] + [result],
                  key=lambda r: (r["lake"]["users"], r["ranker_trained_on_users"]))
    path.write_text(json.dumps({"runs": runs}, indent=2, default=str) + "\n")
    (RESULTS / "ranker.md").write_text(markdown(runs))
    print(markdown([result]))
    return 0


def setup_lake(a, workdir: Path, d: dt.date, config, spark) -> dict:
    """The generated lake, ingested, with D's features and a registered transformer; reused from
    ``workdir`` when an earlier run made it with the same sizes. Its sizes and set-up times."""
    from features.synthetic import generate
    from jobs import build_features, ingest

    lake_root, models = str(workdir / "lake"), str(workdir / "models")
    sizes = {"users": a.users, "items": a.items, "days": a.days, "events_cap": a.events}
    made = workdir / "lake.json"            # the sizes and setup times of the lake in workdir
    if made.is_file() and json.loads(made.read_text())["sizes"] == sizes:
        log.info("bench: reusing the lake under %s", workdir)
        return {**json.loads(made.read_text()), "reused": True}
    setup = {"sizes": sizes}
    t = time.perf_counter()
    setup["generated"] = generate(workdir / "drop", users=a.users, items=a.items, days=a.days, start_date=START,
                                  seed=0, events=a.events)
    setup["generate_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    ingest.run(spark, job_args(ingest.IngestArgs, lake_root, config, run_date=d + dt.timedelta(days=1),
                               events=(str(workdir / "drop" / "events"),), items=(str(workdir / "drop" / "items"),)))
    setup["ingest_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    build_features.run(spark, job_args(build_features.BuildFeaturesArgs, lake_root, config, run_date=d))
    setup["features_for_D_s"] = round(time.perf_counter() - t, 1)
    register_transformer(spark, lake_root, models, config)
    made.write_text(json.dumps(setup, indent=2, default=str))
    return {**setup, "reused": False}


def copy_ranker(source_models: str, models: str, name: str) -> tuple[str, int]:
    """--ranker-from: the LATEST ranker of another run's models folder, copied here and promoted; its
    version and the users of the lake it was trained on (0 when unknown)."""
    from training.versions import latest_version, promote_to, version_dir

    version = latest_version(source_models, name)
    source = version_dir(source_models, name, version)
    if source.resolve() != version_dir(models, name, version).resolve():
        shutil.copytree(source, version_dir(models, name, version), dirs_exist_ok=True)
    promote_to(models, name, version)
    made_by = Path(source_models).parent / "lake.json"        # the lake the ranker was trained on
    trained_on = json.loads(made_by.read_text())["sizes"]["users"] if made_by.is_file() else 0
    log.info("bench: ranker %s/%s copied from %s (trained on a %s-user lake)", name, version, source_models, trained_on)
    return version, trained_on


def bench(a, workdir: Path, d: dt.date, config, overrides: dict, clock: Clock, memory: Memory) -> dict:
    from jobs import runtime, score, train_ranker
    from training.versions import read_json, version_dir

    load_before = os.getloadavg()
    lake_root, models = str(workdir / "lake"), str(workdir / "models")
    spark = runtime.spark_session(config, app_name="bench-ranker")
    setup = setup_lake(a, workdir, d, config, spark)
    instrument(clock)

    def scored(rank: bool):
        cfg = config.with_overrides({"score.rank": rank})
        return score.run(spark, job_args(score.ScoreArgs, lake_root, cfg, run_date=d))

    done: dict = {}
    partial = workdir / "partial.json"
    name = config.ranker.name
    if a.ranker_from:
        version, trained_on = copy_ranker(a.ranker_from, models, name)
        train = None
    else:
        train = phase("train-ranker", clock, memory, lambda: train_ranker.run(
            spark, job_args(train_ranker.TrainRankerArgs, lake_root, config, run_date=d)), partial, done)
        version, trained_on = train["summary"]["version"], a.users
    warmup = phase("score warm-up (score.rank=false)", clock, memory, lambda: scored(False), partial, done)
    retrieval = phase("score, retrieval only (score.rank=false)", clock, memory, lambda: scored(False), partial, done)
    ranked = phase("score, ranked (score.rank=true)", clock, memory, lambda: scored(True), partial, done)
    spark.stop()

    metrics = read_json(version_dir(models, name, version) / "metrics.json")
    users = ranked["summary"]["active_users"]
    generated = setup["generated"]
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "spark_master": "local[2]",
                    "driver_memory": a.driver_memory, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "note": "a shared 2-core machine: other jobs (tests, a backtest) ran beside this one, so every "
                            "figure is noisy; both sides of each ratio come from this same run and session"},
        "command": "WARMSTART_JARS_DIR=$PWD/.jars .venv/bin/python bench/ranker.py " + " ".join(sys.argv[1:]),
        "lake": {"users": a.users, "items": a.items, "days": a.days, "events": generated["events"],
                 "purchases": generated["events_by_type"].get("purchase"), "run_date": str(d),
                 "start_date": str(START), "transformer": f"untrained SeqRec {TRANSFORMER_VERSION} (dim 32, 1 layer, "
                                                          "max_seq_len 20, repeat head, no text)"},
        "config": {"k": a.k, **{f"ranker.{k}": getattr(config.ranker, k) for k in
                                ("training_nights", "every_days", "transformer_n", "neighbour_n", "popular_n",
                                 "max_depth", "max_rounds", "early_stopping_rounds")},
                   "spark.shuffle_partitions": config.spark.shuffle_partitions, "overrides": overrides},
        "setup": {k: v for k, v in setup.items() if k != "generated"},
        "ranker_version": version, "ranker_trained_on_users": trained_on, "feature_join": FEATURE_JOIN,
        "ranker_metrics": {k: v for k, v in metrics.items() if k != "importances"},
        "train_ranker": train, "score_warmup": warmup, "score_retrieval": retrieval, "score_ranked": ranked,
        "active_users": users, "users_ranked": ranked["summary"]["users_ranked"],
        "retrieval_users_per_s": users / retrieval["seconds"], "ranked_users_per_s": users / ranked["seconds"],
        "ratio_ranked_to_retrieval_per_user": ranked["seconds"] / retrieval["seconds"],
        "aim_met": ranked["seconds"] / retrieval["seconds"] <= 2.0,
        "train_candidates_per_user": _per_user(train["counts"]) if train else None,
        "score_candidates_per_user": round(ranked["summary"]["ranking_candidates"] / ranked["summary"]["users_ranked"], 1),
    }


def _per_user(counts: dict) -> float | None:
    return round(counts["candidate_rows"] / counts["candidate_users"], 1) if counts.get("candidate_users") else None


def _parts_table(parts: dict) -> list[str]:
    lines = ["| part | seconds | calls |", "|---|---:|---:|"]
    for path, v in parts.items():
        *parents, name = path.split(" > ")
        lines.append(f"| {'&nbsp;' * 4 * len(parents)}{name} | {v['seconds']:,.1f} | {v['calls']} |")
    return lines


def _worker_table(seconds: dict | None) -> list[str]:
    """The ranking workers' own seconds (the score summary's ranking_worker_seconds), when the run has them."""
    if not seconds:
        return []
    return ["Inside the Python workers that scored the users (ranking.rank_users; seconds summed over the tasks, "
            "of which Spark runs one per core at once):", "", "| part | worker seconds |", "|---|---:|",
            *(f"| {part} | {v:,.1f} |" for part, v in seconds.items()), f"| total | {sum(seconds.values()):,.1f} |", ""]


# How the ranked score attached the features: runs made before ranking.NightLookup say so in their rows.
FEATURE_JOIN = ("ranked inside the scoring workers from a broadcast night context; arrays joined into one reused "
                "block; inplace_predict")
EARLIER_JOIN = "Spark as-of join per 5,000-user chunk (before 5cb837d)"


def markdown(runs: list[dict]) -> str:
    lines = ["# Two-stage ranker: training and scoring cost beside retrieval", "",
             "Each row is one run of `bench/ranker.py` (one Spark session: lake set-up, train-ranker, a warm-up "
             "score, then score with `score.rank=false` and with `score.rank=true`, each timed once, K = "
             f"{runs[0]['config']['k']}). users/s = active users scored / the score job's wall time; ratio = ranked "
             "score time / retrieval-only score time on the same users in the same run (the aim: <= 2x).", "",
             "| users | items | events | ranker trained on (users) | candidates per user (train / score) "
             "| train-ranker s | train rows | train groups | score s, retrieval only | score s, ranked "
             "| users/s retrieval | users/s ranked | ranked / retrieval | aim <= 2x | feature join |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in runs:
        lake, tr, m = r["lake"], r["train_ranker"], r["ranker_metrics"]
        lines.append(
            f"| {lake['users']:,} | {lake['items']:,} | {lake['events']:,} | {r['ranker_trained_on_users']:,} "
            f"| {r['train_candidates_per_user'] or '–'} / {r['score_candidates_per_user']} "
            f"| {format(tr['seconds'], ',.0f') if tr else '– (copied)'} | {m.get('train_rows', 0):,} | {m.get('train_groups', 0):,} "
            f"| {r['score_retrieval']['seconds']:,.1f} | {r['score_ranked']['seconds']:,.1f} "
            f"| {r['retrieval_users_per_s']:,.0f} | {r['ranked_users_per_s']:,.0f} "
            f"| **{r['ratio_ranked_to_retrieval_per_user']:.2f}x** | {'met' if r['aim_met'] else 'not met'} "
            f"| {r.get('feature_join', EARLIER_JOIN)} |")
    for r in runs:
        lake, tr, mach = r["lake"], r["train_ranker"], r["machine"]
        ret, rk = r["score_retrieval"], r["score_ranked"]
        setup = r["setup"]
        lines += ["", f"## {lake['users']:,} users (ranker trained on {r['ranker_trained_on_users']:,})", "",
                  f"{r['date']}; {mach['cpus']} CPUs, Spark {mach['spark_master']}, driver {mach['driver_memory']}; "
                  f"load average before {mach['loadavg_before'][0]:.1f}, after {mach['loadavg_after'][0]:.1f} "
                  f"({mach['note']}).", "",
                  f"Lake: features.synthetic.generate, {lake['users']:,} users, {lake['items']:,} items, "
                  f"{lake['days']} days from {lake['start_date']}, {lake['events']:,} events ({lake['purchases']:,} "
                  f"purchases); D = {lake['run_date']}. Transformer: {lake['transformer']}, registered before the "
                  f"training nights. Set-up (not timed below{', made by an earlier run' if setup.get('reused') else ''}): "
                  f"generate {setup.get('generate_s')} s, ingest {setup.get('ingest_s')} s, features for D "
                  f"{setup.get('features_for_D_s')} s.", "",
                  f"Scored {r['active_users']:,} active users in each score run, {r['users_ranked']:,} of them re-ranked "
                  f"(users with a purchase before the cut-off; the others keep the transformer's or the popular list). "
                  f"The ranked run retrieves the transformer's top {r['config']['ranker.transformer_n']} "
                  f"(ranker.transformer_n) instead of {r['config']['k']}. Warm: before the two timed score runs the "
                  f"session had run {'train-ranker (three scorer passes) and ' if tr else ''}a warm-up score "
                  f"(retrieval only, {r['score_warmup']['seconds']:,.1f} s).", "",
                  f"Ranker {r['ranker_version']}: {r['ranker_metrics'].get('rounds')} rounds, "
                  f"{r['ranker_metrics'].get('features')} features, validation NDCG@10 within candidates "
                  f"{r['ranker_metrics'].get('validation_ndcg@10_in_candidates')}.", "",
                  "Peak resident memory of the process tree (driver Python + JVM + Python workers): "
                  + (f"train-ranker {tr['peak_rss_mb']:,} MB, " if tr else "")
                  + f"score retrieval only {ret['peak_rss_mb']:,} MB, ranked {rk['peak_rss_mb']:,} MB.", "",
                  "Where the time goes (functions the jobs call, wrapped by the bench; an indented part ran inside "
                  "the part it is under, so it is part of that one's time):", ""]
        if tr:
            lines += [f"train-ranker ({tr['seconds']:,.1f} s):", "", *_parts_table(tr["parts"]), ""]
        lines += [f"score, retrieval only ({ret['seconds']:,.1f} s):", "", *_parts_table(ret["parts"]), "",
                  f"score, ranked ({rk['seconds']:,.1f} s):", "", *_parts_table(rk["parts"]), "",
                  *_worker_table(rk["summary"].get("ranking_worker_seconds")),
                  f"Command: `{r['command']}`. Bench wall time {r['wall_s']:,} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
