"""Training examples from ``features/user_sequences`` rows as of run date D (one user per as_of_date: the
last N events before ``features.contract.cutoff(D)`` = D + 1 day, oldest first): the time split, token
encoding, and the Ray Data pipeline that streams the examples to the Ray Train workers in shards.

The time split (``time_split``) cuts every user's sequence at the same instant, the start of the
*validation window* [cutoff(D) - horizon, cutoff(D)) (``train.validation_days``, 7: the week before the
run date, as the next-week backtest judges the lists, jobs/backtest.py). *Baskets* are the events that
share one timestamp (an Online Retail invoice puts all its lines on one timestamp).
- validation: input = the user's events before the window; targets = the distinct target-type items
  (``purchase`` by default) the user bought in the window, a next-week set. A user with no event before
  the window, or no target in it, gives no validation example.
- train (the selection run: early stopping and the dot / recent scales choose on the validation users):
  the events before the window, every basket a next-basket target of the ones before it.
- refit: every event before cutoff(D), for the final fit once the selection run has picked the epoch
  count (training.train_loop).
So nothing chosen sees, in any user's inputs or targets, an event of the window, nor anything at or after
cutoff(D).

Whole histories (``train.history = events``): the rows are every user's events before cutoff(D) from
bronze/events (``histories_from_events``, the same columns), and ``history_examples_batch`` cuts the
train and refit spans into windows of T+1 events in which every event after the user's first basket is
a target exactly once (``history_windows``); a user_sequences row trains on its last T+1 events only.
Validation is the same either way.

``split_sequence``, the per-user leave-last-out split (test = the last purchase basket, validation =
the one before), is jobs/evaluate.py's. Called by training.train_loop (via the Ray Data
pipeline), jobs/train.py, jobs/evaluate.py and bench/train.py.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from training.model import EVENT_TYPES, FIRST_ITEM, PAD, UNK, loss_targets


@dataclass(frozen=True)
class Split:
    """jobs/evaluate.py's leave-last-out split of one user's sequence (``split_sequence``)."""

    train_items: list[str]
    train_types: list[str]
    val_items: list[str]                 # validation input
    val_types: list[str]
    val_targets: list[str]               # validation basket (distinct, target-type items)
    test_items: list[str]                # test input
    test_types: list[str]
    test_targets: list[str]              # test basket
    purchases: int                       # target-type events in the whole sequence
    baskets: list[int] = field(default_factory=list)  # basket ordinal of every event (slice like the items)


def _baskets(event_ts: Sequence[Any]) -> list[tuple[int, int]]:
    """[start, end) index ranges of runs of equal timestamps (the sequence is time-ordered)."""
    out, start = [], 0
    for i in range(1, len(event_ts) + 1):
        if i == len(event_ts) or event_ts[i] != event_ts[start]:
            out.append((start, i))
            start = i
    return out


def basket_ordinals(event_ts: Sequence[Any]) -> list[int]:
    """0, 0, 1, 2, 2, ...: the basket number of each event (equal timestamps share one)."""
    out = []
    for b, (start, end) in enumerate(_baskets(list(event_ts))):
        out.extend([b] * (end - start))
    return out


def split_sequence(item_ids: Sequence[str], event_types: Sequence[str], event_ts: Sequence[Any],
                   target_event_types: Iterable[str] = ("purchase",)) -> Split:
    targets_ok = set(target_event_types)
    items, types = list(item_ids), list(event_types)
    held: list[tuple[int, list[str]]] = []   # (basket start, its target items), newest first, up to 2
    for start, end in reversed(_baskets(list(event_ts))):
        basket = list(dict.fromkeys(items[j] for j in range(start, end) if types[j] in targets_ok))
        if basket:
            held.append((start, basket))
            if len(held) == 2:
                break
    test_start, test_targets = held[0] if held else (len(items), [])
    val_start, val_targets = held[1] if len(held) > 1 else (test_start, [])
    return Split(train_items=items[:val_start], train_types=types[:val_start],
                 val_items=items[:val_start] if val_targets else [], val_types=types[:val_start] if val_targets else [],
                 val_targets=val_targets,
                 test_items=items[:test_start], test_types=types[:test_start], test_targets=test_targets,
                 purchases=sum(t in targets_ok for t in types), baskets=basket_ordinals(event_ts))


@dataclass(frozen=True)
class TimeSplit:
    """One user's sequence cut at the validation window [window_start, cutoff) (``time_split``)."""

    input_items: list[str]               # events before the window: the selection run's sequence, the validation input
    input_types: list[str]
    val_targets: list[str]               # distinct target-type items bought in the window, first bought first
    refit_items: list[str]               # every event before the cut-off: the refit's sequence
    refit_types: list[str]
    baskets: list[int]                   # basket ordinal of every event before the cut-off (slice like the items)
    days: list[int]                      # UTC day of every event before the cut-off (event_days; slice the same way)


