"""Evaluate a registered model against the baselines on the same split, and write the model report.

    spark-submit jobs/evaluate.py --lake ./lake --run-date 2011-12-09 [--model-version V] \
        [--baselines popularity,cooccurrence,repeat,als] [--mask-seen]
    warmstart evaluate --run-date 2011-12-09 [--model-version V] [--baselines ...] [--mask-seen] [key=value ...]

Protocol (DESIGN.md "Model"): temporal leave-last-out on ``features/user_sequences`` as_of_date = the run
date: each user's last purchase basket is the target, everything before it the input (training.data.
split_sequence); users with at least ``evaluate.min_purchases`` purchase events and some history;
full ranking over the model's whole catalogue (no sampled negatives) less what scoring never recommends
(items of a ``score.exclude_categories`` category: postage, fees; they are dropped from the targets too,
and stay in the users' inputs); Recall@10/20, NDCG@10/20, MRR, coverage@20 of the recommendable items.
The baselines (training.baselines) are fitted on the same users' inputs and ranked over the same
items. Already-bought items stay eligible; ``--mask-seen`` adds the variant with them removed.

Writes ``reports/<run_date>/model/index.html`` and ``metrics.json`` (same inputs, same bytes: rerunning
changes nothing) and records lineage. Reads the sequences at the Delta version the model was trained on
when the run date is the model's, else at the latest version.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import functions as F

from features.tables import ITEM_DAILY, ITEMS, USER_SEQUENCES
from jobs import lake, runtime
from jobs import train as train_job

log = logging.getLogger("warmstart.evaluate")


@dataclass(frozen=True)
class EvaluateArgs(runtime.JobArgs):
    run_date: dt.date | None = None
    model_version: str = "latest"
    baselines: str | None = None
    mask_seen: bool = False


def parser():
    p = runtime.job_parser("evaluate", "evaluate a model version against the baselines")
    p.add_argument("--run-date", required=True, type=runtime.parse_date)
    p.add_argument("--model-version", default="latest", help="registry version (default: LATEST)")
    p.add_argument("--baselines", help="comma list of popularity,cooccurrence,repeat,als (default evaluate.baselines)")
    p.add_argument("--mask-seen", action="store_true", help="also report with already-seen items removed")
    return p


def eligible_users(rows, item_index: dict[str, int], target_types, min_purchases: int,
                   not_recommended: np.ndarray | None = None):
    """Split every row; keep users with enough purchases, some history and a target that could be
    recommended (in the catalogue and not of an excluded category; other targets are dropped). Returns
    (users, inputs, types, input stamps, histories, targets, the targets' days since 1970-01-01, skipped)."""
    from training.data import event_days, split_sequence

    users, inputs, types, stamps, histories, targets, days = [], [], [], [], [], [], []
    skipped = {"few_purchases": 0, "no_history": 0, "targets_outside_catalogue": 0, "targets_not_recommended": 0}
    for r in rows:
        s = split_sequence(r["item_ids"], r["event_types"], r["event_ts"], target_types)
        if s.purchases < min_purchases:
            skipped["few_purchases"] += 1
            continue
        if not s.test_items or not s.test_targets:
            skipped["no_history"] += 1
            continue
        known = [item_index[i] for i in s.test_targets if i in item_index]
        tgt = [i for i in known if not_recommended is None or not not_recommended[i]]
        if not tgt:
            skipped["targets_not_recommended" if known else "targets_outside_catalogue"] += 1
            continue
        users.append(r["user_id"])
        inputs.append(s.test_items)
        types.append(s.test_types)
        stamps.append(list(r["event_ts"])[:len(s.test_items)])
        histories.append([item_index[i] for i in s.test_items if i in item_index])
        targets.append(tgt)
        days.append(int(event_days(list(r["event_ts"])[len(s.test_items):len(s.test_items) + 1])[0]))
    return users, inputs, types, stamps, histories, targets, days, skipped


def not_recommended_items(spark, args: EvaluateArgs, item_ids: list[str]) -> tuple[np.ndarray, int | None]:
    """(mask over the model's catalogue of the items scoring never recommends: bronze/items rows whose
    category is in ``score.exclude_categories``, the bronze/items version read). Evaluation ranks what
    is served: postage and fees stay in the users' inputs, never among the candidates or the targets."""
    mask = np.zeros(len(item_ids), dtype=bool)
    excluded = list(args.config.get("score.exclude_categories") or [])
    if not excluded or not lake.exists(spark, args.lake, ITEMS):
        return mask, None
    version = lake.version(spark, args.lake, ITEMS)
    rows = (lake.read(spark, args.lake, ITEMS, version).where(F.col("category").isin(excluded))
            .select("item_id").collect())
    index = {item: i for i, item in enumerate(item_ids)}
    for r in rows:
        if r[0] in index:
            mask[index[r[0]]] = True
    return mask, version


def als_factors(spark, histories: list[list[int]], num_items: int, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit implicit ALS in Spark on the histories; (user factors, item factors, item has a factor)."""
    from training.baselines import fit_als

    pairs: dict[tuple[int, int], float] = {}
    for u, h in enumerate(histories):
        for i in h:
            pairs[(u, i)] = pairs.get((u, i), 0.0) + 1.0
    df = spark.createDataFrame([(u, i, c) for (u, i), c in pairs.items()], "user_idx int, item_idx int, count double")
    model = fit_als(df, rank=int(cfg.get("evaluate.als_rank", 64)), reg_param=float(cfg.get("evaluate.als_reg_param", 0.1)),
                    alpha=float(cfg.get("evaluate.als_alpha", 10.0)), max_iter=int(cfg.get("evaluate.als_max_iter", 10)))
    rank = model.rank
    users = np.zeros((len(histories), rank))
    for row in model.userFactors.collect():
        users[row["id"]] = row["features"]
    items = np.zeros((num_items, rank))
    has = np.zeros(num_items, dtype=bool)
    for row in model.itemFactors.collect():
        items[row["id"]] = row["features"]
        has[row["id"]] = True
    return users, items, has


def run(spark, args: EvaluateArgs) -> dict[str, Any]:
    from training import baselines as B
    from training import metrics as M
    from training import registry, report

    cfg = args.config
    name = cfg.get("train.name", registry.DEFAULT_NAME)
    wanted = [b.strip() for b in (args.baselines.split(",") if args.baselines else cfg.get("evaluate.baselines", []))
              if b.strip()]
    unknown = sorted(set(wanted) - set(B.BASELINES))
    if unknown:
        raise runtime.UsageError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(B.BASELINES)}")
    try:
        model = registry.load_model(args.models_root, name, args.model_version)
    except registry.RegistryError as exc:
        raise runtime.UsageError(str(exc)) from None
    if not lake.exists(spark, args.lake, USER_SEQUENCES):
        raise runtime.UsageError(f"{args.table_path(USER_SEQUENCES)} does not exist; run `warmstart features` first")
    same_date = model.lineage.get("run_date") == str(args.run_date)
    seq_version = (model.lineage["inputs"][USER_SEQUENCES.name] if same_date
                   else lake.version(spark, args.lake, USER_SEQUENCES))
    seqs = (lake.read(spark, args.lake, USER_SEQUENCES, seq_version)
            .where(f"as_of_date = '{args.run_date}'").select("user_id", "item_ids", "event_types", "event_ts")
            .orderBy("user_id"))
    # Evaluation users x sequences: thousands of rows of <= N events; one driver holds them.
    rows = [r.asDict() for r in seqs.collect()]
    if not rows:
        raise runtime.UsageError(f"{args.table_path(USER_SEQUENCES)} has no rows for as_of_date {args.run_date}")
    item_index = {item: i for i, item in enumerate(model.item_ids)}
    V = len(model.item_ids)
    target_types = tuple(model.config.get("train", {}).get("target_event_types") or cfg.get("train.target_event_types", ["purchase"]))
    not_recommended, items_version = not_recommended_items(spark, args, model.item_ids)
    candidates = int(V - not_recommended.sum())
    users, inputs, types, stamps, histories, targets, target_days, skipped = eligible_users(
        rows, item_index, target_types, int(cfg.get("evaluate.min_purchases", 3)), not_recommended)
    if not users:
        raise runtime.WarmstartError(f"no user qualifies for evaluation on {args.run_date} (skipped: {skipped})")
    daily_version = None
    if model.model.cfg.recent_days:
        # each user's target day gets the recent popularity of the days before it, as scoring on the eve does
        daily_version, log_counts, first_day = train_job.recent_popularity(
            args.lake, args.run_date, item_index, model.model.cfg.recent_days, target_types)
        model.set_recent_popularity(log_counts, first_day)
    ks = tuple(int(k) for k in cfg.get("evaluate.ks", [10, 20]))

    counts = B.item_counts(histories, V)
    cooc = B.fit_cooccurrence(histories, V) if "cooccurrence" in wanted else None
    als = als_factors(spark, histories, V, cfg) if "als" in wanted else None

    def scores_for(method: str, lo: int, hi: int) -> np.ndarray:
        h = histories[lo:hi]
        if method == "model":
            return model.catalogue_scores(inputs[lo:hi], types[lo:hi], stamps[lo:hi], days=target_days[lo:hi])
        if method == "popularity":
            return B.popularity_scores(counts, hi - lo).copy()
        if method == "cooccurrence":
            return B.cooccurrence_scores(cooc, h, counts)
        if method == "repeat":
            return B.repeat_scores(h, counts)
        if method == "als":
            return B.factor_scores(als[0][lo:hi], als[1], als[2], counts)
        raise AssertionError(method)

    variants = ["all"] + (["masked"] if (args.mask_seen or cfg.get("evaluate.mask_seen")) else [])
    batch = int(cfg.get("evaluate.batch_users", 512))
    results: dict[str, dict[str, dict]] = {v: {} for v in variants}
    for method in ["model", *wanted]:
        sums = {v: {} for v in variants}
        top = {v: set() for v in variants}
        for lo in range(0, len(users), batch):
            hi = min(lo + batch, len(users))
            base = scores_for(method, lo, hi).astype(np.float64)
            base[:, not_recommended] = -np.inf
            for v in variants:
                s = base
                if v == "masked":
                    s = base.copy()
                    for r, h in enumerate(histories[lo:hi]):
                        s[r, h] = -np.inf
                for key, val in M.metric_sums(s, targets[lo:hi], ks).items():
                    sums[v][key] = sums[v].get(key, 0.0) + val
                top[v].update(np.unique(M.rank_items(s, max(ks))).tolist())
        for v in variants:
            res = M.finalize(sums[v])
            res[f"coverage@{max(ks)}"] = sum(1 for i in top[v] if not not_recommended[i]) / candidates
            results[v][method] = {k: round(float(x), 6) if isinstance(x, float) else x for k, x in res.items()}
        log.info("%s: ndcg@10 %.4f", method, results["all"][method]["ndcg@10"])

    inputs_read = {USER_SEQUENCES.name: seq_version, ITEMS.name: items_version,
                   **({ITEM_DAILY.name: daily_version} if daily_version is not None else {})}
    main_results = results["all"]
    best = max(wanted, key=lambda b: main_results[b]["ndcg@10"]) if wanted else None
    lift = (main_results["model"]["ndcg@10"] / main_results[best]["ndcg@10"] - 1.0
            if best and main_results[best]["ndcg@10"] > 0 else 0.0)
    repurchase = sum(len(set(t) & set(h)) for t, h in zip(targets, histories)) / sum(len(t) for t in targets)
    evaluation = {
        "run_date": str(args.run_date), "model": name, "model_version": model.version,
        "inputs": inputs_read,
        "protocol": (f"temporal leave-last-out (target = each user's last {'/'.join(target_types)} basket), "
                     f"users with >= {cfg.get('evaluate.min_purchases', 3)} purchase events, full ranking over "
                     f"the {candidates} recommendable items of the {V}-item catalogue, seen items eligible"),
        "users_evaluated": len(users), "users_skipped": skipped, "catalogue_size": V,
        "candidate_items": candidates,
        "not_recommended_categories": list(cfg.get("score.exclude_categories") or []),
        "mean_target_size": float(np.mean([len(t) for t in targets])), "repurchase_share": round(repurchase, 6),
        "results": main_results, "variants": results, "best_baseline": best,
        "lift_ndcg10_vs_best_baseline": round(lift, 6),
        "training_history": model.metrics.get("history", []),
        "model_validation": {k: v for k, v in model.metrics.items() if k.startswith("val_")},
    }
    out = Path(args.reports_root) / str(args.run_date) / "model"
    runtime.write_json(str(out / "metrics.json"), evaluation)
    (out / "index.html").write_text(report.render(evaluation))
    summary = {"model_version": model.version, "users_evaluated": len(users), "catalogue_size": V,
               **{f"{m}_ndcg@10": r["ndcg@10"] for m, r in main_results.items()},
               "model_recall@10": main_results["model"]["recall@10"], "best_baseline": best,
               "lift_ndcg10_vs_best_baseline": round(lift, 4), "report": str(out / "index.html")}
    runtime.record_lineage(args, run_date=args.run_date, inputs={**inputs_read, f"models/{name}": model.version},
                           outputs={"reports/model": str(out)}, summary=summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("evaluate", parser(), lambda ns, common: runtime.dataclass_from(EvaluateArgs, ns, common),
                           run, argv)


if __name__ == "__main__":
    sys.exit(main())
