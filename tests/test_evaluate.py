"""jobs/evaluate.py on hand-made sequences: who is evaluated, baseline metrics worked out by hand (seen
items eligible and masked), the report files, a rerun that changes nothing, and bad arguments."""
from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pytest
import torch

from features.tables import ITEMS, USER_SEQUENCES
from jobs import lake as lakeio
from jobs import runtime
from conftest import args_for

AS_OF = dt.date(2024, 3, 1)
P = "purchase"


def ts(day: int) -> dt.datetime:
    return dt.datetime(2024, 2, day, 12, 0)


# user -> (items, event types, timestamps), oldest first
ROWS = {
    "u1": (["A", "B", "A"], [P, P, P], [ts(1), ts(2), ts(3)]),            # target {A}, history [A, B]
    "u2": (["B", "C", "C", "D"], [P, P, P, P], [ts(1), ts(2), ts(3), ts(3)]),  # basket {C, D}, history [B, C]
    "u3": (["A", "E"], [P, P], [ts(1), ts(2)]),                           # 2 purchases: below min_purchases
    "u4": (["A", "B", "C"], [P, P, P], [ts(1), ts(1), ts(1)]),            # one basket: no history
    "u5": (["A", "B", "Z"], [P, P, P], [ts(1), ts(2), ts(3)]),            # target Z is outside the catalogue
}


def write_sequences(spark, lake: str, rows: dict = ROWS) -> None:
    rows = [(u, AS_OF, i, t, s, len(i)) for u, (i, t, s) in rows.items()]
    lakeio.replace_partition(spark, lake, USER_SEQUENCES, spark.createDataFrame(rows, USER_SEQUENCES.schema), AS_OF)


def save_model(models_root: str, name: str, sequences_version: int) -> None:
    from training.model import SeqRec, SeqRecConfig
    from training.registry import promote, save_version

    torch.manual_seed(0)
    model = SeqRec(SeqRecConfig(num_items=5, dim=8, num_heads=2, max_seq_len=4, use_text=False))
    save_version(models_root, name, "v1", model, ["A", "B", "C", "D", "E"],
                 {"target_event_types": ["purchase"]}, {"val_ndcg@10": 0.1, "history": []},
                 {"run_date": str(AS_OF), "inputs": {"features/user_sequences": sequences_version}})
    promote(models_root, name, "v1", margin=0.0)


def eval_args(lake: str, config, tmp_path: Path, baselines: str | None, mask_seen: bool = False, version="latest",
              **overrides):
    from jobs.evaluate import EvaluateArgs

    return args_for(EvaluateArgs, lake, config, run_date=AS_OF, model_version=version, baselines=baselines,
                    mask_seen=mask_seen,
                    overrides={"paths.models": str(tmp_path / "models"), "paths.reports": str(tmp_path / "reports"),
                               "evaluate.als_rank": 2, "evaluate.als_max_iter": 3, **overrides})


