"""The whole nightly flow for one run date, in one process sharing one Spark session:

    ingest -> gates (nightly.gates_after_ingest) -> features -> gates (nightly.gates_after_features)
           -> train (when due) -> backtest of night D - h (after training) -> score -> publish (its own gate)
           -> delayed feedback on night D - h -> run report

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

Without ``--events``/``--items`` the lake is used as it is: a replay of a past night, an Airflow backfill
or a cleared task. Every stage still runs for D, the gates included; the bronze/events gate, having no
ingest run of D to judge, judges the events dated in the freshness window up to D (jobs/validate.py,
``_replay_window``, says why). The flow holds the run lock of (lake, nightly, D) and each stage its own
(jobs/lock.py): a second run for D waits ``--wait SECONDS`` or exits 1 naming the holder.

A failed critical gate stops everything after it (exit 3, the report path in the message). Every stage
is idempotent per run date and commits atomically, so a run stopped anywhere (Ctrl-C, SIGTERM, a
killed machine) is finished by running the same command again: nothing is duplicated. Training is due
when no model was trained within ``nightly.train_every_days`` of the run date (or ``--train always``).

How good were the lists we served? With h = ``nightly.feedback_days`` (7, the backtest's horizon):
- **delayed feedback**, every night: the lists published for D - h (the newest ``candidates/published``
  row of that night, its candidates partition at the published table version) against the target-type
  events (``train.target_event_types``) that arrived for [D - h + 1 day, D + 1 day), with the backtest's
  definitions (training/backtest.py: targets are the distinct recommendable items bought; customers judged
  have a purchase before D - h + 1 day and a target): NDCG@10, Recall@20, hit rate@10, MRR, explore
  NDCG@10. In the summary (``delayed_feedback``), the lineage record, the run report and ``warmstart
  status``; a night with nothing published says so. Cheap: one Spark read of the events (only the
  window's buyers come back, with their history) and one of the candidates partition, numpy after.
- **backtest**, on training nights (as the leave-last-out ``warmstart evaluate`` ran before it, which
  this replaced: its per-user cut lets other users' later events in): ``warmstart backtest --run-dates
  D-h --horizon h --lists published``, the same lists beside tuned baselines, in
  ``reports/backtest/<D-h>_<D-h>/``; skipped, saying why, when nothing was published for D - h.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import logging
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from jobs import runtime
from jobs.config import NightlyConfig

log = logging.getLogger("warmstart.nightly")

# Progress lines besides the gates': ingest, features, train, train_ranker, backtest, score, publish,
# delayed feedback (run or skipped).
STAGE_LINES = 8
FEEDBACK = "delayed feedback"      # the in-process step's stage name
FEEDBACK_METRICS = ("ndcg@10", "recall@20", "hit@10", "mrr", "explore_ndcg@10")


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
    p.add_argument("--check-backtest-due", action="store_true",
                   help="only say whether night D - nightly.feedback_days has published lists to backtest: "
                        "exit 0 yes, 99 no (Airflow skips the backtest task on 99); runs nothing")
    return p


@dataclass
class StageResult:
    name: str
    status: str                       # succeeded | skipped | failed | gate failed | interrupted
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
    "train_ranker": ("version", "skipped", "retrievers", "train_groups", "rounds", "validation_ndcg@10_in_candidates"),
    "backtest": ("nights", "users_judged", "lists_ndcg@10", "best_baseline", "best_baseline_ndcg@10", "lists_minus_best"),
    "score": ("active_users", "users_ranked", "users_model", "users_popular_fallback", "rows_written", "user_candidates_version"),
    "publish": ("published", "users", "rows", "coverage", "table_version"),
    "report": ("path",),
    "feedback": ("published_run_date", "users_judged", *FEEDBACK_METRICS),
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


def training_due(models_root: str, name: str, run_date: dt.date, every_days: int, mode: str = "auto") -> tuple[bool, str]:
    """Whether the flow trains tonight, and why. The registry's version names start with the run date
    they were trained for (``YYYYMMDD-<fingerprint>``); only versions trained on or before ``run_date``
    count, so a backfill of an earlier date does not lean on a model that saw later data."""
    if mode == "always":
        return True, "--train always"
    if mode == "never":
        return False, "--train never"
    from training import versions as registry

    trained = [_trained_on(v) for v in registry.list_versions(models_root, name)]
    earlier = [d for d in trained if d is not None and d <= run_date]
    if not earlier:
        return True, f"no model of {name} trained on or before {run_date}"
    last = max(earlier)
    age = (run_date - last).days
    if age >= every_days:
        return True, f"last trained {last} ({age} d ago, cadence {every_days} d)"
    return False, f"not due: last trained {last} ({age} d ago, cadence {every_days} d)"


def _trained_on(version: str) -> dt.date | None:
    """The run date a version was trained for (jobs/train.py names it ``YYYYMMDD-<fingerprint>``)."""
    try:
        return dt.datetime.strptime(version[:8], "%Y%m%d").date()
    except ValueError:
        return None


def feedback_night(run_date: dt.date, nightly_cfg: NightlyConfig) -> dt.date:
    """The night whose published lists tonight judges: ``nightly.feedback_days`` before the run date."""
    return run_date - dt.timedelta(days=nightly_cfg.feedback_days)


def published_run(lake_root: str, day: dt.date, spark=None) -> dict[str, Any] | None:
    """The newest ``candidates/published`` row of ``day`` (what online services loaded for that night; a
    night published twice counts by its latest), or None when nothing was published for it. Read with
    ``spark`` when given (any Hadoop path, as the stages read the lake), else with delta-rs (no JVM: the
    Airflow check)."""
    if spark is None:
        from jobs import status

        return next((p for p in status.published_sets(lake_root) if str(p["run_date"])[:10] == day.isoformat()),
                    None)
    from pyspark.sql import functions as F

    from features.tables import PUBLISHED
    from jobs import lake

    if not lake.exists(spark, lake_root, PUBLISHED):
        return None
    rows = (lake.read(spark, lake_root, PUBLISHED).where(F.col("run_date") == F.lit(day))
            .orderBy(F.desc("published_at")).limit(1).collect())
    return rows[0].asDict() if rows else None


def backtest_due(night_of: dt.date, published: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether night ``night_of`` has published lists to backtest, and why."""
    if published is None:
        return False, f"nothing was published for {night_of}: no lists to judge"
    return True, (f"lists published for {night_of} (model {published.get('model_version')}, "
                  f"user_candidates version {published.get('table_version')})")


