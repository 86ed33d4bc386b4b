"""Train the transformer recommender with Ray Train on ``features/user_sequences`` (as_of_date = the run
date) and ``bronze/items`` (item text), and register it as ``models/<name>/<version>/``.

    spark-submit jobs/train.py --lake ./lake --run-date 2011-12-09 [--workers 2] [--gpu] [--ray-address ADDR]
    warmstart train --run-date 2011-12-09 [--workers N] [--gpu] [--ray-address ADDR] [--force] [key=value ...]
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/train.py --run-date D --ray-address auto

``train.history=events`` trains on every user's whole history before the cut-off, read from
``bronze/events`` instead of the sequences (training.data.history_windows); the counts of events before
the cut-off and of training targets are logged and recorded in the summary and metrics.json.

No Spark: tables are read with delta-rs at a recorded Delta version (the snapshot's data files go to
Ray Data, which streams the examples to the workers in shards). Ray runs in-process (small, for a
laptop) unless ``--ray-address`` names a cluster.

Model selection on time: the epoch count and the dot / recent scales are chosen on the validation window,
the last ``train.validation_days`` days before the run date's cut-off (a model fitted on the events before
the window, judged on what each user bought in it); the registered weights are then refitted on every
event before the cut-off (training.data, docs/model.md).

Idempotent per run date: the version name is the run date plus a fingerprint of the inputs' Delta
versions, the configuration and the code version; if that version is already registered the job
reuses it and changes nothing. ``LATEST`` moves only if the new validation NDCG@10 is within
``train.promote_margin`` of the current LATEST's (``--force`` moves it anyway).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from features.contract import cutoff
from features.tables import EVENTS, ITEM_DAILY, ITEMS, USER_SEQUENCES
from jobs import lake, runtime, tracking
from training.config import SeqRecConfig

log = logging.getLogger("warmstart.train")


@dataclass(frozen=True)
class TrainArgs(runtime.JobArgs):
    run_date: dt.date | None = None
    workers: int | None = None
    gpu: bool = False
    ray_address: str | None = None
    force: bool = False
    promote: bool = True            # False: register only (the backtest's models of past nights)

    @property
    def num_workers(self) -> int:
        return self.workers or self.config.train.workers

    @property
    def use_gpu(self) -> bool:
        return self.gpu or self.config.train.use_gpu


def parser():
    p = runtime.job_parser("train", "train the transformer recommender with Ray Train and register it")
    p.add_argument("--run-date", required=True, type=runtime.parse_date, help="as_of_date of the sequences (YYYY-MM-DD)")
    p.add_argument("--workers", type=int, help="Ray Train workers (default train.workers)")
    p.add_argument("--gpu", action="store_true", help="use one GPU per worker (bf16 autocast)")
    p.add_argument("--ray-address", help="Ray cluster address (default: start Ray in-process)")
    p.add_argument("--force", action="store_true", help="move LATEST even if validation NDCG@10 got worse")
    p.add_argument("--no-promote", dest="promote", action="store_false",
                   help="register the version without moving LATEST (e.g. a model of a past night)")
    return p


def read_inputs(args: TrainArgs) -> dict[str, Any]:
    """The training input, by ``train.history``: the sequences snapshot (version + data files of the run
    date's partition), or every user's whole history before the cut-off from bronze/events; and the
    catalogue."""
    history = read_sequences(args) if args.config.train.history == "sequences" else read_histories(args)
    try:
        items_version, items = lake.read_pandas(args.lake, ITEMS, columns=["item_id", "title", "description", "category"])
    except FileNotFoundError:
        raise runtime.UsageError(f"{args.table_path(ITEMS)} does not exist; run `warmstart ingest --items ...` first") from None
    return {**history, "items_version": items_version, "items": items}


def read_sequences(args: TrainArgs) -> dict[str, Any]:
    """features/user_sequences at the run date: {"sequences_version", "files"} (Ray Data reads them)."""
    try:
        seq_version, files = lake.snapshot_files(args.lake, USER_SEQUENCES, partition_value=args.run_date)
    except FileNotFoundError:
        raise runtime.UsageError(f"{args.table_path(USER_SEQUENCES)} does not exist; run "
                                 f"`warmstart features --run-date {args.run_date}` first") from None
    if not files:
        raise runtime.UsageError(f"{args.table_path(USER_SEQUENCES)} has no rows for as_of_date {args.run_date} "
                                 f"(version {seq_version}); run `warmstart features --run-date {args.run_date}` first")
    return {"sequences_version": seq_version, "files": files}


def read_histories(args: TrainArgs) -> dict[str, Any]:
    """bronze/events before the run date's cut-off, every event type and item (as features.sequences
    takes them), grouped per user on the driver: {"events_version", "histories" (pyarrow, one row per
    user, training.data.histories_from_events), "events_before_cutoff"}."""
    from training.data import histories_from_events

    try:
        version, events = lake.read_pandas(args.lake, EVENTS, columns=["user_id", "item_id", "event_type", "event_ts"],
                                           filters=[("event_date", "<=", args.run_date)])
    except FileNotFoundError:
        raise runtime.UsageError(f"{args.table_path(EVENTS)} does not exist (train.history=events reads it); "
                                 f"run `warmstart ingest` first") from None
    histories = histories_from_events(events, cutoff(args.run_date))
    if not histories.num_rows:
        raise runtime.UsageError(f"{args.table_path(EVENTS)} has no events before {cutoff(args.run_date)} "
                                 f"(version {version})")
    return {"events_version": version, "histories": histories,
            "events_before_cutoff": int(sum(len(x) for x in histories.column("item_ids").to_pylist()))}


def start_ray(args: TrainArgs) -> bool:
    """Connect to ``--ray-address`` or start a small in-process Ray. Returns whether we started it."""
    import ray

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    DataContext.get_current().print_on_execution_start = False
    if ray.is_initialized():
        return False
    cfg = args.config
    if args.ray_address:
        ray.init(address=args.ray_address, log_to_driver=False)
        return True
    temp = cfg.train.ray_temp_dir or os.path.join(tempfile.gettempdir(), "ray-warmstart")
    ray.init(num_cpus=cfg.train.ray_num_cpus,
             object_store_memory=cfg.train.ray_object_store_mb * 1024 * 1024,
             _temp_dir=temp, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    return True


def fingerprint(args: TrainArgs, inputs: dict) -> str:
    payload = {"run_date": str(args.run_date),
               **{k: inputs[k] for k in ("sequences_version", "events_version") if k in inputs},
               "items_version": inputs["items_version"], "train": args.config.to_dict()["train"],
               "workers": args.workers, "gpu": args.gpu, "code": runtime.code_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Prepared:
    """What one training run is given, built on the driver: the Ray Datasets of examples and the
    worker function's plain dict, with what registering the result needs."""

    vocab: list[str]
    model_cfg: SeqRecConfig         # train.model with num_items = len(vocab)
    target_event_types: tuple[str, ...]
    text_key: str | None            # the frozen text embeddings' cache key (lineage)
    daily_version: int | None       # features/item_daily's Delta version read, None if not read
    validation_window: dict[str, str]   # {"first_day", "last_day"}: the dates the selection is judged on
    datasets: dict
    loop_config: dict
    history: dict[str, Any]         # train.history and what reached training (history_counts)
    repeat: dict[str, Any] = dataclasses.field(default_factory=dict)   # training.data.repeat_consumption


