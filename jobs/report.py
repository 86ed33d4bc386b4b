"""The run report: one offline HTML page per run date, ``reports/<run_date>/index.html``: near the top
how the lists published ``nightly.feedback_days`` (h) earlier did on the purchases since (the nightly's
delayed feedback), then the stages, the quality reports (``quality/``), the model (training's
validation figures, labelled as model selection; the next-week backtest of night D - h,
``reports/backtest/<D-h>_<D-h>/``, when one ran), the candidate reports (``candidates/``) with candidate
statistics (user and catalogue coverage, score distribution, strategy mix, most recommended items) and
their plots embedded as PNG, and the trends of the last ``tracking.trend_nights`` nightly runs
(jobs/trends.py: tonight's stage durations against their median, a plot per figure with the odd nights
marked). The nightly flow writes it after its last stage; Airflow's last task and engineers run it on its
own. ``--last N`` also writes the trend page ``reports/trends/index.html`` over the last N nightly runs
(up to ``--run-date`` when given):

    warmstart report --run-date 2011-12-09 [--lake ./lake] [--last 14]
    warmstart report --last 14
    python jobs/report.py --lake ./lake --run-date 2011-12-09

No Spark: the candidate partition, the catalogue and the published log are read with delta-rs.
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from features.tables import ITEMS, PUBLISHED, USER_CANDIDATES, USER_SEQUENCES
from jobs import runtime

log = logging.getLogger("warmstart.report")


@dataclass(frozen=True)
class ReportArgs(runtime.JobArgs):
    run_date: dt.date | None = None
    last: int | None = None

    def __post_init__(self) -> None:
        if self.run_date is None and self.last is None:
            raise runtime.UsageError("give --run-date D (the run report), --last N (the trend "
                                     "page) or both")
        if self.last is not None and self.last < 2:
            raise runtime.UsageError(f"--last must be >= 2 (a trend needs two nights), got {self.last}")

    @property
    def trend_nights(self) -> int:
        return self.last or self.config.tracking.trend_nights


def parser():
    p = runtime.job_parser("report", "write the run report reports/<run_date>/index.html and/or the trend page")
    p.add_argument("--run-date", type=runtime.parse_date, help="the run date (YYYY-MM-DD): its run report")
    p.add_argument("--last", type=int, help="write reports/trends/index.html over the last N nightly runs "
                                            "(default for the run report's trend section: tracking.trend_nights)")
    return p


def _delta(lake: str, table, partition: tuple[str, str] | None = None, columns: list[str] | None = None):
    """(version, pandas frame) of a table, narrowed to one partition; (None, None) if it does not exist."""
    from deltalake import DeltaTable

    path = f"{lake}/{table.name}"
    if not DeltaTable.is_deltatable(path):
        return None, None
    snap = DeltaTable(path)
    filters = [(partition[0], "=", partition[1])] if partition else None
    return snap.version(), snap.to_pandas(partitions=filters, columns=columns)


def _reports_in(folder: Path, base: Path) -> list[dict[str, Any]]:
    """The HTML reports of one kind with the JSON beside each (if any), as links relative to index.html."""
    out = []
    for html in sorted(folder.rglob("*.html")) if folder.is_dir() else []:
        side = html.with_suffix(".json")
        payload = {}
        if side.is_file():
            try:
                payload = json.loads(side.read_text())
            except json.JSONDecodeError:
                payload = {}
        out.append({"name": str(html.relative_to(folder).with_suffix("")), "href": str(html.relative_to(base)),
                    "json": payload})
    return out


def _quality_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One gate's line from the validate job's JSON (counts per severity and outcome)."""
    data = entry["json"]
    ok = data.get("success_critical")
    counts = data.get("counts") or {}
    crit, warn = counts.get("critical") or {}, counts.get("warning") or {}
    return {"name": data.get("table", entry["name"]), "href": entry["href"],
            "status": "no result" if ok is None else ("passed" if ok else "FAILED"), "ok": ok,
            "rows": data.get("rows"), "checks": sum(crit.values()) + sum(warn.values()) if counts else None,
            "failed_critical": crit.get("failed"), "failed_warning": warn.get("failed"),
            "failures": ", ".join(f.get("check", "?") for f in data.get("failures") or [])}


