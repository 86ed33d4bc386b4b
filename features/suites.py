"""Data-quality suites as code: one list of :class:`Check` per declared table (``features/tables.py``),
keyed by the table's name. ``features/quality.py`` turns a suite into a few Spark aggregates plus a
Great Expectations suite; ``jobs/validate.py`` runs it for one partition, and ``jobs/publish.py`` runs
the candidates' suite as the gate before a run is served.

A check says *what* must hold (kind + columns + parameters) and how bad a failure is (``severity``):
``critical`` fails the run (exit 3), ``warning`` is only reported. Both the severities and the
thresholds that checks name (``threshold="..."``) come from the configuration (``quality:``, and
``publish:`` for the candidates' coverage and short lists), so an operator can promote a warning to a
failure (or relax a band) without touching code:

    warmstart validate --table bronze/events --run-date 2011-12-09 quality.severity.bronze_events.price_positive=critical

Kinds (what one check measures in the aggregates, and the range GX expects it in):
- ``not_null``      rows where ``column`` is null                            expect 0
- ``unique``        rows minus distinct ``columns`` (the table's keys)        expect 0
- ``in_set``        non-null rows whose ``column`` is not in ``values``       expect 0
- ``between``       non-null rows outside [min_value, max_value]              expect 0
- ``matches``       non-null rows not matching ``pattern`` (a threshold name) expect 0
- ``not_matches``   non-null rows matching ``pattern``                        expect 0
- ``rows_satisfy``  rows where the SQL ``predicate`` is false                 expect 0
- ``groups_satisfy`` groups of the ``by`` columns where the SQL ``predicate`` over aggregates of the
                    group's rows is false                                     expect 0, or with
                    ``max_share`` (a threshold name) their share of the groups expect <= it
- ``row_count``     rows of the partition                                    expect within [min_value, max_value]
- ``coverage``      share of the ``reference`` frame's ``column`` values that have rows   expect >= min_value
- ``in_reference``  distinct ``column`` values not in the ``reference`` frame  expect 0
- ``freshness``     days from the latest ``expr`` (a timestamp) to run_date   expect <= freshness_max_lag_days
- ``row_count_change``  rows vs the previous partition's                      expect within +/- row_count_max_change
- ``drift_mean``    mean of ``column`` vs the previous partition's            expect within +/- drift_max_change
- ``drift_quantile`` approximate ``quantile`` of ``column`` vs the previous    expect within +/- drift_max_change
- ``quarantine_rate``  quarantined / read records of the ingest run (context)  expect <= quarantine_rate_max

Predicates may name thresholds in braces (``count(1) >= {max_rank}``), the run date as ``{run_date}`` and
the first instant not visible as of it (``features.contract.cutoff``) as ``{cutoff}``.
A check whose column is not in the table's declaration (or the frame) is skipped and reported as such;
so is a reference check without its reference frame, and a check whose threshold is not set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from features.contract import EVENT_TYPES
from features.tables import (EVENT_COUNT_NAMES, EVENTS, FEATURE_WINDOWS, ITEM_FEATURES, ITEMS, USER_CANDIDATES,
                             USER_FEATURES, USER_SEQUENCES, Table)

CRITICAL, WARNING = "critical", "warning"
SEVERITIES = (CRITICAL, WARNING)

# Kinds whose failures have offending rows (sampled into the report); the others are table statistics.
ROW_KINDS = ("not_null", "unique", "in_set", "between", "matches", "not_matches", "rows_satisfy")
REFERENCE_KINDS = ("coverage", "in_reference")     # measured against a frame given with the partition
KINDS = ROW_KINDS + REFERENCE_KINDS + ("groups_satisfy", "row_count", "freshness", "row_count_change",
                                       "drift_mean", "drift_quantile", "quarantine_rate")
# Parameters that may name a threshold instead of holding a value.
THRESHOLD_PARAMS = ("min_value", "max_value", "pattern", "max_share")


@dataclass(frozen=True)
class Check:
    name: str                          # unique within the suite; the config key of its severity
    kind: str                          # one of KINDS
    severity: str                      # the default; quality.severity.<table alias>.<name> overrides it
    description: str                   # one line for the report: what a failure means
    column: str | None = None          # the column the check reads (None: whole-row or table checks)
    columns: tuple[str, ...] = ()      # several columns (unique keys; columns a predicate reads)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"check {self.name}: unknown kind {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"check {self.name}: severity must be one of {SEVERITIES}")

    @property
    def reads(self) -> tuple[str, ...]:
        """Declared columns the check needs; it is skipped if any is missing."""
        return tuple(c for c in ((self.column,) if self.column else ()) + self.columns)


def alias(table_name: str) -> str:
    """Config-safe name of a table: ``bronze/events`` -> ``bronze_events``."""
    return table_name.replace("/", "_")


def _keys(keys: tuple[str, ...], severity: str = CRITICAL) -> list[Check]:
    checks = [Check(f"{k}_not_null", "not_null", severity, f"every row has a {k}", column=k) for k in keys]
    checks.append(Check(f"{'_'.join(keys)}_unique", "unique", severity,
                        f"({', '.join(keys)}) is unique within the partition", columns=keys))
    return checks


def _not_negative(columns: list[str], severity: str = CRITICAL) -> list[Check]:
    return [Check(f"{c}_not_negative", "between", severity, f"{c} >= 0", column=c, params={"min_value": 0})
            for c in columns]


def _rate(column: str, severity: str = CRITICAL) -> Check:
    return Check(f"{column}_in_0_1", "between", severity, f"{column} is a rate in [0, 1]", column=column,
                 params={"min_value": 0, "max_value": 1})


def _row_count(severity: str) -> Check:
    return Check("row_count_change", "row_count_change", severity,
                 "row count within +/- row_count_max_change of the previous partition's")


def _drift_mean(column: str, severity: str = WARNING) -> Check:
    return Check(f"{column}_mean_drift", "drift_mean", severity,
                 f"mean of {column} within +/- drift_max_change of the previous partition's", column=column)


def _drift_quantile(column: str, quantile: float, severity: str = WARNING) -> Check:
    pct = int(round(quantile * 100))
    return Check(f"{column}_p{pct}_drift", "drift_quantile", severity,
                 f"p{pct} of {column} within +/- drift_max_change of the previous partition's",
                 column=column, params={"quantile": quantile})


def _partition_is_run_date(column: str) -> Check:
    return Check(f"{column}_is_run_date", "rows_satisfy", CRITICAL, "every row belongs to the run date's partition",
                 columns=(column,), params={"predicate": f"{column} = DATE'{{run_date}}'"})


def _partition_suite(table: Table, checks: list[Check], row_count: str, compared: list[Check]) -> list[Check]:
    """The suite of a table partitioned by run date: its keys, rows in the run date's partition,
    ``checks``, then the comparisons with the previous partition (row count at severity ``row_count``,
    the ``compared`` drift checks)."""
    return [*_keys(table.keys), _partition_is_run_date(table.partition_by), *checks, _row_count(row_count), *compared]


def _product_codes() -> list[Check]:
    """Item ids that name products: not postage / fees / vouchers, and the allow-list when one is set."""
    return [
        Check("item_id_is_product_code", "not_matches", WARNING,
              "item_id is a product, not a postage / fee / voucher code (threshold non_product_item_pattern)",
              column="item_id", params={"pattern": "non_product_item_pattern"}),
        Check("item_id_matches_product_pattern", "matches", WARNING,
              "item_id matches product_item_pattern (skipped while it is null)",
              column="item_id", params={"pattern": "product_item_pattern"}),
    ]


def _count_columns() -> list[str]:
    return [f"count_{n}_{w}" for w in FEATURE_WINDOWS for n in (*EVENT_COUNT_NAMES.values(), "events")]


def _windows_nested(stem: str) -> Check:
    """A 1-day count can't exceed the 7-day one, and so on up to all history."""
    cols = [f"{stem}_{w}" for w in FEATURE_WINDOWS]
    predicate = " AND ".join(f"{a} <= {b}" for a, b in zip(cols, cols[1:]))
    return Check(f"{stem}_windows_nested", "rows_satisfy", CRITICAL,
                 f"{' <= '.join(cols)} (a longer window holds the shorter one)", columns=tuple(cols),
                 params={"predicate": predicate})


