"""Exact top-K by dot product, tile by tile: the scoring core that ``jobs/score.py`` runs on every Spark
executor (inside ``mapInArrow``) and that ``bench/score.py`` measures.

``topk(users (n, d), items (m, d), k)`` returns, per user, the indices and scores of the K items with
the highest dot product, ordered by score descending then item index ascending. Callers put the item
matrix in ``item_id`` order, so the tie-break is "score desc, item_id asc" — deterministic, and the
same on every machine, for every tile size and thread count.

How it stays fast and exact without the full (n, m) score matrix:
- users are split into blocks; each of ``threads`` threads takes whole blocks (matmul and selection on
  the same core, no synchronisation inside a block);
- a block's scores are computed one tile at a time (``block_bytes``: users x ``tile_items`` items, one
  single-threaded sgemm into a reused buffer that stays in the caches). A catalogue small enough that
  a block of ``WHOLE_ROW_USERS`` users holds it whole is one tile: each user's first bar (below) then
  covers every item, so fewer scores enter than over several narrower tiles (docs/scoring.md);
- while the tile is still in cache, a compiled pass (numba, GIL released) offers each score to its
  user's candidate buffer. A score enters only when it beats the user's *bar*, the K-th best score
  kept so far. Per user row, one vectorised pass writes a byte mask of the scores above the bar, and
  only the mask's non-zero 8-byte words are visited (after the first tile almost none are). A user's
  first tile starts from a bar taken from group maxima (``_first_bar``), not from minus infinity. So
  the scores are read from cache and never written to memory;
- a full buffer (``buffer_factor`` x K) is shrunk to its K best by an in-place selection, which raises
  the bar. A candidate is one uint64 key (order-preserving score bits, inverted, then the item index),
  so "the K best" is "the K smallest keys", ties included, and the final order is a sort of K keys;
- ties: items are visited in increasing index order and a score must be strictly above the bar to
  enter, so among equal scores the lower item index wins, across tiles and at the K-th place;
- excluded items (a user's past purchases) are skipped where they would enter (each user's exclusion
  list is walked once, in item order); a user whose eligible items are fewer than K gets a shorter
  list (``counts``). NaN scores never enter; -0.0 ties with 0.0.

``topk_with_boosts`` adds a sparse per-user term (the model's repeat head: a weight for each of the
user's past items) exactly: with at most b boosted items per user, the top ``k + b`` by dot product
hold at least k unboosted candidates, so no item outside them and the boosted ones can make the final
K; those are re-scored (dot + boost) and re-sorted with the same tie-break.

Pure: numpy / torch / numba in, numpy out. No Spark, no I/O. The numba functions are compiled once and
cached on disk beside this file (``cache=True``), so Spark's Python workers load them.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numba
import numpy as np
import torch

NEG_INF = float("-inf")
TILE_ITEMS = 4096         # a larger catalogue's tile width: sgemm is fastest on it (docs/scoring.md, Benchmark)
WHOLE_ROW_USERS = 64      # a catalogue whose block of this many users fits block_bytes is one tile
BLOCK_BYTES = 4 << 20     # one tile holds the whole catalogue up to 16K items (docs/scoring.md, Benchmark)


@dataclass(frozen=True)
class TopK:
    """Per-user results, rows aligned with the input users."""

    indices: np.ndarray   # (n, k) int64 item indices; -1 past counts[i]
    scores: np.ndarray    # (n, k) float32; -inf past counts[i]
    counts: np.ndarray    # (n,) int32: how many of the k slots hold an eligible item


@dataclass(frozen=True)
class _Tiling:
    width: int            # items per score tile
    block: int            # users per block (one block's tile is at most block_bytes)
    capacity: int         # candidate keys buffered per user before a shrink to the k best


def topk(users: np.ndarray, items: np.ndarray, k: int, *,
         exclude_indptr: np.ndarray | None = None, exclude_indices: np.ndarray | None = None,
         block_bytes: int = BLOCK_BYTES, tile_items: int | None = None, buffer_factor: int = 2,
         threads: int | None = None) -> TopK:
    """Top ``k`` items per user by dot product (see the module docstring).

    ``exclude_indptr`` / ``exclude_indices``: CSR lists of item indices to exclude per user
    (user i excludes ``exclude_indices[exclude_indptr[i]:exclude_indptr[i+1]]``), in any order.
    ``block_bytes`` / ``tile_items``: size of one score tile (bytes) and its width (items); by default
    the whole catalogue when ``WHOLE_ROW_USERS`` users' rows fit ``block_bytes``, else ``TILE_ITEMS``.
    ``threads``: default ``torch.get_num_threads()``."""
    users = np.ascontiguousarray(users, dtype=np.float32)
    items = np.ascontiguousarray(items, dtype=np.float32)
    _check(users, items, k, exclude_indptr, exclude_indices)
    n, m = users.shape[0], items.shape[0]
    indptr, excluded = _exclusions(n, exclude_indptr, exclude_indices)
    if not (n and m):
        return TopK(np.full((n, k), -1, dtype=np.int64), np.full((n, k), NEG_INF, dtype=np.float32),
                    np.zeros(n, dtype=np.int32))
    tiling = _tiling(n, m, k, block_bytes, tile_items, buffer_factor)
    # Left empty: each block's _finish fills its rows (padding included) on its own thread while they are
    # in cache; filling them here first is a single-threaded pass over n x k x 12 bytes.
    out = TopK(np.empty((n, k), dtype=np.int64), np.empty((n, k), dtype=np.float32), np.empty(n, dtype=np.int32))
    item_rows = torch.from_numpy(items)
    # Each item tile as its own contiguous (d, width) matrix: sgemm is faster on it than on a transposed
    # (width, d) view (docs/scoring.md).
    item_tiles = [item_rows[first:first + tiling.width].T.contiguous() for first in range(0, m, tiling.width)]
    cursor = indptr[:-1].copy()                 # per user: next exclusion not yet passed
    workers = max(1, min(threads or torch.get_num_threads(), -(-n // tiling.block)))
    starts = range(0, n, tiling.block)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)                    # one core per block: the threads are ours
    try:
        _in_threads(functools.partial(_score_blocks, users=users, item_tiles=item_tiles, k=k, tiling=tiling,
                                      cursor=cursor, indptr=indptr, excluded=excluded, out=out),
                    [starts[w::workers] for w in range(workers)])
    finally:
        torch.set_num_threads(saved)
    return out


def _check(users: np.ndarray, items: np.ndarray, k: int, exclude_indptr, exclude_indices) -> None:
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(f"users {users.shape} and items {items.shape} must be (n, d) and (m, d)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, m = users.shape[0], items.shape[0]
    if (exclude_indptr is None) != (exclude_indices is None):
        raise ValueError("give both exclude_indptr and exclude_indices, or neither")
    if exclude_indptr is not None and len(exclude_indptr) != n + 1:
        raise ValueError(f"exclude_indptr has {len(exclude_indptr)} entries for {n} users (want n + 1)")
    if m >= 1 << 32:
        raise ValueError(f"{m} items: item indices must fit in 32 bits")


def _exclusions(n: int, exclude_indptr, exclude_indices) -> tuple[np.ndarray, np.ndarray]:
    """The CSR exclusion lists as int64 (indptr, indices), each user's indices in ascending item order;
    n empty lists when none are given."""
    if exclude_indptr is None:
        return np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    indptr = np.asarray(exclude_indptr, dtype=np.int64)
    return indptr, _sorted_per_user(indptr, np.asarray(exclude_indices, dtype=np.int64))


def _tiling(n: int, m: int, k: int, block_bytes: int, tile_items: int | None, buffer_factor: int) -> _Tiling:
    if tile_items is None:
        tile_items = m if 4 * m * WHOLE_ROW_USERS <= block_bytes else TILE_ITEMS
    width = int(max(1, min(m, tile_items)))
    return _Tiling(width=width, block=int(max(1, min(n, block_bytes // (4 * width)))),
                   capacity=max(k * buffer_factor, k + 16))


def _score_blocks(blocks: range, users: np.ndarray, item_tiles: list[torch.Tensor], k: int, tiling: _Tiling,
                  cursor: np.ndarray, indptr: np.ndarray, excluded: np.ndarray, out: TopK) -> None:
    """The user blocks starting at ``blocks``, one after the other on this thread: each block's scores
    one item tile at a time into a reused buffer, offered to the selection while in cache, then the
    block's rows of ``out`` written."""
    n = users.shape[0]
    buffer = torch.empty(tiling.block * tiling.width, dtype=torch.float32)
    kept = np.empty((tiling.block, tiling.capacity), dtype=np.uint64)
    for start in blocks:
        stop = min(n, start + tiling.block)
        sizes = np.zeros(stop - start, dtype=np.int64)
        bars = np.full(stop - start, NEG_INF, dtype=np.float32)
        user_rows = torch.from_numpy(users[start:stop])
        for t, item_tile in enumerate(item_tiles):
            tile = buffer[:(stop - start) * item_tile.shape[1]].view(stop - start, item_tile.shape[1])
            torch.matmul(user_rows, item_tile, out=tile)
            _scan_tile(tile.numpy(), t * tiling.width, kept, sizes, bars, k,
                       cursor[start:stop], indptr[start + 1:stop + 1], excluded)
        _finish(kept, sizes, k, out.scores[start:stop], out.indices[start:stop], out.counts[start:stop])