class _Terminated(KeyboardInterrupt):
    """SIGTERM (Airflow, a scheduler, `kill`) handled like Ctrl-C: stop between Delta commits."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Terminated()


class Flow:
    def __init__(self, args: NightlyArgs, total: int, spark=None):
        self.args, self.spark = args, spark
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
        # Each stage takes its own run lock (jobs/lock.py) beside the flow's: a manual run of a stage for
        # the same date is kept out too, and the flow's --wait is the stage's.
        return ["--lake", self.args.lake, "--config", str(self.config_file), "--wait", f"{self.args.wait_s:g}",
                *(["--verbose"] if self.args.verbose else [])]

    def skip(self, name: str, why: str) -> StageResult:
        result = StageResult(name=name, status="skipped", note=why)
        self.results.append(result)
        self.progress.skip(result)
        return result

    def stage(self, name: str, module: str, argv: list[str]) -> StageResult:
        """Run ``jobs.<module>.main`` in-process and turn its exit code into the flow's outcome."""
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

    def published(self, day: dt.date) -> dict[str, Any] | None:
        return published_run(self.args.lake, day, self.spark)

    def feedback(self, night_of: dt.date, published: dict[str, Any] | None) -> StageResult:
        """The delayed-feedback step: computed in-process (it is no job of its own), shown as a stage."""
        started = self.progress.begin(FEEDBACK)
        result = StageResult(name=FEEDBACK, status="failed")
        self.results.append(result)
        try:
            result.summary = delayed_feedback(self.spark, self.args, night_of, published)
            result.status = "succeeded"
        except KeyboardInterrupt:
            result.status = "interrupted"
            raise
        except Exception as exc:
            result.note = f"{type(exc).__name__}: {exc}"
            raise runtime.WarmstartError(f"{FEEDBACK} failed ({result.note}); tonight's lists are published "
                                         f"already. Rerun the same command: finished stages are idempotent") from exc
        finally:
            result.seconds = time.monotonic() - started
            figures = {k: v for k, v in result.summary.items() if v is not None}
            result.rows = headline("feedback", figures) if result.summary.get("users_judged") else ""
            result.note = result.note or result.summary.get("note", "")
            self.progress.end(result)
        return result

    def gate(self, table: str) -> StageResult:
        if not self._table_exists(table):
            return self.skip(f"gate {table}", "table not in the lake (nothing ingested for it)")
        return self.stage(f"gate {table}", "validate", ["--table", table, "--run-date", self.run_date])

    def _table_exists(self, table: str) -> bool:
        from deltalake import DeltaTable

        return runtime.is_remote(self.args.lake) or DeltaTable.is_deltatable(f"{self.args.lake}/{table}")


