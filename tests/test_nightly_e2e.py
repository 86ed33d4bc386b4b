"""`warmstart nightly` end to end on a small generated drop, as a user runs it: killed with SIGKILL in the
middle of the features stage, then rerun for the same date to completion. Checks that nothing is
duplicated (row counts and keys of every table), the final summary, `warmstart status`, and the run
report rendered by headless Chromium with the network off."""
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
    """Run 1 killed (SIGKILL to its process group, JVM included) once features started; run 2 completes."""
    from features.synthetic import generate

    root = tmp_path_factory.mktemp("nightly")
    drop = root / "drop"
    generated = generate(drop, users=60, items=200, days=10, start_date="2024-01-22", seed=11, bad_rate=0.01)
    lake = root / "lake"
    cmd = [sys.executable, "-m", "jobs.cli", "nightly", "--lake", str(lake), "--run-date", D,
           "--events", str(drop / "events"), "--items", str(drop / "items"), "--summary-json", str(root / "summary.json"),
           *SMALL]

    first_out = []
    with open(root / "run1.err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=_env(), cwd=REPO,
                                start_new_session=True)
        for line in proc.stdout:
            first_out.append(line)
            if re.match(r"\[\s*\d+/\d+\] features\s+running", line):
                time.sleep(4)   # inside the stage's Spark work
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    killed_at = first_out[-1]

    second = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=1500)
    (root / "run2.out").write_text(second.stdout)
    (root / "run2.err").write_text(second.stderr)
    return {"root": root, "lake": lake, "drop": drop, "generated": generated, "first_rc": proc.returncode,
            "first_out": "".join(first_out), "killed_at": killed_at, "second": second}


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
    assert table("bronze/events_quarantine").count() == quarantined
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
    # the killed run never got to training or publishing: one model, one published set
    models = [p.name for p in (flow["root"] / "models" / "warmstart-seqrec").iterdir() if p.name[:1].isdigit()]
    assert len(models) == 1 and summary["model_version"] == models[0]
    published = table("candidates/published").collect()
    assert [(str(p.run_date), p.model_version, p.users, p.rows) for p in published] == \
        [(D, models[0], users, users * 20)]


def test_final_summary_lists_counts_gates_model_and_reports(flow):
    out = flow["second"].stdout
    summary = json.loads((flow["root"] / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["gates_passed"] == "5/5"
    assert summary["model_trained_tonight"] is True
    assert 0 <= summary["val_ndcg@10"] <= 1 and 0 <= summary["model_ndcg@10"] <= 1
    assert 0 <= summary["popularity_ndcg@10"] <= 1   # the evaluate stage's baselines are in the summary
    assert summary["published_rows"] == summary["published_users"] * 20 > 0
    for stage in ("ingest", "gate bronze/events", "features", "train", "evaluate", "score", "publish"):
        assert re.search(rf"\[\s*\d+/\d+\] {re.escape(stage)}\s+succeeded\s+[\d.]+s", out), stage
    assert "== warmstart nightly 2024-01-31: succeeded" in out
    reports = flow["root"] / "reports" / D
    assert summary["run_report"] == str(reports / "index.html")
    for path in [*(reports / "quality").glob("*.html"), *(reports / "model").glob("*.html")]:
        assert str(path) in out
    assert len(list((reports / "quality").glob("*.html"))) == 5


def test_status_shows_the_run_its_lineage_and_the_published_set(flow, capsys):
    from jobs import status

    assert status.main(["--lake", str(flow["lake"])]) == 0
    out = capsys.readouterr().out
    data = status.collect(str(flow["lake"]))
    assert data["focus_run_date"] == D
    assert [n["status"] for n in data["nightly"]] == ["succeeded"]   # the killed run left no record
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


def test_run_report_renders_offline_in_chromium(flow, tmp_path):
    index = flow["root"] / "reports" / D / "index.html"
    html = index.read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html)   # nothing fetched from the network
    cmd = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
           "--dump-dom", index.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    for element in ('id="stages-table"', 'id="quality-table"', 'id="model-metrics"', 'id="candidate-stats"',
                    'id="strategy-mix"', 'id="top-items"', 'id="published-table"'):
        assert element in dom, element
    assert len(re.findall(r'<img id="plot-[a-z-]+" alt="[^"]+" src="data:image/png;base64,', dom)) == 3
    assert dom.count('href="quality/') == 5 and 'class="model-report"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                    f"--screenshot={shot}", "--window-size=1200,2400", index.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000   # a rendered page with plots, not a blank one
