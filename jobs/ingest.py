"""Ingest event and item drops into bronze: MERGE good events into ``bronze/events`` (on event_id, so a
re-delivered record is not stored twice), replace this run's quarantined records in
``bronze/events_quarantine`` (one row per rejected record, with a reason code), MERGE items into
``bronze/items`` (change data feed on; a row is rewritten only when an attribute changed).

    spark-submit --master local[*] --jars .jars/delta-spark_4.2_2.13-4.4.0.jar,.jars/delta-storage-4.4.0.jar \\
        jobs/ingest.py --lake ./lake --run-date 2011-12-09 --format online-retail \\
        --events ../shared/data/online_retail/online_retail_ii_2009_2010.csv.gz ../shared/data/online_retail/online_retail.csv.gz
    warmstart ingest --run-date 2024-01-31 --events gen/events --items gen/items [--format auto] [key=value ...]

Formats: ``csv`` / ``jsonl`` / ``parquet`` in the DESIGN event and item schemas, ``online-retail`` (the UCI
files, either header spelling; items come from their Description/UnitPrice), or ``auto`` (default):
from each file's extension (.csv, .json/.jsonl/.ndjson, .parquet, optionally .gz), and a CSV whose
header is an Online Retail header is read as online-retail. A directory means the data files in it.

Every input record ends in exactly one place, and the job checks it before and after writing:
``records read = inserted + duplicates + quarantined``, where duplicates are the events whose id
repeats within this batch plus those already in ``bronze/events``.

Idempotent per run date and inputs: a rerun inserts no event, updates no item, and leaves the
quarantine partition as it is when the same records are rejected again. Atomic per table: each write
is one Delta commit (a killed run leaves each table at its previous version).
"""
from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features import bronze
from features.tables import EVENTS, ITEMS, QUARANTINE, QUARANTINE_REASONS
from jobs import lake, runtime

log = logging.getLogger("warmstart.ingest")

