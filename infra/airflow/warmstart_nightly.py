"""warmstart's nightly DAG: the flow of ``warmstart nightly`` as Airflow tasks, one per job, with the
run date ``{{ ds }}``.

    ingest -> gate_events, gate_items (nightly.gates_after_ingest) -> build_features
      -> gate_user_features, gate_item_features, gate_user_sequences (nightly.gates_after_features)
      -> training_due -> train (ray job submit) -> train_ranker -> backtest_due -> backtest (night ds - h, published lists)
      -> score -> publish -> run_report (and the trend page)

Spark stages are ``SparkSubmitOperator`` tasks (spark-submit of ``jobs/<job>.py`` with the Delta jars
and, on a cluster, the package zip as ``--py-files``); training is a ``ray job submit`` to a Ray cluster
(BashOperator: the Ray provider is not needed for a blocking submit, and ``ray job submit`` exits
non-zero when the job fails). ``training_due`` asks ``jobs/nightly.py --check-train-due`` and is
skipped (exit 99) when no training is due, which skips train and the backtest; score runs either way.
On training nights ``backtest_due`` (``jobs/nightly.py --check-backtest-due``) asks whether night
ds - h (h = ``nightly.feedback_days``) had published lists; if so ``backtest`` judges them against the
purchases since (``jobs/backtest.py --lists published``), else both are skipped (exit 99), saying why.
The backtest replaced the leave-last-out ``evaluate`` task (other users' later events leaked into it).
A failed gate (exit 3) fails its task and stops everything after it; gates are not retried (the data
would not change), the other tasks are (every job is idempotent per run date).

This file runs in Airflow's own virtualenv (``.venv-airflow``, ``make airflow-env``). From warmstart it
imports only the light modules (``jobs/config.py``, ``jobs/jvm.py``: no Spark, no torch, found through
``WARMSTART_HOME``), so that the gate lists and the drivers' JVM options are the jobs' own; the jobs
themselves run in the warmstart virtualenv. Where things are comes from the environment (set it on the
scheduler and workers), defaults suiting a checkout:

    WARMSTART_HOME          the checkout / installed code (default: two folders up from this file)
    WARMSTART_LAKE          lake root (default $WARMSTART_HOME/lake; s3a://... on a cluster)
    WARMSTART_DROPS         where the day's drops land: <drops>/<ds>/events/, <drops>/<ds>/items/
    WARMSTART_FORMAT        ingest --format (default auto)
    WARMSTART_PYTHON        the warmstart virtualenv's python (default $WARMSTART_HOME/.venv/bin/python)
    WARMSTART_SPARK_SUBMIT  spark-submit to use (default: the one of that virtualenv's pyspark)
    WARMSTART_SPARK_CONN    Airflow connection with the Spark master (default warmstart_spark;
                            e.g. AIRFLOW_CONN_WARMSTART_SPARK='{"conn_type": "spark", "host": "local[2]"}'
                            or '{"conn_type": "spark", "host": "spark://master", "port": 7077}')
    WARMSTART_SPARK_PROPERTIES  a spark-defaults.conf (infra/spark/spark-defaults.conf on a cluster)
    WARMSTART_JARS          comma-separated Delta jars (default: the configuration's spark.jars_dir,
                            else $WARMSTART_JARS_DIR, else $WARMSTART_HOME/.jars: its *.jar)
    WARMSTART_CDS_ARCHIVE   the drivers' JVM class-data-sharing archive (default: the configuration's
                            spark.cds_archive, $WARMSTART_HOME/.jars/spark-cds.jsa when it exists: `make cds`,
                            infra/spark/build_cds_archive.py); 'off': none
    WARMSTART_PY_FILES      the package zip for executors (infra/spark/build_package.py), if any
    WARMSTART_RAY_ADDRESS   the Ray dashboard, e.g. http://ray-head:8265 (default http://127.0.0.1:8265)
    WARMSTART_RAY_PYTHON    python on the Ray head that runs the training driver (default WARMSTART_PYTHON)
    WARMSTART_CONFIG        a YAML file merged over the defaults (jobs/config.py), given to every job as
                            --config; its nightly gate lists and spark settings shape this DAG too
    WARMSTART_RETRIES       retries of the non-gate tasks (default 2)
"""
from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

