"""The model registry: ``<models_root>/<name>/<version>/`` folders and the ``LATEST`` pointer, and
:func:`load_model`, the one way scoring, evaluation and online services get a trained model.

A version folder holds (all plain files, no pickle):
- ``model.safetensors``  the model's state dict (frozen mode includes the cached text embeddings)
- ``config.json``        ``{"model": SeqRecConfig, "train": LoopConfig + target_event_types}`` (read back:
  the model's part only, leniently; older versions' "train" may hold keys LoopConfig no longer has)
- ``item_vocab.json``    the catalogue item ids, in the model's index order
- ``metrics.json``       validation metrics (and per-epoch history) from training
- ``lineage.json``       Delta versions trained on, code version, run id, configuration

``LATEST`` (next to the versions) holds the version string that ``version="latest"`` resolves to;
:func:`promote` moves it only when the new version's validation NDCG@10 is not worse than the current
one's by more than a margin (or when forced). Called by jobs/train.py, jobs/evaluate.py, scoring.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

# The folder and pointer functions live in training/versions.py (no torch: the nightly flow and Airflow
# ask them); re-exported here so that the registry is one import for its users.
from training.versions import (DEFAULT_NAME, FILES, RegistryError, dump_json, latest_version,  # noqa: F401
                               list_versions, promote, read_config, read_json, replace_file, version_dir)
from jobs import chaos   # fault injection for the chaos tests; a no-op otherwise
from training.data import basket_ordinals, encode_baskets
from training.model import FIRST_ITEM, PAD, UNK, SeqRec, SeqRecConfig, encode_texts, item_text



def save_version(models_root: str, name: str, version: str, model: SeqRec, item_ids: Sequence[str],
                 train_config: dict, metrics: dict, lineage: dict) -> Path:
    """Write a complete version folder atomically: a temp folder ``.<version>.*`` renamed into place.
    A version that exists already is first renamed aside, so a death at any point leaves the version's
    name on a complete folder or on none (never half of one; LATEST is written after, by the caller).
    Temp folders that a killed save left behind are removed when the version is saved again."""
    final = version_dir(models_root, name, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{version}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=final.parent))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"name": name, "version": version})
    dump_json(tmp / "config.json", {"model": model.cfg.to_dict(), "train": train_config})
    dump_json(tmp / "item_vocab.json", list(item_ids))
    dump_json(tmp / "metrics.json", metrics)
    dump_json(tmp / "lineage.json", lineage)
    chaos.point("registry.files_written")
    old = final.parent / f".{version}.old-{tmp.name.rsplit('.', 1)[-1]}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    chaos.point("registry.version_saved")      # LATEST still names the previous version
    return final


@dataclass
class LoadedModel:
    """A registered model ready to embed users and items (CPU, eval mode, no Spark needed)."""

    name: str
    version: str
    item_ids: list[str]
    model: SeqRec
    config: dict
    metrics: dict
    lineage: dict
    path: str

    def __post_init__(self):
        self._index = {item: i for i, item in enumerate(self.item_ids)}

    @property
    def dim(self) -> int:
        return self.model.cfg.dim

    @property
    def max_seq_len(self) -> int:
        return self.model.cfg.max_seq_len

    @property
    def width(self) -> int:
        """Columns of the user and item embeddings: ``dim``, plus one when the model has the recent-popularity
        term (the items carry weight x log1p(recent purchases), the users a 1)."""
        return self.dim + (1 if self.model.cfg.recent_days else 0)

    def _recent_column(self, vectors: np.ndarray, recent: np.ndarray | None) -> np.ndarray:
        if not self.model.cfg.recent_days:
            return vectors
        col = np.zeros((len(vectors), 1), np.float32)
        if recent is not None:
            col[:, 0] = float(self.model.recent_weight.detach()) * np.asarray(recent, np.float32)
        return np.hstack([vectors, col])

    def set_recent_popularity(self, log_counts: np.ndarray | None, first_day: int) -> None:
        """The per-day recent popularity (training.inputs.recent_popularity) for ``catalogue_scores``' days."""
        self.model.set_recent_popularity(None if log_counts is None else torch.from_numpy(np.asarray(log_counts)),
                                         first_day)

    @torch.no_grad()
    def catalogue_embeddings(self, recent: np.ndarray | None = None) -> np.ndarray:
        """(V, width) float32: every vocabulary item, in ``item_ids`` order; ``recent`` (V,) the items'
        log1p recent purchases on the day scored (the extra column; 0 without it)."""
        return self._recent_column(self.model.item_vectors().float().numpy(), recent)

    @torch.no_grad()
    def item_embeddings(self, items: pd.DataFrame, recent: np.ndarray | None = None) -> np.ndarray:
        """Rows of ``items`` (bronze/items columns) -> (n, width) float32 in the same order. Items outside
        the vocabulary get a text-only vector (the encoder runs on their title / category / description).
        ``recent`` (n,): the rows' log1p recent purchases on the day scored (see ``width``)."""
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if len(items) == 0:
            return self._recent_column(out, recent)
        ids = items["item_id"].astype(str).tolist()
        known = np.array([i in self._index for i in ids])
        if known.any():
            idx = torch.tensor([self._index[i] for i, k in zip(ids, known) if k])
            out[known] = self.model.item_vectors(idx).float().numpy()
        if (~known).any():
            unknown = items.loc[~known]
            texts = [item_text(*(r.get(c) for c in ("title", "category", "description")))
                     for r in unknown.to_dict("records")]
            cfg = self.model.cfg
            text = (encode_texts(texts, cfg.encoder_path, cfg.text_max_tokens) if cfg.use_text
                    else torch.zeros(len(texts), cfg.text_dim))
            out[~known] = self.model.text_only_vectors(text).float().numpy()
        return self._recent_column(out, recent)

    def encode_sequences(self, item_ids: Sequence[Sequence[str]], event_types: Sequence[Sequence[str]],
                         event_ts: Sequence[Sequence[Any]] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Oldest-first sequences -> right-padded (n, max_seq_len) token, type and basket tensors (last N
        kept). Baskets come from ``event_ts`` (equal timestamps = one basket); None without it. An empty
        sequence becomes one UNK token."""
        n, T = len(item_ids), self.max_seq_len
        if len(event_types) != n or (event_ts is not None and len(event_ts) != n):
            raise ValueError("item_ids, event_types (and event_ts) must have the same length")
        type_index = {t: i + 1 for i, t in enumerate(self.model.cfg.event_types)}
        tokens = torch.zeros(n, T, dtype=torch.long)
        types = torch.zeros(n, T, dtype=torch.long)
        baskets = None if event_ts is None else torch.full((n, T), -1, dtype=torch.long)
        for row, (items, kinds) in enumerate(zip(item_ids, event_types)):
            items, kinds = list(items)[-T:], list(kinds)[-T:]
            tokens[row, :len(items)] = torch.tensor([self._index.get(i, UNK - FIRST_ITEM) + FIRST_ITEM
                                                     for i in items], dtype=torch.long)
            types[row, :len(kinds)] = torch.tensor([type_index.get(k, 0) for k in kinds], dtype=torch.long)
            if baskets is not None:
                baskets[row] = torch.from_numpy(encode_baskets(basket_ordinals(event_ts[row]), T))
        empty = tokens[:, 0] == PAD
        tokens[empty, 0] = UNK
        return tokens, types, baskets

    def _batches(self, item_ids, event_types, event_ts, batch_size: int):
        for start in range(0, len(item_ids), batch_size):
            stop = start + batch_size
            yield start, self.encode_sequences(item_ids[start:stop], event_types[start:stop],
                                               None if event_ts is None else event_ts[start:stop])

    @torch.no_grad()
    def user_embeddings(self, item_ids: Sequence[Sequence[str]], event_types: Sequence[Sequence[str]],
                        event_ts: Sequence[Sequence[Any]] | None = None, batch_size: int = 512) -> np.ndarray:
        """Sequences (oldest first, as in features/user_sequences) -> (n, width) float32. Unknown items
        use the learned UNK vector; an empty sequence gives the UNK-only user vector."""
        out = np.zeros((len(item_ids), self.width), dtype=np.float32)
        if self.width > self.dim:
            out[:, self.dim] = 1.0                      # times the items' recent-popularity column
        for start, (tokens, types, _) in self._batches(item_ids, event_types, event_ts, batch_size):
            out[start:start + len(tokens), :self.dim] = self.model.user_vectors(tokens, types).float().numpy()
        return out

    @torch.no_grad()
    def repeat_boosts(self, item_ids: Sequence[Sequence[str]], event_types: Sequence[Sequence[str]],
                      event_ts: Sequence[Sequence[Any]] | None = None, batch_size: int = 512
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The repeat head's sparse part of the scores, per user: CSR ``(indptr, indices, values)`` with
        ``indices`` vocabulary positions (``item_ids`` order), one entry per distinct past item. Empty
        lists when the model has no repeat head. Score = user_embeddings . item vectors + these."""
        indptr, indices, values = [0], [], []
        for _, (tokens, types, baskets) in self._batches(item_ids, event_types, event_ts, batch_size):
            items, weights = self.model.last_repeat(tokens, types, baskets)
            items, weights = items.numpy(), weights.float().numpy()
            for row in range(len(items)):
                keep = items[row] >= 0 if self.model.cfg.repeat_head else np.zeros(items.shape[1], bool)
                uniq, inverse = np.unique(items[row][keep], return_inverse=True)
                sums = np.zeros(len(uniq), dtype=np.float64)
                np.add.at(sums, inverse, weights[row][keep])
                indices.append(uniq)
                values.append(sums.astype(np.float32))
                indptr.append(indptr[-1] + len(uniq))
        cat = (lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
        return np.asarray(indptr, dtype=np.int64), cat(indices, np.int64), cat(values, np.float32)

    @torch.no_grad()
    def catalogue_scores(self, item_ids: Sequence[Sequence[str]], event_types: Sequence[Sequence[str]],
                         event_ts: Sequence[Sequence[Any]] | None = None, batch_size: int = 512,
                         days: Sequence[int] | None = None) -> np.ndarray:
        """(n, V) float32 scores of every vocabulary item (dense; for evaluation-sized user sets). ``days``
        (n,): the day predicted for each user (days since 1970-01-01), for the recent-popularity term
        (``set_recent_popularity`` first)."""
        items = self.model.item_vectors()
        out = np.zeros((len(item_ids), len(self.item_ids)), dtype=np.float32)
        for start, (tokens, types, baskets) in self._batches(item_ids, event_types, event_ts, batch_size):
            d = None if days is None else torch.as_tensor(np.asarray(days[start:start + len(tokens)], np.int64))
            out[start:start + len(tokens)] = self.model.catalogue_scores(tokens, types, baskets, items, d).numpy()
        return out


def load_model(models_root: str, name: str = DEFAULT_NAME, version: str = "latest") -> LoadedModel:
    """Load a registered model version (``"latest"`` follows the LATEST pointer)."""
    if version == "latest":
        resolved = latest_version(models_root, name)
        if resolved is None:
            raise RegistryError(f"no LATEST model for {name!r} under {models_root}; run `warmstart train` first")
        version = resolved
    folder = version_dir(models_root, name, version)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise RegistryError(f"model {name}/{version} under {models_root} is missing {', '.join(missing)}")
    config = read_json(folder / "config.json")
    # Versions registered before the repeat head existed have neither key: they are plain dot-product models;
    # those from before the item rebuy term have a repeat head without it, and so on for recent popularity.
    cfg = SeqRecConfig.from_dict({"repeat_head": False, "basket_targets": False, "item_rebuy": False, "recent_days": 0,
                                  **config["model"]})
    model = SeqRec(cfg)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()
    return LoadedModel(name=name, version=version, item_ids=[str(i) for i in read_json(folder / "item_vocab.json")],
                       model=model, config=config, metrics=read_json(folder / "metrics.json"),
                       lineage=read_json(folder / "lineage.json"), path=str(folder))