def _events() -> list[Check]:
    return [
        *_keys(EVENTS.keys),
        *[Check(f"{c}_not_null", "not_null", CRITICAL, f"every event has a {c}", column=c)
          for c in ("user_id", "item_id", "event_type", "event_ts")],
        Check("event_type_allowed", "in_set", CRITICAL, f"event_type is one of {', '.join(EVENT_TYPES)}",
              column="event_type", params={"values": list(EVENT_TYPES)}),
        Check("event_date_is_date_of_event_ts", "rows_satisfy", CRITICAL,
              "event_date = date(event_ts) in UTC (rows are in the right partition)",
              columns=("event_date", "event_ts"), params={"predicate": "event_date = to_date(event_ts)"}),
        Check("price_not_negative", "between", CRITICAL, "unit price >= 0 (ingest quarantines negative prices)",
              column="price", params={"min_value": 0}),
        Check("price_positive", "between", WARNING, "unit price > 0 (zero prices are free samples or adjustments)",
              column="price", params={"min_value": 0, "strict_min": True}),
        Check("quantity_positive_unless_return", "rows_satisfy", CRITICAL,
              "quantity >= 1 on every event but returns", columns=("quantity", "event_type"),
              params={"predicate": "event_type = 'return' OR quantity IS NULL OR quantity >= 1"}),
        *_product_codes(),
        Check("freshness", "freshness", CRITICAL, "latest event_ts within freshness_max_lag_days of the run date",
              columns=("event_ts",), params={"expr": "event_ts"}),
        _row_count(WARNING),   # daily volume swings (Online Retail has no Saturday trade): report, don't stop
        _drift_mean("price"),
        _drift_quantile("price", 0.5),
        _drift_quantile("quantity", 0.9),
        Check("quarantine_rate", "quarantine_rate", WARNING,
              "quarantined / read records of the ingest run <= quarantine_rate_max"),
    ]