def _in_threads(work: Callable[[Any], None], parts: list) -> None:
    """``work(part)`` for every part, one thread each (the calling thread when there is one part)."""
    if len(parts) == 1:
        work(parts[0])
        return
    with ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(work, parts))


def topk_with_boosts(users: np.ndarray, items: np.ndarray, k: int, boost_indptr: np.ndarray,
                     boost_indices: np.ndarray, boost_values: np.ndarray, *,
                     exclude_indptr: np.ndarray | None = None, exclude_indices: np.ndarray | None = None,
                     **tiling) -> TopK:
    """Top ``k`` items per user by ``users[u] . items[i] + boost_u(i)``, where user u's boosts are
    ``boost_values[boost_indptr[u]:boost_indptr[u+1]]`` on items ``boost_indices[...]`` (CSR, item
    indices distinct per user, any sign). Exclusions and the tie-break as in :func:`topk`; ``tiling``:
    :func:`topk`'s block / tile / thread options."""
    users = np.ascontiguousarray(users, dtype=np.float32)
    items = np.ascontiguousarray(items, dtype=np.float32)
    n, m = users.shape[0], items.shape[0]
    b_indptr = np.asarray(boost_indptr, dtype=np.int64)
    if len(b_indptr) != n + 1:
        raise ValueError(f"boost_indptr has {len(b_indptr)} entries for {n} users (want n + 1)")
    per_user = np.diff(b_indptr)
    b_items = np.asarray(boost_indices, dtype=np.int64)[:b_indptr[-1]]
    b_values = np.asarray(boost_values, dtype=np.float32)[:b_indptr[-1]]
    if len(b_items) and (b_items.min() < 0 or b_items.max() >= m):
        raise ValueError(f"boost_indices must be item indices in [0, {m})")
    widest = int(per_user.max()) if n else 0
    base = topk(users, items, min(max(m, 1), k + widest), exclude_indptr=exclude_indptr,
                exclude_indices=exclude_indices, **tiling)
    if widest == 0:
        return _first_k(base, k)
    x_indptr, x_sorted = _exclusions(n, exclude_indptr, exclude_indices)
    out = TopK(np.full((n, k), -1, dtype=np.int64), np.full((n, k), NEG_INF, dtype=np.float32),
               np.zeros(n, dtype=np.int32))
    threads = max(1, min(tiling.get("threads") or torch.get_num_threads(), n))
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)

    def merge(t: int) -> None:
        _merge_boosts(users, items, base.indices, base.scores, b_indptr, b_items, b_values, x_indptr, x_sorted,
                      bounds[t], bounds[t + 1], out.indices, out.scores, out.counts)

    _in_threads(merge, list(range(threads)))
    return out