def candidate_stats(cands: pd.DataFrame, users_with_history: int | None, catalogue_size: int | None,
                    top_n: int = 20, titles: pd.Series | None = None) -> dict[str, Any]:
    """Coverage, score distribution and strategy mix of one run's candidate rows."""
    users = cands["user_id"].nunique()
    items = cands["item_id"].nunique()
    per_user = cands.groupby("user_id").size()
    strategy_users = cands.groupby("strategy")["user_id"].nunique().sort_values(ascending=False)
    score = cands["score"].astype("float64")
    top = (cands.groupby("item_id").size().sort_values(ascending=False).head(top_n)
           .rename("times_recommended").reset_index())
    top["share_of_users"] = top["times_recommended"] / max(users, 1)
    if titles is not None:
        top["title"] = top["item_id"].map(titles).fillna("")
    return {
        "rows": int(len(cands)),
        "users": int(users),
        "k_max": int(cands["rank"].max()) if len(cands) else 0,
        "candidates_per_user_min": int(per_user.min()) if users else 0,
        "candidates_per_user_mean": float(per_user.mean()) if users else 0.0,
        "distinct_items": int(items),
        "users_with_history": users_with_history,
        "user_coverage": (users / users_with_history) if users_with_history else None,
        "catalogue_size": catalogue_size,
        "catalogue_coverage": (items / catalogue_size) if catalogue_size else None,
        "strategy_users": {str(k): int(v) for k, v in strategy_users.items()},
        "strategy_rows": {str(k): int(v) for k, v in cands["strategy"].value_counts().items()},
        "model_versions": sorted(str(v) for v in cands["model_version"].dropna().unique()),
        "score_quantiles": {f"p{int(q * 100)}": float(score.quantile(q)) for q in (0.0, 0.1, 0.5, 0.9, 1.0)}
        if len(score) else {},
        "top_items": top.to_dict("records"),
    }


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def candidate_plots(cands: pd.DataFrame, stats: dict[str, Any]) -> list[dict[str, str]]:
    """PNG plots (base64) of the score distribution per strategy, the strategy mix and score by rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for strategy, group in cands.groupby("strategy"):
        ax.hist(group["score"].astype("float64"), bins=40, alpha=0.6, label=f"{strategy} ({len(group):,})")
    ax.set_xlabel("score (user . item)")
    ax.set_ylabel("candidate rows")
    ax.set_title("Score distribution by strategy")
    ax.legend()
    plots.append({"id": "plot-score-distribution", "title": "Score distribution", "png": _png(fig)})

    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    mix = stats["strategy_users"]
    ax.barh(list(mix), list(mix.values()), color=["#3b6ea5", "#d9822b", "#6aa84f", "#999999"][:len(mix)])
    for y, v in enumerate(mix.values()):
        ax.text(v, y, f" {v:,}", va="center")
    ax.set_xlabel("users")
    ax.set_title("Strategy mix (users per strategy)")
    plots.append({"id": "plot-strategy-mix", "title": "Strategy mix", "png": _png(fig)})

    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    by_rank = cands.groupby(["strategy", "rank"])["score"].mean().unstack(0)
    for strategy in by_rank.columns:
        ax.plot(by_rank.index, by_rank[strategy], marker=".", label=str(strategy))
    ax.set_xlabel("rank")
    ax.set_ylabel("mean score")
    ax.set_title("Mean score by rank")
    ax.legend()
    plots.append({"id": "plot-score-by-rank", "title": "Score by rank", "png": _png(fig)})
    return plots


def _model_section(args: runtime.JobArgs, version: str | None) -> dict[str, Any] | None:
    """The model's validation metrics: ``version``'s, or LATEST's when the run named none."""
    from training import versions as registry

    name = args.config.train.name
    version = version or registry.latest_version(args.models_root, name)
    folder = registry.version_dir(args.models_root, name, version) if version else None
    metrics = _read_json(folder / "metrics.json") if folder else None
    if metrics is None:
        return None
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"name": name, "version": version, "path": str(folder), "metrics": flat}


