"""Trends across nights: one row of figures per nightly run date, read from what the runs already write
(the nightly lineage records ``<lake>/_runs/nightly-*.json``, else ``reports/<date>/nightly.json``; the
model registry's ``metrics.json`` for a night that reused its model), the nights outside their usual range
marked, and the plots as inline SVG. ``warmstart report --last N`` writes ``reports/trends/index.html``
(and ``trends.json`` beside it); the run report (jobs/report.py) embeds the same section and a chart of
tonight's stage durations against the median of the last N runs.

A night is marked on a figure when it lies more than ``3 x 1.4826 x MAD`` from the median of the *other*
nights in the window (a robust z-score above 3). Median and MAD rather than mean and standard deviation:
one bad night among fourteen drags the mean and inflates the deviation enough to hide itself, and the
median and MAD do not move until half the nights are odd. Leave-one-out for the same reason. 1.4826 makes
the MAD estimate the standard deviation of normal noise, so 3 is the familiar three sigma; where the MAD
is 0 (a series of few distinct values: 20 s, 21 s, 20 s...) 1.2533 x the mean absolute deviation stands
in. The scale never drops below 1% of the median, so a perfectly steady series (a catalogue that never changes) is not
marked for a rounding difference; fewer than four other nights with the figure mark nothing.

Local lakes only (lineage records are read from the file system, like ``warmstart status``).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

THRESHOLD = 3.0          # robust z-score above which a night is marked
MAD_TO_SIGMA = 1.4826    # MAD of normal noise x 1.4826 = its standard deviation
MEANAD_TO_SIGMA = 1.2533  # the same for the mean absolute deviation (used where the MAD is 0)
MIN_SCALE_SHARE = 0.01   # the scale is at least 1% of the median
MIN_OTHER_NIGHTS = 4     # fewer nights with the figure: no usual range to speak of


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    panel: str            # figures of one panel share a plot
    get: Callable[[dict[str, Any]], float | None]
    marked: bool = True   # False: plotted, never marked (the total: training nights are longer by design)


def _count(name: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda s: (s.get("counts") or {}).get(name)


def _quarantine_rate(s: dict[str, Any]) -> float | None:
    counts = s.get("counts") or {}
    read, quarantined = counts.get("records_read"), counts.get("quarantined")
    return quarantined / read if read and quarantined is not None else None


def _gate_total(field: str) -> Callable[[dict[str, Any]], float | None]:
    def get(s: dict[str, Any]) -> float | None:
        values = [g.get(field) for g in (s.get("gates") or {}).values() if g.get(field) is not None]
        return float(sum(values)) if values else None
    return get


def _feedback(metric: str) -> Callable[[dict[str, Any]], float | None]:
    def get(s: dict[str, Any]) -> float | None:
        fb = s.get("delayed_feedback") or {}
        return fb.get(metric) if fb.get("users_judged") else None
    return get


FEEDBACK_PANEL = "Delayed feedback: NDCG@10 and hit rate@10 of the lists published h days before"
FIGURES = (
    Figure("records_read", "records read", "Rows read, inserted and quarantined (ingest)", _count("records_read")),
    Figure("events_inserted", "events inserted", "Rows read, inserted and quarantined (ingest)", _count("events_inserted")),
    Figure("quarantined", "quarantined", "Rows read, inserted and quarantined (ingest)", _count("quarantined")),
    Figure("quarantine_rate", "quarantine rate", "Quarantine rate (quarantined / read)", _quarantine_rate),
    Figure("rows_user_features", "user_features", "Feature rows (as of the night)", _count("rows_user_features")),
    Figure("rows_item_features", "item_features", "Feature rows (as of the night)", _count("rows_item_features")),
    Figure("rows_user_sequences", "user_sequences", "Feature rows (as of the night)", _count("rows_user_sequences")),
    Figure("gate_warnings", "failed warning checks", "Data-quality gates: failed checks", _gate_total("warning_failed")),
    Figure("gate_critical", "failed critical checks", "Data-quality gates: failed checks", _gate_total("critical_failed")),
    Figure("model_val_ndcg10", "model validation NDCG@10", "Model validation NDCG@10 (model selection)",
           lambda s: ((s.get("model") or {}).get("metrics") or {}).get("val_ndcg@10")),
    Figure("feedback_ndcg10", "delayed-feedback NDCG@10", FEEDBACK_PANEL, _feedback("ndcg@10")),
    Figure("feedback_hit10", "delayed-feedback hit rate@10", FEEDBACK_PANEL, _feedback("hit@10")),
    Figure("candidate_coverage", "user coverage", "Candidate coverage (published users / active users)",
           lambda s: (s.get("published") or {}).get("coverage")),
    Figure("total_seconds", "all stages", "Stage times (seconds)", lambda s: s.get("total_seconds"), marked=False),
)


# The nightly stage each job is, for nights whose jobs ran one by one (Airflow's tasks, spark-submits by hand).
JOB_STAGES = {"ingest": "ingest", "features": "features", "train": "train", "train-ranker": "train_ranker",
              "score": "score", "publish": "publish"}


def summary_from_jobs(night: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A nightly-shaped summary of a night with no nightly run, from its jobs' lineage records (the
    latest run of each job, of each table for the gates): the counts, gates, model metrics, publish
    coverage and stage times the figures read. No delayed feedback: only the nightly computes it."""
    latest: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: r.get("recorded_at", "")):
        summary = r.get("summary")
        if r.get("run_date") != night or not isinstance(summary, dict):
            continue
        if r.get("job") == "validate" and summary.get("table"):
            latest[f"gate {summary['table']}"] = r
        elif r.get("job") in JOB_STAGES:
            latest[JOB_STAGES[r["job"]]] = r
    if not latest:
        return None
    part = {stage: r["summary"] for stage, r in latest.items()}
    counts = {k: v for k, v in {**part.get("ingest", {}), **part.get("features", {})}.items()
              if isinstance(v, int) and not isinstance(v, bool)}
    gates = {stage.removeprefix("gate "): {k: g.get(k) for k in ("rows", "critical_failed", "warning_failed")}
             for stage, g in part.items() if stage.startswith("gate ")}
    train = part.get("train", {})
    stages = [{"stage": stage, "status": r.get("status", "succeeded"), "seconds": r.get("seconds"), "rows": "",
               "note": f"run {r.get('run_id')} (a job of its own)"}
              for stage, r in latest.items() if r.get("seconds") is not None]
    failed = sorted(stage for stage, r in latest.items() if r.get("status", "succeeded") != "succeeded")
    return {"run_date": night, "status": "failed" if failed else "succeeded", "stages": stages,
            "error": f"failed: {', '.join(failed)}" if failed else None, "counts": counts, "gates": gates,
            "total_seconds": round(sum(s["seconds"] for s in stages), 1),
            "model": {"version": train.get("version"), "trained_tonight": bool(train) and not train.get("reused", False),
                      "metrics": {k: v for k, v in train.items() if "@" in k and isinstance(v, (int, float))}},
            "published": part.get("publish", {}), "delayed_feedback": None}


