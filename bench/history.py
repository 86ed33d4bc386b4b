"""Does the nightly feature build cost grow with the new day's data or with the history? One run, one
generated event stream: the same customers, items and events per day, loaded as three lakes holding the
last 90, 180 and 360 days of it. On each: a full build as of D - 1 (the night before), then the nightly
incremental build for D (one new day), twice (the faster counts: the machine is shared). Aim: the
360-day nightly at most 1.15x the 90-day one (cost follows the new data, not the history).

    .venv/bin/python bench/history.py                          # 15,000 events a day, 20,000 customers
    .venv/bin/python bench/history.py --events-per-day 5000 --histories 30,60,120   # a quick look

Writes bench/results/history.md and bench/results/history.json.
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
AIM = 1.15

from bench.features import load_bronze, stop_jvm, timed_build  # noqa: E402


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events-per-day", type=int, default=15_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--histories", default="90,180,360", help="days of history per lake, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--driver-memory", default="3g")
    p.add_argument("--workdir", default=None, help="default: a temporary folder, removed at the end")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def one_history(spark, config, work: Path, days: int, last: dt.date) -> dict:
    """The lake with the last ``days`` days up to ``last``: load, full build for the night before, nightly x2."""
    lake = str(work / f"lake-{days}")
    t0 = time.perf_counter()
    events = load_bronze(spark, lake, work / "generated", last, first_day=last - dt.timedelta(days=days - 1))
    load_s = time.perf_counter() - t0
    base_s, _ = timed_build(spark, lake, config, last - dt.timedelta(days=1), full_refresh=True)
    runs = [timed_build(spark, lake, config, last, full_refresh=False) for _ in range(2)]
    nightly_s = min(r[0] for r in runs)
    summary = runs[0][1]
    assert summary["mode"] == "incremental", summary["mode"]    # the night's build, not a full one
    return {"days": days, "events": events, "load_bronze_s": round(load_s, 1), "full_build_previous_night_s":
            round(base_s, 1), "nightly_runs_s": [round(r[0], 1) for r in runs], "nightly_s": round(nightly_s, 1),
            "rows": {k: v for k, v in summary.items() if k.startswith("rows_")},
            "daily_partitions_rebuilt": summary["daily_partitions_rebuilt"]}


def main(argv: list[str] | None = None) -> int:
    from features import synthetic
    from jobs import runtime

    ns = _parse_args(argv)
    histories = sorted(int(h) for h in ns.histories.split(","))
    days = histories[-1]
    start = dt.date(2024, 1, 1)
    last = start + dt.timedelta(days=days - 1)
    work = Path(ns.workdir or tempfile.mkdtemp(prefix="bench-history-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    config = runtime.load_config(overrides={"spark.master": f"local[{ns.threads}]", "spark.driver_memory": ns.driver_memory,
                                            "spark.shuffle_partitions": max(4, ns.threads * 2),
                                            "spark.delta_snapshot_partitions": ns.threads,
                                            "spark.progress_every_s": 0})
    t0 = time.perf_counter()
    synthetic.generate(str(work / "generated"), users=ns.users, items=ns.items, days=days, start_date=start,
                       seed=ns.seed, events=ns.events_per_day * days)
    generate_s = time.perf_counter() - t0
    spark = runtime.spark_session(config, app_name="bench-history")
    rows = [one_history(spark, config, work, h, last) for h in histories]
    stop_jvm(spark)
    base = rows[0]["nightly_s"]
    for r in rows:
        r["nightly_over_shortest"] = round(r["nightly_s"] / base, 3)
    result = {"users": ns.users, "items": ns.items, "events_per_day": ns.events_per_day, "as_of_date": last.isoformat(),
              "threads": ns.threads, "spark_driver_memory": ns.driver_memory, "generate_s": round(generate_s, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, load average at end "
                         f"{os.getloadavg()[0]:.1f}",
              "rows": rows, "aim": f"nightly on {histories[-1]} days <= {AIM}x nightly on {histories[0]} days",
              "ratio": rows[-1]["nightly_over_shortest"], "meets_aim": rows[-1]["nightly_over_shortest"] <= AIM}
    write_results(result)
    if not ns.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


def write_results(r: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "history.json").write_text(json.dumps(r, indent=2) + "\n")
    lines = [f"| {x['days']} | {x['events']:,} | {x['load_bronze_s']} | {x['full_build_previous_night_s']} | "
             f"{' / '.join(map(str, x['nightly_runs_s']))} | **{x['nightly_s']}** | {x['nightly_over_shortest']} | "
             f"{x['rows'].get('rows_user_features', 0):,} |" for x in r["rows"]]
    first, final = r["rows"][0], r["rows"][-1]
    spread = round(max(max(x["nightly_runs_s"]) - min(x["nightly_runs_s"]) for x in r["rows"]), 1)
    md = f"""# History scaling of the nightly feature build (bench/history.py)

One generated stream (features.synthetic.generate: {r['users']:,} customers, {r['items']:,} items, {r['events_per_day']:,}
events a day) loaded as lakes holding its last {', '.join(str(x['days']) for x in r['rows'])} days up to
{r['as_of_date']}. Per lake: a full build for the night before, then the nightly incremental build for
{r['as_of_date']} twice (the faster counts). Spark `local[{r['threads']}]` (driver {r['spark_driver_memory']}) with
Delta. Machine: {r['machine']}.

| history (days) | events in the lake | load bronze (s) | full build, night before (s) | nightly runs (s) | nightly (s) | x shortest | user_features rows |
|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Aim: {r['aim']}. Measured: {final['nightly_s']} s against {first['nightly_s']} s, **{r['ratio']}x**
({'meets' if r['meets_aim'] else 'misses'} the aim). Two runs of one nightly differ by up to {spread} s on this shared
machine, so differences between the histories smaller than that are noise. The full build grows with the history
({first['full_build_previous_night_s']} s to {final['full_build_previous_night_s']} s); the nightly reads the
rolling state of the night before and the new day only (docs/features.md).
"""
    (RESULTS / "history.md").write_text(md)


if __name__ == "__main__":
    sys.exit(main())
