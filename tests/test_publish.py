"""The candidates gate (scoring/gate.py) and jobs/publish.py: each check catches its defect; a passing run
is published once (a second publish changes nothing); a failing run publishes nothing, exits 3 with a
report, and the reader keeps serving the previous run."""
from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import pytest

from features.tables import PUBLISHED, USER_CANDIDATES, USER_SEQUENCES
from jobs import lake as lakeio, publish, runtime
from scoring import gate, reader

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
CLEAN = {"passed": 0}


def _rows(spark, run_date, lists):
    """lists: user -> [(rank, item, score)]"""
    rows = [(user, rank, item, score, "model", "v1", dt.datetime(2024, 3, 3), run_date)
            for user, entries in lists.items() for rank, item, score in entries]
    return spark.createDataFrame(rows, USER_CANDIDATES.schema)


def _good(users, k=3):
    return {u: [(r, f"i{r}", float(10 - r)) for r in range(1, k + 1)] for u in users}


def test_gate_stats_count_each_defect(spark):
    lists = {
        "ok": [(1, "a", 3.0), (2, "b", 2.0), (3, "c", 2.0)],           # equal scores are fine
        "over": [(1, "a", 3.0), (2, "b", 2.0), (3, "c", 1.0), (4, "d", 0.0)],
        "short": [(1, "a", 3.0), (2, "b", 2.0)],
        "repeat": [(1, "a", 3.0), (2, "a", 2.0), (3, "c", 1.0)],
        "gap": [(1, "a", 3.0), (2, "b", 2.0), (4, "c", 1.0)],          # ranks 1, 2, 4
        "rises": [(1, "a", 1.0), (2, "b", 2.0), (3, "c", 0.0)],
        "nan": [(1, "a", 3.0), (2, "b", float("nan")), (3, "c", 1.0)],
        "stranger": [(1, "a", 3.0), (2, "b", 2.0), (3, "c", 1.0)],      # not an active user
    }
    active = spark.createDataFrame([(u,) for u in lists if u != "stranger"] + [("missing",)], "user_id string")
    stats = gate.gate_stats(_rows(spark, D1, lists), active, expected_per_user=3).first().asDict()
    assert stats == {"users": 8, "rows": 24, "active_users": 8, "covered_users": 7, "unknown_users": 1,
                     "users_over_k": 1, "users_short": 1, "users_repeated_item": 1, "users_bad_ranks": 1,
                     # Spark orders NaN above every number, so the NaN user also counts as a rise.
                     "users_score_rises": 2, "nan_scores": 1}


BASE = {"users": 1000, "rows": 100000, "active_users": 1000, "covered_users": 1000, "unknown_users": 0,
        "users_over_k": 0, "users_short": 0, "users_repeated_item": 0, "users_bad_ranks": 0,
        "users_score_rises": 0, "nan_scores": 0}


@pytest.mark.parametrize("change,failed", [
    ({}, []),
    ({"rows": 0, "users": 0, "covered_users": 0}, ["not_empty", "coverage"]),
    ({"users_over_k": 1}, ["rows_per_user"]),
    ({"users_short": 1}, []),                                    # 0.1% short lists are tolerated
    ({"users_short": 2}, ["rows_per_user"]),
    ({"users_repeated_item": 1}, ["no_repeated_items"]),
    ({"users_bad_ranks": 3}, ["ranks_1_to_n"]),
    ({"users_score_rises": 1}, ["scores_non_increasing"]),
    ({"nan_scores": 1}, ["scores_non_increasing"]),
    ({"covered_users": 989}, ["coverage"]),
    ({"covered_users": 990}, []),
    ({"unknown_users": 1}, ["coverage"]),
])
def test_gate_evaluate_fails_exactly_the_broken_check(change, failed):
    result = gate.evaluate({**BASE, **change}, expected_per_user=100, min_coverage=0.99, max_short_list_share=0.001)
    assert result.failed == failed
    assert result.passed == (not failed)


