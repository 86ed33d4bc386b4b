"""training/progress.py: the plain lines a non-interactive log gets (every 10% or 30 s, a last line at the
end, rate and ETA worked out by hand), silence on quiet ranks, and a tqdm bar on a terminal."""
from __future__ import annotations

import io

from training.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_tenth_with_rate_eta_and_figures():
    clock, out = Clock(), io.StringIO()
    with Progress("train epochs", 20, "epochs", stream=out, clock=clock) as p:
        for _ in range(5):
            clock.now += 4.0       # 4 s an epoch: 0.25 epochs/s
            p.update(1, loss=6.54321)
    # 2 epochs = 10% -> a line at 2 and 4; the last update (5) printed none, so close() writes it
    assert out.getvalue().splitlines() == [
        "train epochs: 2/20 (10%) 0.25 epochs/s elapsed 00:08 ETA 01:12 loss=6.543",
        "train epochs: 4/20 (20%) 0.25 epochs/s elapsed 00:16 ETA 01:04 loss=6.543",
        "train epochs: 5/20 (25%) 0.25 epochs/s elapsed 00:20 ETA 01:00 loss=6.543",
    ]


def test_plain_lines_every_30_seconds_when_items_are_slow_or_the_total_unknown():
    clock, out = Clock(), io.StringIO()
    with Progress("backtest nights", None, "nights", stream=out, clock=clock) as p:
        for seconds in (10, 10, 15, 5):      # a line once 30 s have passed since the last one
            clock.now += seconds
            p.update(1, night="2011-12-02")
    assert out.getvalue().splitlines() == [
        "backtest nights: 3 0.0857 nights/s elapsed 00:35 night=2011-12-02",
        "backtest nights: 4 0.1 nights/s elapsed 00:40 night=2011-12-02",
    ]


def test_quiet_prints_nothing_and_a_terminal_gets_a_tqdm_bar():
    out = io.StringIO()
    with Progress("x", 3, stream=out, quiet=True) as p:
        p.update(3)
    assert out.getvalue() == ""
    with Progress("scoring users", 4, "users", stream=out, tty=True) as p:
        p.update(4)
    assert "scoring users: 100%" in out.getvalue() and "4/4" in out.getvalue() and "\r" in out.getvalue()
