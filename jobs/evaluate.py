"""Evaluate a registered model against the baselines on a per-user leave-last-out split, and write the
model report. Kept for diagnosis only: other users' later purchases leak into every fitted part, and the
output says so. The judge of model quality is ``warmstart backtest`` (jobs/backtest.py).

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
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from pyspark.sql import functions as F

from features.tables import ITEM_DAILY, ITEMS, USER_SEQUENCES
from jobs import lake, runtime
from training import inputs as train_inputs

log = logging.getLogger("warmstart.evaluate")


LEAK_WARNING = ("leave-last-out: other users' purchases after each user's target basket are in what is fitted "
                "(and a model of this run date trained on these baskets); judge models with `warmstart backtest`")


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
    excluded = list(args.config.score.exclude_categories)
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
    """Implicit ALS in Spark on the histories, with the ``evaluate`` section's settings."""
    from training.baselines import als_factors as fit

    e = cfg.evaluate
    return fit(spark, histories, num_items, rank=e.als_rank, reg_param=e.als_reg_param, alpha=e.als_alpha,
               max_iter=e.als_max_iter)


@dataclass(frozen=True)
class _Split:
    """The evaluated users, one entry per user in every list (see :func:`eligible_users`), and the items
    ranked for them."""

    users: list[str]
    inputs: list[list[str]]         # item ids before the target basket
    types: list[list[str]]          # their event types
    stamps: list[list]              # their event timestamps
    histories: list[list[int]]      # the inputs as catalogue indices (items outside the catalogue dropped)
    targets: list[list[int]]        # the target basket's recommendable items, as catalogue indices
    target_days: list[int]          # the target basket's day, days since 1970-01-01
    skipped: dict[str, int]         # users left out, by reason
    target_types: tuple[str, ...]   # what a target basket is made of
    not_recommended: np.ndarray     # (V,) bool: items scoring never recommends, never ranked
    items_version: int | None       # bronze/items version not_recommended was read from

    @property
    def candidate_items(self) -> int:
        return int(len(self.not_recommended) - self.not_recommended.sum())


def run(spark, args: EvaluateArgs) -> dict[str, Any]:
    from training import report

    wanted = _wanted_baselines(args)
    model = _load_model(args)
    rows, seq_version = _read_sequences(spark, args, model)
    split = _split(spark, args, model, rows)
    daily_version = None
    if model.model.cfg.recent_days:
        # each user's target day gets the recent popularity of the days before it, as scoring on the eve does
        daily_version, log_counts, first_day = train_inputs.recent_popularity(
            args.lake, args.run_date, {item: i for i, item in enumerate(model.item_ids)},
            model.model.cfg.recent_days, split.target_types)
        model.set_recent_popularity(log_counts, first_day)
    results = _results(spark, args, model, split, wanted)
    inputs_read = {USER_SEQUENCES.name: seq_version, ITEMS.name: split.items_version,
                   **({ITEM_DAILY.name: daily_version} if daily_version is not None else {})}
    best, lift = _best_baseline(results["all"], wanted)
    evaluation = _evaluation(args, model, split, results, inputs_read, best, lift)
    out = f"{args.reports_root}/{args.run_date}/model"
    runtime.write_json(f"{out}/metrics.json", evaluation)
    runtime.write_text(f"{out}/index.html", report.render(evaluation))
    summary = {"model_version": model.version, "users_evaluated": len(split.users),
               "catalogue_size": len(model.item_ids), **_headline(results["all"], best, lift),
               **_masked_headline(results, wanted), "report": f"{out}/index.html", "warning": LEAK_WARNING}
    log.warning(LEAK_WARNING)
    runtime.record_lineage(args, run_date=args.run_date,
                           inputs={**inputs_read, f"models/{args.config.train.name}": model.version},
                           outputs={"reports/model": out}, summary=summary)
    return summary


def _headline(results: dict[str, dict], best: str | None, lift: float, prefix: str = "") -> dict[str, Any]:
    """The summary's figures of one variant: NDCG@10 per method, the model's Recall@10, the best baseline
    and the model's lift over it; every key starts with ``prefix``."""
    return {**{f"{prefix}{m}_ndcg@10": r["ndcg@10"] for m, r in results.items()},
            f"{prefix}model_recall@10": results["model"]["recall@10"], f"{prefix}best_baseline": best,
            f"{prefix}lift_ndcg10_vs_best_baseline": round(lift, 4)}


