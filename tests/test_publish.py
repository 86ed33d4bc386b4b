"""The candidates' gate (the candidates/user_candidates suite in features/suites.py, run by GX) and
jobs/publish.py: each check catches its defect; a passing run is published once (a second publish
changes nothing); a failing run publishes nothing, exits 3 with a report, and the reader keeps serving
the previous run."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from pathlib import Path

import pytest

from features import quality
from features.tables import PUBLISHED, USER_CANDIDATES, USER_SEQUENCES
from jobs import lake as lakeio, publish, runtime, validate
from jobs.config import QualityConfig
from scoring import reader

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


def _rows(spark, run_date, lists):
    """lists: user -> [(rank, item, score)]"""
    rows = [(user, rank, item, score, "model", "v1", dt.datetime(2024, 3, 3), run_date)
            for user, entries in lists.items() for rank, item, score in entries]
    return spark.createDataFrame(rows, USER_CANDIDATES.schema)


def _good(users, k=3):
    return {u: [(r, f"i{r}", float(10 - r)) for r in range(1, k + 1)] for u in users}


def _gate(spark, lists, active, k):
    """The suite on one run date's lists, for lists of ``k`` items and ``active`` users."""
    return quality.validate_table(
        spark, _rows(spark, D1, lists), USER_CANDIDATES.name, D1, config=QualityConfig(max_rank=k),
        references={"active_users": spark.createDataFrame([(u,) for u in active], "user_id string")})


def _failed(result) -> dict[str, tuple]:
    return {f["check"]: (f["observed"], f["sample_values"]) for f in result.failures}


def test_each_defect_fails_its_check_with_the_offending_users(spark):
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
    result = _gate(spark, lists, [u for u in lists if u != "stranger"] + ["missing"], k=3)
    failed = _failed(result)
    assert set(failed) == {"rank_in_range", "score_is_number", "user_id_item_id_unique", "ranks_1_to_n",
                           "scores_non_increasing", "short_lists", "coverage", "user_id_active"}
    assert failed["rank_in_range"] == (2, [{"rank": 4, "rows": 2}])                    # over's 4th, gap's 3rd
    assert failed["user_id_item_id_unique"] == (1, [{"user_id": "repeat", "item_id": "a", "count": 2}])
    assert failed["ranks_1_to_n"] == (1, [{"user_id": "gap", "rows": 3}])
    # Spark orders NaN above every number, so the NaN user's scores rise too.
    assert failed["scores_non_increasing"] == (2, [{"user_id": "nan", "rows": 3}, {"user_id": "rises", "rows": 3}])
    assert failed["score_is_number"][0] == 1 and math.isnan(failed["score_is_number"][1][0]["score"])
    assert failed["short_lists"] == (1 / 8, [{"user_id": "short", "rows": 2}])
    assert failed["coverage"] == (7 / 8, [{"user_id": "missing"}])
    assert failed["user_id_active"] == (1, [{"user_id": "stranger", "rows": 3}])
    assert {r.check for r in result.results if r.status == quality.PASSED} >= {"not_empty", "item_id_not_null",
                                                                              "strategy_allowed", "user_id_rank_unique"}


USERS = [f"u{i:04d}" for i in range(1000)]


@pytest.mark.parametrize("short, covered, failed", [
    (1, 1000, set()),                              # 1 short list in 1,000 users: 0.1% is tolerated
    (0, 990, set()),                               # 99% of the active users have lists
    (2, 989, {"short_lists", "coverage"}),         # 2 of 989 short; 98.9% covered
])
def test_short_list_and_coverage_thresholds(spark, short, covered, failed):
    lists = _good(USERS[:covered], k=2)
    for user in USERS[:short]:
        lists[user] = lists[user][:1]
    result = _gate(spark, lists, USERS, k=2)
    assert set(_failed(result)) == failed and result.success_critical == (not failed)


def test_an_empty_partition_fails_the_gate(spark):
    failed = _failed(_gate(spark, {}, ["u1", "u2"], k=2))
    assert failed["not_empty"] == (0, []) and failed["coverage"] == (0.0, [{"user_id": "u1"}, {"user_id": "u2"}])


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
    with pytest.raises(runtime.GateFailed, match=r"user_id_item_id_unique, coverage.*gate.html"):
        publish.run(spark, _args(lake, config, tmp_path, D2))
    report = json.loads((tmp_path / "reports" / "2024-03-02" / "candidates" / "gate.json").read_text())
    assert report["gate"]["failed"] == ["user_id_item_id_unique", "coverage"] and not report["published"]
    assert (report["stats"]["active_users"], report["stats"]["covered_users"]) == (3, 2)
    html = (tmp_path / "reports" / "2024-03-02" / "candidates" / "gate.html").read_text()
    assert "user_id=u3" in html            # the active user without candidates, sampled onto the page
    assert lakeio.read(spark, lake, PUBLISHED).count() == 1
    served = reader.load_latest(lake)
    assert (served.run_date, served.table_version) == (D1, v1)
    assert served.items("u2") == ["i1", "i2", "i3"]


def test_cli_gate_failure_exits_3_and_unscored_date_exits_2(spark, lake, tmp_path, capsys):
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

    # `warmstart validate` on the table runs the same suite with the same inputs, to the same verdict
    assert validate.main(["--lake", lake, "--table", USER_CANDIDATES.name, "--run-date", "2024-03-01",
                          f"paths.reports={reports}"]) == 3
    report = json.loads((reports / "2024-03-01" / "quality" / "candidates_user_candidates.json").read_text())
    assert [(f["check"], f["severity"]) for f in report["failures"]] == [("scores_non_increasing", "critical")]
    assert report["statistics"]["coverage__covered"] == report["statistics"]["coverage__reference"] == 2
