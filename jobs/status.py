"""What the lake holds now: the latest job runs with their lineage (the Delta versions each read and
wrote), the data-quality gates of the latest run date, the delayed feedback of the recent nights (how
the lists published ``nightly.feedback_days`` earlier did on the purchases since; jobs/nightly.py), and
the published candidate sets that online services load. Reads ``<lake>/_runs/*.json`` and
``candidates/published`` with delta-rs: no Spark.

    warmstart status [--lake ./lake] [--runs 10] [--run-date D]
    python jobs/status.py --lake ./lake --summary-json status.json
"""
from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from typing import Any

from features.tables import PUBLISHED
from jobs import runtime


@dataclass(frozen=True)
class StatusArgs(runtime.JobArgs):
    runs: int = 10
    run_date: dt.date | None = None


def parser():
    p = runtime.job_parser("status", "latest runs, gates and published candidates")
    p.add_argument("--runs", type=int, default=10, help="how many of the latest job runs to list (default 10)")
    p.add_argument("--run-date", type=runtime.parse_date,
                   help="show the lineage and gates of this run date (default: the latest run date)")
    return p


def _versions(mapping: dict[str, Any]) -> str:
    """``table@version`` for the Delta tables (and model versions) in a lineage mapping; other entries
    (input file lists, formats) stay in the record."""
    parts = [f"{k}@{v}" for k, v in sorted(mapping.items())
             if "/" in k and isinstance(v, (int, str)) and not isinstance(v, bool)]
    parts += [f"{k}: {len(v)}" for k, v in sorted(mapping.items()) if isinstance(v, list)]   # ingest's input files
    return ", ".join(parts) or "-"


def _table(rows: list[list[Any]], header: list[str]) -> list[str]:
    cells = [header] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def published_sets(lake: str) -> list[dict[str, Any]]:
    """Rows of ``candidates/published``, newest first (empty if nothing was published yet)."""
    from deltalake import DeltaTable

    path = f"{lake}/{PUBLISHED.name}"
    if not DeltaTable.is_deltatable(path):
        return []
    frame = DeltaTable(path).to_pandas()
    if frame.empty:
        return []
    frame = frame.sort_values("published_at", ascending=False)
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


FEEDBACK_FIGURES = (("ndcg@10", "NDCG@10"), ("recall@20", "Recall@20"), ("hit@10", "hit rate@10"), ("mrr", "MRR"),
                    ("explore_ndcg@10", "explore NDCG@10"))


def feedback_line(feedback: dict[str, Any]) -> str:
    """A night's delayed feedback in one line: ``lists published for 2024-01-24 (model V): NDCG@10 0.1234
    ... on 22 customers``, or why there are no figures."""
    night = feedback.get("published_run_date")
    if not feedback.get("published"):
        return feedback.get("note") or f"nothing was published for {night}"
    head = f"lists published for {night} (model {feedback.get('model_version')}): "
    if not feedback.get("users_judged"):
        return head + (feedback.get("note") or "no customer to judge yet")
    figures = "  ".join(f"{label} {_figure(feedback.get(key))}" for key, label in FEEDBACK_FIGURES)
    return head + f"{figures} on {feedback['users_judged']:,} customers"


