"""`warmstart forget` on a small lake built by the real jobs (generate csv with bad records -> ingest ->
features for D - 1 -> score with a registered (untrained) model -> publish): after `forget --vacuum-now`
no file under the lake names an erased user (every Parquet file read with pyarrow, data files and
checkpoints alike; every other file, Delta's JSON commits with their statistics and lineage, as text),
time travel to a version before the erasure returns none of their rows, lineage holds their salted hashes,
the published run is served without them, models trained after their first event are listed as affected,
and the next night's features run without them, and publishing the night again works without scoring it
again and gates the erasure's version, without them. Also: usage errors exit 2 with one line, a second
erasure of the same users deletes nothing, and (last, on tables given a 2-second retention, which counts
as configured, not floored at 7 days) an erasure without --vacuum-now leaves the files until the first
publish past their retention vacuums them."""
from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import args_for
from pyspark.sql import functions as F

from features.tables import EVENTS, PUBLISHED, QUARANTINE, TABLES, USER_CANDIDATES, USER_FEATURES, USER_SEQUENCES
from jobs import build_features, cli, forget, ingest, lake as lakeio, publish, runtime, score

pytestmark = pytest.mark.slow
START, D = dt.date(2024, 2, 1), dt.date(2024, 2, 6)
NIGHT = D - dt.timedelta(days=1)       # the night built, scored and published before the erasure


def _token(user: str) -> re.Pattern:
    return re.compile(rf"(?<![0-9A-Za-z]){re.escape(user)}(?![0-9A-Za-z])")


def files_naming(root: Path, users: list[str]) -> dict[str, list[str]]:
    """user -> the files under ``root`` that hold the id as a token: Parquet files decoded with pyarrow
    (every column, nested ones included), every other file as text."""
    patterns = {u: _token(u) for u in users}
    found: dict[str, list[str]] = {u: [] for u in users}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            text = json.dumps(pq.read_table(path).to_pylist(), default=str)
        else:
            text = path.read_bytes().decode("utf-8", errors="replace")
        for user, pattern in patterns.items():
            if pattern.search(text):
                found[user].append(str(path.relative_to(root)))
    return found


@pytest.fixture(scope="module")
def small_lake(spark, config, tmp_path_factory, interpreted_sql):
    import torch

    from features.synthetic import generate
    from training.model import SeqRec, SeqRecConfig
    from training.registry import promote, save_version

    root = tmp_path_factory.mktemp("forget")
    drop, lake = root / "drop", str(root / "lake")
    generate(drop, users=16, items=24, days=6, start_date=START, seed=5, bad_rate=0.08, fmt="csv")
    overrides = {"paths.models": str(root / "models"), "paths.reports": str(root / "reports"), "score.k": 5}
    ingest.run(spark, args_for(ingest.IngestArgs, lake, config, run_date=D, events=(str(drop / "events"),),
                               items=(str(drop / "items"),), format="csv", overrides=overrides))
    build_features.run(spark, args_for(build_features.BuildFeaturesArgs, lake, config, run_date=NIGHT,
                                       overrides=overrides))
    items = sorted(r[0] for r in lakeio.read(spark, lake, TABLES["bronze/items"]).select("item_id").collect())
    torch.manual_seed(0)
    model = SeqRec(SeqRecConfig(num_items=len(items), dim=8, num_layers=1, num_heads=2, max_seq_len=8, dropout=0.0,
                                use_text=False)).eval()
    name = config.train.name
    for version in ("20240101-before", f"{NIGHT:%Y%m%d}-after"):   # trained before / after the users' events
        save_version(str(root / "models"), name, version, model, items, {}, {"val_ndcg@10": 0.1}, {})
    promote(str(root / "models"), name, f"{NIGHT:%Y%m%d}-after", margin=1.0, force=True)
    score.run(spark, args_for(score.ScoreArgs, lake, config, run_date=NIGHT, overrides=overrides))
    publish.run(spark, args_for(publish.PublishArgs, lake, config, run_date=NIGHT, overrides=overrides))
    return {"root": root, "lake": lake, "overrides": overrides, "name": name}