HOME = os.environ.get("WARMSTART_HOME") or str(Path(__file__).resolve().parents[2])
if HOME not in sys.path:   # the DAG processor parses this file again and again in one process
    sys.path.insert(0, HOME)
from jobs import jvm  # noqa: E402 - found through WARMSTART_HOME
from jobs.config import load_config  # noqa: E402

CONFIG_FILE = os.environ.get("WARMSTART_CONFIG") or None
CDS_ARCHIVE = os.environ.get("WARMSTART_CDS_ARCHIVE")
# What the jobs will read: the gate lists, and the drivers' jars and class-data-sharing archive.
CONFIG = load_config(CONFIG_FILE).with_overrides({"spark.cds_archive": CDS_ARCHIVE} if CDS_ARCHIVE else {})
LAKE = os.environ.get("WARMSTART_LAKE") or f"{HOME}/lake"
DROPS = os.environ.get("WARMSTART_DROPS") or f"{HOME}/data/drops"
FORMAT = os.environ.get("WARMSTART_FORMAT", "auto")
PYTHON = os.environ.get("WARMSTART_PYTHON") or f"{HOME}/.venv/bin/python"
SPARK_SUBMIT = os.environ.get("WARMSTART_SPARK_SUBMIT") or str(Path(PYTHON).with_name("spark-submit"))
SPARK_CONN = os.environ.get("WARMSTART_SPARK_CONN", "warmstart_spark")
SPARK_PROPERTIES = os.environ.get("WARMSTART_SPARK_PROPERTIES") or None
JARS = os.environ.get("WARMSTART_JARS") or ",".join(jvm.jars(CONFIG))
PY_FILES = os.environ.get("WARMSTART_PY_FILES") or None
# spark-submit starts the driver's JVM before any job code runs: the job cannot add these itself.
DRIVER_CONF = jvm.driver_java_options(CONFIG)
RAY_ADDRESS = os.environ.get("WARMSTART_RAY_ADDRESS", "http://127.0.0.1:8265")
RAY_PYTHON = os.environ.get("WARMSTART_RAY_PYTHON") or PYTHON
RETRIES = int(os.environ.get("WARMSTART_RETRIES", "2"))
FEEDBACK_DAYS = CONFIG.nightly.feedback_days   # the backtest judges night ds - this (the nightly's D - h)

# What every warmstart process gets: its interpreter for the Python workers, the lake, and no network.
JOB_ENV = {
    "PYSPARK_PYTHON": PYTHON,
    "PYSPARK_DRIVER_PYTHON": PYTHON,
    "WARMSTART_LAKE": LAKE,
    "WARMSTART_JARS_DIR": str(jvm.jars_dir(CONFIG)),
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONPATH": HOME,
}
COMMON_ARGS = ["--lake", LAKE] + (["--config", CONFIG_FILE] if CONFIG_FILE else [])


def spark_job(task_id: str, job: str, args: list[str], timeout: timedelta, retries: int = RETRIES,
              **kwargs) -> SparkSubmitOperator:
    """spark-submit jobs/<job>.py with the Delta jars; the same command an engineer types."""
    return SparkSubmitOperator(
        task_id=task_id,
        application=f"{HOME}/jobs/{job}.py",
        application_args=[*args, *COMMON_ARGS],
        conn_id=SPARK_CONN,
        spark_binary=SPARK_SUBMIT,
        properties_file=SPARK_PROPERTIES,
        jars=JARS or None,
        py_files=PY_FILES,
        conf=DRIVER_CONF or None,
        name=f"warmstart-{task_id}-{{{{ ds }}}}",
        env_vars=JOB_ENV,
        execution_timeout=timeout,
        retries=retries,
        **kwargs,
    )


def python_job(task_id: str, job: str, args: list[str], timeout: timedelta, retries: int = RETRIES,
               **kwargs) -> BashOperator:
    """A job that needs no Spark (Ray-only or delta-rs readers), run with the warmstart interpreter."""
    command = " ".join(shlex.quote(a) if "{{" not in a else a for a in [PYTHON, f"{HOME}/jobs/{job}.py", *args,
                                                                          *COMMON_ARGS])
    return BashOperator(task_id=task_id, bash_command=command, env=JOB_ENV, append_env=True, cwd=HOME,
                        execution_timeout=timeout, retries=retries, **kwargs)