def _items() -> list[Check]:
    return [
        *_keys(ITEMS.keys),
        Check("updated_at_not_null", "not_null", CRITICAL, "every item has updated_at", column="updated_at"),
        Check("title_not_null", "not_null", WARNING, "every item has a title (the text tower reads it)", column="title"),
        Check("category_not_null", "not_null", WARNING, "every item has a category", column="category"),
        Check("price_not_negative", "between", CRITICAL, "catalogue price >= 0", column="price", params={"min_value": 0}),
        Check("price_positive", "between", WARNING, "catalogue price > 0", column="price",
              params={"min_value": 0, "strict_min": True}),
        *_product_codes(),
        _row_count(WARNING),
        _drift_mean("price"),
    ]


def _user_features() -> list[Check]:
    return _partition_suite(USER_FEATURES, [
        Check("is_cold_start_not_null", "not_null", CRITICAL, "every user has is_cold_start", column="is_cold_start"),
        *_not_negative(_count_columns()),
        *_not_negative([f"distinct_items_{w}" for w in FEATURE_WINDOWS] +
                       [f"distinct_categories_{w}" for w in FEATURE_WINDOWS] + ["days_since_last_event"]),
        _windows_nested("count_events"),
        _windows_nested("count_purchases"),
        _rate("top_category_share"),
        Check("avg_purchase_price_not_negative", "between", WARNING, "avg_purchase_price >= 0",
              column="avg_purchase_price", params={"min_value": 0}),
        Check("last_event_before_end_of_run_date", "rows_satisfy", CRITICAL,
              "last_event_at < run_date + 1 day (no events from the future leak into features)",
              columns=("last_event_at",), params={"predicate": "last_event_at < TIMESTAMP'{cutoff}'"}),
        Check("freshness", "freshness", CRITICAL, "latest last_event_at within freshness_max_lag_days of the run date",
              columns=("last_event_at",), params={"expr": "last_event_at"}),
    ], row_count=CRITICAL,   # users are cumulative: a shrinking table is a broken build
        compared=[_drift_mean("count_events_30d"), _drift_mean("spend_30d"),
                  _drift_quantile("count_events_all", 0.5), _drift_quantile("count_events_all", 0.9)])


