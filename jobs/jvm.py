"""What a Spark driver JVM is started with: the Delta jars on its classpath and the options that map the
class-data-sharing archive of Spark's classes (infra/spark/build_cds_archive.py, `make cds`).

One home for both kinds of driver: :func:`jobs.runtime.spark_session` passes them to the drivers it
starts itself, and the Airflow DAG (infra/airflow/warmstart_nightly.py) to its spark-submits. Free of
Spark on purpose, like jobs/config.py: the DAG imports it in Airflow's own virtualenv.
"""
from __future__ import annotations

import os
from pathlib import Path

from jobs.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent
CDS_ARCHIVE_NAME = "spark-cds.jsa"
# JVM warnings (an archive this JVM cannot use, say) go to stderr: by default they print on stdout.
JVM_WARNINGS_TO_STDERR = "-Xlog:disable -Xlog:all=warning:stderr"


def jars_dir(cfg: Config) -> Path:
    """``spark.jars_dir``, else $WARMSTART_JARS_DIR, else ``<repo>/.jars`` (filled by `make jars`)."""
    return Path(cfg.spark.jars_dir or os.environ.get("WARMSTART_JARS_DIR") or str(REPO_ROOT / ".jars"))


def jars(cfg: Config) -> list[str]:
    """The Delta jars a driver puts on its classpath (empty when the folder is missing)."""
    folder = jars_dir(cfg)
    return sorted(str(p) for p in folder.glob("*.jar")) if folder.is_dir() else []


def cds_archive(cfg: Config) -> Path | None:
    """Where the drivers' class-data-sharing archive is (``spark.cds_archive``, default
    ``<jars_dir>/spark-cds.jsa``, whether or not it was built yet), or None when that setting is off."""
    setting = cfg.spark.cds_archive
    if setting is False or (isinstance(setting, str) and setting.lower() in ("off", "false")):
        return None
    return Path(setting) if isinstance(setting, str) and setting else jars_dir(cfg) / CDS_ARCHIVE_NAME


def cds_java_options(cfg: Config) -> str:
    """Driver JVM options that map the class-data-sharing archive, or "" when there is none or
    ``spark.cds_archive`` is off. The JVM then maps the classes it would otherwise load and verify one
    by one, and starts 3-5 s sooner (docs/operations.md). An archive made by another JVM or for another
    classpath is ignored (a warning on stderr), never an error."""
    path = cds_archive(cfg)
    return f"-XX:SharedArchiveFile={path} -Xshare:auto {JVM_WARNINGS_TO_STDERR}" if path and path.is_file() else ""


def driver_java_options(cfg: Config) -> dict[str, str]:
    """``spark.driver.extraJavaOptions`` for a driver JVM this process starts: the CDS options, then any
    the configuration's ``spark.conf`` gives (later options win in the JVM). Empty when neither."""
    options = [cds_java_options(cfg), str(cfg.spark.conf.get("spark.driver.extraJavaOptions", ""))]
    joined = " ".join(o for o in options if o)
    return {"spark.driver.extraJavaOptions": joined} if joined else {}
