"""What the driver hands the model besides the examples, one value per catalogue item (vocabulary
order): the vocabulary itself with each item's count and rebuy log-odds (one pass over the sequences),
the frozen text embeddings (cached per catalogue fingerprint in a folder the caller names), and the
recent popularity from ``features/item_daily``, one row per day.

Called by jobs/train.py (all three), jobs/score.py and jobs/evaluate.py (the recent popularity of the
day they score). Light to import: torch, Ray and the lake are loaded by the functions that need them.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger("warmstart.train")


@dataclass(frozen=True)
class VocabularyStats:
    """:func:`vocabulary_stats`: the vocabulary and what one pass over the training rows counts."""

    vocab: list[str]
    counts: np.ndarray                  # (V,) events per item
    rebuy: dict[str, np.ndarray]        # {"train", "refit"}: (V,) rebuy log-odds over each phase's inputs
    purchases: int                      # target-type events before the validation window
    repurchases: int                    # of which the user had bought the item in an earlier basket


def vocabulary(sequences, items, target_event_types: Sequence[str], window_start: dt.datetime,
               cut: dt.datetime) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """(vocab, counts, rebuy) of :func:`vocabulary_stats`."""
    stats = vocabulary_stats(sequences, items, target_event_types, window_start, cut)
    return stats.vocab, stats.counts, stats.rebuy


def vocabulary_stats(sequences, items, target_event_types: Sequence[str], window_start: dt.datetime,
                     cut: dt.datetime) -> VocabularyStats:
    """Vocabulary (catalogue ∪ sequence items, sorted), each item's count in the sequences, each item's
    rebuy log-odds over each training phase's inputs, and the repurchases, in one pass: ``train``, the
    selection run's (events before the validation window, ``window_start``); ``refit``, every event before
    ``cut``. ``sequences``: a Ray Dataset of user_sequences rows (or whole histories); ``items``: the
    catalogue (pandas, ``item_id``)."""
    from training.data import build_vocabulary, item_stats_batch, rebuy_log_odds

    # Per-block (item, stats) rows come back to the driver: at most catalogue-size rows per block,
    # summed here (Ray Data's hash groupby costs far more than it saves at this size).
    per_block = sequences.select_columns(["item_ids", "event_types", "event_ts"]).map_batches(
        item_stats_batch, fn_kwargs={"target_event_types": tuple(target_event_types), "window_start": window_start,
                                     "cutoff": cut}, batch_format="numpy", batch_size=None).to_pandas()
    sums = per_block.groupby("item_id").sum(numeric_only=True)
    vocab = build_vocabulary(items["item_id"].astype(str), sums.index.astype(str))
    sums = sums.reindex(vocab, fill_value=0)
    rebuy = {phase: rebuy_log_odds(sums[f"buyers_{phase}"].to_numpy(), sums[f"rebuyers_{phase}"].to_numpy())
             for phase in ("train", "refit")}
    return VocabularyStats(vocab=vocab, counts=sums["count"].to_numpy(dtype=np.int64), rebuy=rebuy,
                           purchases=int(sums["purchases_train"].sum()),
                           repurchases=int(sums["repurchases_train"].sum()))


def item_texts(vocab: Sequence[str], items) -> list[str]:
    """The encoder's text of every vocabulary item, from the catalogue rows (``[no text]`` for an item
    the catalogue lacks)."""
    from training.model import item_text

    by_id = {str(r["item_id"]): r for r in items.to_dict("records")}
    return [item_text(*(by_id.get(i, {}).get(c) for c in ("title", "category", "description"))) for i in vocab]


def text_embeddings(vocab: Sequence[str], items, model_cfg, cache_dir: Path) -> tuple[np.ndarray | None, str | None]:
    """Frozen mode: ((V, text_dim) encoder embeddings of the vocabulary's item text, their cache key),
    cached as ``<cache_dir>/<key>.safetensors`` (the key fingerprints the encoder and every text).
    (None, None) when the model has no frozen text part."""
    from safetensors.numpy import load_file, save_file

    from training.model import encode_texts, texts_fingerprint
    from training.registry import replace_file

    if not model_cfg.use_text or model_cfg.encoder_mode != "frozen":
        return None, None
    texts = item_texts(vocab, items)
    key = texts_fingerprint(model_cfg.encoder_path, texts, model_cfg.text_max_tokens)
    cache = Path(cache_dir) / f"{key}.safetensors"
    if cache.is_file():
        return load_file(str(cache))["text_embeddings"], key
    started = time.time()
    emb = encode_texts(texts, model_cfg.encoder_path, model_cfg.text_max_tokens).numpy()
    log.info("encoded %d item texts in %.1fs (cached as %s)", len(texts), time.time() - started, cache.name)
    cache.parent.mkdir(parents=True, exist_ok=True)
    replace_file(cache, lambda tmp: save_file({"text_embeddings": emb}, str(tmp)))
    return emb, key


def recent_popularity(lake_root: str, as_of: dt.date, item_index: dict[str, int], recent_days: int,
                      target_event_types: Sequence[str], since: dt.date | None = None
                      ) -> tuple[int | None, np.ndarray, int]:
    """The model's recent-popularity input from ``features/item_daily`` up to ``as_of`` (from ``since``):
    (Delta version read, (D, V) log1p counts of the target event types, first day); see
    :func:`recent_popularity_from_daily`. Version None and one zero row when the table does not exist
    (a lake whose sequences did not come from ``warmstart features``): the term is then 0."""
    from features.tables import EVENT_COUNT_NAMES, ITEM_DAILY
    from jobs import lake

    columns = [f"count_{EVENT_COUNT_NAMES[t]}" for t in target_event_types if t in EVENT_COUNT_NAMES]
    filters = [("event_date", "<=", as_of)] + ([("event_date", ">=", since)] if since else [])
    try:
        version, daily = lake.read_pandas(lake_root, ITEM_DAILY, columns=["item_id", "event_date", *columns],
                                          filters=filters)
    except FileNotFoundError:
        log.warning("%s not found: training without the recent-popularity input", ITEM_DAILY.name)
        return None, np.zeros((1, len(item_index)), np.float32), _day_number(as_of) + 1
    return (version, *recent_popularity_from_daily(daily, columns, as_of, item_index, recent_days))


def recent_popularity_from_daily(daily, count_columns: Sequence[str], as_of: dt.date, item_index: dict[str, int],
                                 recent_days: int) -> tuple[np.ndarray, int]:
    """``features/item_daily`` rows (pandas: item_id, event_date, ``count_columns``) -> ((D, V) log1p of
    each item's summed counts over the ``recent_days`` days before each day, first day), the rows up to
    the day after ``as_of`` (training.data.recent_purchase_matrix). Pure."""
    from training.data import recent_purchase_matrix

    daily = daily.assign(count=daily[list(count_columns)].sum(axis=1) if count_columns else 0)
    return recent_purchase_matrix(daily, item_index, recent_days, _day_number(as_of))


def _day_number(day: dt.date) -> int:
    """Days since 1970-01-01, the recent-popularity row key."""
    return (day - dt.date(1970, 1, 1)).days