def nightly_summaries(lake: str, reports_root: str) -> dict[str, dict[str, Any]]:
    """The latest nightly summary per run date: from the lineage records, else ``reports/<d>/nightly.json``,
    else (a night whose jobs ran one by one, as Airflow's tasks do) one put together from its jobs' records."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    jobs: list[dict[str, Any]] = []
    for path in sorted(Path(lake, "_runs").glob("*.json")):
        record = _read(path)
        if record and record.get("job") != "nightly":
            jobs.append(record)
            continue
        if record and record.get("run_date") and isinstance(record.get("summary"), dict):
            stamp = record.get("recorded_at", "")
            if record["run_date"] not in found or stamp >= found[record["run_date"]][0]:
                found[record["run_date"]] = (stamp, record["summary"])
    for path in sorted(Path(reports_root).glob("*/nightly.json")):
        summary = _read(path)
        if summary and summary.get("run_date") and summary["run_date"] not in found:
            found[summary["run_date"]] = ("", summary)
    by_night: dict[str, list[dict[str, Any]]] = {}
    for r in jobs:
        if r.get("run_date") and r["run_date"] not in found:
            by_night.setdefault(r["run_date"], []).append(r)
    for night, records in by_night.items():
        composed = summary_from_jobs(night, records)
        if composed:
            found[night] = ("", composed)
    return {d: s for d, (_, s) in sorted(found.items())}


def with_model_metrics(summary: dict[str, Any], models_root: str, name: str) -> dict[str, Any]:
    """A night that reused its model has no validation figures in its summary: take its version's."""
    model = summary.get("model") or {}
    if (model.get("metrics") or {}).get("val_ndcg@10") is not None or not model.get("version"):
        return summary
    metrics = _read(Path(models_root) / name / model["version"] / "metrics.json") or {}
    return {**summary, "model": {**model, "metrics": {**(model.get("metrics") or {}),
                                                       "val_ndcg@10": metrics.get("val_ndcg@10")}}}


