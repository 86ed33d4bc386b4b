"""The runtime every warmstart job shares: configuration, the Spark session with Delta, run ids,
lineage records, run summaries and the exit-code contract.

Jobs (``jobs/*.py``) call :func:`run_job` from their ``main``; tests call a job's ``run`` directly with
the shared test session and :func:`job_args` for the common arguments.

Exit codes (DESIGN.md): 0 success, 1 failure (or the run date locked by another run), 2 bad usage /
configuration / input path, 3 a critical data-quality gate failed. Every failure ends with one line on
stderr; anything it echoes from the input goes through :func:`printable` (cut, escaped).

stderr keeps what a user acts on. The rest goes to the run's log file (:func:`run_log_path`, named in
the lineage record and in a crash's last line): the effective configuration, the log lines, a crash's
traceback and, for a Spark driver this process starts, the JVM's own output (start-up warnings, Spark's
log4j at WARN). ``--verbose`` puts it all back on the console; ``--print-config`` prints the
configuration.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from jobs import config as config_module, jvm, spark_progress
from jobs.config import Config, ConfigError, parse_overrides

log = logging.getLogger("warmstart")

REPO_ROOT = Path(__file__).resolve().parent.parent

# The run in progress (run_job sets them; a nested run, a nightly stage, restores its caller's after).
_RUN_LOG: Path | None = None
_RUN_STARTED: float | None = None   # time.monotonic() when the run began: the lineage record's seconds
_VERBOSE = False


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


def printable(value: Any, limit: int = 200, *, keep: str = "head") -> str:
    """``value`` (text or bytes) as one printable line of at most ``limit`` characters, for a message
    that echoes input: undecodable bytes, control characters and other non-printables escaped as
    ``repr`` escapes them (``\\x00``, ``\\n``), the rest cut, saying how long it was. ``keep="tail"``
    keeps the end instead (a path: its file name)."""
    unit = "bytes" if isinstance(value, (bytes, bytearray)) else "chars"
    size = len(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[: limit * 4]).decode("utf-8", errors="backslashreplace")
    raw = str(value)
    window = raw[: limit * 4] if keep == "head" else raw[-limit * 4:]
    pieces = [c if c.isprintable() else repr(c)[1:-1] for c in window]
    if size <= limit * 4 and sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    more = f"... ({size:,} {unit})" if keep == "head" else "..."
    kept, room = [], limit - len(more)
    for piece in (pieces if keep == "head" else reversed(pieces)):   # whole escapes only
        if len(piece) > room:
            break
        kept.append(piece)
        room -= len(piece)
    return "".join(kept) + more if keep == "head" else more + "".join(reversed(kept))


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
    wait_s: float = 0.0          # --wait: how long to wait for another run's lock on this run date
    verbose: bool = False        # --verbose: Spark's, Ray's and the debug logs on the console

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
    parser.add_argument("--print-config", nargs="?", const="yaml", choices=("yaml", "json"),
                        help="print the effective configuration (defaults, --config, overrides) as YAML "
                             "(or --print-config json) and exit; a run writes it to its log file and lineage")
    parser.add_argument("--wait", dest="wait_s", type=float, default=0.0, metavar="SECONDS",
                        help="if another run holds this job's lock for the run date, wait up to SECONDS for "
                             "it (default: exit 1 at once, naming the holder)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Spark's and Ray's own logs and the debug lines on stderr")
    return parser


def wants_print_config(argv: list[str]) -> bool:
    return any(a == "--print-config" or a.startswith("--print-config=") for a in argv)


def print_config(argv: list[str]) -> int:
    """``--print-config [yaml|json]``: the effective configuration on stdout. Only --config, --lake and
    the overrides matter, so a job's other (required) arguments may be left out."""
    only = _OneLineParser(prog="warmstart", add_help=False)
    only.add_argument("--config")
    only.add_argument("--lake")
    only.add_argument("--print-config", nargs="?", const="yaml", choices=("yaml", "json"))
    ns, _ = only.parse_known_args([a for a in argv if not is_override(a)])
    overrides = parse_overrides(a for a in argv if is_override(a))
    if ns.lake:
        overrides["paths.lake"] = ns.lake
    cfg = load_config(ns.config, overrides)
    sys.stdout.write(cfg.to_yaml() if ns.print_config == "yaml" else config_json(cfg) + "\n")
    return 0


