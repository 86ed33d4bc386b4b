"""jobs/train.py end to end with Ray Train on tiny hand-made data: a 2-worker CPU TorchTrainer run, the
registry it writes, the rerun that changes nothing, a worker killed mid-training that resumes from its
checkpoint, the LATEST promotion rule, and bad input."""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import args_for
from features.tables import ITEMS, USER_SEQUENCES
from jobs import lake as lakeio
from jobs import runtime
from jobs.config import DEFAULT_MODEL_NAME

AS_OF = dt.date(2024, 3, 1)
# The generated users buy one basket a day, 2024-02-24 to 02-28 (synthetic_sequences): a 3-day validation
# window, [02-28, 03-02), holds each user's last basket.
WINDOW = {"first_day": "2024-02-28", "last_day": "2024-03-01"}

TINY = {"train.model.dim": 32, "train.model.num_layers": 2, "train.model.num_heads": 2,
        "train.model.max_seq_len": 20, "train.model.dropout": 0.0, "train.loop.batch_size": 32,
        "train.loop.epochs": 3, "train.loop.patience": 3, "train.loop.lr": 0.005, "train.cpus_per_worker": 0.5,
        "train.validation_days": 3}


def _py(value):
    return value.to_pydatetime() if hasattr(value, "to_pydatetime") else value


def write_inputs(spark, lake: str, seqs, items) -> None:
    seq_rows = [tuple(_py(r[c]) for c in USER_SEQUENCES.columns) for r in seqs.to_dict("records")]
    lakeio.replace_partition(spark, lake, USER_SEQUENCES,
                             spark.createDataFrame(seq_rows, USER_SEQUENCES.schema), AS_OF)
    item_rows = [tuple(_py(r[c]) for c in ITEMS.columns) for r in items.to_dict("records")]
    lakeio.merge_upsert(spark, lake, ITEMS, spark.createDataFrame(item_rows, ITEMS.schema))


def train_args(lake: str, config, tmp_path: Path, workers: int = 2, force: bool = False):
    from jobs.train import TrainArgs

    return args_for(TrainArgs, lake, config, run_date=AS_OF, workers=workers, force=force,
                    overrides={**TINY, "paths.models": str(tmp_path / "models"), "paths.reports": str(tmp_path / "reports")})


def dies_once_at_epoch(epoch: int, marker: str, delay_s: float = 15.0):
    """A worker function: training.train_loop.train_worker, except that the last rank SIGKILLs its own
    process once (``marker`` records it) at the start of ``epoch``, just after reporting the one before.

    The controller registers the previous epoch's checkpoint when it next polls the workers; a kill
    before that restarts from scratch (seen in CI on a busy machine). So the doomed rank lives on for
    ``delay_s`` first, while the others start the epoch and wait for it in the all-reduce."""

    def worker(loop_config: dict) -> None:   # a closure: Ray pickles it by value into the workers
        import os
        import signal
        import time
        from pathlib import Path
        from unittest import mock

        import ray.train

        from training.train_loop import train_worker

        ctx = ray.train.get_context()
        report = ray.train.report

        def report_then_die(metrics: dict, **kwargs) -> None:
            report(metrics, **kwargs)
            rank = ctx.get_world_rank()
            if (metrics.get("epoch") == epoch - 1 and rank == ctx.get_world_size() - 1
                    and not os.path.exists(marker)):
                Path(marker).write_text(f"killed rank {rank} pid {os.getpid()} at epoch {epoch}\n")
                time.sleep(delay_s)
                os.kill(os.getpid(), signal.SIGKILL)

        with mock.patch.object(ray.train, "report", report_then_die):
            train_worker(loop_config)

    return worker


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
    from training.registry import latest_version, load_model

    seqs, items, _ = synthetic
    write_inputs(spark, lake, seqs, items)
    marker = tmp_path / "killed.txt"
    worker = dies_once_at_epoch(2, str(marker))
    first = run(train_args(lake, config, tmp_path), train_loop_per_worker=worker)
    assert "killed rank 1" in marker.read_text()
    assert first["resumed_from_epoch"] == 2                 # restarted with epochs 0-1 done
    assert first["reused"] is False and first["promoted"] is True
    assert first["workers"] == 2 and first["epochs_run"] == 3
    assert first["catalogue_size"] == 48
    # every user has 5 baskets: four before the validation window to train on, the last one in it
    assert first["val_users"] == 120 and first["train_sequences_per_epoch"] == 120
    assert first["validation_window"] == WINDOW and first["val_targets"] == window_targets(seqs)
    # the refit: the chosen epoch count again, on every user's events before the cut-off
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
    assert metrics["validation_window"] == WINDOW
    assert metrics["val_users"] == 120 and metrics["val_targets"] == first["val_targets"]
    assert metrics["val_ndcg@10"] == max(h["val_ndcg@10"] for h in metrics["history"])
    assert [h["refit_epoch"] for h in metrics["refit_history"]] == list(range(metrics["refit_epochs"]))
    assert 0.0 < metrics["val_ndcg@10"] <= 1.0
    assert_scales_chosen_on_validation(metrics, first, folder)
    assert latest_version(str(tmp_path / "models"), DEFAULT_MODEL_NAME) == first["version"]
    model = load_model(str(tmp_path / "models"))
    assert model.item_ids == sorted(items["item_id"])
    assert model.dim == 32 and model.max_seq_len == 20
    assert_refit_rebuy_log_odds(model, seqs)

    before = sorted((str(p), p.stat().st_mtime_ns) for p in (tmp_path / "models").rglob("*") if p.is_file())
    second = run(train_args(lake, config, tmp_path), train_loop_per_worker=worker)
    after = sorted((str(p), p.stat().st_mtime_ns) for p in (tmp_path / "models").rglob("*") if p.is_file())
    assert second["reused"] is True and second["version"] == first["version"]
    assert after == before


