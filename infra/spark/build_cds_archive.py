"""Build the JVM class-data-sharing (CDS) archive that lets a warmstart Spark driver start faster.

    python infra/spark/build_cds_archive.py            # -> .jars/spark-cds.jsa (`make cds`, part of `make setup`)
    python infra/spark/build_cds_archive.py --out PATH

A fresh driver JVM loads and verifies 17,000 classes one by one before it can count one row of a Spark
session with Delta; with the archive, 11,700 of them (Spark's, Scala's and their libraries') are mapped
from this one file instead, and each spark-submit starts 3-5 s sooner (docs/operations.md, measured by
bench/startup.py). Every short job pays that start: the Airflow DAG runs ten spark-submits a night.

How: a child driver JVM started with ``-XX:ArchiveClassesAtExit`` runs two real jobs on a tiny generated
drop (ingest, then a gate), and writes every class it loaded when it exits. The archive
fits this JVM build and this pyspark's classpath only; ``jobs.jvm.driver_java_options`` passes it to
local drivers and to the DAG's spark-submits. Another JVM ignores it with a warning on stderr, so a
stale archive costs the gain, never a run: rebuild it after changing Java or pyspark (`make cds`).
The archive is written beside its final name and renamed: never half a file.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_DATE = "2024-01-10"


def workload(work: Path, dump: Path) -> None:
    """In this process: the jobs in one driver JVM that writes ``dump`` at its exit."""
    sys.path.insert(0, str(REPO))
    from features.synthetic import generate
    from jobs import ingest, validate

    generate(work / "drop", users=40, items=80, days=10, start_date="2024-01-01", seed=1, bad_rate=0.02)
    common = ["--lake", str(work / "lake"), "--run-date", RUN_DATE,
              "spark.master=local[2]", "spark.driver_memory=1g", "spark.shuffle_partitions=2",
              "spark.cds_archive=off", "paths.reports=" + str(work / "reports"),
              "spark.conf=" + json.dumps({"spark.driver.extraJavaOptions": f"-XX:ArchiveClassesAtExit={dump}"})]
    steps = [(ingest, ["--events", str(work / "drop" / "events"), "--items", str(work / "drop" / "items")]),
             (validate, ["--table", "bronze/events"])]
    for job, args in steps:
        if job.main([*args, *common]) != 0:
            raise SystemExit(f"{job.__name__} failed while building the CDS archive")


def build(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="warmstart-cds-") as work:
            env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
                   "GX_ANALYTICS_ENABLED": "false", "WARMSTART_LOG_LEVEL": "WARNING"}
            done = subprocess.run([sys.executable, __file__, "--workload", work, "--dump", str(tmp)],
                                  cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0 or not tmp.is_file():
                raise SystemExit(f"build_cds_archive: the workload failed (exit {done.returncode}): "
                                 + (done.stderr.strip().splitlines() or ["no output"])[-1][:300])
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{out}: {out.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - started:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="default: where drivers look for it (jobs.jvm.cds_archive)")
    p.add_argument("--workload", type=Path, help=argparse.SUPPRESS)   # the child's side
    p.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.workload:
        workload(ns.workload, ns.dump)
    else:
        sys.path.insert(0, str(REPO))
        from jobs import jvm
        from jobs.config import load_config

        out = ns.out or jvm.cds_archive(load_config())
        if out is None:
            raise SystemExit("build_cds_archive: spark.cds_archive is off: give --out")
        build(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
