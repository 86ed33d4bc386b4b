"""MLflow tracking (jobs/tracking.py) against a real local store (SQLite + artifact folder), read back with
``mlflow.MlflowClient``: a model version's params, metrics, per-epoch curves, artifacts and its registered
version with the folder registry's name and lineage tags; a backtest's pooled figures and per-night steps;
tracking off writes nothing; a broken store warns and never fails the job. The slow test logs a real tiny
Ray Train run through jobs/train.py."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from jobs import runtime, tracking

NAME, VERSION = "warmstart-seqrec", "20240301-abc1234567"
HISTORY = [  # the selection run's epochs as training/train_loop.py records them
    {"epoch": 0, "train_loss": 7.5, "val_ndcg@10": 0.10, "val_recall@10": 0.20, "stopping": False},
    {"epoch": 1, "train_loss": 6.0, "val_ndcg@10": 0.25, "val_recall@10": 0.30, "stopping": False},
    {"epoch": 2, "train_loss": 5.5, "val_ndcg@10": 0.20, "val_recall@10": 0.28, "stopping": True},
]


def _args(tmp_path: Path, uri: str | None, job: str = "train"):
    overrides = {"paths.models": str(tmp_path / "models"), "paths.reports": str(tmp_path / "reports")}
    if uri is not None:
        overrides["tracking.mlflow_uri"] = uri
    return runtime.job_args(job, str(tmp_path / "lake"), **overrides)


def _fake_version(models: Path) -> Path:
    folder = models / NAME / VERSION
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": {"dim": 32, "num_layers": 2}, "train": {"lr": 0.005}}))
    (folder / "metrics.json").write_text(json.dumps({
        "val_ndcg@10": 0.25, "val_recall@10": 0.30, "best_epoch": 1, "use_gpu": False, "history": HISTORY,
        "refit_history": [{"refit_epoch": 0, "train_loss": 7.4}, {"refit_epoch": 1, "train_loss": 6.1}]}))
    (folder / "lineage.json").write_text(json.dumps({
        "run_id": "train-2024-03-01-x", "code_version": "deadbeef",
        "inputs": {"features/user_sequences": 3, "bronze/items": 1}}))
    (folder / "model.safetensors").write_bytes(b"not logged: the weights stay in the folder registry")
    return folder


def _client(store: Path):
    import mlflow

    uri = f"sqlite:///{store / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_store_uris_make_a_folder_a_local_sqlite_store(tmp_path):
    assert tracking.store_uris(str(tmp_path / "mlruns")) == (
        f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", (tmp_path / "mlruns" / "artifacts").as_uri())
    assert tracking.store_uris((tmp_path / "m2").as_uri())[0] == f"sqlite:///{tmp_path / 'm2' / 'mlflow.db'}"
    assert tracking.store_uris("sqlite:////srv/mlflow.db") == ("sqlite:////srv/mlflow.db", None)
    assert tracking.store_uris("http://mlflow:5000") == ("http://mlflow:5000", None)
    assert tracking.metric_name("val_ndcg@10") == "val_ndcg_at_10"
    assert tracking.metric_name("ranker (logistic regression, Spark MLlib).ndcg@10") == \
        "ranker _logistic regression_ Spark MLlib_.ndcg_at_10"


def test_model_version_is_logged_and_registered_and_read_back(tmp_path):
    folder = _fake_version(tmp_path / "models")
    args = _args(tmp_path, str(tmp_path / "mlruns"))
    out = tracking.log_version(args, "model", NAME, VERSION, dt.date(2024, 3, 1))
    client = _client(tmp_path / "mlruns")

    run = client.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == f"model {NAME} {VERSION}"
    assert run.data.params["model.dim"] == "32" and run.data.params["train.lr"] == "0.005"
    assert run.data.params["run_date"] == "2024-03-01"
    assert run.data.metrics["val_ndcg_at_10"] == 0.25 and run.data.metrics["best_epoch"] == 1.0
    assert "use_gpu" not in run.data.metrics          # booleans are not metrics
    curve = client.get_metric_history(run.info.run_id, "epoch/train_loss")
    assert sorted((m.step, m.value) for m in curve) == [(0, 7.5), (1, 6.0), (2, 5.5)]
    refit = client.get_metric_history(run.info.run_id, "refit/train_loss")
    assert sorted((m.step, m.value) for m in refit) == [(0, 7.4), (1, 6.1)]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["config.json", "lineage.json", "metrics.json"]
    assert run.data.tags["warmstart_version"] == VERSION and run.data.tags["input.features/user_sequences"] == "3"

    mv = client.get_model_version_by_alias(NAME, VERSION)
    assert out["mlflow_model_version"] == f"{NAME}/{mv.version}" == f"{NAME}/1"
    assert mv.run_id == run.info.run_id and mv.source == folder.resolve().as_uri()
    assert mv.tags == {"warmstart_version": VERSION, "warmstart_job": "train", "warmstart_run_id": args.run_id,
                       "run_date": "2024-03-01", "code_version": "deadbeef",
                       "input.features/user_sequences": "3", "input.bronze/items": "1"}

    # a version MLflow holds already (a rerun that reused the folder version) is not logged twice
    again = tracking.log_version(_args(tmp_path, str(tmp_path / "mlruns")), "model", NAME, VERSION, dt.date(2024, 3, 1))
    assert again == out
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_backtest_run_has_pooled_figures_and_a_step_per_night(tmp_path):
    result = {"nights": ["2024-02-01", "2024-02-08"], "horizon_days": 7, "users_judged": 40, "best_baseline": "p_topfreq",
              "grids": {"p_topfreq": [{}]},
              "pooled": {"lists": {"ndcg@10": 0.31, "ndcg@10_ci": [0.2, 0.4]}, "p_topfreq": {"ndcg@10": 0.27}},
              "per_night": [{"night": "2024-02-01", "methods": {"lists": {"ndcg@10": 0.30}}},
                            {"night": "2024-02-08", "methods": {"lists": {"ndcg@10": 0.32}}}]}
    out = tmp_path / "reports" / "backtest" / "x"
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps(result))
    (out / "index.html").write_text("<html></html>")
    logged = tracking.log_backtest(_args(tmp_path, str(tmp_path / "mlruns"), "backtest"), result, str(out))
    client = _client(tmp_path / "mlruns")
    run = client.get_run(logged["mlflow_run_id"])
    assert run.data.metrics == {"lists.ndcg_at_10": 0.31, "p_topfreq.ndcg_at_10": 0.27, "users_judged": 40.0,
                                "night/lists.ndcg_at_10": 0.32}     # a curve's latest value: the last night's
    assert json.loads(run.data.params["nights"]) == result["nights"] and run.data.params["horizon_days"] == "7"
    nights = client.get_metric_history(run.info.run_id, "night/lists.ndcg_at_10")
    stamps = [dt.datetime.fromtimestamp(m.timestamp / 1000, dt.timezone.utc).date().isoformat() for m in nights]
    assert sorted(zip((m.step for m in nights), (m.value for m in nights), stamps)) == [
        (0, 0.30, "2024-02-01"), (1, 0.32, "2024-02-08")]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["index.html", "summary.json"]


def test_tracking_off_writes_nothing_and_a_broken_store_only_warns(tmp_path, caplog):
    _fake_version(tmp_path / "models")
    assert tracking.log_version(_args(tmp_path, None), "model", NAME, VERSION, None) == {}
    assert not (tmp_path / "mlruns").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tracking.log_version(_args(tmp_path, str(blocker)), "model", NAME, VERSION, None)
    assert out == {"mlflow": "failed: FileExistsError"}
    assert "MLflow tracking failed" in caplog.text


@pytest.mark.slow
def test_a_real_tiny_train_run_is_tracked(spark, lake, tmp_path, config):
    """jobs/train.py with Ray Train (one worker, tiny model) and tracking on: the run MLflow holds has the
    folder version's metrics and per-epoch curve, and the registered version points at its folder."""
    import ray

    from conftest import args_for
    from jobs.train import TrainArgs, run
    from test_train import AS_OF, TINY, write_inputs
    from training.synthetic_sequences import generate

    seqs, items, _ = generate(users=120, categories=6, items_per_category=8, baskets_per_user=5, as_of=AS_OF, max_len=20)
    write_inputs(spark, lake, seqs, items)
    ray.init(num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    store = tmp_path / "mlruns"
    args = args_for(TrainArgs, lake, config, run_date=AS_OF, workers=1,
                    overrides={**TINY, "train.loop.epochs": 2, "paths.models": str(tmp_path / "models"),
                               "paths.reports": str(tmp_path / "reports"), "tracking.mlflow_uri": str(store)})
    try:
        summary = run(args)
    finally:
        ray.shutdown()
    metrics = json.loads((Path(summary["path"]) / "metrics.json").read_text())
    client = _client(store)
    mv = client.get_model_version_by_alias(DEFAULT_NAME := args.config.train.name, summary["version"])
    assert summary["mlflow_model_version"] == f"{DEFAULT_NAME}/{mv.version}"
    assert mv.source == Path(summary["path"]).resolve().as_uri() and mv.run_id == summary["mlflow_run_id"]
    tracked = client.get_run(summary["mlflow_run_id"])
    assert tracked.data.metrics["val_ndcg_at_10"] == pytest.approx(metrics["val_ndcg@10"])
    curve = client.get_metric_history(summary["mlflow_run_id"], "epoch/val_ndcg_at_10")
    assert sorted((m.step, m.value) for m in curve) == [(h["epoch"], pytest.approx(h["val_ndcg@10"]))
                                                        for h in metrics["history"]]
    lineage = json.loads((Path(summary["path"]) / "lineage.json").read_text())
    assert mv.tags["input.features/user_sequences"] == str(lineage["inputs"]["features/user_sequences"])
