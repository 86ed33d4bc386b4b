"""The nightly flow's own logic: when training is due, the stages it runs (order, arguments, the
configured gates, what it skips: the backtest of night D - h only on training nights with published
lists), progress headlines, the delayed feedback of a night with nothing published, and a critical gate
that stops the flow (exit 3) with nothing after it run."""
from __future__ import annotations

import base64
import datetime as dt
import re
from pathlib import Path

import pytest
from conftest import args_for

from features.tables import PUBLISHED
from jobs import nightly, runtime, status

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


def test_check_backtest_due_exit_codes(spark, tmp_path, capsys):
    """Airflow's backtest_due task: night D - nightly.feedback_days has published lists (0) or not (99)."""
    lake = tmp_path / "lake"
    lake.mkdir()
    argv = ["--lake", str(lake), "--run-date", "2024-01-31", "--check-backtest-due"]
    assert nightly.main(argv) == 99                                   # no candidates/published table yet
    published = dt.datetime(2024, 1, 25, 3)
    rows = [(dt.date(2024, 1, 24), 5, "20240117-old", 10, 200, "publish-1", published),
            (dt.date(2024, 1, 24), 6, "20240117-old", 11, 220, "publish-2", published + dt.timedelta(hours=1)),
            (dt.date(2024, 1, 23), 4, "20240117-old", 10, 200, "publish-0", published - dt.timedelta(days=1))]
    spark.createDataFrame(rows, PUBLISHED.schema).write.format("delta").save(str(lake / PUBLISHED.name))
    assert nightly.main(argv) == 0
    assert nightly.main([*argv, "nightly.feedback_days=6"]) == 99     # 2024-01-25: nothing published
    # the flow reads the same row through Spark (any Hadoop path)
    for reader in (None, spark):
        row = nightly.published_run(str(lake), dt.date(2024, 1, 24), reader)
        assert (row["table_version"], row["run_id"]) == (6, "publish-2"), reader
        assert nightly.published_run(str(lake), dt.date(2024, 1, 25), reader) is None
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "the backtest is not due for 2024-01-31: nothing was published for 2024-01-24: no lists to judge",
        # a night published twice counts by its latest row: what online services loaded last
        ("the backtest is due for 2024-01-31: lists published for 2024-01-24 (model 20240117-old, "
         "user_candidates version 6)"),
        "the backtest is not due for 2024-01-31: nothing was published for 2024-01-25: no lists to judge"]


def test_delayed_feedback_of_a_night_with_nothing_published_says_so(tmp_path):
    args = args_for(nightly.NightlyArgs, str(tmp_path / "lake"), run_date=D)
    feedback = nightly.delayed_feedback(None, args, WEEK_AGO, None)   # no Spark needed to say so
    assert feedback == {"published_run_date": "2024-01-24", "feedback_days": 7, "window": "[2024-01-25, 2024-02-01)",
                        "published": False, "users_judged": 0,
                        "note": "nothing was published for 2024-01-24: no lists to judge"}
    assert status.feedback_line(feedback) == "nothing was published for 2024-01-24: no lists to judge"


FEEDBACK = {"published_run_date": "2024-01-24", "feedback_days": 7, "window": "[2024-01-25, 2024-02-01)",
            "published": True, "model_version": "20240117-old", "candidates_table_version": 6, "events_version": 3,
            "users_listed": 60, "users_judged": 22, "ndcg@10": 0.125, "recall@20": 0.3125, "hit@10": 0.5,
            "mrr": 0.25, "explore_ndcg@10": None, "explore_users": 0}


def test_feedback_line():
    assert status.feedback_line(FEEDBACK) == (
        "lists published for 2024-01-24 (model 20240117-old): NDCG@10 0.1250  Recall@20 0.3125  "
        "hit rate@10 0.5000  MRR 0.2500  explore NDCG@10 - on 22 customers")
    none_judged = {**FEEDBACK, "users_judged": 0, "note": "no one to judge yet"}
    assert status.feedback_line(none_judged) == \
        "lists published for 2024-01-24 (model 20240117-old): no one to judge yet"


