"""The Ray Train side of training: the per-worker function (:func:`train_worker`), safetensors
checkpoints (model + optimizer, never pickle), and the ``TorchTrainer`` assembly (:func:`build_trainer`).

Each worker: rebuilds the typed configs from a plain dict, builds :class:`training.model.SeqRec`,
resumes from ``ray.train.get_checkpoint()`` if there is one (a restarted worker group after a crash,
``FailureConfig``), trains on its shard of the ``train`` dataset, scores its shard of ``val`` against the
full catalogue, all-reduces the metric sums and reports them every epoch (every rank calls
``ray.train.report``; rank 0 attaches the checkpoint). The selection run trains on the events before the
validation window (the last ``train.validation_days`` before the run date's cut-off) and validates on
what each user bought in it (training.data, the time split); early stopping and the dot / recent scales
choose on it. Then (``refit``) the chosen number of epochs again from the same initial weights on every
event before the cut-off (the ``refit`` dataset): the window's baskets become training targets too
(docs/model.md, "Refit"). Those weights are registered; the reported validation metrics are the
selection run's.
Checkpoints: safetensors for tensors, JSON for everything else. Called by jobs/train.py and
bench/train.py.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training import metrics as M
from training.config import LoopConfig
from training.model import SeqRec, SeqRecConfig
from training.progress import Progress, QueueStream


def optimizer(model: SeqRec, lr: float, weight_decay: float, gate_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW; the repeat head's and the history skip's per-lag / per-type weights (a few dozen scalars
    that set how much the user's own past counts) get ``gate_lr_scale`` x the learning rate and no
    weight decay: at the shared rate they barely move before the embeddings overfit (docs/model.md)."""
    gates = {"repeat_lag", "repeat_type", "repeat_rebuy", "history_weight", "recent_weight"}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n not in gates], "lr": lr, "weight_decay": weight_decay},
              {"params": [p for n, p in named if n in gates], "lr": lr * gate_lr_scale, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def save_optimizer(opt: torch.optim.Optimizer, folder: Path) -> None:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"], "scalars": scalars}))


def load_optimizer(opt: torch.optim.Optimizer, folder: Path) -> None:
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(load_file(str(folder / "optimizer.safetensors")).items()) + list(meta["scalars"].items()):
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def write_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     best_state: dict[str, torch.Tensor], trainer_state: dict) -> None:
    save_file(_state(model), str(folder / "model.safetensors"))
    save_file(best_state, str(folder / "best_model.safetensors"))
    save_optimizer(opt, folder)
    (folder / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))


def read_trainer_state(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "trainer_state.json").read_text())


def _all_reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


@torch.no_grad()
def validate(model: SeqRec, batches, device, autocast, scales: tuple[tuple[float, float], ...] = ()) -> dict[str, float]:
    """Full-catalogue ranking of this worker's validation users; returns metric *sums*. With ``scales``
    (a, c) pairs, also ``ndcg@10 x<a> r<c>``: the NDCG@10 sum with the scores ``a * u . e_i + r_u(i) +
    c * recent(i)``. ``targets``: the number of validation targets (a count, not a metric)."""
    model.eval()
    with autocast():
        items = model.item_vectors().float()                                         # (V, d)
    # Every key from the start, at 0: a shard the window left without validation users still all-reduces.
    keys = [*M.metric_sums(np.zeros((0, 1)), []), "targets", *(f"ndcg@10 x{a} r{c}" for a, c in scales)]
    sums: dict[str, float] = dict.fromkeys(keys, 0.0)
    for b in batches:
        baskets = b["val_baskets"].to(device) if "val_baskets" in b else None
        with autocast():
            dot, rep = model.score_terms(b["val_tokens"].to(device), b["val_types"].to(device), baskets, items)
            recent = model.recent_scores(b["val_day"].to(device) if "val_day" in b else None)
        dot = dot.float().cpu().numpy()                                              # (B, V)
        rep = np.zeros_like(dot) if rep is None else rep.float().cpu().numpy()
        recent = np.zeros_like(dot) if recent is None else recent.float().cpu().numpy()
        targets = [row[row >= 0] for row in b["val_targets"].cpu().numpy()]
        sums["targets"] += float(sum(len(t) for t in targets))
        for k, v in M.metric_sums(dot + rep + recent, targets).items():
            sums[k] += v
        for a, c in scales:
            sums[f"ndcg@10 x{a} r{c}"] += M.metric_sums(a * dot + rep + c * recent, targets, (10,))["ndcg@10"]
    return sums


