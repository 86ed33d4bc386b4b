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
    # Columns declared after the table first shipped: nullable in Delta, added to an existing table by
    # jobs.lake.ensure; partitions written before them hold nulls there.
    added_later: tuple[str, ...] = ()
    # Columns of raw input text that may hold a user id inside them (the quarantine's records):
    # `warmstart forget` erases the rows whose text names the user (jobs/forget.py).
    raw_text: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Delta keeps min/max statistics of the first columns of every data file in its log, which a
        # VACUUM never removes: a table that holds user ids collects them on its other columns only, so
        # that an erased customer's id is not left in the log (docs/operations.md, "Erasing a customer").
        if self.personal and STATS_COLUMNS_KEY not in self.properties:
            keep = [f.name for f in self.schema.fields if f.name not in self.personal and f.name != self.partition_by
                    and isinstance(f.dataType, _STATS_TYPES)][:32]   # 32: Delta's default count of indexed columns
            object.__setattr__(self, "properties", {**self.properties, STATS_COLUMNS_KEY: ",".join(keep)})

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.schema.fields]

    @property
    def personal(self) -> tuple[str, ...]:
        """The columns that identify a customer: ``user_id`` and raw text that may contain one."""
        return (("user_id",) if any(f.name == "user_id" for f in self.schema.fields) else ()) + self.raw_text


STATS_COLUMNS_KEY = "delta.dataSkippingStatsColumns"
# the column types Delta keeps min/max statistics for (maps, arrays and binaries have none)
_STATS_TYPES = (T.StringType, T.LongType, T.IntegerType, T.DoubleType, T.FloatType, T.DecimalType, T.DateType,
                T.TimestampType, T.BooleanType)


def _schema(*fields: tuple[str, T.DataType, bool]) -> T.StructType:
    return T.StructType([T.StructField(name, dtype, nullable) for name, dtype, nullable in fields])


S, L, I, D, TS, DT = T.StringType(), T.LongType(), T.IntegerType(), T.DoubleType(), T.TimestampType(), T.DateType()


