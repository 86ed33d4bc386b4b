"""Trends across nights (jobs/trends.py, ``warmstart report --last N``, the run report's trend section): the
robust z-score worked out by hand, a night with a planted 5x quarantine rate marked on the trend page and
no other night marked for it, the stage-duration chart against the median, and both pages rendered in
headless Chromium with their plots and no network request."""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jobs import report, runtime, trends

NIGHTS = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(10)]
PLANTED = "2024-01-07"   # its quarantine rate is 5x the usual 5%
# per night: records read, quarantine-rate jitter (per mille), ingest seconds: small honest noise
READ = [10_000, 10_400, 9_800, 10_150, 9_900, 10_300, 10_050, 9_950, 10_200, 10_100]
JITTER = [0, 2, -1, 1, -2, 1, 0, -1, 2, 0]
INGEST_S = [41.0, 44.5, 39.8, 42.2, 40.6, 43.1, 41.9, 40.2, 42.8, 41.4]


def nightly_summary(i: int) -> dict:
    """A nightly summary as jobs/nightly.py final_summary writes it (the fields the trends read)."""
    night = NIGHTS[i].isoformat()
    rate = 0.05 + JITTER[i] / 1000
    if night == PLANTED:
        rate *= 5
    read = READ[i]
    stages = [{"stage": "ingest", "status": "succeeded", "seconds": INGEST_S[i], "rows": "", "note": ""},
              {"stage": "features", "status": "succeeded", "seconds": 30.0 + i % 3, "rows": "", "note": ""},
              {"stage": "train", "status": "skipped" if i % 7 else "succeeded", "seconds": 0.0 if i % 7 else 300.0,
               "rows": "", "note": ""},
              {"stage": "score", "status": "succeeded", "seconds": 20.0 + (i % 2), "rows": "", "note": ""}]
    return {"status": "succeeded", "run_date": night, "stages": stages,
            "total_seconds": round(sum(s["seconds"] for s in stages), 1),
            "counts": {"records_read": read, "events_inserted": int(read * (1 - rate)) - 100,
                       "quarantined": int(read * rate), "rows_user_features": 500 + i,
                       "rows_item_features": 200, "rows_user_sequences": 480 + i},
            "gates": {"bronze/events": {"status": "succeeded", "critical_failed": 0,
                                        "warning_failed": 2 if night == PLANTED else 1}},
            "model": {"version": "20240101-aaaa", "trained_tonight": i % 7 == 0,
                      "metrics": {"val_ndcg@10": 0.30 + (i % 3) / 100}},
            "published": {"coverage": 1.0 - (i % 2) / 1000},
            "error": None,
            "delayed_feedback": {"feedback_days": 7, "published_run_date": (NIGHTS[i] - dt.timedelta(days=7)).isoformat(),
                                 "window": "[...)", "published": i >= 7, "users_judged": 80 if i >= 7 else 0,
                                 "note": "" if i >= 7 else "nothing was published: no lists to judge",
                                 **({"ndcg@10": 0.25 + (i % 4) / 100, "recall@20": 0.3, "hit@10": 0.6, "mrr": 0.4,
                                     "explore_ndcg@10": 0.05, "explore_users": 20, "model_version": "20240101-aaaa",
                                     "candidates_table_version": 3, "events_version": 9} if i >= 7 else {})}}