def prepare(args: TrainArgs, inputs: dict[str, Any]) -> Prepared:
    """The vocabulary and its per-item inputs, the examples, and the worker's configuration (Ray is up)."""
    from training.data import ExampleSpec, ray_examples_counted
    from training.inputs import recent_popularity, text_embeddings, vocabulary_stats
    from training.train_loop import config_dicts

    cfg = args.config.train
    cut = cutoff(args.run_date)
    window_start = cut - dt.timedelta(days=cfg.validation_days)
    sequences = history_dataset(inputs)
    started = time.time()
    stats = vocabulary_stats(sequences, inputs["items"], cfg.target_event_types, window_start, cut)
    vocab, counts, rebuy = stats.vocab, stats.counts, stats.rebuy
    log.info("vocabulary: %d items in %.1fs", len(vocab), time.time() - started)
    repeat = repeat_decision(args, stats)
    model_cfg = dataclasses.replace(model_for_catalogue(cfg.model, repeat), num_items=len(vocab))
    text, text_key = text_embeddings(vocab, inputs["items"], model_cfg,
                                     Path(args.models_root) / cfg.name / "_text_cache")
    spec = ExampleSpec(item_index={item: i for i, item in enumerate(vocab)}, cutoff=cut,
                       horizon_days=cfg.validation_days, max_seq_len=model_cfg.max_seq_len,
                       max_targets=cfg.max_val_targets, target_event_types=cfg.target_event_types,
                       event_types=model_cfg.event_types, basket_targets=model_cfg.basket_targets)
    datasets, targets = ray_examples_counted(sequences, spec, refit=cfg.loop.refit, history=cfg.history)
    history = history_counts(args, inputs, targets)
    recent, daily_version = None, None
    if model_cfg.recent_days:
        daily_version, log_counts, first_day = recent_popularity(args.lake, args.run_date, spec.item_index,
                                                                 model_cfg.recent_days, cfg.target_event_types)
        recent = {"log_counts": log_counts, "first_day": first_day}
    loop_config = {**config_dicts(model_cfg, cfg.loop), "text_embeddings": text, "item_counts": counts,
                   "rebuy_log_odds": rebuy if model_cfg.repeat_head and model_cfg.item_rebuy else None,
                   "recent_popularity": recent}
    window = {"first_day": str(window_start.date()), "last_day": str((cut - dt.timedelta(days=1)).date())}
    return Prepared(vocab=vocab, model_cfg=model_cfg, target_event_types=spec.target_event_types,
                    text_key=text_key, daily_version=daily_version, validation_window=window, datasets=datasets,
                    loop_config=loop_config, history=history, repeat=repeat)