FORMATS = ("auto", "csv", "jsonl", "parquet", "online-retail")
EXTENSIONS = {".csv": "csv", ".json": "jsonl", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class IngestArgs(runtime.JobArgs):
    run_date: dt.date | None = None
    events: tuple[str, ...] = ()
    items: tuple[str, ...] = ()
    format: str = "auto"

    def __post_init__(self) -> None:
        if self.run_date is None:
            raise runtime.UsageError("--run-date is required")
        if not self.events and not self.items:
            raise runtime.UsageError("nothing to ingest: give --events PATH... and/or --items PATH...")
        if self.format not in FORMATS:
            raise runtime.UsageError(f"unknown format {self.format!r}; one of {', '.join(FORMATS)}")
        if self.items and self.format == "online-retail":
            raise runtime.UsageError("--items with --format online-retail: Online Retail items come from the event files")


@dataclass(frozen=True)
class InputFile:
    uri: str
    format: str                       # csv | jsonl | parquet | online-retail
    header: tuple[str, ...] = ()      # text formats with a header line


def _filesystem(path: str):
    """The input's filesystem, through pyarrow's: local, s3, hdfs, gcs alike."""
    from pyarrow import fs

    if runtime.is_remote(path):
        return fs.FileSystem.from_uri(path)
    local = runtime.normalise_root(path)
    return fs.LocalFileSystem(), local


def _uri(path: str) -> str:
    """The file's URI as Spark's ``_metadata.file_path`` spells it (the ``source`` column)."""
    return path if runtime.is_remote(path) else "file:" + runtime.normalise_root(path)


def _format_of(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    for ext, fmt in EXTENSIONS.items():
        if lower.endswith(ext):
            return fmt
    return None


def _head(filesystem, inner: str) -> bytes:
    """The first 64 KB of the file, decompressed (.gz): enough for any header line."""
    with filesystem.open_input_stream(inner, compression="detect") as stream:
        return stream.read(1 << 16)


def _looks_binary(line: bytes) -> bool:
    """A first line no CSV header has: NUL bytes, or more than a tenth of it undecodable or control
    characters (a Latin-1 header's few accented letters stay below that)."""
    text = line.decode("utf-8", errors="replace")
    odd = sum(1 for c in text if c == "\ufffd" or (not c.isprintable() and c != "\t"))
    return b"\x00" in line or odd > max(2, len(text) // 10)


def _header(line: str) -> tuple[str, ...]:
    import csv

    return tuple(c.strip() for c in next(csv.reader([line]), []))


def _shown(path: str) -> str:
    """A path as an error message shows it: printable, at most 70 characters, the file name kept (the
    whole line stays under 200)."""
    return runtime.printable(path, 70, keep="tail")


def resolve_inputs(paths: tuple[str, ...], fmt: str, kind: str) -> list[InputFile]:
    """The data files under ``paths`` with their format and header; a missing path, an empty folder or
    file, an unknown extension, a file that is not what its format says (binary where a CSV header
    should be, no Parquet magic) or a header without the required columns is a UsageError (exit 2),
    whose message names the file and echoes at most a short, printable piece of it."""
    from pyarrow import fs

    out: list[InputFile] = []
    for path in paths:
        filesystem, inner = _filesystem(path)
        info = filesystem.get_file_info(inner)
        if info.type == fs.FileType.NotFound:
            raise runtime.UsageError(f"input path not found: {_shown(path)}")
        if info.type == fs.FileType.Directory:
            found = [f for f in filesystem.get_file_info(fs.FileSelector(inner, recursive=True))
                     if f.type == fs.FileType.File and not f.base_name.startswith(("_", "."))
                     and (fmt not in ("auto",) or _format_of(f.base_name))]
            files = sorted((f.path, f.size) for f in found)
            if not files:
                raise runtime.UsageError(f"no data files under {_shown(path)}")
        else:
            files = [(inner, info.size)]
        for inner_file, size in files:
            full = inner_file if not runtime.is_remote(path) else path.split("://", 1)[0] + "://" + inner_file
            out.append(_sniff(filesystem, inner_file, _uri(full), fmt, kind, size))
    return out


def _sniff(filesystem, inner: str, uri: str, fmt: str, kind: str, size: int | None = None) -> InputFile:
    file_fmt = fmt
    if fmt == "auto":
        file_fmt = _format_of(inner) or ""
        if not file_fmt:
            raise runtime.UsageError(f"cannot infer the format of {_shown(uri)} from its extension; give --format")
    if size == 0:
        raise runtime.UsageError(f"{_shown(uri)}: empty file (no header, no records)")
    if file_fmt == "jsonl":
        return InputFile(uri, file_fmt)        # a line that is not JSON is quarantined as malformed
    head = _head(filesystem, inner)
    if file_fmt == "parquet":
        if head[:4] != b"PAR1":
            raise runtime.UsageError(f"{_shown(uri)}: not a Parquet file (starts "
                                     f"{runtime.printable(head[:4], 20)}, not PAR1)")
        return InputFile(uri, file_fmt)
    if not head.strip():
        raise runtime.UsageError(f"{_shown(uri)}: empty file (no header, no records)")
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    if _looks_binary(line):
        raise runtime.UsageError(f"{_shown(uri)}: binary data, not a CSV header (starts "
                                 f"{runtime.printable(line[:4], 20)}); a gzip file must end in .gz")
    header = _header(line.decode("utf-8", errors="replace").lstrip("\ufeff"))
    shown_header = runtime.printable(",".join(header), 30)
    if header in bronze.ONLINE_RETAIL_HEADERS and fmt == "auto" and kind == "events":
        file_fmt = "online-retail"
    if file_fmt == "online-retail":
        if header not in bronze.ONLINE_RETAIL_HEADERS:
            raise runtime.UsageError(f"{_shown(uri)}: header {shown_header} is not an Online Retail header")
        return InputFile(uri, file_fmt, header)
    required = bronze.REQUIRED_EVENT_COLUMNS if kind == "events" else bronze.REQUIRED_ITEM_COLUMNS
    missing = [c for c in required if c not in header]
    if missing:
        raise runtime.UsageError(f"{_shown(uri)}: CSV header lacks {', '.join(missing)} (has: {shown_header})")
    return InputFile(uri, file_fmt, header)


def _numbered_lines(spark: SparkSession, uris: list[str]) -> DataFrame:
    raw = spark.read.text(uris).select(
        F.col("_metadata.file_path").alias("source"),
        F.col("_metadata.file_block_start").alias("block_start"),
        F.monotonically_increasing_id().alias("line_id"), "value")
    return bronze.number_lines(raw)


def _parquet_rows(spark: SparkSession, uris: list[str]) -> DataFrame:
    df = spark.read.parquet(*uris)
    return df.select(F.col("_metadata.file_path").alias("source"),
                     (F.col("_metadata.row_index") + 1).alias("record_number"), *df.columns)


def read_fields(spark: SparkSession, files: list[InputFile], kind: str, max_line_chars: int,
                timezone: str = "Europe/London") -> tuple[DataFrame | None, DataFrame | None]:
    """(canonical field frame, Online Retail candidate frame) of the files; either may be None."""
    columns = bronze.CANONICAL_EVENT_COLUMNS if kind == "events" else bronze.CANONICAL_ITEM_COLUMNS
    canonical: list[DataFrame] = []
    retail: DataFrame | None = None
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for f in files:
        # Online Retail's two header spellings share one column order: one read for all its files
        groups.setdefault((f.format, f.header if f.format == "csv" else ()), []).append(f.uri)
    for (fmt, header), uris in sorted(groups.items()):
        if fmt == "online-retail":
            lines = bronze.data_lines(_numbered_lines(spark, uris), has_header=True)
            frame = bronze.online_retail_candidates(lines, timezone=timezone, max_line_chars=max_line_chars)
            retail = frame if retail is None else retail.unionByName(frame)
        elif fmt == "csv":
            lines = bronze.data_lines(_numbered_lines(spark, uris), has_header=True)
            fields = bronze.csv_fields(lines, list(header), max_line_chars)
            canonical.append(_project(fields, columns))
        elif fmt == "jsonl":
            lines = bronze.data_lines(_numbered_lines(spark, uris), has_header=False)
            canonical.append(bronze.jsonl_fields(lines, columns, max_line_chars))
        else:
            rows = _parquet_rows(spark, uris)
            missing = [c for c in (bronze.REQUIRED_EVENT_COLUMNS if kind == "events" else bronze.REQUIRED_ITEM_COLUMNS)
                       if c not in rows.columns]
            if missing:
                raise runtime.UsageError(f"parquet input {uris[0]}...: lacks columns {', '.join(missing)}")
            canonical.append(_project(bronze.parquet_fields(rows), columns))
    merged = None
    for frame in canonical:
        merged = frame if merged is None else merged.unionByName(frame)
    return merged, retail


def _project(fields: DataFrame, columns: tuple[str, ...]) -> DataFrame:
    """Keep the bookkeeping and the schema's columns, as text (so frames of several files union)."""
    keep = [F.col(c).cast("string").alias(c) if c in fields.columns else F.lit(None).cast("string").alias(c)
            for c in columns]
    return fields.select("source", F.col("record_number").cast("long").alias("record_number"),
                         F.col("record").cast("string").alias("record"), "malformed", *keep)


def count_records(spark: SparkSession, files: list[InputFile]) -> int:
    """Records in the files, counted from the raw input apart from parsing: non-blank lines minus the
    header line of text files with one, rows of Parquet files. A file without a record (a header only)
    is no error, but says so: the run's last log line names it."""
    per_file = dict.fromkeys((f.uri for f in files), 0)
    text = [f.uri for f in files if f.format != "parquet"]
    parquet = [f.uri for f in files if f.format == "parquet"]
    if text:
        lines = spark.read.text(text).where(F.trim("value") != "")
        per_file.update({r[0]: r[1] for r in lines.groupBy("_metadata.file_path").count().collect()})
    if parquet:
        rows = spark.read.parquet(*parquet)
        per_file.update({r[0]: r[1] for r in rows.groupBy("_metadata.file_path").count().collect()})
    for f in files:
        if f.format in ("csv", "online-retail"):
            per_file[f.uri] = max(per_file.get(f.uri, 0) - 1, 0)
    for f in files:
        if per_file.get(f.uri, 0) == 0:
            log.warning("%s: no records (%s); nothing to ingest from it", _shown(f.uri),
                        "a header only" if f.header else "blank lines only" if f.format == "jsonl" else "no rows")
    return sum(per_file.values())


def run(spark: SparkSession, args: IngestArgs) -> dict[str, Any]:
    started = time.monotonic()
    cfg = args.config
    tolerance = cfg.ingest.future_tolerance_days
    max_chars = cfg.ingest.csv_max_line_bytes
    event_files = resolve_inputs(args.events, args.format, "events")
    item_files = resolve_inputs(args.items, args.format, "items")
    now = dt.datetime.now(dt.timezone.utc)
    staging = f"{args.lake}/_staging/{args.run_id}"
    versions_before = {t.name: lake.version(spark, args.lake, t) for t in (EVENTS, QUARANTINE, ITEMS)}
    log.info("ingest run_date=%s: %d event file(s), %d item file(s)", args.run_date, len(event_files), len(item_files))
    try:
        summary: dict[str, Any] = {"run_date": args.run_date.isoformat(),
                                   "formats": sorted({f.format for f in event_files + item_files})}
        rejected: list[DataFrame] = []
        staged_events = None
        if event_files:
            staged_events, event_summary = _stage_events(spark, args, event_files, staging, tolerance, max_chars,
                                                         cfg.ingest.online_retail_timezone)
            summary.update(event_summary)
            rejected.append(staged_events.where(F.col("reason").isNotNull()))
        items_summary, item_rejects = _items(spark, args, item_files, staged_events, staging, max_chars)
        if item_rejects is not None:
            rejected.append(item_rejects)
        q_rows = None
        for frame in rejected:
            rows = bronze.quarantine_rows(frame, run_date=args.run_date, run_id=args.run_id, quarantined_at=now)
            q_rows = rows if q_rows is None else q_rows.unionByName(rows)
        sources = sorted({f.uri for f in event_files + item_files})
        summary["quarantine_rewritten"] = _replace_quarantine(spark, args, q_rows, sources)
        if staged_events is not None:
            summary.update(_merge_events(spark, args, staged_events, now, summary))
        summary.update(items_summary)
    finally:
        _remove(spark, staging)
    outputs = {t.name: lake.version(spark, args.lake, t) for t in (EVENTS, QUARANTINE, ITEMS)}
    summary["table_versions"] = outputs
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    inputs = {"events_files": [f.uri for f in event_files], "items_files": [f.uri for f in item_files],
              "format": args.format, "table_versions_before": versions_before}
    summary["lineage"] = runtime.record_lineage(args, run_date=args.run_date, inputs=inputs, outputs=outputs,
                                                summary=summary)
    return summary


def _stage_events(spark: SparkSession, args: IngestArgs, files: list[InputFile], staging: str,
                  tolerance: int, max_chars: int, timezone: str) -> tuple[DataFrame, dict[str, Any]]:
    """Parse and validate every event record once, into a staging Parquet copy that all later counts
    and writes read (one consistent materialisation, whatever Spark recomputes)."""
    canonical, retail = read_fields(spark, files, "events", max_chars, timezone)
    frames = []
    if canonical is not None:
        frames.append(bronze.canonical_candidates(canonical))
    if retail is not None:
        frames.append(retail)
    candidates = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    validated = bronze.validate_events(candidates, run_date=args.run_date, future_tolerance_days=tolerance)
    validated.write.mode("overwrite").parquet(f"{staging}/events")
    staged = spark.read.parquet(f"{staging}/events")
    records_read = count_records(spark, files)
    by_reason = {r["reason"]: r["count"] for r in staged.groupBy("reason").count().collect()}
    good = by_reason.pop(None, 0)
    quarantined = sum(by_reason.values())
    if records_read != good + quarantined:
        raise runtime.WarmstartError(
            f"conservation check failed before writing: {records_read} records read but {good} good + "
            f"{quarantined} quarantined were parsed; nothing was written")
    return staged, {
        "records_read": records_read, "events_valid": good, "quarantined": quarantined,
        "quarantined_by_reason": {r: by_reason.get(r, 0) for r in QUARANTINE_REASONS if by_reason.get(r)},
    }


def _merge_events(spark: SparkSession, args: IngestArgs, staged: DataFrame, now: dt.datetime,
                  summary: dict[str, Any]) -> dict[str, Any]:
    good = staged.where(F.col("reason").isNull())
    events = bronze.dedupe_events(good, run_id=args.run_id, ingested_at=now)
    distinct = events.count()
    dates = sorted(r[0] for r in events.select("event_date").distinct().collect())
    lake.ensure(spark, args.lake, EVENTS)
    already = 0
    if dates and distinct:
        existing = (lake.read(spark, args.lake, EVENTS).where(F.col("event_date").isin(dates))
                    .select("event_date", "event_id"))
        already = events.select("event_date", "event_id").join(existing, ["event_date", "event_id"], "left_semi").count()
    expected_new = distinct - already
    inserted = 0
    if expected_new:
        log.info("MERGE into bronze/events: %d new event(s) over %d date(s)", expected_new, len(dates))
        metrics = lake.merge_insert_new(spark, args.lake, EVENTS, events, partition_values=dates)
        inserted = metrics.get("numTargetRowsInserted", 0)
        log.info("MERGE into bronze/events committed: %d inserted", inserted)
    in_batch = summary["events_valid"] - distinct
    duplicates = in_batch + already
    read, quarantined = summary["records_read"], summary["quarantined"]
    if read != inserted + duplicates + quarantined or inserted != expected_new:
        raise runtime.WarmstartError(
            f"conservation check failed: read {read} != inserted {inserted} + duplicates {duplicates} + "
            f"quarantined {quarantined} (expected {expected_new} new); bronze/events is at version "
            f"{lake.version(spark, args.lake, EVENTS)}")
    return {
        "events_inserted": inserted, "duplicates": duplicates, "duplicates_in_batch": in_batch,
        "duplicates_already_present": already,
        "conservation": f"read {read} = inserted {inserted} + duplicates {duplicates} + quarantined {quarantined}",
        "event_dates": [dates[0].isoformat(), dates[-1].isoformat()] if dates else [],
    }


def _items(spark: SparkSession, args: IngestArgs, files: list[InputFile], staged_events: DataFrame | None,
           staging: str, max_chars: int) -> tuple[dict[str, Any], DataFrame | None]:
    """MERGE items from item files, or from Online Retail lines. Returns the summary and the rejected
    item records (for the quarantine)."""
    summary: dict[str, Any] = {}
    rejected = None
    items = None
    if files:
        canonical, _ = read_fields(spark, files, "items", max_chars)
        default_ts = dt.datetime.combine(args.run_date, dt.time(), dt.timezone.utc)
        validated = bronze.validate_items(canonical, default_updated_at=default_ts)
        validated.write.mode("overwrite").parquet(f"{staging}/items")
        staged = spark.read.parquet(f"{staging}/items")
        read = count_records(spark, files)
        by_reason = {r["reason"]: r["count"] for r in staged.groupBy("reason").count().collect()}
        good = by_reason.pop(None, 0)
        if read != good + sum(by_reason.values()):
            raise runtime.WarmstartError(f"item conservation check failed: {read} read, {good} good + "
                                         f"{sum(by_reason.values())} quarantined; nothing was written")
        rejected = staged.where(F.col("reason").isNotNull())
        items = bronze.latest_items(staged.where(F.col("reason").isNull()))
        summary.update({"items_read": read, "items_quarantined": read - good,
                        "items_quarantined_by_reason": by_reason})
    elif staged_events is not None and staged_events.where(F.col("item_title").isNotNull()).limit(1).count():
        items = bronze.online_retail_items(staged_events)
    if items is None:
        return summary, rejected
    items = items.cache()
    n_items = items.count()
    target_exists = lake.exists(spark, args.lake, ITEMS)
    lake.ensure(spark, args.lake, ITEMS)
    current = lake.read(spark, args.lake, ITEMS)
    new = items.join(current.select("item_id"), "item_id", "left_anti").count()
    changed = (items.alias("s").join(current.alias("t"), "item_id")
               .where(F.expr(bronze.items_changed_condition())).count()) if target_exists else 0
    if new or changed:
        metrics = lake.merge_upsert(spark, args.lake, ITEMS, items, changed=bronze.items_changed_condition())
        inserted, updated = metrics.get("numTargetRowsInserted", 0), metrics.get("numTargetRowsUpdated", 0)
    else:
        inserted = updated = 0
    items.unpersist()
    summary.update({"items_in_batch": n_items, "items_inserted": inserted, "items_updated": updated,
                    "items_unchanged": n_items - inserted - updated})
    return summary, rejected


def _replace_quarantine(spark: SparkSession, args: IngestArgs, rows: DataFrame | None, sources: list[str]) -> bool:
    """Replace this run date's quarantine rows of these sources, unless exactly the same records (same
    source, record, reason) are there already: a rerun then keeps the first run's rows. Returns whether
    it wrote."""
    lake.ensure(spark, args.lake, QUARANTINE)
    quoted = ", ".join("'" + s.replace("'", "''") + "'" for s in sources)
    condition = f"run_date = '{args.run_date.isoformat()}' AND source IN ({quoted})"
    existing = lake.read(spark, args.lake, QUARANTINE).where(condition)
    compare = ["source", "record_number", "record", "reason", "detail"]
    empty = spark.createDataFrame([], QUARANTINE.schema)
    new = rows if rows is not None else empty
    if (new.select(compare).exceptAll(existing.select(compare)).limit(1).count() == 0
            and existing.select(compare).exceptAll(new.select(compare)).limit(1).count() == 0):
        return False
    lake.replace_where(spark, args.lake, QUARANTINE, new, condition)
    return True


def _remove(spark: SparkSession, path: str) -> None:
    """Delete the staging folder (any Hadoop filesystem)."""
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark._jsc.hadoopConfiguration())
    if fs.exists(hpath):
        fs.delete(hpath, True)


def parser():
    p = runtime.job_parser("ingest", "load event / item drops into bronze, quarantining bad records")
    p.add_argument("--run-date", type=runtime.parse_date, required=True,
                   help="the run's date: its quarantine partition, and the future-timestamp cutoff")
    p.add_argument("--events", nargs="+", default=[], metavar="PATH", help="event files or folders")
    p.add_argument("--items", nargs="+", default=[], metavar="PATH", help="item catalogue files or folders")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="input format (auto: from the extension; CSV with an Online Retail header is online-retail)")
    return p


def to_args(ns, common: runtime.JobArgs) -> IngestArgs:
    args = runtime.dataclass_from(IngestArgs, ns, common, events=tuple(ns.events), items=tuple(ns.items))
    # A missing, empty or garbled input is told before a Spark driver starts (run() looks again).
    resolve_inputs(args.events, args.format, "events")
    resolve_inputs(args.items, args.format, "items")
    return args


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("ingest", parser(), to_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
