"""The next-week backtest: the lists the product publishes for night D against what customers bought in
the week after, beside the strongest heuristics, over several nights (DESIGN.md, "Model").

    spark-submit jobs/backtest.py --lake ./lake --run-dates 2011-11-11 2011-11-18 2011-11-25 2011-12-02
    warmstart backtest --from 2011-11-11 --to 2011-12-02 --every 7 [--horizon 7] [--seeds 0,1,2] [key=value ...]

For each night D, everything is fitted on events before D + 1 day:
- features as of D (built when the lake has none for D), and the model trained for D (a version the
  registry holds for D and the seed, else trained now, never promoted to LATEST);
- the lists (``--lists``): those published for D (the candidates partition at the version the night's
  ``candidates/published`` row names: what online services loaded), or, for a night that published none
  (``auto``) or on request (``rescore``), what ``warmstart score`` writes for D with the model trained
  for it (``jobs.score.candidate_lists``: the same code, exclusions, fallbacks and K), collected rather
  than written;
- the baselines (training/backtest.py, training/heuristics.py, Spark ALS), each tuned on the validation
  night D - horizon (fitted before D + 1 - horizon, judged on the days up to D + 1) and refitted at D;
  their lists go through the same K and catalogue.
Targets: the distinct recommendable items each user bought (``train.target_event_types``) in
[D + 1, D + 1 + horizon); users: a purchase before D + 1 and a target. ``--seeds 0,1,2`` trains the last
night's model with each seed (the seed spread).

Writes ``reports/backtest/<first>_<last>/summary.json`` and ``index.html`` (a plot per night with 95%
bootstrap intervals, the pooled table with the paired bootstrap of lists - best baseline) and records
lineage. Reading only: no table is written, apart from the features of a night that had none.
"""
from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from features.tables import EVENTS, ITEMS, USER_CANDIDATES
from jobs import build_features, lake, runtime, score, tracking
from jobs import train as train_job
from training import backtest as B
from training import heuristics as H
from training.progress import Progress

log = logging.getLogger("warmstart.backtest")

# Grids tried on each validation night; small on purpose (two CPU cores), recorded in the results.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity_30d": [{}],
    "p_topfreq": [{}],
    "past_recent": [{"w": w} for w in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)],
    "tifu_knn": H.TIFU_GRID,
    "cooccurrence": [{}],
    "als": [{"rank": 64, "reg": 0.1, "alpha": a} for a in (1.0, 10.0, 40.0)],
}
MODEL = "lists"        # the published lists' label in the results
RANKER = "ranker"      # the two-stage ranker's lists (--ranker)
LOGREG = "ranker (logistic regression, Spark MLlib)"   # the simple scorer on the same features (--ablation)
# published: the lists published for the night (what online services loaded); rescore: what `warmstart
# score` writes for the night with the model trained for it; auto: published where there are, else rescore.
LIST_SOURCES = ("auto", "published", "rescore")


@dataclass(frozen=True)
class BacktestArgs(runtime.JobArgs):
    run_dates: tuple[dt.date, ...] = ()
    from_date: dt.date | None = None
    to_date: dt.date | None = None
    every: int = 7
    horizon: int = 7
    seeds: str = "0"
    methods: str | None = None
    lists: str = "auto"
    ranker: bool = False
    ablation: bool = False

    def __post_init__(self) -> None:
        if self.lists not in LIST_SOURCES:
            raise runtime.UsageError(f"--lists must be one of {', '.join(LIST_SOURCES)}, got {self.lists!r}")

    def nights(self) -> list[dt.date]:
        if self.run_dates and (self.from_date or self.to_date):
            raise runtime.UsageError("give --run-dates or --from/--to, not both")
        if self.run_dates:
            return sorted(set(self.run_dates))
        if not (self.from_date and self.to_date):
            raise runtime.UsageError("give --run-dates D... or --from D1 --to D2 [--every N]")
        if self.from_date > self.to_date or self.every < 1:
            raise runtime.UsageError("--from must not be after --to, and --every must be >= 1")
        days = (self.to_date - self.from_date).days
        return [self.from_date + dt.timedelta(days=n) for n in range(0, days + 1, self.every)]

    def seed_list(self) -> list[int]:
        try:
            return [int(s) for s in self.seeds.split(",") if s.strip()] or [0]
        except ValueError:
            raise runtime.UsageError(f"--seeds takes integers like 0,1,2, got {self.seeds!r}") from None

    def method_list(self) -> list[str]:
        wanted = [m.strip() for m in (self.methods or ",".join(GRIDS)).split(",") if m.strip()]
        unknown = [m for m in wanted if m not in GRIDS]
        if unknown:
            raise runtime.UsageError(f"unknown baseline {', '.join(unknown)}; one of {', '.join(GRIDS)}")
        return wanted


