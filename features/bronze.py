"""Raw input records -> bronze rows: parsing each source format, validating every record with a reason
code, the deterministic ``event_id``, within-batch de-duplication and the item attributes. Pure
DataFrame -> DataFrame functions; ``jobs/ingest.py`` reads the files, calls these, and writes
``bronze/events``, ``bronze/events_quarantine`` and ``bronze/items`` (features/tables.py).

The shape in the middle is the *candidate* frame (:data:`CANDIDATE_COLUMNS`): one row per input record
(text line or Parquet row), whatever its format, with

- where it came from: ``source`` (file URI), ``record_number`` (1-based line / row), ``record`` (raw text),
- ``malformed``: why the record could not be split into fields at all (null when it could),
- the event fields, typed where they parsed, with the raw text kept beside the typed value
  (``event_ts_raw``/``event_ts``, ``quantity_raw``/``quantity``, ``price_raw``/``price``) so that
  validation tells "missing" from "not a number",
- ``hash_fields``: the source fields the event id is the sha256 of, and ``item_title`` (Online Retail's
  Description, which feeds ``bronze/items``).

:func:`validate_events` turns candidates into *validated* rows (candidate + ``event_id``,
``event_date``, ``reason``, ``detail``); a row is good when ``reason`` is null.

Reason precedence (the first that applies wins, so a record has exactly one reason):
``malformed_record``, ``missing_user_id``, ``missing_item_id``, ``unparseable_timestamp``,
``timestamp_in_future``, ``unknown_event_type``, ``invalid_price``, ``invalid_quantity``.

Online Retail (UCI, both files and both header spellings) maps as: StockCode -> item_id,
CustomerID -> user_id (digits only, "17850", never "17850.0"), InvoiceDate read as Europe/London wall
time -> event_ts in UTC, invoice -> session_id, a cancellation (invoice starting with "C", or a negative
Quantity) -> ``return`` with the quantity stored positive, anything else -> ``purchase``. Its event id
hashes invoice, stock code, signed quantity, invoice time, unit price and customer id: the fields that
are identical when a row is re-delivered (the two files' overlap week). Description and Country are
left out: Description is an item attribute, not part of the purchase. An exact duplicate line within a
file hashes to the same id and is counted as a duplicate, not a second purchase (SOURCE.md lists exact
duplicate lines among the dirt; the shop's own invoices never repeat a line on purpose, as far as the
data shows, and counting them keeps ``read = inserted + duplicates + quarantined`` exact).
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.contract import EVENT_TYPES
from features.tables import EVENTS, ITEMS, QUARANTINE, QUARANTINE_REASONS

CANONICAL_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "event_ts", "quantity", "price", "session_id")
REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "event_ts")
CANONICAL_ITEM_COLUMNS = ("item_id", "title", "description", "category", "brand", "price", "updated_at")
REQUIRED_ITEM_COLUMNS = ("item_id",)

# The two spellings of the Online Retail header (online_retail.csv.gz, online_retail_ii_*.csv.gz).
ONLINE_RETAIL_HEADERS = (
    ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"),
    ("Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"),
)
ONLINE_RETAIL_TIME_FORMAT = "yyyy-MM-dd HH:mm:ss"

CANDIDATE_COLUMNS = ("source", "record_number", "record", "malformed", "user_id", "item_id", "event_type",
                     "event_ts_raw", "event_ts", "quantity_raw", "quantity", "price_raw", "price", "session_id",
                     "hash_fields", "item_title")
RECORD_MAX_CHARS = 4096        # quarantine keeps at most this much of a raw record

# Online Retail has no category; a keyword heuristic over Description gives one (first match in this
# order wins; word-boundary matches, so RING does not match STRING). Non-product stock codes (POST, DOT,
# M, BANK CHARGES, AMAZONFEE, gift vouchers...: they do not start with a digit) are "non_product".
ONLINE_RETAIL_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("christmas", r"CHRISTMAS|XMAS|ADVENT|BAUBLE|SANTA|REINDEER|SNOWFLAKE|NATIVITY"),
    ("bags", r"BAGS?|PURSE|TOTE"),
    ("lighting", r"LIGHTS?|T-LIGHTS?|LANTERN|CANDLES?|LAMP|NIGHTLIGHT"),
    ("cards_and_wrap", r"CARDS?|WRAP|WRAPPING|GIFT TAGS?|ENVELOPES?|RIBBONS?|TISSUES?"),
    ("kitchen_and_dining", r"MUGS?|CUPS?|TEACUPS?|TEAPOT|PLATES?|BOWLS?|SPOONS?|CAKE|CAKESTAND|BAKING|JARS?|LUNCH BOX|"
                           r"KITCHEN|TINS?|BOTTLES?|NAPKINS?|CUTLERY|BEAKERS?|TRAY|COASTERS?|APRON|EGG"),
    ("stationery", r"PENS?|PENCILS?|NOTEBOOK|ERASERS?|STICKERS?|CHALK|MEMO|JOURNAL|RULER"),
    ("toys_and_games", r"TOYS?|DOLLS?|GAMES?|PUZZLES?|SKITTLES|JIGSAW|DOMINOES|SPACEBOY|CRAYONS|PLAYHOUSE"),
    ("jewellery_and_accessories", r"NECKLACE|BRACELET|EARRINGS?|RING|BROOCH|HAIR|UMBRELLA|GLOVES|SCARF|CHARM"),
    ("garden", r"GARDEN|PLANT|PLANTER|FLOWER POT|BIRD|WATERING|HERB"),
    ("storage", r"BOX|BOXES|BASKETS?|STORAGE|DRAWER|CASE|HOLDER|RACK|HOOKS?|PEGS?"),
    ("home_decor", r"FRAMES?|SIGN|CLOCK|MIRROR|HEART|CUSHION|DOORMAT|ORNAMENT|DECORATION|WREATH|GARLAND|"
                   r"BUNTING|DOORSTOP|VASE|PLAQUE|CHIME|THROW|BLANKET|QUILT"),
)


def number_lines(lines: DataFrame) -> DataFrame:
    """Give each text line its 1-based line number within its file.

    ``lines``: ``source`` (file), ``block_start`` (the byte offset of the split the line was read from:
    Spark's ``_metadata.file_block_start``), ``line_id`` (``monotonically_increasing_id()``: consecutive
    within a split) and ``value``. A file split into several blocks is numbered across them in offset
    order. Returns ``source, record_number, value``."""
    blocks = (lines.groupBy("source", "block_start")
              .agg(F.count(F.lit(1)).alias("lines_in_block"), F.min("line_id").alias("first_line_id")))
    earlier = Window.partitionBy("source").orderBy("block_start").rowsBetween(Window.unboundedPreceding, -1)
    blocks = blocks.withColumn("lines_before", F.coalesce(F.sum("lines_in_block").over(earlier), F.lit(0)))
    return (lines.join(F.broadcast(blocks), ["source", "block_start"])
            .select("source",
                    (F.col("lines_before") + F.col("line_id") - F.col("first_line_id") + 1).cast("long")
                    .alias("record_number"),
                    "value"))


def data_lines(numbered: DataFrame, has_header: bool) -> DataFrame:
    """The lines that are records: not the header line, not blank (a blank line carries no record)."""
    out = numbered.where(F.trim(F.col("value")) != "")
    return out.where(F.col("record_number") > 1) if has_header else out


def _text_problem(value: Column, max_chars: int) -> Column:
    # Spark's text reader keeps a line's bytes as they are: invalid UTF-8 is detected here, not decoded
    return (F.when(~F.is_valid_utf8(value), F.lit("bytes that are not UTF-8"))
            .when(F.length(value) > max_chars, F.lit(f"line longer than {max_chars} characters")))


def _csv_problem(value: Column, expected_fields: int, max_chars: int) -> Column:
    """Why a CSV line cannot be split into exactly ``expected_fields`` fields (null if it can). Quoted
    sections ("" escapes included) are removed before counting separators; a quote left over means an
    unterminated quoted field (a truncated line)."""
    unquoted = F.regexp_replace(value, r'"[^"]*"', "")
    fields = F.size(F.split(unquoted, ",", -1))
    return F.coalesce(
        _text_problem(value, max_chars),
        F.when(unquoted.contains('"'), F.lit("unterminated quoted field (truncated line?)")),
        F.when(fields != expected_fields,
               F.format_string(f"%d fields, expected {expected_fields}", fields)))


def _split_csv(value: Column, names: list[str]) -> Column:
    ddl = ", ".join(f"`{n}` STRING" for n in names)
    # RFC 4180 quoting ("" inside quotes); empty fields read as null
    return F.from_csv(value, ddl, {"escape": '"', "mode": "PERMISSIVE"})


def normalize_id(value: Column) -> Column:
    """Ids are trimmed strings; an empty id is null; a number written as a float ("17850.0", what a
    spreadsheet export makes of an integer column with blanks) becomes its integer digits."""
    text = F.trim(value.cast("string"))
    text = F.when(text.rlike(r"^-?\d+\.0+$"), F.regexp_extract(text, r"^(-?\d+)\.0+$", 1)).otherwise(text)
    return F.when(text == "", F.lit(None)).otherwise(text)


def _raw_text(value: Column) -> Column:
    text = F.trim(value.cast("string"))
    return F.when(text == "", F.lit(None)).otherwise(text)


def _integer(raw: Column) -> Column:
    """An integer from text ("3", "3.0", " 3 "); null when the text is not a whole number."""
    number = raw.try_cast("double")
    return F.when((number == F.floor(number)) & (F.abs(number) < 2**31), number.cast("int"))


def _number(raw: Column) -> Column:
    number = raw.try_cast("double")
    return F.when(~F.isnan(number) & (F.abs(number) < float("inf")), number)


def _hash_text(value: Column) -> Column:
    return value.cast("string")


def _ts_hash_text(ts: Column) -> Column:
    return F.unix_micros(ts).cast("string")      # time-zone independent


def _price_hash_text(price: Column) -> Column:
    return price.cast("decimal(20,6)").cast("string")   # "2.5" and 2.50 are the same price


def canonical_candidates(fields: DataFrame) -> DataFrame:
    """Candidates from records in the DESIGN event schema, whatever their format: ``fields`` has
    ``source, record_number, record, malformed`` and the event columns (``quantity``, ``price``,
    ``session_id`` may be missing), of any type (text from CSV / JSON, typed from Parquet)."""
    def col(name: str) -> Column:
        return F.col(name) if name in fields.columns else F.lit(None).cast("string")

    event_type = F.lower(_raw_text(col("event_type")))
    ts_raw = _raw_text(col("event_ts"))
    ts = col("event_ts").try_cast("timestamp") if "event_ts" in fields.columns else F.lit(None).cast("timestamp")
    q_raw = _raw_text(col("quantity"))
    q = _integer(q_raw)
    quantity = F.when(event_type == "return", F.abs(q)).otherwise(q)    # returns are stored positive
    p_raw = _raw_text(col("price"))
    user_id, item_id, session_id = normalize_id(col("user_id")), normalize_id(col("item_id")), _raw_text(col("session_id"))
    hash_fields = F.array(user_id, item_id, event_type, _ts_hash_text(ts), _hash_text(quantity),
                          _price_hash_text(_number(p_raw)), session_id)
    return _candidates(fields, record=F.col("record").cast("string"), user_id=user_id, item_id=item_id,
                       event_type=event_type, event_ts_raw=ts_raw, event_ts=ts, quantity_raw=q_raw, quantity=quantity,
                       price_raw=p_raw, price=_number(p_raw), session_id=session_id, hash_fields=hash_fields,
                       item_title=F.lit(None).cast("string"))


def _candidates(frame: DataFrame, **columns: Column) -> DataFrame:
    """``frame`` as a candidate frame: the :data:`CANDIDATE_COLUMNS` in order, each from ``columns`` or,
    where not given there, ``frame``'s column of that name."""
    return frame.select(*[columns[c].alias(c) if c in columns else F.col(c) for c in CANDIDATE_COLUMNS])


