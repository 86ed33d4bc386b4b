"""Wall time of the next-week backtest over several nights, beside the nightly stages it repeats.

    python bench/backtest.py --lake ./lake --run-dates 2011-11-11 2011-11-18 2011-11-25 2011-12-02 [--seeds 0,1,2]
    python bench/backtest.py --summary reports/backtest/2011-11-11_2011-12-02/summary.json --log backtest.err

Runs ``warmstart backtest`` (or reads a run's summary JSON and its stderr log), and writes
``bench/results/backtest.md`` / ``.json``: the whole run's wall time, each night's (from the job's
"backtest night" log lines), and what each night did (features built or found, models trained or reused,
baselines tuned). The per-night figure includes training the night's model when the registry had none.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NIGHT_LINE = re.compile(r"^(\d\d:\d\d:\d\d) INFO warmstart\.backtest: backtest night (\d{4}-\d\d-\d\d)")
FEATURES_LINE = re.compile(r"no features as of (\d{4}-\d\d-\d\d)")


def run_backtest(lake: str, nights: list[str], seeds: str, log: Path) -> tuple[float, Path]:
    summary = log.with_suffix(".summary.json")
    cmd = [sys.executable, "-m", "jobs.cli", "backtest", "--lake", lake, "--run-dates", *nights, "--seeds", seeds,
           "--summary-json", str(summary)]
    started = time.perf_counter()
    with open(log, "w") as err:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        raise SystemExit(f"backtest failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - started, Path(json.loads(summary.read_text())["report"]).with_name("summary.json")


def night_seconds(log_text: str, end: str | None) -> dict[str, float]:
    """Seconds from each night's start line to the next one's (the last night's to ``end``, HH:MM:SS)."""
    starts = [(m.group(2), m.group(1)) for m in map(NIGHT_LINE.match, log_text.splitlines()) if m]
    stamps = [t for _, t in starts] + ([end] if end else [])

    def secs(a: str, b: str) -> float:
        delta = (dt.datetime.strptime(b, "%H:%M:%S") - dt.datetime.strptime(a, "%H:%M:%S")).total_seconds()
        return delta + 86400 if delta < 0 else delta

    return {night: secs(stamps[i], stamps[i + 1]) for i, (night, _) in enumerate(starts) if i + 1 < len(stamps)}


def table(result: dict, log_text: str, wall: float, end: str | None) -> tuple[str, dict]:
    per_night = night_seconds(log_text, end)
    built = set(FEATURES_LINE.findall(log_text))
    rows = []
    for n in result["per_night"]:
        versions = n["model_versions"]
        rows.append({"night": n["night"], "seconds": per_night.get(n["night"]), "customers": n["users"],
                     "features_built": n["night"] in built, "model_lists": len(versions),
                     "models": sorted(set(versions.values()))})
    payload = {"measured_at": dt.datetime.now().isoformat(timespec="minutes"), "machine": platform.platform(),
               "wall_seconds": round(wall, 1), "nights": rows, "horizon_days": result["horizon_days"],
               "users_judged": result["users_judged"]}
    lines = ["# Next-week backtest: wall time", "",
             f"Measured {payload['measured_at']} on {payload['machine']}; {len(rows)} nights, horizon "
             f"{result['horizon_days']} days, {result['users_judged']:,} (night, customer) pairs judged.", "",
             f"**Whole run: {wall:,.0f} s** ({wall / 60:.1f} min).", "",
             "| night | seconds | customers | features built | model lists (seeds) |", "|---|---:|---:|---|---:|"]
    for r in rows:
        secs = f"{r['seconds']:,.0f}" if r["seconds"] is not None else "-"
        lines.append(f"| {r['night']} | {secs} | {r['customers']:,} | {'yes' if r['features_built'] else 'no'} "
                     f"| {r['model_lists']} |")
    lines += ["", "A night's time covers building its features when the lake had none, training its model(s) "
              "(none registered for the night and seed), scoring its lists, and tuning every baseline on the "
              "validation night (grids in the summary JSON)."]
    return "\n".join(lines) + "\n", payload


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lake")
    p.add_argument("--run-dates", nargs="+")
    p.add_argument("--seeds", default="0")
    p.add_argument("--summary", type=Path, help="a finished run's summary.json instead of running one")
    p.add_argument("--log", type=Path, help="that run's stderr (the per-night lines)")
    p.add_argument("--wall", type=float, help="that run's wall seconds")
    p.add_argument("--end", help="HH:MM:SS when that run ended (the last night's end)")
    a = p.parse_args()
    if a.summary:
        summary, log, wall, end = a.summary, a.log, a.wall, a.end
    else:
        if not (a.lake and a.run_dates):
            p.error("give --lake and --run-dates, or --summary")
        log = Path(tempfile.mkdtemp(prefix="warmstart-bench-")) / "backtest.err"
        wall, summary = run_backtest(a.lake, a.run_dates, a.seeds, log)
        end = dt.datetime.now().strftime("%H:%M:%S")
    result = json.loads(summary.read_text())
    text, payload = table(result, log.read_text() if log else "", wall or result["wall_seconds"], end)
    (RESULTS / "backtest.md").write_text(text)
    (RESULTS / "backtest.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