def utc_stamps(event_ts: Sequence[Any]) -> np.ndarray:
    """Timestamps or dates (naive = UTC, or tz-aware) -> naive UTC datetime64[us]."""
    if len(event_ts) == 0:
        return np.zeros(0, "datetime64[us]")
    return pd.to_datetime(pd.Series(list(event_ts)), utc=True).dt.tz_localize(None).to_numpy("datetime64[us]")


def time_split(item_ids: Sequence[str], event_types: Sequence[str], event_ts: Sequence[Any],
               window_start: dt.datetime, cutoff: dt.datetime,
               target_event_types: Iterable[str] = ("purchase",)) -> TimeSplit:
    """The time split of one time-ordered sequence (module docstring). Events at or after ``cutoff``
    (none, in a user_sequences row as of the cut-off's night) are dropped."""
    items, types = list(item_ids), list(event_types)
    stamps = utc_stamps(event_ts)
    start, end = utc_stamps([window_start, cutoff])
    n_input, n_all = int((stamps < start).sum()), int((stamps < end).sum())
    wanted = set(target_event_types)
    targets = list(dict.fromkeys(items[j] for j in range(n_input, n_all) if types[j] in wanted))
    days = stamps[:n_all].astype("datetime64[D]").astype(np.int64).tolist()
    return TimeSplit(input_items=items[:n_input], input_types=types[:n_input], val_targets=targets,
                     refit_items=items[:n_all], refit_types=types[:n_all],
                     baskets=basket_ordinals(list(event_ts)[:n_all]), days=days)


@dataclass(frozen=True, kw_only=True)
class ExampleSpec:
    """How rows become padded arrays; travels to Ray Data tasks."""

    item_index: dict[str, int]                         # item id -> catalogue index (0..V-1)
    cutoff: dt.datetime                                # features.contract.cutoff(D) of the run date D (UTC, naive)
    horizon_days: int = 7                              # window [cutoff - horizon, cutoff) (train.validation_days)
    max_seq_len: int = 50                              # T
    max_targets: int = 100                             # validation target cap (padding width; train.max_val_targets)
    target_event_types: tuple[str, ...] = ("purchase",)
    event_types: tuple[str, ...] = EVENT_TYPES
    type_index: dict[str, int] = field(default_factory=dict)
    basket_targets: bool = True                        # the model's (SeqRecConfig): how its loss picks targets,
                                                       # for the train_targets / refit_targets counts

    def __post_init__(self):
        if self.horizon_days < 1:
            raise ValueError(f"horizon_days must be >= 1, got {self.horizon_days}")
        if not self.type_index:
            object.__setattr__(self, "type_index", {t: i + 1 for i, t in enumerate(self.event_types)})

    @property
    def window_start(self) -> dt.datetime:
        """The validation window's first instant: the selection run sees nothing from here on."""
        return self.cutoff - dt.timedelta(days=self.horizon_days)


