"""The whole nightly flow for one run date, in one process sharing one Spark session:

    ingest -> gate(bronze/events, bronze/items) -> features -> gate(feature tables)
           -> train (when due) -> evaluate (after training) -> score -> publish (its own gate) -> run report

    warmstart nightly --run-date 2011-12-09 --format online-retail \\
        --events ../shared/data/online_retail/online_retail_ii_2009_2010.csv.gz \\
                 ../shared/data/online_retail/online_retail.csv.gz
    spark-submit --master local[*] jobs/nightly.py --lake ./lake --run-date 2011-12-09 --events DROP/ --items CATALOGUE/

Each stage is its job's own ``jobs.<module>.main(argv + ["--summary-json", tmp])``, so the nightly run
does exactly what Airflow's tasks or a hand-typed spark-submit would do; ``--lake``, ``--config`` and
trailing ``key=value`` overrides are passed on to every stage. Progress is one line per stage (stage,
rows, elapsed); the final summary has counts, gate results, the model version and its metrics, the
published candidate set and the path of every report, and goes to ``--summary-json`` and to the
nightly run's lineage record (what ``warmstart status`` lists).

A failed critical gate stops everything after it (exit 3, the report path in the message). Every stage
is idempotent per run date and commits atomically, so a run stopped anywhere (Ctrl-C, SIGTERM, a
killed machine) is finished by running the same command again: nothing is duplicated. Training is due
when no model was trained within ``nightly.train_every_days`` of the run date (or ``--train always``).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jobs import runtime

log = logging.getLogger("warmstart.nightly")

# The stages in order: (stage name, module under jobs/). Gates are `validate` runs between them.
STAGES: tuple[tuple[str, str], ...] = (
    ("ingest", "ingest"),
    ("features", "build_features"),
    ("train", "train"),
    ("evaluate", "evaluate"),
    ("score", "score"),
    ("publish", "publish"),
    ("report", "report"),
)


@dataclass(frozen=True)
class NightlyArgs(runtime.JobArgs):
    run_date: dt.date | None = None
    events: tuple[str, ...] = ()
    items: tuple[str, ...] = ()
    format: str | None = None
    train: str = "auto"                 # auto | always | never


def parser():
    p = runtime.job_parser("nightly", "run the whole nightly flow for a date")
    p.add_argument("--run-date", required=True, type=runtime.parse_date, help="the run date (YYYY-MM-DD)")
    p.add_argument("--events", nargs="+", default=[], metavar="PATH",
                   help="event drops to ingest (files or folders); without --events/--items ingest is skipped")
    p.add_argument("--items", nargs="+", default=[], metavar="PATH", help="item catalogue drops to ingest")
    p.add_argument("--format", help="input format passed to ingest (auto|parquet|csv|jsonl|online-retail)")
    p.add_argument("--train", choices=("auto", "always", "never"), default="auto",
                   help="auto: train when due (nightly.train_every_days, or no model yet)")
    p.add_argument("--check-train-due", action="store_true",
                   help="only say whether training is due for --run-date: exit 0 due, 99 not due (Airflow "
                        "skips the train task on 99); runs nothing")
    return p


# --------------------------------------------------------------------------------------------------
# Progress and results


@dataclass
class StageResult:
    name: str
    status: str                       # succeeded | skipped | not available | failed | gate failed | interrupted
    seconds: float = 0.0
    rows: str = ""                    # the stage's headline counts, for the progress line
    exit_code: int | None = None
    note: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


class Progress:
    """One line per stage on stdout: ``[3/11] features  succeeded  41.2s  user_features=5,881 ...``."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.monotonic()

    def begin(self, name: str) -> float:
        self.done += 1
        print(f"[{self.done:>2}/{self.total}] {name:<28} running ...", flush=True)
        return time.monotonic()

    def end(self, result: StageResult) -> None:
        detail = result.rows or result.note
        print(f"[{self.done:>2}/{self.total}] {result.name:<28} {result.status:<13} {result.seconds:7.1f}s  {detail}"
              f"   (total {time.monotonic() - self.started:,.0f}s)", flush=True)

    def skip(self, result: StageResult) -> None:
        self.done += 1
        print(f"[{self.done:>2}/{self.total}] {result.name:<28} {result.status:<13} {'':>8}  {result.note}", flush=True)