def _figure(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _feedback_rows(nightly: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run date, the delayed feedback of its latest nightly record that has one (a run stopped before
    the step, or recorded before the step existed, has none), newest date first."""
    latest = {r.get("run_date"): (r.get("summary") or {}).get("delayed_feedback") for r in nightly
              if (r.get("summary") or {}).get("delayed_feedback")}
    return [{"run_date": d, **f} for d, f in sorted(latest.items(), key=lambda x: str(x[0]), reverse=True)]


def _gate_table(record: dict[str, Any]) -> str:
    summary = record.get("summary") or {}
    return str(summary.get("table") or next(iter(record.get("inputs") or {}), "?"))


def collect(lake: str, runs: int = 10, run_date: dt.date | None = None) -> dict[str, Any]:
    """The status as plain values (what the command prints and writes to --summary-json)."""
    records = runtime.read_lineage(lake)
    dates = sorted({r["run_date"] for r in records if r.get("run_date")})
    focus = run_date.isoformat() if run_date else (dates[-1] if dates else None)
    of_date = [r for r in records if r.get("run_date") == focus]
    latest_per_job: dict[str, dict[str, Any]] = {}
    gates: dict[str, dict[str, Any]] = {}
    for r in of_date:   # oldest first, so the last one per job / gate wins
        if r.get("job") == "validate":
            gates[_gate_table(r)] = r
        else:
            latest_per_job[r.get("job", "?")] = r
    nightly = [r for r in records if r.get("job") == "nightly"]
    return {
        "lake": lake,
        "run_dates": dates,
        "focus_run_date": focus,
        "latest_runs": [{"recorded_at": r.get("recorded_at"), "job": r.get("job"), "run_date": r.get("run_date"),
                         "status": r.get("status"), "run_id": r.get("run_id")} for r in records[-runs:][::-1]],
        "lineage": [{"job": job, "status": r.get("status"), "run_id": r.get("run_id"), "inputs": r.get("inputs") or {},
                     "outputs": r.get("outputs") or {}, "recorded_at": r.get("recorded_at")}
                    for job, r in latest_per_job.items() if job != "nightly"],
        "gates": {t: {"status": r.get("status"), "verdict": (r.get("summary") or {}).get("verdict"),
                      "report": (r.get("summary") or {}).get("report_html"), "run_id": r.get("run_id")}
                  for t, r in sorted(gates.items())},
        "nightly": [{"run_date": r.get("run_date"), "status": r.get("status"), "recorded_at": r.get("recorded_at"),
                     "model_version": ((r.get("summary") or {}).get("model") or {}).get("version"),
                     "total_seconds": (r.get("summary") or {}).get("total_seconds"),
                     "error": (r.get("summary") or {}).get("error")} for r in nightly[-runs:][::-1]],
        "delayed_feedback": _feedback_rows(nightly)[:runs],
        "published": published_sets(lake),
    }


def render(status: dict[str, Any]) -> str:
    lines = [f"== warmstart status: lake {status['lake']} =="]
    if not status["run_dates"]:
        return "\n".join(lines + ["  no runs recorded under _runs/ yet"])
    lines.append(f"run dates: {', '.join(status['run_dates'][-10:])}")
    if status["nightly"]:
        lines += ["", "nightly runs (newest first):"]
        lines += _table([[n["run_date"], n["status"], n["model_version"], n["total_seconds"], n["recorded_at"]]
                         for n in status["nightly"]], ["run_date", "status", "model", "seconds", "recorded_at"])
    if status["delayed_feedback"]:
        lines += ["", ("delayed feedback (the lists published nightly.feedback_days before each night, on the "
                       "purchases since; newest first):")]
        lines += [f"  {f['run_date']}  {feedback_line(f)}" for f in status["delayed_feedback"]]
    lines += ["", "latest job runs (newest first):"]
    lines += _table([[r["recorded_at"], r["job"], r["run_date"], r["status"], r["run_id"]] for r in status["latest_runs"]],
                    ["recorded_at", "job", "run_date", "status", "run_id"])
    lines += ["", f"lineage of {status['focus_run_date']} (latest run of each job: Delta versions read -> written):"]
    lines += _table([[x["job"], x["status"], _versions(x["inputs"]), _versions(x["outputs"])] for x in status["lineage"]],
                    ["job", "status", "read", "wrote"])
    lines += ["", f"gates of {status['focus_run_date']}:"]
    if status["gates"]:
        lines += _table([[t, g["verdict"], g["report"]] for t, g in status["gates"].items()],
                        ["table", "verdict", "report"])
    else:
        lines.append("  none recorded")
    lines += ["", "published candidate sets (newest first; online services load the first):"]
    if status["published"]:
        lines += _table([[p["run_date"], p["table_version"], p["model_version"], p["users"], p["rows"], p["published_at"]]
                         for p in status["published"][:5]],
                        ["run_date", "table_version", "model", "users", "rows", "published_at"])
    else:
        lines.append("  nothing published yet")
    return "\n".join(lines)


def run(args: StatusArgs) -> dict[str, Any]:
    if args.runs < 1:
        raise runtime.UsageError(f"--runs must be >= 1, got {args.runs}")
    status = collect(args.lake, args.runs, args.run_date)
    print(render(status))
    current = status["published"][0] if status["published"] else {}
    feedback = status["delayed_feedback"][0] if status["delayed_feedback"] else None
    return {"run_dates": len(status["run_dates"]), "latest_run_date": status["focus_run_date"],
            "latest_nightly_status": status["nightly"][0]["status"] if status["nightly"] else None,
            "latest_delayed_feedback": feedback_line(feedback) if feedback else None,
            "gates_passed": sum(g["verdict"] == "passed" for g in status["gates"].values()),
            "gates": len(status["gates"]),
            "published_run_date": current.get("run_date"), "published_table_version": current.get("table_version"),
            "published_users": current.get("users")}


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("status", parser(), StatusArgs, run, argv, needs_spark=False)


if __name__ == "__main__":
    sys.exit(main())
