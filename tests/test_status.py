"""`warmstart status` on a lake with hand-written lineage records and published rows: the latest run
date's lineage and gates, the nightly runs, the delayed feedback of recent nights, the published sets
newest first."""
from __future__ import annotations

import datetime as dt

from jobs import runtime, status
from features.tables import PUBLISHED


def _record(lake: str, job: str, run_date: str, recorded_at: str, *, status_: str = "succeeded",
            inputs=None, outputs=None, summary=None) -> None:
    runtime.write_json(f"{lake}/_runs/{job}-{recorded_at}.json", {
        "run_id": f"{job}-{run_date}-{recorded_at}", "job": job, "run_date": run_date, "status": status_,
        "recorded_at": recorded_at, "inputs": inputs or {}, "outputs": outputs or {}, "summary": summary or {}})


def _lake(spark, lake: str) -> None:
    # 2024-01-30: an older run; 2024-01-31: ingest twice (the rerun wins), a failed then passing gate
    _record(lake, "ingest", "2024-01-30", "2024-01-30T02:00:00", outputs={"bronze/events": 1})
    _record(lake, "nightly", "2024-01-30", "2024-01-30T02:30:00", summary={"model": {"version": "20240124-aaa"},
                                                                         "total_seconds": 900.0})
    _record(lake, "ingest", "2024-01-31", "2024-01-31T02:00:00", status_="succeeded",
            inputs={"events_files": ["a", "b"], "format": "auto"}, outputs={"bronze/events": 2})
    _record(lake, "ingest", "2024-01-31", "2024-01-31T03:00:00",
            inputs={"events_files": ["a", "b"], "format": "auto"}, outputs={"bronze/events": 3})
    _record(lake, "features", "2024-01-31", "2024-01-31T03:10:00", inputs={"bronze/events": 3},
            outputs={"features/user_features": 2})
    _record(lake, "validate", "2024-01-31", "2024-01-31T03:05:00", status_="gate_failed",
            summary={"table": "bronze/events", "verdict": "failed", "report_html": "/r/bronze_events.html"})
    _record(lake, "validate", "2024-01-31", "2024-01-31T03:06:00",
            summary={"table": "bronze/events", "verdict": "passed", "report_html": "/r/bronze_events.html"})
    _record(lake, "nightly", "2024-01-31", "2024-01-31T03:30:00", status_="gate failed",
            summary={"model": {"version": None}, "total_seconds": 60.0, "error": "gate bronze/events failed"})
    ts = dt.datetime(2024, 1, 31, 3, 20)
    rows = [(dt.date(2024, 1, 30), 4, "20240124-aaa", 10, 200, "publish-1", ts - dt.timedelta(days=1)),
            (dt.date(2024, 1, 31), 7, "20240124-aaa", 12, 240, "publish-2", ts)]
    spark.createDataFrame(rows, PUBLISHED.schema).write.format("delta").save(f"{lake}/{PUBLISHED.name}")


def test_status_of_the_latest_run_date(spark, lake, capsys):
    _lake(spark, lake)
    data = status.collect(lake)
    assert data["run_dates"] == ["2024-01-30", "2024-01-31"] and data["focus_run_date"] == "2024-01-31"
    assert [(n["run_date"], n["status"], n["model_version"]) for n in data["nightly"]] == [
        ("2024-01-31", "gate failed", None), ("2024-01-30", "succeeded", "20240124-aaa")]
    lineage = {x["job"]: (x["inputs"], x["outputs"]) for x in data["lineage"]}
    assert lineage == {"ingest": ({"events_files": ["a", "b"], "format": "auto"}, {"bronze/events": 3}),
                       "features": ({"bronze/events": 3}, {"features/user_features": 2})}
    assert data["gates"] == {"bronze/events": {"status": "succeeded", "verdict": "passed",
                                               "report": "/r/bronze_events.html",
                                               "run_id": "validate-2024-01-31-2024-01-31T03:06:00"}}
    assert [(str(p["run_date"])[:10], p["table_version"]) for p in data["published"]] == [
        ("2024-01-31", 7), ("2024-01-30", 4)]

    assert status.main(["--lake", lake, "--runs", "3"]) == 0
    out = capsys.readouterr().out
    assert "  features  succeeded  bronze/events@3  features/user_features@2" in out
    assert "  ingest    succeeded  events_files: 2  bronze/events@3" in out
    assert out.count("2024-01-31T0") >= 3   # --runs 3: the three latest job runs
    published = out.split("published candidate sets")[1].splitlines()
    assert published[2].split()[:5] == ["2024-01-31", "7", "20240124-aaa", "12", "240"]


def test_status_of_an_earlier_date_and_of_an_empty_lake(spark, lake, tmp_path, capsys):
    _lake(spark, lake)
    data = status.collect(lake, run_date=dt.date(2024, 1, 30))
    assert [x["job"] for x in data["lineage"]] == ["ingest"] and data["gates"] == {}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert status.main(["--lake", str(empty)]) == 0
    assert "no runs recorded under _runs/ yet" in capsys.readouterr().out
    assert status.main(["--lake", lake, "--runs", "0"]) == 2


def test_status_lists_the_delayed_feedback_of_recent_nights(lake, capsys):
    figures = {"published_run_date": "2024-01-24", "feedback_days": 7, "published": True,
               "model_version": "20240117-old", "users_judged": 22, "ndcg@10": 0.125, "recall@20": 0.3125,
               "hit@10": 0.5, "mrr": 0.25, "explore_ndcg@10": 0.0625, "explore_users": 9}
    # 2024-01-29: recorded before the step existed; 2024-01-31: a rerun, then a run stopped before the step
    _record(lake, "nightly", "2024-01-29", "2024-01-29T02:30:00", summary={"model": {"version": None}})
    _record(lake, "nightly", "2024-01-30", "2024-01-30T02:30:00", summary={"delayed_feedback": {
        "published_run_date": "2024-01-23", "published": False, "note": "nothing was published for 2024-01-23"}})
    _record(lake, "nightly", "2024-01-31", "2024-01-31T02:30:00", summary={"delayed_feedback": {**figures, "mrr": 0.5}})
    _record(lake, "nightly", "2024-01-31", "2024-01-31T03:30:00", summary={"delayed_feedback": figures})
    _record(lake, "nightly", "2024-01-31", "2024-01-31T04:30:00", status_="failed", summary={"delayed_feedback": None})
    data = status.collect(lake)
    assert [(f["run_date"], f["published_run_date"], f.get("mrr")) for f in data["delayed_feedback"]] == [
        ("2024-01-31", "2024-01-24", 0.25), ("2024-01-30", "2024-01-23", None)]
    assert status.main(["--lake", lake]) == 0
    section = capsys.readouterr().out.split("delayed feedback")[1].split("\n\n")[0].splitlines()[1:]
    assert section == [
        ("  2024-01-31  lists published for 2024-01-24 (model 20240117-old): NDCG@10 0.1250  Recall@20 0.3125  "
         "hit rate@10 0.5000  MRR 0.2500  explore NDCG@10 0.0625 on 22 customers"),
        "  2024-01-30  nothing was published for 2024-01-23"]
