"""Scoring throughput, side by side in one run: users/s for exact top-100 by inner product over
catalogues of 10K, 50K and 200K items (dim 64), for
- ``warmstart``: scoring.topk.topk, the tiled core every executor of ``jobs/score.py`` runs (here with
  --threads threads over user blocks);
- ``faiss``: faiss-cpu IndexFlatIP exact search on the same vectors;
- ``spark_als``: Spark ALS ``recommendForAllUsers(100)`` at rank 64 (trained with maxIter=1 on synthetic
  ratings; only recommendForAllUsers is timed, on fewer users: --als-users, users/s stated as measured);
- ``bound``: 2 * items * dim FLOPs per user over the dense float32 matmul rate measured here (torch sgemm
  of a 2048 x 2048 square, same threads; measured before and after the sizes, the higher rate kept).
Each of warmstart, warmstart + repeat head and faiss is timed as the best of ``REPEAT`` calls (a
process's first call is slower than the next ones, for either; docs/scoring.md, Benchmark).
Plus the reader: load time, peak RSS and lookup latency for --reader-users users x 100 candidates (a
Delta table written with delta-rs), scoring.reader.load_run beside a plain whole-partition pyarrow read,
each load in a fresh process; --reader-only runs just that part and replaces only its section.

    .venv/bin/python bench/score.py [--users 100000] [--items 10000,50000,200000] [--threads 2]
                                    [--als-users 2000] [--reader-users 1000000] [--skip-als] [--reader-only]

Writes bench/results/score.md and score.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
D, K = 64, 100
RANKER_N = 200        # with the ranker on, the transformer proposes this many (config ranker.transformer_n)
REPEAT = 3            # every timed call is the best of this many: the machine's speed moves between runs
READER_REPEAT = 3     # fresh-process loads per reader path


def timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def sgemm_rate(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(2048, 2048)
    a @ a
    seconds, _ = timed(lambda: a @ a, repeat=5)
    return 2 * 2048 ** 3 / seconds


def bench_ours(users, items, threads, k=K):
    import torch

    from scoring.topk import topk

    torch.set_num_threads(threads)
    topk(users[:64], items, k)              # loads the compiled selection (numba's on-disk cache) once
    return timed(lambda: topk(users, items, k, threads=threads), repeat=REPEAT)


def bench_ours_with_repeat(users, items, threads, past: int = 50):
    """The scoring job's path for a model with a repeat head: ``past`` distinct boosted items per user
    (the most a 50-event history can hold), so the dot-product top is K + past, then re-scored."""
    from scoring.topk import topk_with_boosts

    n, m = users.shape[0], items.shape[0]
    rng = np.random.default_rng(1)
    stride = max(1, m // past - 1)
    boosted = (rng.integers(0, m, n)[:, None] + np.arange(past)[None, :] * stride) % m   # distinct per user
    values = rng.normal(0.0, 4.0, (n, past)).astype(np.float32)                          # dot products ~ N(0, 64)
    indptr = np.arange(n + 1, dtype=np.int64) * past
    return timed(lambda: topk_with_boosts(users, items, K, indptr, boosted.reshape(-1), values.reshape(-1),
                                          threads=threads), repeat=REPEAT)


def bench_faiss(users, items, threads, k=K):
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    return timed(lambda: index.search(users, k), repeat=REPEAT)


def bench_als(n_users, n_items, threads, tmp):
    """Spark ALS recommendForAllUsers(100), rank 64; returns (seconds, users)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(f"local[{threads}]").config("spark.driver.memory", "2g")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", str(threads))
             .config("spark.local.dir", tmp).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    rng = np.random.default_rng(0)
    # Every item and every user rated at least once, a few more ratings per user.
    users = np.concatenate([rng.integers(0, n_users, n_items), np.repeat(np.arange(n_users), 5)])
    items = np.concatenate([np.arange(n_items), rng.integers(0, n_items, n_users * 5)])
    ratings = spark.createDataFrame([(int(u), int(i), 1.0) for u, i in zip(users, items)], "user int, item int, rating float")
    model = ALS(rank=D, maxIter=1, regParam=0.1, userCol="user", itemCol="item", ratingCol="rating",
                implicitPrefs=True, seed=0).fit(ratings)
    model.userFactors.cache().count()
    model.itemFactors.cache().count()
    seconds, _ = timed(lambda: model.recommendForAllUsers(K).write.format("noop").mode("overwrite").save())
    spark.stop()
    return seconds, n_users


