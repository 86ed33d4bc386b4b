"""A real Spark standalone cluster on loopback (one master, two one-core workers, started with
``spark-class`` from .venv's pyspark): spark-submit the ingest and feature jobs to it with the Delta jars
as ``--jars``, the package zip as ``--py-files`` and infra/spark/spark-defaults.conf, and check that the
tables equal the local-mode result of the same jobs. The cluster is always stopped."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import INTERPRETED_SQL
from conftest import standalone as cluster_module

from jobs import jvm, runtime

REPO = Path(__file__).resolve().parent.parent
D = "2024-01-31"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """spark://127.0.0.1:PORT with two workers of 1 core / 1 GB each; the code reaches them only
    through spark-submit's --py-files (the repository is not on their PYTHONPATH)."""
    with cluster_module.cluster(tmp_path_factory.mktemp("standalone"), workers=2, cores=1, memory="1g") as c:
        yield c


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO / "infra" / "spark"))
    try:
        import build_package
    finally:
        sys.path.pop(0)
    return build_package.build(tmp_path_factory.mktemp("pkg") / "warmstart-py.zip")


@pytest.fixture(scope="module")
def drop(tmp_path_factory) -> Path:
    from features.synthetic import generate

    out = tmp_path_factory.mktemp("drop")
    generate(out, users=40, items=200, days=6, start_date="2024-01-26", seed=7, bad_rate=0.02)
    return out


def _submit(cluster, package: Path, job: str, args: list[str], log: Path) -> subprocess.CompletedProcess:
    home = cluster_module.spark_home()
    jars = ",".join(sorted(str(p) for p in (REPO / ".jars").glob("*.jar")))
    cmd = [str(home / "bin" / "spark-submit"), "--master", cluster["master"], "--deploy-mode", "client",
           "--properties-file", str(REPO / "infra" / "spark" / "spark-defaults.conf"),
           # the tiny cluster's sizes and this machine's paths win over the file's cluster values
           "--conf", f"spark.pyspark.python={sys.executable}", "--conf", f"spark.pyspark.driver.python={sys.executable}",
           "--conf", "spark.driver.memory=1g", "--conf", "spark.executor.memory=512m",
           "--conf", "spark.executor.cores=1", "--conf", "spark.executor.memoryOverhead=384m",
           "--conf", "spark.sql.shuffle.partitions=4", "--conf", "spark.driver.host=127.0.0.1",
           "--conf", "spark.driver.bindAddress=127.0.0.1", "--conf", "spark.databricks.delta.snapshotPartitions=2",
           *(a for k, v in INTERPRETED_SQL.items() for a in ("--conf", f"{k}={v}")),   # tiny inputs: see conftest
           "--jars", jars, "--py-files", str(package),
           # the client-mode driver runs here: it maps the class-data-sharing archive, as docs/operations.md says
           *(["--driver-java-options", cds] if (cds := jvm.cds_java_options(runtime.load_config())) else []),
           str(REPO / "jobs" / f"{job}.py"), *args]
    with open(log, "w") as out:
        result = subprocess.run(cmd, env={**cluster["env"], "WARMSTART_SPARK_LOG_LEVEL": "WARN"}, stdout=out,
                                stderr=subprocess.STDOUT, timeout=540)
    assert result.returncode == 0, f"spark-submit {job} exited {result.returncode}:\n{log.read_text()[-3000:]}"
    return result


VOLATILE = {"bronze/events": ["ingested_at", "run_id"], "bronze/events_quarantine": ["run_id", "quarantined_at"],
            "bronze/items": []}
FEATURE_TABLES = ("features/user_features", "features/item_features", "features/user_sequences")


def test_ingest_and_features_on_a_standalone_cluster_match_local_mode(spark, standalone, package, drop, tmp_path):
    from pyspark.sql import functions as F
    from pyspark.testing import assertDataFrameEqual

    from jobs import build_features, ingest

    ingest_args = ["--run-date", D, "--events", str(drop / "events"), "--items", str(drop / "items")]
    cluster_lake, local_lake = tmp_path / "cluster" / "lake", tmp_path / "local" / "lake"
    _submit(standalone, package, "ingest", [*ingest_args, "--lake", str(cluster_lake)], tmp_path / "ingest.log")
    _submit(standalone, package, "build_features", ["--run-date", D, "--lake", str(cluster_lake)],
            tmp_path / "features.log")
    # the jobs really ran on the cluster: the master lists both applications as finished
    apps = cluster_module.master_state(standalone["ui"])["completedapps"]
    assert sorted((a["name"], a["state"]) for a in apps) == [("warmstart-features", "FINISHED"),
                                                            ("warmstart-ingest", "FINISHED")], apps

    assert ingest.main([*ingest_args, "--lake", str(local_lake)]) == 0
    assert build_features.main(["--run-date", D, "--lake", str(local_lake)]) == 0

    def read(lake: Path, table: str, drop_cols=()):
        return spark.read.format("delta").load(f"{lake}/{table}").drop(*drop_cols)

    for table, volatile in VOLATILE.items():
        local = read(local_lake, table, volatile)
        assert local.count() > 0, table
        assertDataFrameEqual(read(cluster_lake, table, volatile), local)
    for table in FEATURE_TABLES:
        local = read(local_lake, table).where(F.col("as_of_date") == D)
        assert local.count() > 0, table
        assertDataFrameEqual(read(cluster_lake, table).where(F.col("as_of_date") == D), local)


def test_spark_xgboost_ranker_trains_on_the_clusters_two_workers(standalone, package, tmp_path):
    """tests/cluster_ranker_job.py, spark-submitted: ``fit_xgb_spark`` with num_workers=2 runs its barrier
    stage on the cluster's two one-core executors (it could not start with fewer slots) and learns the
    planted signal."""
    out = tmp_path / "ranker.json"
    # _submit runs jobs/<name>.py; the ranker job is a test script, one folder over
    _submit(standalone, package, "../tests/cluster_ranker_job", [str(out)], tmp_path / "ranker.log")
    result = json.loads(out.read_text())
    assert result["master"] == standalone["master"]
    assert result["info"]["num_workers"] == 2 and 1 <= result["info"]["rounds"] <= 50
    assert result["info"]["train_groups"] > 150 and result["info"]["valid_groups"] > 75   # groups with a positive
    assert result["first_item_precision"] > 0.9                  # random would be ~0.16
    apps = [(a["name"], a["state"]) for a in cluster_module.master_state(standalone["ui"])["completedapps"]]
    assert ("warmstart-cluster-ranker", "FINISHED") in apps, apps