@pytest.mark.slow
def test_evaluate_protocol_baselines_report_and_rerun(spark, lake, tmp_path, config):
    from jobs.evaluate import run

    write_sequences(spark, lake)
    save_model(str(tmp_path / "models"), config.train.name, lakeio.version(spark, lake, USER_SEQUENCES))
    summary = run(spark, eval_args(lake, config, tmp_path, "popularity,repeat,cooccurrence,als", mask_seen=True))
    out = tmp_path / "reports" / str(AS_OF) / "model"
    ev = json.loads((out / "metrics.json").read_text())
    assert ev["users_evaluated"] == 2 and summary["users_evaluated"] == 2
    assert ev["users_skipped"] == {"few_purchases": 1, "no_history": 1, "targets_outside_catalogue": 1,
                                   "targets_not_recommended": 0}
    assert ev["catalogue_size"] == 5 and ev["mean_target_size"] == 1.5
    assert ev["repurchase_share"] == pytest.approx(2 / 3, abs=1e-6)   # A (u1) and C (u2) of A, C, D
    g = lambda r: 1 / math.log2(r + 1)                                 # noqa: E731 - gain at rank r
    ideal2 = g(1) + g(2)
    pop, rep = ev["results"]["popularity"], ev["results"]["repeat"]
    # popularity over histories [A,B],[B,C]: B, A, C, D, E -> u1: A at 2; u2: C at 3, D at 4
    assert pop["ndcg@10"] == pytest.approx((g(2) + (g(3) + g(4)) / ideal2) / 2, abs=1e-6)
    assert pop["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2, abs=1e-6)
    assert pop["recall@10"] == 1.0 and pop["coverage@20"] == 1.0
    # repeat: u1 B (more recent), A -> A at 2; u2 C, B, then popularity A, D -> C at 1, D at 4
    assert rep["ndcg@10"] == pytest.approx((g(2) + (g(1) + g(4)) / ideal2) / 2, abs=1e-6)
    # masked: u1 -> C, D, E, A, B: A at 4; u2 -> A, D, E, B, C: D at 2, C at 5
    masked = ev["variants"]["masked"]["popularity"]
    assert masked["ndcg@10"] == pytest.approx((g(4) + (g(2) + g(5)) / ideal2) / 2, abs=1e-6)
    for method in ("model", "cooccurrence", "als"):
        assert 0.0 < ev["results"][method]["ndcg@10"] <= 1.0
    assert ev["best_baseline"] in ("repeat", "cooccurrence", "als")
    html = (out / "index.html").read_text()
    assert "data:image/png;base64," in html and "http" not in html.replace("http-equiv", "")
    assert "<td>repeat</td>" in html and "Seen items masked" in html

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    run(spark, eval_args(lake, config, tmp_path, "popularity,repeat,cooccurrence,als", mask_seen=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_unknown_baseline_and_missing_model_are_usage_errors(spark, lake, tmp_path, config):
    from jobs.evaluate import run

    write_sequences(spark, lake)
    with pytest.raises(runtime.UsageError, match="no LATEST model"):
        run(spark, eval_args(lake, config, tmp_path, "popularity"))
    save_model(str(tmp_path / "models"), config.train.name, lakeio.version(spark, lake, USER_SEQUENCES))
    with pytest.raises(runtime.UsageError, match="unknown baseline.*bogus"):
        run(spark, eval_args(lake, config, tmp_path, "popularity,bogus"))
    with pytest.raises(runtime.UsageError, match="missing"):
        run(spark, eval_args(lake, config, tmp_path, "popularity", version="v9"))
    with pytest.raises(runtime.UsageError, match="no LATEST model for 'other-model'"):   # the registry name is train.name
        run(spark, eval_args(lake, config, tmp_path, "popularity", **{"train.name": "other-model"}))


def test_items_scoring_never_recommends_are_neither_candidates_nor_targets(spark, lake, tmp_path, config):
    """D is postage (category non_product): u2's basket {C, D} counts as {C}, u6 (basket {D}) is skipped,
    and no method ranks D."""
    from jobs.evaluate import run

    u6 = (["A", "B", "D"], [P, P, P], [ts(1), ts(2), ts(3)])
    write_sequences(spark, lake, {**ROWS, "u6": u6})
    items = [(i, f"item {i}", None, "non_product" if i == "D" else "home", None, 1.0, ts(1)) for i in "ABCDE"]
    lakeio.append(spark, lake, ITEMS, spark.createDataFrame(items, ITEMS.schema))
    save_model(str(tmp_path / "models"), config.train.name, lakeio.version(spark, lake, USER_SEQUENCES))
    run(spark, eval_args(lake, config, tmp_path, "popularity,repeat", mask_seen=True))
    ev = json.loads((tmp_path / "reports" / str(AS_OF) / "model" / "metrics.json").read_text())
    assert ev["users_evaluated"] == 2
    assert ev["users_skipped"] == {"few_purchases": 1, "no_history": 1, "targets_outside_catalogue": 1,
                                   "targets_not_recommended": 1}
    assert (ev["catalogue_size"], ev["candidate_items"], ev["mean_target_size"]) == (5, 4, 1.0)
    g = lambda r: 1 / math.log2(r + 1)                                 # noqa: E731 - gain at rank r
    # popularity over [A,B],[B,C]: B, A, C, E (D last, never offered) -> u1: A at 2; u2: C at 3
    pop = ev["results"]["popularity"]
    assert pop["ndcg@10"] == pytest.approx((g(2) + g(3)) / 2, abs=1e-6)
    assert pop["recall@10"] == 1.0 and pop["coverage@20"] == 1.0       # 4 of the 4 recommendable items
    # masked (seen items and D at -inf, ties by index): u1 -> C, E, A, B, D: A at 3; u2 -> A, E, B, C, D: C at 4
    masked = ev["variants"]["masked"]["popularity"]
    assert masked["ndcg@10"] == pytest.approx((g(3) + g(4)) / 2, abs=1e-6)
    for variant in ev["variants"].values():
        for method in variant.values():
            assert method["coverage@20"] <= 1.0


def test_eligible_users_give_each_target_baskets_day():
    """The day each user's target basket falls on (days since 1970-01-01): the day the model's
    recent-popularity term is read for, as a nightly scoring on the eve would."""
    from jobs.evaluate import eligible_users

    rows = [{"user_id": u, "item_ids": i, "event_types": t, "event_ts": s} for u, (i, t, s) in ROWS.items()]
    index = {item: k for k, item in enumerate("ABCDE")}
    users, *_, days, skipped = eligible_users(rows, index, ("purchase",), 3)
    epoch = dt.date(1970, 1, 1)
    assert users == ["u1", "u2"] and skipped["few_purchases"] == 1
    assert days == [(dt.date(2024, 2, 3) - epoch).days] * 2


def test_summary_json_carries_the_masked_figures_with_mask_seen(spark, lake, tmp_path, config):
    """`--mask-seen --summary-json F`: F holds the masked variant under ``masked_seen_`` keys beside the
    unmasked figures (which keep their names); without --mask-seen there are none."""
    from jobs.evaluate import main, run

    write_sequences(spark, lake)
    save_model(str(tmp_path / "models"), config.train.name, lakeio.version(spark, lake, USER_SEQUENCES))
    out = tmp_path / "summary.json"
    rc = main(["--lake", lake, "--run-date", str(AS_OF), "--baselines", "popularity,repeat", "--mask-seen",
               "--summary-json", str(out), f"paths.models={tmp_path / 'models'}",
               f"paths.reports={tmp_path / 'reports'}"])
    assert rc == 0
    summary = json.loads(out.read_text())
    g = lambda r: 1 / math.log2(r + 1)                                 # noqa: E731 - gain at rank r
    ideal2 = g(1) + g(2)
    # unmasked popularity (B, A, C, D, E): u1 A at 2; u2 C at 3, D at 4
    assert summary["popularity_ndcg@10"] == pytest.approx((g(2) + (g(3) + g(4)) / ideal2) / 2, abs=1e-6)
    # masked, popularity and repeat alike (seen items at -inf): u1 C, D, E, A, B: A at 4; u2 A, D, E, B, C:
    # D at 2, C at 5
    masked = (g(4) + (g(2) + g(5)) / ideal2) / 2
    assert summary["masked_seen_popularity_ndcg@10"] == pytest.approx(masked, abs=1e-6)
    assert summary["masked_seen_repeat_ndcg@10"] == pytest.approx(masked, abs=1e-6)
    ev = json.loads((tmp_path / "reports" / str(AS_OF) / "model" / "metrics.json").read_text())
    model_masked = ev["variants"]["masked"]["model"]
    assert summary["masked_seen_model_ndcg@10"] == model_masked["ndcg@10"]
    assert summary["masked_seen_model_recall@10"] == model_masked["recall@10"]
    assert summary["masked_seen_best_baseline"] == "popularity"        # the tie goes to the first named
    assert summary["masked_seen_lift_ndcg10_vs_best_baseline"] == round(model_masked["ndcg@10"] / masked - 1, 4)
    assert summary["model_ndcg@10"] == ev["results"]["model"]["ndcg@10"] != model_masked["ndcg@10"]

    plain = run(spark, eval_args(lake, config, tmp_path, "popularity,repeat"))
    assert not [k for k in plain if k.startswith("masked_seen_")]
    assert plain["popularity_ndcg@10"] == summary["popularity_ndcg@10"]