def write_lake(root: Path, nights: int = len(NIGHTS)) -> Path:
    """Nightly lineage records by hand, as runtime.record_lineage writes them (one night run twice: the
    later record wins)."""
    runs = root / "lake" / "_runs"
    runs.mkdir(parents=True)
    for i in range(nights):
        night = NIGHTS[i].isoformat()
        record = {"run_id": f"nightly-{night}-x", "job": "nightly", "run_date": night, "status": "succeeded",
                  "recorded_at": f"{night}T03:00:00+00:00", "summary": nightly_summary(i)}
        (runs / f"nightly-{night}-T030000Z-x.json").write_text(json.dumps(record))
    stale = {"run_id": "old", "job": "nightly", "run_date": PLANTED, "recorded_at": f"{PLANTED}T01:00:00+00:00",
             "summary": {**nightly_summary(0), "run_date": PLANTED}}   # an earlier, normal-looking attempt
    (runs / f"nightly-{PLANTED}-T010000Z-old.json").write_text(json.dumps(stale))
    (runs / "ingest-2024-01-01-x.json").write_text(json.dumps({"job": "ingest", "summary": {}}))   # not read
    return root / "lake"


def report_args(root: Path, run_date: dt.date | None, last: int | None):
    common = runtime.job_args("report", str(root / "lake"), **{"paths.reports": str(root / "reports"),
                                                               "paths.models": str(root / "models")})
    return report.ReportArgs(**{**common.__dict__, "run_date": run_date, "last": last})


def test_robust_flags_by_hand():
    # others of the 5th value: [10, 11, 9, 10]: median 10, MAD 0.5 -> scale 0.7413; 50 is z = 54
    flags = trends.robust_flags([10, 11, 9, 10, 50])
    assert flags[:4] == [None] * 4
    assert flags[4] == {"z": round(40 / (1.4826 * 0.5), 2), "median": 10, "scale": 1.4826 * 0.5}
    # steady series: the scale floor is 1% of the median, so 100.5 (z = 0.5) is not marked, 104 (z = 4) is
    assert trends.robust_flags([100, 100, 100, 100, 100.5]) == [None] * 5
    assert trends.robust_flags([100, 100, 100, 100, 104])[4]["z"] == 4.0
    assert trends.robust_flags([1, 1, 1, 9]) == [None] * 4       # three other nights: no usual range yet
    assert trends.robust_flags([None, 1, 1, 1, 1, 9])[0] is None


def test_planted_quarantine_rate_is_marked_on_the_trend_page(tmp_path):
    write_lake(tmp_path)
    out = report.run(report_args(tmp_path, None, 10))
    data = json.loads((tmp_path / "reports" / "trends" / "trends.json").read_text())
    assert data["nights"] == [d.isoformat() for d in NIGHTS]
    assert data["rows"][PLANTED]["quarantine_rate"] == pytest.approx(int(10_050 * 0.25) / 10_050)   # the later record
    assert {r.get("feedback_hit10") for r in data["rows"].values()} - {None} == {0.6}   # beside its NDCG@10
    rate_marks = [m for m in data["marks"] if m["key"] == "quarantine_rate"]
    assert [(m["night"], round(m["median"], 4)) for m in rate_marks] == [(PLANTED, 0.05)]
    assert rate_marks[0]["z"] > 50
    assert {m["night"] for m in data["marks"] if m["key"] in ("quarantined", "events_inserted")} == {PLANTED}
    # one failed warning check more than every other night's 1: marked too; nothing else (the noise of
    # rows, stage seconds, NDCG is inside 3 robust sigma; the total is never marked: training nights are long)
    assert {(m["night"], m["key"]) for m in data["marks"]} == {
        (PLANTED, k) for k in ("quarantine_rate", "quarantined", "events_inserted", "gate_warnings")}
    html = Path(out["trends"]).read_text()
    row = re.search(r'<tr class="trend-mark"><td>' + PLANTED + r"</td><td>quarantine rate</td>", html)
    assert row, "the planted night is not in the marks table"
    assert html.count("<svg") == 8   # rows, rate, feature rows, gates, model, feedback, coverage, stage times


