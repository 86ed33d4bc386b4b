"""Driver start-up: wall time of spark-submit runs with and without the JVM class-data-sharing archive
(`make cds`, infra/spark/build_cds_archive.py), side by side in one run on the same small lake,
alternating which goes first in each round:

- empty session: a script that only starts Spark with Delta and counts one row (the start itself);
- gate: `jobs/validate.py --table bronze/items` (a short job: what the DAG runs five times a night);
- features: `jobs/build_features.py` on the same date again (idempotent: the same partitions replaced).

    .venv/bin/python bench/startup.py              # 3 rounds
    .venv/bin/python bench/startup.py --rounds 5

Writes bench/results/startup.md and bench/results/startup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from features import synthetic  # noqa: E402
from jobs import jvm, runtime  # noqa: E402

RUN_DATE = "2024-01-10"
EMPTY_SESSION = """
from jobs import runtime
spark = runtime.spark_session(runtime.load_config())
assert spark.range(1).count() == 1
"""


def spark_submit(args: list[str], java_options: str, jars: str, env: dict[str, str]) -> float:
    cmd = [str(Path(sys.executable).with_name("spark-submit")), "--master", "local[2]", "--driver-memory", "1g",
           "--jars", jars, "--conf", f"spark.driver.extraJavaOptions={java_options}", *args]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench/startup.py: {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = p.parse_args()
    cfg = runtime.load_config()
    cds, archive = jvm.cds_java_options(cfg), jvm.cds_archive(cfg)
    if not cds:
        raise SystemExit("bench/startup.py: no CDS archive: run `make cds`")
    jars = ",".join(jvm.jars(cfg))
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "GX_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO),
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    try:
        synthetic.generate(work / "drop", users=200, items=100, days=10, start_date="2024-01-01", seed=2)
        lake = str(work / "lake")
        common = ["--lake", lake, "--run-date", RUN_DATE, "spark.shuffle_partitions=2", f"paths.reports={work}/reports"]
        # The lake, made once (not timed), the same way.
        for job, extra in (("ingest", ["--events", str(work / "drop" / "events"), "--items", str(work / "drop" / "items")]),
                           ("build_features", [])):
            spark_submit([f"jobs/{job}.py", *extra, *common], "", jars, env)
        (work / "empty.py").write_text(EMPTY_SESSION)
        jobs = {"empty session": [str(work / "empty.py")],
                "gate (validate bronze/items)": ["jobs/validate.py", "--table", "bronze/items", *common],
                "features (build_features, same date)": ["jobs/build_features.py", *common]}
        times: dict[str, dict[str, list[float]]] = {j: {"without": [], "with": []} for j in jobs}
        for r in range(a.rounds):
            for name, args in jobs.items():
                order = [("without", ""), ("with", cds)]
                for label, options in (order if r % 2 == 0 else order[::-1]):
                    times[name][label].append(spark_submit(args, options, jars, env))
                    print(f"round {r + 1} {name} {label}: {times[name][label][-1]:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write(a, times, archive)
    return 0


def write(a, times: dict[str, dict[str, list[float]]], archive: Path) -> None:
    rows = []
    for name, t in times.items():
        without, with_ = statistics.median(t["without"]), statistics.median(t["with"])
        rows.append({"job": name, "without_s": round(without, 2), "with_s": round(with_, 2),
                     "saved_s": round(without - with_, 2), "ratio": round(with_ / without, 3),
                     "without_all": [round(x, 2) for x in t["without"]], "with_all": [round(x, 2) for x in t["with"]]})
    load = os.getloadavg()[0]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Driver start-up benchmark (bench/startup.py)", "",
             f"spark-submit `--master local[2]` with the Delta jars, on a small generated lake (200 users, 10 days), "
             f"{a.rounds} rounds, alternating which variant runs first. With: `-XX:SharedArchiveFile` = "
             f"`{archive.name}` ({archive.stat().st_size / 2**20:.0f} MiB). {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{platform.machine()}, {os.cpu_count()} cores visible, load average at end {load:.1f}.", "",
             "| spark-submit of | without archive (s, median) | with archive (s, median) | saved (s) | with / without |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['job']} | {r['without_s']:.1f} | {r['with_s']:.1f} | {r['saved_s']:.1f} | {r['ratio']:.2f} |"
              for r in rows]
    lines += ["", "Every run: " + "; ".join(f"{r['job']}: without {r['without_all']}, with {r['with_all']}" for r in rows) + "."]
    (out / "startup.md").write_text("\n".join(lines) + "\n")
    (out / "startup.json").write_text(json.dumps({"rounds": a.rounds, "rows": rows, "load_average": load}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