def assert_scales_chosen_on_validation(metrics: dict, summary: dict, folder: Path) -> None:
    """The dot product's and recent popularity's scales were chosen on the best epoch's validation
    NDCG@10 and registered; this lake has no features/item_daily, so the recent term is 0 and its ties
    go to 1."""
    by_pair = {tuple(float(x) for x in pair.split()): v for pair, v in metrics["scales_val_ndcg@10"].items()}
    assert sorted({a for a, _ in by_pair}) == [0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0]
    assert sorted({c for _, c in by_pair}) == [0.25, 0.5, 0.75, 1.0] and len(by_pair) == 40
    assert by_pair[(1.0, 1.0)] == pytest.approx(metrics["val_ndcg@10"], abs=1e-6)
    chosen = (metrics["dot_scale"], metrics["recent_scale"])
    assert chosen == (summary["dot_scale"], summary["recent_scale"]) and by_pair[chosen] == max(by_pair.values())
    assert metrics["recent_scale"] == 1.0
    assert json.loads((folder / "config.json").read_text())["model"]["dot_scale"] == metrics["dot_scale"]


def window_targets(seqs) -> int:
    """The validation targets counted here directly: each user's distinct purchases in the window."""
    start = dt.datetime.fromisoformat(WINDOW["first_day"])
    return sum(len({i for i, k, t in zip(r["item_ids"], r["event_types"], r["event_ts"])
                    if k == "purchase" and _py(t) >= start}) for r in seqs.to_dict("records"))


def assert_refit_rebuy_log_odds(model, seqs) -> None:
    """The registered (refit) weights carry the rebuy log-odds of the refit inputs (every event before the
    cut-off, the validation window's too), counted here directly."""
    from training.data import basket_ordinals, rebuy_log_odds

    buyers, rebuyers = np.zeros(48), np.zeros(48)
    index = {item: i for i, item in enumerate(model.item_ids)}
    for r in seqs.to_dict("records"):
        baskets_of: dict[str, set] = {}
        for item, kind, basket in zip(r["item_ids"], r["event_types"], basket_ordinals(r["event_ts"])):
            if kind == "purchase":
                baskets_of.setdefault(item, set()).add(basket)
        for item, baskets in baskets_of.items():
            buyers[index[item]] += 1
            rebuyers[index[item]] += len(baskets) > 1
    assert rebuyers.sum() > 0
    assert np.allclose(model.model.rebuy_log_odds.numpy(), rebuy_log_odds(buyers, rebuyers), atol=1e-6)


def test_missing_sequences_is_a_usage_error(lake, tmp_path, config):
    from jobs.train import run

    with pytest.raises(runtime.UsageError, match="features/user_sequences does not exist"):
        run(train_args(lake, config, tmp_path))


