"""Catalogues without repeat consumption: the repurchase share of the training inputs (training.data),
the decision it drives (train.repeat_free_below: no repeat head, no rebuy odds) on generated histories of
each kind, and scoring that then masks what each user bought (scoring.candidates)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import torch

from features.contract import cutoff
from training.config import SeqRecConfig
from training.data import item_stats_batch, repeat_consumption, repurchase_flags

P, V_, C = "purchase", "view", "add_to_cart"
AS_OF = dt.date(2024, 3, 1)


def test_repurchase_flags_hand_computed():
    items = ["a", "a", "b", "b", "a", "c", "b"]
    kinds = [P, P, V_, P, P, C, P]
    baskets = [0, 0, 1, 2, 3, 3, 4]
    # a twice in basket 0: two invoice lines, not a repurchase; b viewed then bought: first purchase;
    # a in basket 3 and b in basket 4: bought before; the cart event is no purchase
    assert repurchase_flags(items, kinds, baskets) == [("a", False), ("a", False), ("b", False), ("a", True),
                                                       ("b", True)]
    assert repurchase_flags(items, kinds, baskets, (P, C)) == [("a", False), ("a", False), ("b", False),
                                                               ("a", True), ("c", False), ("b", True)]


def test_repeat_consumption_decision():
    assert repeat_consumption(5, 2, 0.02) == {"purchases": 5, "repurchases": 2, "share": 0.4,
                                              "repeat_free_below": 0.02, "repeat_free": False}
    assert repeat_consumption(200, 3, 0.02)["repeat_free"] is True          # 1.5% < 2%
    assert repeat_consumption(200, 4, 0.02)["repeat_free"] is False         # 2% is not below 2%
    assert repeat_consumption(200, 0, 0.0)["repeat_free"] is False          # the default threshold never decides
    assert repeat_consumption(0, 0, 0.02) == {"purchases": 0, "repurchases": 0, "share": None,
                                              "repeat_free_below": 0.02, "repeat_free": False}


def history_share(rebuy: bool) -> tuple[dict, int]:
    """(the decision at 0.02 over the generated histories' train inputs, as jobs/train.py sums
    item_stats_batch; the (user, item) pairs bought on two different days, counted directly)."""
    from training.synthetic_sequences import generate

    seqs, _, _ = generate(users=60, categories=4, items_per_category=4, baskets_per_user=8, basket_size=3,
                          as_of=AS_OF, max_len=1000, seed=3, rebuy=rebuy)
    batch = {c: seqs[c].tolist() for c in ("item_ids", "event_types", "event_ts")}
    window_start = dt.datetime(2024, 2, 28)
    stats = item_stats_batch(batch, window_start=window_start, cutoff=cutoff(AS_OF))
    decision = repeat_consumption(int(stats["purchases_train"].sum()), int(stats["repurchases_train"].sum()), 0.02)
    days: dict[tuple, set] = {}
    for r in seqs.itertuples():
        for item, kind, ts in zip(r.item_ids, r.event_types, r.event_ts):
            if kind == P and ts < window_start:
                days.setdefault((r.user_id, item), set()).add(ts.date())
    return decision, sum(len(d) > 1 for d in days.values())


def test_generated_repeat_heavy_history_keeps_the_repeat_head():
    """Users buy 3 items a day from a liked category of 4: most purchases are repurchases."""
    from jobs.train import model_for_catalogue

    decision, rebought_pairs = history_share(rebuy=True)
    assert rebought_pairs > 0 and decision["share"] > 0.5 and decision["repeat_free"] is False
    cfg = SeqRecConfig()
    assert model_for_catalogue(cfg, decision) is cfg


def test_generated_repeat_free_history_switches_the_repeat_head_off():
    """The same users, each item bought at most once: share 0, below 0.02."""
    from jobs.train import model_for_catalogue
    from training.model import SeqRec

    decision, rebought_pairs = history_share(rebuy=False)
    assert rebought_pairs == 0 and decision["purchases"] > 100
    assert decision["share"] == 0.0 and decision["repeat_free"] is True
    cfg = model_for_catalogue(SeqRecConfig(num_items=16, use_text=False), decision)
    assert (cfg.repeat_head, cfg.item_rebuy, cfg.mask_seen) == (False, False, True)
    assert cfg.history_skip and cfg.recent_days == 7                 # the rest of the model is the configured one
    names = {n for n, _ in SeqRec(cfg).named_parameters()}
    assert not names & {"repeat_lag", "repeat_type", "repeat_rebuy"}


def test_threshold_is_validated():
    from jobs.config import ConfigError, load_config

    assert load_config().train.repeat_free_below == 0.0
    assert load_config(overrides={"train.repeat_free_below": 0.02}).train.repeat_free_below == 0.02
    with pytest.raises(ConfigError, match="repeat_free_below"):
        load_config(overrides={"train.repeat_free_below": 1.5})


@pytest.mark.parametrize("mask_seen", [False, True])
def test_scoring_masks_bought_items_for_a_repeat_free_model(mask_seen):
    """u1 bought a and viewed b; u2 (the popular fallback) bought a too. With mask_seen, u1's candidates
    lose a (not b: a view is no purchase); the fallback user keeps score.exclude_event_types only."""
    from scoring.candidates import FallbackLists, ScorerSpec, score_batch
    from training.model import SeqRec
    from training.registry import LoadedModel

    vocab = ["a", "b", "c", "d"]
    torch.manual_seed(0)
    cfg = SeqRecConfig(num_items=4, dim=8, num_layers=1, num_heads=2, max_seq_len=4, use_text=False, recent_days=0,
                       repeat_head=False, item_rebuy=False, mask_seen=mask_seen)
    model = LoadedModel(name="m", version="v", item_ids=vocab, model=SeqRec(cfg).eval(),
                        config={"train": {"target_event_types": [P]}}, metrics={}, lineage={}, path="")
    ts = dt.datetime(2024, 2, 1)
    batch = pa.RecordBatch.from_pylist([
        {"user_id": "u1", "use_fallback": False, "excluded_item_ids": [], "segment": "",
         "item_ids": ["a", "b"], "event_types": [P, V_], "event_ts": [ts, ts + dt.timedelta(days=1)]},
        {"user_id": "u2", "use_fallback": True, "excluded_item_ids": [], "segment": "",
         "item_ids": ["a"], "event_types": [P], "event_ts": [ts]}])
    lists = FallbackLists({"": np.array([0, 1, 2, 3])}, {"": np.array([0.4, 0.3, 0.2, 0.1], np.float32)})
    spec = ScorerSpec(cache_key="k", loader=lambda: model, k=4, block_bytes=1 << 20, torch_threads=1, embed_batch=8)
    rows = score_batch(batch, model, np.array(vocab, dtype=object), {i: k for k, i in enumerate(vocab)},
                       model.catalogue_embeddings(), lists, spec).to_pydict()
    by_user = {u: [i for u2, i in zip(rows["user_id"], rows["item_id"]) if u2 == u] for u in ("u1", "u2")}
    assert sorted(by_user["u1"]) == (["b", "c", "d"] if mask_seen else ["a", "b", "c", "d"])
    assert by_user["u2"] == ["a", "b", "c", "d"]


def test_registered_flag_survives_the_registry(tmp_path):
    from training.model import SeqRec
    from training.registry import load_model, promote, save_version

    cfg = SeqRecConfig(num_items=3, dim=8, num_heads=2, max_seq_len=4, use_text=False, repeat_head=False,
                       item_rebuy=False, mask_seen=True)
    save_version(str(tmp_path), "m", "v1", SeqRec(cfg), ["a", "b", "c"], {}, {"val_ndcg@10": 0.1}, {})
    promote(str(tmp_path), "m", "v1", margin=0.0)
    loaded = load_model(str(tmp_path), "m").model.cfg
    assert (loaded.mask_seen, loaded.repeat_head) == (True, False)
