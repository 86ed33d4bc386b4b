"""The shared runtime: configuration layering, key=value overrides, the exit-code contract, lineage
records and the Delta write helpers every job uses."""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

from features.tables import EVENTS, ITEMS, TABLES
from jobs import cli, jvm, lake as lakeio, runtime


def test_config_layers_defaults_file_env_and_overrides(tmp_path, monkeypatch):
    user = tmp_path / "site.yaml"
    user.write_text("spark:\n  shuffle_partitions: 64\n  conf:\n    spark.sql.ansi.enabled: true\n")
    monkeypatch.setenv("WARMSTART_LAKE", "/data/lake")
    cfg = runtime.load_config(str(user), runtime.parse_overrides(["spark.master=local[3]", "ingest.future_tolerance_days=2"]))
    assert cfg.spark.shuffle_partitions == 64              # from the file
    assert cfg.spark.driver_memory == "4g"                 # default kept under a partial override
    assert cfg.spark.conf == {"spark.sql.ansi.enabled": True}
    assert cfg.paths.lake == "/data/lake"                  # environment
    assert cfg.spark.master == "local[3]"                  # key=value wins
    assert cfg.ingest.future_tolerance_days == 2           # YAML-typed


def test_overrides_are_told_apart_from_paths_and_flags():
    assert runtime.is_override("spark.master=local[2]")
    assert runtime.is_override("train.lr=1e-3")
    assert not runtime.is_override("--run-date=2024-01-01")
    assert not runtime.is_override("/data/x=1.csv")
    assert runtime.parse_overrides(["a.b=null", "a.c=[1, 2]", "a.d=text"]) == {"a.b": None, "a.c": [1, 2], "a.d": "text"}


def test_missing_or_broken_config_file_is_a_usage_error(tmp_path):
    with pytest.raises(runtime.UsageError, match="config file not found"):
        runtime.load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(runtime.UsageError, match="mapping"):
        runtime.load_config(str(bad))


def _toy_job(argv, raise_=None):
    parser = runtime.job_parser("toy", "a toy job")
    parser.add_argument("--run-date", type=runtime.parse_date, required=True)

    def run(args):
        if raise_:
            raise raise_
        return {"run_date": args.run_date.isoformat(), "lake": args.lake, "k": args.config.score.k}

    return runtime.run_job("toy", parser, lambda ns, common: runtime.dataclass_from(_ToyArgs, ns, common),
                           run, argv, needs_spark=False)


from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class _ToyArgs(runtime.JobArgs):
    run_date: dt.date | None = None


