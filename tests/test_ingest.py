"""Ingest (jobs/ingest.py, features/bronze.py): every reason code on explicit lines, the conservation
count, idempotency (each job test runs the ingest twice), the Online Retail mapping on a real sample,
generated bad records of every kind, the CLI's usage errors, a bad input file's one short last line, and a
real kill during the MERGE."""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from features import synthetic
from features.tables import EVENTS, ITEMS, QUARANTINE
from jobs import ingest, lake as lakeio, runtime

REPO = Path(__file__).resolve().parent.parent


def _args(lake, config, run_date, events=(), items=(), fmt="auto"):
    common = runtime.job_args("ingest", lake, config=config, run_date=run_date)
    return ingest.IngestArgs(**{f: getattr(common, f) for f in ("job", "lake", "config", "run_id", "summary_json")},
                             run_date=run_date, events=tuple(map(str, events)), items=tuple(map(str, items)), format=fmt)


def _snapshot(spark, lake):
    """Every bronze table's version and rows (sorted), for 'the second run changed nothing'."""
    out = {}
    for t in (EVENTS, QUARANTINE, ITEMS):
        rows = lakeio.read(spark, lake, t).collect() if lakeio.exists(spark, lake, t) else []
        out[t.name] = (lakeio.version(spark, lake, t), sorted(map(tuple, rows), key=repr))
    return out


def _twice(spark, lake, config, run_date, **kw):
    first = ingest.run(spark, _args(lake, config, run_date, **kw))
    before = _snapshot(spark, lake)
    second = ingest.run(spark, _args(lake, config, run_date, **kw))
    assert _snapshot(spark, lake) == before, "the second identical ingest changed a table"
    assert second["events_inserted"] == 0 and second["duplicates"] == first["records_read"] - first["quarantined"]
    assert second["quarantine_rewritten"] is False
    return first, second


HEADER = "user_id,item_id,event_type,event_ts,quantity,price,session_id"
LINES: list[tuple[bytes, str | None]] = [        # (line, expected reason or None = good) from line 2 on
    (b"u1,i1,view,2024-01-03T10:00:00Z,,,s1", None),                       # plain view
    (b"u1,i1,purchase,2024-01-03 10:05:00,2,9.99,s1", None),               # no zone: UTC
    (b"u1,i1,return,2024-01-04T09:00:00+01:00,-2,9.99,s1", None),          # offset -> 08:00 UTC, quantity stored +2
    (b"u1,i1,purchase,2024-01-03 10:05:00,2,9.99,s1", None),               # exact re-delivery of line 3: a duplicate
    (b",i2,view,2024-01-03T10:00:00Z,,,s2", "missing_user_id"),
    (b"u2,  ,view,2024-01-03T10:00:00Z,,,s2", "missing_item_id"),          # blank counts as missing
    (b"u2,i2,view,yesterday,,,s2", "unparseable_timestamp"),
    (b"u2,i2,view,,,,s2", "unparseable_timestamp"),                        # missing timestamp
    (b"u2,i2,view,2024-01-06T00:00:00Z,,,s2", "timestamp_in_future"),      # run_date 01-05 + 1 day: the cutoff itself
    (b"u2,i2,click,2024-01-05T23:59:59Z,,,s2", None),                      # last accepted second
    (b"u2,i2,WISHLIST,2024-01-03T10:00:00Z,,,s2", "unknown_event_type"),
    (b"u2,i2,purchase,2024-01-03T11:00:00Z,1,abc,s2", "invalid_price"),    # text where a number goes
    (b"u2,i2,purchase,2024-01-03T11:00:00Z,1,-1.00,s2", "invalid_price"),  # negative
    (b"u2,i2,purchase,2024-01-03T11:00:00Z,two,1.00,s2", "invalid_quantity"),
    (b"u2,i2,purchase,2024-01-03T11:00:00Z,0,1.00,s2", "invalid_quantity"),
    (b"u2,i2,add_to_cart,2024-01-03T11:00:00Z,1.5,1.00,s2", "invalid_quantity"),
    (b"u3,i3,view,2024-01-03T10:00:00Z,,,s3,extra", "malformed_record"),   # wrong column count
    (b'u3,"i3,view,2024-01-03T10:00:00Z,,,s3', "malformed_record"),        # unterminated quote
    (b"u\xff3,i3,view,2024-01-03T10:00:00Z,,,s3", "malformed_record"),     # not UTF-8
    (b"", None),                                                           # blank line: not a record
    (b'17850.0,"i4, the ""big"" one",View,2024-01-02T00:00:00Z,,,', None),  # float id, quoted comma, case
    (b"u9,i9,vie", "malformed_record"),                                    # truncated last line, no newline
]
JSON_LINES: list[tuple[bytes, str | None]] = [
    (b'{"user_id": 42, "item_id": "i5", "event_type": "purchase", "event_ts": "2024-01-04T12:00:00Z", "quantity": 3, "price": 2.5}', None),
    (b'{"user_id": "u5", "item_id": "i5", "event_type": "view", "event_ts": "2024-01-04T12:0', "malformed_record"),
    (b'["u5", "i5"]', "malformed_record"),
    (b'{"user_id": "u5", "item_id": "i\xe95", "event_type": "view", "event_ts": "2024-01-04T12:00:00Z"}', "malformed_record"),
    (b'{"user_id": "u5", "item_id": "i5", "event_type": "view", "event_ts": "2024-01-04T12:00:00Z", "price": "cheap"}', "invalid_price"),
]
ITEM_LINES = [
    b"item_id,title,description,category,brand,price,updated_at",
    b"i1,Enamel mug,A blue enamel mug,kitchen,Kiln,9.99,2024-01-02T00:00:00Z",
    b"i1,Old mug,An older row of i1,kitchen,Kiln,8.99,2024-01-01T00:00:00Z",   # older: loses to the row above
    b"i2,Trowel,,garden,,4.50,",                                                  # no updated_at: the run date
    b",No id,,,,1.00,2024-01-02T00:00:00Z",                                       # missing_item_id
    b"i3,Lamp,,lighting,,free,2024-01-02T00:00:00Z",                              # invalid_price
]