def test_bad_model_config_is_a_usage_error(lake, tmp_path, capsys):
    from jobs.train import main

    rc = main(["--lake", lake, "--run-date", str(AS_OF), f"paths.models={tmp_path / 'm'}",
               "train.model.dim=30", "train.model.num_heads=4"])
    assert rc == 2
    assert "divisible" in capsys.readouterr().err


def test_cli_missing_partition_exits_2(spark, lake, tmp_path, synthetic, capsys):
    from jobs.train import main

    seqs, items, _ = synthetic
    write_inputs(spark, lake, seqs, items)
    rc = main(["--lake", lake, "--run-date", "2030-01-01", f"paths.models={tmp_path / 'm'}"])
    assert rc == 2
    assert "no rows for as_of_date 2030-01-01" in capsys.readouterr().err


HISTORY_T = 8     # train.model.max_seq_len of the whole-history tests: every user has >= 3 x 8 events
HISTORY = {**TINY, "train.model.max_seq_len": HISTORY_T, "features.sequence_length": HISTORY_T,
           "train.model.use_text": False, "train.model.recent_days": 0, "train.loop.epochs": 2,
           "train.loop.patience": 2}


def history_lake(spark, lake: str, rebuy: bool = True):
    """bronze/events (and the features/user_sequences built from it, last HISTORY_T events) of 30
    generated users with 10 baskets each (views, then purchases: 30-40 events a user, the first basket
    one view; ``rebuy=False``: no item bought twice by a user, fewer), plus events after the cut-off;
    bronze/items. Returns the events before the cut-off as (user, item, type, ts)."""
    from features.sequences import sequences_full
    from features.tables import EVENTS
    from training.synthetic_sequences import generate

    seqs, items, _ = generate(users=30, categories=4, items_per_category=8, baskets_per_user=10, basket_size=2,
                              as_of=AS_OF, max_len=10_000, seed=2, rebuy=rebuy)
    events = [(r["user_id"], i, k, _py(t)) for r in seqs.to_dict("records")
              for i, k, t in zip(r["item_ids"], r["event_types"], r["event_ts"])]
    later = [("u0000", "MUG000", "purchase", dt.datetime(2024, 3, 2)), ("u0001", "MUG001", "view", dt.datetime(2024, 3, 5))]
    rows = [(f"e{n}", u, i, k, t, t.date(), 1, 1.0, None, "test", t, "r1") for n, (u, i, k, t) in enumerate(events + later)]
    frame = spark.createDataFrame(rows, EVENTS.schema)
    lakeio.append(spark, lake, EVENTS, frame)
    lakeio.replace_partition(spark, lake, USER_SEQUENCES, sequences_full(frame, AS_OF, HISTORY_T), AS_OF)
    item_rows = [tuple(_py(r[c]) for c in ITEMS.columns) for r in items.to_dict("records")]
    lakeio.merge_upsert(spark, lake, ITEMS, spark.createDataFrame(item_rows, ITEMS.schema))
    return events


def after_first_basket(events, before: dt.datetime, last: int | None = None) -> dict[str, int]:
    """Per user, the events before ``before`` (only the ``last`` of them if given) outside the first
    basket (the first timestamp): what the loss can predict, counted here directly."""
    by_user: dict[str, list] = {}
    for u, _, _, t in sorted(events, key=lambda e: (e[0], e[3])):
        if t < before:
            by_user.setdefault(u, []).append(t)
    out = {}
    for u, stamps in by_user.items():
        stamps = stamps[-last:] if last else stamps
        out[u] = sum(t != stamps[0] for t in stamps)
    return out


def refit_rows(prepared) -> list[dict]:
    return prepared.datasets["refit"].take_all()


