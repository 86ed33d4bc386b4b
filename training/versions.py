"""The model registry's folders and ``LATEST`` pointer, without torch: what the nightly flow, the Airflow
DAG's ``--check-train-due`` and the reports ask (which versions exist, which is LATEST, what a version was
trained with). ``training/registry.py`` re-exports these beside the model loading.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from jobs.config import DEFAULT_MODEL_NAME as DEFAULT_NAME   # light: no Spark, no torch

FILES = ("model.safetensors", "config.json", "item_vocab.json", "metrics.json", "lineage.json")


class RegistryError(Exception):
    """A missing or incomplete model version."""


def version_dir(models_root: str, name: str, version: str) -> Path:
    return Path(models_root) / name / version


def latest_version(models_root: str, name: str = DEFAULT_NAME) -> str | None:
    pointer = Path(models_root) / name / "LATEST"
    return pointer.read_text().strip() if pointer.is_file() else None


def list_versions(models_root: str, name: str = DEFAULT_NAME) -> list[str]:
    """The complete version folders; a killed save's ``.<version>.*`` temp folder is none of them."""
    root = Path(models_root) / name
    return sorted(p.name for p in root.iterdir()
                  if not p.name.startswith(".") and (p / "model.safetensors").is_file()) if root.is_dir() else []


def read_config(models_root: str, name: str, version: str) -> dict:
    """A registered version's ``config.json``: ``{"model": ..., "train": ...}``."""
    return read_json(version_dir(models_root, name, version) / "config.json")


def promote(models_root: str, name: str, version: str, margin: float, force: bool = False) -> tuple[bool, str]:
    """Point LATEST at ``version`` unless its validation NDCG@10 is worse than the current LATEST's by
    more than ``margin`` (absolute). Returns (moved, reason)."""
    current = latest_version(models_root, name)
    new_ndcg = read_json(version_dir(models_root, name, version) / "metrics.json").get("val_ndcg@10")
    reason = "forced" if force else "no previous version"
    if current and current != version and not force:
        cur_ndcg = read_json(version_dir(models_root, name, current) / "metrics.json").get("val_ndcg@10")
        if cur_ndcg is not None and new_ndcg is not None and new_ndcg < cur_ndcg - margin:
            return False, f"val_ndcg@10 {new_ndcg:.4f} < LATEST {current}'s {cur_ndcg:.4f} - margin {margin}"
        reason = f"val_ndcg@10 {new_ndcg} vs LATEST {current}'s {cur_ndcg} within margin {margin}"
    elif current == version:
        return True, "already LATEST"
    replace_file(Path(models_root) / name / "LATEST", lambda tmp: tmp.write_text(version + "\n"))
    return True, reason


def replace_file(path: Path, write: Callable[[Path], Any]) -> None:
    """Write ``path`` whole or not at all: ``write`` fills a temporary file beside it, which is then
    renamed over it, so a reader sees the old file or the new one, never part of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise




def dump_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def version_as_of(models_root: str, name: str, as_of) -> str | None:
    """The newest registered version trained for a run date on or before ``as_of`` (versions are named
    ``YYYYMMDD-...`` after the run date they were trained for): the model a night had then."""
    stamp = f"{as_of:%Y%m%d}"
    older = [v for v in list_versions(models_root, name) if v[:8] <= stamp]
    return max(older) if older else None


def promote_to(models_root: str, name: str, version: str) -> bool:
    """Point ``name``'s LATEST at ``version`` unconditionally (the ranker: its lists are judged by the
    nightly's delayed feedback and the backtest, not by a validation figure of its own)."""
    replace_file(Path(models_root) / name / "LATEST", lambda tmp: tmp.write_text(version + "\n"))
    return True
