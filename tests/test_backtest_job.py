"""`warmstart backtest --ranker --ablation` on generated lakes: what it writes, and that nothing after the
night leaks in.

Two lakes hold the same generated four weeks; the second also holds two more weeks of purchases from the
end of D's target week on (after D + 1 day, leaving D's targets as they are so the same users are judged)
and feature partitions built after D. The backtest of night D on each must
fit the same things and publish the same lists: the model's training rows, every baseline's tuned
parameters and validation figures, every method's lists (compared by digest), the two-stage ranker's,
its ablation variants', its category-capped variant's and the logistic regression's included, and the
ranker's fits, recall and importances.

The ranker trains on the weekly nights D - 7 (validates) and D - 14. Its transformer retriever for those
nights, and the second seed's model for D (``--seeds 0,1``: the seed spreads), are untrained SeqRecs
registered beforehand (as in tests/test_ranker_job.py: their scores are noise, but every code path that
reads them runs), so that the backtest trains one model, seed 0's for D.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import args_for

pytestmark = pytest.mark.slow

D = dt.date(2024, 1, 21)
CAP = 2                # ranker.category_cap: not the backtest's fallback of 3, so the row's name shows it was read
SMALL = {"train.model.dim": 16, "train.model.num_layers": 1, "train.model.num_heads": 2,
         "train.model.max_seq_len": 12, "train.model.use_text": False, "train.loop.epochs": 2,
         "train.loop.dot_scales": [0.5, 1.0], "train.loop.recent_scales": [1.0], "train.cpus_per_worker": 0.5,
         "score.k": 20, "features.sequence_length": 12,
         "ranker.training_nights": 2, "ranker.transformer_n": 20, "ranker.neighbour_n": 20, "ranker.popular_n": 10,
         "ranker.max_rounds": 20, "ranker.early_stopping_rounds": 5, "ranker.category_cap": CAP}
TRAINING_NIGHTS = [D - dt.timedelta(days=7), D - dt.timedelta(days=14)]      # newest first, as fits record them
BASELINES = {"popularity_30d", "p_topfreq", "past_recent", "tifu_knn", "cooccurrence", "als"}
CAPPED = f"ranker (category cap {CAP})"
LOGREG = "ranker (logistic regression, Spark MLlib)"


def _ranker_rows() -> set[str]:
    from jobs.ranking import ABLATIONS

    assert ABLATIONS and all(name.startswith("without ") for name in ABLATIONS)
    return {"ranker", "ranker (seed 1)", CAPPED, LOGREG, *(f"ranker ({name})" for name in ABLATIONS)}


def _lake(spark, root: Path, config, planted: bool) -> str:
    from features.synthetic import generate
    from jobs import build_features, ingest

    lake = str(root / "lake")
    drop = root / "drop"
    generate(drop, users=90, items=60, days=28, start_date="2024-01-01", seed=5)
    ingest.run(spark, args_for(ingest.IngestArgs, lake, config, run_date=dt.date(2024, 1, 28),
                               events=(str(drop / "events"),), items=(str(drop / "items"),)))
    if planted:
        later = root / "later"     # two more weeks of the same shop after D's target week: only its events
        generate(later, users=90, items=60, days=14, start_date=D + dt.timedelta(days=8), seed=6)
        ingest.run(spark, args_for(ingest.IngestArgs, lake, config, run_date=D + dt.timedelta(days=21),
                                   events=(str(later / "events"),)))
        build_features.run(spark, args_for(build_features.BuildFeaturesArgs, lake, config,
                                           run_date=D + dt.timedelta(days=12)))
    _register_transformers(spark, lake, str(root / "models"), config)
    return lake


def _register_transformers(spark, lake: str, models: str, config) -> None:
    """An untrained SeqRec for each of the ranker's training nights (seed 0) and for D with seed 1, where
    the backtest looks for the model trained for a night and seed (the registry beside the lake)."""
    import torch

    from features.tables import ITEMS
    from jobs import lake as lakeio
    from training.model import SeqRec, SeqRecConfig
    from training.registry import save_version

    vocab = sorted(r["item_id"] for r in lakeio.read(spark, lake, ITEMS).select("item_id").collect())
    torch.manual_seed(0)
    model = SeqRec(SeqRecConfig(num_items=len(vocab), dim=16, num_layers=1, num_heads=2, max_seq_len=12,
                                dropout=0.0, use_text=False, recent_days=0)).eval()
    for night, seed in ((TRAINING_NIGHTS[0], 0), (TRAINING_NIGHTS[1], 0), (D, 1)):
        save_version(models, config.train.name, f"{night:%Y%m%d}-test{seed}", model, vocab, {"seed": seed},
                     {"val_ndcg@10": 0.1}, {})


def _recording(category_cap, top_lists, calls: list):
    """``training.ranker.category_cap`` that also keeps its lists and the uncapped top K they start from:
    the summary holds only the lists' digests."""
    def recorded(frame, score, rows, k, categories, cap):
        lists = category_cap(frame, score, rows, k, categories, cap)
        calls.append({"capped": lists, "uncapped": top_lists(frame, score, rows, k), "cap": cap, "k": k})
        return lists

    return recorded


