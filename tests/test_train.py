"""jobs/train.py end to end with Ray Train on tiny hand-made data: a 2-worker CPU TorchTrainer run, the
registry it writes, the rerun that changes nothing, a worker killed mid-training that resumes from its
checkpoint, the LATEST promotion rule, and bad input."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from features.tables import ITEMS, USER_SEQUENCES
from jobs import lake as lakeio
from jobs import runtime

AS_OF = dt.date(2024, 3, 1)

TINY = {"train.model.dim": 32, "train.model.num_layers": 2, "train.model.num_heads": 2,
        "train.model.max_seq_len": 20, "train.model.dropout": 0.0, "train.loop.batch_size": 32,
        "train.loop.epochs": 3, "train.loop.patience": 3, "train.loop.lr": 0.005, "train.cpus_per_worker": 0.5}


def _py(value):
    return value.to_pydatetime() if hasattr(value, "to_pydatetime") else value


def write_inputs(spark, lake: str, seqs, items) -> None:
    seq_rows = [tuple(_py(r[c]) for c in USER_SEQUENCES.columns) for r in seqs.to_dict("records")]
    lakeio.replace_partition(spark, lake, USER_SEQUENCES,
                             spark.createDataFrame(seq_rows, USER_SEQUENCES.schema), AS_OF)
    item_rows = [tuple(_py(r[c]) for c in ITEMS.columns) for r in items.to_dict("records")]
    lakeio.merge_upsert(spark, lake, ITEMS, spark.createDataFrame(item_rows, ITEMS.schema))


def train_args(lake: str, config, tmp_path: Path, workers: int = 2, force: bool = False, **overrides):
    from jobs.train import TrainArgs

    cfg = config.with_overrides({**TINY, "paths.models": str(tmp_path / "models"),
                                 "paths.reports": str(tmp_path / "reports"), **overrides})
    common = runtime.job_args("train", lake, cfg, AS_OF)
    return TrainArgs(**{f.name: getattr(common, f.name) for f in dataclasses.fields(runtime.JobArgs)},
                     run_date=AS_OF, workers=workers, force=force)


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    ray.init(num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(Path("/tmp") / f"ray-wt-{tmp_path_factory.getbasetemp().name[-8:]}"),
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def synthetic():
    from training.synthetic_sequences import generate

    return generate(users=120, categories=6, items_per_category=8, baskets_per_user=5, as_of=AS_OF, max_len=20)


@pytest.mark.slow
def test_two_worker_run_survives_a_killed_worker_registers_and_rerun_changes_nothing(
        spark, lake, tmp_path, config, ray_local, synthetic):
    """One 2-worker CPU TorchTrainer run in which the last rank SIGKILLs its own process at the start of
    epoch 2 (once, guarded by a marker file): Ray restarts the worker group from epoch 1's checkpoint
    (model + optimizer in safetensors) and the run finishes and registers the best epoch."""
    from jobs.train import run
    from training.data import rebuy_log_odds, split_sequence
    from training.registry import latest_version, load_model

    seqs, items, _ = synthetic
    write_inputs(spark, lake, seqs, items)
    marker = tmp_path / "killed.txt"
    kill = {"train.loop.chaos_kill_at_epoch": 2, "train.loop.chaos_marker": str(marker)}
    first = run(train_args(lake, config, tmp_path, **kill))
    assert "killed rank 1" in marker.read_text()
    assert first["resumed_from_epoch"] == 2                 # restarted with epochs 0-1 done
    assert first["reused"] is False and first["promoted"] is True
    assert first["workers"] == 2 and first["epochs_run"] == 3
    assert first["catalogue_size"] == 48
    # every user has 5 baskets: one for validation, one for test, three to train on
    assert first["val_users"] == 120 and first["train_sequences_per_epoch"] == 120
    # the refit: the chosen epoch count again, on every user's events up to the test basket
    assert first["refit_epochs"] == first["best_epoch"] + 1 and first["refit_sequences_per_epoch"] == 120
    folder = Path(first["path"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "item_vocab.json", "lineage.json",
                                                         "metrics.json", "model.safetensors"]
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["inputs"] == {"features/user_sequences": lakeio.version(spark, lake, USER_SEQUENCES),
                                 "bronze/items": lakeio.version(spark, lake, ITEMS)}
    assert lineage["code_version"] == runtime.code_version()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    assert metrics["val_ndcg@10"] == max(h["val_ndcg@10"] for h in metrics["history"])
    assert [h["refit_epoch"] for h in metrics["refit_history"]] == list(range(metrics["refit_epochs"]))
    assert 0.0 < metrics["val_ndcg@10"] <= 1.0
    # the dot product's and recent popularity's scales were chosen on the best epoch's validation NDCG@10
    # and registered; this lake has no features/item_daily, so the recent term is 0 and its ties go to 1
    by_pair = {tuple(float(x) for x in pair.split()): v for pair, v in metrics["scales_val_ndcg@10"].items()}
    assert sorted({a for a, _ in by_pair}) == [0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0]
    assert sorted({c for _, c in by_pair}) == [0.25, 0.5, 0.75, 1.0] and len(by_pair) == 40
    assert by_pair[(1.0, 1.0)] == pytest.approx(metrics["val_ndcg@10"], abs=1e-6)
    chosen = (metrics["dot_scale"], metrics["recent_scale"])
    assert chosen == (first["dot_scale"], first["recent_scale"]) and by_pair[chosen] == max(by_pair.values())
    assert metrics["recent_scale"] == 1.0
    assert json.loads((folder / "config.json").read_text())["model"]["dot_scale"] == metrics["dot_scale"]
    assert latest_version(str(tmp_path / "models"), "warmstart-seqrec") == first["version"]
    model = load_model(str(tmp_path / "models"))
    assert model.item_ids == sorted(items["item_id"])
    assert model.dim == 32 and model.max_seq_len == 20
    # the registered (refit) weights carry the rebuy log-odds of the refit inputs, counted here directly
    buyers, rebuyers = np.zeros(48), np.zeros(48)
    index = {item: i for i, item in enumerate(model.item_ids)}
    for r in seqs.to_dict("records"):
        s = split_sequence(r["item_ids"], r["event_types"], r["event_ts"])
        baskets_of: dict[str, set] = {}
        for item, kind, basket in zip(s.test_items, s.test_types, s.baskets):
            if kind == "purchase":
                baskets_of.setdefault(item, set()).add(basket)
        for item, baskets in baskets_of.items():
            buyers[index[item]] += 1
            rebuyers[index[item]] += len(baskets) > 1
    assert rebuyers.sum() > 0
    assert np.allclose(model.model.rebuy_log_odds.numpy(), rebuy_log_odds(buyers, rebuyers), atol=1e-6)

    before = sorted((str(p), p.stat().st_mtime_ns) for p in (tmp_path / "models").rglob("*") if p.is_file())
    second = run(train_args(lake, config, tmp_path, **kill))
    after = sorted((str(p), p.stat().st_mtime_ns) for p in (tmp_path / "models").rglob("*") if p.is_file())
    assert second["reused"] is True and second["version"] == first["version"]
    assert after == before


def test_missing_sequences_is_a_usage_error(lake, tmp_path, config):
    from jobs.train import run

    with pytest.raises(runtime.UsageError, match="features/user_sequences does not exist"):
        run(train_args(lake, config, tmp_path))


def test_bad_model_config_is_a_usage_error(spark, lake, tmp_path, config, synthetic):
    from jobs.train import model_and_loop_configs

    cfg = config.with_overrides({"train.model.dim": 30, "train.model.num_heads": 4})
    with pytest.raises(runtime.UsageError, match="divisible"):
        model_and_loop_configs(cfg, 10)


def test_cli_missing_partition_exits_2(spark, lake, tmp_path, synthetic, capsys):
    from jobs.train import main

    seqs, items, _ = synthetic
    write_inputs(spark, lake, seqs, items)
    rc = main(["--lake", lake, "--run-date", "2030-01-01", f"paths.models={tmp_path / 'm'}"])
    assert rc == 2
    assert "no rows for as_of_date 2030-01-01" in capsys.readouterr().err
