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

Loading makes two streaming passes over the partition's row groups and never holds the whole table:
pass 1 reads only ``user_id`` (dictionary-encoded, as the Parquet files are) to count each user's rows;
pass 2 writes every row straight to its final slot, ``offsets[user] + rank - 1``, in arrays allocated
once. So the order the files store rows in does not matter (``jobs/score.py`` writes each user's rows
together in rank order; delta-rs writes row groups out of order), item and user ids are never
materialised per row, and peak memory is the result plus about one row group in flight.
"""
from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

PUBLISHED = "candidates/published"
USER_CANDIDATES = "candidates/user_candidates"
BATCH_ROWS = 1 << 20                     # rows per batch while loading


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
    """One run_date partition of user_candidates at one table version, as :class:`CandidateSets`.

    Two streaming passes over the partition's row groups, never the whole table in memory: the first
    reads only ``user_id`` (dictionary indices) and counts each user's rows, which fixes every user's
    slice of the result; the second places each row at ``offsets[user] + rank - 1`` in arrays allocated
    once. Storage order does not matter (delta-rs writes row groups out of order; a user's rows may span
    row groups and files), and nothing per row is kept beyond the result's own item codes and scores."""
    from deltalake import DeltaTable

    where = f"{USER_CANDIDATES} v{table_version} run_date {run_date}"
    table = DeltaTable(f"{lake.rstrip('/')}/{USER_CANDIDATES}", version=table_version, storage_options=storage_options)
    dataset = table.to_pyarrow_dataset(
        partitions=[("run_date", "=", run_date.isoformat())],
        parquet_read_options=pads.ParquetReadOptions(dictionary_columns={"user_id", "item_id", "strategy"}))
    users, counts = _count_rows_per_user(dataset, where)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    placed = _place_rows(dataset, users, offsets, where)
    return CandidateSets(
        run_date=run_date, table_version=table_version, model_version=model_version, published_at=published_at,
        user_ids=users.values(), offsets=offsets, item_codes=placed.item_codes, scores=placed.scores,
        item_vocab=placed.item_vocab.values(), strategy_codes=placed.strategy_codes,
        strategy_vocab=placed.strategy_vocab.values(), _index=users.index)


def _batches(dataset: pads.Dataset, columns: list[str], where: str):
    """The partition's record batches, row group by row group with no read-ahead: a batch in flight is
    the only Arrow data alive (a scanner with read-ahead queued several hundred MB while the caller
    worked). Nulls are refused (the schema has none)."""
    for fragment in dataset.get_fragments():
        for group in fragment.split_by_row_group():
            for batch in group.to_batches(columns=columns, batch_size=BATCH_ROWS, batch_readahead=0,
                                          fragment_readahead=0):
                for name in columns:
                    if batch.column(name).null_count:
                        raise ValueError(f"{where}: null {name}")
                if batch.num_rows:
                    yield batch


def _count_rows_per_user(dataset: pads.Dataset, where: str) -> tuple[_Codes, np.ndarray]:
    """Pass 1: a code per distinct user (in order of first sight) and each user's row count."""
    users = _Codes()
    seen_codes, seen_counts = [], []                # per batch: the codes present and their row counts
    for batch in _batches(dataset, ["user_id"], where):
        column = _dictionary(batch.column("user_id"))
        local = np.bincount(column.indices.to_numpy(zero_copy_only=False), minlength=len(column.dictionary))
        present = np.flatnonzero(local)
        seen_codes.append(users.add(column.dictionary.take(pa.array(present))))
        seen_counts.append(local[present])
    if not seen_codes:
        return users, np.zeros(0, dtype=np.int64)
    return users, np.bincount(np.concatenate(seen_codes), weights=np.concatenate(seen_counts),
                              minlength=len(users.index)).astype(np.int64)


@dataclass
class _Placed:
    item_codes: np.ndarray          # (R,) int32 into item_vocab, in (user, rank) order
    scores: np.ndarray              # (R,) float32
    strategy_codes: np.ndarray      # (U,) int8 into strategy_vocab: the strategy of each user's rank-1 row
    item_vocab: _Vocabulary
    strategy_vocab: _Vocabulary


