"""The reader online services call at start-up: :func:`load_latest` returns the candidates of the latest
*published* run (``candidates/published``) as a compact in-memory lookup ``user_id -> ranked items``.

No Spark, no JVM: Delta tables are read with the ``deltalake`` package (delta-rs) into pyarrow. Only the
published ``table_version`` of ``candidates/user_candidates`` is read (time travel), and only its
``run_date`` partition, so a later scored-but-unpublished run, or one whose gate failed, is never seen.

Layout (CSR, like a sparse matrix; about 8 bytes per candidate plus ~150 bytes per user):
- ``user_ids``   (U,) object: user ids, in storage order
- ``offsets``    (U + 1,) int64: user i's candidates are rows offsets[i]:offsets[i+1], rank order
- ``item_codes`` (R,) int32 into ``item_vocab`` (each distinct item id stored once)
- ``scores``     (R,) float32
- ``strategy_codes`` (U,) int8 into ``strategy_vocab``
- a dict user_id -> i for O(1) lookups.

Loading reads the columns dictionary-encoded (the Parquet files already are), so item and user ids are
never materialised per row. ``jobs/score.py`` writes each user's rows contiguously and in rank order;
the reader checks that in one vectorised pass and sorts only if it does not hold.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

PUBLISHED = "candidates/published"
USER_CANDIDATES = "candidates/user_candidates"


class NothingPublished(LookupError):
    """The lake has no published candidates yet."""


@dataclass
class CandidateSets:
    """Published candidates in memory. ``items(user)`` -> ranked item ids; unknown users -> []."""

    run_date: dt.date
    table_version: int
    model_version: str | None
    published_at: Any
    user_ids: np.ndarray
    offsets: np.ndarray
    item_codes: np.ndarray
    scores: np.ndarray
    item_vocab: np.ndarray
    strategy_codes: np.ndarray
    strategy_vocab: np.ndarray
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self._index:
            self._index = {u: i for i, u in enumerate(self.user_ids.tolist())}

    def __len__(self) -> int:
        return len(self.user_ids)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._index

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def items(self, user_id: str) -> list[str]:
        """Ranked item ids for ``user_id`` (best first); [] for a user without candidates."""
        i = self._index.get(user_id)
        if i is None:
            return []
        return self.item_vocab[self.item_codes[self.offsets[i]:self.offsets[i + 1]]].tolist()

    def candidates(self, user_id: str) -> list[tuple[str, float]]:
        """(item_id, score) pairs, best first."""
        i = self._index.get(user_id)
        if i is None:
            return []
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return list(zip(self.item_vocab[self.item_codes[lo:hi]].tolist(), self.scores[lo:hi].tolist()))

    def strategy(self, user_id: str) -> str | None:
        i = self._index.get(user_id)
        return None if i is None else str(self.strategy_vocab[self.strategy_codes[i]])

    def nbytes(self) -> int:
        """Approximate resident size: arrays plus the id strings and the lookup dict."""
        import sys

        arrays = sum(a.nbytes for a in (self.offsets, self.item_codes, self.scores, self.strategy_codes))
        strings = sum(sys.getsizeof(s) for s in self.user_ids) + sum(sys.getsizeof(s) for s in self.item_vocab)
        return arrays + self.user_ids.nbytes + self.item_vocab.nbytes + strings + sys.getsizeof(self._index)


def latest_published(lake: str, storage_options: dict[str, str] | None = None) -> dict[str, Any]:
    """The newest row of candidates/published (by published_at, then table_version)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(f"{lake.rstrip('/')}/{PUBLISHED}", storage_options=storage_options).to_pyarrow_table()
    except TableNotFoundError:
        raise NothingPublished(f"no {PUBLISHED} table under {lake}: nothing has been published yet") from None
    if table.num_rows == 0:
        raise NothingPublished(f"{PUBLISHED} under {lake} is empty: nothing has been published yet")
    order = pc.sort_indices(table, sort_keys=[("published_at", "descending"), ("table_version", "descending")])
    return table.take(order[:1]).to_pylist()[0]