def _setup(spark, lake, run_date, lists, users, k=3, catalogue=50):
    seqs = spark.createDataFrame([(u, run_date, ["x"], ["view"], [dt.datetime(2024, 2, 1)], 1) for u in users],
                                 USER_SEQUENCES.schema)
    lakeio.replace_partition(spark, lake, USER_SEQUENCES, seqs, run_date)
    meta = {"run_date": run_date.isoformat(), "k": k, "catalogue_items": catalogue, "active_users": len(users),
            "model_name": "warmstart-seqrec", "model_version": "v1", "run_id": "score-test"}
    return lakeio.replace_partition(spark, lake, USER_CANDIDATES, _rows(spark, run_date, lists), run_date,
                                    user_metadata=json.dumps(meta))


def _args(lake, config, tmp_path, run_date):
    common = runtime.job_args("publish", lake, config, run_date, **{"paths.reports": str(tmp_path / "reports")})
    return runtime.dataclass_from(publish.PublishArgs, argparse.Namespace(run_date=run_date), common)


def test_publish_once_then_failed_gate_publishes_nothing_and_reader_keeps_serving(spark, lake, config, tmp_path):
    users = ["u1", "u2", "u3"]
    v1 = _setup(spark, lake, D1, _good(users), users)
    summary = publish.run(spark, _args(lake, config, tmp_path, D1))
    assert summary["published"] and summary["gate_passed"] and summary["table_version"] == v1
    assert (summary["users"], summary["rows"], summary["coverage"]) == (3, 9, 1.0)
    report = json.loads((tmp_path / "reports" / "2024-03-01" / "candidates" / "gate.json").read_text())
    assert report["gate"]["passed"] and report["distinct_items"] == 3
    html = (tmp_path / "reports" / "2024-03-01" / "candidates" / "gate.html").read_text()
    assert "passed" in html and "data:image/png;base64," in html and "://" not in html

    again = publish.run(spark, _args(lake, config, tmp_path, D1))           # idempotent: nothing appended
    assert again["already_published"] and not again["published"]
    published = lakeio.read(spark, lake, PUBLISHED).collect()
    assert [(r["run_date"], r["table_version"], r["users"], r["rows"]) for r in published] == [(D1, v1, 3, 9)]

    # D2: u2's list repeats an item and u3 has no candidates (coverage 2/3).
    bad = {"u1": _good(["u1"])["u1"], "u2": [(1, "i1", 3.0), (2, "i1", 2.0), (3, "i3", 1.0)]}
    _setup(spark, lake, D2, bad, users)
    with pytest.raises(runtime.GateFailed, match=r"no_repeated_items, coverage.*gate.html"):
        publish.run(spark, _args(lake, config, tmp_path, D2))
    report = json.loads((tmp_path / "reports" / "2024-03-02" / "candidates" / "gate.json").read_text())
    assert report["gate"]["failed"] == ["no_repeated_items", "coverage"] and not report["published"]
    assert lakeio.read(spark, lake, PUBLISHED).count() == 1
    served = reader.load_latest(lake)
    assert (served.run_date, served.table_version) == (D1, v1)
    assert served.items("u2") == ["i1", "i2", "i3"]


def test_cli_gate_failure_exits_3_and_unscored_date_exits_2(spark, lake, config, tmp_path, capsys):
    users = ["u1", "u2"]
    _setup(spark, lake, D1, {"u1": [(1, "a", 1.0), (2, "b", 2.0), (3, "c", 0.0)], "u2": _good(["u2"])["u2"]}, users)
    reports = tmp_path / "r"
    code = publish.main(["--lake", lake, "--run-date", "2024-03-01", f"paths.reports={reports}"])
    err = capsys.readouterr().err
    assert code == 3 and "scores_non_increasing" in err and str(reports) in err
    assert not lakeio.exists(spark, lake, PUBLISHED)
    assert Path(reports / "2024-03-01" / "candidates" / "gate.html").is_file()
    assert publish.main(["--lake", lake, "--run-date", "2024-03-05"]) == 2
    assert "no `warmstart score` run for 2024-03-05" in capsys.readouterr().err