def test_a_short_window_and_bad_arguments(tmp_path, capsys):
    write_lake(tmp_path)
    out = report.run(report_args(tmp_path, dt.date(2024, 1, 6), 3))    # nights 01-04..01-06 only
    data = json.loads((tmp_path / "reports" / "trends" / "trends.json").read_text())
    assert data["nights"] == ["2024-01-04", "2024-01-05", "2024-01-06"] and data["marks"] == []
    assert "trends need" not in Path(out["trends"]).read_text()
    assert report.main(["--lake", str(tmp_path / "lake")]) == 2
    assert capsys.readouterr().err.strip() == ("warmstart report: give --run-date D (the run report), --last N "
                                               "(the trend page) or both")
    assert report.main(["--lake", str(tmp_path / "lake"), "--last", "1"]) == 2
    assert "--last must be >= 2" in capsys.readouterr().err


def test_run_report_has_the_stage_chart_against_the_median_and_the_trend_section(tmp_path):
    write_lake(tmp_path)
    args = report_args(tmp_path, dt.date.fromisoformat(PLANTED), None)
    trend, chart = report.trend_context(args, args.run_date, None, 14)
    assert trend["nights"] == [d.isoformat() for d in NIGHTS[:7]]      # up to the run date
    assert [m["night"] for m in trend["marks"] if m["key"] == "quarantine_rate"] == [PLANTED]
    # the ticks beside tonight's bars: each stage's median over the six runs before, where it ran
    history = [nightly_summary(i) for i in range(6)]
    assert trends.stage_medians(history) == {"ingest": (41.0 + 42.2) / 2, "features": 31.0, "train": 300.0,
                                             "score": 20.5}
    assert "median of the last 6 runs" in chart and chart.startswith("<svg")
    path = report.write(args, args.run_date)
    html = Path(path).read_text()
    assert 'id="stage-durations"' in html and 'id="trends"' in html and html.count("<svg") == 8   # 7 panels + the stage chart


def _chromium(page: Path, tmp_path: Path, *extra: str) -> tuple[str, list[str]]:
    """(the DOM after load, the http(s) / ws URLs the page itself asked for) from headless Chromium with its
    network log on; every request would go to a closed local port anyway."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("chromium is not installed: run `make chromium`")
    netlog = tmp_path / f"{page.parent.name}-net.json"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           f"--user-data-dir={tmp_path / ('profile-' + page.parent.name)}", f"--log-net-log={netlog}",
           "--virtual-time-budget=3000", *extra, page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    # the page's own requests carry its file:// origin in their isolation key (the browser's background
    # chatter, update checks and the like, carries none and is not the page's doing)
    asked = [e["params"]["url"] for e in log["events"] if names.get(e["type"]) == "URL_REQUEST_START_JOB"
             and "file://" in e["params"].get("network_isolation_key", "")
             and not e["params"]["url"].startswith(("file:", "data:"))]
    return done.stdout, asked


@pytest.mark.slow
def test_trend_page_and_run_report_render_offline_in_headless_chromium(tmp_path):
    write_lake(tmp_path)
    report.run(report_args(tmp_path, dt.date.fromisoformat(PLANTED), 10))
    for page, plots in ((tmp_path / "reports" / "trends" / "index.html", 7),
                        (tmp_path / "reports" / PLANTED / "index.html", 8)):   # 7 panels up to the run date (+ stages)
        html = page.read_text()
        assert not re.search(r"""(src|href)=["'](https?:)?//""", html) and "<script" not in html
        dom, asked = _chromium(page, tmp_path, "--dump-dom")
        assert asked == []
        assert len(re.findall(r'<figure id="trend-[a-z0-9-]+" class="trend-plot"><svg', dom)) == 7, page
        assert dom.count("<svg") == plots, page
        assert re.search(r'<tr class="trend-mark"><td>' + PLANTED + r"</td><td>quarantine rate</td>", dom)
    shot = tmp_path / "trends.png"
    _chromium(tmp_path / "reports" / "trends" / "index.html", tmp_path, f"--screenshot={shot}", "--window-size=1400,1800")
    assert shot.stat().st_size > 20_000    # a rendered page with plots, not a blank one