def _masked_headline(results: dict[str, dict[str, dict]], wanted: list[str]) -> dict[str, Any]:
    """The masked variant's figures (``masked_seen_`` keys: items the user already had removed), when
    it was asked for: a caller reading only the summary JSON must not take the unmasked ones for them."""
    if "masked" not in results:
        return {}
    best, lift = _best_baseline(results["masked"], wanted)
    return _headline(results["masked"], best, lift, prefix="masked_seen_")


def _wanted_baselines(args: EvaluateArgs) -> list[str]:
    from training.baselines import BASELINES

    names = args.baselines.split(",") if args.baselines else args.config.evaluate.baselines
    wanted = [b.strip() for b in names if b.strip()]
    unknown = sorted(set(wanted) - set(BASELINES))
    if unknown:
        raise runtime.UsageError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    return wanted


def _load_model(args: EvaluateArgs):
    from training import registry

    try:
        return registry.load_model(args.models_root, args.config.train.name, args.model_version)
    except registry.RegistryError as exc:
        raise runtime.UsageError(str(exc)) from None


def _read_sequences(spark, args: EvaluateArgs, model) -> tuple[list[dict], int]:
    """The run date's sequences as dicts, user_id order, and the Delta version read: the one the model
    was trained on when the run date is the model's, else the latest."""
    if not lake.exists(spark, args.lake, USER_SEQUENCES):
        raise runtime.UsageError(f"{args.table_path(USER_SEQUENCES)} does not exist; run `warmstart features` first")
    trained_on = model.lineage.get("inputs", {}).get(USER_SEQUENCES.name)   # None: trained on bronze/events
    same_date = model.lineage.get("run_date") == str(args.run_date) and trained_on is not None
    seq_version = trained_on if same_date else lake.version(spark, args.lake, USER_SEQUENCES)
    seqs = (lake.read(spark, args.lake, USER_SEQUENCES, seq_version)
            .where(f"as_of_date = '{args.run_date}'").select("user_id", "item_ids", "event_types", "event_ts")
            .orderBy("user_id"))
    # Evaluation users x sequences: thousands of rows of <= N events; one driver holds them.
    rows = [r.asDict() for r in seqs.collect()]
    if not rows:
        raise runtime.UsageError(f"{args.table_path(USER_SEQUENCES)} has no rows for as_of_date {args.run_date}")
    return rows, seq_version


def _split(spark, args: EvaluateArgs, model, rows: list[dict]) -> _Split:
    cfg = args.config
    target_types = tuple(model.config.get("train", {}).get("target_event_types") or cfg.train.target_event_types)
    not_recommended, items_version = not_recommended_items(spark, args, model.item_ids)
    item_index = {item: i for i, item in enumerate(model.item_ids)}
    split = _Split(*eligible_users(rows, item_index, target_types, cfg.evaluate.min_purchases, not_recommended),
                   target_types=target_types, not_recommended=not_recommended, items_version=items_version)
    if not split.users:
        raise runtime.WarmstartError(f"no user qualifies for evaluation on {args.run_date} (skipped: {split.skipped})")
    return split


def _results(spark, args: EvaluateArgs, model, split: _Split, wanted: list[str]) -> dict[str, dict[str, dict]]:
    """{variant: {method: metrics}} for the model and every wanted baseline; variant "all" (seen items
    eligible), and "masked" (seen items removed) when asked for or when the model's scoring masks them
    (SeqRecConfig.mask_seen: trained on a catalogue nobody buys again)."""
    cfg = args.config.evaluate
    variants = ["all"] + (["masked"] if (args.mask_seen or cfg.mask_seen or model.model.cfg.mask_seen) else [])
    results: dict[str, dict[str, dict]] = {v: {} for v in variants}
    for method, scores_for in _scorers(spark, args.config, model, split, wanted).items():
        for v, metrics in _metrics(scores_for, split, variants, cfg.ks, cfg.batch_users).items():
            results[v][method] = metrics
        log.info("%s: ndcg@10 %.4f", method, results["all"][method]["ndcg@10"])
    return results