def _item_features() -> list[Check]:
    return _partition_suite(ITEM_FEATURES, [
        *_not_negative(_count_columns() + [f"distinct_users_{w}" for w in FEATURE_WINDOWS]),
        _windows_nested("count_events"),
        _rate("conversion_rate_30d"),
        Check("return_rate_all_in_0_1", "between", WARNING,
              "return_rate_all in [0, 1] (more returns than purchases: returns of pre-history sales)",
              column="return_rate_all", params={"min_value": 0, "max_value": 1}),
        Check("popularity_rank_30d_positive", "between", CRITICAL, "popularity_rank_30d >= 1",
              column="popularity_rank_30d", params={"min_value": 1}),
        Check("price_min_not_negative", "between", WARNING, "price_min >= 0 (zero-priced events exist in real data)",
              column="price_min", params={"min_value": 0}),
        Check("price_min_le_mean_le_max", "rows_satisfy", CRITICAL, "price_min <= price_mean <= price_max",
              columns=("price_min", "price_mean", "price_max"),
              # a relative epsilon: the mean of equal doubles can round past them
              params={"predicate": "price_min <= price_mean + 1e-9 * abs(price_mean) "
                                   "AND price_mean <= price_max + 1e-9 * abs(price_max)"}),
    ], row_count=CRITICAL,   # items are cumulative too
        compared=[_drift_mean("conversion_rate_30d"), _drift_quantile("price_mean", 0.5),
                  _drift_quantile("count_events_30d", 0.9)])


def _user_sequences() -> list[Check]:
    return _partition_suite(USER_SEQUENCES, [
        Check("sequence_length_in_range", "between", CRITICAL,
              "1 <= sequence_length <= max_sequence_length (features.sequence_length)",
              column="sequence_length", params={"min_value": 1, "max_value": "max_sequence_length"}),
        Check("arrays_same_length", "rows_satisfy", CRITICAL,
              "item_ids, event_types and event_ts each hold sequence_length elements",
              columns=("item_ids", "event_types", "event_ts", "sequence_length"),
              params={"predicate": "size(item_ids) = sequence_length AND size(event_types) = sequence_length "
                                   "AND size(event_ts) = sequence_length"}),
        Check("event_types_allowed", "rows_satisfy", CRITICAL, f"every event type is one of {', '.join(EVENT_TYPES)}",
              columns=("event_types",),
              params={"predicate": "forall(event_types, t -> t IN ({}))".format(
                  ", ".join(f"'{t}'" for t in EVENT_TYPES))}),
        Check("events_oldest_first", "rows_satisfy", CRITICAL, "event_ts ascending (oldest first, as training reads it)",
              columns=("event_ts",), params={"predicate": "event_ts = array_sort(event_ts)"}),
        Check("last_event_before_end_of_run_date", "rows_satisfy", CRITICAL,
              "no event at or after run_date + 1 day (no leakage into training)", columns=("event_ts",),
              params={"predicate": "array_max(event_ts) < TIMESTAMP'{cutoff}'"}),
        Check("freshness", "freshness", CRITICAL, "latest event within freshness_max_lag_days of the run date",
              columns=("event_ts",), params={"expr": "array_max(event_ts)"}),
    ], row_count=CRITICAL,
        compared=[_drift_mean("sequence_length"), _drift_quantile("sequence_length", 0.5)])


