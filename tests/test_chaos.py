"""The chaos matrix on one small lake: real faults against the real jobs and their real CLI entry.

The lake (module fixture, built in-process with the shared session): test_score's explicit rows
(events, items, item_daily, user_sequences and user_features) for two nights D1 and D2, an untrained
SeqRec registered as LATEST, both nights scored (the undisturbed runs: each partition's content hash is
kept) and D1 published. The tests then run in file order, each leaving the lake as the next expects:

- a damaged commit JSON, a damaged checkpoint (each in a copy of the lake): one stderr line naming the
  table and the file, exit 2;
- score killed after its commit, before its lineage record; rerun: the partition equals the undisturbed run's;
- publish killed after the gate, before the published row: the reader keeps serving D1;
- publish rerun while the reader loads in a loop (a thread): every load is D1's or D2's lists, never a mix;
- D2 rescored (a thread) while it is published again: what is published is a whole, undisturbed D2;
- the registry killed mid-save and between the version folder and LATEST (a Python subprocess doing
  what `warmstart train` does once trained: training itself is not what is under test);
- a full disk (a tmpfs mount) under score: "no space left", the previous version still reads the same.

The kills run `python -m jobs.cli ...` in a process group of its own and die at `jobs/chaos.py`'s named
points (WARMSTART_CHAOS_KILL_AT: SIGKILL to the group, the JVM included), so each lands where it is
meant to. The other faults run the CLI's `main` in-process on the shared session (a JVM start saved
each): the same argument parsing, lock and error mapping as `warmstart`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from pyspark.sql import functions as F

from features import daily
from features.tables import EVENTS, ITEM_DAILY, ITEMS, PUBLISHED, USER_CANDIDATES, USER_FEATURES, USER_SEQUENCES
from jobs import chaos, cli, lake as lakeio, publish, runtime, score
from scoring import reader
from conftest import TINY_JOB_OVERRIDES, args_for
from test_score import RUN as D1, VOCAB, _events, _items, _sequences, _user_features

REPO = Path(__file__).resolve().parent.parent
D2 = D1 + dt.timedelta(days=1)
K = 4
SMALL = ["spark.master=local[2]", "spark.driver_memory=1g", "spark.shuffle_partitions=2", *TINY_JOB_OVERRIDES]
pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "GX_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1",
           "WARMSTART_JARS_DIR": os.environ.get("WARMSTART_JARS_DIR", str(REPO / ".jars"))}
    env.pop(chaos.ENV, None)
    return {**env, **extra}


def _cli(lake: Path, *argv: str, kill_at: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m jobs.cli ...` in a new process group (the kill point SIGKILLs that group, not pytest)."""
    extra = {chaos.ENV: kill_at} if kill_at else {}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *argv, "--lake", str(lake), *SMALL], cwd=REPO,
                          env=_env(**extra), capture_output=True, text=True, timeout=timeout, start_new_session=True)


def _rows(spark, lake: Path, run_date: dt.date, version: int | None = None) -> list[tuple]:
    frame = lakeio.read(spark, str(lake), USER_CANDIDATES, version).where(F.col("run_date") == F.lit(run_date))
    return sorted(tuple(r) for r in frame.collect())


def _content_hash(rows: list[tuple]) -> str:
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _lists(rows: list[tuple]) -> dict[str, list[str]]:
    """user -> ranked items, from user_candidates rows (user_id, rank, item_id, ...)."""
    out: dict[str, list[str]] = {}
    for user, _, item, *_ in sorted(rows, key=lambda r: (r[0], r[1])):
        out.setdefault(user, []).append(item)
    return out


def _leftovers(root: Path) -> list[str]:
    """Temp and partial files anywhere under ``root``: write-then-rename temps (``*.tmp``, ``.LATEST.*``,
    a model version's ``.<version>.*`` folder), Spark's ``_temporary`` and Delta's uncommitted
    ``_delta_log/*.tmp``."""
    found = []
    for path in root.rglob("*"):
        name = path.name
        if (name.endswith(".tmp") or name == "_temporary" or name.startswith(".LATEST.")
                or (path.parent.parent.name == "models" and name.startswith("."))):
            found.append(str(path.relative_to(root)))
    return sorted(found)