def _place_rows(dataset: pads.Dataset, users: _Codes, offsets: np.ndarray, where: str) -> _Placed:
    """Pass 2: every row written to its slot ``offsets[user] + rank - 1``. With ranks >= 1, every slot
    inside the array and as many rows as slots, "no slot left unwritten" (the -1 sentinel gone from
    ``item_codes``) holds exactly when each user's ranks are 1..n: only user 0 can fill user 0's slots,
    so all n_0 of its rows do, ranks 1..n_0; then the same for user 1, and so on."""
    total = int(offsets[-1])
    item_codes = np.full(total, -1, dtype=np.int32)
    scores = np.empty(total, dtype=np.float32)
    strategy_codes = np.zeros(len(offsets) - 1, dtype=np.int8)
    items, strategies = _Vocabulary(), _Vocabulary()
    row = 0
    for batch in _batches(dataset, ["user_id", "rank", "item_id", "score", "strategy"], where):
        user_col = _dictionary(batch.column("user_id"))
        row_users = users.find(user_col.dictionary)[user_col.indices.to_numpy(zero_copy_only=False)]
        row += batch.num_rows
        if row > total or row_users.min() < 0:    # not what pass 1 read: the files changed meanwhile
            raise ValueError(f"{where}: the table changed while it was read")
        rank = batch.column("rank").to_numpy(zero_copy_only=False)
        slot = offsets[row_users] + (rank - 1)
        if rank.min() < 1 or slot.max() >= total:
            raise ValueError(f"{where}: ranks are not 1..n per user")
        item_col = _dictionary(batch.column("item_id"))
        item_codes[slot] = items.add(item_col.dictionary)[item_col.indices.to_numpy(zero_copy_only=False)]
        scores[slot] = batch.column("score").to_numpy(zero_copy_only=False)
        first = np.flatnonzero(rank == 1)
        strategy_col = _dictionary(batch.column("strategy"))
        strategy_rows = strategy_col.indices.to_numpy(zero_copy_only=False)[first]
        strategy_codes[row_users[first]] = strategies.add(strategy_col.dictionary)[strategy_rows]
    if row != total:
        raise ValueError(f"{where}: read {row} rows of {total}")
    if total and item_codes.min() < 0:
        raise ValueError(f"{where}: ranks are not 1..n per user")
    return _Placed(item_codes=item_codes, scores=scores, strategy_codes=strategy_codes, item_vocab=items,
                   strategy_vocab=strategies)


class _Codes:
    """User ids -> int32 codes in order of first sight, in a Python dict that then serves the lookups.
    Not Arrow's index_in (as for items): it rebuilds its hash table from the whole value set at every
    call, a million users' worth per batch; the dict costs a few operations per entry of a row group's
    dictionary (~10K users), never per row."""

    def __init__(self):
        self.index: dict[str, int] = {}

    def add(self, dictionary: pa.Array) -> np.ndarray:
        """The code of every entry of ``dictionary``, new ids added."""
        ids = dictionary.cast(pa.string()).to_pylist()
        new = list(dict.fromkeys(u for u in ids if u not in self.index))
        self.index.update(zip(new, range(len(self.index), len(self.index) + len(new))))
        return np.fromiter(map(self.index.__getitem__, ids), dtype=np.int32, count=len(ids))

    def find(self, dictionary: pa.Array) -> np.ndarray:
        """The code of every entry of ``dictionary``; -1 for an id never added."""
        ids = dictionary.cast(pa.string()).to_pylist()
        return np.fromiter(map(self.index.get, ids, itertools.repeat(-1)), dtype=np.int32, count=len(ids))

    def values(self) -> np.ndarray:
        values = np.empty(len(self.index), dtype=object)
        values[:] = list(self.index)            # dicts keep insertion order: code i is the i-th key
        return values


class _Vocabulary:
    """Item (or strategy) ids -> int32 codes in order of first sight, in Arrow: ``index_in`` hashes the
    vocabulary seen so far (up to the catalogue) and probes the batch's dictionary, all in C++, where a
    Python dict would take a few operations for each of the ~50K entries of every row group's dictionary."""

    def __init__(self):
        self._values = pa.array([], pa.string())

    def add(self, dictionary: pa.Array) -> np.ndarray:
        """The code of every entry of ``dictionary``, new ids added."""
        dictionary = dictionary.cast(pa.string())
        mapped = pc.index_in(dictionary, value_set=self._values)
        if mapped.null_count:
            self._values = pa.concat_arrays([self._values, pc.unique(dictionary.filter(pc.is_null(mapped)))])
            mapped = pc.index_in(dictionary, value_set=self._values)
        return mapped.to_numpy(zero_copy_only=False).astype(np.int32)

    def values(self) -> np.ndarray:
        return self._values.to_numpy(zero_copy_only=False).astype(object)


def _dictionary(column: pa.Array) -> pa.DictionaryArray:
    return column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