def csv_fields(lines: DataFrame, header: list[str], max_line_chars: int) -> DataFrame:
    """Split numbered CSV data lines (``source, record_number, value``) into the header's columns."""
    parsed = _split_csv(F.col("value"), header)
    return lines.select("source", "record_number", F.col("value").alias("record"),
                        _csv_problem(F.col("value"), len(header), max_line_chars).alias("malformed"),
                        *[parsed[n].alias(n) for n in header])


def jsonl_fields(lines: DataFrame, columns: tuple[str, ...], max_line_chars: int) -> DataFrame:
    """Parse numbered JSON lines into ``columns`` (text; numbers keep their JSON spelling). A line that
    is not a JSON object is malformed."""
    doc = F.expr("try_parse_json(value)")
    problem = F.coalesce(
        _text_problem(F.col("value"), max_line_chars),
        F.when(doc.isNull(), F.lit("not valid JSON (truncated line?)")),
        F.when(~F.ltrim(F.col("value")).startswith("{"), F.lit("JSON value is not an object")))
    return (lines.withColumn("_doc", doc)
            .select("source", "record_number", F.col("value").alias("record"), problem.alias("malformed"),
                    *[F.expr(f"try_variant_get(_doc, '$.{c}', 'string')").alias(c) for c in columns]))