def encode(items: Sequence[str], types: Sequence[str], width: int, spec: ExampleSpec) -> tuple[np.ndarray, np.ndarray]:
    """Last ``width`` events -> right-padded token and type arrays (width,)."""
    items, types = list(items)[-width:], list(types)[-width:]
    tok = np.full(width, PAD, dtype=np.int64)
    typ = np.zeros(width, dtype=np.int64)
    tok[:len(items)] = [spec.item_index.get(i, UNK - FIRST_ITEM) + FIRST_ITEM for i in items]
    typ[:len(types)] = [spec.type_index.get(t, 0) for t in types]
    return tok, typ


def event_days(event_ts: Sequence[Any]) -> np.ndarray:
    """Timestamps (or dates) -> their UTC dates as days since 1970-01-01 (int64), the recent-popularity
    row key."""
    return utc_stamps(event_ts).astype("datetime64[D]").astype(np.int64)


def encode_days(days: np.ndarray, width: int) -> np.ndarray:
    """Last ``width`` event days, right-padded with -1 (width,)."""
    out = np.full(width, -1, dtype=np.int64)
    tail = days[-width:] if width else days[:0]
    out[:len(tail)] = tail
    return out


def encode_baskets(baskets: Sequence[int], width: int) -> np.ndarray:
    """Last ``width`` basket ordinals, right-padded with -1 (width,)."""
    out = np.full(width, -1, dtype=np.int64)
    tail = list(baskets)[-width:] if width else []
    out[:len(tail)] = tail
    return out


def examples_batch(batch: dict[str, Any], spec: ExampleSpec, refit: bool = True) -> dict[str, np.ndarray]:
    """A batch of user_sequences rows -> padded training + validation arrays (Ray Data map_batches), by
    the time split at ``spec.window_start``. train_tokens / train_types / train_baskets / train_days
    (B, T+1): the events before the window (see SeqRec.loss). val_* (B, T): the validation input (the
    same events); val_targets (B, max_targets) catalogue indices padded with -1; val_day (B,) the
    window's first day, whose recent-popularity row scores the window. refit_* (B, T+1), with ``refit``:
    every event before the cut-off, the same way as train_*. train_targets / refit_targets (B,): how
    many positions the loss predicts (training.model.loss_targets), for the counts the job logs."""
    rows = len(batch["user_id"])
    out = _example_arrays(rows, spec, refit)
    window_day = int(event_days([spec.window_start])[0])
    for r in range(rows):
        s = time_split(batch["item_ids"][r], batch["event_types"][r], batch["event_ts"][r], spec.window_start,
                       spec.cutoff, spec.target_event_types)
        _put_sequence(out, "train", r, s, len(s.input_items), spec)
        if refit:
            _put_sequence(out, "refit", r, s, len(s.refit_items), spec)
        _put_validation(out, r, s, spec, window_day)
    return _count_targets(out, spec)


def _example_arrays(rows: int, spec: ExampleSpec, refit: bool) -> dict[str, np.ndarray]:
    """``rows`` examples of padding only: the arrays :func:`examples_batch` fills."""
    T, M = spec.max_seq_len, spec.max_targets
    out = {"val_tokens": np.zeros((rows, T), np.int64), "val_types": np.zeros((rows, T), np.int64),
           "val_baskets": np.full((rows, T), -1, np.int64), "val_targets": np.full((rows, M), -1, np.int64),
           "val_day": np.full(rows, -1, np.int64), "has_val": np.zeros(rows, np.int64)}
    for prefix in ("train", "refit") if refit else ("train",):
        out.update({f"{prefix}_tokens": np.zeros((rows, T + 1), np.int64),
                    f"{prefix}_types": np.zeros((rows, T + 1), np.int64),
                    f"{prefix}_baskets": np.full((rows, T + 1), -1, np.int64),
                    f"{prefix}_days": np.full((rows, T + 1), -1, np.int64), f"{prefix}_len": np.zeros(rows, np.int64),
                    f"{prefix}_targets": np.zeros(rows, np.int64)})
    return out