def test_each_reason_code_conservation_and_rerun(spark, lake, config, tmp_path):
    events_csv = tmp_path / "drop" / "events.csv"
    events_csv.parent.mkdir()
    events_csv.write_bytes(b"\n".join([HEADER.encode()] + [line for line, _ in LINES]))
    events_json = tmp_path / "drop" / "events.jsonl"
    events_json.write_bytes(b"\n".join(line for line, _ in JSON_LINES) + b"\n")
    items_csv = tmp_path / "items.csv"
    items_csv.write_bytes(b"\n".join(ITEM_LINES) + b"\n")
    run_date = dt.date(2024, 1, 5)

    first, _ = _twice(spark, lake, config, run_date, events=[tmp_path / "drop"], items=[items_csv])

    expected_q = sorted([("events.csv", i + 2, r) for i, (line, r) in enumerate(LINES) if r] +
                        [("events.jsonl", i + 1, r) for i, (line, r) in enumerate(JSON_LINES) if r] +
                        [("items.csv", 5, "missing_item_id"), ("items.csv", 6, "invalid_price")])
    quarantine = lakeio.read(spark, lake, QUARANTINE)
    got_q = sorted((r.source.rsplit("/", 1)[1], r.record_number, r.reason) for r in quarantine.collect())
    assert got_q == expected_q
    assert set(quarantine.select("run_date").distinct().toPandas()["run_date"]) == {run_date}
    bad_utf8 = quarantine.where(F.col("record_number") == 20).first()
    assert bad_utf8.detail == "bytes that are not UTF-8" and bad_utf8.record.startswith("u\ufffd3")

    records = sum(1 for line, _ in LINES if line) + len(JSON_LINES)
    quarantined = sum(1 for _, r in LINES + JSON_LINES if r)
    assert first["records_read"] == records == 26
    assert first["quarantined"] == quarantined == 19
    assert first["events_inserted"] == 6 and first["duplicates"] == 1 and first["duplicates_in_batch"] == 1
    assert first["records_read"] == first["events_inserted"] + first["duplicates"] + first["quarantined"]
    assert first["quarantined_by_reason"] == {
        "malformed_record": 7, "missing_user_id": 1, "missing_item_id": 1, "unparseable_timestamp": 2,
        "timestamp_in_future": 1, "unknown_event_type": 1, "invalid_price": 3, "invalid_quantity": 3}

    expected_events = spark.createDataFrame([
        ("u1", "i1", "view", dt.datetime(2024, 1, 3, 10, 0), None, None, "s1"),
        ("u1", "i1", "purchase", dt.datetime(2024, 1, 3, 10, 5), 2, 9.99, "s1"),
        ("u1", "i1", "return", dt.datetime(2024, 1, 4, 8, 0), 2, 9.99, "s1"),
        ("u2", "i2", "click", dt.datetime(2024, 1, 5, 23, 59, 59), None, None, "s2"),
        ("17850", 'i4, the "big" one', "view", dt.datetime(2024, 1, 2), None, None, None),
        ("42", "i5", "purchase", dt.datetime(2024, 1, 4, 12, 0), 3, 2.5, None),
    ], "user_id string, item_id string, event_type string, event_ts timestamp, quantity int, price double, session_id string")
    events = lakeio.read(spark, lake, EVENTS)
    assertDataFrameEqual(events.select(*expected_events.columns), expected_events)
    assert events.select("event_id").distinct().count() == events.count()
    assert {r[0] for r in events.select(F.length("event_id")).collect()} == {64}

    items = lakeio.read(spark, lake, ITEMS).select("item_id", "title", "price", "updated_at")
    assertDataFrameEqual(items, spark.createDataFrame([
        ("i1", "Enamel mug", 9.99, dt.datetime(2024, 1, 2)), ("i2", "Trowel", 4.50, dt.datetime(2024, 1, 5))],
        "item_id string, title string, price double, updated_at timestamp"))


