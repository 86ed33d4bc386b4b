"""The Airflow DAG (infra/airflow/warmstart_nightly.py), checked in Airflow's own virtualenv
(.venv-airflow, `make airflow-env`) from subprocesses: it loads with no import errors, its task graph and
task settings are as designed, and `airflow dags test` runs it end to end on a small generated drop
against local Spark (spark-submit of .venv's pyspark) and a local Ray head (`ray job submit`)."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import INTERPRETED_SQL

REPO = Path(__file__).resolve().parent.parent
AIRFLOW_BIN = REPO / ".venv-airflow" / "bin"
DAG_FOLDER = REPO / "infra" / "airflow"
DS = "2024-01-31"
pytestmark = pytest.mark.slow

EXPECTED_EDGES = {
    "ingest": ["gate_events", "gate_items"],
    "gate_events": ["build_features"],
    "gate_items": ["build_features"],
    "build_features": ["gate_item_features", "gate_user_features", "gate_user_sequences"],
    "gate_user_features": ["training_due"],
    "gate_item_features": ["training_due"],
    "gate_user_sequences": ["training_due"],
    "training_due": ["train"],
    "train": ["train_ranker"],
    "train_ranker": ["backtest_due"],
    "backtest_due": ["backtest"],
    "backtest": ["score"],
    "score": ["publish"],
    "publish": ["run_report"],
    "run_report": [],
}

DESCRIBE = r'''
import json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dags), "tasks": {},
       "heavy_imports": sorted({m.split(".")[0] for m in sys.modules} & {"pyspark", "torch", "ray"})}
dag = bag.dags.get("warmstart_nightly")
if dag is not None:
    out["schedule"] = getattr(dag.timetable, "expression", None)
    out["max_active_runs"] = dag.max_active_runs
    for t in dag.tasks:
        out["tasks"][t.task_id] = {
            "type": type(t).__name__, "downstream": sorted(t.downstream_task_ids), "retries": t.retries,
            "timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
            "trigger_rule": str(t.trigger_rule.value if hasattr(t.trigger_rule, "value") else t.trigger_rule),
            "application": getattr(t, "application", None),
            "application_args": getattr(t, "application_args", None),
            "bash_command": getattr(t, "bash_command", None),
            "conf": getattr(t, "conf", None),
        }
print("DESCRIBE" + json.dumps(out))
'''


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    """Airflow in its own venv, its state (sqlite, logs) under ``home``, no example DAGs."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update({
        "PATH": f"{AIRFLOW_BIN}:{env.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FOLDER),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "WARMSTART_HOME": str(REPO),
        "WARMSTART_PYTHON": sys.executable,
        **extra,
    })
    return env


def _require_airflow() -> None:
    if not (AIRFLOW_BIN / "airflow").exists():
        pytest.fail("Airflow's virtualenv is missing: run `make airflow-env` (part of `make setup`)")


def describe(tmp_path: Path, **env) -> dict:
    _require_airflow()
    script = tmp_path / "describe.py"
    script.write_text(DESCRIBE)
    result = subprocess.run([str(AIRFLOW_BIN / "python"), str(script), str(DAG_FOLDER)], capture_output=True,
                            text=True, timeout=300, env=airflow_env(tmp_path / "airflow", **env))
    line = next((l for l in result.stdout.splitlines() if l.startswith("DESCRIBE")), None)
    assert result.returncode == 0 and line, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(line[len("DESCRIBE"):])


