"""Training throughput: sequences/s for the same model and the same examples, trained by
(a) one plain PyTorch process (training.train_loop.train_in_process) and (b) Ray Train's TorchTrainer
with N CPU workers (DDP, examples streamed by Ray Data), side by side in one run. Ray's overhead is
reported as the ratio of the two. Writes bench/results/train.md and train.json.

    .venv/bin/python bench/train.py [--users 2000] [--epochs 3] [--workers 2]
    python3 bench/train.py --gpu-only [--gpu-batch-size 256] [--dim 64 --layers 2 --seq-len 50] [--fp32]

Timing excludes start-up (Ray init, worker-group start, the first epoch's warm-up): both sides report
the mean training time (no validation) of epochs 2..E. Ray's GPU workers only with --gpu.

On a machine with a CUDA GPU it also measures one process training on the GPU (bf16 autocast unless
--fp32, as train.loop.bf16): positions/s and the model FLOP utilisation, the achieved training FLOP/s
over the device's dense bf16 peak (PEAK_BF16_FLOPS), written to bench/results/train_gpu.md and .json.
Training FLOPs per position (:func:`flops_per_position`) = 6 N + 12 L d T: N the weights each position
multiplies (the transformer blocks' and the d x V item table, since every position's user vector is
scored against the whole catalogue), 6 = 2 (multiply-add) x 3 (forward + backward); 12 L d T the
attention scores and their weighted sums over T positions in L layers (PaLM, Chowdhery et al. 2022,
appendix B; the causal mask's half not subtracted). Lookups, norms, the history skip (6 T d) and the
repeat head are left out: under 2% at the default sizes. Without a GPU that part says so and is skipped.
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
from training.train_loop import build_trainer, config_dicts, cuda_autocast, optimizer, train_in_process  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# Dense (no sparsity) bf16 tensor-core peak in FLOP/s by a part of torch.cuda.get_device_name(), from
# NVIDIA's data sheets; the first match wins (PCIe / NVL before the SXM name they contain).
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                   ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12))


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


def peak_bf16_flops(device_name: str) -> float | None:
    """The device's dense bf16 peak FLOP/s, None for a device not in PEAK_BF16_FLOPS."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def flops_per_position(model: SeqRec, seq_len: int) -> float:
    """Training FLOPs per sequence position (module docstring): 6 N + 12 L d T."""
    cfg = model.cfg
    weights = sum(p.numel() for p in model.user_tower.encoder.parameters()) + cfg.num_items * cfg.dim
    return 6.0 * weights + 12.0 * cfg.num_layers * cfg.dim * seq_len


def gpu_throughput(model_cfg: SeqRecConfig, train: dict, batch_size: int, steps: int, bf16: bool,
                   device: torch.device) -> dict:
    """Training steps in one process on ``device`` (bf16 autocast on CUDA with ``bf16``): positions/s
    (B x T per step, padding included: the compute is spent on it), real tokens/s, achieved FLOP/s and
    MFU against the device's peak. Timed after 3 warm-up steps, the device synchronised around them."""
    torch.manual_seed(0)
    model = SeqRec(model_cfg).to(device)
    opt = optimizer(model, 2e-3, 0.01)
    cols = [torch.as_tensor(train[c]).to(device) for c in ("train_tokens", "train_types", "train_baskets")]
    order = torch.randperm(len(cols[0]), generator=torch.Generator().manual_seed(0)).to(device)
    batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)] or [order]
    real = 0
    for step in range(steps + 3):
        if step == 3:
            _sync(device)
            started, real = time.perf_counter(), 0
        idx = batches[step % len(batches)]
        with cuda_autocast(device, bf16):
            loss = model(*(c[idx] for c in cols))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        real += int((cols[0][idx][:, :-1] != 0).sum()) if step >= 3 else 0
    _sync(device)
    seconds = time.perf_counter() - started
    T = cols[0].shape[1] - 1
    positions = steps * len(batches[0]) * T / seconds
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    achieved, peak = positions * flops_per_position(model, T), peak_bf16_flops(name)
    return {"device": name, "bf16": bf16 and device.type == "cuda", "batch_size": len(batches[0]), "seq_len": T,
            "steps": steps, "seconds": seconds, "positions_per_s": positions, "real_tokens_per_s": real / seconds,
            "flops_per_position": flops_per_position(model, T), "achieved_tflops": achieved / 1e12,
            "peak_bf16_tflops": None if peak is None else peak / 1e12,
            "mfu": None if peak is None else achieved / peak, "final_loss": float(loss.detach())}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_line(r: dict) -> str:
    mfu = "peak unknown for this device" if r["mfu"] is None else \
        f"of {r['peak_bf16_tflops']:.0f} peak: MFU {100 * r['mfu']:.2f}%"
    return (f"GPU throughput: {r['device']}, {'bf16' if r['bf16'] else 'fp32'}, batch {r['batch_size']} x "
            f"{r['seq_len']}: {r['positions_per_s'] / 1e6:.3f}M positions/s ({r['real_tokens_per_s'] / 1e6:.3f}M "
            f"real tokens/s), {r['achieved_tflops']:.2f} TFLOP/s achieved {mfu}")