EVENTS = Table(
    name="bronze/events",
    grain="one behaviour event, event_id = sha256 of its source fields",
    schema=_schema(
        ("event_id", S, False),
        ("user_id", S, False),
        ("item_id", S, False),
        ("event_type", S, False),      # one of features.contract.EVENT_TYPES
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
    raw_text=("record", "detail"),
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

# Feature windows: name suffix -> days ending at as_of_date (inclusive); None = all history up to as_of.
FEATURE_WINDOWS: dict[str, int | None] = {"1d": 1, "7d": 7, "30d": 30, "90d": 90, "all": None}
# Column-name stem per event type: count_views_7d, count_add_to_carts_30d, ...
EVENT_COUNT_NAMES: dict[str, str] = {"view": "views", "click": "clicks", "add_to_cart": "add_to_carts",
                                     "purchase": "purchases", "return": "returns"}
MONEY = T.DecimalType(28, 4)   # daily sums are exact decimals so that re-summing days in any order is exact
SKETCH = T.BinaryType()        # a DataSketches HLL sketch (Spark's hll_sketch_agg), mergeable across days


def _per_type_counts(suffix: str = "") -> list[tuple[str, T.DataType, bool]]:
    return [(f"count_{n}{suffix}", L, False) for n in EVENT_COUNT_NAMES.values()] + [(f"count_events{suffix}", L, False)]


def _windowed(stem: str, dtype: T.DataType, nullable: bool = False) -> list[tuple[str, T.DataType, bool]]:
    return [(f"{stem}_{w}", dtype, nullable) for w in FEATURE_WINDOWS]


USER_DAILY = Table(
    name="features/user_daily",
    grain="one user per event_date: that day's counts, spend and mergeable sketches (the incremental layer)",
    schema=_schema(
        ("user_id", S, False),
        ("event_date", DT, False),
        *_per_type_counts(),
        ("spend", MONEY, False),                  # purchases' price*quantity minus returns'
        ("purchase_price_sum", MONEY, False),     # sum of unit prices of purchase events (for the average)
        ("purchase_price_count", L, False),       # purchase events with a price
        ("last_event_at", TS, False),
        ("last_purchase_at", TS, True),
        ("items_sketch", SKETCH, False),          # HLL of item_id
        ("category_counts", T.MapType(S, L), False),  # events per known category
        ("ingested_through", TS, False),          # max(ingested_at) of the events summarised
    ),
    keys=("user_id",),
    partition_by="event_date",
    write="replace_partition",
)

ITEM_DAILY = Table(
    name="features/item_daily",
    grain="one item per event_date: that day's counts, prices and a mergeable sketch of its users",
    schema=_schema(
        ("item_id", S, False),
        ("event_date", DT, False),
        *_per_type_counts(),
        ("users_sketch", SKETCH, False),          # HLL of user_id
        ("price_sum", MONEY, False),              # over events with a price
        ("price_count", L, False),
        ("price_min", D, True),
        ("price_max", D, True),
        ("first_event_at", TS, False),
        ("ingested_through", TS, False),
    ),
    keys=("item_id",),
    partition_by="event_date",
    write="replace_partition",
)

# The rolling state under the feature tables (features/state.py): one row per user / item per as_of_date
# with every windowed sum and the all-history aggregates. The nightly run gets D's state from B's state,
# the events B had not seen and the daily rows of the days leaving each window, without re-reading the
# history.


def _window_counts() -> list[tuple[str, T.DataType, bool]]:
    return [c for w in FEATURE_WINDOWS for c in _per_type_counts(f"_{w}")]


USER_STATE = Table(
    name="features/user_state",
    grain="one user (with any event before as_of_date + 1 day) per as_of_date: the rolling aggregates",
    schema=_schema(
        ("user_id", S, False),
        ("as_of_date", DT, False),
        *_window_counts(),
        *_windowed("spend", MONEY),               # net of returns, exact decimals
        ("purchase_price_sum", MONEY, False),     # all history
        ("purchase_price_count", L, False),
        ("last_event_at", TS, False),
        ("last_purchase_at", TS, True),
        ("category_counts", T.MapType(S, L), False),   # events per known category, all history
        ("items_sketch", SKETCH, False),               # HLL of item_id, all history
        # the last event_date of each known category: distinct categories over a window, exactly and
        # without re-reading the window's daily rows (null in partitions written before the column was added)
        ("category_last_dates", T.MapType(S, DT), True),
    ),
    keys=("user_id",),
    partition_by="as_of_date",
    write="replace_partition",
    added_later=("category_last_dates",),
)

ITEM_STATE = Table(
    name="features/item_state",
    grain="one item (with any event before as_of_date + 1 day) per as_of_date: the rolling aggregates",
    schema=_schema(
        ("item_id", S, False),
        ("as_of_date", DT, False),
        *_window_counts(),
        ("price_sum", MONEY, False),              # over events with a price, all history
        ("price_count", L, False),
        ("price_min", D, True),
        ("price_max", D, True),
        ("first_event_at", TS, False),
        ("users_sketch", SKETCH, False),          # HLL of user_id, all history
    ),
    keys=("item_id",),
    partition_by="as_of_date",
    write="replace_partition",
)

USER_FEATURES = Table(
    name="features/user_features",
    grain="one user (with any event before as_of_date + 1 day) per as_of_date",
    schema=_schema(
        ("user_id", S, False),
        ("as_of_date", DT, False),
        *[c for w in FEATURE_WINDOWS for c in _per_type_counts(f"_{w}")],
        ("last_event_at", TS, False),
        ("last_purchase_at", TS, True),
        ("days_since_last_event", I, False),
        ("days_since_last_purchase", I, True),    # null: never purchased
        *_windowed("spend", D),                   # net of returns, shop currency
        *_windowed("distinct_items", L),          # HLL estimate (exact below a few hundred)
        *_windowed("distinct_categories", L),     # exact (the union of the days' category names)
        ("avg_purchase_price", D, True),          # mean unit price of purchase events, all history
        ("top_category", S, True),                # most frequent known category (ties: smallest name)
        ("top_category_share", D, True),          # its share of the events with a known category
        ("is_cold_start", T.BooleanType(), False),  # count_events_all < features.cold_start_min_events
    ),
    keys=("user_id",),
    partition_by="as_of_date",
    write="replace_partition",
)

ITEM_FEATURES = Table(
    name="features/item_features",
    grain="one item (with any event before as_of_date + 1 day, or in the catalogue by then) per as_of_date",
    schema=_schema(
        ("item_id", S, False),
        ("as_of_date", DT, False),
        *[c for w in FEATURE_WINDOWS for c in _per_type_counts(f"_{w}")],
        *_windowed("distinct_users", L),          # HLL estimate
        ("conversion_rate_30d", D, False),        # smoothed purchases/views, Beta prior (features.conversion_prior_*)
        ("return_rate_all", D, True),             # returns / purchases; null: never purchased
        ("popularity_rank_30d", I, False),        # 1 = most purchased in 30 days (ties: events, then item_id)
        ("trend_7d_vs_30d", D, True),             # daily event rate over 7d / over 30d; null: no events in 30d
        ("price_min", D, True),                   # over events with a price, all history
        ("price_max", D, True),
        ("price_mean", D, True),
        ("catalog_price", D, True),               # bronze/items
        ("first_seen_at", TS, True),              # first event; null: catalogue only
        ("days_since_first_seen", I, True),
        ("title", S, True),
        ("description", S, True),
        ("category", S, True),
        ("brand", S, True),
    ),
    keys=("item_id",),
    partition_by="as_of_date",
    write="replace_partition",
)

USER_ITEM_FEATURES = Table(
    name="features/user_item_features",
    grain=("one candidate (user, item) per as_of_date: computed on the fly for the ranker's candidates, "
           "not stored (a full table would be users x items)"),
    schema=_schema(                               # features/historical.py: all counts before the cut-off
        ("user_id", S, False),
        ("item_id", S, False),
        ("as_of_date", DT, False),
        ("ui_baskets_with_item", L, False),       # the user's purchase baskets (distinct event_ts) with the item
        ("ui_events_with_item", L, False),        # the user's events of any type on the item
        ("ui_days_since_last_purchase", I, True),  # as_of_date - date of the last purchase; null: never bought
        ("ui_category_share", D, True),           # user's purchases in the item's category / with a known one
        ("ui_price_vs_user_mean", D, True),       # item's mean unit purchase price / the user's
        ("item_rebuy_rate", D, True),             # share of the item's buyers with >= 2 baskets of it
        ("item_buyers", L, False),                # distinct users who bought the item
    ),
    keys=("user_id", "item_id"),
    partition_by="as_of_date",
    write="replace_partition",
)

FEATURE_BUILDS = Table(
    name="features/builds",
    grain="one build of the feature tables for one as_of_date (the late-event watermark lives here)",
    schema=_schema(
        ("as_of_date", DT, False),
        ("run_id", S, False),
        ("mode", S, False),                        # "full" | "incremental"
        ("base_as_of_date", DT, True),             # the earlier build an incremental run extended
        ("events_version", L, False),              # bronze/events Delta version read
        ("ingested_through", TS, True),            # max(ingested_at) seen: the next run's late-event watermark
        ("rebuilt_dates", T.ArrayType(DT, False), False),  # daily partitions (re)built by this run
        ("late_dates", T.ArrayType(DT, False), False),     # of those, dates <= base that got late events
        ("built_at", TS, False),
    ),
    keys=("run_id",),
    partition_by=None,
    write="append",
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

TABLES: dict[str, Table] = {t.name: t for t in (EVENTS, QUARANTINE, ITEMS, USER_SEQUENCES, USER_CANDIDATES, PUBLISHED,
                                                  USER_DAILY, ITEM_DAILY, USER_STATE, ITEM_STATE, USER_FEATURES, ITEM_FEATURES,
                                                  USER_ITEM_FEATURES, FEATURE_BUILDS)}


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(sorted(TABLES))}") from None
