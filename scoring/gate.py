"""The candidates' quality gate: is one run_date partition of ``candidates/user_candidates`` fit to be
served? Run by ``jobs/publish.py`` before it moves the published pointer; a failed gate publishes
nothing (exit 3) and leaves ``reports/<run_date>/candidates/gate.json|.html``.

Checks (each one a :class:`Check` with the observed value and its threshold):
- ``not_empty``: the partition has rows;
- ``rows_per_user``: no user has more than ``expected = min(K, catalogue items)`` rows, and the share
  of users with fewer (a "short list") is at most ``publish.max_short_list_share``. A short list is
  legitimate only when a user's exclusions leave fewer than K eligible items; the table does not
  record exclusions, so the gate bounds how often that may happen instead of forbidding it;
- ``no_repeated_items``: no item twice in one user's list;
- ``ranks_1_to_n``: each user's ranks are exactly 1..n;
- ``scores_non_increasing``: scores never rise with rank, and none is NaN;
- ``coverage``: the share of active users (features of the run date) with candidates is at least
  ``publish.min_coverage``; candidates for users who are not active count as ``unknown_users`` (a failure).

Pure: :func:`gate_stats` and :func:`report_frames` return DataFrames (aggregates; the job collects
them), :func:`evaluate` and :func:`render_html` work on plain values.
"""
from __future__ import annotations

import base64
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    observed: Any
    threshold: Any
    detail: str


@dataclass(frozen=True)
class GateResult:
    passed: bool
    checks: list[Check]

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed, "checks": [asdict(c) for c in self.checks]}


def per_user(candidates: DataFrame) -> DataFrame:
    """One row per user: rows, distinct items, rank bounds, and how many times the score rose."""
    by_rank = Window.partitionBy("user_id").orderBy("rank")
    rose = (F.col("score") > F.lag("score").over(by_rank)).cast("int")
    return (candidates.select("user_id", "rank", "item_id", "score", F.coalesce(rose, F.lit(0)).alias("rose"))
            .groupBy("user_id")
            .agg(F.count("*").alias("rows"),
                 F.countDistinct("item_id").alias("distinct_items"),
                 F.countDistinct("rank").alias("distinct_ranks"),
                 F.min("rank").alias("min_rank"), F.max("rank").alias("max_rank"),
                 F.sum("rose").alias("score_rises"),
                 F.sum(F.isnan("score").cast("int")).alias("nan_scores")))


def gate_stats(candidates: DataFrame, active_users: DataFrame, expected_per_user: int) -> DataFrame:
    """One row of counts for :func:`evaluate`. ``candidates``: one run_date partition;
    ``active_users``: ``user_id`` of every active user of that date."""
    users = per_user(candidates)
    active = active_users.select("user_id").distinct().withColumn("is_active", F.lit(True))
    joined = users.join(active, "user_id", "full_outer")
    has_rows = F.col("rows").isNotNull()
    count_if = lambda cond: F.sum(F.when(cond, 1).otherwise(0)).cast("long")  # noqa: E731
    return joined.agg(
        count_if(has_rows).alias("users"),
        F.coalesce(F.sum("rows"), F.lit(0)).cast("long").alias("rows"),
        count_if(F.col("is_active")).alias("active_users"),
        count_if(F.col("is_active") & has_rows).alias("covered_users"),
        count_if(has_rows & F.col("is_active").isNull()).alias("unknown_users"),
        count_if(F.col("rows") > expected_per_user).alias("users_over_k"),
        count_if(F.col("rows") < expected_per_user).alias("users_short"),
        count_if(F.col("distinct_items") < F.col("rows")).alias("users_repeated_item"),
        count_if((F.col("min_rank") != 1) | (F.col("max_rank") != F.col("rows"))
                 | (F.col("distinct_ranks") != F.col("rows"))).alias("users_bad_ranks"),
        count_if(F.col("score_rises") > 0).alias("users_score_rises"),
        F.coalesce(F.sum("nan_scores"), F.lit(0)).cast("long").alias("nan_scores"),
    )


def evaluate(stats: dict[str, int], *, expected_per_user: int, min_coverage: float,
             max_short_list_share: float) -> GateResult:
    users = stats["users"]
    coverage = stats["covered_users"] / stats["active_users"] if stats["active_users"] else 0.0
    short_share = stats["users_short"] / users if users else 0.0
    checks = [
        Check("not_empty", stats["rows"] > 0, stats["rows"], "> 0", "rows in the run_date partition"),
        Check("rows_per_user", stats["users_over_k"] == 0 and short_share <= max_short_list_share,
              {"users_over_k": stats["users_over_k"], "users_short": stats["users_short"],
               "short_share": round(short_share, 6)},
              {"expected_per_user": expected_per_user, "max_short_list_share": max_short_list_share},
              "users with more than min(K, catalogue) rows, and the share with fewer"),
        Check("no_repeated_items", stats["users_repeated_item"] == 0, stats["users_repeated_item"], 0,
              "users with an item twice in their list"),
        Check("ranks_1_to_n", stats["users_bad_ranks"] == 0, stats["users_bad_ranks"], 0,
              "users whose ranks are not exactly 1..n"),
        Check("scores_non_increasing", stats["users_score_rises"] == 0 and stats["nan_scores"] == 0,
              {"users_score_rises": stats["users_score_rises"], "nan_scores": stats["nan_scores"]}, 0,
              "users whose score rises with rank; NaN scores"),
        Check("coverage", coverage >= min_coverage and stats["unknown_users"] == 0,
              {"coverage": round(coverage, 6), "covered_users": stats["covered_users"],
               "active_users": stats["active_users"], "unknown_users": stats["unknown_users"]},
              {"min_coverage": min_coverage, "unknown_users": 0},
              "share of active users with candidates; candidates for users who are not active"),
    ]
    return GateResult(all(c.passed for c in checks), checks)


def report_frames(candidates: DataFrame, bins: int = 30, top_items: int = 20) -> dict[str, DataFrame]:
    """Small aggregate frames for the report: strategy mix, score histogram and quantiles per strategy,
    most recommended items, distinct items recommended."""
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
    distinct_items = candidates.agg(F.countDistinct("item_id").alias("distinct_items"))
    return {"histogram": histogram, "mix": mix, "top_items": top, "distinct_items": distinct_items}


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