# A user's scores in rank order: sorting them from high to low must change nothing.
_SCORES_BY_RANK = "transform(array_sort(collect_list(struct(`rank`, score))), x -> x.score)"


def _user_candidates() -> list[Check]:
    """The gate ``jobs/publish.py`` runs before a run date's lists are served. ``max_rank`` is the list
    length the score run aimed at, min(K, catalogue items); with the unique (user_id, rank) key and
    ``rank_in_range`` it also bounds every list to that many rows."""
    per_user = {"by": ("user_id",)}
    return _partition_suite(USER_CANDIDATES, [
        Check("not_empty", "row_count", CRITICAL, "the run date's partition has rows", params={"min_value": 1}),
        Check("item_id_not_null", "not_null", CRITICAL, "every candidate names an item", column="item_id"),
        Check("rank_in_range", "between", CRITICAL, "1 <= rank <= max_rank (min(K, catalogue) of the score run)",
              column="rank", params={"min_value": 1, "max_value": "max_rank"}),
        Check("score_is_number", "rows_satisfy", CRITICAL, "score is a finite number", columns=("score",),
              params={"predicate": "NOT isnan(score) AND abs(score) < float('inf')"}),
        Check("strategy_allowed", "in_set", CRITICAL, "strategy is model, ranker or popular_fallback",
              column="strategy", params={"values": ["model", "ranker", "popular_fallback"]}),
        Check("user_id_item_id_unique", "unique", CRITICAL, "an item appears once in a user's list",
              columns=("user_id", "item_id")),
        Check("ranks_1_to_n", "groups_satisfy", CRITICAL, "each user's ranks are exactly 1..n",
              columns=("user_id", "rank"),
              params={**per_user, "predicate": "min(`rank`) = 1 AND max(`rank`) = count(1) "
                                               "AND count(DISTINCT `rank`) = count(1)"}),
        Check("scores_non_increasing", "groups_satisfy", CRITICAL, "a user's scores never rise with rank",
              columns=("user_id", "rank", "score"),
              params={**per_user, "predicate": f"{_SCORES_BY_RANK} = sort_array({_SCORES_BY_RANK}, false)"}),
        Check("short_lists", "groups_satisfy", CRITICAL,
              "share of users with fewer than max_rank candidates <= max_short_list_share (legitimate only when "
              "exclusions leave fewer eligible items, which the table does not record)", columns=("user_id",),
              params={**per_user, "predicate": "count(1) >= {max_rank}", "max_share": "max_short_list_share"}),
        Check("coverage", "coverage", CRITICAL, "share of the run date's active users with candidates >= min_coverage",
              column="user_id", params={"reference": "active_users", "min_value": "min_coverage"}),
        Check("user_id_active", "in_reference", CRITICAL, "candidates only for the run date's active users",
              column="user_id", params={"reference": "active_users"}),
        Check("model_version_set_for_model_rows", "rows_satisfy", WARNING,
              "rows the model ranked name its version", columns=("strategy", "model_version"),
              params={"predicate": "strategy = 'popular_fallback' OR model_version IS NOT NULL"}),
    ], row_count=WARNING, compared=[_drift_mean("score")])


SUITES: dict[str, list[Check]] = {
    EVENTS.name: _events(),
    ITEMS.name: _items(),
    USER_FEATURES.name: _user_features(),
    ITEM_FEATURES.name: _item_features(),
    USER_SEQUENCES.name: _user_sequences(),
    USER_CANDIDATES.name: _user_candidates(),
}


def suite(table_name: str) -> list[Check]:
    try:
        return SUITES[table_name]
    except KeyError:
        raise KeyError(f"no quality suite for {table_name!r}; suites exist for {', '.join(sorted(SUITES))}") from None
