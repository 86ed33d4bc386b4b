"""Progress of long loops (training epochs, backtest nights): items done, rate and ETA.

On an interactive terminal a ``tqdm`` bar; otherwise (Airflow task logs, ``nohup``, Ray workers' forwarded
output) one plain line every ``every_s`` seconds or each ``every_share`` of the total, whichever comes
first, and a last line at the end, e.g.::

    backtest nights: 2/4 (50%) 0.01 nights/s elapsed 03:10 ETA 03:10 ndcg@10=0.3231

Used as a context manager around the loop; ``update(n, **figures)`` after each item.

Ray Train's workers print into their own logs (the driver starts Ray with ``log_to_driver=False``, which
keeps Ray's noise off the console). Their progress reaches the driver through :func:`forwarded`: rank 0
writes its lines to a :class:`QueueStream` over a Ray queue, and a driver thread prints them.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Callable, Iterator, TextIO

from tqdm import tqdm


class Progress:
    def __init__(self, desc: str, total: int | None, unit: str = "items", *, stream: TextIO | None = None,
                 every_s: float = 30.0, every_share: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 tty: bool | None = None, quiet: bool = False):
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.every_share, self.clock = every_s, every_share, clock
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet   # e.g. every Ray Train rank but the first: one progress per run
        self.done, self.figures = 0, {}
        self.started = self.last_at = clock()
        self.last_share, self.printed = 0.0, 0
        self.bar = (tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream, dynamic_ncols=True)
                    if self.tty and not quiet else None)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1, **figures: Any) -> None:
        self.done += n
        self.figures = figures
        if self.quiet:
            return
        if self.bar is not None:
            if figures:
                self.bar.set_postfix(figures, refresh=False)
            self.bar.update(n)
            return
        now = self.clock()
        share = self.done / self.total if self.total else 0.0
        if now - self.last_at >= self.every_s or (self.total and share - self.last_share >= self.every_share - 1e-9):
            self._line(now)
            self.last_at, self.last_share = now, share

    def close(self) -> None:
        """The bar's last state, or the last plain line if the last update printed none."""
        if self.bar is not None:
            self.bar.close()
        elif self.done != self.printed and not self.quiet:
            self._line(self.clock())

    def line(self, now: float | None = None) -> str:
        """The plain progress line at ``now``."""
        now = self.clock() if now is None else now
        elapsed = max(now - self.started, 0.0)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.done}/{self.total} ({self.done / self.total:.0%})" if self.total
                 else f"{self.desc}: {self.done}", f"{rate:.3g} {self.unit}/s", f"elapsed {tqdm.format_interval(elapsed)}"]
        if self.total and rate > 0:
            parts.append(f"ETA {tqdm.format_interval(max(self.total - self.done, 0) / rate)}")
        parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.figures.items()]
        return " ".join(parts)

    def _line(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self.printed = self.done


class QueueStream:
    """A text stream that puts each whole line on a Ray ``Queue`` (a worker's side of :func:`forwarded`).
    A full queue drops the line: progress must never hold training up."""

    def __init__(self, queue):
        self.queue, self.pending = queue, ""

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            try:
                self.queue.put_nowait(line)
            except Exception:   # noqa: BLE001 - ray.util.queue.Full, or the queue's actor gone with the driver
                pass
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def forwarded(stream: TextIO | None = None, poll_s: float = 0.5) -> Iterator[Any]:
    """A Ray ``Queue`` (an actor that holds no CPU, so it never waits on training's) whose lines a driver
    thread prints on ``stream`` (stderr) while the block runs; the lines left at the end are printed too."""
    from ray.util.queue import Empty, Queue

    out = stream if stream is not None else sys.stderr
    queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            try:
                print(queue.get(timeout=poll_s), file=out, flush=True)
            except Empty:
                continue
            except Exception:   # noqa: BLE001 - the queue's actor gone (Ray shut down): nothing more to print
                return

    thread = threading.Thread(target=pump, name="progress-forward", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(Exception):
            for line in queue.get_nowait_batch(queue.qsize()):
                print(line, file=out, flush=True)
            queue.shutdown()