@pytest.fixture(scope="module")
def runs(spark, config, tmp_path_factory, interpreted_sql):
    from jobs import backtest
    from training import ranker as R

    config = config.with_overrides(SMALL)
    out = {}
    for planted in (False, True):
        root = tmp_path_factory.mktemp("planted" if planted else "plain")
        lake = _lake(spark, root, config, planted)
        capped = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(R, "category_cap", _recording(R.category_cap, R.top_lists, capped))
            summary = backtest.run(spark, args_for(backtest.BacktestArgs, lake, config, run_dates=(D,), horizon=7,
                                                   seeds="0,1", ranker=True, ablation=True))
        report = Path(summary["report"])
        out[planted] = {"summary": summary, "result": json.loads((report.parent / "summary.json").read_text()),
                        "html": report.read_text(), "lake": lake, "capped": capped}
    return out


def test_writes_the_pooled_table_a_plot_per_night_and_every_baseline(runs):
    result = runs[False]["result"]
    assert result["nights"] == [str(D)] and result["horizon_days"] == 7
    assert set(result["pooled"]) == BASELINES | {"lists", "lists (seed 1)"} | _ranker_rows()
    night = result["per_night"][0]
    assert night["users"] == result["users_judged"] > 0
    assert set(night["tuned"]) == BASELINES
    assert len(night["tuned"]["tifu_knn"]["validation_ndcg@10"]) == 48      # every grid point is recorded
    for row in result["pooled"].values():
        assert 0.0 <= row["ndcg@10"] <= 1.0
        low, high = row["ndcg@10_ci"]
        assert low <= row["ndcg@10"] <= high
    c = result["lists_vs_best"]
    assert c["ci_low"] <= c["diff"] <= c["ci_high"]
    html = runs[False]["html"]
    assert "Pooled over the nights" in html


