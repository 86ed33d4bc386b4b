"""Issue #25: on generated histories with a planted order (training.synthetic_sequences.generate_chains:
who buys a chain's item A buys the item after it, B, in the next basket) and no repeat consumption, the
transformer recovers the order: on each user's held-out last basket its NDCG@10 is at least twice the
backtest's item co-occurrence's, both given the same history and the items each user bought masked.

The held-out basket is a backtest night's target window (training.backtest.night, whose co-occurrence
scorer the test calls); the model trains in process (training.train_loop.train_in_process) on the
examples the training job cuts before that window (training.data.examples_batch), with the configuration
the job picks for a catalogue nobody buys again (jobs.train.model_for_catalogue)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import torch

from features.contract import cutoff
from training import backtest as BT
from training import metrics as M
from training.data import ExampleSpec, examples_batch, item_stats_batch, repeat_consumption
from training.model import SeqRec, SeqRecConfig
from training.synthetic_sequences import generate_chains
from training.train_loop import train_in_process

AS_OF = dt.date(2024, 3, 1)
# generate_chains puts every user's last basket on AS_OF - 2 days (2024-02-28): the backtest night before
# it has exactly that basket in its one-day target window, and nothing after it
NIGHT = AS_OF - dt.timedelta(days=3)
T = 24                    # 16 baskets, 17 to 26 events: all but the first event or two of the longest
COLUMNS = ("user_id", "item_ids", "event_types", "event_ts")


def held_out_night(seqs: pd.DataFrame, index: dict[str, int]) -> BT.Night:
    """The backtest's night over the generated purchases: baskets before cutoff(NIGHT), targets after."""
    rows = seqs.explode(["item_ids", "event_types", "event_ts"])
    rows = rows[rows["event_types"] == "purchase"]
    purchases = pd.DataFrame({"user_id": rows["user_id"].to_numpy(), "item": rows["item_ids"].map(index).to_numpy(),
                              "event_ts": pd.to_datetime(rows["event_ts"].to_numpy())})
    return BT.night(purchases, NIGHT, 1, np.ones(len(index), dtype=bool))


def spec_for(index: dict[str, int]) -> ExampleSpec:
    """The training job's examples with the night's target window as the validation window: training
    sees every basket but the last, and the validation input is the history the night judges."""
    return ExampleSpec(item_index=index, cutoff=cutoff(NIGHT + dt.timedelta(days=1)), horizon_days=1, max_seq_len=T)


def train_model(seqs: pd.DataFrame, spec: ExampleSpec, epochs: int) -> SeqRec:
    """The transformer as the training job would configure it for this catalogue, trained in process."""
    from jobs.train import model_for_catalogue

    batch = {c: seqs[c].tolist() for c in COLUMNS}
    stats = item_stats_batch(batch, window_start=spec.window_start, cutoff=spec.cutoff)
    repeat = repeat_consumption(int(stats["purchases_train"].sum()), int(stats["repurchases_train"].sum()), 0.02)
    assert repeat["repeat_free"] and repeat["share"] == 0.0
    cfg = model_for_catalogue(SeqRecConfig(num_items=len(spec.item_index), dim=32, max_seq_len=T,
                                           use_text=False), repeat)
    assert (cfg.repeat_head, cfg.mask_seen) == (False, True)
    ex = examples_batch(batch, spec, refit=False)
    keep = ex["train_len"] >= 2
    torch.manual_seed(0)
    model = SeqRec(cfg)
    if epochs:
        train_in_process(model, torch.as_tensor(ex["train_tokens"][keep]), torch.as_tensor(ex["train_types"][keep]),
                         baskets=torch.as_tensor(ex["train_baskets"][keep]), epochs=epochs, batch_size=32, lr=0.005)
    return model.eval()


def model_scores(model: SeqRec, seqs: pd.DataFrame, spec: ExampleSpec, night: BT.Night) -> np.ndarray:
    """(judged users, V): the model's catalogue scores from each judged user's history before the window."""
    ex = examples_batch({c: seqs[c].tolist() for c in COLUMNS}, spec, refit=False)
    row = {u: r for r, u in enumerate(seqs["user_id"])}
    judged = [row[u] for u in night.user_ids[night.evaluated]]
    assert ex["has_val"][judged].all()
    with torch.no_grad():
        return model.catalogue_scores(*(torch.as_tensor(ex[k][judged]) for k in ("val_tokens", "val_types",
                                                                                  "val_baskets"))).numpy()