def _ranker_section(args: runtime.JobArgs) -> dict[str, Any] | None:
    """The LATEST ranker's fit: its version, training nights, retrievers and gain importances (a plot)."""
    from training import versions as registry

    name = args.config.ranker.name
    version = registry.latest_version(args.models_root, name)
    folder = registry.version_dir(args.models_root, name, version) if version else None
    metrics = _read_json(folder / "metrics.json") if folder else None
    if metrics is None:
        return None
    from training.report import importances_png

    lineage, config = _read_json(folder / "lineage.json") or {}, _read_json(folder / "config.json") or {}
    return {"name": name, "version": version, "path": str(folder),
            "nights": ", ".join(lineage.get("training_nights", [])), "retrievers": ", ".join(config.get("retrievers", [])),
            "rounds": metrics.get("rounds"), "features": metrics.get("features"),
            "validation": metrics.get("validation_ndcg@10_in_candidates"),
            "recall": {"candidates_per_user": None, "union_recall": None, **(metrics.get("validation_recall") or {})},
            "importances": importances_png(metrics["importances"]) if metrics.get("importances") else None}


def _backtest_section(args: runtime.JobArgs, run_date: dt.date, base: Path) -> dict[str, Any] | None:
    """The next-week backtest of night D - h (``warmstart backtest --run-dates D-h``, the nightly's on
    training nights), when its ``summary.json`` is there: lists vs. the best tuned baseline."""
    night = run_date - dt.timedelta(days=args.config.nightly.feedback_days)
    folder = Path(args.reports_root) / "backtest" / f"{night}_{night}"
    result = _read_json(folder / "summary.json")
    if not result or "pooled" not in result:
        return None
    best, pooled, c = result["best_baseline"], result["pooled"], result.get("lists_vs_best") or {}
    per_night = (result.get("per_night") or [{}])[0]
    return {"night": night.isoformat(), "href": os.path.relpath(folder / "index.html", base),
            "plot": _backtest_png(night, result),
            "users": result.get("users_judged"), "lists_ndcg": pooled["lists"]["ndcg@10"], "best": best,
            "best_ndcg": pooled[best]["ndcg@10"], "lists": (per_night.get("model_versions") or {}).get("lists"),
            "vs_best": f"{c['diff']:+.4f} (95% CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f})" if c else "-"}


def _backtest_png(night: dt.date, result: dict[str, Any]) -> str | None:
    """The lists and every tuned baseline, NDCG@10 with its 95% bootstrap interval (the backtest
    report's own plot of the night), or None for a summary written before intervals were kept."""
    from training.report import backtest_night_png, lists_first

    pooled = result["pooled"]
    if not all("ndcg@10_ci" in m for m in pooled.values()):
        return None
    return backtest_night_png({"night": night.isoformat(), "users": result.get("users_judged"),
                               "horizon_days": result.get("horizon_days", 7), "methods": lists_first(pooled, pooled)})