def stage_seconds(summary: dict[str, Any]) -> dict[str, float]:
    """Seconds per stage that ran (skipped stages left out: their 0 s would pull the median down)."""
    return {s["stage"]: float(s["seconds"]) for s in summary.get("stages") or []
            if s.get("status") != "skipped" and s.get("seconds") is not None}


def table(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """night -> figure key (and ``stage:<name>``) -> value."""
    rows = {}
    for night, s in summaries.items():
        row = {f.key: _number(f.get(s)) for f in FIGURES}
        row.update({f"stage:{k}": v for k, v in stage_seconds(s).items()})
        rows[night] = row
    return rows


def robust_flags(values: list[float | None]) -> list[dict[str, float] | None]:
    """For each value: None, or {z, median, scale} when it is outside the others' usual range."""
    out: list[dict[str, float] | None] = []
    for i, x in enumerate(values):
        others = [v for j, v in enumerate(values) if j != i and v is not None]
        if x is None or len(others) < MIN_OTHER_NIGHTS:
            out.append(None)
            continue
        med = statistics.median(others)
        mad = statistics.median(abs(v - med) for v in others)
        # a series of few distinct values (20 s, 21 s, 20 s...) has a MAD of 0: the mean absolute
        # deviation, scaled the same way for normal noise, takes over
        spread = MAD_TO_SIGMA * mad if mad else MEANAD_TO_SIGMA * statistics.fmean(abs(v - med) for v in others)
        scale = max(spread, MIN_SCALE_SHARE * abs(med), 1e-12)
        z = (x - med) / scale
        out.append({"z": round(z, 2), "median": med, "scale": scale} if abs(z) > THRESHOLD else None)
    return out


def build(summaries: dict[str, dict[str, Any]], models_root: str, model_name: str) -> dict[str, Any]:
    """The trend data of these nights: rows, marked nights per figure and the list of marks."""
    summaries = {d: with_model_metrics(s, models_root, model_name) for d, s in summaries.items()}
    rows = table(summaries)
    nights = list(rows)
    keys = [f.key for f in FIGURES] + sorted({k for r in rows.values() for k in r if k.startswith("stage:")})
    unmarked = {f.key for f in FIGURES if not f.marked}
    flags = {k: robust_flags([rows[n].get(k) for n in nights]) if k not in unmarked else [None] * len(nights)
             for k in keys}
    labels = {f.key: f.label for f in FIGURES}
    marks = [{"night": n, "figure": labels.get(k, k.replace("stage:", "stage ") + " seconds"), "key": k,
              "value": rows[n][k], "median": f["median"], "z": f["z"]}
             for k in keys for n, f in zip(nights, flags[k]) if f]
    return {"nights": nights, "rows": rows, "keys": keys, "flags": flags,
            "marks": sorted(marks, key=lambda m: (m["night"], m["key"]))}


def last_nights(summaries: dict[str, dict[str, Any]], last: int, until: str | None = None) -> dict[str, dict[str, Any]]:
    kept = [d for d in summaries if until is None or d <= until]
    return {d: summaries[d] for d in kept[-last:]}


# --- plots (inline SVG) ---------------------------------------------------------------------------------

def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]     # no XML prolog or DOCTYPE inside HTML


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"   # text stays text: small, selectable
    matplotlib.rcParams["svg.hashsalt"] = "warmstart"   # stable element ids: the same data, the same page
    import matplotlib.pyplot as plt

    return plt


