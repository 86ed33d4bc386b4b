"""warmstart's typed configuration: one frozen dataclass per section, the only home of every default.

Loaded once per process by :func:`load_config`: the defaults below, then a ``--config`` YAML file (same
shape, merged over them), then ``WARMSTART_LAKE``, then trailing ``key=value`` arguments (dotted keys,
YAML values)::

    warmstart features --run-date 2011-12-09 spark.shuffle_partitions=64 features.sequence_length=100
    warmstart score --print-config          # the effective configuration as YAML, then exit

An unknown or misspelt key, or a value of the wrong type, is a usage error (exit 2) naming the key and
the nearest valid one. Each job receives the whole :class:`Config` and hands the section it needs
(``cfg.score``, ``cfg.train.model``) to the library code.

Free of Spark and torch on purpose: every job, the Airflow DAG's helpers and ``--print-config`` load it.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from training.config import LoopConfig, SeqRecConfig

DEFAULT_MODEL_NAME = "warmstart-seqrec"   # the model's registry name: models/<name>/<version>/


class ConfigError(ValueError):
    """A configuration the loader cannot accept; jobs turn it into a usage error (exit 2)."""


@dataclass(frozen=True)
class PathsConfig:
    lake: str = "./lake"          # --lake / WARMSTART_LAKE win over this; any Hadoop path (s3a://...) on a cluster
    reports: str | None = None    # None: <lake>/../reports
    models: str | None = None     # None: <lake>/../models


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"      # spark-submit --master wins when the job runs under spark-submit
    app_name: str = "warmstart"
    driver_memory: str = "4g"     # local mode only: the driver is the executor
    shuffle_partitions: int = 8   # 2-16 cores locally; raise on a cluster (or leave AQE to coalesce)
    delta_snapshot_partitions: int = 8   # tasks that rebuild a Delta table's state from its log on each read;
                                         # Delta's 50 suits clusters, locally it is overhead (docs/features.md)
    ui: bool = False
    progress_every_s: float = 30.0   # a line on running Spark stages this often when stderr is no terminal
                                     # (a bar on one); 0: none (jobs/spark_progress.py)
    jars_dir: str | None = None   # None: $WARMSTART_JARS_DIR or <repo>/.jars (filled by `make jars`)
    cds_archive: bool | str | None = None  # drivers' JVM class-data-sharing archive (`make cds`); None:
                                           # <jars_dir>/spark-cds.jsa if present; off (false): none
    conf: dict[str, Any] = field(default_factory=dict)   # any spark.* key, applied verbatim

    def __post_init__(self):
        _at_least(self, "progress_every_s", 0)


@dataclass(frozen=True)
class IngestConfig:
    future_tolerance_days: int = 1    # event_ts at or after run_date + this many days -> timestamp_in_future
                                      # (1: the whole run date is accepted)
    online_retail_timezone: str = "Europe/London"   # Online Retail's InvoiceDate is the shop's wall-clock time
    csv_max_line_bytes: int = 1_000_000   # a longer text line is malformed_record (a missing newline glues records)

    def __post_init__(self):
        _at_least(self, "future_tolerance_days", 0)
        _at_least(self, "csv_max_line_bytes", 1)


@dataclass(frozen=True)
class GenerateConfig:
    users: int = 1000             # --users; enough for per-user structure, small enough for a laptop demo
    items: int = 500              # --items; the catalogue (power-law popularity within each category)
    days: int = 30                # --days; one month covers the 1/7/30-day feature windows
    start_date: str = "2024-01-01"   # --start-date; first day (UTC)
    events: int | None = None     # --events; None: users * days * 0.25 sessions (about 4.5 events each)
    bad_rate: float = 0.0         # --bad-rate; share of event rows corrupted with one quarantine kind each
    seed: int = 0                 # --seed; same seed and arguments write the same files
    format: str = "parquet"       # --format; parquet is what a real event pipeline usually lands
    chunk_events: int = 1_000_000   # events per file written: bounds memory (about 200 MB per chunk), not output
    zipf_exponent: float = 1.1    # item popularity within a category ~ rank^-1.1 (a shop's long tail)

    def __post_init__(self):
        _one_of(self, "format", ("parquet", "csv", "jsonl"))
        if not 0.0 <= self.bad_rate <= 1.0:
            raise ConfigError(f"generate.bad_rate must be within [0, 1], got {self.bad_rate}")


@dataclass(frozen=True)
class FeaturesConfig:
    sequence_length: int = 50          # last N interactions per user in features/user_sequences (the model's context)
    cold_start_min_events: int = 5     # is_cold_start = fewer events than this in all history: too little to personalise
    hll_lg_config_k: int = 12          # HLL sketch of 2^12 buckets: ~1.6% relative error, exact below ~hundreds
    conversion_prior_purchases: float = 1.0   # Beta prior a: conversion_rate_30d = (purchases + a) / (views + a + b)
    conversion_prior_views: float = 49.0      # Beta prior b: prior mean a/(a+b) = 2%, worth 50 views of evidence

    def __post_init__(self):
        _at_least(self, "sequence_length", 2)
        if not 4 <= self.hll_lg_config_k <= 21:
            raise ConfigError(f"features.hll_lg_config_k must be within [4, 21], got {self.hll_lg_config_k}")


NON_PRODUCT_ITEMS = (r"^(POST|DOT|M|C2|D|S|B|CRUK|PADS|BANK CHARGES|AMAZONFEE|ADJUST\d*|TEST\d*|DCGS\w*"
                     r"|gift_\d+_\d+)$")


@dataclass(frozen=True)
class QualityConfig:
    """features/suites.py (the checks), features/quality.py (the runner), docs/quality.md."""

    row_count_max_change: float = 0.3   # rows vs the previous partition: +/-30%; half empty = a broken upstream
    drift_max_change: float = 0.5       # key columns' mean / quantiles vs the previous partition: +/-50% (relative)
    freshness_max_lag_days: int = 1     # latest event at most one day before the run date, else the data is stale
    quarantine_rate_max: float = 0.05   # ingest rejects above 5% mean a broken feed (Online Retail: ~23%, no customer)
    non_product_item_pattern: str = NON_PRODUCT_ITEMS   # postage, fees, adjustments, vouchers: not products
    product_item_pattern: str | None = None   # an allow-list regex for item ids (Online Retail: '^\d{5}[A-Za-z]{0,2}$')
    max_sequence_length: int | None = None    # None: features.sequence_length (user_sequences never hold more)
    max_rank: int | None = None         # candidates' rank bound; publish and validate set it to the score run's
                                        # min(K, catalogue) (None: score.k)
    cache_partition: bool = True        # cache the partition once: the stats pass fills it, failed checks reuse it
    sample_size: int = 5                # offending values shown per failed check
    quantile_accuracy: int = 10000      # percentile_approx accuracy: 1/10000 relative rank error, one pass
    events_scope: str = "ingest_run"    # bronze/events: validate the run's ingested rows, or the run date's partition
    severity: dict[str, dict[str, str]] = field(default_factory=dict)
    # per-check overrides, <table alias>.<check>: critical|warning, e.g.
    #   {bronze_events: {quarantine_rate: critical, price_positive: critical}}

    def __post_init__(self):
        _one_of(self, "events_scope", ("ingest_run", "event_date"))
        for table, checks in self.severity.items():
            for check, level in (checks or {}).items():
                if level not in ("critical", "warning"):
                    raise ConfigError(f"quality.severity.{table}.{check} must be critical or warning, got {level!r}")

    @property
    def thresholds(self) -> dict[str, Any]:
        """The values checks refer to by name (features/suites.py)."""
        names = ("row_count_max_change", "drift_max_change", "freshness_max_lag_days", "quarantine_rate_max",
                 "non_product_item_pattern", "product_item_pattern", "max_sequence_length", "max_rank")
        return {n: getattr(self, n) for n in names}


@dataclass(frozen=True)
class TrainConfig:
    name: str = DEFAULT_MODEL_NAME  # registry name: models/<name>/<version>/ (score and evaluate read it too)
    workers: int = 1              # Ray Train workers (--workers); 1 is fastest on a laptop, more on a cluster
    use_gpu: bool = False         # --gpu; bf16 autocast is switched on with it
    cpus_per_worker: float = 1.0  # leave CPUs to Ray Data's example tasks (in-process Ray has ray_num_cpus)
    ray_num_cpus: int = 2         # in-process Ray only: the machine is shared, keep it small
    ray_object_store_mb: int = 300   # in-process Ray only: examples are small int arrays
    ray_temp_dir: str | None = None  # None: <tmp>/ray-warmstart (short: Ray's socket paths have a length limit)
    max_failures: int = 2         # FailureConfig: worker-group restarts from the last checkpoint
    promote_margin: float = 0.005   # LATEST moves unless val NDCG@10 is worse than LATEST's by more than this
    target_event_types: tuple[str, ...] = ("purchase",)   # what a held-out basket is made of (the goal)
    max_val_targets: int = 100    # validation basket cap (padding width); Online Retail baskets are < 100 items mostly
    validation_days: int = 7      # the validation window: the week before the run date, as the backtest's horizon
    history: str = "sequences"    # sequences: features/user_sequences, each user's last model.max_seq_len + 1 events
                                  # train; events: every event before the cut-off (bronze/events), each a target
                                  # once, in windows of max_seq_len + 1 (training.data.history_windows)
    repeat_free_below: float = 0.0   # repurchase share (before the validation window) under which the catalogue counts
                                     # as bought once: no repeat head, no rebuy odds, bought items masked at scoring;
                                     # 0 = never (e.g. 0.02; Online Retail's is far above)
    model: SeqRecConfig = field(default_factory=SeqRecConfig)   # training/config.py; num_items comes from the data
    loop: LoopConfig = field(default_factory=LoopConfig)         # training/config.py

    def __post_init__(self):
        _at_least(self, "workers", 1)
        _at_least(self, "max_failures", 0)
        _subset(self, "target_event_types", self.model.event_types)
        _one_of(self, "history", ("sequences", "events"))
        if not 0.0 <= self.repeat_free_below <= 1.0:
            raise ConfigError(f"train.repeat_free_below must be within [0, 1], got {self.repeat_free_below}")


@dataclass(frozen=True)
class EvaluateConfig:
    baselines: tuple[str, ...] = ("popularity", "cooccurrence", "repeat", "als")   # --baselines
    ks: tuple[int, ...] = (10, 20)  # Recall@K / NDCG@K cut-offs
    min_purchases: int = 3        # evaluate users with at least this many target-type events (DESIGN.md)
    mask_seen: bool = False       # --mask-seen adds the variant with already-bought items removed
    batch_users: int = 512        # users scored per (users x catalogue) matrix
    als_rank: int = 64            # implicit ALS factors
    als_reg_param: float = 0.1
    als_alpha: float = 10.0       # confidence = 1 + alpha * count
    als_max_iter: int = 10

    def __post_init__(self):
        _subset(self, "baselines", ("popularity", "cooccurrence", "repeat", "als"))
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"evaluate.ks must be positive cut-offs, got {list(self.ks)}")


@dataclass(frozen=True)
class ScoreConfig:
    k: int = 100                  # --k; candidates per user: enough for an online re-ranker to reorder
    exclude_event_types: tuple[str, ...] = ()   # e.g. (purchase,): drop items the user already had these events with.
                                                # Empty: ~31% of Online Retail purchases are re-purchases (DESIGN.md)
    exclude_categories: tuple[str, ...] = ("non_product",)   # not products (Online Retail's POST, M, fees): never candidates
    fallback_for_cold_start: bool = True   # users flagged is_cold_start get popular items
    segment_column: str | None = "top_category"   # user_features column whose users share a popular list; None: global
    popular_window_days: int = 30   # "popular" = distinct users in the last 30 days: recent enough to be in stock
    popular_event_types: tuple[str, ...] = ("purchase",)   # what makes an item popular (views are cheap)
    partitions: int | None = None   # user partitions scored in parallel; None: spark.sql.shuffle.partitions
    block_bytes: int = 4 * 1024 * 1024   # score tile per sgemm (whole catalogue up to 16,384 items, else users x 4096)
    torch_threads: int = 1        # per Python worker: Spark already runs one task per core
    embed_batch: int = 512        # users per forward pass of the user tower
    arrow_batch_users: int = 4096   # users per Arrow batch handed to the scorer (bounds worker memory)
    rank_chunk_users: int = 1024   # with a ranker: users ranked at a time in a worker (~380 candidates x ~120
                                   # float32 features each: ~170 MB a chunk)
    rank: bool = True             # re-rank the candidates with the registered ranker (jobs/ranking.py) when there is one
    ranker_version: str = "latest"   # the ranker version that orders them

    def __post_init__(self):
        _at_least(self, "k", 1)
        _at_least(self, "popular_window_days", 1)
        _at_least(self, "block_bytes", 1024)
        _at_least(self, "rank_chunk_users", 1)


@dataclass(frozen=True)
class RankerConfig:
    """The two-stage ranker (training/ranker.py, jobs/ranking.py): retrievers' pools and the trees."""
    name: str = "warmstart-ranker"   # its registry folder under paths.models
    training_nights: int = 3      # labelled nights before D, weekly: the newest early-stops, then all fit the model
    every_days: int = 7           # between training nights (= the backtest's horizon: labels never overlap)
    transformer_n: int = 200      # the sequence model's candidates per user
    neighbour_n: int = 100        # TIFU-KNN's and co-occurrence's candidates per user
    popular_n: int = 50           # the 30-day most-bought items, proposed to everyone
    max_depth: int = 6
    eta: float = 0.05             # small steps, early stopping picks the count
    max_rounds: int = 600
    early_stopping_rounds: int = 50
    category_cap: int | None = None   # diversity: at most this many items of one category in a list; None: off
    engine: str = "xgboost"       # xgboost: one process (the driver); xgboost-spark: the same booster trained by
                                  # xgboost.spark on spark_workers tasks, for training sets past one machine
    spark_workers: int = 2        # with engine xgboost-spark: its barrier stage's tasks (needs that many slots)

    def __post_init__(self):
        for key in ("training_nights", "every_days", "transformer_n", "neighbour_n", "popular_n", "max_depth",
                    "max_rounds", "early_stopping_rounds", "spark_workers"):
            _at_least(self, key, 1)
        _one_of(self, "engine", ("xgboost", "xgboost-spark"))
        if self.training_nights < 2:
            raise ConfigError("ranker.training_nights must be >= 2 (one night validates, the others train)")
        if self.category_cap is not None:
            _at_least(self, "category_cap", 1)