@pytest.mark.slow
def test_whole_history_examples_predict_every_event_before_the_cut_off(spark, lake, tmp_path, config, ray_local,
                                                                        caplog):
    """train.history=events: every event before the cut-off after each user's first basket is a training
    target exactly once (refit), and every one before the validation window (selection run); the
    sequences (last HISTORY_T events) reach a fraction of them, the loss before this option."""
    from jobs.train import TrainArgs, prepare, read_inputs
    from training.model import loss_targets

    events = history_lake(spark, lake)
    cut, window_start = dt.datetime(2024, 3, 2), dt.datetime(2024, 2, 28)
    refit, selection = after_first_basket(events, cut), after_first_basket(events, window_start)
    assert min(sum(t < cut for u2, *_, t in events if u2 == u) for u in refit) >= 3 * HISTORY_T
    prepared = {}
    for mode in ("events", "sequences"):
        args = args_for(TrainArgs, lake, config, run_date=AS_OF, workers=1,
                        overrides={**HISTORY, "train.history": mode, "paths.models": str(tmp_path / "models")})
        with caplog.at_level("INFO", logger="warmstart.train"):
            prepared[mode] = prepare(args, read_inputs(args))
    counts = prepared["events"].history
    assert counts == {"history": "events", "events_before_cutoff": len(events),
                      "train_target_events": sum(selection.values()), "refit_target_events": sum(refit.values())}
    assert sum(refit.values()) == len(events) - 30                     # one first-basket event per user
    assert f"history events: {len(events)} events before the cut-off; training targets per epoch: " \
           f"{sum(selection.values())} (selection run), {sum(refit.values())} (refit)" in caplog.text
    # counted again from the refit examples the workers get, with the loss's own rule
    rows = refit_rows(prepared["events"])
    _, valid = loss_targets(torch_of(rows, "refit_tokens"), torch_of(rows, "refit_baskets"))
    assert int(valid.sum()) == sum(refit.values())
    assert len(rows) == sum(-(-n // HISTORY_T) for n in refit.values())   # T targets a window, the last fewer
    # the sequences: the last HISTORY_T events of each user, of which those after its first basket
    old = prepared["sequences"].history
    assert old["refit_target_events"] == sum(after_first_basket(events, cut, last=HISTORY_T).values())
    assert old["refit_target_events"] < sum(refit.values()) // 3 and old["events_before_cutoff"] is None


def torch_of(rows: list[dict], column: str):
    import torch

    return torch.as_tensor(np.stack([r[column] for r in rows]))


@pytest.mark.slow
def test_whole_history_training_runs_on_ray_train(spark, lake, tmp_path, config, ray_local, capsys):
    """The Ray TorchTrainer path with train.history=events on a history where nobody buys an item twice
    (train.repeat_free_below=0.02): one worker, registered without the repeat head and with scoring's
    mask, its lineage naming bronze/events, the counts in the summary and metrics.json; the worker's epoch
    progress printed by the driver (Ray keeps workers' own output off the console)."""
    from features.tables import EVENTS
    from jobs.train import TrainArgs, run

    events = history_lake(spark, lake, rebuy=False)
    refit = after_first_basket(events, dt.datetime(2024, 3, 2))
    args = args_for(TrainArgs, lake, config, run_date=AS_OF, workers=1,
                    overrides={**HISTORY, "train.history": "events", "train.repeat_free_below": 0.02,
                               "paths.models": str(tmp_path / "models"), "paths.reports": str(tmp_path / "reports")})
    summary = run(args)
    err = capsys.readouterr().err
    selection = re.findall(r"^train epochs \(selection\): (\d+)/(\d+) \(\d+%\) [\d.e+-]+ epochs/s .*loss=", err, re.M)
    assert selection and int(selection[-1][0]) == summary["epochs_run"], err[-2000:]
    refit_lines = re.findall(r"^train epochs \(refit\): (\d+)/(\d+) ", err, re.M)
    assert refit_lines and refit_lines[-1][0] == refit_lines[-1][1] == str(summary["refit_epochs"]), err[-2000:]
    buyers_in_window = {u for u, _, k, t in events if k == "purchase" and t >= dt.datetime(2024, 2, 28)}
    assert summary["reused"] is False and summary["val_users"] == len(buyers_in_window) >= 5
    assert summary["repurchase_share"] == 0.0 and summary["repeat_free"] is True
    assert summary["training_input"]["refit_target_events"] == sum(refit.values())
    assert summary["refit_sequences_per_epoch"] == sum(-(-n // HISTORY_T) for n in refit.values())
    folder = Path(summary["path"])
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["inputs"] == {EVENTS.name: lakeio.version(spark, lake, EVENTS), ITEMS.name: lakeio.version(spark, lake, ITEMS)}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["training_input"] == summary["training_input"]
    purchases = sum(k == "purchase" and t < dt.datetime(2024, 2, 28) for *_, k, t in events)
    assert metrics["repeat_consumption"] == {"purchases": purchases, "repurchases": 0, "share": 0.0,
                                             "repeat_free_below": 0.02, "repeat_free": True}
    model = json.loads((folder / "config.json").read_text())["model"]
    assert (model["repeat_head"], model["item_rebuy"], model["mask_seen"]) == (False, False, True)