def parser():
    p = runtime.job_parser("backtest", "judge the published lists of past nights against the next week")
    p.add_argument("--run-dates", nargs="+", type=runtime.parse_date, default=(), help="nights D to judge")
    p.add_argument("--from", dest="from_date", type=runtime.parse_date, help="first night")
    p.add_argument("--to", dest="to_date", type=runtime.parse_date, help="last night")
    p.add_argument("--every", type=int, default=7, help="days between nights with --from/--to (default 7)")
    p.add_argument("--horizon", type=int, default=7, help="days of purchases after D that are the targets")
    p.add_argument("--seeds", default="0", help="training seeds for the last night, e.g. 0,1,2 (default 0)")
    p.add_argument("--methods", help=f"baselines (default all: {','.join(GRIDS)})")
    p.add_argument("--lists", default="auto", choices=LIST_SOURCES,
                   help="the lists judged: published for the night, rescored, or published where there are (default)")
    p.add_argument("--ranker", action="store_true",
                   help="also judge the two-stage ranker (jobs/ranking.py), fitted on the nights before each D")
    p.add_argument("--ablation", action="store_true",
                   help="with --ranker: refit it without each feature group (training/ranking.ABLATIONS)")
    return p


def run(spark: SparkSession, args: BacktestArgs) -> dict[str, Any]:
    nights, seeds, methods = args.nights(), args.seed_list(), args.method_list()
    if args.horizon < 1:
        raise runtime.UsageError(f"--horizon must be >= 1, got {args.horizon}")
    started = time.time()
    catalogue, recommendable, purchases, versions = _read_purchases(spark, args)
    per_night = []
    with Progress("backtest nights", len(nights), "nights") as progress:
        for d in nights:
            log.info("backtest night %s", d)
            per_night.append(_night(spark, args, d, catalogue, recommendable, purchases, methods,
                                    seeds if d == nights[-1] else seeds[:1]))
            progress.update(1, night=str(d))
    result = _pooled(per_night, methods)
    result.update({"nights": [str(d) for d in nights], "horizon_days": args.horizon, "wall_seconds":
                   round(time.time() - started, 1), "grids": {m: GRIDS[m] for m in methods}})
    out = f"{args.reports_root}/backtest/{nights[0]}_{nights[-1]}"
    runtime.write_json(f"{out}/summary.json", result)
    from training import report

    runtime.write_text(f"{out}/index.html", report.render_backtest(result))
    summary = {**_summary(result, out), **tracking.log_backtest(args, result, out)}   # MLflow, when on
    runtime.record_lineage(args, run_date=nights[-1], inputs=versions, outputs={"reports/backtest": out},
                           summary=summary)
    return summary


def _read_purchases(spark: SparkSession, args: BacktestArgs):
    """(catalogue item ids, recommendable mask, purchases frame with catalogue indices, versions read)."""
    for table in (EVENTS, ITEMS):
        if not lake.exists(spark, args.lake, table):
            raise runtime.UsageError(f"{table.name} not found under {args.lake}; run `warmstart ingest` first")
    return read_purchases(spark, args.lake, args.config)