def test_job_contract_summary_json_and_exit_codes(tmp_path, capsys):
    out = tmp_path / "summary.json"
    code = _toy_job(["--run-date", "2024-03-01", "--lake", str(tmp_path / "lk"), "--summary-json", str(out), "score.k=7"])
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["status"] == "succeeded" and summary["k"] == 7 and summary["run_date"] == "2024-03-01"
    assert summary["lake"] == str(tmp_path / "lk")

    assert _toy_job(["--run-date", "yesterday"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a date" in err[0]

    assert _toy_job(["--run-date", "2024-03-01"], raise_=runtime.GateFailed("gate x failed; report: r.html")) == 3
    assert _toy_job(["--run-date", "2024-03-01"], raise_=RuntimeError("boom")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("warmstart toy: failed: RuntimeError: boom (traceback: ")


def test_cli_unknown_command_is_one_line_exit_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_lineage_record_round_trips(tmp_path):
    args = runtime.job_args("toy", str(tmp_path / "lake"), run_date=dt.date(2024, 3, 1))
    path = runtime.record_lineage(args, run_date=dt.date(2024, 3, 1), inputs={"bronze/events": 3},
                                  outputs={"features/x": 4}, summary={"rows": 10})
    (record,) = runtime.read_lineage(args.lake)
    assert record["seconds"] is None              # recorded outside a run_job: no start time to measure from
    assert path.endswith(f"{args.run_id}.json")
    assert record["inputs"] == {"bronze/events": 3} and record["outputs"] == {"features/x": 4}
    assert record["run_date"] == "2024-03-01" and record["config"]["spark"]["master"] == "local[*]"


def test_every_table_declares_its_keys_and_partition():
    for t in TABLES.values():
        assert t.keys and set(t.keys) <= set(t.columns), t.name
        assert t.partition_by is None or t.partition_by in t.columns, t.name
        assert t.write in {"merge", "replace_partition", "append"}, t.name


def _event(event_id, day, user="u1"):
    ts = dt.datetime(2024, 1, day, 12)
    return (event_id, user, "i1", "view", ts, ts.date(), 1, 2.5, "s1", "test", ts, "r1")


def test_merge_insert_new_is_idempotent_and_replace_partition_is_atomic(spark, lake):
    first = spark.createDataFrame([_event("e1", 1), _event("e2", 2)], EVENTS.schema)
    metrics = lakeio.merge_insert_new(spark, lake, EVENTS, first, partition_values=["2024-01-01", "2024-01-02"])
    assert metrics["numTargetRowsInserted"] == 2
    again = spark.createDataFrame([_event("e2", 2), _event("e3", 3)], EVENTS.schema)
    metrics = lakeio.merge_insert_new(spark, lake, EVENTS, again)
    assert metrics["numTargetRowsInserted"] == 1
    v = lakeio.version(spark, lake, EVENTS)
    assert lakeio.merge_insert_new(spark, lake, EVENTS, again) == {}  # nothing new: no commit
    assert lakeio.version(spark, lake, EVENTS) == v
    assertDataFrameEqual(lakeio.read(spark, lake, EVENTS).select("event_id"),
                         spark.createDataFrame([("e1",), ("e2",), ("e3",)], "event_id string"))


def test_merge_upsert_updates_only_changed_rows(spark, lake):
    row = ("i1", "Mug", "A mug", "kitchen", None, 3.0, dt.datetime(2024, 1, 1))
    lakeio.merge_upsert(spark, lake, ITEMS, spark.createDataFrame([row], ITEMS.schema))
    changed = "NOT (t.title <=> s.title AND t.price <=> s.price)"
    assert lakeio.merge_upsert(spark, lake, ITEMS, spark.createDataFrame([row], ITEMS.schema), changed=changed).get(
        "numTargetRowsUpdated", 0) == 0
    newer = ("i1", "Mug", "A mug", "kitchen", None, 3.5, dt.datetime(2024, 1, 2))
    assert lakeio.merge_upsert(spark, lake, ITEMS, spark.createDataFrame([newer], ITEMS.schema),
                               changed=changed)["numTargetRowsUpdated"] == 1
    assert lakeio.read(spark, lake, ITEMS).first()["price"] == 3.5


def test_code_version_tells_uncommitted_edits_apart(tmp_path, monkeypatch):
    """Model versions and their Ray checkpoints are keyed by the code version: two different uncommitted
    edits of one commit must not share it (a stale checkpoint would be resumed into a changed model)."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    (tmp_path / "model.py").write_text("a = 1\n")
    git("add", "model.py")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "one")
    sha = git("rev-parse", "--short", "HEAD").strip()
    monkeypatch.setattr(runtime, "REPO_ROOT", tmp_path)

    def version():
        monkeypatch.setattr(runtime, "_CODE_VERSION", None)
        return runtime.code_version()

    assert version() == sha
    (tmp_path / "model.py").write_text("a = 2\n")
    first = version()
    (tmp_path / "model.py").write_text("a = 3\n")
    second = version()
    assert first.startswith(f"{sha}-dirty-") and second.startswith(f"{sha}-dirty-") and first != second
    (tmp_path / "model.py").write_text("a = 2\n")
    assert version() == first                 # the same edit, the same version
    (tmp_path / "model.py").write_text("a = 1\n")
    assert version() == sha


def test_spark_tuning_defaults_yield_to_what_spark_submit_set():
    spark_section = runtime.load_config().spark
    local = runtime._tuning(spark_section, {})
    assert local["spark.sql.shuffle.partitions"] == "8"
    assert local["spark.databricks.delta.snapshotPartitions"] == "8"   # Delta's 50 is a cluster's size
    assert local["spark.ui.enabled"] == "false"
    submitted = runtime._tuning(spark_section, {"spark.master": "submitted", "spark.sql.shuffle.partitions": "400"})
    assert "spark.sql.shuffle.partitions" not in submitted               # the properties file wins
    assert submitted["spark.databricks.delta.snapshotPartitions"] == "8"


def test_cds_options_follow_the_archive_and_keep_the_users_own_after_them(tmp_path):
    jars = tmp_path / "jars"
    jars.mkdir()
    cfg = runtime.load_config(overrides={"spark.jars_dir": str(jars)})
    assert jvm.cds_java_options(cfg) == "" and jvm.driver_java_options(cfg) == {}   # no archive yet
    (jars / jvm.CDS_ARCHIVE_NAME).write_bytes(b"archive")
    options = jvm.cds_java_options(cfg)
    assert options.split()[:2] == [f"-XX:SharedArchiveFile={jars / jvm.CDS_ARCHIVE_NAME}", "-Xshare:auto"]
    assert "-Xlog:all=warning:stderr" in options      # a JVM that cannot use it says so on stderr, not stdout
    assert jvm.cds_archive(cfg) == jars / jvm.CDS_ARCHIVE_NAME
    assert jvm.cds_archive(cfg.with_overrides({"spark.cds_archive": "off"})) is None
    assert jvm.cds_java_options(cfg.with_overrides({"spark.cds_archive": "off"})) == ""
    assert jvm.cds_java_options(cfg.with_overrides({"spark.cds_archive": False})) == ""   # YAML's `off`
    elsewhere = tmp_path / "other.jsa"
    assert jvm.cds_java_options(cfg.with_overrides({"spark.cds_archive": str(elsewhere)})) == ""
    elsewhere.write_bytes(b"archive")
    assert str(elsewhere) in jvm.cds_java_options(cfg.with_overrides({"spark.cds_archive": str(elsewhere)}))
    mine = cfg.with_overrides({"spark.conf": {"spark.driver.extraJavaOptions": "-Xss4m"}})
    assert jvm.driver_java_options(mine) == {"spark.driver.extraJavaOptions": options + " -Xss4m"}
    assert jvm.driver_java_options(mine.with_overrides({"spark.cds_archive": "off"})) == {
        "spark.driver.extraJavaOptions": "-Xss4m"}


CDS_DRIVER = r'''
from jobs import runtime

cfg = runtime.load_config(overrides={"spark.master": "local[1]", "spark.driver_memory": "512m",
                                     "spark.conf": {"spark.driver.extraJavaOptions": "-Xshare:on"}})
spark = runtime.spark_session(cfg, app_name="cds-check")
jvm_args = list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
print("ARGS", " ".join(jvm_args))
print("ROWS", spark.range(5).count())
spark.stop()
'''


@pytest.mark.slow
def test_the_setup_archive_maps_into_a_local_spark_driver(tmp_path):
    """`make setup` builds .jars/spark-cds.jsa (infra/spark/build_cds_archive.py). A driver started with
    -Xshare:on (after the archive options, so it wins) refuses to start unless the JVM maps the archive:
    this JVM build, this pyspark's classpath."""
    import os
    import subprocess
    import sys

    archive = jvm.cds_archive(runtime.load_config())
    assert archive.is_file(), f"{archive} is missing: run `make cds` (part of `make setup`)"
    script = tmp_path / "driver.py"
    script.write_text(CDS_DRIVER)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(runtime.REPO_ROOT)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    args = next(l for l in done.stdout.splitlines() if l.startswith("ARGS")).split()[1:]
    assert f"-XX:SharedArchiveFile={archive}" in args and args.index("-Xshare:on") > args.index("-Xshare:auto")
    assert "ROWS 5" in done.stdout


@pytest.mark.parametrize("value, limit, keep, shown", [
    ("plain text", 200, "head", "plain text"),
    ("tab\tnew\nline\x00nul\x1besc", 200, "head", "tab\\tnew\\nline\\x00nul\\x1besc"),   # escaped as repr does
    ("naïve café", 200, "head", "naïve café"),                                         # printable letters stay
    ("\u200bzero-width", 200, "head", "\\u200bzero-width"),
    (b"\xff\xfeOK\x00", 200, "head", "\\xff\\xfeOK\\x00"),                              # bytes: undecodable escaped
    ("x" * 250, 30, "head", "x" * 15 + "... (250 chars)"),                             # cut to 30, saying how long
    (b"\x01" * 1000, 30, "head", "\\x01" * 3 + "... (1,000 bytes)"),                 # never half an escape
    ("/a/very/long/folder/name/file.csv", 20, "tail", "...der/name/file.csv"),            # a path keeps its file name
])
def test_printable_cuts_and_escapes_what_a_message_echoes(value, limit, keep, shown):
    assert runtime.printable(value, limit, keep=keep) == shown
    assert len(shown) <= limit and shown.isprintable()


def test_print_config_json_and_the_run_log_file(tmp_path, capsys, monkeypatch):
    """--print-config json prints the effective configuration as JSON; a run writes it (and its log lines)
    to its log file, which its lineage record names, and not to stderr."""
    assert _toy_job(["--print-config", "json", "score.k=7"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == json.loads(runtime.config_json(runtime.load_config(overrides={"score.k": 7})))
    assert shown["score"]["k"] == 7
    assert _toy_job(["--print-config=json", "--run-date", "2024-03-01"]) == 0   # a job's own arguments may stay
    assert json.loads(capsys.readouterr().out)["score"]["k"] != 7

    monkeypatch.setenv("WARMSTART_LOG_DIR", str(tmp_path / "logs"))
    parser = runtime.job_parser("toy", "a toy job")
    parser.add_argument("--run-date", type=runtime.parse_date, required=True)
    seen = {}

    def run(args):
        time.sleep(0.3)
        seen["lineage"] = runtime.record_lineage(args, run_date=args.run_date, inputs={}, outputs={}, summary={})
        runtime.log.info("the toy ran")
        return {}

    assert runtime.run_job("toy", parser, lambda ns, common: runtime.dataclass_from(_ToyArgs, ns, common), run,
                           ["--lake", str(tmp_path / "lake"), "--run-date", "2024-03-01", "score.k=9"],
                           needs_spark=False) == 0
    assert "effective configuration" not in capsys.readouterr().err
    record = json.loads(Path(seen["lineage"]).read_text())
    assert record["seconds"] >= 0.3               # the run's wall time so far: the trend page's stage time
    log_file = Path(record["log"])
    assert log_file.parent == tmp_path / "logs" / "warmstart-logs" and log_file.name == f"{record['run_id']}.log"
    text = log_file.read_text()
    config, _ = json.JSONDecoder().raw_decode(text, text.index("effective configuration:\n") + 25)
    assert config == record["config"] and config["score"]["k"] == 9
    assert "INFO warmstart: the toy ran" in text
