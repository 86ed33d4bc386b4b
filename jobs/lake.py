"""Delta Lake reads and writes for the declared tables (features/tables.py): the only place jobs touch
table storage. Every write is one Delta commit, so a job that dies leaves each table at its previous
version.

Two runs may write one table at once (features for two dates, score beside publish): Delta commits
optimistically and refuses the commit that conflicts with one made meanwhile. Every write here is
whole and idempotent (it replaces what it covers, or inserts keys not yet there), and a refused commit
wrote nothing, so the write is simply done again, after a short backoff (:func:`retried`).
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import random
import threading
import time
from typing import Any, Callable, TypeVar

from delta.exceptions import (ConcurrentAppendException, ConcurrentDeleteDeleteException,
                              ConcurrentDeleteReadException, ConcurrentTransactionException,
                              ConcurrentWriteException, DeltaConcurrentModificationException,
                              MetadataChangedException, ProtocolChangedException)
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.tables import Table

log = logging.getLogger("warmstart.lake")

CONFLICTS = (ConcurrentAppendException, ConcurrentDeleteReadException, ConcurrentDeleteDeleteException,
             ConcurrentTransactionException, ConcurrentWriteException, MetadataChangedException,
             ProtocolChangedException, DeltaConcurrentModificationException)
RETRIES = 5                 # with backoff 0.5, 1, 2, 4, 8 s (jittered): ~15 s for a writer to get through
_T = TypeVar("_T")


def retried(write: Callable[..., _T]) -> Callable[..., _T]:
    """``write`` again (up to RETRIES times, exponential backoff with jitter) when Delta refuses its
    commit because another writer's commit conflicts with it; the last refusal is raised. Only for
    whole, idempotent writes: a refused commit wrote nothing, and the retry reads the table anew."""
    @functools.wraps(write)
    def wrapper(*args, **kwargs):
        if getattr(_retrying, "active", False):   # inside another retried write (its ensure): that one retries
            return write(*args, **kwargs)
        _retrying.active = True
        try:
            return _with_retries(write, args, kwargs)
        finally:
            _retrying.active = False
    return wrapper


_retrying = threading.local()   # per thread: concurrent writers in one driver each retry their own write


def _with_retries(write: Callable[..., _T], args: tuple, kwargs: dict) -> _T:
    for attempt in range(RETRIES + 1):
        try:
            return write(*args, **kwargs)
        except CONFLICTS as exc:
            if attempt == RETRIES:
                raise
            delay = 0.5 * 2 ** attempt * random.uniform(0.75, 1.25)
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            log.warning("%s: %s (%s); retrying in %.1f s (%d/%d)", write.__name__, type(exc).__name__,
                        first, delay, attempt + 1, RETRIES)
            time.sleep(delay)
    raise AssertionError("unreachable")


def path_of(lake: str, table: Table) -> str:
    return f"{lake}/{table.name}"


def exists(spark: SparkSession, lake: str, table: Table) -> bool:
    return DeltaTable.isDeltaTable(spark, path_of(lake, table))


def version(spark: SparkSession, lake: str, table: Table) -> int | None:
    """The table's latest Delta version, or None if it does not exist yet."""
    if not exists(spark, lake, table):
        return None
    return DeltaTable.forPath(spark, path_of(lake, table)).history(1).select("version").first()[0]


@retried
def ensure(spark: SparkSession, lake: str, table: Table) -> DeltaTable:
    """Create the table empty with its declared schema, partitioning and properties if it is missing;
    add the ``Table.added_later`` columns an existing table lacks (nullable, so the rows already there
    read them as null). Any other difference from the declared schema is left for the write to reject."""
    builder = DeltaTable.createIfNotExists(spark).location(path_of(lake, table)).addColumns(table.schema)
    if table.partition_by:
        builder = builder.partitionedBy(table.partition_by)
    for key, value in table.properties.items():
        builder = builder.property(key, value)
    target = builder.execute()
    present = set(target.toDF().columns)
    missing = [f for f in table.schema.fields if f.name in table.added_later and f.name not in present]
    if missing:
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE delta.`{path_of(lake, table)}` ADD COLUMNS ({columns})")
        target = DeltaTable.forPath(spark, path_of(lake, table))
    return target


def read(spark: SparkSession, lake: str, table: Table, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path_of(lake, table))


def conform(df: DataFrame, table: Table) -> DataFrame:
    """Select and cast ``df`` to the table's declared columns, in order."""
    missing = [c for c in table.columns if c not in df.columns]
    if missing:
        raise ValueError(f"{table.name}: frame lacks declared columns {missing}")
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in table.schema.fields])


@retried
def merge_insert_new(spark: SparkSession, lake: str, table: Table, df: DataFrame,
                     partition_values: list[Any] | None = None) -> dict[str, int]:
    """MERGE ``df`` into ``table`` on its keys, inserting only rows whose key is new (re-delivered rows
    are not duplicated). ``partition_values`` narrows the target scan to the partitions ``df`` touches.
    Returns Delta's operation metrics (inserted rows)."""
    target = ensure(spark, lake, table)
    before = version(spark, lake, table)
    cond = " AND ".join(f"t.{k} = s.{k}" for k in table.keys)
    if table.partition_by and partition_values:
        literals = ", ".join(f"'{v}'" for v in partition_values)
        cond = f"t.{table.partition_by} IN ({literals}) AND " + cond
    (target.alias("t").merge(conform(df, table).alias("s"), cond)
     .whenNotMatchedInsertAll().execute())
    return _metrics_since(target, before)