def read_purchases(spark: SparkSession, lake_root: str, config, *, through: dt.date | None = None,
                   buyers_after: dt.date | None = None):
    """What the backtest and the nightly's delayed feedback judge with: (the catalogue's item ids in the
    scorer's order, its recommendable mask, the target-type events ``user_id, item, event_ts`` with
    catalogue indices (events outside the catalogue dropped), the Delta versions read). ``through``: only
    events up to that date; ``buyers_after``: only the customers with such an event after that date, with
    their whole history (the feedback of one week needs nobody else)."""
    versions = {t.name: lake.version(spark, lake_root, t) for t in (EVENTS, ITEMS)}
    items = lake.read(spark, lake_root, ITEMS, versions[ITEMS.name]).select("item_id", "category").toPandas()
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    recommendable = ~items["category"].isin(set(config.score.exclude_categories)).to_numpy()
    index = pd.Series(np.arange(len(items)), index=items["item_id"].astype(str))
    events = (lake.read(spark, lake_root, EVENTS, versions[EVENTS.name])
              .where(F.col("event_type").isin(list(config.train.target_event_types))))
    if through is not None:
        events = events.where(F.col("event_date") <= F.lit(through))
    if buyers_after is not None:
        buyers = events.where(F.col("event_date") > F.lit(buyers_after)).select("user_id").distinct()
        events = events.join(buyers, "user_id", "left_semi")
    frame = events.select("user_id", "item_id", "event_ts").toPandas()
    frame["item"] = frame["item_id"].astype(str).map(index)
    frame = frame.dropna(subset=["item"]).astype({"item": np.int64})
    return items["item_id"].astype(str).tolist(), recommendable, frame[["user_id", "item", "event_ts"]], versions


def _night(spark, args: BacktestArgs, d: dt.date, catalogue, recommendable, purchases, methods, seeds) -> dict:
    night = B.night(purchases, d, args.horizon, recommendable)
    validation = B.night(purchases, d - dt.timedelta(days=args.horizon), args.horizon, recommendable)
    k = args.config.score.k
    per_user, tuned, model_versions, digests, coverage = {}, {}, {}, {}, {}
    for seed in seeds:
        label = MODEL if seed == seeds[0] else f"{MODEL} (seed {seed})"
        version, lists = _model_lists(spark, args, d, seed, catalogue, night)
        per_user[label], model_versions[label] = B.judge(lists, night), version
        digests[label], coverage[label] = B.digest(lists), B.coverage(lists, night)
    for method in methods:
        scorer = _als_scorer(spark) if method == "als" else B.SCORERS[method]
        t = B.tune(method, scorer, validation, GRIDS[method], k)
        lists = B.top_lists(scorer(night, t.params), k, recommendable)
        per_user[method], tuned[method], coverage[method] = B.judge(lists, night), t, B.coverage(lists, night)
        digests[method] = B.digest(lists)
    ranked = {}
    if args.ranker:
        tifu = tuned["tifu_knn"].params if "tifu_knn" in tuned else None
        ranked = _ranked(spark, args, d, night, catalogue, recommendable, purchases, tifu, seeds)
        for label, lists in ranked.pop("lists").items():
            per_user[label], coverage[label], digests[label] = B.judge(lists, night), B.coverage(lists, night), B.digest(lists)
    return {"ranker": ranked, "night": d, "users": night.user_ids[night.evaluated], "per_user": per_user, "coverage": coverage,
            "tuned": {m: {"params": t.params, "validation_ndcg@10": t.validation_ndcg10} for m, t in tuned.items()},
            "model_versions": model_versions, "digests": digests, "validation_users": int(len(validation.evaluated)),
            "candidate_items": int(recommendable.sum())}