def parquet_fields(rows: DataFrame) -> DataFrame:
    """Parquet rows with ``source`` and ``record_number`` (``_metadata.row_index + 1``) added by the
    reader: the record is the row as JSON; Parquet rows are never malformed line by line."""
    data_cols = [c for c in rows.columns if c not in ("source", "record_number")]
    return rows.select("source", "record_number",
                       F.to_json(F.struct(*[F.col(c) for c in data_cols])).alias("record"),
                       F.lit(None).cast("string").alias("malformed"), *data_cols)


def online_retail_candidates(lines: DataFrame, *, timezone: str, max_line_chars: int) -> DataFrame:
    """Candidates from numbered Online Retail CSV data lines (either header spelling: the columns are in
    the same order in both files)."""
    names = ["invoice", "stock_code", "description", "quantity", "invoice_date", "unit_price", "customer_id", "country"]
    parsed = _split_csv(F.col("value"), names)
    invoice = _raw_text(parsed["invoice"])
    q_raw = _raw_text(parsed["quantity"])
    q = _integer(q_raw)
    date_raw = _raw_text(parsed["invoice_date"])
    local = F.coalesce(F.try_to_timestamp(date_raw, F.lit(ONLINE_RETAIL_TIME_FORMAT)), date_raw.try_cast("timestamp"))
    ts = F.to_utc_timestamp(local, timezone)
    p_raw = _raw_text(parsed["unit_price"])
    price = _number(p_raw)
    user_id = normalize_id(parsed["customer_id"])
    item_id = normalize_id(parsed["stock_code"])
    is_return = F.upper(F.coalesce(invoice, F.lit(""))).startswith("C") | (F.coalesce(q, F.lit(0)) < 0)
    hash_fields = F.array(F.lit("online-retail"), invoice, item_id, F.coalesce(_hash_text(q), q_raw),
                          F.coalesce(_ts_hash_text(ts), date_raw), F.coalesce(_price_hash_text(price), p_raw), user_id)
    return _candidates(
        lines, record=F.col("value"), malformed=_csv_problem(F.col("value"), len(names), max_line_chars),
        user_id=user_id, item_id=item_id, event_type=F.when(is_return, F.lit("return")).otherwise(F.lit("purchase")),
        event_ts_raw=date_raw, event_ts=ts, quantity_raw=q_raw, quantity=F.abs(q), price_raw=p_raw, price=price,
        session_id=invoice, hash_fields=hash_fields, item_title=_raw_text(parsed["description"]))