def _retail_sample(retail_dir: Path, tmp: Path) -> tuple[Path, Path]:
    """The first 150 rows of online_retail.csv.gz (2010-12-01, inside the overlap week), one June row
    (summer time) and five rows with no customer id; from the 2009-2010 file its first 100 rows plus
    every row of the same 2010-12-01 invoices (the overlap, with the other header spelling)."""
    with gzip.open(retail_dir / "online_retail.csv.gz", "rt", encoding="utf-8") as f:
        lines_a = f.read().splitlines()
    head_a, rows_a = lines_a[0], lines_a[1:151]
    june = next(line for line in lines_a if ",2011-06-15 1" in line and line.endswith("United Kingdom") and ",," not in line)
    rows_a.append(june)
    no_customer = [line for line in lines_a[151:20000] if not next(csv.reader([line]))[6].strip()]
    rows_a.extend(no_customer[:5])       # rows with no CustomerID: quarantined as missing_user_id
    invoices = {line.split(",", 1)[0] for line in rows_a[:150]}
    with gzip.open(retail_dir / "online_retail_ii_2009_2010.csv.gz", "rt", encoding="utf-8") as f:
        lines_b = f.read().splitlines()
    rows_b = lines_b[1:101] + [line for line in lines_b[1:] if line.split(",", 1)[0] in invoices]
    a, b = tmp / "or_2010_2011.csv", tmp / "or_ii_2009_2010.csv.gz"
    a.write_text("\n".join([head_a] + rows_a) + "\n", encoding="utf-8")
    with gzip.open(b, "wt", encoding="utf-8") as f:
        f.write("\n".join([lines_b[0]] + rows_b) + "\n")
    return a, b


def _expected_retail_counts(files: list[Path]) -> tuple[int, int, int, int]:
    """(read, distinct events, duplicates, missing customer) worked out with the csv module: an event is
    the tuple of invoice, stock code, quantity, date, price, customer id."""
    keys, missing, read = [], 0, 0
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for row in list(csv.reader(f))[1:]:
                read += 1
                if not row[6].strip():
                    missing += 1
                else:
                    keys.append((row[0], row[1], int(row[3]), row[4], float(row[5]), row[6]))
    return read, len(set(keys)), len(keys) - len(set(keys)), missing


