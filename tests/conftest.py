"""Shared fixtures: one session-scoped Spark with Delta (local[2], few shuffle partitions, UI off,
loopback) for the whole test run; :func:`args_for`, the one way tests build a job's arguments; and
:func:`free_port` for the tests that start clusters."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")

# pyspark.sql.connect (which Great Expectations imports) takes a __main__ without __file__ for a doctest run
# and calls sys.exit(0) when Spark Connect's extras are missing. pytest-xdist's workers run as `python -c`,
# whose __main__ has no __file__: give it one, or every test that reaches GX ends in SystemExit: 0.
_MAIN = sys.modules["__main__"]
if getattr(_MAIN, "__spec__", None) is None and not hasattr(_MAIN, "__file__"):
    _MAIN.__file__ = "<pytest-xdist worker>"

REPO = Path(__file__).resolve().parent.parent
RETAIL = REPO.parent / "shared" / "data" / "online_retail"


@pytest.fixture(scope="session")
def config():
    from jobs.runtime import load_config

    return load_config(overrides={"spark.master": "local[2]", "spark.shuffle_partitions": 2,
                                  "spark.driver_memory": "2g"})


@pytest.fixture(scope="session")
def spark(config):
    from jobs.runtime import spark_session

    session = spark_session(config, app_name="warmstart-tests")
    session.conf.set("spark.sql.shuffle.partitions", "2")
    # Delta rebuilds a table snapshot's state in 50 tasks by default; on tiny test tables that is pure
    # overhead (each task generates code for the log's wide schema), so every table read pays it.
    session.conf.set("spark.databricks.delta.snapshotPartitions", "2")
    yield session
    session.stop()


@pytest.fixture
def lake(tmp_path) -> str:
    """A fresh, empty lake root per test."""
    root = tmp_path / "lake"
    root.mkdir()
    return str(root)


def args_for(cls: type, lake: str, config=None, overrides: Mapping[str, Any] | None = None, **fields: Any):
    """A job's frozen ``*Args`` as its ``main`` would build them: the common arguments of
    ``runtime.job_args`` (a fresh run id, ``config`` or the defaults with the dotted ``overrides`` on top)
    and the job's own ``fields`` (a misspelt one is a TypeError). The job's name is its `warmstart`
    subcommand's, as in its lineage records::

        args = args_for(BuildFeaturesArgs, lake, config, run_date=D, overrides={"features.sequence_length": 3})
        build_features.run(spark, args)
    """
    from jobs import cli, runtime

    module = cls.__module__.rpartition(".")[2]
    job = next((name for name, (mod, _) in cli.COMMANDS.items() if mod == module), module)
    common = runtime.job_args(job, lake, config, fields.get("run_date"), **dict(overrides or {}))
    return cls(**{f.name: getattr(common, f.name) for f in dataclasses.fields(runtime.JobArgs)}, **fields)


def load_script(path: Path, name: str):
    """A script outside the installed packages (bench/, infra/) as a module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_bench(name: str):
    """``bench/<name>.py`` as a module (bench/ is scripts, not a package)."""
    return load_script(REPO / "bench" / f"{name}.py", f"bench_{name}")


standalone = load_script(REPO / "infra" / "spark" / "standalone.py", "standalone")
free_port = standalone.free_port   # a TCP port free on loopback, for the clusters the slow tests start


def toy_lock_job(lake: str, tmp_path, monkeypatch) -> int:
    """A job that only takes the run lock of ``lake`` (no Spark), run through ``runtime.run_job``: its exit
    code (the one-line failures of the object-store locks)."""
    from jobs import runtime

    monkeypatch.setenv("WARMSTART_LOG_DIR", str(tmp_path / "logs"))
    parser = runtime.job_parser("toy", "a toy job")
    parser.add_argument("--run-date", type=runtime.parse_date, required=True)
    return runtime.run_job("toy", parser, lambda ns, common: common, lambda args: {}, ["--lake", lake, "--run-date",
                           "2024-01-31"], needs_spark=False, lock=True)


@pytest.fixture(scope="session")
def retail_dir() -> Path:
    if not RETAIL.is_dir():
        pytest.skip(f"Online Retail data not found at {RETAIL}")
    return RETAIL


# For tiny inputs: interpreting expressions costs less CPU than generating and compiling code for each
# of a job's many small queries (results do not depend on it; docs/operations.md). Jobs run as
# subprocesses get it through `spark.conf` (TINY_JOB_OVERRIDES).
INTERPRETED_SQL = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}
TINY_JOB_OVERRIDES = ["spark.conf=" + json.dumps(INTERPRETED_SQL), "spark.delta_snapshot_partitions=2"]


@pytest.fixture(scope="module")
def interpreted_sql(spark):
    """For a module of tiny inputs (see INTERPRETED_SQL)."""
    settings = INTERPRETED_SQL
    saved = {k: spark.conf.get(k, None) for k in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    yield
    for key, value in saved.items():
        spark.conf.unset(key) if value is None else spark.conf.set(key, value)


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first, each file's tests kept together and in order: `make test` hands whole
    files to its pytest-xdist workers in this order, and starting the long ones first keeps one worker from
    being left with a long file at the end while the other idles."""
    heavy = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in heavy)