@retried
def merge_upsert(spark: SparkSession, lake: str, table: Table, df: DataFrame, changed: str | None = None) -> dict[str, int]:
    """MERGE ``df`` into ``table`` on its keys: update matched rows (only when ``changed`` — a SQL
    condition over t and s — holds, if given), insert new ones."""
    target = ensure(spark, lake, table)
    before = version(spark, lake, table)
    cond = " AND ".join(f"t.{k} = s.{k}" for k in table.keys)
    merge = target.alias("t").merge(conform(df, table).alias("s"), cond)
    merge = merge.whenMatchedUpdateAll(condition=changed) if changed else merge.whenMatchedUpdateAll()
    merge.whenNotMatchedInsertAll().execute()
    return _metrics_since(target, before)


@retried
def replace_partition(spark: SparkSession, lake: str, table: Table, df: DataFrame, value: dt.date | str,
                      user_metadata: str | None = None) -> int:
    """Atomically replace one partition of ``table`` with ``df`` (idempotent per partition value).
    ``user_metadata`` (text, e.g. JSON) is stored with the commit (``DESCRIBE HISTORY``'s userMetadata).
    Returns the new table version."""
    if not table.partition_by:
        raise ValueError(f"{table.name} is not partitioned")
    ensure(spark, lake, table)
    writer = (conform(df, table).write.format("delta").mode("overwrite")
              .option("replaceWhere", f"{table.partition_by} = '{value}'"))
    if user_metadata is not None:
        writer = writer.option("userMetadata", user_metadata)
    writer.save(path_of(lake, table))
    return version(spark, lake, table)


@retried
def replace_where(spark: SparkSession, lake: str, table: Table, df: DataFrame, condition: str) -> int:
    """Atomically replace the rows of ``table`` matching ``condition`` (a SQL predicate on the partition
    column, e.g. ``event_date IN ('2024-01-01', '2024-01-03')``) with ``df``: several partitions in one
    commit. Returns the new table version.

    Written with Delta's optimized write: rows are shuffled by partition value before the write, so
    each partition gets one file (or a few of the target size) rather than one from every task. A full
    feature build writes 90+ daily partitions at once; without it each got up to one file per shuffle
    partition, and every nightly run re-reads 90 of them (docs/features.md)."""
    ensure(spark, lake, table)
    (conform(df, table).write.format("delta").mode("overwrite")
     .option("replaceWhere", condition)
     .option("optimizeWrite", "true")
     .save(path_of(lake, table)))
    return version(spark, lake, table)


@retried
def append(spark: SparkSession, lake: str, table: Table, df: DataFrame) -> int:
    ensure(spark, lake, table)
    conform(df, table).write.format("delta").mode("append").save(path_of(lake, table))
    return version(spark, lake, table)


def _metrics_since(target: DeltaTable, before: int | None) -> dict[str, int]:
    """Operation metrics of the commit after ``before``; empty if the MERGE committed nothing."""
    row = target.history(1).select("version", "operationMetrics").first()
    if row is None or row[0] == before:
        return {}
    return {k: int(v) for k, v in (row[1] or {}).items() if str(v).isdigit()}


def snapshot_files(lake: str, table: Table, version: int | None = None,
                   partition_value: Any | None = None) -> tuple[int, list[str]]:
    """The table's Delta version (latest if None) and the data-file URIs of that snapshot, narrowed to
    one partition value if given. Raises FileNotFoundError if the table does not exist. Spark-free
    (delta-rs), like :func:`read_pandas`: for the Ray jobs that must not start a JVM (training, evaluation)."""
    from deltalake import DeltaTable as RsTable

    if not RsTable.is_deltatable(path_of(lake, table)):
        raise FileNotFoundError(f"no Delta table at {path_of(lake, table)}")
    snap = RsTable(path_of(lake, table), version=version)
    filters = [(table.partition_by, "=", str(partition_value))] if partition_value is not None else None
    return snap.version(), snap.file_uris(partition_filters=filters)


def read_pandas(lake: str, table: Table, version: int | None = None, columns: list[str] | None = None,
                filters: list[tuple] | None = None):
    """(version, pandas DataFrame) of a small table (the item catalogue) without Spark; ``filters`` as
    delta-rs takes them, e.g. ``[("event_date", "<=", date)]`` (partitions are pruned)."""
    from deltalake import DeltaTable as RsTable

    if not RsTable.is_deltatable(path_of(lake, table)):
        raise FileNotFoundError(f"no Delta table at {path_of(lake, table)}")
    snap = RsTable(path_of(lake, table), version=version)
    return snap.version(), snap.to_pandas(columns=columns, filters=filters)