def test_the_ranker_its_ablation_the_cap_and_the_logistic_regression_are_judged(runs):
    result = runs[False]["result"]
    pooled = result["pooled"]
    for table in (pooled, *(n["methods"] for n in result["per_night"])):
        for name in _ranker_rows():
            ndcg = table[name]["ndcg@10"]
            assert math.isfinite(ndcg) and 0.0 <= ndcg <= 1.0, name
            low, high = table[name]["ndcg@10_ci"]
            assert low <= ndcg <= high, name
    # each comparison is the difference of the pooled means (every judged user has an NDCG), inside its interval
    best, best_explore = result["best_baseline"], result["best_explore_baseline"]
    assert best in BASELINES and best_explore in BASELINES
    for key, a, b, metric in (("ranker_vs_best", "ranker", best, "ndcg@10"),
                              ("ranker_vs_lists", "ranker", "lists", "ndcg@10"),
                              ("ranker_explore_vs_best", "ranker", best_explore, "explore_ndcg@10")):
        c = result[key]
        assert c["ci_low"] <= c["diff"] <= c["ci_high"], key
        assert c["clusters"] == c["units"] <= result["users_judged"], key
        if metric == "ndcg@10":
            assert c["diff"] == pytest.approx(pooled[a][metric] - pooled[b][metric], abs=2e-6), key
    for key, first in (("seed_spread", "lists"), ("ranker_seed_spread", "ranker")):
        for metric in ("ndcg@10", "explore_ndcg@10"):
            spread, seeds = result[f"{key}_{metric}"], [first, f"{first} (seed 1)"]
            assert spread["night"] == str(D) and spread["seeds"] == seeds and spread["n"] == 2, key
            figures = sorted(pooled[s][metric] for s in seeds)       # one night: the pooled means are that night's
            assert [spread["min"], spread["max"]] == pytest.approx(figures, abs=2e-6), key
            assert spread["mean"] == pytest.approx(sum(figures) / 2, abs=2e-6), key


def test_each_nights_ranker_records_recall_importances_diversity_and_its_fits(runs):
    features = _feature_names()
    fitted = _ranker_rows() - {CAPPED}
    for night in runs[False]["result"]["per_night"]:
        ranker, d = night["ranker"], dt.date.fromisoformat(night["night"])
        recall = ranker["recall"]
        # the top 100 are among the top 200, which are among the candidates
        assert 0.0 < recall["recall@100"] <= recall["recall@200"] <= recall["union_recall"] <= 1.0
        assert recall["candidates_per_user"] > 0
        names, shares = zip(*ranker["importances"])
        assert len(set(names)) == len(names) <= ranker["features"] and set(names) <= features
        assert all(s >= 0 for s in shares) and list(shares) == sorted(shares, reverse=True)
        assert sum(shares) == pytest.approx(1.0, abs=1e-5 * len(shares))   # gain shares, each rounded to 5 places
        diversity = ranker["diversity@10"]
        assert set(diversity) == {"ranker", CAPPED}
        assert 0.0 < diversity["ranker"] <= diversity[CAPPED] <= 1.0     # the cap never drops a top-10 category
        assert set(ranker["fits"]) == fitted
        for name, fit in ranker["fits"].items():
            assert [dt.date.fromisoformat(x) for x in fit["training_nights"]] == TRAINING_NIGHTS, name
            assert all(dt.date.fromisoformat(x) < d for x in fit["training_nights"]), name
            assert fit["train_rows"] > 0 and fit["valid_rows"] > 0, name
        for name in fitted - {LOGREG}:
            assert 1 <= ranker["fits"][name]["rounds"] <= SMALL["ranker.max_rounds"], name
        assert str(ranker["fits"][LOGREG]["reg_param"]) in ranker["fits"][LOGREG]["validation_ndcg@10_by_reg_param"]


def _feature_names() -> set[str]:
    """Every column the ranker's candidates can carry as a feature."""
    from features.tables import ITEM_FEATURES, USER_FEATURES, USER_ITEM_FEATURES
    from training.ranker import RETRIEVAL_FEATURES

    return {*RETRIEVAL_FEATURES, *USER_ITEM_FEATURES.columns, *(f"user_{c}" for c in USER_FEATURES.columns),
            *(f"item_{c}" for c in ITEM_FEATURES.columns)}