def test_online_retail_sample_mapping_overlap_and_rerun(spark, lake, config, tmp_path, retail_dir):
    a, b = _retail_sample(retail_dir, tmp_path)
    read, distinct, duplicates, missing = _expected_retail_counts([a, b])
    assert duplicates > 100 and missing == 5     # the sample really holds the overlap and the dirt

    first, _ = _twice(spark, lake, config, dt.date(2011, 12, 9), events=[b, a], fmt="online-retail")
    assert first["records_read"] == read
    assert first["events_inserted"] == distinct
    assert first["duplicates"] == duplicates
    assert first["quarantined_by_reason"] == {"missing_user_id": missing}

    events = lakeio.read(spark, lake, EVENTS)
    cols = ["user_id", "item_id", "event_type", "event_ts", "quantity", "price", "session_id"]
    row = events.where((F.col("session_id") == "536365") & (F.col("item_id") == "85123A")).select(cols)
    # 2010-12-01 08:26 in London is GMT: the same instant in UTC
    assertDataFrameEqual(row, spark.createDataFrame(
        [("17850", "85123A", "purchase", dt.datetime(2010, 12, 1, 8, 26), 6, 2.55, "536365")], events.select(cols).schema))
    june = next(csv.reader([a.read_text().splitlines()[151]]))
    june_row = events.where((F.col("session_id") == june[0]) & (F.col("item_id") == june[1])).select("event_ts", "user_id").first()
    local = dt.datetime.fromisoformat(june[4])
    assert june_row.event_ts == local - dt.timedelta(hours=1)          # BST = UTC+1
    assert june_row.user_id == june[6] and "." not in june_row.user_id
    # a cancellation: return with the quantity stored positive
    cancel = events.where(F.col("session_id").startswith("C")).select("event_type", "quantity").collect()
    assert cancel and all(r.event_type == "return" and r.quantity > 0 for r in cancel)
    assert events.where(F.col("event_type") == "purchase").where(F.col("quantity") <= 0).count() == 0
    assert events.where(F.col("user_id").isNull()).count() == 0

    item = lakeio.read(spark, lake, ITEMS).where(F.col("item_id") == "85123A").first()
    assert (item.title, item.price, item.category) == ("WHITE HANGING HEART T-LIGHT HOLDER", 2.55, "lighting")
    assert lakeio.read(spark, lake, ITEMS).where(F.col("item_id") == "POST").select("category").first()[0] == "non_product"


def test_generated_bad_records_land_in_quarantine_by_kind(spark, lake, config, tmp_path):
    jsonl = synthetic.generate(tmp_path / "j", users=60, items=40, days=4, start_date="2024-02-01", seed=11,
                               bad_rate=0.04, fmt="jsonl", events=1500)
    parquet = synthetic.generate(tmp_path / "p", users=60, items=40, days=4, start_date="2024-02-01", seed=12,
                                 bad_rate=0.04, fmt="parquet", events=1500)
    csv_gen = synthetic.generate(tmp_path / "c", users=60, items=40, days=4, start_date="2024-02-01", seed=13,
                                 bad_rate=0.04, fmt="csv", events=1500)
    run_date = dt.date(2024, 2, 4)
    first, _ = _twice(spark, lake, config, run_date,
                      events=[tmp_path / "j" / "events", tmp_path / "p" / "events", tmp_path / "c" / "events"],
                      items=[tmp_path / "p" / "items"])
    injected = {k: jsonl["bad_records"][k] + parquet["bad_records"][k] + csv_gen["bad_records"][k]
                for k in jsonl["bad_records"]}
    assert first["quarantined_by_reason"] == {k: v for k, v in injected.items() if v}
    assert first["records_read"] == 4500
    assert first["events_inserted"] == 4500 - sum(injected.values())
    assert first["items_inserted"] == 40