def choose_scales(sums: dict[str, float], scales: tuple[tuple[float, float], ...]
                  ) -> tuple[tuple[float, float], dict[str, float]]:
    """(the (dot, recent) scales with the best validation NDCG@10, ties to the pair nearest (1, 1);
    NDCG@10 by pair as {"<a> <c>": value})."""
    users = max(sums.get("users", 0.0), 1.0)
    by_pair = {(a, c): sums[f"ndcg@10 x{a} r{c}"] / users for a, c in scales}
    best = max(scales, key=lambda p: (round(by_pair[p], 9), -abs(p[0] - 1.0) - abs(p[1] - 1.0)))
    return best, {f"{a} {c}": round(v, 6) for (a, c), v in by_pair.items()}


def scale_grid(tcfg: LoopConfig, model_cfg: SeqRecConfig) -> tuple[tuple[float, float], ...]:
    """The (dot, recent) pairs validation tries: recent scales only when the model has that term."""
    recent = tcfg.recent_scales if model_cfg.recent_days and tcfg.recent_scales else (1.0,)
    dots = tcfg.dot_scales or (1.0,)
    return tuple((a, c) for a in dots for c in recent) if len(dots) * len(recent) > 1 else ()


def train_worker(loop_config: dict) -> None:
    """Ray Train worker function. ``loop_config``: {"model": SeqRecConfig dict, "train": LoopConfig
    dict, "text_embeddings": (V, text_dim) float32 array or None, "item_counts": (V,) or None,
    "rebuy_log_odds": {"train": (V,), "refit": (V,)} or None (the items' rebuy log-odds over each phase's
    inputs: the selection run's from the events before the validation window, the refit's from every event
    before the cut-off),
    "recent_popularity": {"log_counts": (D, V), "first_day": int} or None (training.data.recent_purchase_matrix)}."""
    import ray.train

    run = _start(loop_config)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    # at most train.loop.epochs: early stopping may end the selection run sooner
    # rank 0's lines go to the driver when it gave a queue (jobs/train.py), else into this worker's log
    lines = loop_config.get("progress_queue")
    stream = QueueStream(lines) if lines is not None and run.rank == 0 else None
    with Progress("train epochs (selection)", run.tcfg.epochs, "epochs", quiet=run.rank != 0,
                  stream=stream) as progress:
        progress.update(run.state["epoch"])   # resumed from a checkpoint: those epochs are done
        while run.state.get("phase", "select") == "select":
            run.select_epoch(train_shard, val_shard)
            last = run.state["history"][-1]
            progress.update(1, loss=last["train_loss"], val_ndcg10=last["val_ndcg@10"])
    # Refit: the epoch count early stopping chose, on every event before the cut-off (the validation
    # window's baskets become training targets). Its weights are the ones registered; validation metrics
    # stay those of the selection run (the refit model has trained on the window).
    refit_shard = ray.train.get_dataset_shard("refit") if run.state.get("phase") == "refit" else None
    with Progress("train epochs (refit)", run.state.get("refit_epochs"), "epochs", quiet=run.rank != 0,
                  stream=stream) as progress:
        progress.update(run.state.get("refit_epoch", 0))
        while run.state.get("phase") == "refit":
            run.refit_epoch(refit_shard)
            progress.update(1, loss=run.state["refit_history"][-1]["train_loss"])


def _start(loop_config: dict) -> _WorkerRun:
    """This rank's model, optimizer and trainer state, from the plain dict and the checkpoint if any."""
    import ray.train
    import ray.train.torch as rt

    cfg = SeqRecConfig.from_dict(loop_config["model"])
    tcfg = LoopConfig.from_dict(loop_config["train"])
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(tcfg.seed)          # the same initial weights on every rank (the refit starts over from them)
    device = rt.get_device()
    text = loop_config.get("text_embeddings")
    model = SeqRec(cfg, torch.as_tensor(np.asarray(text)) if text is not None else None)
    torch.manual_seed(tcfg.seed + rank)   # dropout and sampling differ per rank
    if loop_config.get("item_counts") is not None:
        model.set_sampling_distribution(torch.as_tensor(np.asarray(loop_config["item_counts"])))
    rebuy = loop_config.get("rebuy_log_odds") or {}
    if rebuy.get("train") is not None:
        model.set_rebuy_log_odds(torch.as_tensor(np.asarray(rebuy["train"])))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer(model, tcfg.lr, tcfg.weight_decay, tcfg.gate_lr_scale)
    initial_state = _state(model)
    state, best_state = _resume(model, opt, initial_state)
    wrapped = rt.prepare_model(model)     # DDP on >1 worker, moved to the device
    inner: SeqRec = wrapped.module if hasattr(wrapped, "module") else wrapped
    if cfg.recent_days:
        _set_recent_popularity(inner, loop_config.get("recent_popularity"), device)
    return _WorkerRun(cfg=cfg, tcfg=tcfg, rank=rank, device=device, model=wrapped, inner=inner, opt=opt,
                      trainable=trainable, state=state, best_state=best_state, initial_state=initial_state,
                      rebuy=rebuy)