def plan_size(nightly_cfg: NightlyConfig) -> int:
    return STAGE_LINES + len(nightly_cfg.gates_after_ingest) + len(nightly_cfg.gates_after_features)


def run(spark, args: NightlyArgs) -> dict[str, Any]:
    """Run the flow and write the run report; returns the flat summary. On failure or interruption the
    summary, lineage record and (except when interrupted) run report are still written, then the
    error propagates with its exit code."""
    flow = Flow(args, plan_size(args.config.nightly), spark)
    failure: BaseException | None = None
    try:
        with _sigterm_as_interrupt():
            run_stages(flow)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        summary, summary_file = record_run(flow, *outcome(failure))
    return flat_summary(summary, summary_file)


def run_stages(flow: Flow) -> None:
    """ingest -> gates -> features -> gates -> train, train_ranker and backtest (when due) -> score ->
    publish -> delayed feedback."""
    args, nightly_cfg, d = flow.args, flow.args.config.nightly, flow.run_date
    if args.events or args.items:
        flow.stage("ingest", "ingest", _ingest_argv(args))
    else:
        flow.skip("ingest", "no --events/--items given: the lake is used as it is")
    for table in nightly_cfg.gates_after_ingest:
        flow.gate(table)

    flow.stage("features", "build_features", ["--run-date", d])
    for table in nightly_cfg.gates_after_features:
        flow.gate(table)

    night_of = feedback_night(args.run_date, nightly_cfg)
    published = flow.published(night_of)
    due, why = training_due(args.models_root, args.config.train.name, args.run_date,
                            nightly_cfg.train_every_days, args.train)
    if due:
        log.info("training is due: %s", why)
        flow.stage("train", "train", ["--run-date", d])
        flow.stage("train_ranker", "train_ranker", ["--run-date", d])
        listed, why_not = backtest_due(night_of, published)
        if listed:   # the lists online services had, beside the baselines; weekly, with training
            flow.stage("backtest", "backtest", ["--run-dates", night_of.isoformat(), "--horizon",
                                                str(nightly_cfg.feedback_days), "--lists", "published"])
        else:
            flow.skip("backtest", why_not)
    else:
        flow.skip("train", why)
        flow.skip("train_ranker", "the ranker is refitted with the model")
        flow.skip("backtest", "no new model tonight: the backtest runs on training nights")

    flow.stage("score", "score", ["--run-date", d])
    flow.stage("publish", "publish", ["--run-date", d])
    flow.feedback(night_of, published)