def test_missing_path_and_unknown_format_exit_2_with_one_line(lake, tmp_path, capsys, spark):
    # A short path, so that the message shows it whole (an echoed path is cut to fit the one line, and
    # pytest-xdist's temp paths are long enough to be cut)
    absent = Path(tempfile.mkdtemp(prefix="ws-")) / "nope.csv"
    missing = ingest.main(["--lake", lake, "--run-date", "2024-01-01", "--events", str(absent)])
    unknown = ingest.main(["--lake", lake, "--run-date", "2024-01-01", "--events", str(tmp_path), "--format", "xml"])
    (tmp_path / "x.txt").write_text("a\n")
    no_ext = ingest.main(["--lake", lake, "--run-date", "2024-01-01", "--events", str(tmp_path / "x.txt")])
    nothing = ingest.main(["--lake", lake, "--run-date", "2024-01-01"])
    assert (missing, unknown, no_ext, nothing) == (2, 2, 2, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4
    assert err[0] == f"warmstart ingest: input path not found: {absent}"
    assert "invalid choice: 'xml'" in err[1] and "cannot infer the format" in err[2] and "nothing to ingest" in err[3]
    assert not (Path(lake) / "bronze").exists()


@pytest.mark.slow
def test_killed_during_merge_leaves_events_at_previous_version(spark, lake, config, tmp_path):
    synthetic.generate(tmp_path / "day1", users=200, items=100, days=2, start_date="2024-05-01", seed=1, events=2_000)
    ingest.run(spark, _args(lake, config, dt.date(2024, 5, 2), events=[tmp_path / "day1" / "events"]))
    version_before = lakeio.version(spark, lake, EVENTS)
    rows_before = sorted(map(tuple, lakeio.read(spark, lake, EVENTS).collect()), key=repr)
    synthetic.generate(tmp_path / "big", users=5000, items=500, days=30, start_date="2024-05-01", seed=2, events=150_000)

    log = tmp_path / "ingest.log"
    env = {**os.environ, "WARMSTART_LOG_LEVEL": "INFO", "SPARK_LOCAL_IP": "127.0.0.1"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jobs.ingest", "--lake", lake, "--run-date", "2024-05-31",
                                 "--events", str(tmp_path / "big" / "events"), "spark.master=local[2]",
                                 "spark.driver_memory=1g", "spark.shuffle_partitions=2"],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log_dir = Path(lake) / "bronze" / "events" / "_delta_log"
    commits_before = sorted(p.name for p in log_dir.glob("*.json"))
    try:
        deadline = time.monotonic() + 600
        while "MERGE into bronze/events:" not in log.read_text():
            assert proc.poll() is None, f"ingest ended before its MERGE: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "ingest never reached its MERGE"
            time.sleep(0.2)
        time.sleep(1.0)                                   # inside the MERGE: joining, writing files
        assert proc.poll() is None, "the MERGE finished before the kill; make the input larger"
        os.killpg(proc.pid, signal.SIGKILL)               # the driver and its JVM, no clean-up
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in log_dir.glob("*.json")) == commits_before     # no commit landed
    assert lakeio.version(spark, lake, EVENTS) == version_before
    assert sorted(map(tuple, lakeio.read(spark, lake, EVENTS).collect()), key=repr) == rows_before

    # and the next run completes the job from the same input
    summary = ingest.run(spark, _args(lake, config, dt.date(2024, 5, 31), events=[tmp_path / "big" / "events"]))
    assert summary["events_inserted"] + summary["duplicates"] + summary["quarantined"] == 150_000


