"""Ingest throughput: events/s of `warmstart ingest` (parse, validate, de-duplicate, MERGE into
bronze/events) on generated Parquet events, side by side in the same run with two bounds on the same
files and the same Spark session:

- spark copy: plain Spark Parquet read + write of the same files (no validation, no hashing, no MERGE):
  what the engine moves without ingest's work, the physical bound for this machine and configuration;
- duckdb copy: DuckDB reading and writing the same files (a single-process peer engine).

    .venv/bin/python bench/ingest.py                     # 10M events (the default)
    .venv/bin/python bench/ingest.py --events 1000000    # smaller, on a busy machine

Writes bench/results/ingest.md and bench/results/ingest.json.
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

from features import synthetic  # noqa: E402
from jobs import ingest, runtime  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--master", default="local[2]", help="Spark master (this machine has 2 cores)")
    p.add_argument("--driver-memory", default="2g")
    p.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed after)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = p.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-ingest-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        return _run(a, work)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


def _run(a, work: Path) -> int:
    t0 = time.perf_counter()
    synthetic.generate(work / "gen", users=a.users, items=a.items, days=a.days, start_date="2024-01-01",
                       seed=0, events=a.events)
    gen_s = time.perf_counter() - t0
    files = sorted(str(p) for p in (work / "gen" / "events").glob("*.parquet"))
    input_bytes = sum(Path(f).stat().st_size for f in files)
    timings, summary = _timed_paths(a, work, files)
    assert summary["events_inserted"] == a.events, summary

    n = a.events
    rows = [{"path": path, "seconds": round(seconds, 1), "events_per_second": round(n / seconds)}
            for path, seconds in timings.items()]
    ingest_s, spark_copy_s, duck_s = timings.values()
    result = {
        "events": n, "input_files": len(files), "input_mb": round(input_bytes / 2**20, 1),
        "generate_seconds": round(gen_s, 1), "generate_events_per_second": round(n / gen_s),
        "spark_master": a.master, "driver_memory": a.driver_memory,
        "ingest_vs_spark_copy": round(ingest_s / spark_copy_s, 2),
        "ingest_vs_duckdb_copy": round(ingest_s / duck_s, 2),
        "rows": rows, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, load average "
                                 f"{os.getloadavg()[0]:.1f} at the end",
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "ingest_summary": {k: summary[k] for k in ("records_read", "events_inserted", "duplicates", "quarantined")},
    }
    _write_results(Path(a.out), a, result)
    return 0


def _timed_paths(a, work: Path, files: list[str]) -> tuple[dict[str, float], dict]:
    """Seconds of warmstart ingest and of the two plain copies of the same files (the bound and the
    peer), and the ingest summary."""
    import duckdb

    cfg = runtime.load_config(overrides={"spark.master": a.master, "spark.driver_memory": a.driver_memory})
    spark = runtime.spark_session(cfg, app_name="bench-ingest")
    spark.range(1).count()     # JVM warm-up outside the timings

    t0 = time.perf_counter()
    spark.read.parquet(*files).write.mode("overwrite").parquet(str(work / "spark_copy"))
    spark_copy_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.execute(f"COPY (SELECT * FROM read_parquet({files!r})) TO '{work / 'duck_copy.parquet'}' (FORMAT parquet)")
    duck_s = time.perf_counter() - t0

    end = dt.date(2024, 1, 1) + dt.timedelta(days=a.days - 1)
    args = runtime.job_args("ingest", str(work / "lake"), config=cfg, run_date=end)
    iargs = ingest.IngestArgs(job="ingest", lake=args.lake, config=cfg, run_id=args.run_id, run_date=end,
                              events=(str(work / "gen" / "events"),), format="parquet")
    t0 = time.perf_counter()
    summary = ingest.run(spark, iargs)
    ingest_s = time.perf_counter() - t0
    spark.stop()
    return {"warmstart ingest (parse, validate, sha256 id, dedupe, MERGE into Delta)": ingest_s,
            "spark copy: Parquet read + write, same session (bound)": spark_copy_s,
            "duckdb copy: Parquet read + write, 2 threads (peer)": duck_s}, summary


def _write_results(out: Path, a, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(result, indent=2))
    rows = result["rows"]
    lines = [
        "# Ingest throughput", "",
        f"{result['events']:,} generated events ({result['input_files']} Parquet files, {result['input_mb']} MB), "
        f"Spark `{a.master}`, driver {a.driver_memory}; {result['machine']}; {result['measured_at']}.", "",
        "| path | seconds | events/s |", "|---|---:|---:|",
        *[f"| {r['path']} | {r['seconds']} | {r['events_per_second']:,} |" for r in rows], "",
        f"Ingest takes {result['ingest_vs_spark_copy']}x the time of a plain Spark copy of the same files and "
        f"{result['ingest_vs_duckdb_copy']}x DuckDB's copy. Generating the events took {result['generate_seconds']} s "
        f"({result['generate_events_per_second']:,} events/s).", "",
    ]
    (out / "ingest.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