def test_the_capped_lists_hold_at_most_the_cap_per_category_until_the_candidates_run_out(runs, spark):
    from training import backtest as B

    night = runs[False]["result"]["per_night"][0]
    (call,) = runs[False]["capped"]            # one night; only the first seed's lists are capped
    assert call["cap"] == CAP and call["k"] == SMALL["score.k"]
    digests = night["lists_sha256"]
    assert B.digest(call["capped"]) == digests[CAPPED] and B.digest(call["uncapped"]) == digests["ranker"]
    assert digests[CAPPED] != digests["ranker"]              # the cap changed some list
    categories = _catalogue_categories(spark, runs[False]["lake"])
    capped_share, uncapped_share = [], []
    for capped, uncapped in zip(call["capped"], call["uncapped"]):
        assert len(capped) == len(uncapped) <= call["k"] and len(set(capped.tolist())) == len(capped)
        seen, over = Counter(), []
        for item in capped:
            seen[categories[item]] += 1
            over.append(seen[categories[item]] > CAP)
        # an item past the cap only after every item within it: the fill once the candidates ran out
        assert over == sorted(over)
        if len(capped):
            capped_share.append(len(set(categories[capped[:10]])) / len(capped[:10]))
            uncapped_share.append(len(set(categories[uncapped[:10]])) / len(uncapped[:10]))
            assert capped_share[-1] >= uncapped_share[-1]
    # the summary's diversity@10 is that of these lists under the lake's own categories
    assert night["ranker"]["diversity@10"][CAPPED] == pytest.approx(np.mean(capped_share), abs=1e-4)
    assert night["ranker"]["diversity@10"]["ranker"] == pytest.approx(np.mean(uncapped_share), abs=1e-4)


def _catalogue_categories(spark, lake: str) -> np.ndarray:
    """(V,) each catalogue item's category name, in the backtest's catalogue order (item ids sorted)."""
    from features.tables import ITEMS
    from jobs import lake as lakeio

    items = lakeio.read(spark, lake, ITEMS).select("item_id", "category").toPandas()
    items = items.assign(item_id=items["item_id"].astype(str)).sort_values("item_id", kind="stable")
    return items["category"].fillna("(none)").to_numpy()


def test_the_report_has_the_ranker_section_and_its_importances(runs):
    html = runs[False]["html"]
    assert "<h2>The two-stage ranker</h2>" in html
    assert html.count('alt="ranker feature importances" src="data:image/png;base64,') == 1
    assert html.count("data:image/png;base64,") == 2                  # the night's plot and the importances
    for name in _ranker_rows():
        assert html.count(f"<td>{name}</td>") == 2, name            # the pooled table and the night's


def test_nothing_after_the_night_changes_what_is_fitted_or_listed(runs, spark):
    plain, planted = (runs[p]["result"]["per_night"][0] for p in (False, True))
    assert _ranker_rows() <= set(plain["lists_sha256"])
    assert planted["lists_sha256"] == plain["lists_sha256"]            # every method's lists, the ranker's too
    assert planted["tuned"] == plain["tuned"]                          # tuning: parameters and every figure
    assert planted["ranker"] == plain["ranker"]                        # its fits, recall, importances, diversity
    assert planted["validation_users"] == plain["validation_users"]
    assert planted["users"] != 0
    # the model's training rows: the sequences as of D are the same rows in both lakes
    from features.tables import USER_SEQUENCES
    from jobs import lake as lakeio
    from pyspark.sql import functions as F
    from pyspark.testing import assertDataFrameEqual

    rows = [lakeio.read(spark, runs[p]["lake"], USER_SEQUENCES).where(F.col("as_of_date") == F.lit(D))
            for p in (False, True)]
    assertDataFrameEqual(rows[1], rows[0])


def test_a_bad_night_list_is_one_usage_error(config, tmp_path):
    from jobs import backtest, runtime

    with pytest.raises(runtime.UsageError, match="--run-dates or --from/--to, not both"):
        args_for(backtest.BacktestArgs, str(tmp_path), config, run_dates=(D,), from_date=D).nights()
    with pytest.raises(runtime.UsageError, match="unknown baseline nope"):
        args_for(backtest.BacktestArgs, str(tmp_path), config, run_dates=(D,), methods="nope").method_list()