def future_cutoff(run_date: dt.date, future_tolerance_days: int) -> dt.datetime:
    """Events at or after this instant (UTC) are in the future for a run of ``run_date``: midnight
    starting ``run_date`` plus the tolerance (1 day: anything on the run date itself is accepted)."""
    return dt.datetime.combine(run_date + dt.timedelta(days=future_tolerance_days), dt.time(), dt.timezone.utc)


def validate_events(candidates: DataFrame, *, run_date: dt.date, future_tolerance_days: int) -> DataFrame:
    """Candidates + ``reason`` / ``detail`` (null when the event is good), ``event_id`` and ``event_date``."""
    cutoff = future_cutoff(run_date, future_tolerance_days)
    c = F.col
    checks: list[tuple[str, Column, Column]] = [
        ("malformed_record", c("malformed").isNotNull(), c("malformed")),
        ("missing_user_id", c("user_id").isNull(), F.lit("user_id is empty")),
        ("missing_item_id", c("item_id").isNull(), F.lit("item_id is empty")),
        ("unparseable_timestamp", c("event_ts").isNull(),
         F.when(c("event_ts_raw").isNull(), F.lit("event_ts is empty"))
         .otherwise(F.format_string("event_ts %s is not a timestamp", _quoted(c("event_ts_raw"))))),
        ("timestamp_in_future", c("event_ts") >= F.lit(cutoff),
         F.format_string(f"event_ts %s is at or after {cutoff:%Y-%m-%dT%H:%M:%SZ} (run_date + "
                         f"{future_tolerance_days} day(s))", F.date_format(c("event_ts"), "yyyy-MM-dd'T'HH:mm:ss'Z'"))),
        ("unknown_event_type", c("event_type").isNull() | ~c("event_type").isin(*EVENT_TYPES),
         F.format_string(f"event_type %s is not one of {', '.join(EVENT_TYPES)}", _quoted(c("event_type")))),
        ("invalid_price", c("price_raw").isNotNull() & (c("price").isNull() | (c("price") < 0)),
         F.format_string("price %s is not a non-negative number", _quoted(c("price_raw")))),
        ("invalid_quantity", c("quantity_raw").isNotNull() & (c("quantity").isNull() | (c("quantity") <= 0)),
         F.format_string("quantity %s is not a positive whole number", _quoted(c("quantity_raw")))),
    ]
    assert tuple(name for name, _, _ in checks) == QUARANTINE_REASONS, "keep checks in step with QUARANTINE_REASONS"
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for name, failed, why in reversed(checks):      # build inside out: the first check wins
        reason = F.when(failed, F.lit(name)).otherwise(reason)
        detail = F.when(failed, why).otherwise(detail)
    return candidates.select(
        *candidates.columns,
        F.sha2(F.to_json(c("hash_fields")), 256).alias("event_id"),
        F.to_date(c("event_ts")).alias("event_date"),
        reason.alias("reason"), detail.alias("detail"))