def config_json(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


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
    with _jvm_output_to(None if under_submit or _VERBOSE else _RUN_LOG):
        spark = builder.getOrCreate()
    # Into the run's log file (above) WARN is worth keeping; onto a console (spark-submit's JVM, a session
    # built outside run_job) only errors; --verbose: WARN, Spark's own default.
    quiet = "WARN" if (_RUN_LOG is not None and not under_submit and not _VERBOSE) else "ERROR"
    spark.sparkContext.setLogLevel(os.environ.get("WARMSTART_SPARK_LOG_LEVEL", "WARN" if _VERBOSE else quiet))
    return spark


@contextlib.contextmanager
def _jvm_output_to(path: Path | None):
    """While the driver JVM starts, point this process's stderr (fd 2) at ``path``: the JVM inherits it,
    so its start-up warnings (incubator modules, native-hadoop, log4j's profile, the hostname) and every
    later log line go to the run's log file instead of the console. Python's own stderr comes back once
    the JVM is up. Nothing changes when ``path`` is None."""
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(target, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


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
        # the run's wall time so far (run_job's runs): the trend page's stage times for jobs run one by one
        "seconds": round(time.monotonic() - _RUN_STARTED, 1) if _RUN_STARTED is not None else None,
        "inputs": dict(inputs),
        "outputs": dict(outputs),
        "summary": dict(summary),
        "code_version": code_version(),
        "config": args.config.to_dict(),
        "log": str(_RUN_LOG) if _RUN_LOG else None,     # the run's log file, where run_job started one
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


_CONSOLE_ALL = False


def _console_filter(record: logging.LogRecord) -> bool:
    return _CONSOLE_ALL or record.levelno >= logging.WARNING or record.name.split(".", 1)[0] == "warmstart"


NOISY_LOGGERS = ("py4j", "great_expectations", "urllib3", "filelock", "matplotlib", "ray")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def verbose() -> bool:
    """Whether this run asked for ``--verbose`` (a Ray start-up may forward its workers' logs then)."""
    return _VERBOSE


def setup_logging(verbose: bool = False) -> None:
    """Our loggers (``warmstart.*``) at INFO (DEBUG with --verbose, or WARMSTART_LOG_LEVEL). The console
    shows other libraries' lines from WARNING up (all with --verbose), whatever levels they set themselves
    (Great Expectations sets one of its loggers to INFO when imported; py4j logs a reconnect's traceback
    on the root logger at INFO); the run's log file keeps their INFO lines."""
    global _CONSOLE_ALL
    _CONSOLE_ALL = verbose
    level = os.environ.get("WARMSTART_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    root = logging.getLogger()
    if not root.handlers:    # as logging.basicConfig: a root someone configured (pytest, Airflow) stays theirs
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        console.addFilter(_console_filter)
        root.addHandler(console)
        root.setLevel(logging.INFO)
    logging.getLogger("warmstart").setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        # Ray sets up its own loggers when imported and started (ray.init's logging_level defaults to
        # RAY_LOGGER_LEVEL, Ray Data's loggers to RAY_DATA_LOG_LEVEL): its start-up lines (a local instance
        # started, token authentication, progress bars off, every dataset's execution) stay off the console.
        # Errors still show; a user's own setting wins.
        os.environ.setdefault("RAY_LOGGER_LEVEL", "error")
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")


def run_log_path(run_id: str) -> Path:
    """The run's log file: ``$WARMSTART_LOG_DIR/warmstart-logs/<run id>.log`` (default: the temp dir).
    Local even for a remote lake: the JVM writes to it as a plain file."""
    import tempfile

    return Path(os.environ.get("WARMSTART_LOG_DIR", tempfile.gettempdir())) / "warmstart-logs" / f"{run_id}.log"


@contextlib.contextmanager
def _run_log(common: JobArgs, argv: list[str]):
    """Open the run's log file (its first lines: the command and the effective configuration), send this
    process's log lines there too while the run lasts, and make it the file the JVM's output and a crash's
    traceback go to. Yields its path."""
    global _RUN_LOG, _RUN_STARTED, _VERBOSE
    path = run_log_path(common.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"warmstart {common.job} {' '.join(argv)}\nrun_id={common.run_id} lake={common.lake} "
                f"code={code_version()}\neffective configuration:\n{config_json(common.config)}\n")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    saved = _RUN_LOG, _RUN_STARTED, _VERBOSE
    _RUN_LOG, _RUN_STARTED, _VERBOSE = path, time.monotonic(), common.verbose or _VERBOSE
    try:
        yield path
    finally:
        _RUN_LOG, _RUN_STARTED, _VERBOSE = saved
        root.removeHandler(handler)
        handler.close()


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


# The jobs that write a run date's tables (or its gate report) take the run lock of (job, run date).
LOCKED_JOBS = frozenset({"ingest", "features", "validate", "train", "train-ranker", "score", "publish", "nightly"})


def run_job(job: str, parser: argparse.ArgumentParser, to_args: type | Callable[[argparse.Namespace, JobArgs], Any],
            run: Callable[..., Mapping[str, Any]], argv: list[str] | None = None, *,
            needs_spark: bool = True, lock: bool | None = None) -> int:
    """Parse ``argv``, build the configuration, take the run lock (``lock``: default for the jobs in
    :data:`LOCKED_JOBS`; jobs/lock.py), build the Spark session (if needed), call ``run(spark, args)`` (or
    ``run(args)``), print and store the summary, and map errors to exit codes.

    ``to_args``: the job's frozen ``*Args`` dataclass (built by :func:`dataclass_from`), or a function
    ``(namespace, common) -> args`` when a field needs converting."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(verbose="--verbose" in argv)
    overrides = [a for a in argv if is_override(a)]
    rest = [a for a in argv if not is_override(a)]
    log_file: Path | None = None
    lake: str | None = None
    try:
        if wants_print_config(rest):
            return print_config(argv)
        ns = parser.parse_args(rest)
        cfg = load_config(ns.config, parse_overrides(overrides))
        lake = normalise_root(ns.lake or cfg.paths.lake)
        run_date = getattr(ns, "run_date", None)
        common = JobArgs(job=job, lake=lake, config=cfg, run_id=new_run_id(job, run_date),
                         summary_json=ns.summary_json, wait_s=getattr(ns, "wait_s", 0.0),
                         verbose=bool(getattr(ns, "verbose", False)))
        args = dataclass_from(to_args, ns, common) if isinstance(to_args, type) else to_args(ns, common)
        with _run_log(common, argv) as log_file, _lock_for(job, ns, common, lock):
            log.info("warmstart %s run_id=%s lake=%s (log: %s)", job, common.run_id, lake, log_file)
            log.debug("effective configuration: %s", json.dumps(cfg.to_dict(), sort_keys=True, default=str))
            if needs_spark:
                spark = spark_session(cfg, app_name=f"warmstart-{job}")
                with spark_progress.watch(spark, job, cfg.spark.progress_every_s):
                    summary = run(spark, args)
            else:
                summary = run(args)
        summary = dict(summary or {})
        print_summary(job, summary)
        if ns.summary_json:
            write_json(ns.summary_json, {"job": job, "run_id": common.run_id, "status": "succeeded", **summary})
        return 0
    except WarmstartError as exc:
        print(f"warmstart {job}: {printable(str(exc), 2000)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"warmstart {job}: interrupted; tables are left at their last committed version", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns a crash into one line + a log
        trace = _save_traceback(job, log_file)
        storage = storage_failure(exc, lake)
        if storage is not None:
            print(f"warmstart {job}: {storage.args[0]}", file=sys.stderr)
            return storage.exit_code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"warmstart {job}: failed: {type(exc).__name__}: {printable(first, 300)} (traceback: {trace})",
              file=sys.stderr)
        return 1


# A Delta log file named in a JVM error ("Encountered error while reading file .../_delta_log/N.json"),
# and the root cause's exception class, from the last "Caused by:" of the Java trace.
_DELTA_LOG_FILE = re.compile(r"((?:[a-zA-Z][\w+.-]*:)?/+[^\s\[\]'\"]*?)/_delta_log/([\w.-]+\.(?:json|parquet|crc))")
_CAUSE = re.compile(r"Caused by: (?:[\w$]+\.)*([\w$]+)")
_UNPARSABLE = re.compile(r"Json(?:EOF|Parse|Mapping)Exception|MALFORMED_RECORD|checkpoint|ParquetDecodingException")
_NO_SPACE = re.compile(r"no space left on device", re.IGNORECASE)
_WRITING = re.compile(r"writing rows to (?:file:)?(\S+?)\.?(?:\s|$)")   # Spark's TASK_WRITE_FAILED


def storage_failure(exc: BaseException, lake: str | None = None) -> WarmstartError | None:
    """A crash that is the storage's, not the code's, as one line (None for any other crash):
    - a full disk: "no space left on device" and the table or file being written, exit 1 (Delta
      committed nothing: the table stays at its previous version);
    - a damaged Delta log (a truncated or garbled commit JSON or checkpoint): the table and the file,
      exit 2 (bad input: the table needs repair, a rerun cannot fix it). Where the JVM's error does not
      name the file (Delta's history reads the log without saying which file failed), the local
      ``lake``'s logs are checked for the one that does not parse.
    The Java stack goes to the run's log file (run_job saves the traceback) instead of the console."""
    text = str(exc)
    if _NO_SPACE.search(text):
        where = _WRITING.search(text) or _DELTA_LOG_FILE.search(text)
        place = getattr(exc, "filename", None) or (where.group(1) if where else "the lake or the temp dir")
        return WarmstartError(f"no space left on device writing {printable(place, 90, keep='tail')}; "
                              f"tables keep their last version")
    found = _DELTA_LOG_FILE.search(text)
    damaged = ((re.sub(r"^file:/+", "/", found.group(1)), found.group(2)) if found
               else damaged_log_file(lake) if lake and _UNPARSABLE.search(text) else None)
    if damaged is None:
        return None
    causes = _CAUSE.findall(text)
    return UsageError(f"damaged Delta log: cannot read {printable(damaged[0], 70, keep='tail')}/_delta_log/"
                      f"{damaged[1]} ({causes[-1] if causes else type(exc).__name__})")


def damaged_log_file(lake: str) -> tuple[str, str] | None:
    """(table path, file name) of the first Delta log file under a local ``lake`` that does not parse: a
    commit JSON with a line that is not JSON, or a checkpoint that is not Parquet. None if all parse
    (or the lake is remote: listing a bucket's every log is not worth a one-line error)."""
    import pyarrow.parquet as pq

    if is_remote(lake) or not Path(lake).is_dir():
        return None
    for log_dir in sorted(Path(lake).glob("**/_delta_log")):
        for path in sorted(log_dir.glob("*.json")):
            try:
                for line in path.read_text(encoding="utf-8").splitlines():
                    json.loads(line)           # every line of a commit is one action
            except ValueError:                 # JSONDecodeError and UnicodeDecodeError both
                return str(log_dir.parent), path.name
        for path in sorted(log_dir.glob("*.checkpoint*.parquet")):
            try:
                pq.read_metadata(path)
            except Exception:  # noqa: BLE001 - whatever pyarrow finds wrong, the file is unreadable
                return str(log_dir.parent), path.name
    return None


def _lock_for(job: str, ns: argparse.Namespace, common: JobArgs, lock: bool | None):
    """The run lock of (lake, job[, table], run date), or a no-op for jobs that take none."""
    if not (job in LOCKED_JOBS if lock is None else lock):
        return contextlib.nullcontext()
    from jobs import lock as locks

    resource = locks.resource_name(job, getattr(ns, "run_date", None), table=getattr(ns, "table", None),
                                   dates=(getattr(ns, "from_date", None), getattr(ns, "to_date", None)))
    return locks.run_lock(common.lake, resource, common.run_id, wait_s=common.wait_s) or contextlib.nullcontext()


def _save_traceback(job: str, log_file: Path | None = None) -> str:
    """Append the traceback to the run's log file (or, before there is one, a file of its own); its path."""
    path = log_file or run_log_path(f"{job}-{dt.datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(traceback.format_exc())
    return str(path)


def dataclass_from(cls: type, ns: argparse.Namespace, common: JobArgs, **extra: Any) -> Any:
    """Build a job's frozen dataclass from the common arguments and argparse's namespace."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    values.update({f.name: getattr(common, f.name) for f in dataclasses.fields(JobArgs)})
    values.update(extra)
    return cls(**values)
