"""Train the transformer recommender with Ray Train on ``features/user_sequences`` (as_of_date = the run
date) and ``bronze/items`` (item text), and register it as ``models/<name>/<version>/``.

    spark-submit jobs/train.py --lake ./lake --run-date 2011-12-09 [--workers 2] [--gpu] [--ray-address ADDR]
    warmstart train --run-date 2011-12-09 [--workers N] [--gpu] [--ray-address ADDR] [--force] [key=value ...]
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/train.py --run-date D --ray-address auto

No Spark: tables are read with delta-rs at a recorded Delta version (the snapshot's data files go to
Ray Data, which streams the examples to the workers in shards). Ray runs in-process (small, for a
laptop) unless ``--ray-address`` names a cluster.

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
from typing import Any

import numpy as np

from features.tables import EVENT_COUNT_NAMES, ITEM_DAILY, ITEMS, USER_SEQUENCES
from jobs import lake, runtime

log = logging.getLogger("warmstart.train")


@dataclass(frozen=True)
class TrainArgs(runtime.JobArgs):
    run_date: dt.date | None = None
    workers: int | None = None
    gpu: bool = False
    ray_address: str | None = None
    force: bool = False


def parser():
    p = runtime.job_parser("train", "train the transformer recommender with Ray Train and register it")
    p.add_argument("--run-date", required=True, type=runtime.parse_date, help="as_of_date of the sequences (YYYY-MM-DD)")
    p.add_argument("--workers", type=int, help="Ray Train workers (default train.workers)")
    p.add_argument("--gpu", action="store_true", help="use one GPU per worker (bf16 autocast)")
    p.add_argument("--ray-address", help="Ray cluster address (default: start Ray in-process)")
    p.add_argument("--force", action="store_true", help="move LATEST even if validation NDCG@10 got worse")
    return p


# --------------------------------------------------------------------------------------------------


def read_inputs(args: TrainArgs, spec_items: bool = True) -> dict[str, Any]:
    """The sequences snapshot (version + data files of the run date's partition) and the catalogue."""
    try:
        seq_version, files = lake.snapshot_files(args.lake, USER_SEQUENCES, partition_value=args.run_date)
    except FileNotFoundError:
        raise runtime.UsageError(f"{args.table_path(USER_SEQUENCES)} does not exist; run "
                                 f"`warmstart features --run-date {args.run_date}` first") from None
    if not files:
        raise runtime.UsageError(f"{args.table_path(USER_SEQUENCES)} has no rows for as_of_date {args.run_date} "
                                 f"(version {seq_version}); run `warmstart features --run-date {args.run_date}` first")
    try:
        items_version, items = lake.read_pandas(args.lake, ITEMS, columns=["item_id", "title", "description", "category"])
    except FileNotFoundError:
        raise runtime.UsageError(f"{args.table_path(ITEMS)} does not exist; run `warmstart ingest --items ...` first") from None
    return {"sequences_version": seq_version, "files": files, "items_version": items_version, "items": items}


def text_embeddings(args: TrainArgs, name: str, vocab: list[str], items, model_cfg) -> tuple[np.ndarray | None, str | None]:
    """Frozen mode: (V, text_dim) encoder embeddings of the vocabulary's item text, cached per
    catalogue fingerprint under models/<name>/_text_cache/ (safetensors)."""
    from safetensors.numpy import load_file, save_file

    from training import registry
    from training.model import encode_texts, item_text, texts_fingerprint

    if not model_cfg.use_text or model_cfg.encoder_mode != "frozen":
        return None, None
    by_id = {str(r["item_id"]): r for r in items.to_dict("records")}
    texts = [item_text(*(by_id.get(i, {}).get(c) for c in ("title", "category", "description"))) for i in vocab]
    key = texts_fingerprint(model_cfg.encoder_path, texts, model_cfg.text_max_tokens)
    cache = Path(args.models_root) / name / "_text_cache" / f"{key}.safetensors"
    if cache.is_file():
        return load_file(str(cache))["text_embeddings"], key
    started = time.time()
    emb = encode_texts(texts, model_cfg.encoder_path, model_cfg.text_max_tokens).numpy()
    log.info("encoded %d item texts in %.1fs (cached as %s)", len(texts), time.time() - started, cache.name)
    cache.parent.mkdir(parents=True, exist_ok=True)
    registry.replace_file(cache, lambda tmp: save_file({"text_embeddings": emb}, str(tmp)))
    return emb, key


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
    temp = cfg.get("train.ray_temp_dir") or os.path.join(tempfile.gettempdir(), "ray-warmstart")
    ray.init(num_cpus=int(cfg.get("train.ray_num_cpus", 2)),
             object_store_memory=int(cfg.get("train.ray_object_store_mb", 300)) * 1024 * 1024,
             _temp_dir=temp, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    return True


def recent_popularity(lake_root: str, as_of: dt.date, item_index: dict[str, int], recent_days: int,
                      target_event_types, since: dt.date | None = None) -> tuple[int | None, np.ndarray, int]:
    """The model's recent-popularity input from ``features/item_daily`` up to ``as_of`` (from ``since``):
    (Delta version read, (D, V) log1p counts of the target event types, first day); see
    training.data.recent_purchase_matrix. Version None and one zero row when the table does not exist
    (a lake whose sequences did not come from ``warmstart features``): the term is then 0."""
    from training.data import recent_purchase_matrix

    last_day = (as_of - dt.date(1970, 1, 1)).days
    columns = [f"count_{EVENT_COUNT_NAMES[t]}" for t in target_event_types if t in EVENT_COUNT_NAMES]
    filters = [("event_date", "<=", as_of)] + ([("event_date", ">=", since)] if since else [])
    try:
        version, daily = lake.read_pandas(lake_root, ITEM_DAILY, columns=["item_id", "event_date", *columns], filters=filters)
    except FileNotFoundError:
        log.warning("%s not found: training without the recent-popularity input", ITEM_DAILY.name)
        return None, np.zeros((1, len(item_index)), np.float32), last_day + 1
    daily = daily.assign(count=daily[columns].sum(axis=1) if columns else 0)
    counts, first_day = recent_purchase_matrix(daily, item_index, recent_days, last_day)
    return version, counts, first_day


def vocabulary(sequences, items, target_event_types) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Vocabulary (catalogue ∪ sequence items, sorted), each item's count in the sequences, and each
    item's rebuy log-odds over the inputs of each training phase ({"train", "refit"}), in one pass."""
    from training.data import build_vocabulary, item_stats_batch, rebuy_log_odds

    # Per-block (item, stats) rows come back to the driver: at most catalogue-size rows per block,
    # summed here (Ray Data's hash groupby costs far more than it saves at this size).
    per_block = sequences.select_columns(["item_ids", "event_types", "event_ts"]).map_batches(
        item_stats_batch, fn_kwargs={"target_event_types": tuple(target_event_types)}, batch_format="numpy",
        batch_size=None).to_pandas()
    sums = per_block.groupby("item_id").sum(numeric_only=True)
    vocab = build_vocabulary(items["item_id"].astype(str), sums.index.astype(str))
    sums = sums.reindex(vocab, fill_value=0)
    rebuy = {phase: rebuy_log_odds(sums[f"buyers_{phase}"].to_numpy(), sums[f"rebuyers_{phase}"].to_numpy())
             for phase in ("train", "refit")}
    return vocab, sums["count"].to_numpy(dtype=np.int64), rebuy


def model_and_loop_configs(cfg: runtime.Config, num_items: int):
    from training.model import SeqRecConfig
    from training.train_loop import TrainConfig

    try:
        model_cfg = SeqRecConfig(num_items=num_items, **cfg.get("train.model", {}))
        loop_cfg = TrainConfig.from_dict(cfg.get("train.loop", {}))
    except (TypeError, ValueError) as exc:
        raise runtime.UsageError(f"bad train configuration: {exc}") from None
    return model_cfg, loop_cfg


def fingerprint(args: TrainArgs, inputs: dict) -> str:
    payload = {"run_date": str(args.run_date), "sequences_version": inputs["sequences_version"],
               "items_version": inputs["items_version"], "train": args.config.get("train"),
               "workers": args.workers, "gpu": args.gpu, "code": runtime.code_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run(args: TrainArgs) -> dict[str, Any]:
    import ray
    import torch
    from safetensors.torch import load_file

    from training import registry
    from training.data import ExampleSpec, ray_examples, ray_sequences
    from training.model import SeqRec
    from training.train_loop import build_trainer, config_dicts, read_trainer_state

    cfg = args.config
    name = cfg.get("train.name", registry.DEFAULT_NAME)
    workers = args.workers or int(cfg.get("train.workers", 1))
    use_gpu = args.gpu or bool(cfg.get("train.use_gpu", False))
    if workers < 1:
        raise runtime.UsageError(f"--workers must be >= 1, got {workers}")
    inputs = read_inputs(args)
    version = f"{args.run_date:%Y%m%d}-{fingerprint(args, inputs)}"
    lineage_inputs = {USER_SEQUENCES.name: inputs["sequences_version"], ITEMS.name: inputs["items_version"]}
    margin = float(cfg.get("train.promote_margin", 0.005))

    if set(registry.FILES) <= {p.name for p in registry.version_dir(args.models_root, name, version).glob("*")}:
        moved, reason = registry.promote(args.models_root, name, version, margin, force=args.force)
        metrics = json.loads((registry.version_dir(args.models_root, name, version) / "metrics.json").read_text())
        summary = {"model": name, "version": version, "reused": True, "latest": registry.latest_version(args.models_root, name),
                   "promoted": moved, "promote_reason": reason, "val_ndcg@10": metrics.get("val_ndcg@10")}
        runtime.record_lineage(args, run_date=args.run_date, inputs=lineage_inputs,
                               outputs={f"models/{name}": version}, summary=summary)
        return summary

    started_ray = start_ray(args)
    try:
        sequences = ray_sequences(inputs["files"])
        t0 = time.time()
        target_types = tuple(cfg.get("train.target_event_types", ["purchase"]))
        vocab, counts, rebuy = vocabulary(sequences, inputs["items"], target_types)
        log.info("vocabulary: %d items in %.1fs", len(vocab), time.time() - t0)
        model_cfg, loop_cfg = model_and_loop_configs(cfg, len(vocab))
        text, text_key = text_embeddings(args, name, vocab, inputs["items"], model_cfg)
        spec = ExampleSpec(item_index={item: i for i, item in enumerate(vocab)}, max_seq_len=model_cfg.max_seq_len,
                           max_targets=int(cfg.get("train.max_val_targets", 100)),
                           target_event_types=target_types,
                           event_types=model_cfg.event_types)
        datasets = ray_examples(sequences, spec, refit=loop_cfg.refit)
        recent = None
        if model_cfg.recent_days:
            daily_version, log_counts, first_day = recent_popularity(args.lake, args.run_date, spec.item_index,
                                                                     model_cfg.recent_days, target_types)
            if daily_version is not None:
                lineage_inputs[ITEM_DAILY.name] = daily_version
            recent = {"log_counts": log_counts, "first_day": first_day}
        loop_config = {**config_dicts(model_cfg, loop_cfg), "text_embeddings": text, "item_counts": counts,
                       "rebuy_log_odds": rebuy if model_cfg.repeat_head and model_cfg.item_rebuy else None,
                       "recent_popularity": recent}
        storage = str(Path(args.models_root).resolve() / name / "_ray") if not runtime.is_remote(args.models_root) \
            else f"{args.models_root}/{name}/_ray"
        trainer = build_trainer(loop_config, datasets, num_workers=workers, use_gpu=use_gpu,
                                storage_path=storage, name=version, max_failures=int(cfg.get("train.max_failures", 2)),
                                cpus_per_worker=float(cfg.get("train.cpus_per_worker", 1.0)))
        started = time.time()
        try:
            result = trainer.fit()
        except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; one line for the user
            raise runtime.WarmstartError(f"training failed after {max(0, int(cfg.get('train.max_failures', 2)))} "
                                         f"retries: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from exc
        train_seconds = time.time() - started
        if result.checkpoint is None:
            raise runtime.WarmstartError("training ended without a checkpoint (no epoch finished)")
        with result.checkpoint.as_directory() as folder:
            state = read_trainer_state(folder)
            best = load_file(str(Path(folder) / "best_model.safetensors"))
        # the scales validation chose for the dot product and the recent popularity (train.loop.dot_scales,
        # recent_scales), on top of any configured dot scale
        registered_cfg = dataclasses.replace(model_cfg, dot_scale=model_cfg.dot_scale * state.get("dot_scale", 1.0))
        model = SeqRec(registered_cfg)
        model.load_state_dict(best)
        if registered_cfg.recent_days:
            with torch.no_grad():
                model.recent_weight.mul_(state.get("recent_scale", 1.0))
        best_metrics = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
        metrics = {**{k: v for k, v in best_metrics.items() if k.startswith("val_")}, "best_epoch": state["best_epoch"],
                   "epochs_run": state["epoch"], "history": state["history"], "train_seconds": round(train_seconds, 1),
                   "resumed_from_epoch": state.get("resumed_from_epoch"), "workers": workers, "use_gpu": use_gpu,
                   "refit_epochs": state.get("refit_epochs", 0), "refit_history": state.get("refit_history", []),
                   "dot_scale": registered_cfg.dot_scale, "recent_scale": state.get("recent_scale"),
                   "recent_weight": model.recent_weight.item() if registered_cfg.recent_days else None,
                   "scales_val_ndcg@10": state.get("val_ndcg10_by_scales", {})}
        lineage = {"run_id": args.run_id, "run_date": str(args.run_date), "inputs": lineage_inputs,
                   "code_version": runtime.code_version(), "config": cfg.get("train"), "text_cache_key": text_key,
                   "ray_checkpoint": result.checkpoint.path, "catalogue_size": len(vocab)}
        registry.save_version(args.models_root, name, version, model, vocab,
                              train_config={**config_dicts(model_cfg, loop_cfg)["train"],
                                            "target_event_types": list(spec.target_event_types)}, metrics=metrics, lineage=lineage)
        moved, reason = registry.promote(args.models_root, name, version, margin, force=args.force)
    finally:
        if started_ray:
            ray.shutdown()
    summary = {"model": name, "version": version, "reused": False, "latest": registry.latest_version(args.models_root, name),
               "promoted": moved, "promote_reason": reason, "catalogue_size": len(vocab),
               "train_sequences_per_epoch": best_metrics["train_sequences"], "val_users": best_metrics["val_users"],
               "refit_epochs": state.get("refit_epochs", 0),
               "refit_sequences_per_epoch": (state.get("refit_history") or [{}])[-1].get("train_sequences"),
               "val_ndcg@10": metrics["val_ndcg@10"], "val_recall@10": metrics["val_recall@10"],
               "dot_scale": registered_cfg.dot_scale, "recent_scale": state.get("recent_scale"),
               "best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "train_seconds": round(train_seconds, 1),
               "resumed_from_epoch": state.get("resumed_from_epoch"), "workers": workers,
               "path": str(registry.version_dir(args.models_root, name, version))}
    runtime.record_lineage(args, run_date=args.run_date, inputs=lineage_inputs, outputs={f"models/{name}": version},
                           summary={k: v for k, v in summary.items()})
    return summary


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("train", parser(), lambda ns, common: runtime.dataclass_from(TrainArgs, ns, common),
                           run, argv, needs_spark=False)


if __name__ == "__main__":
    sys.exit(main())
