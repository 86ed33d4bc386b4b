"""`warmstart backtest` on generated lakes: what it writes, and that nothing after the night leaks in.

Two lakes hold the same generated four weeks; the second also holds two more weeks of purchases from the
end of D's target week on (after D + 1 day, leaving D's targets as they are so the same users are judged)
and feature partitions built after D. The backtest of night D on each must
fit the same things and publish the same lists: the model's training rows, every baseline's tuned
parameters and validation figures, and every method's lists (compared by digest).
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from conftest import args_for

pytestmark = pytest.mark.slow

D = dt.date(2024, 1, 21)
SMALL = {"train.model.dim": 16, "train.model.num_layers": 1, "train.model.num_heads": 2,
         "train.model.max_seq_len": 12, "train.model.use_text": False, "train.loop.epochs": 2,
         "train.loop.dot_scales": [0.5, 1.0], "train.loop.recent_scales": [1.0], "train.cpus_per_worker": 0.5,
         "score.k": 20, "features.sequence_length": 12}


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
    return lake


@pytest.fixture(scope="module")
def runs(spark, config, tmp_path_factory):
    from jobs import backtest

    config = config.with_overrides(SMALL)
    out = {}
    for planted in (False, True):
        root = tmp_path_factory.mktemp("planted" if planted else "plain")
        lake = _lake(spark, root, config, planted)
        summary = backtest.run(spark, args_for(backtest.BacktestArgs, lake, config, run_dates=(D,), horizon=7))
        report = Path(summary["report"])
        out[planted] = {"summary": summary, "result": json.loads((report.parent / "summary.json").read_text()),
                        "html": report.read_text(), "lake": lake}
    return out


def test_writes_the_pooled_table_a_plot_per_night_and_every_baseline(runs):
    result = runs[False]["result"]
    assert result["nights"] == [str(D)] and result["horizon_days"] == 7
    methods = set(result["pooled"])
    assert methods == {"lists", "popularity_30d", "p_topfreq", "past_recent", "tifu_knn", "cooccurrence", "als"}
    night = result["per_night"][0]
    assert night["users"] == result["users_judged"] > 0
    assert set(night["tuned"]) == methods - {"lists"}
    assert len(night["tuned"]["tifu_knn"]["validation_ndcg@10"]) == 48      # every grid point is recorded
    for row in result["pooled"].values():
        assert 0.0 <= row["ndcg@10"] <= 1.0
        low, high = row["ndcg@10_ci"]
        assert low <= row["ndcg@10"] <= high
    c = result["lists_vs_best"]
    assert c["ci_low"] <= c["diff"] <= c["ci_high"]
    html = runs[False]["html"]
    assert html.count("data:image/png;base64,") == 1 and "Pooled over the nights" in html


def test_nothing_after_the_night_changes_what_is_fitted_or_listed(runs, spark):
    plain, planted = (runs[p]["result"]["per_night"][0] for p in (False, True))
    assert planted["lists_sha256"] == plain["lists_sha256"]            # every method's lists, the model's too
    assert planted["tuned"] == plain["tuned"]                          # tuning: parameters and every figure
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