def load_latest(lake: str, storage_options: dict[str, str] | None = None) -> CandidateSets:
    """Candidates of the latest published run (see the module docstring)."""
    pointer = latest_published(lake, storage_options)
    return load_run(lake, pointer["run_date"], int(pointer["table_version"]), pointer.get("model_version"),
                    pointer.get("published_at"), storage_options)


def load_run(lake: str, run_date: dt.date, table_version: int, model_version: str | None = None,
             published_at: Any = None, storage_options: dict[str, str] | None = None) -> CandidateSets:
    """One run_date partition of user_candidates at one table version, as :class:`CandidateSets`."""
    from deltalake import DeltaTable

    table = DeltaTable(f"{lake.rstrip('/')}/{USER_CANDIDATES}", version=table_version, storage_options=storage_options)
    dataset = table.to_pyarrow_dataset(
        partitions=[("run_date", "=", run_date.isoformat())],
        parquet_read_options=pads.ParquetReadOptions(dictionary_columns={"user_id", "item_id", "strategy"}))
    data = dataset.to_table(columns=["user_id", "rank", "item_id", "score", "strategy"])
    users_vocab, user_codes = _codes(data.column("user_id"))
    item_vocab, item_codes = _codes(data.column("item_id"))
    strategy_vocab, strategy_row_codes = _codes(data.column("strategy"))
    ranks = _numpy(data.column("rank"), np.int32)
    scores = _numpy(data.column("score"), np.float32)
    del data

    starts = _user_starts(user_codes, ranks, len(users_vocab))
    if starts is None:                       # not stored grouped and ranked: sort once
        order = np.lexsort((ranks, user_codes))
        user_codes, item_codes, scores = user_codes[order], item_codes[order], scores[order]
        strategy_row_codes = strategy_row_codes[order]
        starts = _user_starts(user_codes, ranks[order], len(users_vocab))
        if starts is None:
            raise ValueError(f"{USER_CANDIDATES} v{table_version} run_date {run_date}: ranks are not 1..n per user")
    offsets = np.append(starts, len(user_codes)).astype(np.int64)
    return CandidateSets(
        run_date=run_date, table_version=table_version, model_version=model_version, published_at=published_at,
        user_ids=users_vocab[user_codes[starts]], offsets=offsets, item_codes=item_codes, scores=scores,
        item_vocab=item_vocab, strategy_codes=strategy_row_codes[starts].astype(np.int8),
        strategy_vocab=strategy_vocab)


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(vocabulary as an object array, int32 codes per row) of a string column read dictionary-encoded."""
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    column = column.unify_dictionaries()
    if column.num_chunks == 0:
        return np.array([], dtype=object), np.array([], dtype=np.int32)
    vocab = column.chunk(0).dictionary.to_numpy(zero_copy_only=False).astype(object)
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
                            for c in column.chunks])
    return vocab, codes


def _numpy(column: pa.ChunkedArray, dtype) -> np.ndarray:
    if column.num_chunks == 0:
        return np.array([], dtype=dtype)
    return np.concatenate([c.to_numpy(zero_copy_only=False) for c in column.chunks]).astype(dtype, copy=False)


def _user_starts(user_codes: np.ndarray, ranks: np.ndarray, vocab_size: int) -> np.ndarray | None:
    """Start row of each user if every user's rows are contiguous with ranks 1, 2, ..., else None."""
    n = len(user_codes)
    if n == 0:
        return np.array([], dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], user_codes[1:] != user_codes[:-1]]))
    if len(starts) != np.count_nonzero(np.bincount(user_codes, minlength=vocab_size)):
        return None                          # some user appears in two runs of rows
    lengths = np.diff(np.append(starts, n))
    expected_rank = np.arange(n, dtype=np.int64) - np.repeat(starts, lengths) + 1
    return starts if np.array_equal(ranks, expected_rank) else None