def _put_validation(out: dict[str, np.ndarray], r: int, s: TimeSplit, spec: ExampleSpec, window_day: int) -> None:
    """Row r's validation example: the events before the window, judged on the window's purchases (none
    when the user has no input or no known target)."""
    T, M = spec.max_seq_len, spec.max_targets
    known = [spec.item_index[i] for i in s.val_targets if i in spec.item_index][:M]
    if s.input_items and known:
        out["val_tokens"][r], out["val_types"][r] = encode(s.input_items, s.input_types, T, spec)
        out["val_baskets"][r] = encode_baskets(s.baskets[:len(s.input_items)], T)
        out["val_targets"][r, :len(known)] = known
        out["val_day"][r] = window_day
        out["has_val"][r] = 1


def _put_sequence(out: dict[str, np.ndarray], prefix: str, r: int, s: TimeSplit, n: int, spec: ExampleSpec) -> None:
    """Row r of the ``prefix`` training arrays: the first n events of the split (its last T+1 of them)."""
    _put_window(out, prefix, r, s, range(max(0, n - spec.max_seq_len - 1), n), spec)


def _put_window(out: dict[str, np.ndarray], prefix: str, r: int, s: TimeSplit, idx: Sequence[int],
                spec: ExampleSpec) -> None:
    """Row r of the ``prefix`` training arrays: the split's events at positions ``idx`` (at most T+1)."""
    width = spec.max_seq_len + 1
    out[f"{prefix}_tokens"][r], out[f"{prefix}_types"][r] = encode([s.refit_items[i] for i in idx],
                                                                   [s.refit_types[i] for i in idx], width, spec)
    out[f"{prefix}_baskets"][r] = encode_baskets([s.baskets[i] for i in idx], width)
    out[f"{prefix}_days"][r] = encode_days(np.asarray([s.days[i] for i in idx], np.int64), width)
    out[f"{prefix}_len"][r] = len(idx)


def _count_targets(out: dict[str, np.ndarray], spec: ExampleSpec) -> dict[str, np.ndarray]:
    """Fills ``<prefix>_targets``: the positions of each row that the model's loss predicts."""
    for prefix in ("train", "refit"):
        if f"{prefix}_tokens" in out:
            _, valid = loss_targets(torch.from_numpy(out[f"{prefix}_tokens"]),
                                    torch.from_numpy(out[f"{prefix}_baskets"]), spec.basket_targets)
            out[f"{prefix}_targets"] = valid.sum(1).numpy().astype(np.int64)
    return out


def history_windows(baskets: Sequence[int], width: int) -> list[list[int]]:
    """One user's whole time-ordered history (its events' basket ordinals) cut into training windows of
    at most ``width`` (= T+1) events such that every event after the user's first basket is predicted
    exactly once (the first basket has nothing before it). A window is one input event, the last event
    before its targets' basket, then up to ``width - 1`` targets; the next window's targets start where
    this one's stop. One input, not more: the loss predicts every position after a window's first basket, so
    a longer lead-in would be predicted twice. A basket split between two windows: its later part is
    predicted, as it would be whole, from the basket before (its earlier part is not among the inputs).
    Returns each window's event positions, oldest first."""
    n = len(baskets)
    basket_start = [0] * n
    for i in range(1, n):
        basket_start[i] = basket_start[i - 1] if baskets[i] == baskets[i - 1] else i
    windows, a = [], next((i for i in range(n) if baskets[i] != baskets[0]), n)
    while a < n:
        b = min(a + width - 1, n)
        windows.append([basket_start[a] - 1, *range(a, b)])
        a = b
    return windows