def _tail(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def night(spark, config, interpreted_sql, tmp_path_factory):
    """The lake, both nights scored and D1 published, in-process; returns paths and each night's rows."""
    from training.model import SeqRec, SeqRecConfig
    from training.registry import promote, save_version

    root = tmp_path_factory.mktemp("chaos")
    lake = root / "lake"
    lakeio.append(spark, str(lake), EVENTS, _events(spark))
    lakeio.append(spark, str(lake), ITEMS, _items(spark))
    lakeio.append(spark, str(lake), ITEM_DAILY, daily.item_daily(_events(spark), 12).select(*ITEM_DAILY.columns))
    for day in (D1, D2):
        as_of = F.lit(day).cast("date")
        lakeio.replace_partition(spark, str(lake), USER_SEQUENCES, _sequences(spark).withColumn("as_of_date", as_of), day)
        lakeio.replace_partition(spark, str(lake), USER_FEATURES,
                                 _user_features(spark).withColumn("as_of_date", as_of), day)
    torch.manual_seed(0)
    model = SeqRec(SeqRecConfig(num_items=len(VOCAB), dim=16, num_layers=1, num_heads=2, max_seq_len=8,
                                dropout=0.0, use_text=False, recent_days=7)).eval()
    models = root / "models"
    save_version(str(models), config.train.name, "v1", model, VOCAB, {}, {"val_ndcg@10": 0.1}, {})
    promote(str(models), config.train.name, "v1", margin=0.0)
    rows = {}
    for day in (D1, D2):
        score.run(spark, args_for(score.ScoreArgs, str(lake), config, run_date=day, k=K))
        rows[day] = _rows(spark, lake, day)
    publish.run(spark, args_for(publish.PublishArgs, str(lake), config, run_date=D1))
    return {"root": root, "lake": lake, "models": models, "name": config.train.name, "rows": rows}


def _publish_line(lake: Path, capsys) -> tuple[int, str, str]:
    """`warmstart publish --run-date D2` on ``lake`` (in-process: the CLI's own entry and error mapping):
    its exit code, stderr and stderr's last line."""
    code = cli.main(["publish", "--lake", str(lake), "--run-date", D2.isoformat()])
    err = capsys.readouterr().err
    return code, err, err.strip().splitlines()[-1]


def _not_a_java_stack(err: str) -> bool:
    return not [s for s in err.splitlines() if s.lstrip().startswith("at ") or "Py4J" in s]


def test_a_damaged_commit_json_ends_with_one_line_naming_the_table_and_the_file(night, tmp_path, capsys):
    lake = tmp_path / "lake"
    shutil.copytree(night["lake"], lake)
    log = lake / USER_CANDIDATES.name / "_delta_log"
    last = max(log.glob("*.json"))
    last.write_bytes(last.read_bytes()[:150])                  # cut mid-record, as a torn write leaves it
    for crc in log.glob(f".{last.name}.crc"):                  # a local file's checksum would catch it first
        crc.unlink()

    code, err, line = _publish_line(lake, capsys)
    assert code == 2, err[-3000:]
    assert line.startswith("warmstart publish: damaged Delta log: cannot read ") and len(line) < 200, line
    assert f"/lake/candidates/user_candidates/_delta_log/{last.name} (JsonEOFException)" in line, line
    assert _not_a_java_stack(err), err


def test_a_damaged_checkpoint_ends_with_one_line_naming_it(spark, night, tmp_path, capsys):
    lake = tmp_path / "lake"
    shutil.copytree(night["lake"], lake)
    table = lake / USER_CANDIDATES.name
    jvm_delta = spark._jvm.org.apache.spark.sql.delta.DeltaLog
    jvm_delta.forTable(spark._jsparkSession, str(table)).checkpoint()
    jvm_delta.clearCache()                                     # the next read starts from the files
    (checkpoint,) = (table / "_delta_log").glob("*.checkpoint.parquet")
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    for crc in (table / "_delta_log").glob(f".{checkpoint.name}.crc"):
        crc.unlink()

    code, err, line = _publish_line(lake, capsys)
    assert code == 2, err[-3000:]
    assert line.startswith("warmstart publish: damaged Delta log: cannot read ") and len(line) < 200, line
    assert f"/lake/candidates/user_candidates/_delta_log/{checkpoint.name} (" in line, line
    assert _not_a_java_stack(err), err


def test_score_killed_after_its_commit_then_rerun_equals_the_undisturbed_run(spark, config, night):
    lake = night["lake"]
    before = lakeio.version(spark, str(lake), USER_CANDIDATES)
    records = len(runtime.read_lineage(str(lake)))
    proc = _cli(lake, "score", "--run-date", D2.isoformat(), "--k", str(K), kill_at="score.after_write")
    assert proc.returncode == -signal.SIGKILL, _tail(proc)
    # the commit is whole (the kill came after it) and the same as the undisturbed run's; no record yet
    assert lakeio.version(spark, str(lake), USER_CANDIDATES) == before + 1
    assert _content_hash(_rows(spark, lake, D2)) == _content_hash(night["rows"][D2])
    assert len(runtime.read_lineage(str(lake))) == records

    score.run(spark, args_for(score.ScoreArgs, str(lake), config, run_date=D2, k=K))
    assert _content_hash(_rows(spark, lake, D2)) == _content_hash(night["rows"][D2])
    assert _content_hash(_rows(spark, lake, D1)) == _content_hash(night["rows"][D1])
    assert _leftovers(night["root"]) == []


def test_publish_killed_before_its_pointer_keeps_the_previous_run_served(spark, night):
    lake = night["lake"]
    proc = _cli(lake, "publish", "--run-date", D2.isoformat(), kill_at="publish.before_pointer")
    assert proc.returncode == -signal.SIGKILL, _tail(proc)
    assert (night["root"] / "reports" / D2.isoformat() / "candidates" / "gate.json").is_file()   # it got that far
    assert [r["run_date"] for r in lakeio.read(spark, str(lake), PUBLISHED).collect()] == [D1]
    served = reader.load_latest(str(lake))
    assert served.run_date == D1
    assert {u: served.items(u) for u in served.user_ids} == _lists(night["rows"][D1])
    assert _leftovers(night["root"]) == []


def test_the_reader_during_a_publish_serves_the_old_run_or_the_new_never_a_mix(spark, night, capsys):
    lake = night["lake"]
    expected = {day: _lists(rows) for day, rows in night["rows"].items()}
    assert expected[D1] != expected[D2]           # else a mix could not be told from either
    seen, failures, stop = [], [], threading.Event()

    def load_in_a_loop():
        while True:
            done = stop.is_set()                     # one more load after the publish ends
            try:
                served = reader.load_latest(str(lake))
                lists = {u: served.items(u) for u in served.user_ids}
                seen.append(served.run_date)
                if lists != expected[served.run_date]:
                    failures.append((served.run_date, served.table_version, lists))
            except Exception as exc:  # noqa: BLE001 - a torn read is a failure too, reported below
                failures.append(repr(exc))
            if done:
                return

    loader = threading.Thread(target=load_in_a_loop)
    loader.start()
    try:
        code = cli.main(["publish", "--lake", str(lake), "--run-date", D2.isoformat()])
    finally:
        stop.set()
        loader.join(timeout=120)
    assert code == 0, capsys.readouterr().err[-3000:]
    assert failures == []
    assert seen[0] == D1 and seen[-1] == D2 and len(seen) > 3, seen
    assert sorted(seen) == seen                              # once the new run is seen, never the old again
    published = lakeio.read(spark, str(lake), PUBLISHED).orderBy("published_at").collect()
    assert [r["run_date"] for r in published] == [D1, D2]
    assert _leftovers(night["root"]) == []


def test_score_and_publish_of_one_night_at_once_publish_a_complete_version(spark, config, night, capsys):
    """A rescore of D2 (a thread) while D2 is published again: publish gates and names the score commit it
    found; whichever that is, the row it serves is a whole D2 partition equal to the undisturbed run's."""
    lake = night["lake"]
    errors: list[BaseException] = []

    def rescore():
        try:
            score.run(spark, args_for(score.ScoreArgs, str(lake), config, run_date=D2, k=K))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    scorer = threading.Thread(target=rescore)
    scorer.start()
    try:
        code = cli.main(["publish", "--lake", str(lake), "--run-date", D2.isoformat()])
    finally:
        scorer.join(timeout=300)
    assert code == 0 and errors == [], (capsys.readouterr().err[-3000:], errors)
    published = lakeio.read(spark, str(lake), PUBLISHED).where(F.col("run_date") == F.lit(D2)).collect()
    for row in published:                          # one or two rows: the version found then, each whole
        assert _content_hash(_rows(spark, lake, D2, row["table_version"])) == _content_hash(night["rows"][D2])
    served = reader.load_latest(str(lake))
    assert served.run_date == D2 and {u: served.items(u) for u in served.user_ids} == _lists(night["rows"][D2])
    assert _content_hash(_rows(spark, lake, D2)) == _content_hash(night["rows"][D2])


REGISTRY_SCRIPT = textwrap.dedent("""
    import sys, torch
    from training.model import SeqRec, SeqRecConfig
    from training.registry import promote, save_version
    models, name, version = sys.argv[1:4]
    torch.manual_seed(int(sys.argv[4]))
    model = SeqRec(SeqRecConfig(num_items=9, dim=16, num_layers=1, num_heads=2, max_seq_len=8, dropout=0.0,
                                use_text=False, recent_days=7)).eval()
    save_version(models, name, version, model, [f"i{i}" for i in range(9)], {}, {"val_ndcg@10": 0.2}, {})
    promote(models, name, version, margin=0.0)
""")


def _register(night, version: str, seed: int, kill_at: str | None) -> subprocess.CompletedProcess:
    """What `warmstart train` does once trained: save the version folder, then move LATEST."""
    extra = {chaos.ENV: kill_at} if kill_at else {}
    return subprocess.run([sys.executable, "-c", REGISTRY_SCRIPT, str(night["models"]), night["name"], version,
                           str(seed)], cwd=REPO, env=_env(**extra), capture_output=True, text=True, timeout=120,
                          start_new_session=True)


def test_the_registry_killed_mid_save_or_before_latest_stays_consistent(night):
    from training.registry import latest_version, list_versions, load_model

    models, name = str(night["models"]), night["name"]
    folder = night["models"] / name
    v1_weights = (folder / "v1" / "model.safetensors").read_bytes()

    # a new version killed with its files written, before they take the version's name
    proc = _register(night, "v2", seed=1, kill_at="registry.files_written")
    assert proc.returncode == -signal.SIGKILL, _tail(proc)
    assert latest_version(models, name) == "v1" and not (folder / "v2").exists()
    assert [p.name[:4] for p in folder.iterdir() if p.name.startswith(".")] == [".v2."]   # its temp folder
    assert list_versions(models, name) == ["v1"]          # ... is no version (version_as_of, the backtest)
    assert load_model(models, name).version == "v1"

    # the LATEST version saved again (a retrain under the same name), killed between folder and LATEST
    proc = _register(night, "v1", seed=2, kill_at="registry.version_saved")
    assert proc.returncode == -signal.SIGKILL, _tail(proc)
    assert latest_version(models, name) == "v1"
    assert (folder / "v1" / "model.safetensors").read_bytes() != v1_weights     # the new folder, whole
    assert load_model(models, name).version == "v1"

    proc = _register(night, "v2", seed=1, kill_at=None)                          # the rerun
    assert proc.returncode == 0, _tail(proc)
    assert latest_version(models, name) == "v2" and load_model(models, name).version == "v2"
    assert _leftovers(night["root"]) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs mounted at tmp_path/disk (root only); unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_under_score_says_no_space_and_keeps_the_previous_version(spark, night, small_disk, capsys):
    lake, models = small_disk / "lake", small_disk / "models"
    shutil.copytree(night["lake"], lake)
    shutil.copytree(night["models"], models)
    # The run lock's lease lives on another disk, so that the first write to fail is the table's
    shutil.rmtree(lake / "_locks", ignore_errors=True)
    (lake / "_locks").symlink_to(small_disk.parent, target_is_directory=True)
    before = lakeio.version(spark, str(lake), USER_CANDIDATES)
    rows = _rows(spark, lake, D2)
    with open(small_disk / "filler", "wb") as filler:         # every byte left, taken
        try:
            while True:
                filler.write(b"\0" * (1 << 16))
                filler.flush()
        except OSError:
            pass

    code = cli.main(["score", "--lake", str(lake), "--run-date", D2.isoformat(), "--k", str(K)])
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert code == 1, err[-3000:]
    assert line.startswith("warmstart score: no space left on device writing ") and len(line) < 200, line
    assert "/disk/lake/candidates/user_candidates; tables keep their last version" in line, line
    (small_disk / "filler").unlink()
    assert lakeio.version(spark, str(lake), USER_CANDIDATES) == before
    assert _content_hash(_rows(spark, lake, D2)) == _content_hash(rows)
