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

Loading streams the partition in batches into arrays allocated once, reading the string columns
dictionary-encoded (the Parquet files already are), so item and user ids are never materialised per
row. ``jobs/score.py`` writes each user's rows contiguously and in rank order; the reader checks that in
one vectorised pass and sorts only if it does not hold.
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

    Streams the partition batch by batch into arrays allocated once for the whole partition (its row
    count comes from the Parquet footers): peak memory is the result plus one batch plus the ranks
    (4 bytes per row, dropped on return), not a whole Arrow table beside its numpy copy. Rows stored
    out of order add a row permutation (8 bytes per row) and one column copy while reordering."""
    from deltalake import DeltaTable

    where = f"{USER_CANDIDATES} v{table_version} run_date {run_date}"
    table = DeltaTable(f"{lake.rstrip('/')}/{USER_CANDIDATES}", version=table_version, storage_options=storage_options)
    dataset = table.to_pyarrow_dataset(
        partitions=[("run_date", "=", run_date.isoformat())],
        parquet_read_options=pads.ParquetReadOptions(dictionary_columns={"user_id", "item_id", "strategy"}))
    runs = _read_runs(dataset, where)
    first = _changes(runs.users)                # each user's first run
    if not (len(first) == len(runs.user_index) and _ranks_count_up(runs.ranks, runs.starts[first])):
        # Runs of one user stored out of order (a writer that emits row groups out of order, several
        # runs appended): order the runs by (user, first rank), a sort of ~one entry per user, not per row.
        _order_runs(runs)
        first = _changes(runs.users)
    if not _ranks_count_up(runs.ranks, runs.starts[first]):
        # Ranks out of order inside a run: sort every row by (user, rank).
        _order_rows(runs)
        first = _changes(runs.users)
        if not _ranks_count_up(runs.ranks, runs.starts[first]):
            raise ValueError(f"{where}: ranks are not 1..n per user")
    user_codes = runs.users[first]
    user_vocab = np.empty(len(runs.user_index), dtype=object)
    user_vocab[:] = list(runs.user_index)     # dicts keep insertion order: code i is the i-th key
    in_first_seen_order = np.array_equal(user_codes, np.arange(len(user_codes)))
    return CandidateSets(
        run_date=run_date, table_version=table_version, model_version=model_version, published_at=published_at,
        user_ids=user_vocab[user_codes], offsets=np.append(runs.starts[first], len(runs.ranks)).astype(np.int64),
        item_codes=runs.item_codes, scores=runs.scores, item_vocab=runs.item_vocab.values(),
        strategy_codes=runs.strategies[first].astype(np.int8), strategy_vocab=runs.strategy_vocab.values(),
        _index=runs.user_index if in_first_seen_order else {})


@dataclass
class _Runs:
    """A partition as read, grouped into runs: maximal stretches of rows of one user, in storage order
    (one user's rows may form several runs). Reordering replaces the arrays, one at a time."""

    item_codes: np.ndarray          # (R,) int32 into item_vocab, per row
    scores: np.ndarray              # (R,) float32, per row
    ranks: np.ndarray               # (R,) int32, per row
    users: np.ndarray               # (runs,) int32 user code (into user_index) of each run
    strategies: np.ndarray          # (runs,) int32 into strategy_vocab
    starts: np.ndarray              # (runs + 1,) int64: run i is rows starts[i]:starts[i + 1]
    user_index: dict[str, int]      # user_id -> code, in order of first sight
    item_vocab: _Vocabulary
    strategy_vocab: _Vocabulary


def _read_runs(dataset: pads.Dataset, where: str) -> _Runs:
    """Stream the partition into arrays allocated once (its row count comes from the Parquet footers)."""
    total = dataset.count_rows()
    item_codes = np.empty(total, dtype=np.int32)
    scores = np.empty(total, dtype=np.float32)
    ranks = np.empty(total, dtype=np.int32)
    items, strategies = _Vocabulary(), _Vocabulary()
    run_users, run_lengths, run_strategies = [], [], []     # per batch: its maximal runs of one user
    row = 0
    for batch in dataset.to_batches(columns=["user_id", "rank", "item_id", "score", "strategy"], batch_size=BATCH_ROWS,
                                    batch_readahead=2, fragment_readahead=1):
        n = batch.num_rows
        if n == 0:
            continue
        if row + n > total:
            raise ValueError(f"{where}: more rows than its files declare")
        users = _dictionary(batch.column("user_id"))
        user_rows = users.indices.to_numpy(zero_copy_only=False)
        starts = _changes(user_rows)
        run_users.append(users.dictionary.take(pa.array(user_rows[starts])).cast(pa.string()))
        run_lengths.append(np.diff(np.append(starts, n)))
        run_strategies.append(strategies.codes(_dictionary(batch.column("strategy")))[starts])
        item_codes[row:row + n] = items.codes(_dictionary(batch.column("item_id")))
        scores[row:row + n] = batch.column("score").to_numpy(zero_copy_only=False)
        ranks[row:row + n] = batch.column("rank").to_numpy(zero_copy_only=False)
        row += n
    if row != total:
        raise ValueError(f"{where}: read {row} rows of {total}")
    # One code per distinct user; consecutive runs of one user (split by a batch border) share it.
    run_ids = pa.concat_arrays(run_users).to_numpy(zero_copy_only=False) if run_users else np.array([], dtype=object)
    user_index: dict[str, int] = {}
    run_codes = np.fromiter((user_index.setdefault(u, len(user_index)) for u in run_ids), dtype=np.int32,
                            count=len(run_ids))
    lengths = np.concatenate(run_lengths) if run_lengths else np.zeros(0, dtype=np.int64)
    return _Runs(item_codes=item_codes, scores=scores, ranks=ranks, users=run_codes,
                 strategies=np.concatenate(run_strategies) if run_strategies else np.zeros(0, dtype=np.int32),
                 starts=np.append(0, np.cumsum(lengths)).astype(np.int64), user_index=user_index,
                 item_vocab=items, strategy_vocab=strategies)


def _order_runs(runs: _Runs) -> None:
    """Runs in (user, first rank) order."""
    lengths = np.diff(runs.starts)
    order = np.lexsort((runs.ranks[runs.starts[:-1]], runs.users))
    rows = _rows_of_runs(runs.starts[:-1][order], lengths[order], len(runs.ranks))
    runs.item_codes = runs.item_codes[rows]     # one array at a time: one copy alive beside the rest
    runs.scores = runs.scores[rows]
    runs.ranks = runs.ranks[rows]
    del rows
    runs.users, runs.strategies = runs.users[order], runs.strategies[order]
    runs.starts = np.append(0, np.cumsum(lengths[order])).astype(np.int64)


def _order_rows(runs: _Runs) -> None:
    """Every row in (user, rank) order, each row a run of its own."""
    lengths = np.diff(runs.starts)
    row_users = np.repeat(runs.users, lengths)
    rows = np.lexsort((runs.ranks, row_users))
    runs.users, runs.strategies = row_users[rows], np.repeat(runs.strategies, lengths)[rows]
    runs.item_codes, runs.scores, runs.ranks = runs.item_codes[rows], runs.scores[rows], runs.ranks[rows]
    runs.starts = np.arange(len(rows) + 1, dtype=np.int64)


def _changes(codes: np.ndarray) -> np.ndarray:
    """Positions where a new value starts in ``codes`` (0 included when not empty)."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))


def _rows_of_runs(starts: np.ndarray, lengths: np.ndarray, total: int) -> np.ndarray:
    """Row indices that read the runs (start, length) one after another."""
    new_starts = np.append(0, np.cumsum(lengths)[:-1])
    rows = np.repeat(starts - new_starts, lengths)
    step = 1 << 24
    for lo in range(0, total, step):          # + arange, in slices to keep one temporary small
        hi = min(total, lo + step)
        rows[lo:hi] += np.arange(lo, hi)
    return rows


class _Vocabulary:
    """The distinct strings seen across batches, each with a stable int32 code (in order of first sight)."""

    def __init__(self):
        self._values = pa.array([], pa.string())

    def codes(self, column: pa.DictionaryArray) -> np.ndarray:
        """The int32 code of every row of ``column``, adding the strings not seen before."""
        dictionary = column.dictionary.cast(pa.string())
        mapped = pc.index_in(dictionary, value_set=self._values)
        if mapped.null_count:
            new = pc.unique(dictionary.filter(pc.is_null(mapped)))
            self._values = pa.concat_arrays([self._values, new])
            mapped = pc.index_in(dictionary, value_set=self._values)
        lookup = mapped.to_numpy(zero_copy_only=False).astype(np.int32)
        return lookup[column.indices.to_numpy(zero_copy_only=False)]

    def values(self) -> np.ndarray:
        return self._values.to_numpy(zero_copy_only=False).astype(object)


def _dictionary(column: pa.Array) -> pa.DictionaryArray:
    return column if pa.types.is_dictionary(column.type) else column.dictionary_encode()


def _ranks_count_up(ranks: np.ndarray, starts: np.ndarray) -> bool:
    """Whether the ranks read 1, 2, 3, ... from each user's start row (rows already grouped by user)."""
    if len(ranks) == 0:
        return True
    if not (ranks[starts] == 1).all():
        return False
    steps = np.diff(ranks)                     # +1 inside a user's rows; anything at a border
    steps[starts[1:] - 1] = 1
    return bool((steps == 1).all())