def gate(table: str) -> SparkSubmitOperator:
    # A failed critical expectation is a fact about the data: retrying would fail the same way.
    return spark_job(f"gate_{table.rsplit('/', 1)[1]}", "validate", ["--table", table, "--run-date", "{{ ds }}"],
                     timedelta(minutes=30), retries=0)


def gated(upstream, tables: tuple[str, ...], downstream) -> None:
    """upstream >> the tables' gates >> downstream; straight through when the configuration lists none."""
    gates = [gate(t) for t in tables]
    if gates:
        upstream >> gates >> downstream
    else:
        upstream >> downstream


with DAG(
    dag_id="warmstart_nightly",
    description="ingest -> gates -> features -> gates -> train (when due, Ray) -> train_ranker -> backtest -> score -> publish",
    schedule="0 2 * * *",            # 02:00 UTC: after the day's drops have landed
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,               # features' late-event watermark assumes ingests run one at a time
    dagrun_timeout=timedelta(hours=8),
    default_args={"owner": "warmstart", "retries": RETRIES, "retry_delay": timedelta(minutes=5),
                  "retry_exponential_backoff": True},
    tags=["warmstart", "spark", "ray"],
    doc_md=__doc__,
) as dag:
    ingest = spark_job("ingest", "ingest",
                       ["--run-date", "{{ ds }}", "--events", f"{DROPS}/{{{{ ds }}}}/events",
                        "--items", f"{DROPS}/{{{{ ds }}}}/items", "--format", FORMAT],
                       timedelta(hours=1))
    features = spark_job("build_features", "build_features", ["--run-date", "{{ ds }}"], timedelta(hours=2))
    # exit 0: due, exit 99: not due -> this task is skipped, and with it train and the backtest
    training_due = python_job("training_due", "nightly", ["--run-date", "{{ ds }}", "--check-train-due"],
                              timedelta(minutes=5), retries=0)
    train = BashOperator(
        task_id="train",
        bash_command=(f"{shlex.quote(str(Path(PYTHON).with_name('ray')))} job submit --address {RAY_ADDRESS} "
                      f"--working-dir {shlex.quote(HOME)} --submission-id warmstart-train-{{{{ ds_nodash }}}}-{{{{ ti.try_number }}}} "
                      f"-- {shlex.quote(RAY_PYTHON)} jobs/train.py --run-date {{{{ ds }}}} --ray-address auto "
                      + " ".join(shlex.quote(a) for a in COMMON_ARGS)),
        env=JOB_ENV, append_env=True, cwd=HOME,
        execution_timeout=timedelta(hours=4),
    )
    # The ranker refitted with the model on the labelled nights before ds (exit 0 with a note on a young lake)
    train_ranker = spark_job("train_ranker", "train_ranker", ["--run-date", "{{ ds }}"], timedelta(hours=2))
    # The lists published h days before ds against the purchases since, beside tuned baselines; weekly,
    # with training. Exit 99 (nothing published for that night) skips it.
    backtest_due = python_job("backtest_due", "nightly", ["--run-date", "{{ ds }}", "--check-backtest-due"],
                              timedelta(minutes=5), retries=0)
    backtest = spark_job("backtest", "backtest",
                         ["--run-dates", f"{{{{ macros.ds_add(ds, -{FEEDBACK_DAYS}) }}}}", "--horizon",
                          str(FEEDBACK_DAYS), "--lists", "published"], timedelta(hours=1))
    # none_failed: score also when training was not due (train/backtest skipped), never after a failure
    score = spark_job("score", "score", ["--run-date", "{{ ds }}"], timedelta(hours=2), trigger_rule="none_failed")
    publish = spark_job("publish", "publish", ["--run-date", "{{ ds }}"], timedelta(minutes=30), retries=1)
    # the run report and the trend page over the last nights (put together from the tasks' lineage records)
    report = python_job("run_report", "report", ["--run-date", "{{ ds }}", "--last",
                                                 str(CONFIG.tracking.trend_nights)], timedelta(minutes=15))

    gated(ingest, CONFIG.nightly.gates_after_ingest, features)
    gated(features, CONFIG.nightly.gates_after_features, training_due)
    training_due >> train >> train_ranker >> backtest_due >> backtest >> score
    score >> publish >> report