@dataclass(frozen=True)
class PublishConfig:
    min_coverage: float = 0.99    # share of active users that must have candidates (a few may fail to embed)
    max_short_list_share: float = 0.001   # users with fewer than min(K, catalogue) rows: legitimate only when
                                          # exclusions leave fewer eligible items, which the gate cannot see


@dataclass(frozen=True)
class NightlyConfig:
    train_every_days: int = 7     # retrain weekly: tastes drift slowly, and training is the longest stage
    gates_after_ingest: tuple[str, ...] = ("bronze/events", "bronze/items")   # a critical failure stops the run (exit 3)
    gates_after_features: tuple[str, ...] = ("features/user_features", "features/item_features",
                                             "features/user_sequences")       # before training and scoring read them
    report_top_items: int = 20    # run report: most recommended items listed (the plots cover the rest)
    feedback_days: int = 7        # night D judges the lists published for D - 7 on the purchases since: the
                                  # backtest's next-week horizon, so both measure the same thing

    def __post_init__(self):
        _at_least(self, "train_every_days", 1)
        _at_least(self, "feedback_days", 1)


@dataclass(frozen=True)
class TrackingConfig:
    """The operator's view: MLflow tracking (jobs/tracking.py) and the trend page (jobs/trends.py)."""

    mlflow_uri: str | None = None   # None: off. A folder path or file: URI: a local store there (mlflow.db,
                                    # SQLite, and artifacts/: MLflow 3 refuses its plain-file store); or any
                                    # MLflow tracking URI (sqlite:///..., http://host:5000)
    mlflow_experiment: str = "warmstart"   # one experiment; the run name says job and run date
    trend_nights: int = 14        # `report --last` default and the run report's trend section: two weeks
                                  # of nightly runs, enough for a median and MAD that one odd night cannot move

    def __post_init__(self):
        _at_least(self, "trend_nights", 2)
        if self.mlflow_uri is not None and not str(self.mlflow_uri).strip():
            raise ConfigError("tracking.mlflow_uri must be a path or an MLflow URI (or null for off), got ''")


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def quality_bounds(self) -> QualityConfig:
        """The quality section with the bounds other sections own filled in where left None."""
        q = self.quality
        return dataclasses.replace(
            q, max_sequence_length=q.max_sequence_length or self.features.sequence_length,
            max_rank=q.max_rank or self.score.k)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists for tuples): what lineage records and ``--print-config`` show."""
        return _plain(dataclasses.asdict(self))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """A new configuration with dotted ``key: value`` overrides applied and validated."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            _set_dotted(data, dotted, value)
        return build(Config, data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, width=110)


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the ``--config`` file, then WARMSTART_LAKE, then ``key=value`` overrides.
    Raises :class:`ConfigError` with one line naming the first wrong key."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            user = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(user, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = dict(user)
    if os.environ.get("WARMSTART_LAKE"):
        _set_dotted(data, "paths.lake", os.environ["WARMSTART_LAKE"])
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return build(Config, data)