def repeat_decision(args: TrainArgs, stats) -> dict[str, Any]:
    """training.data.repeat_consumption of the selection run's inputs, logged."""
    from training.data import repeat_consumption

    cfg = args.config.train
    repeat = repeat_consumption(stats.purchases, stats.repurchases, cfg.repeat_free_below)
    log.info("repurchase share %s (%d of %d %s events before the validation window were bought before)%s",
             repeat["share"], repeat["repurchases"], repeat["purchases"], "/".join(cfg.target_event_types),
             f" < train.repeat_free_below {cfg.repeat_free_below}: no repeat head or rebuy odds, scoring masks "
             "bought items" if repeat["repeat_free"] else "")
    return repeat


def model_for_catalogue(model_cfg: SeqRecConfig, repeat: dict[str, Any]) -> SeqRecConfig:
    """The configured model, or for a catalogue without repeat consumption (``repeat["repeat_free"]``) the
    same without the repeat head and the rebuy odds, which would learn to rank what nobody buys again,
    and with scoring masking the items each user bought (SeqRecConfig.mask_seen)."""
    if not repeat["repeat_free"]:
        return model_cfg
    return dataclasses.replace(model_cfg, repeat_head=False, item_rebuy=False, mask_seen=True)


def history_dataset(inputs: dict[str, Any]):
    """The Ray Dataset of per-user rows (user_sequences' columns) that the examples are cut from."""
    from training.data import ray_histories, ray_sequences

    return ray_histories(inputs["histories"]) if "histories" in inputs else ray_sequences(inputs["files"])


def history_counts(args: TrainArgs, inputs: dict[str, Any], targets: dict[str, int]) -> dict[str, Any]:
    """What reached training, logged and recorded: the events each epoch predicts (the selection run's,
    before the validation window; the refit's, before the cut-off) and, with ``train.history=events``,
    every event before the cut-off (the users' first baskets, predicted from nothing, are the gap)."""
    cfg = args.config.train
    out = {"history": cfg.history, "events_before_cutoff": inputs.get("events_before_cutoff"),
           "train_target_events": targets.get("train"), "refit_target_events": targets.get("refit")}
    log.info("history %s: %s events before the cut-off; training targets per epoch: %d (selection run), %s (refit)",
             cfg.history, "?" if out["events_before_cutoff"] is None else out["events_before_cutoff"],
             out["train_target_events"], out["refit_target_events"])
    if cfg.history == "sequences" and cfg.model.max_seq_len > args.config.features.sequence_length:
        log.warning("train.model.max_seq_len %d > features.sequence_length %d: the sequences hold fewer events than "
                    "the model reads (train.history=events trains on whole histories)",
                    cfg.model.max_seq_len, args.config.features.sequence_length)
    return out