def _pick_users(spark, lake: str) -> list[str]:
    """Two users with events by the night built (so in its features): one whose id also sits in a
    quarantined raw record, one with candidates."""
    events = {r[0] for r in lakeio.read(spark, lake, EVENTS).where(F.col("event_date") <= F.lit(NIGHT))
              .select("user_id").distinct().collect()}
    records = " ".join(r[0] or "" for r in lakeio.read(spark, lake, QUARANTINE).select("record").collect())
    in_quarantine = sorted(u for u in events if _token(u).search(records))
    listed = sorted(r[0] for r in lakeio.read(spark, lake, USER_CANDIDATES).select("user_id").distinct().collect())
    first = in_quarantine[0]
    return [first, next(u for u in listed if u != first)]


def _versions(spark, lake: str) -> dict[str, int]:
    return {t.name: lakeio.version(spark, lake, t) for t in forget.personal_tables() if lakeio.exists(spark, lake, t)}


@pytest.fixture(scope="module")
def erased(spark, small_lake):
    lake = small_lake["lake"]
    users = _pick_users(spark, lake)
    before_files = files_naming(Path(lake), users)
    before_versions = _versions(spark, lake)
    users_file = small_lake["root"] / "erase.txt"
    users_file.write_text(f"# ticket 123\n{users[0]}\n\n  {users[1]}  \n{users[0]}\n")
    argv = ["--lake", lake, "--users-file", str(users_file), "--vacuum-now",
            "--summary-json", str(small_lake["root"] / "forget.json"),
            *[f"{k}={v}" for k, v in small_lake["overrides"].items()]]
    rc = cli.main(["forget", *argv])
    summary = json.loads((small_lake["root"] / "forget.json").read_text())
    return {"users": users, "before_files": before_files, "before_versions": before_versions, "rc": rc,
            "summary": summary, "argv": argv}


def test_the_lake_named_the_users_before(erased):
    """The check below can fail: before the erasure the users are in bronze, quarantine, features and lists."""
    first, second = erased["users"]
    for user in (first, second):
        tables = {f.split("/part-")[0].rsplit("/", 1)[0] for f in erased["before_files"][user]}
        assert {"bronze/events", "features/user_sequences", "features/user_features"} <= {
            "/".join(t.split("/")[:2]) for t in tables}, erased["before_files"][user]
    assert any(f.startswith("bronze/events_quarantine/") for f in erased["before_files"][first])
    assert any(f.startswith("candidates/user_candidates/") for f in erased["before_files"][second])


def test_no_file_under_the_lake_names_an_erased_user(erased, small_lake):
    assert erased["rc"] == 0
    found = files_naming(Path(small_lake["lake"]), erased["users"])
    assert found == {u: [] for u in erased["users"]}


def test_rows_are_gone_and_time_travel_returns_none(spark, erased, small_lake):
    lake, users = small_lake["lake"], erased["users"]
    summary = erased["summary"]
    assert summary["rows_deleted"]["bronze/events"] > 0 and summary["rows_deleted"]["bronze/events_quarantine"] > 0
    assert set(summary["rows_deleted"]) == set(erased["before_versions"])   # every personal table there is
    for name, version in erased["before_versions"].items():
        table = TABLES[name]
        current = lakeio.read(spark, lake, table)
        assert current.where(_names(table, users)).count() == 0, name
        try:   # reads the files (a plain count() would answer from the log's statistics)
            old = lakeio.read(spark, lake, table, version).where(_names(table, users)).collect()
        except Exception as exc:  # noqa: BLE001 - the files of the old version are vacuumed
            text = str(exc).lower()
            assert any(s in text for s in ("filenotfound", "file_not_exist", "not exist")), str(exc)[:500]
        else:
            assert old == [], name


def _names(table, users):
    cond = F.lit(False)
    for column in table.personal:
        if column == "user_id":
            cond = cond | F.col("user_id").isin(users)
        else:
            for u in users:
                cond = cond | F.col(column).rlike(rf"(^|[^0-9A-Za-z]){re.escape(u)}([^0-9A-Za-z]|$)")
    return cond


