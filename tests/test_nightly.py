"""The nightly flow's own logic: when training is due, missing stages, progress headlines, and a
critical gate that stops the flow (exit 3) with nothing after it run."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from jobs import nightly, runtime

D = dt.date(2024, 1, 31)


def _model(root: Path, version: str, name: str = "warmstart-seqrec") -> None:
    folder = root / name / version
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")


@pytest.mark.parametrize("versions, every, mode, due, why", [
    ([], 7, "auto", True, "no model"),                                   # first night: nothing to score with
    (["20240129-abc"], 7, "auto", False, "not due"),                     # trained 2 days ago, weekly cadence
    (["20240124-abc"], 7, "auto", True, "7 d ago"),                      # exactly one cadence ago
    (["20240124-abc", "20240130-def"], 7, "auto", False, "1 d ago"),     # the newest version counts
    (["20240205-abc"], 7, "auto", True, "no model"),                     # backfill: only a model from the future
    (["20240131-abc"], 1, "auto", False, "0 d ago"),                     # rerun of the same date: trained already
    (["20240129-abc"], 7, "always", True, "--train always"),
    ([], 7, "never", False, "--train never"),
])
def test_training_due(tmp_path, versions, every, mode, due, why):
    for v in versions:
        _model(tmp_path, v)
    got, reason = nightly.training_due(str(tmp_path), "warmstart-seqrec", D, every, mode)
    assert (got, why in reason) == (due, True), reason


def test_training_due_ignores_incomplete_versions(tmp_path):
    # a folder without model.safetensors (a crashed save, Ray checkpoints) is not a model
    (tmp_path / "warmstart-seqrec" / "20240130-abc").mkdir(parents=True)
    (tmp_path / "warmstart-seqrec" / "_ray").mkdir()
    assert nightly.training_due(str(tmp_path), "warmstart-seqrec", D, 7)[0] is True


def test_check_train_due_exit_codes(tmp_path, capsys):
    lake = tmp_path / "lake"
    lake.mkdir()
    assert nightly.main(["--lake", str(lake), "--run-date", "2024-01-31", "--check-train-due"]) == 0
    _model(tmp_path / "models", "20240130-abc")
    assert nightly.main(["--lake", str(lake), "--run-date", "2024-01-31", "--check-train-due"]) == 99
    assert nightly.main(["--lake", str(lake), "--run-date", "2024-02-06", "--check-train-due",
                         "nightly.train_every_days=7"]) == 0
    out = capsys.readouterr().out
    assert "training is not due for 2024-01-31: not due: last trained 2024-01-30 (1 d ago, cadence 7 d)" in out
    assert nightly.main(["--lake", str(lake), "--run-date", "2024-13-01", "--check-train-due"]) == 2


def test_headline_picks_the_stage_counts():
    summary = {"records_read": 1963, "events_inserted": 1939, "duplicates": 0, "quarantined": 24,
               "wall_seconds": 3.5, "lineage": "/x.json"}
    assert nightly.headline("ingest", summary) == \
        "records_read=1,963  events_inserted=1,939  duplicates=0  quarantined=24"
    # unknown stage: its plain numbers
    assert nightly.headline("mystery", {"a": 1, "b": "x", "c": 0.5, "d": True}) == "a=1  c=0.5000"


def _args(tmp_path, **overrides) -> nightly.NightlyArgs:
    common = runtime.job_args("nightly", str(tmp_path / "lake"), run_date=D, **overrides)
    return runtime.dataclass_from(nightly.NightlyArgs, type("NS", (), {})(), common, run_date=D)


def test_missing_stage_is_an_error_unless_allowed(tmp_path, capsys):
    strict = nightly.Flow(_args(tmp_path), total=1)
    with pytest.raises(runtime.WarmstartError, match="stage magic not available: jobs/no_such_job.py"):
        strict.stage("magic", "no_such_job", [])
    lenient = nightly.Flow(_args(tmp_path, **{"nightly.require_all_stages": False}), total=1)
    result = lenient.stage("magic", "no_such_job", [])
    assert (result.status, result.note) == ("not available", "jobs/no_such_job.py is not there yet")
    assert "magic" in capsys.readouterr().out


@pytest.mark.slow
def test_failed_critical_gate_stops_the_flow(spark, tmp_path, capsys):
    """A drop with 20% bad records, and the quarantine rate made critical: the bronze/events gate fails,
    the run exits 3 naming the report, and features / train / score never run."""
    from features.synthetic import generate

    drop = tmp_path / "drop"
    generate(drop, users=40, items=200, days=5, start_date="2024-01-27", seed=3, bad_rate=0.2)
    lake = tmp_path / "lake"
    summary_json = tmp_path / "nightly.json"
    code = nightly.main(["--lake", str(lake), "--run-date", "2024-01-31", "--events", str(drop / "events"),
                         "--items", str(drop / "items"), "--summary-json", str(summary_json),
                         "quality.severity.bronze_events.quarantine_rate=critical"])
    captured = capsys.readouterr()
    assert code == 3
    report = tmp_path / "reports" / "2024-01-31" / "quality" / "bronze_events.html"
    assert f"report: {report}" in captured.err
    assert not (lake / "features").exists()
    assert not (tmp_path / "models").exists()
    assert not summary_json.exists()   # a failed run writes no success summary; its record says why
    record = [r for r in runtime.read_lineage(str(lake)) if r["job"] == "nightly"]
    assert [r["status"] for r in record] == ["gate failed"]
    stages = {s["stage"]: s["status"] for s in record[0]["summary"]["stages"]}
    assert stages == {"ingest": "succeeded", "gate bronze/events": "gate failed"}
    assert record[0]["summary"]["gates"]["bronze/events"]["report"] == str(report)
    index = (tmp_path / "reports" / "2024-01-31" / "index.html").read_text()
    assert "gate failed" in index and "quality/bronze_events.html" in index
