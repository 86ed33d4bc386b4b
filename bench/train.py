"""Training throughput: sequences/s for the same model and the same examples, trained by
(a) one plain PyTorch process (training.train_loop.train_in_process) and (b) Ray Train's TorchTrainer
with N CPU workers (DDP, examples streamed by Ray Data), side by side in one run. Ray's overhead is
reported as the ratio of the two. Writes bench/results/train.md and train.json.

    .venv/bin/python bench/train.py [--users 2000] [--epochs 3] [--workers 2]

Timing excludes start-up (Ray init, worker-group start, the first epoch's warm-up): both sides report
the mean training time (no validation) of epochs 2..E. GPU figures only with --gpu on a machine with one.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from features.contract import cutoff  # noqa: E402
from training.config import LoopConfig  # noqa: E402
from training.data import ExampleSpec, examples_batch  # noqa: E402
from training.model import SeqRec, SeqRecConfig  # noqa: E402
from training.synthetic_sequences import generate  # noqa: E402
from training.train_loop import build_trainer, config_dicts, train_in_process  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def examples(users: int, seq_len: int):
    seqs, items, _ = generate(users=users, categories=16, items_per_category=60, baskets_per_user=20,
                              basket_size=3, max_len=seq_len + 1, seed=0)
    vocab = sorted(items["item_id"])
    # the generator's baskets end on 2024-02-29: a 3-day validation window before that night's cut-off
    spec = ExampleSpec(item_index={i: k for k, i in enumerate(vocab)}, max_seq_len=seq_len,
                       cutoff=cutoff(dt.date(2024, 3, 1)), horizon_days=3)
    ex = examples_batch({c: seqs[c].tolist() for c in ("user_id", "item_ids", "event_types", "event_ts")}, spec,
                        refit=False)
    keep = ex["train_len"] >= 2
    return vocab, {k: v[keep] for k, v in ex.items()}, {k: v[ex["has_val"] == 1][:200] for k, v in ex.items()}


def plain_epoch_seconds(model_cfg: SeqRecConfig, train: dict, epochs: int, batch_size: int) -> float:
    """(a) one plain PyTorch process, all cores: mean seconds of epochs 2..E."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = SeqRec(model_cfg)
    tok, typ = torch.as_tensor(train["train_tokens"]), torch.as_tensor(train["train_types"])
    bas = torch.as_tensor(train["train_baskets"])
    per_epoch = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        train_in_process(model, tok, typ, epochs=1, batch_size=batch_size, lr=2e-3, baskets=bas)
        per_epoch.append(time.perf_counter() - t0)
    return float(np.mean(per_epoch[1:] if len(per_epoch) > 1 else per_epoch))


def ray_epoch_seconds(model_cfg: SeqRecConfig, train: dict, val: dict, a: argparse.Namespace) -> tuple[float, float]:
    """(b) Ray Train TorchTrainer, N workers (1 CPU each), Ray Data shards: (mean training seconds of
    epochs 2..E, the fit's wall time including start-up)."""
    import ray

    ray.init(num_cpus=max(2, a.workers), object_store_memory=300 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False, _temp_dir=os.path.join(tempfile.gettempdir(), "ray-bench-train"))
    ray.data.DataContext.get_current().enable_progress_bars = False
    to_ds = lambda d, cols: ray.data.from_pandas(pd.DataFrame({c: list(d[c]) for c in cols}))  # noqa: E731
    datasets = {"train": to_ds(train, ["train_tokens", "train_types", "train_baskets"]).materialize(),
                "val": to_ds(val, ["val_tokens", "val_types", "val_baskets", "val_targets"]).materialize()}
    loop_cfg = LoopConfig(epochs=a.epochs, batch_size=a.batch_size // a.workers, lr=2e-3, patience=a.epochs,
                          refit=False)
    loop_config = {**config_dicts(model_cfg, loop_cfg), "text_embeddings": None, "item_counts": None}
    with tempfile.TemporaryDirectory() as storage:
        trainer = build_trainer(loop_config, datasets, num_workers=a.workers, use_gpu=a.gpu, storage_path=storage,
                                name="bench", max_failures=0, cpus_per_worker=1.0)
        t0 = time.perf_counter()
        result = trainer.fit()
        wall = time.perf_counter() - t0
        history = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
    ray.shutdown()
    train_s = [h["epoch_train_seconds"] for h in history]
    return float(np.mean(train_s[1:] if len(train_s) > 1 else train_s)), wall


def write_results(out: dict, seq_len: int) -> None:
    """bench/results/train.json and train.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(out, indent=2))
    n, rows = out["sequences_per_epoch"], out["rows"]
    md = ["# Training throughput: plain PyTorch vs Ray Train", "",
          f"{n} training sequences (length <= {seq_len + 1}), catalogue {out['catalogue']} items, model dim 64, "
          f"2 layers, full-catalogue softmax, global batch {out['batch_size_global']}; mean of epochs "
          f"2..{out['epochs']}.", "",
          "| setup | sequences/s | s/epoch |", "|---|---:|---:|"]
    md += [f"| {r['setup']} | {r['sequences_per_s']:.0f} | {r['epoch_s']:.2f} |" for r in rows]
    md += ["", f"Plain / Ray throughput ratio: **{out['plain_over_ray_ratio']:.2f}x** (Ray fit wall time incl. "
           f"start-up: {out['ray_fit_wall_s_incl_startup']:.0f}s).",
           f"Machine: {out['machine']}.", f"GPU: {out['gpu']}."]
    (RESULTS / "train.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--gpu", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seq_len = 50
    vocab, train, val = examples(a.users, seq_len)
    model_cfg = SeqRecConfig(num_items=len(vocab), dim=64, num_layers=2, num_heads=2, max_seq_len=seq_len,
                             dropout=0.1, use_text=False, recent_days=0)   # generated sequences: no item_daily
    n = len(train["train_tokens"])
    plain_s = plain_epoch_seconds(model_cfg, train, a.epochs, a.batch_size)
    rows = [{"setup": f"plain PyTorch, 1 process, {torch.get_num_threads()} threads",
             "sequences_per_s": n / plain_s, "epoch_s": plain_s}]
    ray_s, wall = ray_epoch_seconds(model_cfg, train, val, a)
    rows.append({"setup": f"Ray Train TorchTrainer, {a.workers} CPU workers (DDP, gloo), 1 thread each",
                 "sequences_per_s": n / ray_s, "epoch_s": ray_s})
    out = {"sequences_per_epoch": n, "catalogue": len(vocab), "epochs": a.epochs, "batch_size_global": a.batch_size,
           "model": {"dim": 64, "layers": 2, "heads": 2, "max_seq_len": seq_len, "text": "off (id tower only)"},
           "rows": rows, "plain_over_ray_ratio": rows[0]["sequences_per_s"] / rows[1]["sequences_per_s"],
           "ray_fit_wall_s_incl_startup": wall,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at end",
           "gpu": "not measured: no GPU lent to this session" if not a.gpu else "see rows"}
    write_results(out, seq_len)
    return 0


if __name__ == "__main__":
    sys.exit(main())
