"""The runtime every warmstart job shares: configuration, the Spark session with Delta, run ids,
lineage records, run summaries and the exit-code contract.

Jobs (``jobs/*.py``) call :func:`run_job` from their ``main``; tests call a job's ``run`` directly with
the shared test session and :func:`job_args` for the common arguments.

Exit codes (DESIGN.md): 0 success, 1 failure, 2 bad usage / configuration / input path,
3 a critical data-quality gate failed. Every failure ends with one line on stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from jobs import config as config_module, jvm
from jobs.config import Config, ConfigError, parse_overrides

log = logging.getLogger("warmstart")

REPO_ROOT = Path(__file__).resolve().parent.parent


class WarmstartError(Exception):
    """An expected failure: printed as one line, no traceback."""

    exit_code = 1


class UsageError(WarmstartError):
    """Bad arguments, configuration or input path."""

    exit_code = 2


class GateFailed(WarmstartError):
    """A critical data-quality expectation failed; the message names the report."""

    exit_code = 3


_OVERRIDE = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+)*=")


def is_override(token: str) -> bool:
    return bool(_OVERRIDE.match(token))


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """:func:`jobs.config.load_config`, with a wrong key or value as a usage error (exit 2)."""
    try:
        return config_module.load_config(path, overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def is_remote(path: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][\w+.-]*://", path)) and not path.startswith("file://")


def normalise_root(path: str) -> str:
    if is_remote(path):
        return path.rstrip("/")
    if path.startswith("file://"):
        path = path[len("file://"):]
    return str(Path(path).expanduser().resolve())


def _sibling(lake: str, name: str) -> str:
    if is_remote(lake):
        return lake.rstrip("/").rsplit("/", 1)[0] + "/" + name
    return str(Path(lake).parent / name)


@dataclass(frozen=True)
class JobArgs:
    """What every job receives besides its own arguments."""

    job: str
    lake: str
    config: Config
    run_id: str
    summary_json: str | None = None

    @property
    def reports_root(self) -> str:
        return self.config.paths.reports or _sibling(self.lake, "reports")

    @property
    def models_root(self) -> str:
        return self.config.paths.models or _sibling(self.lake, "models")

    def table_path(self, table: Any) -> str:
        """Path of a declared table (anything with a ``name`` like ``bronze/events``) under the lake."""
        name = table if isinstance(table, str) else table.name
        return f"{self.lake}/{name}"


def new_run_id(job: str, run_date: dt.date | None = None) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    day = run_date.isoformat() if run_date else "na"
    return f"{job}-{day}-{stamp}-{uuid.uuid4().hex[:6]}"


def job_args(job: str, lake: str, config: Config | None = None, run_date: dt.date | None = None,
             summary_json: str | None = None, **overrides: Any) -> JobArgs:
    """Common arguments for a job called from Python (tests, the nightly flow)."""
    cfg = config or load_config()
    if overrides:
        try:
            cfg = cfg.with_overrides(overrides)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    return JobArgs(job=job, lake=normalise_root(lake), config=cfg, run_id=new_run_id(job, run_date),
                   summary_json=summary_json)


def parse_date(value: str) -> dt.date:
    """argparse type for YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see --help)")


def job_parser(job: str, description: str) -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=f"warmstart {job}", description=description,
                            epilog="Trailing key=value arguments override configuration keys, "
                                   "e.g. spark.shuffle_partitions=64.")
    parser.add_argument("--lake", help="lake root (env WARMSTART_LAKE, default ./lake)")
    parser.add_argument("--config", help="YAML file merged over the defaults")
    parser.add_argument("--summary-json", help="also write the run summary as JSON to this path")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration (defaults, --config, overrides) as YAML and exit")
    return parser


def print_config(argv: list[str]) -> int:
    """``--print-config``: the effective configuration as YAML on stdout. Only --config, --lake and the
    overrides matter, so a job's other (required) arguments may be left out."""
    only = argparse.ArgumentParser(add_help=False)
    only.add_argument("--config")
    only.add_argument("--lake")
    ns, _ = only.parse_known_args([a for a in argv if not is_override(a)])
    overrides = parse_overrides(a for a in argv if is_override(a))
    if ns.lake:
        overrides["paths.lake"] = ns.lake
    sys.stdout.write(load_config(ns.config, overrides).to_yaml())
    return 0