def fit(args: TrainArgs, prepared: Prepared, version: str, train_loop_per_worker: Callable[[dict], None] | None):
    """(Ray Train's result of the run, whose last checkpoint holds the trainer state and best weights;
    seconds it took)."""
    from training.progress import forwarded
    from training.train_loop import build_trainer, train_worker

    cfg = args.config.train
    storage = str(Path(args.models_root).resolve() / cfg.name / "_ray") if not runtime.is_remote(args.models_root) \
        else f"{args.models_root}/{cfg.name}/_ray"
    started = time.time()
    try:
        with forwarded() as progress_lines:   # rank 0's epoch lines, printed here (Ray keeps workers' output off)
            trainer = build_trainer({**prepared.loop_config, "progress_queue": progress_lines}, prepared.datasets,
                                    num_workers=args.num_workers, use_gpu=args.use_gpu, storage_path=storage,
                                    name=version, max_failures=cfg.max_failures, cpus_per_worker=cfg.cpus_per_worker,
                                    train_loop_per_worker=train_loop_per_worker or train_worker)
            result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; one line for the user
        raise runtime.WarmstartError(f"training failed after {max(0, cfg.max_failures)} "
                                     f"retries: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from exc
    seconds = time.time() - started
    if result.checkpoint is None:
        raise runtime.WarmstartError("training ended without a checkpoint (no epoch finished)")
    return result, seconds


def registered_model(prepared: Prepared, folder: str):
    """(the model to register, the trainer state) from the run's last checkpoint folder: the best
    weights, with the scales validation chose for the dot product and the recent popularity
    (train.loop.dot_scales, recent_scales) on top of any configured dot scale."""
    import torch
    from safetensors.torch import load_file

    from training.model import SeqRec
    from training.train_loop import read_trainer_state

    state = read_trainer_state(folder)
    cfg = prepared.model_cfg
    model = SeqRec(dataclasses.replace(cfg, dot_scale=cfg.dot_scale * state.get("dot_scale", 1.0)))
    model.load_state_dict(load_file(str(Path(folder) / "best_model.safetensors")))
    if model.cfg.recent_days:
        with torch.no_grad():
            model.recent_weight.mul_(state.get("recent_scale", 1.0))
    return model, state


def best_epoch(state: dict) -> dict[str, Any]:
    """The selection run's metrics of the epoch early stopping chose."""
    return next(h for h in state["history"] if h["epoch"] == state["best_epoch"])


def training_metrics(state: dict, model, train_seconds: float, workers: int, use_gpu: bool,
                     validation_window: dict[str, str], history: dict[str, Any] | None = None,
                     repeat: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics.json: the best epoch's validation metrics (with ``val_users`` and ``val_targets``, what the
    validation window gave, and its dates), the histories and the chosen scales."""
    return {**{k: v for k, v in best_epoch(state).items() if k.startswith("val_")},
            "validation_window": validation_window, "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"], "history": state["history"], "train_seconds": round(train_seconds, 1),
            "resumed_from_epoch": state.get("resumed_from_epoch"), "workers": workers, "use_gpu": use_gpu,
            "refit_epochs": state.get("refit_epochs", 0), "refit_history": state.get("refit_history", []),
            "dot_scale": model.cfg.dot_scale, "recent_scale": state.get("recent_scale"),
            "recent_weight": model.recent_weight.item() if model.cfg.recent_days else None,
            "scales_val_ndcg@10": state.get("val_ndcg10_by_scales", {}), "training_input": history or {},
            "repeat_consumption": repeat or {}}


def train_and_register(args: TrainArgs, inputs: dict[str, Any], version: str, lineage_inputs: dict,
                       train_loop_per_worker: Callable[[dict], None] | None) -> dict[str, Any]:
    """Train (Ray is up), register the version and move LATEST by the rule; the run's summary."""
    from training import registry
    from training.train_loop import config_dicts

    cfg = args.config.train
    prepared = prepare(args, inputs)
    if prepared.daily_version is not None:
        lineage_inputs[ITEM_DAILY.name] = prepared.daily_version
    result, train_seconds = fit(args, prepared, version, train_loop_per_worker)
    with result.checkpoint.as_directory() as folder:
        model, state = registered_model(prepared, folder)
    metrics = training_metrics(state, model, train_seconds, args.num_workers, args.use_gpu,
                               prepared.validation_window, prepared.history, prepared.repeat)
    if not metrics["val_users"]:
        log.warning("the validation window %s..%s gave no validation users: the epoch count and scales were "
                    "chosen on nothing", *prepared.validation_window.values())
    lineage = {"run_id": args.run_id, "run_date": str(args.run_date), "inputs": lineage_inputs,
               "code_version": runtime.code_version(), "config": args.config.to_dict()["train"],
               "text_cache_key": prepared.text_key, "ray_checkpoint": result.checkpoint.path,
               "catalogue_size": len(prepared.vocab)}
    registry.save_version(args.models_root, cfg.name, version, model, prepared.vocab,
                          train_config={**config_dicts(prepared.model_cfg, cfg.loop)["train"],
                                        "target_event_types": list(prepared.target_event_types)},
                          metrics=metrics, lineage=lineage)
    moved, reason = _promote(args, version)
    best = best_epoch(state)
    return {"model": cfg.name, "version": version, "reused": False,
            "latest": registry.latest_version(args.models_root, cfg.name),
            "promoted": moved, "promote_reason": reason, "catalogue_size": len(prepared.vocab),
            "train_sequences_per_epoch": best["train_sequences"], "val_users": best["val_users"],
            "val_targets": best["val_targets"], "validation_window": prepared.validation_window,
            "refit_epochs": state.get("refit_epochs", 0),
            "refit_sequences_per_epoch": (state.get("refit_history") or [{}])[-1].get("train_sequences"),
            "training_input": prepared.history, "repurchase_share": prepared.repeat.get("share"),
            "repeat_free": prepared.repeat.get("repeat_free"),
            "val_ndcg@10": metrics["val_ndcg@10"], "val_recall@10": metrics["val_recall@10"],
            "dot_scale": model.cfg.dot_scale, "recent_scale": state.get("recent_scale"),
            "best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "train_seconds": round(train_seconds, 1),
            "resumed_from_epoch": state.get("resumed_from_epoch"), "workers": args.num_workers,
            "path": str(registry.version_dir(args.models_root, cfg.name, version))}


def _promote(args: TrainArgs, version: str) -> tuple[bool, str]:
    from training import registry

    if not args.promote:
        return False, "--no-promote"
    cfg = args.config.train
    return registry.promote(args.models_root, cfg.name, version, cfg.promote_margin, force=args.force)


def reuse(args: TrainArgs, version: str) -> dict[str, Any]:
    """The summary of a version already registered: LATEST moves by the same rule, nothing is written."""
    from training import registry

    cfg = args.config.train
    moved, reason = _promote(args, version)
    metrics = json.loads((registry.version_dir(args.models_root, cfg.name, version) / "metrics.json").read_text())
    return {"model": cfg.name, "version": version, "reused": True,
            "latest": registry.latest_version(args.models_root, cfg.name),
            "promoted": moved, "promote_reason": reason, "val_ndcg@10": metrics.get("val_ndcg@10")}


def run(args: TrainArgs, *, train_loop_per_worker: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train and register the run date's version, or reuse it if it is registered already.
    ``train_loop_per_worker``: tests only, a wrapper of training.train_loop.train_worker."""
    import ray

    from training import registry

    name = args.config.train.name
    if args.num_workers < 1:
        raise runtime.UsageError(f"--workers must be >= 1, got {args.num_workers}")
    if args.config.train.validation_days < 1:
        raise runtime.UsageError(f"train.validation_days must be >= 1, got {args.config.train.validation_days}")
    inputs = read_inputs(args)
    version = f"{args.run_date:%Y%m%d}-{fingerprint(args, inputs)}"
    history_input = ({USER_SEQUENCES.name: inputs["sequences_version"]} if "sequences_version" in inputs
                     else {EVENTS.name: inputs["events_version"]})
    lineage_inputs = {**history_input, ITEMS.name: inputs["items_version"]}
    if set(registry.FILES) <= {p.name for p in registry.version_dir(args.models_root, name, version).glob("*")}:
        summary = reuse(args, version)
    else:
        started_ray = start_ray(args)
        try:
            summary = train_and_register(args, inputs, version, lineage_inputs, train_loop_per_worker)
        finally:
            if started_ray:
                ray.shutdown()
    summary.update(tracking.log_version(args, "model", name, version, args.run_date))   # MLflow, when on
    runtime.record_lineage(args, run_date=args.run_date, inputs=lineage_inputs, outputs={f"models/{name}": version},
                           summary=summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("train", parser(), TrainArgs, run, argv, needs_spark=False)


if __name__ == "__main__":
    sys.exit(main())
