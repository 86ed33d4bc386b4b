"""Builds the rows of ``candidates/user_candidates`` for one run date: one row per (user, rank), K per
user, from a model's embeddings (strategy ``model``) or a popular-items list (``popular_fallback``).

Who is scored ("active users" of run date D): every user in ``features/user_sequences`` or
``features/user_features`` at as_of_date D, i.e. every user with any event before D + 1 day.
- ``model``: users with a sequence, unless the cold-start rule sends them to the fallback
  (``score.fallback_for_cold_start``: users flagged ``is_cold_start`` in user_features, fewer than
  ``features.cold_start_min_events`` events, too little history to personalise).
- ``popular_fallback``: the others (cold-start users, users known to user_features without a sequence).
  They get the items most interacted with in the last ``popular_window_days`` by the users of their
  segment (``score.segment_column`` of user_features, e.g. ``top_category``), topped up from the global
  list; score = the item's share of the segment's (then all) active users, made non-increasing.

Rules shared by both strategies:
- only items of the current catalogue (bronze/items) can be recommended: items the model knows but
  the catalogue dropped are never candidates; catalogue items the model has never seen are scored with
  their text-only embedding (``LoadedModel.item_embeddings``);
- items the user had an event of ``score.exclude_event_types`` with (default: purchased) before D + 1
  day are excluded;
- order is score descending, then item_id ascending (the item matrix is kept in item_id order).

Distributed: :func:`candidate_rows` is a ``mapInArrow`` over user partitions; the item matrix and the
fallback lists travel as broadcast values, and each Python worker loads the model once (through the
picklable ``loader``) and keeps it for every later batch. Nothing user-sized reaches the driver.

Called by jobs/score.py. Pure: DataFrames, arrays and parameters in, DataFrames out.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from features.contract import cutoff
from scoring.topk import topk, topk_with_boosts

MODEL = "model"
POPULAR_FALLBACK = "popular_fallback"
RANKED = "ranker"     # the model's candidates, with the other retrievers', ordered by the ranker (jobs/ranking.py)
GLOBAL_SEGMENT = ""   # key of the all-users popular list in the fallback lists

CANDIDATE_ROWS = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("item_id", T.StringType(), False),
    T.StructField("score", T.FloatType(), False),
    T.StructField("strategy", T.StringType(), False),
])


def before_next_day(as_of: dt.date) -> Column:
    """The events visible as of ``as_of`` (features.contract.cutoff), as the feature tables use."""
    return F.col("event_ts") < F.lit(cutoff(as_of))


def scoring_users(sequences: DataFrame, user_features: DataFrame | None, exclusions: DataFrame, *,
                  segment_column: str | None, fallback_for_cold_start: bool) -> DataFrame:
    """Active users with what the scorer needs: ``user_id, item_ids, event_types, event_ts,
    excluded_item_ids, segment, use_fallback``. ``sequences`` / ``user_features``: one as_of_date
    partition each."""
    seq = sequences.select("user_id", "item_ids", "event_types", "event_ts")
    if user_features is None:
        users = seq.select("*", F.lit(False).alias("is_cold_start"), F.lit(None).cast("string").alias("segment"))
    else:
        segment = (F.col(segment_column).cast("string") if segment_column and segment_column in user_features.columns
                   else F.lit(None).cast("string"))
        feats = user_features.select("user_id", F.col("is_cold_start"), segment.alias("segment"))
        users = seq.join(feats, "user_id", "full_outer")
    no_sequence = F.col("item_ids").isNull() | (F.size("item_ids") == 0)
    cold = F.coalesce(F.col("is_cold_start"), F.lit(False)) if fallback_for_cold_start else F.lit(False)
    empty = F.array().cast("array<string>")
    return (users.join(exclusions, "user_id", "left")
            .select("user_id",
                    F.coalesce("item_ids", empty).alias("item_ids"),
                    F.coalesce("event_types", empty).alias("event_types"),
                    F.coalesce("event_ts", F.array().cast("array<timestamp>")).alias("event_ts"),
                    F.coalesce("excluded_item_ids", empty).alias("excluded_item_ids"),
                    F.coalesce("segment", F.lit(GLOBAL_SEGMENT)).alias("segment"),
                    (no_sequence | cold).alias("use_fallback")))


def exclusions(events: DataFrame, as_of: dt.date, event_types: list[str]) -> DataFrame:
    """``user_id, excluded_item_ids``: items each user had an event of ``event_types`` with, up to as_of."""
    if not event_types:
        return events.sparkSession.createDataFrame(
            [], "user_id string, excluded_item_ids array<string>")
    return (events.where(before_next_day(as_of) & F.col("event_type").isin(list(event_types)))
            .groupBy("user_id").agg(F.array_sort(F.collect_set("item_id")).alias("excluded_item_ids")))


def popular_items(events: DataFrame, catalogue: DataFrame, segments: DataFrame, as_of: dt.date, *,
                  window_days: int, event_types: list[str], top_n: int) -> DataFrame:
    """The fallback lists: ``segment, item_id, rank, share`` for the ``top_n`` catalogue items per
    segment (and for ``GLOBAL_SEGMENT``, all users), ranked by distinct users who had an event of
    ``event_types`` with the item in the ``window_days`` days up to as_of (ties: item_id).
    ``share`` = those users / the segment's users with such an event in the window.
    ``segments``: ``user_id, segment`` (from :func:`scoring_users`)."""
    start = dt.datetime.combine(as_of - dt.timedelta(days=window_days - 1), dt.time())
    recent = (events.where(before_next_day(as_of) & (F.col("event_ts") >= F.lit(start))
                           & F.col("event_type").isin(list(event_types)))
              .join(catalogue.select("item_id"), "item_id", "left_semi")
              .select("user_id", "item_id").distinct()
              .join(segments.select("user_id", "segment"), "user_id", "left")
              .withColumn("segment", F.coalesce("segment", F.lit(GLOBAL_SEGMENT))))
    both = recent.select("user_id", "item_id", "segment").unionByName(
        recent.select("user_id", "item_id", F.lit(GLOBAL_SEGMENT).alias("segment")).distinct())
    both = both.distinct()
    seg_users = both.groupBy("segment").agg(F.countDistinct("user_id").alias("segment_users"))
    counts = both.groupBy("segment", "item_id").agg(F.count("user_id").alias("users"))
    # Catalogue items nobody touched fill the global list last, so it is never shorter than the catalogue.
    zero = catalogue.select(F.lit(GLOBAL_SEGMENT).alias("segment"), "item_id", F.lit(0).cast("long").alias("users"))
    counts = (counts.unionByName(zero.join(counts.where(F.col("segment") == GLOBAL_SEGMENT).select("item_id"),
                                          "item_id", "left_anti")))
    order = Window.partitionBy("segment").orderBy(F.desc("users"), F.asc("item_id"))
    return (counts.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top_n)
            .join(seg_users, "segment", "left")
            .select("segment", "item_id", "rank",
                    F.coalesce(F.col("users") / F.col("segment_users"), F.lit(0.0)).cast("float").alias("share")))


@dataclass(frozen=True)
class FallbackLists:
    """Popular lists as item indices into the scorer's item order, per segment ("" = everyone)."""

    indices: dict[str, np.ndarray]   # segment -> (L,) int64, best first
    shares: dict[str, np.ndarray]    # segment -> (L,) float32