# Which summary keys make a stage's headline "rows" (the first present ones are shown).
HEADLINE_KEYS: dict[str, tuple[str, ...]] = {
    "ingest": ("records_read", "events_inserted", "duplicates", "quarantined", "items_inserted", "items_updated"),
    "build_features": ("rows_user_features", "rows_item_features", "rows_user_sequences", "daily_partitions_rebuilt"),
    "validate": ("verdict", "rows", "critical_failed", "warning_failed"),
    "train": ("version", "promoted", "val_ndcg@10", "val_recall@10", "epochs_run"),
    "evaluate": ("users_evaluated", "model_ndcg@10", "model_recall@10", "best_baseline", "lift_ndcg10_vs_best_baseline"),
    "score": ("active_users", "users_model", "users_popular_fallback", "rows_written", "user_candidates_version"),
    "publish": ("published", "users", "rows", "coverage", "table_version"),
    "report": ("path",),
}


def headline(module: str, summary: dict[str, Any], limit: int = 6) -> str:
    keys = [k for k in HEADLINE_KEYS.get(module, ()) if k in summary]
    if not keys:   # a stage whose summary we do not know yet: its first few plain numbers
        keys = [k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    parts = []
    for key in keys[:limit]:
        value = summary[key]
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        parts.append(f"{key}={value}")
    return "  ".join(parts)


def stage_available(module: str) -> bool:
    return importlib.util.find_spec(f"jobs.{module}") is not None


# --------------------------------------------------------------------------------------------------
# Training cadence


def training_due(models_root: str, name: str, run_date: dt.date, every_days: int, mode: str = "auto") -> tuple[bool, str]:
    """Whether the flow trains tonight, and why. The registry's version names start with the run date
    they were trained for (``YYYYMMDD-<fingerprint>``); only versions trained on or before ``run_date``
    count, so a backfill of an earlier date does not lean on a model that saw later data."""
    if mode == "always":
        return True, "--train always"
    if mode == "never":
        return False, "--train never"
    root = Path(models_root) / name
    trained: list[dt.date] = []
    for folder in root.iterdir() if root.is_dir() else []:
        if not (folder / "model.safetensors").is_file():
            continue
        try:
            trained.append(dt.datetime.strptime(folder.name[:8], "%Y%m%d").date())
        except ValueError:
            continue
    earlier = [d for d in trained if d <= run_date]
    if not earlier:
        return True, f"no model of {name} trained on or before {run_date}"
    last = max(earlier)
    age = (run_date - last).days
    if age >= every_days:
        return True, f"last trained {last} ({age} d ago, cadence {every_days} d)"
    return False, f"not due: last trained {last} ({age} d ago, cadence {every_days} d)"


# --------------------------------------------------------------------------------------------------
# The flow


class _Terminated(KeyboardInterrupt):
    """SIGTERM (Airflow, a scheduler, `kill`) handled like Ctrl-C: stop between Delta commits."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Terminated()


class Flow:
    def __init__(self, args: NightlyArgs, total: int):
        self.args = args
        self.results: list[StageResult] = []
        self.progress = Progress(total)
        self.tmp = Path(tempfile.mkdtemp(prefix="warmstart-nightly-"))
        self.run_date = args.run_date.isoformat()
        # Every stage gets the nightly run's effective configuration (defaults, --config, overrides).
        self.config_file = self.tmp / "config.yaml"
        self.config_file.write_text(yaml.safe_dump(args.config.to_dict(), sort_keys=True))
        self.log_dir = (self.tmp / "logs" if runtime.is_remote(args.reports_root)
                        else Path(args.reports_root) / self.run_date / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def common_argv(self) -> list[str]:
        return ["--lake", self.args.lake, "--config", str(self.config_file)]

    def skip(self, name: str, why: str, status: str = "skipped") -> StageResult:
        result = StageResult(name=name, status=status, note=why)
        self.results.append(result)
        self.progress.skip(result)
        return result

    def stage(self, name: str, module: str, argv: list[str]) -> StageResult:
        """Run ``jobs.<module>.main`` in-process and turn its exit code into the flow's outcome."""
        if not stage_available(module):
            why = f"jobs/{module}.py is not there yet"
            if self.args.config.get("nightly.require_all_stages", True):
                self.skip(name, why, status="not available")
                raise runtime.WarmstartError(f"stage {name} not available: {why} "
                                             "(nightly.require_all_stages=false runs the stages that exist)")
            return self.skip(name, why, status="not available")
        summary_path = self.tmp / f"{len(self.results):02d}-{module}.json"
        started = self.progress.begin(name)
        job = importlib.import_module(f"jobs.{module}")
        # The stage's own printed summary goes to its log (the JSON summary carries the same); the
        # console keeps one progress line per stage. Its stderr (errors, logging) stays on the console.
        stage_log = self.log_dir / f"{len(self.results) + 1:02d}-{name.replace(' ', '_').replace('/', '_')}.out"
        try:
            with open(stage_log, "w") as out, contextlib.redirect_stdout(out):
                code = job.main([*argv, *self.common_argv(), "--summary-json", str(summary_path)])
        except KeyboardInterrupt:
            code = 130
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() and code == 0 else {}
        status = {0: "succeeded", 3: "gate failed", 130: "interrupted"}.get(code, "failed")
        result = StageResult(name=name, status=status, seconds=time.monotonic() - started,
                             rows=headline(module, summary), exit_code=code, summary=summary)
        self.results.append(result)
        self.progress.end(result)
        if code == 130:
            raise KeyboardInterrupt()
        if code == 3:
            where = gate_report(self.args, self.run_date, name) or f"{self.args.reports_root}/{self.run_date}/"
            raise runtime.GateFailed(f"{name}: critical gate failed, so the flow stopped before the stages "
                                     f"after it; report: {where}")
        if code == 2:
            raise runtime.UsageError(f"{name} rejected its arguments (exit 2); see the line above")
        if code != 0:
            raise runtime.WarmstartError(f"{name} failed (exit {code}); see the line above. Fix it and rerun "
                                         f"the same command: finished stages are idempotent")
        return result

    def gate(self, table: str) -> StageResult | None:
        if not self._table_exists(table):
            return self.skip(f"gate {table}", "table not in the lake (nothing ingested for it)")
        return self.stage(f"gate {table}", "validate", ["--table", table, "--run-date", self.run_date])

    def _table_exists(self, table: str) -> bool:
        from deltalake import DeltaTable

        return runtime.is_remote(self.args.lake) or DeltaTable.is_deltatable(f"{self.args.lake}/{table}")


def plan_size(args: NightlyArgs) -> int:
    cfg = args.config
    return (len(STAGES) - 1 + len(cfg.get("nightly.gates_after_ingest", []) or [])
            + len(cfg.get("nightly.gates_after_features", []) or []))


def run(spark, args: NightlyArgs) -> dict[str, Any]:
    """Run the flow and write the run report; returns the flat summary. On failure or interruption the
    summary, lineage record and (except when interrupted) run report are still written, then the
    error propagates with its exit code."""
    cfg = args.config
    flow = Flow(args, plan_size(args))
    d = flow.run_date
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    status, error = "succeeded", None
    try:
        if args.events or args.items:
            argv = ["--run-date", d]
            if args.events:
                argv += ["--events", *args.events]
            if args.items:
                argv += ["--items", *args.items]
            if args.format:
                argv += ["--format", args.format]
            flow.stage("ingest", "ingest", argv)
        else:
            flow.skip("ingest", "no --events/--items given: the lake is used as it is")
        for table in cfg.get("nightly.gates_after_ingest", []) or []:
            flow.gate(table)

        flow.stage("features", "build_features", ["--run-date", d])
        for table in cfg.get("nightly.gates_after_features", []) or []:
            flow.gate(table)

        name = cfg.get("train.name", "warmstart-seqrec")
        due, why = training_due(args.models_root, name, args.run_date,
                                int(cfg.get("nightly.train_every_days", 7)), args.train)
        if due:
            log.info("training is due: %s", why)
            trained = flow.stage("train", "train", ["--run-date", d])
            version = trained.summary.get("version")
            flow.stage("evaluate", "evaluate", ["--run-date", d] + (["--model-version", version] if version else []))
        else:
            flow.skip("train", why)
            flow.skip("evaluate", "no new model tonight")

        flow.stage("score", "score", ["--run-date", d])
        flow.stage("publish", "publish", ["--run-date", d])
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted; rerun the same command to finish (stages are idempotent)"
        raise
    except runtime.WarmstartError as exc:
        status, error = ("gate failed" if isinstance(exc, runtime.GateFailed) else "failed"), str(exc)
        raise
    except Exception as exc:   # a bug in the flow itself: still leave a record saying so
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        summary = final_summary(args, flow, status, error)
        summary_file = Path(args.reports_root) / d / "nightly.json"
        runtime.write_json(str(summary_file), summary)
        if status != "interrupted":
            summary["reports"]["run_report"] = write_run_report(flow, summary)
            runtime.write_json(str(summary_file), summary)
        runtime.record_lineage(args, run_date=args.run_date, inputs=summary["stage_run_ids"],
                               outputs={"summary": str(summary_file)}, summary=summary, status=status)
        print_final(summary)
    return flat_summary(summary, str(summary_file))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def write_run_report(flow: Flow, summary: dict[str, Any]) -> str | None:
    """The run report (jobs/report.py) with this run's stage table; a report that cannot be written
    never hides the flow's own outcome."""
    if not stage_available("report"):
        return None
    from jobs import report

    try:
        return report.write(flow.args, flow.args.run_date, nightly=summary)
    except Exception as exc:  # noqa: BLE001 - logged; the flow's result stands
        log.warning("run report not written: %s: %s", type(exc).__name__, exc)
        return None


# --------------------------------------------------------------------------------------------------
# Final summary


def final_summary(args: NightlyArgs, flow: Flow, status: str, error: str | None) -> dict[str, Any]:
    by_name = {r.name: r for r in flow.results}
    ingest = by_name.get("ingest", StageResult("ingest", "skipped")).summary
    features = by_name.get("features", StageResult("features", "skipped")).summary
    train = by_name.get("train", StageResult("train", "skipped")).summary
    evaluate = by_name.get("evaluate", StageResult("evaluate", "skipped")).summary
    score = by_name.get("score", StageResult("score", "skipped")).summary
    publish = by_name.get("publish", StageResult("publish", "skipped")).summary
    gates = {r.name.removeprefix("gate "): {"status": r.status, "report": gate_report(args, flow.run_date, r.name),
                                             "rows": r.summary.get("rows"),
                                             "critical_failed": r.summary.get("critical_failed"),
                                             "warning_failed": r.summary.get("warning_failed"),
                                             "failed_checks": r.summary.get("failed_checks")}
             for r in flow.results if r.name.startswith("gate ")}
    model = {"version": train.get("version") or str(score.get("model", "")).rpartition("/")[2] or _latest_model(args),
             "trained_tonight": bool(train) and not train.get("reused", False),
             "metrics": {k: v for k, v in {**train, **evaluate}.items()
                         if ("@" in k or k.startswith("lift_")) and isinstance(v, (int, float)) and not isinstance(v, bool)}}
    reports_dir = Path(args.reports_root) / flow.run_date
    reports = {"quality": sorted(str(p) for p in (reports_dir / "quality").glob("*.html")),
               "model": sorted(str(p) for p in (reports_dir / "model").glob("*.html")),
               "candidates": sorted(str(p) for p in (reports_dir / "candidates").glob("*.html")),
               "stage_logs": str(flow.log_dir)}
    counts = {k: v for k, v in {**ingest, **features}.items() if isinstance(v, int) and not isinstance(v, bool)}
    return {
        "status": status,
        "error": error,
        "run_date": flow.run_date,
        "lake": args.lake,
        "stages": [{"stage": r.name, "status": r.status, "seconds": round(r.seconds, 1), "rows": r.rows,
                    "note": r.note, "exit_code": r.exit_code} for r in flow.results],
        "total_seconds": round(sum(r.seconds for r in flow.results), 1),
        "gates": gates,
        "counts": counts,
        "model": model,
        "published": publish or {},
        "reports": reports,
        "stage_run_ids": {r.name: r.summary.get("run_id") for r in flow.results if r.summary.get("run_id")},
    }


def gate_report(args: runtime.JobArgs, run_date: str, stage: str) -> str | None:
    """The HTML report of a gating stage (written on failure too), if it is there: the validate job's
    ``quality/<table>.html`` for ``gate <table>``, publish's ``candidates/gate.html``."""
    base = Path(args.reports_root) / run_date
    if stage == "publish":
        path = base / "candidates" / "gate.html"
    else:
        path = base / "quality" / (stage.removeprefix("gate ").replace("/", "_") + ".html")
    return str(path) if path.is_file() else None


def _latest_model(args: NightlyArgs) -> str | None:
    pointer = Path(args.models_root) / args.config.get("train.name", "warmstart-seqrec") / "LATEST"
    return pointer.read_text().strip() if pointer.is_file() else None


def flat_summary(summary: dict[str, Any], summary_file: str) -> dict[str, Any]:
    """The headline figures as one flat mapping: printed by run_job and written to --summary-json
    (the full nested summary is ``summary_file`` and the lineage record)."""
    gates = summary["gates"].values()
    model, published = summary["model"], summary["published"]
    flat: dict[str, Any] = {"status": summary["status"], "run_date": summary["run_date"],
                            "total_seconds": summary["total_seconds"]}
    flat.update({k: v for k, v in summary["counts"].items()})
    flat["gates_passed"] = f"{sum(g['status'] == 'succeeded' for g in gates)}/{len(summary['gates'])}"
    flat["model_version"] = model.get("version")
    flat["model_trained_tonight"] = model.get("trained_tonight")
    flat.update(dict(sorted(model["metrics"].items())))   # val_ndcg@10 (training), model_/baseline ndcg@10 (evaluation)
    flat.update({f"published_{k}": published[k] for k in ("users", "rows", "table_version") if k in published})
    flat["run_report"] = summary["reports"].get("run_report")
    flat["summary_file"] = summary_file
    return flat


def print_final(summary: dict[str, Any]) -> None:
    print(f"\n== warmstart nightly {summary['run_date']}: {summary['status']} "
          f"({summary['total_seconds']:,.0f}s in stages) ==")
    if summary.get("error"):
        print(f"  error: {summary['error']}")
    print("  stages:")
    for s in summary["stages"]:
        detail = s["rows"] or s["note"]
        print(f"    {s['stage']:<28} {s['status']:<13} {s['seconds']:7.1f}s  {detail}")
    if summary["gates"]:
        print("  gates:")
        for table, g in summary["gates"].items():
            print(f"    {table:<28} {g['status']:<13} {g.get('report') or ''}")
    print("  reports:")
    for kind, paths in summary["reports"].items():
        for path in ([paths] if isinstance(paths, str) else paths or []):
            print(f"    {kind:<11} {path}")
    sys.stdout.flush()


def to_args(ns, common: runtime.JobArgs) -> NightlyArgs:
    return runtime.dataclass_from(NightlyArgs, ns, common, events=tuple(ns.events), items=tuple(ns.items))


def check_train_due(argv: list[str]) -> int:
    """``--check-train-due``: 0 when training is due, 99 (Airflow's skip code) when not; no Spark."""
    overrides = [a for a in argv if runtime.is_override(a)]
    try:
        ns = parser().parse_args([a for a in argv if not runtime.is_override(a)])
        cfg = runtime.load_config(ns.config, runtime.parse_overrides(overrides))
    except runtime.WarmstartError as exc:
        print(f"warmstart nightly: {exc}", file=sys.stderr)
        return exc.exit_code
    lake = runtime.normalise_root(ns.lake or os.environ.get("WARMSTART_LAKE") or cfg.get("paths.lake") or "./lake")
    common = runtime.JobArgs(job="nightly", lake=lake, config=cfg, run_id="check")
    due, why = training_due(common.models_root, cfg.get("train.name", "warmstart-seqrec"), ns.run_date,
                            int(cfg.get("nightly.train_every_days", 7)), ns.train)
    print(f"training {'is due' if due else 'is not due'} for {ns.run_date}: {why}")
    return 0 if due else 99


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--check-train-due" in argv:
        return check_train_due(argv)
    return runtime.run_job("nightly", parser(), to_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
