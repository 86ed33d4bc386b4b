"""The candidates gate's report page: ``reports/<run_date>/candidates/gate.html`` (and the ``gate`` entry
of ``gate.json``, which the run report reads), written by ``jobs/publish.py``.

The gate itself is the ``candidates/user_candidates`` suite in ``features/suites.py``, run by Great
Expectations through ``features.quality.validate_table``: this module turns its result into the table
of checks a person reads (:func:`gate_summary`), adds what the page shows besides (strategy mix, score
distribution, most recommended items: :func:`report_frames`, :func:`plots`) and renders the page.

Pure: :func:`report_frames` returns small aggregate DataFrames (the job collects them); the rest works
on plain values.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from features.quality import FAILED, SKIPPED, ValidationResult
from features.suites import CRITICAL

TEMPLATES = Path(__file__).with_name("templates")


def gate_summary(result: ValidationResult) -> dict[str, Any]:
    """The gate as the page and the run report read it: ``passed`` (no critical check failed),
    ``failed`` (those checks, in suite order: why nothing was published), ``warnings``, one row per
    evaluated check (``name, severity, status, passed, observed, threshold, detail, samples``) and the
    skipped checks with the reason."""
    evaluated = [r for r in result.results if r.status != SKIPPED]
    return {
        "passed": result.success_critical,
        "failed": [r.check for r in evaluated if r.status == FAILED and r.severity == CRITICAL],
        "warnings": [r.check for r in evaluated if r.status == FAILED and r.severity != CRITICAL],
        "checks": [{"name": r.check, "severity": r.severity, "status": r.status, "passed": r.status != FAILED,
                    "observed": r.observed, "threshold": expected_range(r.expected_min, r.expected_max),
                    "detail": f"{r.description} ({r.detail})", "samples": r.sample_values} for r in evaluated],
        "skipped": [{"name": r.check, "detail": r.detail} for r in result.results if r.status == SKIPPED],
    }


def expected_range(lo: Any, hi: Any) -> str:
    """``= 0``, ``>= 0.99``, ``<= 1``, ``[0, 0.001]``: the range GX expected a check's statistic in."""
    def text(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    if lo is not None and lo == hi:
        return f"= {text(lo)}"
    if hi is None:
        return f">= {text(lo)}"
    if lo is None:
        return f"<= {text(hi)}"
    return f"[{text(lo)}, {text(hi)}]"


def report_frames(candidates: DataFrame, bins: int = 30, top_items: int = 20) -> dict[str, DataFrame]:
    """Small aggregate frames for the report: strategy mix, score histogram and quantiles per strategy,
    most recommended items, and the totals (rows, users, distinct items recommended)."""
    bounds = candidates.groupBy("strategy").agg(F.min("score").alias("lo"), F.max("score").alias("hi"))
    width = (F.col("hi") - F.col("lo")) / bins
    bucket = F.when(width > 0, F.least(F.floor((F.col("score") - F.col("lo")) / width), F.lit(bins - 1))).otherwise(0)
    histogram = (candidates.join(bounds, "strategy")
                 .groupBy("strategy", bucket.cast("int").alias("bin"), "lo", "hi").count()
                 .orderBy("strategy", "bin"))
    mix = (candidates.groupBy("strategy").agg(F.countDistinct("user_id").alias("users"), F.count("*").alias("rows"),
                                              F.percentile_approx("score", [0.0, 0.05, 0.5, 0.95, 1.0]).alias("score_quantiles"))
           .orderBy("strategy"))
    top = candidates.groupBy("item_id").agg(F.count("*").alias("users"), F.avg("rank").alias("mean_rank")) \
        .orderBy(F.desc("users"), "item_id").limit(top_items)
    totals = candidates.agg(F.count("*").alias("rows"), F.countDistinct("user_id").alias("users"),
                            F.countDistinct("item_id").alias("distinct_items"))
    return {"histogram": histogram, "mix": mix, "top_items": top, "totals": totals}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(histogram: list[dict], mix: list[dict], bins: int = 30) -> dict[str, str]:
    """PNG (base64) plots: score histogram per strategy, strategy mix by users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    strategies = sorted({h["strategy"] for h in histogram})
    if strategies:
        fig, axes = plt.subplots(1, len(strategies), figsize=(5 * len(strategies), 3), squeeze=False)
        for ax, strategy in zip(axes[0], strategies):
            rows = [h for h in histogram if h["strategy"] == strategy]
            lo, hi = rows[0]["lo"], rows[0]["hi"]
            width = (hi - lo) / bins if hi > lo else 1.0
            ax.bar([lo + (r["bin"] + 0.5) * width for r in rows], [r["count"] for r in rows], width=width * 0.9)
            ax.set_title(f"score, strategy={strategy}")
            ax.set_xlabel("score")
            ax.set_ylabel("candidate rows")
        out["score_histogram"] = _png(fig)
        plt.close(fig)
    if mix:
        fig, ax = plt.subplots(figsize=(5, 2.5))
        ax.barh([m["strategy"] for m in mix], [m["users"] for m in mix])
        ax.set_xlabel("users")
        ax.set_title("strategy mix")
        out["strategy_mix"] = _png(fig)
        plt.close(fig)
    return out


def render_html(payload: dict[str, Any], images: dict[str, str]) -> str:
    """The offline report page (inline CSS, images embedded)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("candidates_gate.html.j2").render(p=payload, images=images)