def delayed_feedback(spark, args: NightlyArgs, night_of: dt.date, published: dict[str, Any] | None) -> dict[str, Any]:
    """The lists published for ``night_of`` judged on the target-type events that have arrived since
    (module docstring); ``published`` is that night's ``candidates/published`` row, or None."""
    from pyspark.sql import functions as F

    from features.tables import EVENTS, USER_CANDIDATES
    from jobs import lake
    from jobs.backtest import read_purchases
    from training import backtest as B

    h = args.config.nightly.feedback_days
    out: dict[str, Any] = {"published_run_date": night_of.isoformat(), "feedback_days": h,
                           "window": f"[{night_of + dt.timedelta(days=1)}, {args.run_date + dt.timedelta(days=1)})"}
    if published is None:
        return {**out, "published": False, "users_judged": 0, "note": backtest_due(night_of, None)[1]}
    version = int(published["table_version"])
    rows = (lake.read(spark, args.lake, USER_CANDIDATES, version).where(F.col("run_date") == F.lit(night_of))
            .select("user_id", "rank", "item_id").toPandas())
    catalogue, recommendable, purchases, versions = read_purchases(spark, args.lake, args.config,
                                                                  through=args.run_date, buyers_after=night_of)
    index, events_version = {item: i for i, item in enumerate(catalogue)}, versions[EVENTS.name]
    night = B.night(purchases, night_of, h, recommendable) if len(purchases) else None
    out.update(published=True, model_version=published.get("model_version"), candidates_table_version=version,
               events_version=events_version, users_listed=int(rows["user_id"].nunique()),
               users_judged=len(night.evaluated) if night else 0)
    if not out["users_judged"]:
        return {**out, **dict.fromkeys(FEEDBACK_METRICS), "explore_users": 0,
                "note": f"nobody who had bought by {night_of} has bought a recommendable item since: "
                        "no one to judge yet"}
    per_user = B.judge(B.lists_from_rows(rows, index, night.user_ids[night.evaluated]), night)
    means = B.summary({m: per_user[m] for m in FEEDBACK_METRICS})
    out.update({m: None if np.isnan(v) else v for m, v in means.items()})
    out["explore_users"] = int(np.isfinite(per_user["explore_ndcg@10"]).sum())
    return out


def _ingest_argv(args: NightlyArgs) -> list[str]:
    argv = ["--run-date", args.run_date.isoformat()]
    if args.events:
        argv += ["--events", *args.events]
    if args.items:
        argv += ["--items", *args.items]
    if args.format:
        argv += ["--format", args.format]
    return argv


def outcome(failure: BaseException | None) -> tuple[str, str | None]:
    """The run's status and error message, from what stopped it (None: nothing did)."""
    if failure is None:
        return "succeeded", None
    if isinstance(failure, KeyboardInterrupt):
        return "interrupted", "interrupted; rerun the same command to finish (stages are idempotent)"
    if isinstance(failure, runtime.WarmstartError):
        return ("gate failed" if isinstance(failure, runtime.GateFailed) else "failed"), str(failure)
    return "failed", f"{type(failure).__name__}: {failure}"   # a bug in the flow itself: still recorded


def record_run(flow: Flow, status: str, error: str | None) -> tuple[dict[str, Any], str]:
    """Write ``reports/<date>/nightly.json``, the run report (unless interrupted) and the lineage record,
    and print the final summary; returns the summary and its file."""
    args = flow.args
    summary = final_summary(flow, status, error)
    summary_file = str(Path(args.reports_root) / flow.run_date / "nightly.json")
    runtime.write_json(summary_file, summary)
    if status != "interrupted":
        summary["reports"]["run_report"] = write_run_report(flow, summary)
        summary["reports"]["trends"] = write_trend_page(flow, summary)
        runtime.write_json(summary_file, summary)
    runtime.record_lineage(args, run_date=args.run_date, inputs=summary["stage_run_ids"],
                           outputs={"summary": summary_file}, summary=summary, status=status)
    print_final(summary)
    return summary, summary_file


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM handled like Ctrl-C while the stages run (only the main thread may set handlers)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_run_report(flow: Flow, summary: dict[str, Any]) -> str | None:
    """The run report (jobs/report.py) with this run's stage table; a report that cannot be written
    never hides the flow's own outcome."""
    from jobs import report

    try:
        return report.write(flow.args, flow.args.run_date, nightly=summary)
    except Exception as exc:  # noqa: BLE001 - logged; the flow's result stands
        log.warning("run report not written: %s: %s", type(exc).__name__, exc)
        return None


def write_trend_page(flow: Flow, summary: dict[str, Any]) -> str | None:
    """The trend page over the last ``tracking.trend_nights`` nights, tonight included; like the run
    report, never the reason a flow fails."""
    from jobs import report

    try:
        return report.write_trends(flow.args, flow.args.config.tracking.trend_nights, flow.args.run_date,
                                   nightly=summary)
    except Exception as exc:  # noqa: BLE001 - logged; the flow's result stands
        log.warning("trend page not written: %s: %s", type(exc).__name__, exc)
        return None


