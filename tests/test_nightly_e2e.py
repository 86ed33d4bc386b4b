"""`warmstart nightly` end to end on a small generated drop, as a user runs it: night D - 7 runs to
completion (it trains and publishes), then night D is killed with SIGKILL in the middle of the features
stage and rerun to completion. Checks that nothing is duplicated (row counts and keys of every table),
the final summary, the delayed feedback on the lists published for D - 7 (against training/backtest on
the same rows) and the backtest of that night, `warmstart status`, the run report rendered by
headless Chromium with the network off, a console free of Spark's and Ray's start-up output, and last a
replay of an earlier night without --events (every stage, the gates included)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_JOB_OVERRIDES

REPO = Path(__file__).resolve().parent.parent
D = "2024-01-31"
WEEK_AGO = "2024-01-24"   # D - nightly.feedback_days: its published lists are judged on D's night
pytestmark = pytest.mark.slow
# A small model and short lists: the flow, not the model, is under test here.
SMALL = ["train.model.dim=32", "train.model.num_layers=1", "train.model.max_seq_len=20", "train.loop.epochs=2",
         "train.cpus_per_worker=0.5", "evaluate.baselines=[popularity,repeat]", "score.k=20",
         "spark.master=local[2]", "spark.driver_memory=1g", "spark.shuffle_partitions=2", *TINY_JOB_OVERRIDES]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]   # any network use fails


def _env() -> dict[str, str]:
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """The night a week before D runs to completion on the same drop (the events after it are quarantined
    as in its future; D's ingest takes them); then D's run 1 is killed (SIGKILL to its process group, JVM
    included) once features started, and run 2 completes."""
    from features.synthetic import Funnel, generate

    root = tmp_path_factory.mktemp("nightly")
    drop = root / "drop"
    # 17 days: ten before the week-ago night, its week of feedback; more carts bought than the default
    # funnel's, so that about twenty customers are judged on that week
    generated = generate(drop, users=60, items=200, days=17, start_date="2024-01-15", seed=11, bad_rate=0.01,
                         funnel=Funnel(p_cart=0.7, p_purchase=0.8))
    lake = root / "lake"

    def cmd(day: str, summary: str) -> list[str]:
        return [sys.executable, "-m", "jobs.cli", "nightly", "--lake", str(lake), "--run-date", day, "--events",
                str(drop / "events"), "--items", str(drop / "items"), "--summary-json", str(root / summary), *SMALL]

    week_ago = subprocess.run(cmd(WEEK_AGO, "week_ago.json"), capture_output=True, text=True, env=_env(), cwd=REPO,
                              timeout=1500)
    (root / "week_ago.out").write_text(week_ago.stdout + week_ago.stderr)
    assert week_ago.returncode == 0, week_ago.stdout[-3000:] + week_ago.stderr[-3000:]

    first_out = []
    with open(root / "run1.err", "w") as err:
        proc = subprocess.Popen(cmd(D, "summary.json"), stdout=subprocess.PIPE, stderr=err, text=True, env=_env(),
                                cwd=REPO, start_new_session=True)
        for line in proc.stdout:
            first_out.append(line)
            if re.match(r"\[\s*\d+/\d+\] features\s+running", line):
                time.sleep(4)   # inside the stage's Spark work
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    killed_at = first_out[-1]

    second = subprocess.run(cmd(D, "summary.json"), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=1500)
    (root / "run2.out").write_text(second.stdout)
    (root / "run2.err").write_text(second.stderr)
    return {"root": root, "lake": lake, "drop": drop, "generated": generated, "first_rc": proc.returncode,
            "first_out": "".join(first_out), "killed_at": killed_at, "second": second, "week_ago": week_ago}


def test_killed_run_then_rerun_completes_without_duplicates(spark, flow):
    from pyspark.sql import functions as F

    second = flow["second"]
    assert flow["first_rc"] == -signal.SIGKILL and "features" in flow["killed_at"]
    assert "ingest                       succeeded" in flow["first_out"]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    lake = flow["lake"]

    def table(name):
        return spark.read.format("delta").load(f"{lake}/{name}")

    # the rerun's ingest found every event already there: conservation holds and nothing was added
    summary = json.loads((flow["root"] / "summary.json").read_text())
    nightly = json.loads(Path(summary["summary_file"]).read_text())
    ingest = next(s for s in nightly["stages"] if s["stage"] == "ingest")
    assert "events_inserted=0" in ingest["rows"], ingest
    events = table("bronze/events")
    n_events = events.count()
    read = int(re.search(r"records_read=([\d,]+)", ingest["rows"]).group(1).replace(",", ""))
    quarantined = int(re.search(r"quarantined=([\d,]+)", ingest["rows"]).group(1).replace(",", ""))
    assert read == flow["generated"]["events"]
    assert n_events == read - quarantined == events.select("event_id").distinct().count()
    quarantine = table("bronze/events_quarantine")
    assert quarantine.where(F.col("run_date") == D).count() == quarantined
    week_ago = json.loads((flow["root"] / "week_ago.json").read_text())   # its future: D's days, and the bad rows
    assert quarantine.where(F.col("run_date") == WEEK_AGO).count() == week_ago["quarantined"] > quarantined
    assert table("bronze/items").count() == table("bronze/items").select("item_id").distinct().count() == 200

    # one row per key in every feature partition and in the candidates
    users = events.where(F.col("event_date") <= D).select("user_id").distinct().count()
    for name, key in (("features/user_features", "user_id"), ("features/user_sequences", "user_id"),
                      ("features/item_features", "item_id")):
        part = table(name).where(F.col("as_of_date") == D)
        assert part.count() == part.select(key).distinct().count(), name
    assert table("features/user_sequences").where(F.col("as_of_date") == D).count() == users
    cands = table("candidates/user_candidates").where(F.col("run_date") == D)
    assert cands.count() == cands.select("user_id", "rank").distinct().count() == users * 20
    # the killed run never got to training or publishing: one model and one published set per night
    models = sorted(p.name for p in (flow["root"] / "models" / "warmstart-seqrec").iterdir() if p.name[:1].isdigit())
    assert [m[:8] for m in models] == ["20240124", "20240131"] and summary["model_version"] == models[1]
    users_then = events.where(F.col("event_date") <= WEEK_AGO).select("user_id").distinct().count()
    published = table("candidates/published").orderBy("published_at").collect()
    assert [(str(p.run_date), p.model_version, p.users, p.rows) for p in published] == \
        [(WEEK_AGO, models[0], users_then, users_then * 20), (D, models[1], users, users * 20)]


def test_final_summary_lists_counts_gates_model_and_reports(flow):
    out = flow["second"].stdout
    summary = json.loads((flow["root"] / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["gates_passed"] == "5/5"
    assert summary["model_trained_tonight"] is True
    assert 0 <= summary["val_ndcg@10"] <= 1
    assert not [k for k in summary if k.startswith(("model_ndcg", "popularity_"))]   # no leave-last-out figures
    # the training night's backtest: the lists published a week ago beside the tuned baselines
    assert (summary["backtest_night"], summary["backtest_status"]) == (WEEK_AGO, "succeeded")
    assert 0 <= summary["backtest_lists_ndcg@10"] <= 1 and 0 <= summary["backtest_best_baseline_ndcg@10"] <= 1
    backtest = flow["root"] / "reports" / "backtest" / f"{WEEK_AGO}_{WEEK_AGO}" / "index.html"
    assert summary["backtest_report"] == str(backtest)
    assert Path(summary["backtest_report"]).is_file() and summary["backtest_report"] in out
    assert summary["published_rows"] == summary["published_users"] * 20 > 0
    # the ranker: 17 days of history leave its oldest training night (01-10) without customers: no fit, no error
    assert re.search(r"train_ranker\s+succeeded\s+[\d.]+s\s+skipped=no purchases after", out)
    for stage in ("ingest", "gate bronze/events", "features", "train", "train_ranker", "backtest", "score", "publish",
                  "delayed feedback"):
        assert re.search(rf"\[\s*\d+/\d+\] {re.escape(stage)}\s+succeeded\s+[\d.]+s", out), stage
    assert "== warmstart nightly 2024-01-31: succeeded" in out
    reports = flow["root"] / "reports" / D
    assert summary["run_report"] == str(reports / "index.html")
    trend_page = Path(summary["trend_page"])                       # the trend page, tonight included
    assert trend_page == reports.parent / "trends" / "index.html" and trend_page.is_file()
    assert D in json.loads((trend_page.parent / "trends.json").read_text())["nights"]
    for path in [*(reports / "quality").glob("*.html"), *(reports / "model").glob("*.html")]:
        assert str(path) in out
    assert len(list((reports / "quality").glob("*.html"))) == 5


def test_status_shows_the_run_its_lineage_and_the_published_set(flow, capsys):
    from jobs import status

    assert status.main(["--lake", str(flow["lake"])]) == 0
    out = capsys.readouterr().out
    data = status.collect(str(flow["lake"]))
    assert data["focus_run_date"] == D
    # the killed run left no record
    assert [(n["run_date"], n["status"]) for n in data["nightly"]] == [(D, "succeeded"), (WEEK_AGO, "succeeded")]
    assert set(data["gates"]) == {"bronze/events", "bronze/items", "features/user_features",
                                  "features/item_features", "features/user_sequences"}
    assert all(g["verdict"] == "passed" for g in data["gates"].values())
    jobs = {x["job"]: x for x in data["lineage"]}
    assert {"ingest", "features", "train", "score", "publish"} <= set(jobs)
    events_version = jobs["ingest"]["outputs"]["bronze/events"]
    assert jobs["features"]["inputs"]["bronze/events"] == events_version   # features read what ingest wrote
    assert f"bronze/events@{events_version}" in out
    current = data["published"][0]
    assert str(current["run_date"])[:10] == D
    assert f"{current['table_version']}" in out and "published candidate sets" in out


def _direct_feedback(spark, lake: Path) -> dict:
    """The week-ago night's lists judged straight from the lake with training/backtest: every purchase
    (not only the window's buyers), the published partition's rows put in rank order here."""
    import datetime as dt

    import numpy as np
    from pyspark.sql import functions as F

    from training import backtest as B

    def table(name, version=None):
        reader = spark.read.format("delta")
        return (reader.option("versionAsOf", version) if version is not None else reader).load(f"{lake}/{name}")

    published = (table("candidates/published").where(F.col("run_date") == WEEK_AGO)
                 .orderBy(F.desc("published_at")).first())
    rows = (table("candidates/user_candidates", published.table_version).where(F.col("run_date") == WEEK_AGO)
            .select("user_id", "rank", "item_id").toPandas())
    items = table("bronze/items").select("item_id", "category").toPandas().sort_values("item_id")
    index = {item: i for i, item in enumerate(items["item_id"])}
    purchases = table("bronze/events").where(F.col("event_type") == "purchase").select(
        "user_id", "item_id", "event_ts").toPandas()
    purchases["item"] = purchases["item_id"].map(index)
    purchases = purchases.dropna(subset=["item"]).astype({"item": np.int64})
    night = B.night(purchases, dt.date.fromisoformat(WEEK_AGO), 7, (items["category"] != "non_product").to_numpy())
    lists = []
    for user in night.user_ids[night.evaluated]:
        mine = rows[rows["user_id"] == user].sort_values("rank")
        lists.append(np.array([index[i] for i in mine["item_id"]], dtype=np.int64))
    per_user = B.judge(lists, night)
    return {"published": published, "users_judged": len(night.evaluated),
            "explore_users": int(np.isfinite(per_user["explore_ndcg@10"]).sum()),
            **{m: float(np.nanmean(per_user[m])) for m in ("ndcg@10", "recall@20", "hit@10", "mrr", "explore_ndcg@10")}}


def test_delayed_feedback_judges_the_lists_published_a_week_ago(spark, flow, capsys):
    from jobs import runtime, status

    summary = json.loads((flow["root"] / "summary.json").read_text())
    feedback = summary["delayed_feedback"]
    expected = _direct_feedback(spark, flow["lake"])
    published = expected.pop("published")
    assert {k: feedback[k] for k in ("published_run_date", "window", "model_version", "candidates_table_version")} == {
        "published_run_date": WEEK_AGO, "window": "[2024-01-25, 2024-02-01)",
        "model_version": published.model_version, "candidates_table_version": published.table_version}
    assert feedback["users_judged"] == expected["users_judged"]
    assert feedback["explore_users"] == expected["explore_users"]
    assert expected["users_judged"] >= 10 and expected["recall@20"] > 0   # figures worth comparing
    for metric in ("ndcg@10", "recall@20", "hit@10", "mrr", "explore_ndcg@10"):
        assert feedback[metric] == pytest.approx(expected[metric], abs=1e-6), metric
    # the backtest of that night judged the same lists of the same customers
    assert summary["backtest_users_judged"] == feedback["users_judged"]
    assert summary["backtest_lists_ndcg@10"] == pytest.approx(feedback["ndcg@10"], abs=1e-6)

    # the same figures in the nested summary, the lineage record, the run report and `warmstart status`
    assert json.loads(Path(summary["summary_file"]).read_text())["delayed_feedback"] == feedback
    record = [r for r in runtime.read_lineage(str(flow["lake"])) if r["job"] == "nightly" and r["run_date"] == D]
    assert record[-1]["summary"]["delayed_feedback"] == feedback
    html = (flow["root"] / "reports" / D / "index.html").read_text()
    assert (f"Lists published for {WEEK_AGO}: NDCG@10 {expected['ndcg@10']:.4f} on {expected['users_judged']:,} "
            "customers") in html
    assert status.main(["--lake", str(flow["lake"])]) == 0
    out = capsys.readouterr().out
    assert (f"  {D}  lists published for {WEEK_AGO} (model {published.model_version}): "
            f"NDCG@10 {expected['ndcg@10']:.4f}  Recall@20 {expected['recall@20']:.4f}") in out
    assert f"  {WEEK_AGO}  nothing was published for 2024-01-17: no lists to judge" in out


def test_the_week_ago_night_had_nothing_to_judge_and_said_so(flow):
    week_ago = json.loads((flow["root"] / "week_ago.json").read_text())
    assert week_ago["status"] == "succeeded"
    assert week_ago["delayed_feedback"] == {
        "published_run_date": "2024-01-17", "feedback_days": 7, "window": "[2024-01-18, 2024-01-25)",
        "published": False, "users_judged": 0, "note": "nothing was published for 2024-01-17: no lists to judge"}
    assert (week_ago["backtest_night"], week_ago["backtest_status"]) == ("2024-01-17", "skipped")
    assert "backtest_lists_ndcg@10" not in week_ago
    out = flow["week_ago"].stdout
    assert re.search(r"\] backtest\s+skipped\s+nothing was published for 2024-01-17: no lists to judge", out)
    assert "delayed feedback: nothing was published for 2024-01-17: no lists to judge" in out


def test_run_report_renders_offline_in_chromium(flow, tmp_path):
    index = flow["root"] / "reports" / D / "index.html"
    html = index.read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html)   # nothing fetched from the network
    cmd = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
           "--dump-dom", index.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    for element in ('id="delayed-feedback-table"', 'id="stages-table"', 'id="quality-table"', 'id="model-metrics"',
                    'id="candidate-stats"', 'id="strategy-mix"', 'id="top-items"', 'id="published-table"'):
        assert element in dom, element
    assert len(re.findall(r'<img id="plot-[a-z-]+" alt="[^"]+" src="data:image/png;base64,', dom)) == 3
    assert dom.count('href="quality/') == 5
    backtest = f"../backtest/{WEEK_AGO}_{WEEK_AGO}/index.html"
    assert f'class="backtest-report" href="{backtest}"' in dom and (index.parent / backtest).is_file()
    assert re.search(r'<img id="backtest-plot" [^>]*src="data:image/png;base64,', dom)   # lists vs baselines, CI bars
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                    f"--screenshot={shot}", "--window-size=1200,2400", index.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000   # a rendered page with plots, not a blank one


def test_the_console_keeps_to_what_matters(flow):
    """The completed run's stderr: its own log lines (a stage's first line names its log file), none of
    Spark's or Ray's start-up output, no effective configuration; those are in the run's log files."""
    err = flow["second"].stderr
    for noise in ("log4j", "NativeCodeLoader", "incubator", "Started a local Ray instance", "Token authentication",
                  "execution finished", "Created temporary directory", "effective configuration", '"spark": {'):
        assert noise not in err, noise
    assert "Traceback" not in err                                  # nothing failed, nothing looks as if it had
    assert not re.search(r"^\d\d:\d\d:\d\d INFO (?!warmstart)", err, re.M)   # other libraries' INFO lines
    logs = [Path(m) for m in re.findall(r"\(log: (\S+)\)", err)]
    assert logs and all(p.is_file() for p in logs)
    assert "effective configuration:" in logs[0].read_text()       # the nightly's own, first


def test_a_replay_without_events_runs_every_stage_gates_included(spark, flow):
    """What an Airflow backfill or a cleared task does: `nightly --run-date` for a night the lake holds the
    events of (ingested by D's run), no --events. Every stage runs for that night, the bronze/events gate
    included (it judges the night's event dates: no ingest run of its own), and its lists are published.
    Last in the module: it adds a published set for an earlier night."""
    from pyspark.sql import functions as F

    replay = "2024-01-28"
    cmd = [sys.executable, "-m", "jobs.cli", "nightly", "--lake", str(flow["lake"]), "--run-date", replay,
           "--summary-json", str(flow["root"] / "replay.json"), *SMALL]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(Path(json.loads((flow["root"] / "replay.json").read_text())["summary_file"]).read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [
        ("ingest", "skipped"),
        ("gate bronze/events", "succeeded"), ("gate bronze/items", "succeeded"),
        ("features", "succeeded"),
        ("gate features/user_features", "succeeded"), ("gate features/item_features", "succeeded"),
        ("gate features/user_sequences", "succeeded"),
        ("train", "skipped"), ("train_ranker", "skipped"), ("backtest", "skipped"),   # trained 01-24: not due
        ("score", "succeeded"), ("publish", "succeeded"), ("delayed feedback", "succeeded")]
    gate = json.loads((flow["root"] / "reports" / replay / "quality" / "bronze_events.json").read_text())
    assert gate["context"]["scope"].endswith(f"event_date 2024-01-27 .. {replay} (previous: 2024-01-25 .. 2024-01-26)")
    events = spark.read.format("delta").load(f"{flow['lake']}/bronze/events")
    assert gate["rows"] == events.where(F.col("event_date").between("2024-01-27", replay)).count() > 0
    published = spark.read.format("delta").load(f"{flow['lake']}/candidates/published")
    assert published.where(F.col("run_date") == replay).count() == 1