def test_run_report_leads_with_the_delayed_feedback_and_links_the_backtest(tmp_path):
    """No leave-last-out table: the model's quality is the backtest of the published lists (linked) and
    the delayed feedback (first on the page)."""
    from jobs import report

    args = args_for(nightly.NightlyArgs, str(tmp_path / "lake"), run_date=D)
    folder = Path(args.reports_root) / "backtest" / "2024-01-24_2024-01-24"
    runtime.write_json(str(folder / "summary.json"), {
        "users_judged": 22, "best_baseline": "p_topfreq",
        "pooled": {"lists": {"ndcg@10": 0.125, "ndcg@10_ci": [0.09, 0.16]},
                   "p_topfreq": {"ndcg@10": 0.1, "ndcg@10_ci": [0.07, 0.13]}},
        "lists_vs_best": {"diff": 0.025, "ci_low": -0.01, "ci_high": 0.06},
        "per_night": [{"model_versions": {"lists": "published: 20240117-old"}}]})
    runtime.write_json(f"{args.reports_root}/2024-01-31/model/metrics.json", {"results": {"model": {"ndcg@10": 0.9}}})
    summary = {"status": "succeeded", "error": None, "stages": [], "total_seconds": 1.0, "model": {"version": None},
               "delayed_feedback": FEEDBACK}
    html = Path(report.write(args, D, nightly=summary)).read_text()
    line = ('<p id="delayed-feedback-line"><strong>Lists published for 2024-01-24: NDCG@10 0.1250 on 22 '
            'customers</strong></p>')
    assert line in html and html.index(line) < html.index('<h2 id="stages">')
    assert ('<a class="backtest-report" href="../backtest/2024-01-24_2024-01-24/index.html">' in html)
    assert ("Lists (published: 20240117-old) NDCG@10 0.1250, best tuned baseline\n    p_topfreq 0.1000 on 22 "
            "customers; lists &minus; best\n    +0.0250 (95% CI -0.0100 to +0.0600).") in html
    assert 'id="evaluation"' not in html and "0.9000" not in html   # evaluate's leave-last-out figures
    # the lists and the baselines with their intervals, as a picture
    plot = re.search(r'<img id="backtest-plot" [^>]*src="data:image/png;base64,([^"]+)"', html)
    assert plot and base64.b64decode(plot.group(1)).startswith(b"\x89PNG") and len(plot.group(1)) > 5_000


def test_run_report_leaves_the_backtest_plot_out_without_intervals(tmp_path):
    from jobs import report

    args = args_for(nightly.NightlyArgs, str(tmp_path / "lake"), run_date=D)
    runtime.write_json(str(Path(args.reports_root) / "backtest" / "2024-01-24_2024-01-24" / "summary.json"), {
        "users_judged": 22, "best_baseline": "p_topfreq",
        "pooled": {"lists": {"ndcg@10": 0.125}, "p_topfreq": {"ndcg@10": 0.1}}, "per_night": [{}]})
    summary = {"status": "succeeded", "error": None, "stages": [], "total_seconds": 1.0, "model": {"version": None}}
    html = Path(report.write(args, D, nightly=summary)).read_text()
    assert 'class="backtest-report"' in html and 'id="backtest-plot"' not in html


def test_headline_picks_the_stage_counts():
    summary = {"records_read": 1963, "events_inserted": 1939, "duplicates": 0, "quarantined": 24,
               "wall_seconds": 3.5, "lineage": "/x.json"}
    assert nightly.headline("ingest", summary) == \
        "records_read=1,963  events_inserted=1,939  duplicates=0  quarantined=24"
    # unknown stage: its plain numbers
    assert nightly.headline("mystery", {"a": 1, "b": "x", "c": 0.5, "d": True}) == "a=1  c=0.5000"


