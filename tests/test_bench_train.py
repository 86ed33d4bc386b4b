"""bench/train.py's GPU part: the FLOP count per position worked out by hand, the peak table, the
throughput loop (run here on the CPU), and the skip without a GPU."""
from __future__ import annotations

import argparse

import pytest
from conftest import load_bench
import torch

from training.model import SeqRec, SeqRecConfig



@pytest.fixture(scope="module")
def bench():
    return load_bench("train")


def test_flops_per_position_hand_computed(bench):
    """d = 8, one layer, V = 10, T = 4. One BERT block: Q, K, V and the attention output 4 x (8x8 + 8)
    = 288, the feed-forward 8x32 + 32 + 32x8 + 8 = 552, two layer norms 2 x 16 = 32: 872 weights; with
    the 10 x 8 item table N = 952. 6 N + 12 L d T = 5712 + 384."""
    model = SeqRec(SeqRecConfig(num_items=10, dim=8, num_layers=1, num_heads=2, max_seq_len=4, use_text=False))
    assert sum(p.numel() for p in model.user_tower.encoder.parameters()) == 872
    assert bench.flops_per_position(model, 4) == 6096.0


def test_peak_table(bench):
    assert bench.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_bf16_flops("NVIDIA H200") == 989e12
    assert bench.peak_bf16_flops("NVIDIA L40S") == 362e12 and bench.peak_bf16_flops("NVIDIA L4") == 121e12
    assert bench.peak_bf16_flops("Tesla T4") is None


def test_throughput_loop_counts_positions_and_real_tokens(bench):
    """Two batches of 4 sequences, 6 input positions each (the first 6 of 7 columns), 4 or 6 of them
    real: the real-token rate is (4 + 6) / 12 of the position rate whichever sequences a batch draws, over
    the 4 timed steps (each batch twice); on the CPU there is no bf16 and no known peak."""
    tokens = torch.zeros(8, 7, dtype=torch.long)
    tokens[0::2, :4] = torch.arange(2, 6)          # 4 events: 4 input positions real
    tokens[1::2, :6] = torch.arange(2, 8)          # 6 events: all 6 input positions real
    train = {"train_tokens": tokens.numpy(), "train_types": (tokens > 0).long().numpy(),
             "train_baskets": torch.arange(7).repeat(8, 1).numpy()}
    cfg = SeqRecConfig(num_items=10, dim=8, num_layers=1, num_heads=2, max_seq_len=6, use_text=False, recent_days=0)
    r = bench.gpu_throughput(cfg, train, batch_size=4, steps=4, bf16=True, device=torch.device("cpu"))
    assert (r["batch_size"], r["seq_len"], r["steps"], r["bf16"], r["mfu"]) == (4, 6, 4, False, None)
    assert r["positions_per_s"] == pytest.approx(4 * 4 * 6 / r["seconds"])
    assert r["real_tokens_per_s"] == pytest.approx(r["positions_per_s"] * 10 / 12)
    assert r["achieved_tflops"] == pytest.approx(r["positions_per_s"] * r["flops_per_position"] / 1e12)


def test_without_a_gpu_the_gpu_part_says_so_and_writes_nothing(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    a = argparse.Namespace(gpu_batch_size=4, gpu_steps=1, fp32=False)
    assert bench.gpu_section(a, SeqRecConfig(num_items=10, dim=8, num_heads=2), {}) is None
    assert "no GPU present" in capsys.readouterr().out and not list(tmp_path.iterdir())
