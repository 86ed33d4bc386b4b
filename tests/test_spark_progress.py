"""jobs/spark_progress.py: the plain lines a non-interactive log gets for running Spark stages (worked
out by hand on a scripted status tracker), silence for work shorter than one interval, a bar on a
terminal, and a real local Spark job watched through the CLI's own hook."""
from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

from jobs import spark_progress
from jobs.spark_progress import SparkProgress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tracker:
    """The three methods of ``pyspark.StatusTracker`` that the watcher calls, fed by the test."""

    def __init__(self):
        self.stages: dict[int, tuple[str, int, int]] = {}    # id -> (name, tasks, completed)
        self.active: list[int] = []

    def getActiveStageIds(self):
        return list(self.active)

    def getStageInfo(self, sid):
        name, tasks, done = self.stages[sid]
        return SimpleNamespace(name=name, numTasks=tasks, numCompletedTasks=done)


def test_a_line_every_interval_with_the_running_stage_rate_eta_and_the_stages_done():
    clock, out, tracker = Clock(), io.StringIO(), Tracker()
    p = SparkProgress(tracker, "score", every_s=30, stream=out, tty=False, clock=clock)
    tracker.stages[3], tracker.active = ("count at NativeMethodAccessorImpl.java:0", 8, 0), [3]
    assert p.poll() is None                           # stage 3 starts at t=0
    clock.now, tracker.stages[3] = 10, ("count at NativeMethodAccessorImpl.java:0", 8, 8)
    tracker.stages[4], tracker.active = ("save at NativeMethodAccessorImpl.java:0", 200, 0), [4]
    assert p.poll() is None                           # 10 s: under the interval; stage 3 ended, 4 starts
    clock.now, tracker.stages[4] = 30, ("save at NativeMethodAccessorImpl.java:0", 200, 50)
    # stage 4: 50 tasks in 20 s = 2.5 tasks/s, 150 left -> 60 s
    assert p.poll() == ("score: stage 4 (save) 50/200 tasks (25%) 2.5 tasks/s ETA 01:00; 1 stages done, "
                        "8 tasks, elapsed 00:30")
    clock.now, tracker.stages[4] = 45, ("save at NativeMethodAccessorImpl.java:0", 200, 90)
    assert p.poll() is None                           # 15 s since the last line
    clock.now, tracker.stages[4] = 60, ("save at NativeMethodAccessorImpl.java:0", 200, 200)
    tracker.active = []
    assert p.poll() is None                           # nothing running: nothing to say
    assert out.getvalue().count("\n") == 1
    # Delta's own stages carry a Scala closure's name: left out; a stage met with tasks already done
    # (started between two polls) gets no rate until it has run a second
    tracker.stages[9], tracker.active = ("$anonfun$recordDeltaOperationInternal$1", 8, 4), [9]
    clock.now = 95
    assert p.poll() == "score: stage 9 4/8 tasks (50%); 2 stages done, 208 tasks, elapsed 01:35"


def test_work_shorter_than_the_interval_prints_nothing_and_a_terminal_gets_a_bar():
    clock, out, tracker = Clock(), io.StringIO(), Tracker()
    p = SparkProgress(tracker, "features", every_s=30, stream=out, tty=False, clock=clock)
    tracker.stages[0], tracker.active = ("save at x", 4, 1), [0]
    clock.now = 29
    assert p.poll() is None and out.getvalue() == ""
    tty_out = io.StringIO()
    bar = SparkProgress(tracker, "features", every_s=30, stream=tty_out, tty=True, clock=clock)
    bar.poll()
    bar.stop()
    assert "features: stage 0 (save)" in tty_out.getvalue() and "1/4" in tty_out.getvalue()


def test_a_real_spark_job_is_reported_and_a_nested_watch_relabels_it(spark):
    out = io.StringIO()
    watcher = SparkProgress(spark.sparkContext.statusTracker(), "ingest", every_s=0.3, poll_s=0.1, stream=out,
                            tty=False)
    spark_progress._WATCHER = watcher.start()
    try:
        with spark_progress.watch(spark, "features") as inner:   # a nightly stage inside the nightly's watch
            assert inner is watcher
            slow = spark.sparkContext.parallelize(range(8), 8).map(lambda x: (time.sleep(0.4), x)[1])
            assert slow.sum() == 28
        assert watcher.desc == "ingest"
    finally:
        watcher.stop()
        spark_progress._WATCHER = None
    lines = out.getvalue().splitlines()
    assert lines, "no progress line for a 1-3 s job polled every 0.1 s"
    assert all(re.fullmatch(r"features: stage \d+ \(\w+\) \d/8 tasks \(\d+%\).*; \d+ stages done, [\d,]+ tasks, "
                            r"elapsed \d\d:\d\d", x) for x in lines), lines


def test_zero_turns_it_off(spark):
    with spark_progress.watch(spark, "score", every_s=0) as w:
        assert w is None and spark_progress._WATCHER is None