def _quoted(value: Column) -> Column:
    return F.concat(F.lit("'"), F.coalesce(F.substring(value, 1, 80), F.lit("")), F.lit("'"))


def dedupe_events(good: DataFrame, *, run_id: str, ingested_at: dt.datetime) -> DataFrame:
    """Good validated rows -> bronze/events rows, one per ``event_id``. Of rows sharing an id (exact
    re-deliveries) the one from the first source, then the first record, is kept, so the choice does
    not depend on partitioning."""
    first = Window.partitionBy("event_id").orderBy("source", "record_number")
    kept = good.withColumn("_n", F.row_number().over(first)).where(F.col("_n") == 1)
    return kept.select(
        *[F.col(n) for n in ("event_id", "user_id", "item_id", "event_type", "event_ts", "event_date",
                             "quantity", "price", "session_id", "source")],
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"), F.lit(run_id).alias("run_id"),
    ).select(*EVENTS.columns)


def quarantine_rows(rejected: DataFrame, *, run_date: dt.date, run_id: str, quarantined_at: dt.datetime) -> DataFrame:
    """Rejected validated rows (events or items) -> bronze/events_quarantine rows."""
    return rejected.select(
        F.lit(run_date).alias("run_date"), F.lit(run_id).alias("run_id"), "source", "record_number",
        F.substring(F.make_valid_utf8(F.col("record")), 1, RECORD_MAX_CHARS).alias("record"), "reason", "detail",
        F.lit(quarantined_at).cast("timestamp").alias("quarantined_at"),
    ).select(*QUARANTINE.columns)


def online_retail_category(stock_code: Column, title: Column) -> Column:
    """The keyword heuristic of :data:`ONLINE_RETAIL_CATEGORIES` (null when nothing matches)."""
    text = F.upper(F.coalesce(title, F.lit("")))
    category: Column = F.lit(None).cast("string")
    for name, pattern in reversed(ONLINE_RETAIL_CATEGORIES):
        category = F.when(text.rlike(rf"(^|[^A-Z])({pattern})([^A-Z]|$)"), F.lit(name)).otherwise(category)
    return F.when(~stock_code.rlike(r"^\d"), F.lit("non_product")).otherwise(category)