def test_lineage_holds_salted_hashes_and_the_affected_models(erased, small_lake):
    lake = small_lake["lake"]
    record = next(r for r in runtime.read_lineage(lake) if r["job"] == "forget")
    salt = forget.lake_salt(lake)
    assert record["summary"]["user_hashes"] == sorted(forget.user_hash(salt, u) for u in erased["users"])
    assert record["summary"]["users"] == 2                    # the file's duplicate, comment and blank line skipped
    assert forget.user_hash(b"another lake", erased["users"][0]) not in record["summary"]["user_hashes"]
    assert record["summary"]["affected_models"] == [f"{small_lake['name']}/{NIGHT:%Y%m%d}-after"]
    assert record["outputs"]["bronze/events"] > record["inputs"]["bronze/events"]


def test_the_published_run_is_served_without_them(erased, small_lake):
    from scoring import reader

    summary = erased["summary"]
    assert summary["published_runs_moved"] == [NIGHT.isoformat()] and summary["published_runs_lost"] == []
    sets = reader.load_latest(small_lake["lake"])
    assert sets.run_date == NIGHT
    served = set(sets.user_ids.tolist())
    assert served and not served & set(erased["users"])


def _candidates_version_after(lake: str, run_id: str | None = None) -> int:
    """The user_candidates version a forget run's delete wrote (its lineage record; the first forget's if no id)."""
    record = next(r for r in runtime.read_lineage(lake) if r["job"] == "forget" and run_id in (None, r["run_id"]))
    return record["outputs"][USER_CANDIDATES.name]


def test_publishing_the_night_again_gates_the_erasures_version_without_them(spark, config, erased, small_lake):
    """The night's score commit is older than the erasure, and --vacuum-now removed its files: publish must
    not read it (it failed so) but the version of the erasure's delete, and needs no second score."""
    from scoring import reader

    lake, users = small_lake["lake"], erased["users"]
    erased_version = _candidates_version_after(lake)
    published_before = lakeio.read(spark, lake, PUBLISHED).count()
    summary = publish.run(spark, args_for(publish.PublishArgs, lake, config, run_date=NIGHT,
                                          overrides=small_lake["overrides"]))
    assert summary["gate_passed"] and summary["score_version"] < erased_version
    assert summary["table_version"] == erased_version
    assert summary["already_published"] and not summary["published"]   # forget published that version already
    assert lakeio.read(spark, lake, PUBLISHED).count() == published_before
    night = lakeio.read(spark, lake, USER_CANDIDATES, erased_version).where(F.col("run_date") == F.lit(NIGHT))
    gated_users = {r[0] for r in night.select("user_id").distinct().collect()}
    assert summary["users"] == len(gated_users) > 0 and not gated_users & set(users)
    assert any(f.startswith("candidates/user_candidates/") for f in erased["before_files"][users[1]])  # it had a list
    report = json.loads((Path(small_lake["overrides"]["paths.reports"]) / NIGHT.isoformat() / "candidates"
                         / "gate.json").read_text())
    assert report["table_version"] == erased_version and report["stats"]["users"] == summary["users"]
    served = reader.load_latest(lake)
    assert served.table_version == erased_version and not set(served.user_ids.tolist()) & set(users)
    assert summary["erasures_vacuumed"] == {"vacuumed": [], "tables": [], "pending": {}, "failed": []}


def test_the_next_night_runs_without_them_and_a_second_erasure_deletes_nothing(spark, config, erased, small_lake):
    lake, users = small_lake["lake"], erased["users"]
    overrides = small_lake["overrides"]
    build_features.run(spark, args_for(build_features.BuildFeaturesArgs, lake, config, run_date=D, overrides=overrides))
    for table in (USER_SEQUENCES, USER_FEATURES):
        rows = lakeio.read(spark, lake, table).where(F.col("as_of_date") == F.lit(D))
        assert rows.count() > 0 and rows.where(F.col("user_id").isin(users)).count() == 0, table.name
    again = forget.run(spark, args_for(forget.ForgetArgs, lake, config, users=tuple(users), overrides=overrides))
    assert set(again["rows_deleted"].values()) == {0}
    assert again["user_hashes"] == erased["summary"]["user_hashes"]      # the lake's salt is kept