class _Recording(nightly.Flow):
    """The flow with every stage succeeding at once, recording what it was asked to run; training
    registers version 20240131-new; ``published`` maps the nights with published lists to their
    ``candidates/published`` row."""

    def __init__(self, args: nightly.NightlyArgs, published: dict[dt.date, dict] | None = None):
        super().__init__(args, nightly.plan_size(args.config.nightly))
        self.ran: list[tuple[str, list[str]]] = []
        self.published_rows = published or {}
        self.asked: list[dt.date] = []

    def stage(self, name: str, module: str, argv: list[str]) -> nightly.StageResult:
        self.progress.begin(name)
        self.ran.append((name, argv))
        result = nightly.StageResult(name, "succeeded", exit_code=0,
                                     summary={"version": "20240131-new"} if module == "train" else {})
        self.results.append(result)
        self.progress.end(result)
        return result

    def _table_exists(self, table: str) -> bool:
        return True

    def published(self, day: dt.date) -> dict | None:
        self.asked.append(day)
        return self.published_rows.get(day)

    def feedback(self, night_of: dt.date, published: dict | None) -> nightly.StageResult:
        self.progress.begin(nightly.FEEDBACK)
        self.ran.append((nightly.FEEDBACK, [str(night_of), str((published or {}).get("table_version"))]))
        result = nightly.StageResult(nightly.FEEDBACK, "succeeded", exit_code=0)
        self.results.append(result)
        self.progress.end(result)
        return result


WEEK_AGO = dt.date(2024, 1, 24)
PUBLISHED_WEEK_AGO = {"run_date": "2024-01-24", "table_version": 5, "model_version": "20240117-old"}


def test_stages_run_in_order_with_the_configured_gates(tmp_path):
    args = args_for(nightly.NightlyArgs, str(tmp_path / "lake"), run_date=D, events=("drop/events",),
                    format="parquet", overrides={"nightly.gates_after_ingest": ["bronze/events"],
                                                 "nightly.gates_after_features": ["features/user_sequences"]})
    flow = _Recording(args, {WEEK_AGO: PUBLISHED_WEEK_AGO})
    nightly.run_stages(flow)
    day = ["--run-date", "2024-01-31"]
    assert flow.ran == [
        ("ingest", [*day, "--events", "drop/events", "--format", "parquet"]),   # no --items: none given
        ("gate bronze/events", ["--table", "bronze/events", *day]),
        ("features", day),
        ("gate features/user_sequences", ["--table", "features/user_sequences", *day]),
        ("train", day),                                                          # no model yet: due
        ("train_ranker", day),                                                   # refitted with the model
        # the lists served a week ago, against the week since (not leave-last-out)
        ("backtest", ["--run-dates", "2024-01-24", "--horizon", "7", "--lists", "published"]),
        ("score", day),
        ("publish", day),
        ("delayed feedback", ["2024-01-24", "5"]),                               # that night's published row
    ]
    assert flow.asked == [WEEK_AGO]
    assert flow.progress.done == flow.progress.total == 10


def test_the_backtest_and_feedback_follow_nightly_feedback_days(tmp_path):
    args = args_for(nightly.NightlyArgs, str(tmp_path / "lake"), run_date=D, train="always",
                    overrides={"nightly.feedback_days": 3, "nightly.gates_after_ingest": [],
                               "nightly.gates_after_features": []})
    flow = _Recording(args, {dt.date(2024, 1, 28): {"table_version": 9}, WEEK_AGO: PUBLISHED_WEEK_AGO})
    nightly.run_stages(flow)
    assert [r for r in flow.ran if r[0] in ("backtest", "delayed feedback")] == [
        ("backtest", ["--run-dates", "2024-01-28", "--horizon", "3", "--lists", "published"]),
        ("delayed feedback", ["2024-01-28", "9"])]


def test_a_training_night_without_lists_a_week_ago_skips_the_backtest_saying_why(tmp_path, capsys):
    args = args_for(nightly.NightlyArgs, str(tmp_path / "lake"), run_date=D, overrides={
        "nightly.gates_after_ingest": [], "nightly.gates_after_features": []})
    flow = _Recording(args)   # the first nights of a lake: nothing published for 2024-01-24
    nightly.run_stages(flow)
    assert [(r.name, r.status, r.note) for r in flow.results if r.name in ("train", "backtest")] == [
        ("train", "succeeded", ""),
        ("backtest", "skipped", "nothing was published for 2024-01-24: no lists to judge")]
    assert [name for name, _ in flow.ran][-3:] == ["score", "publish", "delayed feedback"]
    assert "backtest                     skipped" in capsys.readouterr().out