def history_examples_batch(batch: dict[str, Any], spec: ExampleSpec, refit: bool = True) -> dict[str, np.ndarray]:
    """``train.history = events``: rows of whole histories (one per user: every event before the cut-off,
    oldest first, in user_sequences' columns) -> the arrays of :func:`examples_batch`, one example per
    output row: each user's validation example (the same as examples_batch's), then the
    :func:`history_windows` of the events before the validation window (train_*) and, with ``refit``,
    of every event before the cut-off (refit_*). Every event of those spans after the user's first
    basket is a training target exactly once, where examples_batch keeps the last T+1 events only."""
    splits = [time_split(batch["item_ids"][r], batch["event_types"][r], batch["event_ts"][r], spec.window_start,
                         spec.cutoff, spec.target_event_types) for r in range(len(batch["user_id"]))]
    width = spec.max_seq_len + 1
    # Next-item targets (basket_targets off): every event is its own basket for the cut.
    ords = [s.baskets if spec.basket_targets else list(range(len(s.baskets))) for s in splits]
    windows = {"train": [(k, w) for k, s in enumerate(splits)
                         for w in history_windows(ords[k][:len(s.input_items)], width)]}
    if refit:
        windows["refit"] = [(k, w) for k in range(len(splits)) for w in history_windows(ords[k], width)]
    out = _example_arrays(len(splits) + sum(len(w) for w in windows.values()), spec, refit)
    window_day = int(event_days([spec.window_start])[0])
    for r, s in enumerate(splits):
        _put_validation(out, r, s, spec, window_day)
    r = len(splits)
    for prefix, cut in windows.items():
        for k, idx in cut:
            _put_window(out, prefix, r, splits[k], idx, spec)
            r += 1
    return _count_targets(out, spec)


def histories_from_events(events: pd.DataFrame, cut: dt.datetime):
    """bronze/events rows (``user_id, item_id, event_type, event_ts``) -> a pyarrow Table with one row per
    user: every event before ``cut``, oldest first, in user_sequences' columns (``user_id, item_ids,
    event_types, event_ts``, naive UTC) and order (event_ts, item_id, event_type; features.sequences),
    users ascending. The whole-history training input (``train.history = events``). Pure."""
    import pyarrow as pa

    stamps = pd.to_datetime(events["event_ts"], utc=True).dt.tz_localize(None)
    df = pd.DataFrame({"user_id": events["user_id"].astype(str).to_numpy(),
                       "item_id": events["item_id"].astype(str).to_numpy(),
                       "event_type": events["event_type"].astype(str).to_numpy(), "event_ts": stamps.to_numpy()})
    df = df[df["event_ts"] < pd.Timestamp(cut)].sort_values(["user_id", "event_ts", "item_id", "event_type"])
    users, starts = np.unique(df["user_id"].to_numpy(), return_index=True)
    offsets = pa.array(np.append(starts, len(df)).astype(np.int32))
    lists = {c: pa.ListArray.from_arrays(offsets, pa.array(df[col].to_numpy(), typ))
             for c, col, typ in (("item_ids", "item_id", pa.string()), ("event_types", "event_type", pa.string()),
                                 ("event_ts", "event_ts", pa.timestamp("us")))}
    return pa.table({"user_id": pa.array(users.astype(str), pa.string()), **lists})


REBUY_PRIOR_BUYERS = 20.0   # rebuy rates shrink toward the average as if every item had 20 more buyers