def test_dag_loads_with_the_designed_graph(tmp_path):
    archive = tmp_path / "spark-cds.jsa"
    archive.write_bytes(b"archive")
    info = describe(tmp_path, WARMSTART_LAKE="/data/lake", WARMSTART_DROPS="/data/drops",
                    WARMSTART_RAY_ADDRESS="http://ray-head:8265", WARMSTART_CDS_ARCHIVE=str(archive))
    assert info["errors"] == {}
    assert info["dag_ids"] == ["warmstart_nightly"]
    assert info["heavy_imports"] == []   # only warmstart's light modules (jobs.config, jobs.jvm)
    tasks = info["tasks"]
    assert {t: v["downstream"] for t, v in tasks.items()} == EXPECTED_EDGES
    spark_tasks = {"ingest", "gate_events", "gate_items", "build_features", "gate_user_features",
                   "gate_item_features", "gate_user_sequences", "train_ranker", "backtest", "score", "publish"}
    assert {t for t, v in tasks.items() if v["type"] == "SparkSubmitOperator"} == spark_tasks
    assert tasks["ingest"]["application"] == f"{REPO}/jobs/ingest.py"
    assert tasks["ingest"]["application_args"] == [
        "--run-date", "{{ ds }}", "--events", "/data/drops/{{ ds }}/events", "--items", "/data/drops/{{ ds }}/items",
        "--format", "auto", "--lake", "/data/lake"]
    # every spark-submit maps the drivers' class-data-sharing archive when there is one
    assert {t: v["conf"]["spark.driver.extraJavaOptions"].split()[0] for t, v in tasks.items()
            if t in spark_tasks} == {t: f"-XX:SharedArchiveFile={archive}" for t in spark_tasks}
    assert tasks["gate_user_sequences"]["application_args"] == [
        "--table", "features/user_sequences", "--run-date", "{{ ds }}", "--lake", "/data/lake"]
    train = tasks["train"]["bash_command"]
    assert train.startswith(f"{Path(sys.executable).with_name('ray')} job submit --address http://ray-head:8265 "
                            f"--working-dir {REPO} ")
    assert "-- " + sys.executable + " jobs/train.py --run-date {{ ds }} --ray-address auto --lake /data/lake" in train
    assert "--check-train-due" in tasks["training_due"]["bash_command"]
    # the run report and the trend page over the configured nights (tracking.trend_nights)
    assert tasks["run_report"]["bash_command"].endswith(
        f"{REPO}/jobs/report.py --run-date {{{{ ds }}}} --last 14 --lake /data/lake")
    assert tasks["train_ranker"]["application"] == f"{REPO}/jobs/train_ranker.py"
    assert tasks["train_ranker"]["application_args"] == ["--run-date", "{{ ds }}", "--lake", "/data/lake"]
    # the leave-last-out evaluate is gone: the lists published nightly.feedback_days before {{ ds }}, judged
    # on the purchases since, when that night had published lists (backtest_due, exit 99 skips)
    assert "evaluate" not in tasks
    assert tasks["backtest_due"]["bash_command"] == (
        f"{sys.executable} {REPO}/jobs/nightly.py --run-date {{{{ ds }}}} --check-backtest-due --lake /data/lake")
    assert tasks["backtest"]["application"] == f"{REPO}/jobs/backtest.py"
    assert tasks["backtest"]["application_args"] == [
        "--run-dates", "{{ macros.ds_add(ds, -7) }}", "--horizon", "7", "--lists", "published", "--lake", "/data/lake"]
    # every task has a timeout; gates are not retried (a data fact), the rest are
    assert all(v["timeout_s"] for v in tasks.values())
    assert {t for t, v in tasks.items() if v["retries"] == 0} == {
        "gate_events", "gate_items", "gate_user_features", "gate_item_features", "gate_user_sequences", "training_due",
        "backtest_due"}
    assert tasks["train"]["retries"] == 2 and tasks["train"]["timeout_s"] == 4 * 3600
    assert tasks["score"]["trigger_rule"] == "none_failed"
    assert (info["max_active_runs"], info["schedule"]) == (1, "0 2 * * *")


def test_the_config_files_gate_lists_and_archive_setting_shape_the_dag(tmp_path):
    """WARMSTART_CONFIG is what every job gets as --config: its nightly gate lists are the DAG's, and
    its spark.cds_archive (here off) decides the drivers' JVM options, as for a local driver."""
    archive = tmp_path / "spark-cds.jsa"
    archive.write_bytes(b"archive")
    site = tmp_path / "site.yaml"
    site.write_text("nightly:\n  gates_after_ingest: [bronze/events]\n  gates_after_features: []\n"
                    "  feedback_days: 14\nspark:\n  cds_archive: off\n")
    info = describe(tmp_path, WARMSTART_CONFIG=str(site), WARMSTART_LAKE="/data/lake")
    assert info["errors"] == {}
    tasks = info["tasks"]
    assert {t: v["downstream"] for t, v in tasks.items() if t in ("ingest", "gate_events", "build_features")} == {
        "ingest": ["gate_events"], "gate_events": ["build_features"], "build_features": ["training_due"]}
    assert not {"gate_items", "gate_user_features", "gate_item_features", "gate_user_sequences"} & set(tasks)
    assert tasks["gate_events"]["application_args"] == [
        "--table", "bronze/events", "--run-date", "{{ ds }}", "--lake", "/data/lake", "--config", str(site)]
    assert [t for t, v in tasks.items() if v["conf"]] == []   # no archive options on any spark-submit
    assert tasks["backtest"]["application_args"][:4] == [
        "--run-dates", "{{ macros.ds_add(ds, -14) }}", "--horizon", "14"]
    # the environment still wins over the file
    info = describe(tmp_path, WARMSTART_CONFIG=str(site), WARMSTART_CDS_ARCHIVE=str(archive))
    assert info["tasks"]["ingest"]["conf"]["spark.driver.extraJavaOptions"].split()[0] == \
        f"-XX:SharedArchiveFile={archive}"