def write_reader_table(n_users, tmp) -> int:
    """n_users x 100 candidates written with delta-rs (dictionary-encoded Parquet, as Spark writes; its row
    groups come out of order and a user's rows span row groups); returns the table version."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    path = f"{tmp}/lake/candidates/user_candidates"
    run_date = dt.date(2024, 1, 1)
    rng = np.random.default_rng(0)
    item_vocab = pa.array([f"item{i:06d}" for i in range(50_000)])
    chunk = 100_000
    for start in range(0, n_users, chunk):
        stop = min(n_users, start + chunk)
        n = (stop - start) * K
        users = pa.array(np.repeat([f"user{u:08d}" for u in range(start, stop)], K))
        table = pa.table({
            "user_id": users,
            "rank": pa.array(np.tile(np.arange(1, K + 1, dtype=np.int32), stop - start)),
            "item_id": item_vocab.take(pa.array(rng.integers(0, 50_000, n))),
            "score": pa.array(np.sort(rng.random(n).astype(np.float32).reshape(-1, K), axis=1)[:, ::-1].ravel()),
            "strategy": pa.array(["model"] * n),
            "model_version": pa.array(["v1"] * n),
            "generated_at": pa.array([dt.datetime(2024, 1, 2)] * n, pa.timestamp("us")),
            "run_date": pa.array([run_date] * n, pa.date32()),
        })
        write_deltalake(path, table, mode="append", partition_by=["run_date"])
        del table, users
    return DeltaTable(path).version()


def bench_reader(n_users, tmp, repeat=READER_REPEAT):
    """Side by side, each load in a fresh process that does nothing else (so its peak RSS is the load's
    alone), ``repeat`` times each, alternating: scoring.reader.load_run, and as the reference a plain
    whole-partition read with delta-rs + pyarrow (``to_pyarrow_table``, no lookup structure built)."""
    import subprocess

    version = write_reader_table(n_users, tmp)
    runs = {"load_run": [], "read_table": []}
    for _ in range(repeat):
        for mode in runs:
            out = subprocess.run([sys.executable, __file__, "--reader-load", f"{tmp}/lake", str(version), str(n_users),
                                  mode], capture_output=True, text=True, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps({mode: runs[mode][-1]}), flush=True)
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "loadavg": os.getloadavg(),
              "repeat": repeat, "aim_load_s": 10.0, "aim_peak_rss_mb": 1536.0}
    for mode, got in runs.items():
        result[mode] = {**{k: v for k, v in got[0].items() if not k.endswith(("_s", "_mb"))},
                        "load_s": min(g["load_s"] for g in got), "load_s_all": [g["load_s"] for g in got],
                        **({"cpu_s": min(g["cpu_s"] for g in got)} if "cpu_s" in got[0] else {}),
                        "peak_rss_mb": max(g["peak_rss_mb"] for g in got),
                        "peak_growth_mb": max(g["peak_growth_mb"] for g in got),
                        "baseline_rss_mb": got[0]["baseline_rss_mb"], "rss_after_mb": got[0]["rss_after_mb"]}
    result["load_run"]["resident_mb"] = runs["load_run"][0]["resident_mb"]
    return result


def _rss_mb(key: str) -> float:
    """VmRSS / VmHWM of this process from /proc. Not getrusage's ru_maxrss: Linux carries that across
    fork + exec, so a child of a big parent starts from the parent's peak and its growth reads low."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reader_load(lake: str, version: int, n_users: int, mode: str) -> dict:
    """One load in this (fresh) process: time, peak RSS over the RSS after imports, and for load_run the
    latency of single lookups (p50 / p99 over 100,000 random known users, each timed on its own)."""
    from deltalake import DeltaTable

    from scoring.reader import USER_CANDIDATES, load_run

    run_date = dt.date(2024, 1, 1)
    baseline = _rss_mb("VmRSS")
    if mode == "read_table":
        seconds, table = timed(lambda: DeltaTable(f"{lake}/{USER_CANDIDATES}", version=version).to_pyarrow_table(
            partitions=[("run_date", "=", run_date.isoformat())]))
        out = {"users": None, "rows": table.num_rows}
    else:
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        seconds, sets = timed(lambda: load_run(lake, run_date, version))
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        out = {"cpu_s": round(cpu.ru_utime - cpu_before.ru_utime + cpu.ru_stime - cpu_before.ru_stime, 2),
               "users": len(sets), "rows": sets.rows, "resident_mb": round(sets.nbytes() / 2 ** 20, 1)}
    peak, after = _rss_mb("VmHWM"), _rss_mb("VmRSS")
    if mode == "load_run":
        rng = np.random.default_rng(1)
        lookups = [f"user{u:08d}" for u in rng.integers(0, n_users, 100_000)]
        latency = np.empty(len(lookups))
        for i, user in enumerate(lookups):
            start = time.perf_counter_ns()
            sets.items(user)
            latency[i] = time.perf_counter_ns() - start
        out.update(lookup_p50_us=round(float(np.percentile(latency, 50)) / 1e3, 2),
                   lookup_p99_us=round(float(np.percentile(latency, 99)) / 1e3, 2))
    return {**out, "load_s": round(seconds, 2), "baseline_rss_mb": round(baseline, 1), "peak_rss_mb": round(peak, 1),
            "peak_growth_mb": round(peak - baseline, 1), "rss_after_mb": round(after, 1)}


