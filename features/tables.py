"""Every warmstart table, declared once: path under the lake, grain, schema, keys, partition column and
how it is written. Writers (jobs/), readers, quality suites and tests all use these declarations.

Feature tables' schemas are produced by the functions in ``features/`` and must equal the schema
declared here (a test checks it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import types as T


@dataclass(frozen=True)
class Table:
    name: str                      # path under the lake root, e.g. "bronze/events"
    grain: str                     # one line: what one row is
    schema: T.StructType
    keys: tuple[str, ...]          # unique together (within the partition for partitioned tables)
    partition_by: str | None       # the partition column, or None
    write: str                     # "merge" | "replace_partition" | "append"
    properties: dict[str, str] = field(default_factory=dict)  # Delta table properties

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.schema.fields]


def _schema(*fields: tuple[str, T.DataType, bool]) -> T.StructType:
    return T.StructType([T.StructField(name, dtype, nullable) for name, dtype, nullable in fields])


S, L, I, D, TS, DT = T.StringType(), T.LongType(), T.IntegerType(), T.DoubleType(), T.TimestampType(), T.DateType()

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "return")

EVENTS = Table(
    name="bronze/events",
    grain="one behaviour event, event_id = sha256 of its source fields",
    schema=_schema(
        ("event_id", S, False),
        ("user_id", S, False),
        ("item_id", S, False),
        ("event_type", S, False),      # one of EVENT_TYPES
        ("event_ts", TS, False),       # UTC
        ("event_date", DT, False),     # date(event_ts) in UTC: the partition
        ("quantity", I, True),
        ("price", D, True),            # unit price in the shop's currency
        ("session_id", S, True),
        ("source", S, False),          # which input file the record came from
        ("ingested_at", TS, False),
        ("run_id", S, False),
    ),
    keys=("event_id",),
    partition_by="event_date",
    write="merge",
)

QUARANTINE = Table(
    name="bronze/events_quarantine",
    grain="one rejected input record with its reason code, per ingest run_date",
    schema=_schema(
        ("run_date", DT, False),
        ("run_id", S, False),
        ("source", S, False),          # input file
        ("record_number", L, True),    # 1-based position in the file (line for text formats)
        ("record", S, True),           # the raw record as text, truncated to 4 KB
        ("reason", S, False),          # a QUARANTINE_REASONS code
        ("detail", S, True),           # human-readable detail (which field, what value)
        ("quarantined_at", TS, False),
    ),
    keys=("run_id", "source", "record_number"),
    partition_by="run_date",
    write="replace_partition",
)

QUARANTINE_REASONS = (
    "malformed_record",          # unparseable line: wrong column count, bad encoding, truncated JSON
    "missing_user_id",
    "missing_item_id",
    "unparseable_timestamp",
    "timestamp_in_future",       # later than run_date + ingest.future_tolerance_days
    "unknown_event_type",
    "invalid_price",             # negative or non-numeric
    "invalid_quantity",          # non-numeric, zero, or negative outside a return
)

ITEMS = Table(
    name="bronze/items",
    grain="one item, its current attributes",
    schema=_schema(
        ("item_id", S, False),
        ("title", S, True),
        ("description", S, True),
        ("category", S, True),
        ("brand", S, True),
        ("price", D, True),
        ("updated_at", TS, False),
    ),
    keys=("item_id",),
    partition_by=None,
    write="merge",
    properties={"delta.enableChangeDataFeed": "true"},
)

# USER_SEQUENCES is the contract with training; keep its columns stable.
USER_SEQUENCES = Table(
    name="features/user_sequences",
    grain="one user per as_of_date: the user's last N interactions, oldest first",
    schema=_schema(
        ("user_id", S, False),
        ("as_of_date", DT, False),
        ("item_ids", T.ArrayType(S, False), False),
        ("event_types", T.ArrayType(S, False), False),
        ("event_ts", T.ArrayType(TS, False), False),
        ("sequence_length", I, False),
    ),
    keys=("user_id",),
    partition_by="as_of_date",
    write="replace_partition",
)

USER_CANDIDATES = Table(
    name="candidates/user_candidates",
    grain="one candidate item per user per run_date, ranked 1..K",
    schema=_schema(
        ("user_id", S, False),
        ("rank", I, False),
        ("item_id", S, False),
        ("score", T.FloatType(), False),
        ("strategy", S, False),        # "model" | "popular_fallback"
        ("model_version", S, True),
        ("generated_at", TS, False),
        ("run_date", DT, False),
    ),
    keys=("user_id", "rank"),
    partition_by="run_date",
    write="replace_partition",
)

PUBLISHED = Table(
    name="candidates/published",
    grain="one row per published run",
    schema=_schema(
        ("run_date", DT, False),
        ("table_version", L, False),   # the user_candidates Delta version online services read
        ("model_version", S, True),
        ("users", L, False),
        ("rows", L, False),
        ("run_id", S, False),
        ("published_at", TS, False),
    ),
    keys=("run_date", "table_version"),
    partition_by=None,
    write="append",
)

TABLES: dict[str, Table] = {t.name: t for t in (EVENTS, QUARANTINE, ITEMS, USER_SEQUENCES, USER_CANDIDATES, PUBLISHED)}


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(sorted(TABLES))}") from None