def _resume(model: SeqRec, opt: torch.optim.Optimizer, initial_state: dict[str, torch.Tensor]
            ) -> tuple[dict, dict[str, torch.Tensor]]:
    """(trainer state, best weights so far): from the checkpoint a restarted worker group is given
    (``FailureConfig``), loading the model and the optimizer from it too; else a fresh start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return {"epoch": 0, "best_ndcg": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}, initial_state
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        best_state = load_file(str(folder / "best_model.safetensors"))
        load_optimizer(opt, folder)
        state = read_trainer_state(folder)
    state["resumed_from_epoch"] = state["epoch"]
    return state, best_state


def _set_recent_popularity(model: SeqRec, recent: dict | None, device: torch.device) -> None:
    # Without a matrix the term is 0 but still in the graph (DDP wants every parameter used).
    recent = recent or {}
    counts = recent.get("log_counts")
    if counts is None:
        counts = np.zeros((1, model.cfg.num_items))
    model.set_recent_popularity(torch.as_tensor(np.asarray(counts, dtype=np.float32)).to(device),
                                int(recent.get("first_day", 0)))


@dataclass
class _WorkerRun:
    """One rank's run: ``model`` is what trains (DDP-wrapped on >1 worker), ``inner`` the bare SeqRec;
    ``state`` is what checkpoints carry (epoch, early stopping, phase, histories)."""

    cfg: SeqRecConfig
    tcfg: LoopConfig
    rank: int
    device: torch.device
    model: torch.nn.Module
    inner: SeqRec
    opt: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]
    state: dict
    best_state: dict[str, torch.Tensor]
    initial_state: dict[str, torch.Tensor]
    rebuy: dict

    def autocast(self):
        return cuda_autocast(self.device, self.tcfg.bf16)

    def train_epoch(self, shard, prefix: str, epoch: int) -> dict[str, float]:
        """One pass over this rank's shard of ``<prefix>_*`` examples."""
        tcfg = self.tcfg
        self.model.train()
        started = time.time()
        loss_sum, steps, seqs = 0.0, 0, 0
        for batch in shard.iter_torch_batches(batch_size=tcfg.batch_size, dtypes=torch.long, device=self.device,
                                              local_shuffle_buffer_size=4 * tcfg.batch_size,
                                              local_shuffle_seed=tcfg.seed + epoch):
            with self.autocast():
                loss = self.model(batch[f"{prefix}_tokens"], batch[f"{prefix}_types"],
                                  batch.get(f"{prefix}_baskets"), batch.get(f"{prefix}_days"))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, tcfg.grad_clip)
            self.opt.step()
            loss_sum += float(loss.detach())
            steps += 1
            seqs += batch[f"{prefix}_tokens"].shape[0]
        return {"loss_sum": loss_sum, "steps": float(steps), "sequences": float(seqs), "seconds": time.time() - started}

    def validation_sums(self, val_shard, scales: tuple[tuple[float, float], ...] = ()) -> dict[str, float]:
        """This rank's :func:`validate` sums (not yet all-reduced)."""
        batches = val_shard.iter_torch_batches(batch_size=self.tcfg.eval_batch_size, dtypes=torch.long)
        return validate(self.inner, batches, self.device, self.autocast, scales)

    def report(self, metrics: dict) -> None:
        """Every rank reports; rank 0 attaches the checkpoint."""
        import ray.train

        if self.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                write_checkpoint(Path(tmp), self.inner, self.opt, self.best_state, self.state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    def select_epoch(self, train_shard, val_shard) -> None:
        """One epoch of the selection run: train, validate, early stopping, report."""
        state, tcfg = self.state, self.tcfg
        epoch = state["epoch"]
        epoch_started = time.time()
        trained = self.train_epoch(train_shard, "train", epoch)
        sums = self.validation_sums(val_shard)
        sums.update({k: trained[k] for k in ("loss_sum", "steps", "sequences")})
        sums = _all_reduce_sums(sums)
        counts = ("loss_sum", "steps", "sequences", "targets")
        val = M.finalize({k: v for k, v in sums.items() if k not in counts})
        metrics = {"epoch": epoch, "train_loss": sums["loss_sum"] / max(sums["steps"], 1.0),
                   "train_sequences": int(sums["sequences"]), "epoch_seconds": round(time.time() - epoch_started, 2),
                   "epoch_train_seconds": round(trained["seconds"], 3),
                   **{f"val_{k}": v for k, v in val.items()}, "val_targets": int(sums["targets"])}
        if metrics["val_ndcg@10"] > state["best_ndcg"] + tcfg.min_delta:
            state.update(best_ndcg=metrics["val_ndcg@10"], best_epoch=epoch, bad_epochs=0)
            self.best_state = _state(self.inner)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["history"].append(metrics)
        stop = state["bad_epochs"] >= tcfg.patience or state["epoch"] >= tcfg.epochs
        metrics.update(best_val_ndcg10=state["best_ndcg"], best_epoch=state["best_epoch"], stopping=stop)
        if stop:
            self.end_selection(val_shard, metrics)
        self.report(metrics)

    def end_selection(self, val_shard, metrics: dict) -> None:
        """After early stopping: choose the scales on the best epoch's weights, then set up the refit."""
        state, tcfg = self.state, self.tcfg
        grid = scale_grid(tcfg, self.cfg)
        if grid and state["best_epoch"] >= 0:
            # How much the dot product and the recent popularity should count against the repeat head
            # at the top of the list: the cross-entropy over the whole catalogue weighs them more than
            # NDCG@10 wants (docs/model.md, "Dot-product and recent-popularity scales").
            self.inner.load_state_dict(self.best_state)
            sums_by_scale = _all_reduce_sums(self.validation_sums(val_shard, grid))
            (state["dot_scale"], state["recent_scale"]), state["val_ndcg10_by_scales"] = \
                choose_scales(sums_by_scale, grid)
            metrics.update(dot_scale=state["dot_scale"], recent_scale=state["recent_scale"])
        state["phase"] = "refit" if tcfg.refit and state["best_epoch"] >= 0 else "done"
        if state["phase"] == "refit":
            # The final fit starts over from the same initial weights with a fresh optimizer.
            self.inner.load_state_dict(self.initial_state)
            if self.rebuy.get("refit") is not None:
                self.inner.set_rebuy_log_odds(torch.as_tensor(np.asarray(self.rebuy["refit"])))
            self.opt = optimizer(self.inner, tcfg.lr, tcfg.weight_decay, tcfg.gate_lr_scale)
            state.update(refit_epochs=state["best_epoch"] + 1, refit_epoch=0, refit_history=[])

    def refit_epoch(self, refit_shard) -> None:
        state = self.state
        trained = self.train_epoch(refit_shard, "refit", state["epoch"] + state["refit_epoch"])
        trained = {**_all_reduce_sums({k: v for k, v in trained.items() if k != "seconds"}), "seconds": trained["seconds"]}
        state["refit_epoch"] += 1
        metrics = {"phase": "refit", "refit_epoch": state["refit_epoch"] - 1,
                   "train_loss": trained["loss_sum"] / max(trained["steps"], 1.0),
                   "train_sequences": int(trained["sequences"]), "epoch_seconds": round(trained["seconds"], 2)}
        state["refit_history"].append(metrics)
        if state["refit_epoch"] >= state["refit_epochs"]:
            state["phase"] = "done"
            self.best_state = _state(self.inner)
        self.report({**metrics, "stopping": state["phase"] == "done"})


def cuda_autocast(device: torch.device, bf16: bool = True):
    """bf16 autocast on CUDA when ``bf16`` (LoopConfig.bf16), else a no-op: CPU autocast would slow the
    CPU runs down and change their numbers."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def build_trainer(loop_config: dict, datasets: dict, *, num_workers: int, use_gpu: bool, storage_path: str,
                  name: str, max_failures: int, cpus_per_worker: float = 1.0,
                  train_loop_per_worker: Callable[[dict], None] = train_worker):
    """The ``TorchTrainer`` for :func:`train_worker` (the driver side does nothing else). Tests hand in
    a ``train_loop_per_worker`` that wraps it (tests/test_train.py kills a worker mid-run)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
    )


def config_dicts(model_cfg: SeqRecConfig, train_cfg: LoopConfig) -> dict:
    return {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}


def train_in_process(model: SeqRec, tokens: torch.Tensor, types: torch.Tensor, *, epochs: int, batch_size: int,
                     lr: float, weight_decay: float = 0.0, seed: int = 0,
                     baskets: torch.Tensor | None = None) -> list[float]:
    """The same optimisation without Ray (one plain PyTorch process): for tests and the Ray-overhead
    benchmark. ``tokens``, ``types`` (n, T+1) as in the ``train`` dataset. Returns the mean loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = optimizer(model, lr, weight_decay)
    losses = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(tokens.shape[0], generator=gen)
        total, steps = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = model(tokens[idx], types[idx], None if baskets is None else baskets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        losses.append(total / max(steps, 1))
    return losses