@numba.njit(cache=True, nogil=True)
def _merge_boosts(users, items, base_idx, base_score, b_indptr, b_items, b_values, x_indptr, x_sorted,
                  lo, hi, out_idx, out_score, counts):
    """Users lo..hi-1: the dot-product top (base, sorted) without the boosted items, merged with the
    boosted items re-scored (dot + boost, excluded and NaN dropped), first k by score desc, item asc."""
    k = out_idx.shape[1]
    width = base_idx.shape[1]
    d = users.shape[1]
    for u in range(lo, hi):
        b0, b1 = b_indptr[u], b_indptr[u + 1]
        nb = b1 - b0
        boosted = np.sort(b_items[b0:b1])                          # for the membership test below
        cand_items = np.empty(nb, dtype=np.int64)
        cand_scores = np.empty(nb, dtype=np.float32)
        c = 0
        for j in range(b0, b1):
            item = b_items[j]
            if x_indptr[u + 1] > x_indptr[u] and _in_range(x_sorted, x_indptr[u], x_indptr[u + 1], item):
                continue
            acc = np.float32(0.0)
            for t in range(d):
                acc += users[u, t] * items[item, t]
            score = np.float32(acc + b_values[j])
            if score != score:                                     # NaN never enters
                continue
            cand_items[c] = item
            cand_scores[c] = score
            c += 1
        # boosted candidates in output order: item asc, then a stable sort on score desc
        by_item = np.argsort(cand_items[:c])
        items_sorted = cand_items[:c][by_item]
        scores_sorted = cand_scores[:c][by_item]
        order = np.argsort(-scores_sorted, kind="mergesort")
        i = 0                                                      # next base entry
        j = 0                                                      # next boosted candidate
        r = 0
        while r < k:
            while i < width and base_idx[u, i] >= 0 and _in_range(boosted, 0, nb, base_idx[u, i]):
                i += 1                                             # re-scored among the boosted
            has_base = i < width and base_idx[u, i] >= 0
            has_boost = j < c
            if not has_base and not has_boost:
                break
            take_base = has_base
            if has_base and has_boost:
                bs, bi = base_score[u, i], base_idx[u, i]
                cs, ci = scores_sorted[order[j]], items_sorted[order[j]]
                take_base = bs > cs or (bs == cs and bi < ci)
            if take_base:
                out_idx[u, r], out_score[u, r] = base_idx[u, i], base_score[u, i]
                i += 1
            else:
                out_idx[u, r], out_score[u, r] = items_sorted[order[j]], scores_sorted[order[j]]
                j += 1
            r += 1
        counts[u] = r