def test_no_drop_and_no_training_due_skip_those_stages(tmp_path, capsys):
    _model(tmp_path / "models", "20240130-abc")   # trained yesterday, weekly cadence
    flow = _Recording(args_for(nightly.NightlyArgs, str(tmp_path / "lake"), run_date=D))
    nightly.run_stages(flow)
    assert [(r.name, r.status) for r in flow.results] == [
        ("ingest", "skipped"),
        ("gate bronze/events", "succeeded"), ("gate bronze/items", "succeeded"),   # the default gate lists
        ("features", "succeeded"),
        ("gate features/user_features", "succeeded"), ("gate features/item_features", "succeeded"),
        ("gate features/user_sequences", "succeeded"),
        ("train", "skipped"), ("train_ranker", "skipped"), ("backtest", "skipped"),
        ("score", "succeeded"), ("publish", "succeeded"), ("delayed feedback", "succeeded"),
    ]
    assert flow.progress.done == flow.progress.total == 13
    out = capsys.readouterr().out
    assert "[ 1/13] ingest" in out and "no --events/--items given" in out
    assert "[ 8/13] train" in out and "not due: last trained 2024-01-30 (1 d ago, cadence 7 d)" in out
    assert "[ 9/13] train_ranker" in out and "the ranker is refitted with the model" in out
    assert "[10/13] backtest" in out and "no new model tonight: the backtest runs on training nights" in out


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


# One ingest of the whole history (as the demo loads Online Retail), run for 2024-01-31: two events a day
# from 2024-01-26 on, none on 2024-01-29 (a day without trade).
HISTORY = [(day, n) for day in ("2024-01-26", "2024-01-27", "2024-01-28", "2024-01-30", "2024-01-31") for n in (1, 2)]


@pytest.mark.slow
def test_bronze_gate_of_a_replay_validates_the_days_up_to_the_run_date(spark, interpreted_sql, tmp_path, capsys):
    """A replay (nightly --run-date D without --events, an Airflow backfill) has no ingest run of its own
    for the bronze/events gate to judge: the gate validates the events dated in the freshness window up
    to D (jobs/validate.py, _replay_window), and a lake without D's events fails freshness, exit 3."""
    import json

    from jobs import ingest, validate

    drop = tmp_path / "events.csv"
    drop.write_text("user_id,item_id,event_type,event_ts,quantity,price,session_id\n" + "".join(
        f"u{n},i{n},purchase,{day}T10:0{n}:00Z,1,2.5,s{n}\n" for day, n in HISTORY))
    lake = str(tmp_path / "lake")
    ingest.run(spark, args_for(ingest.IngestArgs, lake, run_date=dt.date(2024, 1, 31), events=(str(drop),)))

    def gate(day: str) -> tuple[int, int, int | None, str, set[str]]:
        code = validate.main(["--lake", lake, "--table", "bronze/events", "--run-date", day])
        report = json.loads((tmp_path / "reports" / day / "quality" / "bronze_events.json").read_text())
        judged = {r["check"] for r in report["results"] if r["status"] != "skipped"}
        return code, report["rows"], report["previous_rows"], report["context"]["scope"], judged

    # a replay of 2024-01-28: its events and the day before's, against the two days before them; no
    # ingest read anything for it, so there is no quarantine rate
    code, rows, previous, scope, judged = gate("2024-01-28")
    assert (code, rows, previous) == (0, 4, 2)
    assert scope == f"{validate.REPLAY_SCOPE}: event_date 2024-01-27 .. 2024-01-28 (previous: 2024-01-25 .. 2024-01-26)"
    assert "freshness" in judged and "row_count_change" in judged and "quarantine_rate" not in judged
    assert gate("2024-01-29")[:3] == (0, 2, 4)       # no trade that day: the day before is fresh enough
    capsys.readouterr()
    assert gate("2024-02-05")[:3] == (3, 0, None)    # the lake does not hold the night's events
    last = capsys.readouterr().err.strip().splitlines()[-1]   # no row at all: every row check fails with it
    assert last.startswith("warmstart validate: critical data-quality checks failed on bronze/events for "
                           "2024-02-05: ") and "freshness" in last