def gpu_section(a: argparse.Namespace, model_cfg: SeqRecConfig, train: dict) -> dict | None:
    """The GPU measurement, printed and written to bench/results/train_gpu.*; None without a GPU."""
    if not torch.cuda.is_available():
        print("GPU throughput: no GPU present (torch.cuda.is_available() is False): skipped")
        return None
    r = gpu_throughput(model_cfg, train, a.gpu_batch_size, a.gpu_steps, not a.fp32, torch.device("cuda"))
    r.update(model={"dim": model_cfg.dim, "layers": model_cfg.num_layers, "heads": model_cfg.num_heads,
                    "catalogue": model_cfg.num_items, "text": "off (id tower only)"},
             formula="flops/position = 6 * (transformer block weights + catalogue x dim) + 12 * layers * dim * T")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_gpu.json").write_text(json.dumps(r, indent=2))
    md = ["# Training throughput on one GPU", "", gpu_line(r), "",
          f"Model: dim {model_cfg.dim}, {model_cfg.num_layers} layers, catalogue {model_cfg.num_items}, "
          f"full-catalogue softmax; {r['steps']} timed steps after 3 warm-up. FLOPs per position "
          f"{r['flops_per_position']:.3g} ({r['formula']}; bench/train.py)."]
    (RESULTS / "train_gpu.md").write_text("\n".join(md) + "\n")
    print(gpu_line(r))
    return r


def write_results(out: dict, seq_len: int) -> None:
    """bench/results/train.json and train.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(out, indent=2))
    n, rows = out["sequences_per_epoch"], out["rows"]
    md = ["# Training throughput: plain PyTorch vs Ray Train", "",
          f"{n} training sequences (length <= {seq_len + 1}), catalogue {out['catalogue']} items, model dim "
          f"{out['model']['dim']}, {out['model']['layers']} layers, full-catalogue softmax, global batch "
          f"{out['batch_size_global']}; mean of epochs "
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
    ap.add_argument("--gpu", action="store_true", help="Ray Train's workers on GPUs")
    ap.add_argument("--gpu-only", action="store_true", help="only the one-process GPU measurement")
    ap.add_argument("--gpu-batch-size", type=int, default=256)
    ap.add_argument("--gpu-steps", type=int, default=50)
    ap.add_argument("--fp32", action="store_true", help="GPU measurement without bf16 autocast")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=50)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    vocab, train, val = examples(a.users, a.seq_len)
    model_cfg = SeqRecConfig(num_items=len(vocab), dim=a.dim, num_layers=a.layers, num_heads=2, max_seq_len=a.seq_len,
                             dropout=0.1, use_text=False, recent_days=0)   # generated sequences: no item_daily
    if not a.gpu_only:
        cpu_comparison(a, model_cfg, vocab, train, val)
    gpu_section(a, model_cfg, train)
    return 0


def cpu_comparison(a: argparse.Namespace, model_cfg: SeqRecConfig, vocab: list[str], train: dict, val: dict) -> None:
    """(a) plain PyTorch vs (b) Ray Train on the same examples: bench/results/train.md and .json."""
    n = len(train["train_tokens"])
    plain_s = plain_epoch_seconds(model_cfg, train, a.epochs, a.batch_size)
    rows = [{"setup": f"plain PyTorch, 1 process, {torch.get_num_threads()} threads",
             "sequences_per_s": n / plain_s, "epoch_s": plain_s}]
    ray_s, wall = ray_epoch_seconds(model_cfg, train, val, a)
    rows.append({"setup": f"Ray Train TorchTrainer, {a.workers} CPU workers (DDP, gloo), 1 thread each",
                 "sequences_per_s": n / ray_s, "epoch_s": ray_s})
    out = {"sequences_per_epoch": n, "catalogue": len(vocab), "epochs": a.epochs, "batch_size_global": a.batch_size,
           "model": {"dim": model_cfg.dim, "layers": model_cfg.num_layers, "heads": model_cfg.num_heads,
                     "max_seq_len": a.seq_len, "text": "off (id tower only)"},
           "rows": rows, "plain_over_ray_ratio": rows[0]["sequences_per_s"] / rows[1]["sequences_per_s"],
           "ray_fit_wall_s_incl_startup": wall,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at end",
           "gpu": "not measured: no GPU lent to this session" if not a.gpu else "see rows"}
    write_results(out, a.seq_len)


if __name__ == "__main__":
    sys.exit(main())