@numba.njit(cache=True, nogil=True)
def _in_range(sorted_values, lo, hi, value):
    """value in sorted_values[lo:hi] (binary search)."""
    end = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_values[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and sorted_values[lo] == value


def _first_k(result: TopK, k: int) -> TopK:
    idx, scores = result.indices[:, :k], result.scores[:, :k]
    return TopK(np.ascontiguousarray(idx), np.ascontiguousarray(scores), (idx >= 0).sum(axis=1).astype(np.int32))


def _sorted_per_user(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The CSR exclusion lists with each user's entries in ascending item order."""
    owner = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return indices[np.lexsort((indices, owner))]


# A candidate is one uint64 key: the score's bits made order-preserving and inverted (high half), then
# the item index (low half). Ascending keys = score descending, then item index ascending: the result
# order. Keys are unique (item indices are), so "the k best" is "the k smallest keys", ties included.
# Inverted order-preserving bits: a negative float keeps its bits (sign set, a larger magnitude ranks
# lower); a non-negative one has its 31 low bits flipped (sign clear, a larger value ranks higher).
@numba.njit(inline="always")
def _key(bits, item):
    if bits == np.uint32(0x80000000):            # -0.0 ties with +0.0, as in float comparison
        bits = np.uint32(0)
    inverted = bits if bits >> np.uint32(31) else bits ^ np.uint32(0x7FFFFFFF)
    return (np.uint64(inverted) << np.uint64(32)) | np.uint64(item)


@numba.njit(inline="always")
def _unkey(key):
    """(score bits as uint32, item index) of a key."""
    inverted = np.uint32(key >> np.uint64(32))
    bits = inverted if inverted >> np.uint32(31) else inverted ^ np.uint32(0x7FFFFFFF)
    return bits, np.int64(key & np.uint64(0xFFFFFFFF))


@numba.njit(nogil=True, cache=True)
def _select(keys, size, k):
    """Move the k smallest of keys[:size] to keys[:k] (any order), keys[k - 1] the largest of them
    (quickselect in place, median-of-three pivots)."""
    lo, hi = 0, size - 1
    target = k - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        a, b, c = keys[lo], keys[mid], keys[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = lo, hi
        while i <= j:
            while keys[i] < pivot:
                i += 1
            while keys[j] > pivot:
                j -= 1
            if i <= j:
                keys[i], keys[j] = keys[j], keys[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break


@numba.njit(nogil=True, cache=True)
def _scan_tile(tile, first_item, kept, sizes, bars, k, cursor, excl_end, excluded):
    """Offer every score of ``tile`` (rows = users, columns = items first_item, first_item + 1, ...) to
    its user's buffer of keys. ``bars[b]`` is user b's k-th best score so far (once the buffer has been
    shrunk); ``cursor[b]`` walks user b's sorted exclusions up to ``excl_end[b]``.

    Per row, one vectorised pass marks the scores above the bar in a byte mask (a plain loop over the
    row, which compiles to wide compares); the 8-byte words of the mask that are not zero give the
    marked columns, listed without a branch per column. A column so marked is tested again against
    the bar of the moment, which only rises, so the result is the same as offering every score in turn."""
    capacity = kept.shape[1]
    bits = tile.view(np.uint32)
    width = tile.shape[1]
    words = (width + 7) // 8
    above = np.zeros(words * 8, dtype=np.bool_)   # the tail past width stays False
    above_words = above.view(np.uint64)
    columns = np.empty(words * 8, dtype=np.int64)
    groups = _first_bar_groups(k)
    if width >= 3 * groups:                      # one scratch per tile, not per user
        maxima = np.empty(groups, dtype=np.float32)
        group_keys = np.empty(groups, dtype=np.uint64)
    for b in range(tile.shape[0]):
        keys, row, row_bits = kept[b], tile[b], bits[b]
        size, bar, pos, end = sizes[b], bars[b], cursor[b], excl_end[b]
        if size == 0 and pos == end and width >= 3 * groups:
            bar = _first_bar(row, k, maxima, group_keys)
        for j in range(width):
            above[j] = row[j] > bar
        marked = 0                                # the marked columns, in order, without branches
        for w in range(words):
            if above_words[w] == 0:              # almost every word once the bar is up
                continue
            for j in range(w * 8, w * 8 + 8):
                columns[marked] = j
                marked += above[j]
        for c in range(marked):
            j = columns[c]
            if row[j] > bar:                     # strictly: an equal score has a higher index, it loses
                item = first_item + j
                while pos < end and excluded[pos] < item:
                    pos += 1
                if pos < end and excluded[pos] == item:
                    continue
                if size == capacity:
                    _select(keys, size, k)
                    size = k
                    bar = _score(keys[k - 1])
                    if not row[j] > bar:
                        continue
                keys[size] = _key(row_bits[j], item)
                size += 1
        sizes[b], bars[b], cursor[b] = size, bar, pos


@numba.njit(inline="always")
def _first_bar_groups(k):
    """How many groups :func:`_first_bar` cuts a row into: the power of two >= 2k (256 for k = 100)."""
    groups = 16
    while groups < 2 * k:
        groups *= 2
    return groups


@numba.njit(inline="always")
def _first_bar(row, k, maxima, keys):
    """A bar to start a user with, below their final K-th best score: deal the row's items into
    ``len(maxima)`` (>= 2k) interleaved groups (item j goes to group j mod groups, so the maxima are one
    vectorised pass of element-wise maxima over contiguous slices); the k-th largest group maximum is
    the score of k different items, so the K-th best is at least that. Just below it, so that equal
    scores still enter. About 1.25k items of the row pass it. (Only for a user without exclusions: an
    excluded item must not count as one of the k.) ``keys``: scratch of the same length."""
    groups = maxima.shape[0]
    for g in range(groups):
        maxima[g] = np.float32(-np.inf)
    for c in range(row.shape[0] // groups):
        part = row[c * groups:(c + 1) * groups]
        for g in range(groups):
            value = part[g]
            maxima[g] = value if value > maxima[g] else maxima[g]    # NaN never counts
    bits = maxima.view(np.uint32)
    for g in range(groups):
        keys[g] = _key(bits[g], g)
    _select(keys, groups, k)                      # the k smallest keys: the k largest maxima
    kth = _score(keys[k - 1])
    return np.nextafter(kth, np.float32(-np.inf)) if kth > -np.inf else kth


@numba.njit(inline="always")
def _score(key):
    """The float32 score of a key."""
    bits, _ = _unkey(key)
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


@numba.njit(nogil=True, cache=True)
def _finish(kept, sizes, k, out_scores, out_items, counts):
    """Each user's k best from the buffer, best first, into every slot of their output rows (past
    ``counts[b]``: item -1, score -inf)."""
    score_bits = out_scores.view(np.uint32)
    for b in range(out_scores.shape[0]):
        size = sizes[b]
        if size > k:
            _select(kept[b], size, k)
            size = k
        best = np.sort(kept[b, :size])
        for r in range(size):
            score_bits[b, r], out_items[b, r] = _unkey(best[r])
        for r in range(size, k):
            out_scores[b, r], out_items[b, r] = np.float32(-np.inf), -1
        counts[b] = size


def brute_force(users: np.ndarray, items: np.ndarray, k: int,
                excluded: list[set[int]] | None = None, boosts: list[dict[int, float]] | None = None) -> list[list[int]]:
    """The reference the tests compare against: the full score matrix in float32 (the same
    arithmetic as the tiled matmul), plus ``boosts[i]`` {item: value}, and a lexsort on (item index,
    -score), per user; excluded items and -inf dropped."""
    full = (torch.from_numpy(np.ascontiguousarray(users, dtype=np.float32)) @ torch.from_numpy(
        np.ascontiguousarray(items, dtype=np.float32)).T).numpy()
    for i, extra in enumerate(boosts or []):
        for j, v in extra.items():
            full[i, j] = np.float32(full[i, j] + np.float32(v))
    result = []
    for i, row in enumerate(full):
        order = np.lexsort((np.arange(len(row)), -row))
        skip = excluded[i] if excluded else set()
        result.append([int(j) for j in order if j not in skip and np.isfinite(row[j])][:k])
    return result