def spark_session(cfg: Config, app_name: str | None = None):
    """The SparkSession with Delta. Under spark-submit (or in tests) the running session is reused and
    only SQL-level settings are applied; locally a new one is built from ``cfg.spark``, with the jars and driver JVM options of
    :mod:`jobs.jvm`."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    s = cfg.spark
    builder = SparkSession.builder.appName(app_name or s.app_name)
    submitted = _submitted_conf()
    under_submit = bool(submitted)
    if not under_submit:
        # Python workers (pandas UDFs) must run this interpreter, not whatever `python3` is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(s.master)
        builder = builder.config("spark.driver.memory", s.driver_memory)
    jars = jvm.jars(cfg)
    delta_on_classpath = "delta" in submitted.get("spark.jars", "") + submitted.get("spark.jars.packages", "")
    if not jars and not delta_on_classpath:
        raise UsageError("Delta jars not found: run `make jars` (or set spark.jars_dir / WARMSTART_JARS_DIR)")
    if jars and not delta_on_classpath:
        builder = builder.config("spark.jars", ",".join(jars))
    # What the jobs rely on: always set.
    builder = (builder
               .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
               .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
               .config("spark.sql.session.timeZone", "UTC"))
    for key, value in _tuning(s, submitted).items():
        builder = builder.config(key, value)
    conf = {k: str(v) for k, v in s.conf.items()}
    if not under_submit:   # spark-submit started the JVM already: its own --driver-java-options apply
        conf.update(jvm.driver_java_options(cfg))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("WARMSTART_SPARK_LOG_LEVEL", "ERROR"))
    return spark


def _tuning(s: config_module.SparkConfig, submitted: Mapping[str, str]) -> dict[str, str]:
    """The jobs' tuning defaults from the ``spark`` section, less what spark-submit's --conf or
    properties file already set (a cluster sizes its own shuffles and Delta log replay)."""
    tuning = {
        "spark.sql.shuffle.partitions": s.shuffle_partitions,
        "spark.databricks.delta.snapshotPartitions": s.delta_snapshot_partitions,
        "spark.sql.adaptive.enabled": True,
        "spark.ui.enabled": s.ui,
        "spark.ui.showConsoleProgress": False,
        "spark.databricks.delta.merge.repartitionBeforeWrite.enabled": True,
    }
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in tuning.items() if k not in submitted}


def _submitted_conf() -> dict[str, str]:
    """Spark conf of a JVM that spark-submit already started for this driver (empty otherwise).
    spark-submit runs the driver's Python with PYSPARK_GATEWAY_PORT set."""
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return {}
    from pyspark import SparkConf, SparkContext

    # Connect to spark-submit's JVM first: before that SparkConf() is an empty Python dict, and the
    # --jars / spark.jars that put Delta on the cluster's classpath would go unseen.
    SparkContext._ensure_initialized()
    return {"spark.master": "submitted", **dict(SparkConf().getAll())}


def write_json(path: str, payload: Mapping[str, Any]) -> None:
    """Write JSON to a local or remote (pyarrow filesystem) path."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def write_text(path: str, text: str) -> None:
    """Write text to a local path (through a temp file and a rename: never half a file) or a remote
    (pyarrow filesystem) path."""
    if is_remote(path):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(inner) as out:
            out.write(text.encode())
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def record_lineage(args: JobArgs, *, run_date: dt.date | None, inputs: Mapping[str, Any],
                   outputs: Mapping[str, Any], summary: Mapping[str, Any], status: str = "succeeded") -> str:
    """One JSON file per job run under ``<lake>/_runs/``: run id, the Delta versions read and written,
    the summary and the effective configuration. Returns its path."""
    record = {
        "run_id": args.run_id,
        "job": args.job,
        "run_date": run_date.isoformat() if run_date else None,
        "status": status,
        "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "inputs": dict(inputs),
        "outputs": dict(outputs),
        "summary": dict(summary),
        "code_version": code_version(),
        "config": args.config.to_dict(),
    }
    path = f"{args.lake}/_runs/{args.run_id}.json"
    write_json(path, record)
    return path


def read_lineage(lake: str) -> list[dict[str, Any]]:
    """All lineage records under a local lake, oldest first."""
    folder = Path(lake) / "_runs"
    records = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            continue
    return sorted(records, key=lambda r: r.get("recorded_at", ""))


_CODE_VERSION: str | None = None


def code_version() -> str:
    """The git commit of the code that ran, plus ``-dirty-<hash of the uncommitted diff>`` when tracked
    files changed (two different edits never share a version: model versions and their Ray checkpoints
    are keyed by it), or the package version outside a checkout."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        import hashlib
        import subprocess

        try:
            sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True, timeout=5, check=True).stdout.strip()
            diff = subprocess.run(["git", "-C", str(REPO_ROOT), "diff", "HEAD", "--binary"],
                                  capture_output=True, timeout=30, check=True).stdout
            _CODE_VERSION = sha + (f"-dirty-{hashlib.sha256(diff).hexdigest()[:8]}" if diff else "")
        except Exception:  # noqa: BLE001 - not a checkout (wheel on a cluster)
            from importlib import metadata

            try:
                _CODE_VERSION = "warmstart-" + metadata.version("warmstart")
            except metadata.PackageNotFoundError:
                _CODE_VERSION = "unknown"
    return _CODE_VERSION