def item_stats_batch(batch: dict[str, Any], target_event_types: Sequence[str] = ("purchase",), *,
                     window_start: dt.datetime, cutoff: dt.datetime) -> dict[str, np.ndarray]:
    """user_sequences rows -> per item of the batch (summed later, one pass over the sequences): ``count``,
    its events (vocabulary and popularity); ``buyers_*`` / ``rebuyers_*``, the users who bought it, and
    in two or more baskets, within each user's ``train`` input (the events before the validation window)
    and ``refit`` input (every event before the cut-off), the inputs each training phase sees
    (rebuy_log_odds); ``purchases_train`` / ``repurchases_train``, its target-type events in the train
    input and those of them that the user had bought in an earlier basket (repurchase_flags)."""
    wanted = set(target_event_types)
    counts: dict[str, int] = {}
    tally: dict[str, list[int]] = {}
    for items, kinds, stamps in zip(batch["item_ids"], batch["event_types"], batch["event_ts"]):
        for item in items:
            counts[str(item)] = counts.get(str(item), 0) + 1
        s = time_split(items, kinds, stamps, window_start, cutoff, target_event_types)
        for col, end in ((0, len(s.input_items)), (2, len(s.refit_items))):
            baskets_of: dict[str, set[int]] = {}
            for item, kind, basket in zip(s.refit_items[:end], s.refit_types[:end], s.baskets[:end]):
                if kind in wanted:
                    baskets_of.setdefault(str(item), set()).add(basket)
            for item, baskets in baskets_of.items():
                row = tally.setdefault(item, [0] * 6)
                row[col] += 1
                row[col + 1] += len(baskets) > 1
        end = len(s.input_items)
        for item, again in repurchase_flags(s.refit_items[:end], s.refit_types[:end], s.baskets[:end], wanted):
            row = tally.setdefault(item, [0] * 6)
            row[4] += 1
            row[5] += again
    ids = sorted(counts)
    stats = np.array([tally.get(i, [0] * 6) for i in ids], dtype=np.int64).reshape(len(ids), 6)
    return {"item_id": np.array(ids, dtype=str), "count": np.array([counts[i] for i in ids], dtype=np.int64),
            "buyers_train": stats[:, 0], "rebuyers_train": stats[:, 1],
            "buyers_refit": stats[:, 2], "rebuyers_refit": stats[:, 3],
            "purchases_train": stats[:, 4], "repurchases_train": stats[:, 5]}


def repurchase_flags(items: Sequence[str], kinds: Sequence[str], baskets: Sequence[int],
                     target_event_types: Iterable[str] = ("purchase",)) -> list[tuple[str, bool]]:
    """(item, whether the user had bought it in an earlier basket) for each target-type event of one
    time-ordered sequence. The same item twice in one basket (two invoice lines) is not a repurchase."""
    wanted = set(target_event_types)
    first_basket: dict[str, int] = {}
    out = []
    for item, kind, basket in zip(items, kinds, baskets):
        if kind in wanted:
            out.append((str(item), first_basket.setdefault(str(item), basket) != basket))
    return out


def repeat_consumption(purchases: int, repurchases: int, repeat_free_below: float) -> dict[str, Any]:
    """Whether a catalogue is bought again: the repurchase share (repurchases / purchases, None without
    purchases) against ``train.repeat_free_below``. ``repeat_free`` (the share below it): the model trains
    without the repeat head and the rebuy odds, and scoring masks what each user bought (jobs/train.py);
    a threshold of 0 never decides so."""
    share = repurchases / purchases if purchases else None
    return {"purchases": int(purchases), "repurchases": int(repurchases),
            "share": None if share is None else round(share, 6), "repeat_free_below": repeat_free_below,
            "repeat_free": share is not None and share < repeat_free_below}


def rebuy_log_odds(buyers: np.ndarray, rebuyers: np.ndarray, prior_buyers: float = REBUY_PRIOR_BUYERS) -> np.ndarray:
    """Each item's rebuy rate (shrunk toward the overall rate p with ``prior_buyers`` pseudo-buyers) as
    log-odds against p: 0 for an item nobody bought (the average), > 0 for items bought again more often."""
    buyers, rebuyers = np.asarray(buyers, np.float64), np.asarray(rebuyers, np.float64)
    if buyers.sum() == 0 or rebuyers.sum() == 0 or rebuyers.sum() == buyers.sum():
        return np.zeros(len(buyers), np.float32)
    p = rebuyers.sum() / buyers.sum()
    rate = (rebuyers + prior_buyers * p) / (buyers + prior_buyers)
    return (np.log(rate / (1 - rate)) - np.log(p / (1 - p))).astype(np.float32)