def panels(trend: dict[str, Any]) -> list[dict[str, str]]:
    """One SVG plot per panel (figures sharing a panel share axes); marked nights circled in red."""
    plt = _pyplot()
    nights, rows, flags = trend["nights"], trend["rows"], trend["flags"]
    groups: dict[str, list[tuple[str, str]]] = {}
    for f in FIGURES:
        groups.setdefault(f.panel, []).append((f.key, f.label))
    stage_keys = [k for k in trend["keys"] if k.startswith("stage:")]
    groups["Stage times (seconds)"] += [(k, k.removeprefix("stage:")) for k in stage_keys]
    out = []
    x = list(range(len(nights)))
    for title, members in groups.items():
        if not any(rows[n].get(k) is not None for k, _ in members for n in nights):
            continue
        fig, ax = plt.subplots(figsize=(6.4, 2.6))
        for key, label in members:
            ys = [rows[n].get(key) for n in nights]
            if all(y is None for y in ys):
                continue
            ax.plot(x, [float("nan") if y is None else y for y in ys], marker=".", label=label)
            bad = [(i, y) for i, (y, f) in enumerate(zip(ys, flags[key])) if f]
            if bad:
                ax.scatter([i for i, _ in bad], [y for _, y in bad], s=140, facecolors="none",
                           edgecolors="#b00020", linewidths=2, zorder=5)
        ax.set_xticks(x, [n[5:] for n in nights], rotation=45 if len(nights) > 8 else 0, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(members) > 1:
            ax.legend(fontsize=7, ncol=2)
        out.append({"id": "trend-" + "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")[:40],
                    "title": title, "svg": _svg(fig)})
    return out


def stage_medians(history: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds per stage over the runs in which it ran."""
    runs = [stage_seconds(s) for s in history]
    return {stage: statistics.median(r[stage] for r in runs if stage in r) for stage in {k for r in runs for k in r}}


def stage_chart(tonight: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
    """Tonight's seconds per stage (bars) against the median of the other runs (black ticks), as SVG."""
    mine = stage_seconds(tonight)
    if not mine:
        return None
    plt = _pyplot()
    stages = [s["stage"] for s in tonight.get("stages") or [] if s["stage"] in mine]
    by_stage = stage_medians(history)
    medians = [by_stage.get(s) for s in stages]
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(stages) + 1.0))
    y = list(range(len(stages)))
    ax.barh(y, [mine[s] for s in stages], color="#3b6ea5", label="tonight")
    ticks = [(i, m) for i, m in zip(y, medians) if m is not None]
    if ticks:
        ax.scatter([m for _, m in ticks], [i for i, _ in ticks], marker="|", s=300, color="black", linewidths=2,
                   label=f"median of the last {len(history)} runs", zorder=5)
    ax.set_yticks(y, stages, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Stage durations: tonight vs. the median of the last runs" if ticks else
                 "Stage durations tonight (no earlier nightly run to compare with)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def night_window(run_date: dt.date | None, last: int) -> str:
    return f"the last {last} nightly runs" + (f" up to {run_date}" if run_date else "")