def _model_lists(spark, args: BacktestArgs, d: dt.date, seed: int, catalogue: list[str], night: B.Night):
    """The lists for the judged users as catalogue indices (a judged user without rows gets none) and the
    model version that made them: the night's published rows, or the scorer's for the model version of
    (D, seed), trained if the registry has none."""
    published = _published_rows(spark, args, d) if args.lists != "rescore" and seed == 0 else None
    if published is None and args.lists == "published":
        raise runtime.UsageError(f"nothing was published for {d} under {args.lake}; use --lists rescore (or auto)")
    version, rows = published if published is not None else _rescored(spark, args, d, seed)
    index = {item: i for i, item in enumerate(catalogue)}
    return version, B.lists_from_rows(rows, index, night.user_ids[night.evaluated])


def _published_rows(spark, args: BacktestArgs, d: dt.date):
    """(the model version, rows user_id, rank, item_id) of the lists published for D: the candidates
    partition at the table version of the night's newest candidates/published row; None if none."""
    from jobs.nightly import published_run

    published = published_run(args.lake, d, spark)
    if published is None:
        return None
    rows = (lake.read(spark, args.lake, USER_CANDIDATES, int(published["table_version"]))
            .where(F.col("run_date") == F.lit(d)).select("user_id", "rank", "item_id").toPandas())
    return f"published: {published.get('model_version')}", rows


def _rescored(spark, args: BacktestArgs, d: dt.date, seed: int, k: int | None = None):
    # model selection validates on the horizon before D, as the night itself is judged
    config = args.config.with_overrides({"train.loop.seed": seed, "train.validation_days": args.horizon})
    build_features.ensure(spark, args, d)
    version = _registered(args, d, seed)
    if version is None:
        trained = train_job.run(train_job.TrainArgs(job="train", lake=args.lake, config=config,
                                                    run_id=runtime.new_run_id("train", d), run_date=d,
                                                    promote=False))
        version = trained["version"]
    score_args = score.ScoreArgs(job="score", lake=args.lake, config=config, run_id=runtime.new_run_id("score", d),
                                 run_date=d, model_version=version, k=k)
    rows, _, _ = score.candidate_lists(spark, score_args)
    return version, rows


def _registered(args: BacktestArgs, d: dt.date, seed: int) -> str | None:
    """The newest registered version trained for night D with this seed."""
    from training import registry

    name = args.config.train.name
    for version in sorted(registry.list_versions(args.models_root, name), reverse=True):
        if not version.startswith(f"{d:%Y%m%d}-"):
            continue
        trained = registry.read_config(args.models_root, name, version).get("train", {})
        if int(trained.get("seed", 0)) == seed:
            return version
    return None


def _ranked(spark, args: BacktestArgs, d: dt.date, night: B.Night, catalogue, recommendable, purchases,
            tifu: dict | None, seeds: list[int]) -> dict[str, Any]:
    """The ranker's lists for night D (one per seed, the category-capped variant and, with --ablation, one per
    feature group left out), its retrieval recall, importances and fitting record."""
    from jobs import ranking
    from training import ranker as R

    cfg, k = args.config.ranker, args.config.score.k
    nights = {d: night, **ranking.training_set(purchases, recommendable, d, cfg)}
    # the ranker's TIFU-KNN: tuned on the validation night, as the baseline's (the same grid and night)
    params = H.tifu_params(tifu) if tifu else ranking.tune_tifu(nights[ranking.training_nights(d, cfg)[0]], k)
    frames = ranking.night_frames(spark, args.lake, nights, catalogue,
                                  lambda x: _transformer_rows(spark, args, x, cfg.transformer_n), params,
                                  ranking.pools(cfg))
    test = frames[d].frame
    lists, out = {}, {"fits": {}}
    for seed in seeds:
        booster, features, info = ranking.fit_for(frames, d, cfg, seed=seed, spark=spark)
        score = R.predict(booster, test, features)
        label = RANKER if seed == seeds[0] else f"{RANKER} (seed {seed})"
        lists[label] = R.top_lists(test, score, night.evaluated, k)
        out["fits"][label] = info
        if seed == seeds[0]:
            out.update(recall=R.union_recall(test, night, score), importances=R.importances(booster),
                       features=len(features))
            categories = _categories(spark, args, catalogue)
            cap = cfg.category_cap or 3
            lists[f"{RANKER} (category cap {cap})"] = R.category_cap(test, score, night.evaluated, k, categories, cap)
            out["diversity@10"] = {name: round(R.intra_list_diversity(v, categories), 4) for name, v in lists.items()}
    if args.ablation:
        for name, leave_out in ranking.ABLATIONS.items():
            booster, features, info = ranking.fit_for(frames, d, cfg, leave_out=leave_out, spark=spark)
            lists[f"{RANKER} ({name})"] = R.top_lists(test, R.predict(booster, test, features), night.evaluated, k)
            out["fits"][f"{RANKER} ({name})"] = info
        lists[LOGREG], out["fits"][LOGREG] = _logreg_lists(spark, frames, d, cfg, night, k)
    out["lists"] = lists
    return out