def masked(scores: np.ndarray, night: BT.Night) -> np.ndarray:
    """Each user's past items out of the ranking, as jobs/evaluate.py's masked variant removes them."""
    out = scores.astype(np.float64).copy()
    for r, past in enumerate(night.past_items):
        out[r, past] = -np.inf
    return out


def expected_next(night: BT.Night, successor: dict[str, str], vocab: list[str]) -> np.ndarray:
    """Per judged user, the item after the chain item of their last basket before the window."""
    out = []
    for baskets in night.judged_baskets:
        [start] = [vocab[i] for i in baskets[-1] if vocab[i] in successor]
        out.append(vocab.index(successor[start]))
    return np.array(out)


def shuffled_baskets(seqs: pd.DataFrame, before: dt.datetime, seed: int) -> pd.DataFrame:
    """The same rows with each user's baskets before ``before`` in a random order: their timestamps
    permuted among them, events re-sorted as the sequences order them. The same items, so the same
    co-occurrence; no order to learn."""
    rng = np.random.default_rng(seed)
    rows = []
    for row in seqs.itertuples():
        stamps = sorted({ts for ts in row.event_ts if ts < before})
        moved = dict(zip(stamps, [stamps[k] for k in rng.permutation(len(stamps))]))
        rows.append(sorted((moved.get(ts, ts), item, kind)
                           for item, kind, ts in zip(row.item_ids, row.event_types, row.event_ts)))
    return seqs.assign(item_ids=[[e[1] for e in r] for r in rows], event_types=[[e[2] for e in r] for r in rows],
                       event_ts=[[e[0] for e in r] for r in rows])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small gains nothing from a second thread, and on a busy machine two threads per
    process slow each step many times over."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def chains():
    seqs, items, successor = generate_chains(seed=0)
    vocab = sorted(items["item_id"])
    index = {i: k for k, i in enumerate(vocab)}
    night = held_out_night(seqs, index)
    assert len(night.evaluated) == len(seqs)                  # every user has a held-out basket
    cooc = masked(BT.SCORERS["cooccurrence"](night, {}), night)
    return seqs, vocab, successor, night, spec_for(index), cooc


@pytest.mark.slow
def test_model_recovers_the_planted_order(chains):
    seqs, vocab, successor, night, spec, cooc = chains
    scores = masked(model_scores(train_model(seqs, spec, epochs=20), seqs, spec, night), night)
    model_ndcg = M.evaluate_scores(scores, night.targets)["ndcg@10"]
    cooc_ndcg = M.evaluate_scores(cooc, night.targets)["ndcg@10"]
    assert model_ndcg >= 2.0 * cooc_ndcg, (model_ndcg, cooc_ndcg)
    # the pattern itself: B first for most users whose last basket held A; co-occurrence, which sees A
    # next to the item before it as often as next to B, cannot tell which one comes next
    want = expected_next(night, successor, vocab)
    model_top1 = np.mean(M.rank_items(scores, 1)[:, 0] == want)
    cooc_top1 = np.mean(M.rank_items(cooc, 1)[:, 0] == want)
    assert model_top1 >= 0.6 and cooc_top1 <= 0.25, (model_top1, cooc_top1)


@pytest.mark.slow
@pytest.mark.parametrize("control", ["untrained", "shuffled baskets"])
def test_without_the_order_the_model_does_not_reach_the_bar(chains, control):
    """The bar measures the order: the same transformer untrained, or trained on the same baskets in a
    random order (judged on the true histories), stays below it."""
    seqs, _, _, night, spec, cooc = chains
    if control == "untrained":
        model = train_model(seqs, spec, epochs=0)
    else:
        model = train_model(shuffled_baskets(seqs, spec.window_start, seed=0), spec, epochs=20)
    scores = masked(model_scores(model, seqs, spec, night), night)
    cooc_ndcg = M.evaluate_scores(cooc, night.targets)["ndcg@10"]
    assert M.evaluate_scores(scores, night.targets)["ndcg@10"] < 2.0 * cooc_ndcg
