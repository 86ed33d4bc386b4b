"""Progress of a job's Spark work (ingest, feature builds, scoring, publish): tasks done, rate and ETA.

A Spark job is a chain of stages planned as it runs, so its whole length is not known up front; what is
known is the stages running now. A daemon thread polls the driver's status tracker (no listener, no UI
server: ``spark.ui.enabled`` stays off) and reports them:

- on an interactive terminal, one ``tqdm`` bar over the tasks of the stages seen so far, its label the
  running stage;
- otherwise (Airflow's task log, ``nohup``), a plain line every ``spark.progress_every_s`` seconds while
  a stage runs, e.g.::

    score: stage 14 (save) 37/200 tasks (18%) 4.1 tasks/s ETA 00:39; 9 stages done, 1,212 tasks, elapsed 05:10

Nothing is printed for work shorter than one interval, so short jobs and tests stay quiet. ``0`` turns
it off. One watcher per driver: a job run inside another (``nightly``'s stages) relabels it.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

from tqdm import tqdm


@dataclass(frozen=True)
class StageState:
    stage_id: int
    name: str
    tasks: int
    done: int
    active: bool


def _short(name: str) -> str:
    """``save at NativeMethodAccessorImpl.java:0`` -> ``save``: the call site is the JVM's, not ours; a
    Scala closure's name (``$anonfun$recordDeltaOperationInternal$1``, Delta's own stages) -> ``""``."""
    short = name.split(" at ")[0].strip()
    return "" if short.startswith("$") else short


def stages(tracker) -> list[StageState]:
    """The active stages, from a ``pyspark.StatusTracker`` (or anything with its three methods)."""
    found = []
    for sid in tracker.getActiveStageIds():
        info = tracker.getStageInfo(sid)
        if info is not None:
            found.append(StageState(sid, _short(info.name), info.numTasks, info.numCompletedTasks, True))
    return found


class SparkProgress:
    """Polls ``tracker`` every ``poll_s`` seconds in a daemon thread while the block runs."""

    def __init__(self, tracker, desc: str, *, every_s: float = 30.0, poll_s: float = 1.0,
                 stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.tracker, self.desc, self.every_s, self.poll_s, self.clock = tracker, desc, every_s, poll_s, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.seen: dict[int, StageState] = {}        # every stage met, its last known state
        self.started = self.last_line = clock()
        self.stage_started: dict[int, float] = {}
        self.bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "SparkProgress":
        self._thread = threading.Thread(target=self._loop, name="spark-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.bar is not None:
            self.bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:   # noqa: BLE001 - a status poll must never break the job (the JVM going away)
                return

    def poll(self) -> str | None:
        """Take the tracker's state; print (and return) a line when one is due."""
        now = self.clock()
        active = stages(self.tracker)
        running = {a.stage_id for a in active}
        for s in [s for s in self.seen.values() if s.active and s.stage_id not in running]:   # ended since
            info = self.tracker.getStageInfo(s.stage_id)
            done = info.numCompletedTasks if info is not None else s.tasks
            self.seen[s.stage_id] = StageState(s.stage_id, s.name, s.tasks, done, False)
        for s in active:
            self.seen[s.stage_id] = s
            self.stage_started.setdefault(s.stage_id, now)
        if self.tty:
            self._bar(active)
            return None
        if not active or now - self.last_line < self.every_s:
            return None
        self.last_line = now
        text = self.line(active, now)
        print(text, file=self.stream, flush=True)
        return text

    def line(self, active: list[StageState], now: float) -> str:
        running = []
        for s in active:
            text = f"stage {s.stage_id}{f' ({s.name})' if s.name else ''} {s.done}/{s.tasks} tasks"
            if s.tasks:
                text += f" ({s.done / s.tasks:.0%})"
            # a rate once the stage has run a while (it may have started between two polls)
            elapsed = now - self.stage_started.get(s.stage_id, now)
            if s.done and elapsed >= max(self.poll_s, 1.0):
                rate = s.done / elapsed
                text += f" {rate:.3g} tasks/s ETA {tqdm.format_interval((s.tasks - s.done) / rate)}"
            running.append(text)
        finished = [s for s in self.seen.values() if not s.active]
        return (f"{self.desc}: {'; '.join(running)}; {len(finished)} stages done, "
                f"{sum(s.tasks for s in finished):,} tasks, elapsed {tqdm.format_interval(now - self.started)}")

    def _bar(self, active: list[StageState]) -> None:
        if self.bar is None:
            if not active:
                return
            self.bar = tqdm(total=0, desc=self.desc, unit=" tasks", file=self.stream, dynamic_ncols=True)
        self.bar.total = sum(s.tasks for s in self.seen.values())
        self.bar.n = sum(s.done for s in self.seen.values())
        label = ", ".join(f"stage {s.stage_id}{f' ({s.name})' if s.name else ''}" for s in active)
        self.bar.set_description(f"{self.desc}: {label}" if label else self.desc, refresh=False)
        self.bar.refresh()


_WATCHER: SparkProgress | None = None


@contextlib.contextmanager
def watch(spark, desc: str, every_s: float = 30.0) -> Iterator[SparkProgress | None]:
    """Report ``spark``'s progress under ``desc`` while the block runs (``every_s`` 0: not at all). Inside
    another watch (a nightly stage) the running watcher takes the label for the block."""
    global _WATCHER
    if _WATCHER is not None:
        outer, _WATCHER.desc = _WATCHER.desc, desc
        try:
            yield _WATCHER
        finally:
            _WATCHER.desc = outer
        return
    if not every_s or every_s <= 0:
        yield None
        return
    _WATCHER = SparkProgress(spark.sparkContext.statusTracker(), desc, every_s=every_s).start()
    try:
        yield _WATCHER
    finally:
        _WATCHER.stop()
        _WATCHER = None