def recent_purchase_matrix(daily: pd.DataFrame, item_index: dict[str, int], recent_days: int,
                           last_day: int) -> tuple[np.ndarray, int]:
    """Per-day recent popularity for SeqRec.set_recent_popularity: ``daily`` rows (item_id, event_date,
    count) -> ((D, V) float32, first_day), where row r holds log1p(each item's count over the
    ``recent_days`` days before day first_day + r), that day itself excluded. Rows run from the first
    date in ``daily`` to ``last_day`` + 1 (the day a model scored on ``last_day`` predicts); dates after
    ``last_day`` are ignored (point in time). Days are days since 1970-01-01."""
    V = len(item_index)
    days = event_days(daily["event_date"])
    cols = np.array([item_index.get(str(i), -1) for i in daily["item_id"]], dtype=np.int64)
    keep = (cols >= 0) & (days <= last_day)
    if not keep.any():
        return np.zeros((1, V), np.float32), last_day + 1
    first_day = int(days[keep].min())
    D = last_day + 2 - first_day
    per_day = np.zeros((D, V), np.float64)
    np.add.at(per_day, (days[keep] - first_day, cols[keep]), np.asarray(daily["count"], np.float64)[keep])
    cum = np.vstack([np.zeros((1, V)), np.cumsum(per_day, axis=0)])      # cum[r] = days first_day .. first_day + r - 1
    r = np.arange(D)
    window = cum[r] - cum[np.maximum(r - recent_days, 0)]
    return np.log1p(window).astype(np.float32), first_day


def build_vocabulary(catalogue_ids: Iterable[str], sequence_ids: Iterable[str]) -> list[str]:
    """Sorted union of the catalogue's and the sequences' item ids: the model's index order."""
    return sorted(set(map(str, catalogue_ids)) | set(map(str, sequence_ids)))


def ray_sequences(files: list[str], columns: Sequence[str] = ("user_id", "item_ids", "event_types", "event_ts")):
    """The Ray Dataset of user_sequences rows read from Delta data files (a snapshot's file list)."""
    import ray.data

    # One block per file: the inputs are a few files per partition, and every extra block is a task.
    return ray.data.read_parquet(files, columns=list(columns), override_num_blocks=max(1, len(files)))


def ray_histories(histories, blocks: int = 8):
    """The Ray Dataset of :func:`histories_from_events`' rows, in ``blocks`` blocks (parallel tasks)."""
    import ray.data

    step = max(1, -(-histories.num_rows // max(1, blocks)))
    return ray.data.from_arrow([histories.slice(o, step) for o in range(0, max(histories.num_rows, 1), step)])


def ray_examples(sequences, spec: ExampleSpec, batch_size: int = 256, refit: bool = False):
    """{"train", "val"[, "refit"]}: Ray Datasets of padded arrays, computed in parallel tasks; never
    gathered."""
    return ray_examples_counted(sequences, spec, batch_size, refit)[0]


def ray_examples_counted(sequences, spec: ExampleSpec, batch_size: int = 256, refit: bool = False,
                         history: str = "sequences") -> tuple[dict, dict[str, int]]:
    """(:func:`ray_examples`' datasets, the training targets of one epoch of each phase, {"train",
    "refit"}). ``history``: "sequences" (user_sequences rows, :func:`examples_batch`) or "events" (whole
    histories, :func:`history_examples_batch`)."""
    build = history_examples_batch if history == "events" else examples_batch
    examples = sequences.map_batches(build, fn_kwargs={"spec": spec, "refit": refit}, batch_size=batch_size,
                                     batch_format="numpy")
    # Materialised once (blocks stay distributed in the object store): every epoch re-reads them
    # instead of re-running the read + split pipeline.
    examples = examples.materialize()
    counts = {p: int(examples.sum(f"{p}_targets") or 0) for p in (("train", "refit") if refit else ("train",))}
    train = (examples.filter(expr="train_len >= 2")
             .select_columns(["train_tokens", "train_types", "train_baskets", "train_days"]).materialize())
    val = (examples.filter(expr="has_val == 1")
           .select_columns(["val_tokens", "val_types", "val_baskets", "val_targets", "val_day"]).materialize())
    out = {"train": train, "val": val}
    if refit:
        out["refit"] = (examples.filter(expr="refit_len >= 2")
                        .select_columns(["refit_tokens", "refit_types", "refit_baskets", "refit_days"]).materialize())
    return out, counts