def parse_overrides(tokens: typing.Iterable[str]) -> dict[str, Any]:
    """``a.b=3`` -> {"a.b": 3}; values are read as YAML scalars (numbers, booleans, null, lists)."""
    out: dict[str, Any] = {}
    for token in tokens:
        key, _, raw = token.partition("=")
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """``cls`` from plain data, strictly: every key must be a field, every value of the field's type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'the configuration'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, raw in data.items():
        if key not in names:
            raise ConfigError(f"unknown configuration key {prefix}{key}{_nearest(cls, prefix, key)}")
        values[key] = _convert(hints[key], raw, f"{prefix}{key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'}: {exc}") from None


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every valid dotted key, sections included."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], f"{prefix}{f.name}.")
    return keys


def _nearest(cls: type, prefix: str, key: str) -> str:
    here = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, here, n=1, cutoff=0.6)
    if not close:   # misplaced rather than misspelt: the same name in another section
        close = [k for k in all_keys() if k.rsplit(".", 1)[-1] == key][:1] or \
            difflib.get_close_matches(prefix + key, all_keys(), n=1, cutoff=0.6)
        return f" (did you mean {close[0]}?)" if close else ""
    return f" (did you mean {prefix}{close[0]}?)"


def _convert(hint: Any, value: Any, key: str) -> Any:
    """``value`` as type ``hint``, or a ConfigError naming ``key`` and the type wanted."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else build(hint, value if value is not None else {}, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for hint_ in inner[:-1]:
            try:
                return _convert(hint_, value, key)
            except ConfigError:
                pass
        return _convert(inner[-1], value, key)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)   # YAML reads 2024-01-01 as text only when quoted; a bare number is fine as text
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    if hint is str and hasattr(value, "isoformat"):   # YAML reads an unquoted date as a date
        return value.isoformat()
    raise ConfigError(f"{key} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(hint, str(hint))


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _at_least(section: Any, name: str, low: int) -> None:
    if getattr(section, name) < low:
        raise ConfigError(f"{_section_name(section)}.{name} must be >= {low}, got {getattr(section, name)}")


def _one_of(section: Any, name: str, allowed: tuple[str, ...]) -> None:
    if getattr(section, name) not in allowed:
        raise ConfigError(f"{_section_name(section)}.{name} must be one of {', '.join(allowed)}, "
                          f"got {getattr(section, name)!r}")


def _subset(section: Any, name: str, allowed: tuple[str, ...]) -> None:
    unknown = [v for v in getattr(section, name) if v not in allowed]
    if unknown:
        raise ConfigError(f"{_section_name(section)}.{name}: {', '.join(map(str, unknown))} not one of "
                          f"{', '.join(allowed)}")


def _section_name(section: Any) -> str:
    return type(section).__name__.removesuffix("Config").lower()