def _scorers(spark, cfg, model, split: _Split, wanted: list[str]) -> dict[str, Callable[[int, int], np.ndarray]]:
    """The model, then each wanted baseline fitted on the users' histories: name -> a function of
    (lo, hi) giving users lo..hi-1's scores over the catalogue, (hi - lo, V)."""
    from training import baselines as B

    V, h = len(model.item_ids), split.histories
    counts = B.item_counts(h, V)

    def model_scores(lo: int, hi: int) -> np.ndarray:
        return model.catalogue_scores(split.inputs[lo:hi], split.types[lo:hi], split.stamps[lo:hi],
                                      days=split.target_days[lo:hi])

    scorers = {"model": model_scores,
               "popularity": lambda lo, hi: B.popularity_scores(counts, hi - lo).copy(),
               "repeat": lambda lo, hi: B.repeat_scores(h[lo:hi], counts)}
    if "cooccurrence" in wanted:
        cooc = B.fit_cooccurrence(h, V)
        scorers["cooccurrence"] = lambda lo, hi: B.cooccurrence_scores(cooc, h[lo:hi], counts)
    if "als" in wanted:
        user_factors, item_factors, has_factor = als_factors(spark, h, V, cfg)
        scorers["als"] = lambda lo, hi: B.factor_scores(user_factors[lo:hi], item_factors, has_factor, counts)
    return {method: scorers[method] for method in ["model", *wanted]}


def _metrics(scores_for: Callable[[int, int], np.ndarray], split: _Split, variants: list[str],
             ks: tuple[int, ...], batch: int) -> dict[str, dict]:
    """One method's metrics per variant, ``batch`` users at a time; coverage@max(ks) of the recommendable items."""
    from training import metrics as M

    not_recommended = split.not_recommended
    sums: dict[str, dict] = {v: {} for v in variants}
    top: dict[str, set] = {v: set() for v in variants}
    for lo in range(0, len(split.users), batch):
        hi = min(lo + batch, len(split.users))
        base = scores_for(lo, hi).astype(np.float64)
        base[:, not_recommended] = -np.inf
        for v in variants:
            s = base
            if v == "masked":
                s = base.copy()
                for r, h in enumerate(split.histories[lo:hi]):
                    s[r, h] = -np.inf
            for key, val in M.metric_sums(s, split.targets[lo:hi], ks).items():
                sums[v][key] = sums[v].get(key, 0.0) + val
            top[v].update(np.unique(M.rank_items(s, max(ks))).tolist())
    out = {}
    for v in variants:
        res = M.finalize(sums[v])
        res[f"coverage@{max(ks)}"] = sum(1 for i in top[v] if not not_recommended[i]) / split.candidate_items
        out[v] = {k: round(float(x), 6) if isinstance(x, float) else x for k, x in res.items()}
    return out


def _best_baseline(results: dict[str, dict], wanted: list[str]) -> tuple[str | None, float]:
    """The baseline with the best NDCG@10, and the model's relative lift over it (0 without one)."""
    best = max(wanted, key=lambda b: results[b]["ndcg@10"]) if wanted else None
    lift = (results["model"]["ndcg@10"] / results[best]["ndcg@10"] - 1.0
            if best and results[best]["ndcg@10"] > 0 else 0.0)
    return best, lift


def _evaluation(args: EvaluateArgs, model, split: _Split, results: dict[str, dict], inputs_read: dict,
                best: str | None, lift: float) -> dict[str, Any]:
    """Everything ``metrics.json`` and the report show."""
    cfg, V, targets = args.config, len(model.item_ids), split.targets
    repurchase = sum(len(set(t) & set(h)) for t, h in zip(targets, split.histories)) / sum(len(t) for t in targets)
    return {
        "run_date": str(args.run_date), "model": cfg.train.name, "model_version": model.version,
        "inputs": inputs_read,
        "warning": LEAK_WARNING,
        "protocol": (f"temporal leave-last-out (target = each user's last {'/'.join(split.target_types)} basket), "
                     f"users with >= {cfg.evaluate.min_purchases} purchase events, full ranking over "
                     f"the {split.candidate_items} recommendable items of the {V}-item catalogue, seen items eligible"),
        "users_evaluated": len(split.users), "users_skipped": split.skipped, "catalogue_size": V,
        "candidate_items": split.candidate_items,
        "not_recommended_categories": list(cfg.score.exclude_categories),
        "mean_target_size": float(np.mean([len(t) for t in targets])), "repurchase_share": round(repurchase, 6),
        "results": results["all"], "variants": results, "best_baseline": best,
        "lift_ndcg10_vs_best_baseline": round(lift, 6),
        "training_history": model.metrics.get("history", []),
        "model_validation": {k: v for k, v in model.metrics.items() if k.startswith("val_")},
    }


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("evaluate", parser(), EvaluateArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main())
