"""Shared fixtures: one session-scoped Spark with Delta (local[2], few shuffle partitions, UI off,
loopback) for the whole test run."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")

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


@pytest.fixture(scope="session")
def retail_dir() -> Path:
    if not RETAIL.is_dir():
        pytest.skip(f"Online Retail data not found at {RETAIL}")
    return RETAIL


# For tiny inputs: interpreting expressions costs less CPU than generating and compiling code for each
# of a job's many small queries (results do not depend on it). Jobs run as subprocesses get it through
# `spark.conf` (TINY_JOB_OVERRIDES): a small drop's features job took 58 s with code generation, 45 s without.
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