@pytest.mark.parametrize("argv, message", [
    ([], "one of the arguments --users --users-file is required"),
    (["--users-file", "/nonexistent/erase.txt"], "--users-file /nonexistent/erase.txt: no such file"),
    (["--users", "  "], "no user ids to erase"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    rc = cli.main(["forget", "--lake", str(tmp_path / "lake"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("value, expected", [
    ("interval 2 seconds", dt.timedelta(seconds=2)),
    ("interval 1 second", dt.timedelta(seconds=1)),
    ("INTERVAL 3 Hours", dt.timedelta(hours=3)),
    ("interval 1 week 12 hours", dt.timedelta(days=7, hours=12)),
    ("30 minutes", dt.timedelta(minutes=30)),                   # Delta takes it without "interval"
    ("interval 1 month", None),                                 # Delta refuses months for a retention
    ("interval 2 fortnights", None),
])
def test_parse_retention(value, expected):
    assert forget.parse_retention(value) == expected


def test_an_erasure_without_vacuum_now_is_vacuumed_by_the_first_publish_past_its_retention(
        spark, config, erased, small_lake):
    """Last in the file: it shortens the personal tables' retention to 2 seconds and erases a third user."""
    lake, overrides = small_lake["lake"], small_lake["overrides"]
    listed = sorted(r[0] for r in lakeio.read(spark, lake, USER_CANDIDATES).select("user_id").distinct().collect())
    user = next(u for u in listed if u not in erased["users"])
    for table in forget.personal_tables():
        if lakeio.exists(spark, lake, table):
            spark.sql(f"ALTER TABLE delta.`{lakeio.path_of(lake, table)}` "
                      f"SET TBLPROPERTIES ('{forget.RETENTION_KEY}' = 'interval 2 seconds')")
    args = args_for(forget.ForgetArgs, lake, config, users=(user,), overrides=overrides)
    summary = forget.run(spark, args)
    removable_after = dt.datetime.fromisoformat(summary["files_removable_after"])

    pending = Path(lake) / forget.PENDING_DIR
    assert sorted(p.name for p in pending.iterdir()) == [f"{args.run_id}.json"]   # erasures that deleted nothing: none
    text = (pending / f"{args.run_id}.json").read_text()
    record = json.loads(text)
    assert summary["pending_erasure"] == str(pending / f"{args.run_id}.json")
    assert record["removable_after"] == summary["files_removable_after"] and "bronze/events" in record["tables"]
    assert removable_after - dt.datetime.fromisoformat(record["erased_at"]) == dt.timedelta(seconds=2)  # not 7 days
    assert user not in text and summary["user_hashes"][0] not in text
    early = forget.vacuum_due(spark, lake, now=removable_after - dt.timedelta(seconds=1))
    assert early == {"vacuumed": [], "tables": [], "pending": {args.run_id: record["removable_after"]}, "failed": []}
    assert any(f.endswith(".parquet") and "_delta_log" not in f for f in files_naming(Path(lake), [user])[user])

    time.sleep(max(0.0, (removable_after - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 0.5)
    assert spark.conf.get(forget.RETENTION_CHECK, "true") != "false"   # Delta's check is on for this VACUUM
    first = publish.run(spark, args_for(publish.PublishArgs, lake, config, run_date=NIGHT, overrides=overrides))
    erased_version = _candidates_version_after(lake, args.run_id)       # no second score: the erasure's version
    assert first["gate_passed"] and first["table_version"] == erased_version and first["already_published"]
    assert first["erasures_vacuumed"] == {"vacuumed": [args.run_id], "tables": sorted(record["tables"]),
                                          "pending": {}, "failed": []}
    assert files_naming(Path(lake), [user]) == {user: []}
    done = json.loads((Path(lake) / forget.DONE_DIR / f"{args.run_id}.json").read_text())
    assert list(pending.iterdir()) == [] and dt.datetime.fromisoformat(done.pop("vacuumed_at")) >= removable_after
    assert done == record
    # Delta refuses time travel to a version older than the table's retention, save the latest
    spark.sql(f"ALTER TABLE delta.`{lakeio.path_of(lake, USER_CANDIDATES)}` "
              f"UNSET TBLPROPERTIES ('{forget.RETENTION_KEY}')")
    again = publish.run(spark, args_for(publish.PublishArgs, lake, config, run_date=NIGHT, overrides=overrides))
    assert again["already_published"] and again["table_version"] == erased_version
    assert again["erasures_vacuumed"] == {"vacuumed": [], "tables": [], "pending": {}, "failed": []}
