"""The model report, ``reports/<run_date>/model/index.html`` (+ ``metrics.json`` written by the job):
a metrics table of the model against the baselines, training curves and a bar chart, readable offline
(inline CSS, plots embedded as base64 PNG). Pure: takes the evaluation dict, returns HTML text.
Called by jobs/evaluate.py.
"""
from __future__ import annotations

import base64
import io

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC_COLUMNS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr", "coverage@20")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def training_curves_png(history: list[dict]) -> str | None:
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [h["train_loss"] for h in history], marker="o")
    a.set_title("training loss (cross-entropy)")
    a.set_xlabel("epoch")
    for key in ("val_ndcg@10", "val_recall@10"):
        b.plot(epochs, [h[key] for h in history], marker="o", label=key)
    b.set_title("validation (full ranking)")
    b.set_xlabel("epoch")
    b.legend()
    return _png(fig)


def comparison_png(results: dict[str, dict]) -> str:
    names = list(results)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    width = 0.8 / 3
    for j, key in enumerate(("ndcg@10", "recall@10", "mrr")):
        ax.bar([i + j * width for i in range(len(names))], [results[n][key] for n in names], width, label=key)
    ax.set_xticks([i + width for i in range(len(names))], names)
    ax.set_title("model vs baselines (test baskets, full catalogue ranking)")
    ax.legend()
    return _png(fig)


def render(evaluation: dict) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("training", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    return env.get_template("model_report.html").render(
        ev=evaluation, columns=METRIC_COLUMNS,
        curves=training_curves_png(evaluation.get("training_history", [])),
        comparison=comparison_png(evaluation["results"]))


BACKTEST_COLUMNS = ("ndcg@10", "ndcg@20", "recall@10", "recall@20", "mrr", "hit@10", "coverage@10",
                    "repeat_share@10", "explore_ndcg@10", "explore_recall@20")


def backtest_night_png(night: dict) -> str:
    """One night's NDCG@10 per method with its 95% bootstrap interval (users resampled)."""
    methods = night["methods"]
    names = list(methods)
    values = [methods[m]["ndcg@10"] for m in names]
    low = [v - methods[m]["ndcg@10_ci"][0] for m, v in zip(names, values)]
    high = [methods[m]["ndcg@10_ci"][1] - v for m, v in zip(names, values)]
    fig, ax = plt.subplots(figsize=(9, 2.8))
    colors = ["#2a6fdb" if _ours(m) else "#999999" for m in names]
    ax.bar(range(len(names)), values, yerr=[low, high], capsize=4, color=colors)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"night {night['night']}: {night['users']} customers, next {night.get('horizon_days', 7)} days")
    return _png(fig)


def _ours(name: str) -> bool:
    return name.startswith(("lists", "ranker"))


def lists_first(methods: dict, pooled: dict) -> dict:
    """The product's rows first (the ranker's, then the lists'), then the baselines by pooled NDCG@10, best
    first (JSON keeps no order)."""
    order = sorted(methods, key=lambda m: (not _ours(m), not m.startswith("ranker"), _ours(m) and m,
                                           -pooled.get(m, {}).get("ndcg@10", 0.0)))
    return {m: methods[m] for m in order}


def importances_png(pairs: list, top: int = 20) -> str:
    """The ranker's features by their share of the total gain (the ``top`` largest)."""
    pairs = list(pairs)[:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(pairs) + 0.8))
    ax.barh([p[0] for p in pairs], [p[1] for p in pairs], color="#2a6fdb")
    ax.set_xlabel("share of total gain")
    ax.set_title(f"ranker: top {len(pairs)} features")
    fig.tight_layout()
    return _png(fig)


def render_backtest(result: dict) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("training", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    pooled = result["pooled"]
    result = {**result, "pooled": lists_first(pooled, pooled),
              "per_night": [{**n, "methods": lists_first(n["methods"], pooled)} for n in result["per_night"]]}
    plots = {n["night"]: backtest_night_png({**n, "horizon_days": result["horizon_days"]})
             for n in result["per_night"]}
    ranker = result["per_night"][-1].get("ranker") or {}
    importances = importances_png(ranker["importances"]) if ranker.get("importances") else None
    return env.get_template("backtest_report.html").render(r=result, columns=BACKTEST_COLUMNS, plots=plots,
                                                           importances=importances, last_ranker=ranker)