def set_bound(row: dict, rate: float) -> None:
    """The row's compute bound (2 * items * D FLOPs a user at ``rate`` FLOP/s) and warmstart's share of it."""
    row["bound_users_per_s"] = rate / (2 * row["items"] * D)
    row["share_of_bound"] = row["warmstart_users_per_s"] / row["bound_users_per_s"]


def bench_size(users, items, args, rate: float, tmp: str) -> dict:
    """One catalogue size: warmstart (top-100, with the repeat head, top-200), faiss (top-100, top-200) and
    Spark ALS on the same vectors; the row of the results table."""
    m = items.shape[0]
    ours_s, ours = bench_ours(users, items, args.threads)
    repeat_s, _ = bench_ours_with_repeat(users, items, args.threads)
    faiss_s, (_, faiss_ids) = bench_faiss(users, items, args.threads)
    ranker_s, _ = bench_ours(users, items, args.threads, RANKER_N)       # the ranker's retrieval depth
    faiss_ranker_s, _ = bench_faiss(users, items, args.threads, RANKER_N)
    agree = float(np.mean([len(set(ours.indices[i]) & set(faiss_ids[i])) / K for i in range(0, args.users, 97)]))
    row = {"items": m, "users": args.users, "warmstart_users_per_s": args.users / ours_s,
           "warmstart_repeat_users_per_s": args.users / repeat_s,
           "faiss_users_per_s": args.users / faiss_s, "topk_agreement_with_faiss": round(agree, 4),
           f"warmstart_top{RANKER_N}_users_per_s": args.users / ranker_s,
           f"faiss_top{RANKER_N}_users_per_s": args.users / faiss_ranker_s}
    if not args.skip_als:
        als_s, als_n = bench_als(args.als_users, m, args.threads, tmp)
        row["als_users_per_s"] = als_n / als_s
        row["als_users"] = als_n
    set_bound(row, rate)                  # the first rate for the progress line; final in main
    row["vs_faiss"] = row["warmstart_users_per_s"] / row["faiss_users_per_s"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", default="10000,50000,200000")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--als-users", type=int, default=2000)
    parser.add_argument("--skip-als", action="store_true")
    parser.add_argument("--reader-users", type=int, default=1_000_000)
    parser.add_argument("--reader-only", action="store_true",
                        help="run only the reader part; its section of score.json/md is replaced, the rest kept")
    parser.add_argument("--reader-load", nargs=4, metavar=("LAKE", "VERSION", "USERS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader_load:
        print(json.dumps(reader_load(args.reader_load[0], *map(int, args.reader_load[1:3]), args.reader_load[3])))
        return 0
    if args.reader_only:
        return reader_only(args.reader_users)

    rng = np.random.default_rng(0)
    users = rng.standard_normal((args.users, D), dtype=np.float32)
    started = time.time()
    load_before = os.getloadavg()
    rate = sgemm_rate(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:     # ALS spill, the reader's table (~700 MB)
        for m in [int(x) for x in args.items.split(",")]:
            rows.append(bench_size(users, rng.standard_normal((m, D), dtype=np.float32), args, rate, tmp))
            print(json.dumps(rows[-1]), flush=True)
        rate_after = sgemm_rate(args.threads)
        rates, rate = (rate, rate_after), max(rate, rate_after)   # the bound uses the best rate this machine showed
        for row in rows:
            set_bound(row, rate)
        reader_result = bench_reader(args.reader_users, tmp) if args.reader_users else None
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "note": "figures are noisy when the load average is near or above the CPU count"},
        "sgemm_gflops": rate / 1e9, "sgemm_gflops_before_after": [round(x / 1e9, 1) for x in rates], "dim": D, "k": K, "rows": rows, "reader": reader_result,
        "wall_s": round(time.time() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "score.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "score.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def reader_only(n_users: int) -> int:
    """The reader part alone, written into the existing score.json / score.md beside the scoring rows."""
    path = RESULTS / "score.json"
    if not path.exists():
        print(f"{path} does not exist: run the whole bench once first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:      # the reader's table (~700 MB)
        reader = bench_reader(n_users, tmp)
    result = {**json.loads(path.read_text()), "reader": reader}
    path.write_text(json.dumps(result, indent=2))
    (RESULTS / "score.md").write_text(markdown(result))
    print("\n".join(reader_markdown(reader)))
    return 0


def markdown(r) -> str:
    lines = [f"# Scoring throughput (top-{r['k']}, dim {r['dim']})", "",
             f"{r['date']}, {r['machine']['cpus']} CPUs, {r['machine']['threads']} threads; load average before "
             f"{r['machine']['loadavg_before'][0]:.1f}, after {r['machine']['loadavg_after'][0]:.1f} "
             f"({r['machine']['note']}). Dense float32 matmul rate measured: {r['sgemm_gflops']:.1f} GFLOP/s (the higher of "
             f"{' and '.join(f'{x:.1f}' for x in r['sgemm_gflops_before_after'])}, before and after the sizes); "
             f"every users/s figure but ALS's is the best of {REPEAT} calls.", "",
             "| items | users | warmstart users/s | warmstart + repeat head users/s | faiss IndexFlatIP users/s "
             "| Spark ALS users/s | compute bound users/s | warmstart / bound | warmstart / faiss "
             "| top-k agreement with faiss |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        als = f"{row['als_users_per_s']:,.0f} ({row['als_users']:,} users)" if "als_users_per_s" in row else "–"
        repeat = f"{row['warmstart_repeat_users_per_s']:,.0f}" if "warmstart_repeat_users_per_s" in row else "–"
        lines.append(f"| {row['items']:,} | {row['users']:,} | {row['warmstart_users_per_s']:,.0f} | {repeat} | "
                     f"{row['faiss_users_per_s']:,.0f} | {als} | {row['bound_users_per_s']:,.0f} | "
                     f"{row['share_of_bound']:.0%} | {row['vs_faiss']:.2f}x | {row['topk_agreement_with_faiss']:.4f} |")
    deep = [row for row in r["rows"] if f"warmstart_top{RANKER_N}_users_per_s" in row]
    if deep:
        lines += ["", f"With the ranker on, the transformer's retrieval takes the top {RANKER_N} "
                      "(`ranker.transformer_n`); the same users and items, same run:", "",
                  f"| items | warmstart top-{RANKER_N} users/s | faiss top-{RANKER_N} users/s | warmstart / faiss "
                  f"| top-{RANKER_N} / top-{r['k']} (warmstart) |", "|---:|---:|---:|---:|---:|"]
        for row in deep:
            ours, theirs = row[f"warmstart_top{RANKER_N}_users_per_s"], row[f"faiss_top{RANKER_N}_users_per_s"]
            lines.append(f"| {row['items']:,} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x | "
                         f"{ours / row['warmstart_users_per_s']:.2f} |")
    if r.get("reader"):
        lines += ["", *reader_markdown(r["reader"])]
    lines += ["", "warmstart + repeat head: the scoring job's path for a model with a repeat head "
                  "(`topk_with_boosts`: 50 boosted past items per user, so the dot-product top-150 is taken, then "
                  "the past items are re-scored and merged; exact)."]
    lines += ["", f"Bench wall time {r['wall_s']} s."]
    return "\n".join(lines) + "\n"


def reader_markdown(rd) -> list[str]:
    """The reader's section: both paths side by side, against the aims."""
    new, ref = rd["load_run"], rd["read_table"]
    verdict = {True: "met", False: "**not met**"}
    cpu = f"; CPU {new['cpu_s']} s" if "cpu_s" in new else ""
    return [f"## Reader: {new['users']:,} users x 100 = {new['rows']:,} candidates", "",
            f"{rd['date']}, load average {rd['loadavg'][0]:.1f} at the end. The table is written with delta-rs (row "
            f"groups out of order, users' rows spanning row groups). Each load runs in a fresh process that does "
            f"nothing else, {rd['repeat']} times per path, alternating; time is the best run (all runs listed), "
            f"peak RSS the highest (VmHWM), growth is over the process's RSS after its imports.", "",
            "| path | load s, best (all) | peak RSS MB | peak growth MB | RSS after MB | lookup p50 / p99 µs |",
            "|---|---:|---:|---:|---:|---:|",
            f"| `scoring.reader.load_run` (CSR lookup, {new['resident_mb']} MB by `nbytes()`) | {new['load_s']} "
            f"({', '.join(map(str, new['load_s_all']))}{cpu}) | {new['peak_rss_mb']:,.0f} | {new['peak_growth_mb']:,.0f} | "
            f"{new['rss_after_mb']:,.0f} | {new['lookup_p50_us']} / {new['lookup_p99_us']} |",
            f"| reference: whole partition `to_pyarrow_table` (no lookup built) | {ref['load_s']} "
            f"({', '.join(map(str, ref['load_s_all']))}) | {ref['peak_rss_mb']:,.0f} | {ref['peak_growth_mb']:,.0f} | "
            f"{ref['rss_after_mb']:,.0f} | – |", "",
            f"Aims (issue #28): peak RSS <= {rd['aim_peak_rss_mb'] / 1024:.1f} GB "
            f"{verdict[new['peak_rss_mb'] <= rd['aim_peak_rss_mb']]}; load <= {rd['aim_load_s']:.0f} s "
            f"{verdict[new['load_s'] <= rd['aim_load_s']]} in this run (wall time; it scales with the load average "
            f"on this 2-CPU machine). A lookup is `items(user)` for a random known user, timed one call at a time "
            f"(the timer's own ~0.1 µs included), 100,000 calls in the first load_run process."]


if __name__ == "__main__":
    sys.exit(main())