def write(args: runtime.JobArgs, run_date: dt.date, nightly: dict[str, Any] | None = None) -> str:
    """Write ``reports/<run_date>/index.html``; returns its path. ``nightly`` is the nightly flow's
    summary (stage table); without it the ``nightly.json`` beside the report is used if present."""
    d = run_date.isoformat()
    base = Path(args.reports_root) / d
    base.mkdir(parents=True, exist_ok=True)
    if nightly is None and (base / "nightly.json").is_file():
        nightly = json.loads((base / "nightly.json").read_text())
    if nightly is None:   # the reports folder was cleaned or moved: the lineage record has the same summary
        from jobs import trends

        nightly = trends.nightly_summaries(args.lake, args.reports_root).get(d)

    quality = [_quality_row(e) for e in _reports_in(base / "quality", base)]
    model_reports = _reports_in(base / "model", base)   # leave-last-out diagnostics of a hand-run `evaluate`
    candidate_reports = _reports_in(base / "candidates", base)
    publish_gate = (_read_json(base / "candidates" / "gate.json") or {}).get("gate")

    cand_version, cands = _delta(args.lake, USER_CANDIDATES, ("run_date", d))
    stats, plots = None, []
    if cands is not None and len(cands):
        _, seqs = _delta(args.lake, USER_SEQUENCES, ("as_of_date", d), columns=["user_id"])
        _, items = _delta(args.lake, ITEMS, columns=["item_id", "title"])
        titles = items.set_index("item_id")["title"] if items is not None else None
        stats = candidate_stats(cands, int(seqs["user_id"].nunique()) if seqs is not None else None,
                                int(len(items)) if items is not None else None,
                                args.config.nightly.report_top_items, titles)
        plots = candidate_plots(cands, stats)
    _, published = _delta(args.lake, PUBLISHED)
    published_rows = []
    if published is not None and len(published):
        mine = published[published["run_date"].astype(str) == d].sort_values("published_at", ascending=False)
        published_rows = mine.astype(str).to_dict("records")

    model_version = ((nightly or {}).get("model") or {}).get("version") or ((stats or {}).get("model_versions") or [None])[-1]
    trend, stage_chart = trend_context(args, run_date, nightly, getattr(args, "trend_nights", None))
    html = _templates().get_template("run_report.html.j2").render(
        trend=trend, stage_chart=stage_chart,
        run_date=d, generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        lake=args.lake, nightly=nightly, feedback=(nightly or {}).get("delayed_feedback"),
        quality=quality, model=_model_section(args, model_version), ranker=_ranker_section(args), backtest=_backtest_section(args, run_date, base),
        model_reports=model_reports, candidate_reports=candidate_reports, stats=stats, plots=plots,
        publish_gate=publish_gate,
        candidates_version=cand_version, published=published_rows, code_version=runtime.code_version())
    out = str(base / "index.html")
    runtime.write_text(out, html)
    return out


def _templates():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("jobs", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["num"] = _num
    return env


def trend_context(args: runtime.JobArgs, run_date: dt.date | None, nightly: dict[str, Any] | None,
                  last: int | None) -> tuple[dict[str, Any], str | None]:
    """(the trend section's data over the last ``last`` nightly runs up to ``run_date`` with ``nightly``
    as that night's summary, the stage-duration chart of that night against the others' median)."""
    from jobs import trends

    last = last or args.config.tracking.trend_nights
    summaries = trends.nightly_summaries(args.lake, args.reports_root)
    until = run_date.isoformat() if run_date else None
    if nightly is not None and until:
        summaries[until] = nightly
        summaries = dict(sorted(summaries.items()))
    window = trends.last_nights(summaries, last, until)
    trend = trends.build(window, args.models_root, args.config.train.name)
    trend["panels"] = trends.panels(trend) if len(trend["nights"]) > 1 else []
    tonight = window.get(until) if until else None
    others = [s for d, s in window.items() if d != until]
    return trend, trends.stage_chart(tonight, others) if tonight else None


def write_trends(args: runtime.JobArgs, last: int, run_date: dt.date | None = None,
                 nightly: dict[str, Any] | None = None) -> str:
    """``reports/trends/index.html`` and ``trends.json`` over the last ``last`` nightly runs up to
    ``run_date`` (``nightly``: that night's summary, for the nightly run that is still writing it)."""
    from jobs import trends

    trend, _ = trend_context(args, run_date, nightly, last)
    base = Path(args.reports_root) / "trends"
    html = _templates().get_template("trends.html.j2").render(
        trend=trend, lake=args.lake, window=trends.night_window(run_date, last),
        generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    runtime.write_json(str(base / "trends.json"), {k: trend[k] for k in ("nights", "rows", "marks")})
    out = str(base / "index.html")
    runtime.write_text(out, html)
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def run(args: ReportArgs) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.run_date is not None:
        out.update(run_date=args.run_date.isoformat(), path=write(args, args.run_date))
    if args.last is not None:
        out["trends"] = write_trends(args, args.last, args.run_date)
    return out


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("report", parser(), ReportArgs, run, argv, needs_spark=False)


if __name__ == "__main__":
    sys.exit(main())