def _ingest_cli(tmp_path: Path, *inputs: Path, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`warmstart ingest` as a user types it, its run logs under tmp_path. Spark's progress lines are off:
    whether one comes depends on the machine's speed (tests/test_spark_progress.py covers them), and the
    tests here count the lines on stderr."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "WARMSTART_LOG_DIR": str(tmp_path / "logs")}
    return subprocess.run([sys.executable, "-m", "jobs.cli", "ingest", "--lake", str(tmp_path / "lake"),
                           "--run-date", "2024-01-31", *flags, "--events", *map(str, inputs),
                           "spark.progress_every_s=0"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


_NOISE = random.Random(26).randbytes(40_000).replace(b"\n", b"\0")   # 40 KB of binary garbage, no line break


@pytest.mark.parametrize("name, content, problem", [
    ("garbage.csv", _NOISE, "binary data, not a CSV header"),
    ("wide.csv", ",".join(f"col{i}" for i in range(5000)).encode() + b"\n1,2\n", "CSV header lacks user_id"),
    ("empty.csv", b"", "empty file (no header, no records)"),
    ("empty.jsonl", b"", "empty file (no header, no records)"),
    ("blank.csv.gz", gzip.compress(b"\n \n"), "empty file (no header, no records)"),
    ("garbage.parquet", _NOISE[:100], "not a Parquet file"),
    ("missing.csv", None, "input path not found"),
], ids=["garbage.csv", "wide.csv", "empty.csv", "empty.jsonl", "blank.csv.gz", "garbage.parquet", "missing.csv"])
def test_a_bad_input_file_ends_with_one_short_line_naming_it(tmp_path, name, content, problem):
    """The last stderr line names the file and the problem in under 200 printable characters, whatever
    the file holds, and nothing is written (exit 2, told before a Spark driver starts)."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    done = _ingest_cli(tmp_path, path)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr[-2000:]
    assert last.startswith("warmstart ingest: ") and name in last and problem in last, last
    assert len(last) < 200 and last.isprintable(), last
    assert not (tmp_path / "lake" / "bronze").exists()


@pytest.mark.slow
def test_a_header_only_file_ingests_nothing_and_says_so_quietly(tmp_path):
    """Exit 0 with zero records, the last stderr line naming the file; stderr holds neither the effective
    configuration nor Spark's start-up noise: both are in the run's log file (named on stderr). The rerun,
    with --verbose, changes nothing and shows the JVM's output again."""
    path = tmp_path / "header.csv"
    path.write_text("user_id,item_id,event_type,event_ts,quantity,price,session_id\n")
    done = _ingest_cli(tmp_path, path)
    assert done.returncode == 0, done.stderr[-2000:]
    err = done.stderr.strip().splitlines()
    assert re.search(r"WARNING warmstart.ingest: \S+/header.csv: no records \(a header only\); nothing to "
                     r"ingest from it$", err[-1]), err
    assert len(err[-1]) < 200
    assert re.search(r"^\s+records_read\s+0$", done.stdout, re.M) and re.search(r"^\s+events_inserted\s+0$", done.stdout, re.M)
    assert len(err) == 3, err      # the run's first line (its log file), the ingest's line, the warning
    for noise in ('"spark"', "effective configuration", "log4j", "WARN Utils", "NativeCodeLoader", "incubator"):
        assert noise not in done.stderr, noise
    log_file = Path(re.search(r"\(log: (\S+)\)", err[0]).group(1))
    assert log_file.parent == tmp_path / "logs" / "warmstart-logs"
    text = log_file.read_text()
    config, _ = json.JSONDecoder().raw_decode(text, text.index("effective configuration:\n") + 25)
    assert config["ingest"]["csv_max_line_bytes"] > 0 and config["paths"]["lake"]
    assert "log4j" in text or "WARN" in text            # the JVM's own output went there instead
    (record,) = runtime.read_lineage(str(tmp_path / "lake"))
    assert record["log"] == str(log_file) and record["config"] == config

    again = _ingest_cli(tmp_path, path, flags=("--verbose",))
    assert again.returncode == 0 and re.search(r"^\s+records_read\s+0$", again.stdout, re.M), again.stderr[-2000:]
    assert "header.csv: no records (a header only)" in again.stderr
    assert "log4j" in again.stderr and "effective configuration" in again.stderr
    assert runtime.read_lineage(str(tmp_path / "lake"))[-1]["outputs"] == record["outputs"]   # no table changed