def final_summary(flow: Flow, status: str, error: str | None) -> dict[str, Any]:
    args = flow.args
    by_name = {r.name: r for r in flow.results}
    ingest = by_name.get("ingest", StageResult("ingest", "skipped")).summary
    features = by_name.get("features", StageResult("features", "skipped")).summary
    train = by_name.get("train", StageResult("train", "skipped")).summary
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
             # training's validation (model selection on the week before the run date), not the
             # product's quality: that is the backtest and the delayed feedback below
             "metrics": {k: v for k, v in train.items()
                         if "@" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}}
    reports_dir = Path(args.reports_root) / flow.run_date
    reports = {"quality": sorted(str(p) for p in (reports_dir / "quality").glob("*.html")),
               "model": sorted(str(p) for p in (reports_dir / "model").glob("*.html")),
               "candidates": sorted(str(p) for p in (reports_dir / "candidates").glob("*.html")),
               "backtest": by_name["backtest"].summary.get("report") if "backtest" in by_name else None,
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
        **measured_quality(flow.args, by_name),
        "reports": reports,
        "stage_run_ids": {r.name: r.summary.get("run_id") for r in flow.results if r.summary.get("run_id")},
    }


def measured_quality(args: NightlyArgs, by_name: dict[str, StageResult]) -> dict[str, Any]:
    """The summary's ``backtest`` (the backtest job's summary, or why it was skipped) and
    ``delayed_feedback`` (the step's figures); None where the flow stopped before them."""
    night_of = feedback_night(args.run_date, args.config.nightly).isoformat()
    backtest = by_name.get("backtest")
    feedback = by_name.get(FEEDBACK)
    return {"backtest": {"night": night_of, "status": backtest.status, "note": backtest.note, **backtest.summary}
            if backtest else None,
            "delayed_feedback": (feedback.summary or None) if feedback else None}


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
    from training import versions as registry

    return registry.latest_version(args.models_root, args.config.train.name)


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
    flat.update(dict(sorted(model["metrics"].items())))   # val_ndcg@10 (training's model selection)
    backtest = summary.get("backtest") or {}
    flat.update({f"backtest_{k}": backtest[k] for k in ("night", "status", "users_judged", "lists_ndcg@10",
                                                         "best_baseline", "best_baseline_ndcg@10",
                                                         "lists_minus_best", "report") if k in backtest})
    flat["delayed_feedback"] = summary.get("delayed_feedback")
    flat.update({f"published_{k}": published[k] for k in ("users", "rows", "table_version") if k in published})
    flat["run_report"] = summary["reports"].get("run_report")
    flat["trend_page"] = summary["reports"].get("trends")
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
    if summary.get("delayed_feedback"):
        from jobs import status

        print(f"  delayed feedback: {status.feedback_line(summary['delayed_feedback'])}")
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


def check_due(argv: list[str], what: str) -> int:
    """``--check-train-due`` (``what`` = training) / ``--check-backtest-due`` (the backtest): 0 when due,
    99 (Airflow's skip code) when not; no Spark."""
    overrides = [a for a in argv if runtime.is_override(a)]
    try:
        ns = parser().parse_args([a for a in argv if not runtime.is_override(a)])
        cfg = runtime.load_config(ns.config, runtime.parse_overrides(overrides))
    except runtime.WarmstartError as exc:
        print(f"warmstart nightly: {exc}", file=sys.stderr)
        return exc.exit_code
    lake = runtime.normalise_root(ns.lake or cfg.paths.lake)
    common = runtime.JobArgs(job="nightly", lake=lake, config=cfg, run_id="check")
    if what == "training":
        due, why = training_due(common.models_root, cfg.train.name, ns.run_date,
                                cfg.nightly.train_every_days, ns.train)
    else:
        night_of = feedback_night(ns.run_date, cfg.nightly)
        due, why = backtest_due(night_of, published_run(lake, night_of))
    print(f"{what} {'is due' if due else 'is not due'} for {ns.run_date}: {why}")
    return 0 if due else 99


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--check-train-due" in argv:
        return check_due(argv, "training")
    if "--check-backtest-due" in argv:
        return check_due(argv, "the backtest")
    return runtime.run_job("nightly", parser(), to_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