def write_job_records(root: Path) -> Path:
    """Nights run as separate jobs (the Airflow DAG's tasks): no nightly record, one lineage record per
    job as runtime.record_lineage writes them, the ingest retried once on the planted night."""
    runs = root / "lake" / "_runs"
    runs.mkdir(parents=True)

    def record(job: str, i: int, summary: dict, seconds: float, status: str = "succeeded", at: str = "03:00") -> None:
        night = NIGHTS[i].isoformat()
        run_id = f"{job}-{night}-{at.replace(':', '')}-x"
        (runs / f"{run_id}.json").write_text(json.dumps({
            "run_id": run_id, "job": job, "run_date": night, "status": status, "seconds": seconds,
            "recorded_at": f"{night}T{at}:00+00:00", "summary": summary}))

    for i in range(len(NIGHTS)):
        s = nightly_summary(i)
        c = s["counts"]
        if NIGHTS[i].isoformat() == PLANTED:
            record("ingest", i, {"records_read": 1, "events_inserted": 0, "quarantined": 0}, 5.0, at="02:00")
        record("ingest", i, {k: c[k] for k in ("records_read", "events_inserted", "quarantined")}, INGEST_S[i])
        record("features", i, {k: c[k] for k in c if k.startswith("rows_")}, 31.0)
        record("validate", i, {"table": "bronze/events", "rows": c["records_read"], "critical_failed": 0,
                               "warning_failed": s["gates"]["bronze/events"]["warning_failed"]}, 12.0)
        record("train", i, {"version": "20240101-aaaa", "val_ndcg@10": 0.31, "reused": False}, 300.0)
        record("publish", i, {"coverage": s["published"]["coverage"], "published": True}, 8.0)
        record("backtest", i, {"wall_seconds": 99.0}, 99.0)          # another night's quality: not a stage here
    return root / "lake"


def test_nights_run_as_separate_jobs_are_put_together_from_their_job_records(tmp_path):
    write_job_records(tmp_path)
    summaries = trends.nightly_summaries(str(tmp_path / "lake"), str(tmp_path / "reports"))
    assert list(summaries) == [d.isoformat() for d in NIGHTS]
    planted = summaries[PLANTED]
    expected = nightly_summary(NIGHTS.index(dt.date.fromisoformat(PLANTED)))
    assert planted["counts"] == expected["counts"]                       # the later ingest run, not the retried one
    assert planted["gates"] == {"bronze/events": {"rows": expected["counts"]["records_read"], "critical_failed": 0,
                                                  "warning_failed": 2}}
    assert {s["stage"]: s["seconds"] for s in planted["stages"]} == {
        "ingest": INGEST_S[6], "features": 31.0, "gate bronze/events": 12.0, "train": 300.0, "publish": 8.0}
    assert planted["total_seconds"] == round(INGEST_S[6] + 351.0, 1) and planted["status"] == "succeeded"
    assert planted["model"]["metrics"] == {"val_ndcg@10": 0.31} and planted["delayed_feedback"] is None
    assert planted["model"]["trained_tonight"] is True     # the run report's model section reads it
    model = tmp_path / "models" / "warmstart-seqrec"                      # the model section reads the summary too
    runtime.write_json(str(model / "20240101-aaaa" / "metrics.json"), {"val_ndcg@10": 0.31})
    (model / "LATEST").write_text("20240101-aaaa")
    out = report.run(report_args(tmp_path, dt.date.fromisoformat(PLANTED), 10))
    data = json.loads((tmp_path / "reports" / "trends" / "trends.json").read_text())
    assert {m["night"] for m in data["marks"] if m["key"] == "quarantine_rate"} == {PLANTED}
    html = Path(out["path"]).read_text()                                  # the run report's stage table
    assert re.search(r"<td>gate bronze/events</td>\s*<td class=\"ok\">succeeded</td>\s*<td class=\"num\">12.0</td>", html)
    assert re.search(r"20240101-aaaa</code>\s*\(trained tonight\)", html)