def online_retail_items(validated: DataFrame) -> DataFrame:
    """bronze/items rows from Online Retail lines: per StockCode its latest non-empty Description (title),
    its latest unit price on a purchase with a positive price, the category heuristic, and
    ``updated_at`` = its latest invoice time. Lines quarantined for the customer id still describe the
    item, so every line that parsed (item id and time present) contributes."""
    rows = validated.where(F.col("malformed").isNull() & F.col("item_id").isNotNull() & F.col("event_ts").isNotNull())
    latest = F.struct("event_ts", "item_title")     # ties at one time: the larger text, deterministically
    priced = (F.col("event_type") == "purchase") & (F.col("price") > 0)
    items = rows.groupBy("item_id").agg(
        F.max_by(F.col("item_title"), F.when(F.col("item_title").isNotNull(), latest)).alias("title"),
        F.max_by(F.col("price"), F.when(priced, F.struct("event_ts", "price"))).alias("price"),
        F.max("event_ts").alias("updated_at"))
    return items.select(
        "item_id", "title", F.lit(None).cast("string").alias("description"),
        online_retail_category(F.col("item_id"), F.col("title")).alias("category"),
        F.lit(None).cast("string").alias("brand"), "price", "updated_at").select(*ITEMS.columns)


def validate_items(fields: DataFrame, *, default_updated_at: dt.datetime) -> DataFrame:
    """Item records in the DESIGN item schema (``source, record_number, record, malformed`` + item columns,
    any types) -> item columns + ``reason`` / ``detail``. A missing ``updated_at`` means
    ``default_updated_at`` (the run date: the drop's own date)."""
    def col(name: str) -> Column:
        return F.col(name) if name in fields.columns else F.lit(None).cast("string")

    ts_raw = _raw_text(col("updated_at"))
    ts = F.when(ts_raw.isNull(), F.lit(default_updated_at).cast("timestamp")).otherwise(col("updated_at").try_cast("timestamp"))
    p_raw = _raw_text(col("price"))
    c = F.col
    checks = [
        ("malformed_record", c("malformed").isNotNull(), c("malformed")),
        ("missing_item_id", c("item_id").isNull(), F.lit("item_id is empty")),
        ("unparseable_timestamp", c("updated_at").isNull(),
         F.format_string("updated_at %s is not a timestamp", _quoted(c("_updated_raw")))),
        ("invalid_price", c("_price_raw").isNotNull() & (c("price").isNull() | (c("price") < 0)),
         F.format_string("price %s is not a non-negative number", _quoted(c("_price_raw")))),
    ]
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for name, failed, why in reversed(checks):
        reason = F.when(failed, F.lit(name)).otherwise(reason)
        detail = F.when(failed, why).otherwise(detail)
    typed = fields.select(
        "source", "record_number", F.col("record").cast("string").alias("record"), "malformed",
        normalize_id(col("item_id")).alias("item_id"), _raw_text(col("title")).alias("title"),
        _raw_text(col("description")).alias("description"), _raw_text(col("category")).alias("category"),
        _raw_text(col("brand")).alias("brand"), _number(p_raw).alias("price"), p_raw.alias("_price_raw"),
        ts.alias("updated_at"), ts_raw.alias("_updated_raw"))
    return typed.select(*[x for x in typed.columns if not x.startswith("_")], reason.alias("reason"), detail.alias("detail"))


def latest_items(good_items: DataFrame) -> DataFrame:
    """One row per item_id: the latest ``updated_at`` (ties: the first source and record)."""
    w = Window.partitionBy("item_id").orderBy(F.desc("updated_at"), "source", "record_number")
    return (good_items.withColumn("_n", F.row_number().over(w)).where(F.col("_n") == 1).select(*ITEMS.columns))


def items_changed_condition() -> str:
    """MERGE condition (target t, source s) for updating an item: the source is not older and an
    attribute differs (null-safe), so a re-delivered or older catalogue rewrites nothing."""
    same = " AND ".join(f"t.{c} <=> s.{c}" for c in ("title", "description", "category", "brand", "price"))
    return f"s.updated_at >= t.updated_at AND NOT ({same})"