def fallback_lists(rows: list[tuple[str, str, int, float]], item_index: dict[str, int]) -> FallbackLists:
    """From :func:`popular_items` rows (segment, item_id, rank, share) to index arrays."""
    by_segment: dict[str, list[tuple[int, int, float]]] = {}
    for segment, item_id, rank, share in rows:
        if item_id in item_index:
            by_segment.setdefault(segment, []).append((rank, item_index[item_id], share))
    indices, shares = {}, {}
    for segment, entries in by_segment.items():
        entries.sort()
        indices[segment] = np.array([e[1] for e in entries], dtype=np.int64)
        shares[segment] = np.array([e[2] for e in entries], dtype=np.float32)
    return FallbackLists(indices, shares)


def fallback_for(segment: str, excluded: set[int], lists: FallbackLists, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One user's fallback: the segment's list, then the global one, skipping excluded and repeated
    items; scores made non-increasing (a global item after segment items cannot outscore them)."""
    chosen: list[int] = []
    scores: list[float] = []
    seen = set(excluded)
    for key in ([segment] if segment and segment != GLOBAL_SEGMENT else []) + [GLOBAL_SEGMENT]:
        for index, share in zip(lists.indices.get(key, ()), lists.shares.get(key, ())):
            if len(chosen) == k:
                break
            if int(index) in seen:
                continue
            seen.add(int(index))
            chosen.append(int(index))
            scores.append(min(float(share), scores[-1]) if scores else float(share))
    return np.array(chosen, dtype=np.int64), np.array(scores, dtype=np.float32)


_WORKER_CACHE: dict[str, Any] = {}


def _cached(key: str, build: Callable[[], Any]) -> Any:
    """Per-Python-worker cache: Spark reuses workers (spark.python.worker.reuse), so the model and the
    item index are built once per worker, not once per batch."""
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = build()
    return _WORKER_CACHE[key]


@dataclass(frozen=True)
class ScorerSpec:
    """Everything a worker needs besides the broadcast arrays; picklable."""

    cache_key: str                       # unique per (model version, catalogue): names the worker cache
    loader: Callable[[], Any]            # () -> LoadedModel (e.g. functools.partial(load_model, root, name, v))
    k: int
    block_bytes: int                     # one score tile (see scoring.topk)
    torch_threads: int                   # per Python worker: Spark already runs one worker per core
    embed_batch: int                     # users per forward pass of the user tower


def candidate_rows(users: DataFrame, spec: ScorerSpec, item_ids_bc, item_matrix_bc, fallback_bc,
                   then: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]] | None = None) -> DataFrame:
    """``users`` (from :func:`scoring_users`) -> rows ``user_id, rank, item_id, score, strategy``.

    ``item_ids_bc`` / ``item_matrix_bc``: broadcast catalogue ids (item_id ascending) and their (m, d)
    float32 embeddings; ``fallback_bc``: broadcast :class:`FallbackLists`. ``then``: a second stage run in
    the same Python worker on the scorer's batches (each holds all rows of its users), e.g. the ranker's
    re-ranking (jobs/ranking.py): the rows never leave the worker in between."""

    def score_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        torch.set_num_threads(spec.torch_threads)
        model = _cached(spec.cache_key + "/model", spec.loader)
        item_ids = _cached(spec.cache_key + "/ids", lambda: np.asarray(item_ids_bc.value, dtype=object))
        index = _cached(spec.cache_key + "/index", lambda: {item: i for i, item in enumerate(item_ids)})
        matrix = item_matrix_bc.value
        lists = fallback_bc.value
        scored = (score_batch(batch, model, item_ids, index, matrix, lists, spec) for batch in batches)
        yield from (then(scored) if then else scored)

    return users.mapInArrow(score_batches, CANDIDATE_ROWS)


def score_batch(batch: pa.RecordBatch, model, item_ids: np.ndarray, index: dict[str, int], matrix: np.ndarray,
                lists: FallbackLists, spec: ScorerSpec) -> pa.RecordBatch:
    """One Arrow batch of users -> their candidate rows (each user's rows contiguous, rank ascending)."""
    cols = batch.to_pydict()
    user_ids = cols["user_id"]
    fallback = np.asarray(cols["use_fallback"], dtype=bool)
    excluded = [[index[i] for i in items if i in index] for items in cols["excluded_item_ids"]]
    n, k = len(user_ids), spec.k
    if model.model.cfg.mask_seen:
        excluded = _with_bought(excluded, cols, index, model, fallback)
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_score = np.zeros((n, k), dtype=np.float32)
    counts = np.zeros(n, dtype=np.int64)

    personal = np.flatnonzero(~fallback)
    if len(personal):
        seqs = ([cols["item_ids"][i] for i in personal], [cols["event_types"][i] for i in personal],
                [cols["event_ts"][i] for i in personal])
        vectors = model.user_embeddings(*seqs, batch_size=spec.embed_batch)
        lengths = np.array([len(excluded[i]) for i in personal], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.fromiter((j for i in personal for j in excluded[i]), dtype=np.int64, count=int(indptr[-1]))
        if model.model.cfg.repeat_head:      # the user's own past items: a sparse term on top of the dot product
            b_indptr, b_idx, b_val = _catalogue_boosts(model, index, *model.repeat_boosts(*seqs, batch_size=spec.embed_batch))
            result = topk_with_boosts(vectors, matrix, k, b_indptr, b_idx, b_val, exclude_indptr=indptr,
                                      exclude_indices=flat, block_bytes=spec.block_bytes)
        else:
            result = topk(vectors, matrix, k, exclude_indptr=indptr, exclude_indices=flat, block_bytes=spec.block_bytes)
        out_idx[personal] = result.indices
        out_score[personal] = result.scores
        counts[personal] = result.counts
    for i in np.flatnonzero(fallback):
        chosen, scores = fallback_for(cols["segment"][i], set(excluded[i]), lists, k)
        out_idx[i, :len(chosen)] = chosen
        out_score[i, :len(chosen)] = scores
        counts[i] = len(chosen)

    valid = np.arange(k)[None, :] < counts[:, None]                      # (n, k), row-major = user then rank
    rows_user = np.repeat(np.asarray(user_ids, dtype=object), counts)
    ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), (n, k))[valid]
    strategy = np.repeat(np.where(fallback, POPULAR_FALLBACK, MODEL).astype(object), counts)
    return candidate_batch(rows_user, ranks, item_ids[out_idx[valid]], out_score[valid], strategy)


def candidate_batch(user_ids, ranks, item_ids, scores, strategies) -> pa.RecordBatch:
    """Parallel arrays as one Arrow batch of :data:`CANDIDATE_ROWS`."""
    return pa.RecordBatch.from_arrays(
        [pa.array(user_ids, pa.string()), pa.array(ranks, pa.int32()), pa.array(item_ids, pa.string()),
         pa.array(scores, pa.float32()), pa.array(strategies, pa.string())],
        schema=pa.schema([(f.name, pa.string() if f.dataType == T.StringType() else
                           pa.int32() if f.dataType == T.IntegerType() else pa.float32(), False)
                          for f in CANDIDATE_ROWS.fields]))


def _with_bought(excluded: list[list[int]], cols: dict, index: dict[str, int], model, fallback: np.ndarray
                 ) -> list[list[int]]:
    """A model trained on a catalogue nobody buys again (``SeqRecConfig.mask_seen``): the items each
    model-scored user had a target-type event with in its sequence are not candidates either. The
    fallback's users keep ``score.exclude_event_types`` only: their popular lists are cut to K plus that."""
    wanted = set(model.config.get("train", {}).get("target_event_types") or ("purchase",))
    out = []
    for row, ex in enumerate(excluded):
        items, kinds = (cols["item_ids"][row] or [], cols["event_types"][row] or []) if not fallback[row] else ([], [])
        bought = {index[i] for i, kind in zip(items, kinds) if kind in wanted and i in index}
        out.append(sorted(set(ex) | bought))
    return out


def _catalogue_boosts(model, index: dict[str, int], indptr: np.ndarray, vocab_idx: np.ndarray, values: np.ndarray):
    """The model's repeat boosts (vocabulary positions) -> catalogue positions; items no longer in the
    catalogue drop out."""
    to_catalogue = np.array([index.get(i, -1) for i in model.item_ids], dtype=np.int64)
    idx = to_catalogue[vocab_idx] if len(vocab_idx) else np.zeros(0, np.int64)
    keep = idx >= 0
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))[keep]
    new_indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(indptr) - 1))]).astype(np.int64)
    return new_indptr, idx[keep], values[keep]