def setup_logging() -> None:
    level = os.environ.get("WARMSTART_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("py4j", "great_expectations", "urllib3", "filelock", "matplotlib", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def print_summary(job: str, summary: Mapping[str, Any]) -> None:
    width = max((len(k) for k in summary), default=0)
    print(f"== warmstart {job} summary ==")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:,.4f}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        print(f"  {key:<{width}}  {value}")
    sys.stdout.flush()


def run_job(job: str, parser: argparse.ArgumentParser, to_args: type | Callable[[argparse.Namespace, JobArgs], Any],
            run: Callable[..., Mapping[str, Any]], argv: list[str] | None = None, *,
            needs_spark: bool = True) -> int:
    """Parse ``argv``, build the configuration and (if needed) the Spark session, call
    ``run(spark, args)`` (or ``run(args)``), print and store the summary, and map errors to exit codes.

    ``to_args``: the job's frozen ``*Args`` dataclass (built by :func:`dataclass_from`), or a function
    ``(namespace, common) -> args`` when a field needs converting."""
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if is_override(a)]
    rest = [a for a in argv if not is_override(a)]
    try:
        if "--print-config" in rest:
            return print_config(argv)
        ns = parser.parse_args(rest)
        cfg = load_config(ns.config, parse_overrides(overrides))
        lake = normalise_root(ns.lake or cfg.paths.lake)
        run_date = getattr(ns, "run_date", None)
        common = JobArgs(job=job, lake=lake, config=cfg, run_id=new_run_id(job, run_date),
                         summary_json=ns.summary_json)
        args = dataclass_from(to_args, ns, common) if isinstance(to_args, type) else to_args(ns, common)
        log.info("warmstart %s run_id=%s lake=%s", job, common.run_id, lake)
        log.debug("effective configuration: %s", json.dumps(cfg.to_dict(), sort_keys=True, default=str))
        if needs_spark:
            spark = spark_session(cfg, app_name=f"warmstart-{job}")
            summary = run(spark, args)
        else:
            summary = run(args)
        summary = dict(summary or {})
        print_summary(job, summary)
        if ns.summary_json:
            write_json(ns.summary_json, {"job": job, "run_id": common.run_id, "status": "succeeded", **summary})
        return 0
    except WarmstartError as exc:
        print(f"warmstart {job}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"warmstart {job}: interrupted; tables are left at their last committed version", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns a crash into one line + a log
        trace = _save_traceback(job)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"warmstart {job}: failed: {type(exc).__name__}: {first[:300]} (traceback: {trace})",
              file=sys.stderr)
        return 1


def _save_traceback(job: str) -> str:
    import tempfile

    folder = Path(os.environ.get("WARMSTART_LOG_DIR", tempfile.gettempdir())) / "warmstart-logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job}-{dt.datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.log"
    path.write_text(traceback.format_exc())
    return str(path)


def dataclass_from(cls: type, ns: argparse.Namespace, common: JobArgs, **extra: Any) -> Any:
    """Build a job's frozen dataclass from the common arguments and argparse's namespace."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    values.update({f.name: getattr(common, f.name) for f in dataclasses.fields(JobArgs)})
    values.update(extra)
    return cls(**values)