def _logreg_lists(spark, frames: dict, d: dt.date, cfg, night: B.Night, k: int) -> tuple[list[np.ndarray], dict]:
    """The simple scorer's lists: Spark MLlib logistic regression on the ranker's nights and features."""
    from jobs import ranking
    from training import ranker as R
    from training.spark_ranker import predict_logreg

    model, features, info = ranking.fit_logreg_for(spark, frames, d, cfg)
    test = frames[d].frame
    return R.top_lists(test, predict_logreg(model, spark, test, features), night.evaluated, k), info


def _transformer_rows(spark, args: BacktestArgs, d: dt.date, k: int) -> pd.DataFrame:
    """The sequence model's top k (rows user_id, item_id, score, rank) for night d, from the model trained
    for d (trained now when the registry has none): the ranker's transformer retriever."""
    from scoring.candidates import MODEL as SCORED_BY_MODEL

    _, rows = _rescored(spark, args, d, 0, k=k)
    return rows[rows["strategy"] == SCORED_BY_MODEL]


def _categories(spark, args: BacktestArgs, catalogue: list[str]) -> np.ndarray:
    """(V,) an integer code of each catalogue item's category (missing: its own code)."""
    items = lake.read(spark, args.lake, ITEMS).select("item_id", "category").toPandas()
    by_id = dict(zip(items["item_id"].astype(str), items["category"].fillna("(none)")))
    return pd.factorize(pd.Series([by_id.get(i, "(none)") for i in catalogue]))[0]


def _als_scorer(spark):
    """Spark ALS (implicit) as a backtest scorer: fitted on the night's pool, scored for its judged users."""
    from training.baselines import als_factors, factor_scores

    def scorer(night: B.Night, p: dict) -> np.ndarray:
        histories = [np.concatenate(b) if b else np.zeros(0, np.int64) for b in night.baskets]
        users, items, has = als_factors(spark, histories, night.num_items, rank=p["rank"], reg_param=p["reg"],
                                        alpha=p["alpha"], max_iter=10)
        return factor_scores(users[night.evaluated], items, has, night.popular.astype(np.float64)).astype(np.float32)

    return scorer


