"""The typed configuration (jobs/config.py): layering, strictness (an unknown key or a wrong type is a
usage error naming the nearest valid key) and --print-config."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from jobs import config as C
from jobs import runtime


def test_defaults_are_the_dataclasses_and_sections_are_typed():
    cfg = C.load_config()
    assert cfg.score.k == 100 and cfg.train.model.dim == 64 and cfg.train.loop.patience == 3
    assert cfg.nightly.gates_after_ingest == ("bronze/events", "bronze/items")
    assert cfg.train.model.num_items is None                # comes from the data, never configured
    assert C.build(C.Config, cfg.to_dict()) == cfg          # plain data round-trips


@pytest.mark.parametrize("overrides, message", [
    ({"score.kk": 5}, "unknown configuration key score.kk (did you mean score.k?)"),
    ({"train.model.dimm": 32}, "unknown configuration key train.model.dimm (did you mean train.model.dim?)"),
    ({"scor.k": 5}, "unknown configuration key scor (did you mean score?)"),
    ({"k": 5}, "unknown configuration key k (did you mean score.k?)"),    # right name, wrong section
    ({"score.k": "ten"}, "score.k must be an integer, got 'ten'"),
    ({"train.loop.lr": "fast"}, "train.loop.lr must be a number, got 'fast'"),
    ({"train.use_gpu": 1}, "train.use_gpu must be true or false, got 1"),
    ({"evaluate.ks": 10}, "evaluate.ks must be a list, got 10"),
    ({"score.k": 0}, "score.k must be >= 1, got 0"),
    ({"train.model.num_heads": 3}, "train.model: dim 64 must be divisible by num_heads 3"),
    ({"generate.format": "xml"}, "generate.format must be one of parquet, csv, jsonl, got 'xml'"),
])
def test_a_wrong_key_or_value_is_named(overrides, message):
    with pytest.raises(C.ConfigError) as err:
        C.load_config(overrides=overrides)
    assert str(err.value) == message


def test_a_config_file_is_as_strict_as_the_command_line(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("score:\n  k: 50\n  exclude_categorys: [gifts]\n")
    with pytest.raises(C.ConfigError, match=r"score.exclude_categorys \(did you mean score.exclude_categories\?\)"):
        C.load_config(str(site))


def test_ints_are_numbers_and_lists_become_tuples():
    cfg = C.load_config(overrides=C.parse_overrides(["train.loop.lr=1", "score.exclude_event_types=[purchase]"]))
    assert cfg.train.loop.lr == 1.0 and isinstance(cfg.train.loop.lr, float)
    assert cfg.score.exclude_event_types == ("purchase",)


def _warmstart(*argv):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *argv], capture_output=True, text=True, timeout=120)


def test_cli_exits_2_with_one_line_naming_the_nearest_key(tmp_path):
    done = _warmstart("score", "--run-date", "2024-01-01", "--lake", str(tmp_path), "score.kk=5")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == \
        "warmstart score: unknown configuration key score.kk (did you mean score.k?)"
    done = _warmstart("features", "--run-date", "2024-01-01", "--lake", str(tmp_path), "features.sequence_length=long")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == \
        "warmstart features: features.sequence_length must be an integer, got 'long'"


def test_print_config_shows_the_effective_configuration(tmp_path):
    done = _warmstart("score", "--print-config", "--lake", str(tmp_path), "score.k=7")   # no --run-date needed
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["score"]["k"] == 7 and shown["paths"]["lake"] == str(tmp_path)
    assert C.build(C.Config, shown) == C.load_config(overrides={"score.k": 7, "paths.lake": str(tmp_path)})


def test_runtime_turns_a_config_error_into_a_usage_error():
    with pytest.raises(runtime.UsageError, match="did you mean score.k"):
        runtime.load_config(overrides={"score.kk": 1})
