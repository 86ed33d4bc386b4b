"""A Spark standalone cluster on loopback, for the slow cluster test and the executor-scaling bench: one
master and N workers started with ``spark-class`` from the installed pyspark, always stopped on exit::

    with standalone.cluster(work_dir, workers=2) as c:
        c["master"]   # spark://127.0.0.1:PORT

Each process runs in a session of its own, so stopping it takes its executors along. Workers and their
executors run this interpreter for Python (``PYSPARK_PYTHON``).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def master_state(ui_port: int) -> dict:
    """The master's JSON status page: ``status``, ``workers``, ``completedapps``, ..."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as r:
        return json.load(r)


def _wait(predicate, what: str, procs, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: a cluster process exited with {p.returncode}")
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"timed out waiting for {what}")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):   # workers (and their executors) first, then the master
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


@contextlib.contextmanager
def cluster(work: Path, workers: int = 2, cores: int = 1, memory: str = "1g",
            repo_on_path: bool = False) -> Iterator[dict]:
    """spark://127.0.0.1:PORT with ``workers`` workers of ``cores`` cores and ``memory`` each; logs and
    worker folders under ``work``. Yields ``master``, ``ui`` (the master's web port), ``env`` (what a
    spark-submit against it should run with) and ``work``. ``repo_on_path`` puts this repository on
    the executors' PYTHONPATH (a driver started outside spark-submit has no --py-files); without it the
    code must come as spark-submit's --py-files, as on a real cluster."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    home = spark_home()
    path = os.pathsep.join(x for x in (str(REPO) if repo_on_path else "", os.environ.get("PYTHONPATH", "")) if x)
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "256m",
           "SPARK_LOG_DIR": str(work / "logs"), "SPARK_WORKER_CORES": str(cores), "SPARK_WORKER_MEMORY": memory,
           "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": path}
    port, ui = free_port(), free_port()
    spark_class = str(home / "bin" / "spark-class")
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(ui)],
            env=env, stdout=open(work / "master.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        _wait(lambda: master_state(ui).get("status") == "ALIVE", "the master", procs)
        for i in range(workers):
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                 "--host", "127.0.0.1", "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()),
                 "--work-dir", str(work / f"worker{i}")],
                env=env, stdout=open(work / f"worker{i}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        _wait(lambda: len([w for w in master_state(ui)["workers"] if w["state"] == "ALIVE"]) == workers,
              f"{workers} workers to register", procs)
        yield {"master": f"spark://127.0.0.1:{port}", "ui": ui, "env": env, "work": work}
    finally:
        _stop(procs)