def _pooled(per_night: list[dict], methods: list[str]) -> dict[str, Any]:
    """Per night and pooled figures; the best baseline by pooled NDCG@10; lists - best with the paired
    bootstrap (users resampled as clusters across nights)."""
    labels = [m for m in per_night[0]["per_user"]]
    pooled_users = np.concatenate([n["users"] for n in per_night])
    pooled = {m: {metric: np.concatenate([n["per_user"][m][metric] for n in per_night])
                  for metric in per_night[0]["per_user"][m]} for m in labels if all(m in n["per_user"] for n in per_night)}
    means = {m: B.summary(v) for m, v in pooled.items()}
    best = max(methods, key=lambda m: means[m]["ndcg@10"])
    best_explore = max(methods, key=lambda m: means[m]["explore_ndcg@10"])
    out: dict[str, Any] = {
        "pooled": {m: {**means[m], "ndcg@10_ci": B.interval(pooled[m]["ndcg@10"], clusters=pooled_users),
                       "explore_ndcg@10_ci": B.interval(pooled[m]["explore_ndcg@10"], clusters=pooled_users),
                       "coverage@10": round(float(np.mean([n["coverage"][m] for n in per_night if m in n["coverage"]])), 4)}
                   for m in means},
        "best_baseline": best, "best_explore_baseline": best_explore,
        "lists_vs_best": B.compare(pooled[MODEL]["ndcg@10"], pooled[best]["ndcg@10"], pooled_users),
        "explore_vs_best": B.compare(pooled[MODEL]["explore_ndcg@10"], pooled[best_explore]["explore_ndcg@10"],
                                     pooled_users),
        "users_judged": int(len(pooled_users)),
        "per_night": [_night_result(n) for n in per_night],
    }
    if RANKER in pooled:
        out["ranker_vs_best"] = B.compare(pooled[RANKER]["ndcg@10"], pooled[best]["ndcg@10"], pooled_users)
        out["ranker_explore_vs_best"] = B.compare(pooled[RANKER]["explore_ndcg@10"],
                                                  pooled[best_explore]["explore_ndcg@10"], pooled_users)
        out["ranker_vs_lists"] = B.compare(pooled[RANKER]["ndcg@10"], pooled[MODEL]["ndcg@10"], pooled_users)
    out.update(_seed_spreads(per_night[-1]))
    return out


def _seed_spreads(last_night: dict) -> dict[str, Any]:
    """The spread over training seeds of the last night's lists (and the ranker's, with --ranker)."""
    from training.stats import seed_spread

    out, last = {}, last_night["per_user"]
    for prefix, key in ((MODEL, "seed_spread"), (RANKER, "ranker_seed_spread")):
        seeds = [m for m in last if m == prefix or m.startswith(f"{prefix} (seed ")]
        if len(seeds) < 2:
            continue
        for metric in ("ndcg@10", "explore_ndcg@10"):
            spread = seed_spread([float(np.nanmean(last[s][metric])) for s in seeds])
            out[f"{key}_{metric}"] = {"night": str(last_night["night"]), "seeds": seeds,
                                      **{k: round(v, 6) if isinstance(v, float) else v
                                         for k, v in spread.__dict__.items()}}
    return out


def _night_result(n: dict) -> dict[str, Any]:
    per_user, users = n["per_user"], n["users"]
    return {"night": str(n["night"]), "users": int(len(users)), "validation_users": n["validation_users"],
            "candidate_items": n["candidate_items"], "model_versions": n["model_versions"], "tuned": n["tuned"],
            "lists_sha256": n["digests"], "ranker": n["ranker"],
            "methods": {m: {**B.summary(v), "ndcg@10_ci": B.interval(v["ndcg@10"]),
                            "coverage@10": round(n["coverage"].get(m, float("nan")), 4)}
                        for m, v in per_user.items()}}


def _summary(result: dict[str, Any], out: str) -> dict[str, Any]:
    best, lists = result["best_baseline"], result["pooled"][MODEL]
    c = result["lists_vs_best"]
    return {"nights": ", ".join(result["nights"]), "users_judged": result["users_judged"],
            "lists_ndcg@10": lists["ndcg@10"], "best_baseline": best,
            "best_baseline_ndcg@10": result["pooled"][best]["ndcg@10"],
            "lists_minus_best": f"{c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] ({c['relative']:+.1%})",
            "lists_explore_ndcg@10": lists["explore_ndcg@10"],
            "best_explore_baseline": result["best_explore_baseline"],
            "wall_seconds": result["wall_seconds"], "report": f"{out}/index.html"}


def to_args(ns, common: runtime.JobArgs) -> BacktestArgs:
    return runtime.dataclass_from(BacktestArgs, ns, common, run_dates=tuple(ns.run_dates or ()))


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("backtest", parser(), to_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