def test_dags_test_runs_the_nightly_end_to_end(spark, tmp_path):
    """`airflow dags test` with local Spark and a local Ray head on a small generated drop: the lake's
    first night, so nothing was published a week before and the backtest is skipped."""
    from features.synthetic import generate
    from test_ray_cluster import RAY_AUTH, start_ray_head, stop_ray_head

    _require_airflow()
    drops = tmp_path / "drops"
    generate(drops / DS, users=60, items=200, days=10, start_date="2024-01-22", seed=5, bad_rate=0.01)
    lake = tmp_path / "lake"
    config = tmp_path / "site.yaml"
    config.write_text(json.dumps({   # YAML: small model, few epochs, a short candidate list
        "train": {"model": {"dim": 32, "num_layers": 1, "max_seq_len": 20}, "loop": {"epochs": 2},
                  "cpus_per_worker": 0.5},
        "score": {"k": 20},
        "spark": {"conf": INTERPRETED_SQL, "delta_snapshot_partitions": 2},   # tiny inputs: see conftest
    }))
    home = tmp_path / "airflow"
    home.mkdir()
    head, address = start_ray_head(tmp_path / "ray-head.log")
    try:
        env = airflow_env(home, WARMSTART_LAKE=str(lake), WARMSTART_DROPS=str(drops), WARMSTART_FORMAT="parquet",
                          WARMSTART_RAY_ADDRESS=address, WARMSTART_CONFIG=str(config), WARMSTART_RETRIES="0",
                          SPARK_LOCAL_IP="127.0.0.1", **RAY_AUTH,
                          AIRFLOW_CONN_WARMSTART_SPARK=json.dumps({"conn_type": "spark", "host": "local[2]"}))
        migrate = subprocess.run([str(AIRFLOW_BIN / "airflow"), "db", "migrate"], env=env, capture_output=True,
                                 text=True, timeout=300)
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        run = subprocess.run([str(AIRFLOW_BIN / "airflow"), "dags", "test", "warmstart_nightly", DS], env=env,
                             capture_output=True, text=True, timeout=1200, cwd=tmp_path)
        (tmp_path / "dags-test.log").write_text(run.stdout + run.stderr)
    finally:
        stop_ray_head(head)

    with sqlite3.connect(home / "airflow.db") as db:
        states = dict(db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = 'warmstart_nightly'"))
    skipped = {"backtest_due", "backtest"}   # nothing published for 2024-01-24
    assert states == {t: "skipped" if t in skipped else "success" for t in EXPECTED_EDGES}, \
        (states, (run.stdout + run.stderr)[-4000:])
    assert run.returncode == 0

    from pyspark.sql import functions as F

    from training import registry

    version = registry.latest_version(str(tmp_path / "models"))
    assert version and version.startswith("20240131-")
    cands = spark.read.format("delta").load(f"{lake}/candidates/user_candidates").where(F.col("run_date") == DS)
    users = spark.read.format("delta").load(f"{lake}/features/user_sequences").where(F.col("as_of_date") == DS)
    assert cands.select("user_id", "rank").distinct().count() == cands.count() > 0
    assert cands.select("user_id").distinct().count() == users.count()
    assert cands.agg(F.max("rank")).first()[0] == 20
    published = spark.read.format("delta").load(f"{lake}/candidates/published").collect()
    assert [(str(p.run_date), p.model_version) for p in published] == [(DS, version)]
    report = (tmp_path / "reports" / DS / "index.html").read_text()
    assert 'id="candidate-stats"' in report and "quality/bronze_events.html" in report
