"""Erase customers from the lake (a request to be forgotten): delete their rows from every table that
holds user ids, vacuum the files that held them, record the erasure in lineage by salted hash only, and
list the models trained on their data. One run erases a list of users; see docs/operations.md,
"Erasing a customer", for what it guarantees and what it cannot reach.

    spark-submit jobs/forget.py --lake ./lake --users u123 u456 [--vacuum-now]
    warmstart forget --users-file erase.txt [--vacuum-now]       # one id a line; blank and # lines skipped

Which tables: every declaration in features/tables.py whose ``Table.personal`` is not empty: the ones with
a ``user_id`` column (bronze/events, the daily layer and rolling state, features, sequences, candidates),
and the ones with raw input text (the quarantine's ``record`` and ``detail``), where a row goes when its
text holds the id as a whole token (not inside a longer run of letters and digits): the quarantine keeps
no parsed user id, and a record that failed parsing has none. A table declared later is erased too.

Each table gets one Delta MERGE ... WHEN MATCHED THEN DELETE whose source is the ids as a DataFrame, so
the commit's logged predicate names columns, never ids (``DELETE WHERE user_id IN ('u1')`` would write
the ids into the log for good). Delta keeps no min/max statistics of personal columns (the declarations'
``delta.dataSkippingStatsColumns``; set here on tables created before it, ahead of the delete, so the
files rewritten carry none). Deletion vectors, if a table has them on, are purged (REORG ... APPLY
(PURGE)) so that the rows leave the data files.

Vacuum: ``--vacuum-now`` runs VACUUM with a retention of 0 on every personal table: the files that held the
rows go now, and with them every older version of those tables (time travel to a version before the
erasure fails). Without it the tables' own retention (``delta.deletedFileRetentionDuration``, Delta's 7
days where a table sets none) applies: VACUUM runs with it before the delete (removing earlier erasures'
files that are past it), the summary says when this erasure's files become removable, and a pending
erasure is recorded (``<lake>/_forget/pending/<run_id>.json``: run id, tables, ``removable_after``; no ids
or hashes). :func:`vacuum_due`, which every successful ``warmstart publish`` runs, VACUUMs those tables
once that time has passed and moves the record to ``_forget/done/``; until then time travel returns them.

Published candidates: a published run whose candidates lost rows is published again (a new
``candidates/published`` row at the new table version, its ``published_at`` one microsecond after the
original's so that the run keeps its place in the order), since its old version stops being readable once
vacuumed. A published run whose files are no longer the table's latest for that date cannot be moved and is
listed as ``published_runs_lost`` (only with ``--vacuum-now``).

Models: every registered version (transformer and ranker) trained for a night on or after the erased
users' first event is listed as affected (summary and lineage). Training reads only the feature tables
and bronze (no user data is cached under the models folder), so the next training excludes them; the
affected weights are not retrained here.

Idempotent: erasing the same users again deletes nothing (and only vacuums).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.tables import EVENTS, PUBLISHED, STATS_COLUMNS_KEY, TABLES, USER_CANDIDATES, Table
from jobs import lake, runtime

log = logging.getLogger("warmstart.forget")

SALT_FILE = "_forget/salt"
PENDING_DIR, DONE_DIR = "_forget/pending", "_forget/done"   # erasures waiting for / past their VACUUM
RETENTION_KEY = "delta.deletedFileRetentionDuration"
DEFAULT_RETENTION = dt.timedelta(days=7)                  # Delta's, for a table that sets none
# One term of a Delta interval ("interval 1 week 2 days"); Delta refuses months and years for retention.
RETENTION_TERM = re.compile(r"(\d+)\s*(week|day|hour|minute|second|millisecond|microsecond)s?")
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
TOKEN_EDGE = "[^0-9A-Za-z]"   # an id inside raw text: not preceded or followed by a letter or digit


@dataclass(frozen=True)
class ForgetArgs(runtime.JobArgs):
    users: tuple[str, ...] = ()
    users_file: str | None = None
    vacuum_now: bool = False


def personal_tables() -> list[Table]:
    """The declared tables that hold user ids, in declaration order."""
    return [t for t in TABLES.values() if t.personal]


def user_ids(args: ForgetArgs) -> list[str]:
    """The ids to erase: ``--users`` and the lines of ``--users-file``, stripped, deduplicated, sorted."""
    ids = [u.strip() for u in args.users]
    if args.users_file:
        path = Path(args.users_file)
        if not path.is_file():
            raise runtime.UsageError(f"--users-file {args.users_file}: no such file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise runtime.UsageError(f"--users-file {args.users_file}: not UTF-8 text (one user id a line)") from None
        ids += [line.strip() for line in lines if not line.strip().startswith("#")]
    ids = sorted({u for u in ids if u})
    if not ids:
        raise runtime.UsageError("no user ids to erase: give --users ID... or a --users-file with one id a line")
    return ids


def lake_salt(lake_root: str) -> bytes:
    """The lake's secret salt for user-id hashes (``<lake>/_forget/salt``), made on first use."""
    path = f"{lake_root}/{SALT_FILE}"
    text = _read_text(path)
    if text is None:
        runtime.write_text(path, secrets.token_hex(32) + "\n")
        text = _read_text(path)
    return bytes.fromhex(text.strip())


def user_hash(salt: bytes, user_id: str) -> str:
    """HMAC-SHA256 of the id under the lake's salt: the same id always gives the same hash in one lake
    (an erasure can be checked), but the hash cannot be reversed or recomputed without the salt."""
    return hmac.new(salt, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def _read_text(path: str) -> str | None:
    if runtime.is_remote(path):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        if filesystem.get_file_info(inner).type == fs.FileType.NotFound:
            return None
        with filesystem.open_input_stream(inner) as f:
            return f.read().decode()
    p = Path(path)
    return p.read_text() if p.is_file() else None


def ids_frame(spark: SparkSession, ids: list[str]) -> DataFrame:
    """The ids as the MERGE's source, with the regular expression that finds each one in raw text."""
    rows = [(u, f"(^|{TOKEN_EDGE}){re.escape(u)}({TOKEN_EDGE}|$)") for u in ids]
    return F.broadcast(spark.createDataFrame(rows, "user_id string, pattern string"))


def match_condition(table: Table) -> str:
    """The MERGE condition between the table (t) and the ids (s): equal user_id, or the id in raw text."""
    parts = [f"t.`{c}` = s.user_id" if c == "user_id" else f"t.`{c}` RLIKE s.pattern" for c in table.personal]
    return " OR ".join(parts)


def erase_table(spark: SparkSession, lake_root: str, table: Table, ids: DataFrame) -> dict[str, Any]:
    """Delete the users' rows from one table (one commit). Returns the versions before and after and the
    rows deleted."""
    from delta.tables import DeltaTable

    path = lake.path_of(lake_root, table)
    _declared_stats_columns(spark, path, table)
    before = lake.version(spark, lake_root, table)
    target = DeltaTable.forPath(spark, path)
    target.alias("t").merge(ids.alias("s"), match_condition(table)).whenMatchedDelete().execute()
    after = lake.version(spark, lake_root, table)
    metrics = lake._metrics_since(target, before)
    deleted = metrics.get("numTargetRowsDeleted", 0)
    if deleted and _properties(spark, path).get("delta.enableDeletionVectors") == "true":
        spark.sql(f"REORG TABLE delta.`{path}` APPLY (PURGE)")   # deleted rows still sit in the files until purged
        after = lake.version(spark, lake_root, table)
    return {"version_before": before, "version_after": after, "rows_deleted": deleted}


def _properties(spark: SparkSession, path: str) -> dict[str, str]:
    return dict(spark.sql(f"DESCRIBE DETAIL delta.`{path}`").select("properties").first()[0] or {})


def _declared_stats_columns(spark: SparkSession, path: str, table: Table) -> None:
    """Give a table created before its declaration named its statistics columns the declared ones, so
    that the files the delete rewrites keep no min/max of user ids."""
    wanted = table.properties.get(STATS_COLUMNS_KEY)
    if wanted is not None and _properties(spark, path).get(STATS_COLUMNS_KEY) != wanted:
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('{STATS_COLUMNS_KEY}' = '{wanted}')")


def first_event_date(spark: SparkSession, lake_root: str, ids: DataFrame) -> dt.date | None:
    """The erased users' earliest event date in bronze/events (None: no events)."""
    if not lake.exists(spark, lake_root, EVENTS):
        return None
    return (lake.read(spark, lake_root, EVENTS).join(ids.select("user_id"), "user_id")
            .agg(F.min("event_date")).first()[0])


def affected_models(models_root: str, since: dt.date | None) -> list[str]:
    """``name/version`` of every registered model (any name under the models folder: the transformer and
    the ranker) trained for a night on or after ``since``; a version whose name does not start with its
    night's date is listed too (it cannot be ruled out)."""
    root = Path(models_root)
    if since is None or runtime.is_remote(models_root) or not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith((".", "_"))):
        if not any((folder / f).is_file() for f in ("model.safetensors", "model.json")):
            continue
        try:
            night = dt.datetime.strptime(folder.name[:8], "%Y%m%d").date()
        except ValueError:
            night = None
        if night is None or night >= since:
            out.append(f"{folder.parent.name}/{folder.name}")
    return out


def republish(spark: SparkSession, args: ForgetArgs, before: int, after: int) -> tuple[list[str], list[str]]:
    """Point each run date's newest published row that read ``before``'s files at ``after`` (a new row, one
    microsecond later). Returns (run dates republished, run dates whose published files are no longer
    the latest and cannot be moved)."""
    if before == after or not lake.exists(spark, args.lake, PUBLISHED):
        return [], []
    published = lake.read(spark, args.lake, PUBLISHED).collect()
    newest = {}
    for row in sorted(published, key=lambda r: (r["published_at"], r["table_version"])):
        newest[row["run_date"]] = row
    moved, lost, rows = [], [], []
    for day, row in sorted(newest.items()):
        files = {v: _partition_files(args.lake, v, day) for v in (int(row["table_version"]), before, after)}
        if files[int(row["table_version"])] == files[after]:
            continue                            # its files are untouched: nothing to move
        if files[int(row["table_version"])] != files[before]:
            lost.append(day.isoformat())
            continue
        part = lake.read(spark, args.lake, USER_CANDIDATES, after).where(F.col("run_date") == F.lit(day))
        counts = part.agg(F.countDistinct("user_id"), F.count(F.lit(1))).first()
        rows.append((day, after, row["model_version"], int(counts[0]), int(counts[1]), args.run_id,
                     row["published_at"] + dt.timedelta(microseconds=1)))
        moved.append(day.isoformat())
    if rows:
        lake.append(spark, args.lake, PUBLISHED, spark.createDataFrame(rows, PUBLISHED.schema))
    return moved, lost


def _partition_files(lake_root: str, version: int, day: dt.date) -> frozenset[str] | None:
    try:
        return frozenset(lake.snapshot_files(lake_root, USER_CANDIDATES, version, day)[1])
    except Exception:  # noqa: BLE001 - a version whose log is gone: its files cannot be compared
        return None


def vacuum(spark: SparkSession, lake_root: str, table: Table, now: bool) -> None:
    """VACUUM the table: with a retention of 0 (``now``), or with its configured retention. The latter gives
    no RETAIN, so Delta takes the table's own ``delta.deletedFileRetentionDuration`` however short (shorter
    than 7 days included), and its retentionDurationCheck stays on: it refuses only a RETAIN shorter than
    that retention. RETAIN 0 is, so for it the check is off for this statement only, then restored."""
    path = lake.path_of(lake_root, table)
    if not now:
        spark.sql(f"VACUUM delta.`{path}`")
        return
    saved = spark.conf.get(RETENTION_CHECK, None)
    spark.conf.set(RETENTION_CHECK, "false")   # Delta refuses a retention under 7 days unless told
    try:
        spark.sql(f"VACUUM delta.`{path}` RETAIN 0 HOURS")
    finally:
        spark.conf.set(RETENTION_CHECK, saved) if saved is not None else spark.conf.unset(RETENTION_CHECK)


def run(spark: SparkSession, args: ForgetArgs) -> dict[str, Any]:
    ids = user_ids(args)
    salt = lake_salt(args.lake)
    tables = [t for t in personal_tables() if lake.exists(spark, args.lake, t)]
    if not args.vacuum_now:   # before the delete: this erasure's files go by its record alone, whatever the retention
        for table in tables:
            vacuum(spark, args.lake, table, now=False)
    source = ids_frame(spark, ids).persist()
    try:
        since = first_event_date(spark, args.lake, source)
        erased = {t.name: erase_table(spark, args.lake, t, source) for t in tables}
    finally:
        source.unpersist()
    candidates = erased.get(USER_CANDIDATES.name)
    moved, lost = republish(spark, args, candidates["version_before"], candidates["version_after"]) \
        if candidates else ([], [])
    removable_after, pending = None, None
    if args.vacuum_now:
        for name in erased:
            vacuum(spark, args.lake, TABLES[name], now=True)
    else:
        removable_after, pending = defer_vacuum(spark, args, erased)
    models = affected_models(args.models_root, since)
    summary = {
        "users": len(ids),
        "user_hashes": sorted(user_hash(salt, u) for u in ids),   # not in the ids' order
        "hash": f"hmac-sha256, salt {SALT_FILE} under the lake",
        "rows_deleted": {name: e["rows_deleted"] for name, e in erased.items()},
        "tables_erased": len(erased),
        "vacuumed": "now (retention 0: older versions of these tables are gone)" if args.vacuum_now
                    else "with the tables' retention; this erasure's files by the first publish after "
                         "files_removable_after",
        "files_removable_after": removable_after,
        "pending_erasure": pending,
        "published_runs_moved": moved,
        "published_runs_lost": lost if args.vacuum_now else [],
        "first_event_date": since.isoformat() if since else None,
        "affected_models": models,
        "staging_leftovers": _staging_leftovers(args.lake),
    }
    runtime.record_lineage(args, run_date=None, inputs={n: e["version_before"] for n, e in erased.items()},
                           outputs={n: e["version_after"] for n, e in erased.items()}, summary=summary)
    for model in models:
        log.warning("model %s was trained on the erased users' events: retrain it or retire it", model)
    return summary


def defer_vacuum(spark: SparkSession, args: ForgetArgs, erased: dict[str, Any]) -> tuple[str | None, str | None]:
    """Record the erasure as pending its VACUUM (``<lake>/_forget/pending/<run_id>.json``): the tables whose
    files lost rows, and when those files pass the tables' retention. No ids or hashes: the lineage record
    holds those. Returns (removable_after, the record's path), or (None, None) when no row was deleted."""
    tables = [name for name, e in erased.items() if e["rows_deleted"]]
    if not tables:
        return None, None
    erased_at = dt.datetime.now(dt.timezone.utc)      # after every delete's commit: never early
    removable_after = (erased_at + _retention(spark, args.lake, tables)).isoformat()
    path = f"{args.lake}/{PENDING_DIR}/{args.run_id}.json"
    runtime.write_json(path, {"run_id": args.run_id, "erased_at": erased_at.isoformat(), "tables": tables,
                              "removable_after": removable_after})
    return removable_after, path


def vacuum_due(spark: SparkSession, lake_root: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """VACUUM, with its configured retention, each table of the pending erasures whose ``removable_after``
    has passed (``now``, default the clock), once however many erasures name it, and move their records to
    ``_forget/done/`` with ``vacuumed_at`` so that each runs once. Called by every successful ``warmstart
    publish``. An erasure with a table whose VACUUM fails stays pending (tried again next time) and is
    listed as failed. No Spark query when nothing is due. Returns the erasures vacuumed, their tables, the
    erasures still pending (run id -> removable_after) and the failed ones."""
    now = now or dt.datetime.now(dt.timezone.utc)
    records = _pending_records(lake_root)
    due = {name: r for name, r in records.items() if dt.datetime.fromisoformat(r["removable_after"]) <= now}
    tables = sorted({t for r in due.values() for t in r["tables"]})
    failed_tables = set()
    for table in tables:
        try:
            if table in TABLES and lake.exists(spark, lake_root, TABLES[table]):
                vacuum(spark, lake_root, TABLES[table], now=False)
        except Exception as exc:  # noqa: BLE001 - one table's failure must not keep the other erasures waiting
            log.warning("VACUUM of %s for due erasures failed (%s: %s); they stay pending and are tried again",
                        table, type(exc).__name__, runtime.printable(str(exc), 300))
            failed_tables.add(table)
    failed = {name for name, r in due.items() if failed_tables & set(r["tables"])}
    for name in due.keys() - failed:
        _move_to_done(lake_root, name, due[name])
    return {"vacuumed": [r["run_id"] for name, r in due.items() if name not in failed],
            "tables": [t for t in tables if t not in failed_tables],
            "pending": {r["run_id"]: r["removable_after"] for name, r in records.items() if name not in due},
            "failed": [due[name]["run_id"] for name in sorted(failed)]}


def _pending_records(lake_root: str) -> dict[str, dict[str, Any]]:
    """File name -> record of every pending erasure, in file-name order (run ids start with their time)."""
    from pyarrow import fs

    filesystem, folder = _filesystem(f"{lake_root}/{PENDING_DIR}")
    found = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
    names = sorted(f.base_name for f in found if f.type == fs.FileType.File and f.base_name.endswith(".json"))
    return {name: json.loads(_read_text(f"{lake_root}/{PENDING_DIR}/{name}")) for name in names}


def _move_to_done(lake_root: str, name: str, record: dict[str, Any]) -> None:
    """Write the record under ``_forget/done/`` with ``vacuumed_at``, then delete the pending one (a crash
    between the two leaves it pending: its VACUUM runs once more, which changes nothing)."""
    vacuumed_at = dt.datetime.now(dt.timezone.utc).isoformat()
    runtime.write_json(f"{lake_root}/{DONE_DIR}/{name}", {**record, "vacuumed_at": vacuumed_at})
    filesystem, path = _filesystem(f"{lake_root}/{PENDING_DIR}/{name}")
    filesystem.delete_file(path)


def _filesystem(path: str):
    """(pyarrow filesystem, path inside it): local, s3, hdfs, gcs alike."""
    from pyarrow import fs

    if runtime.is_remote(path):
        return fs.FileSystem.from_uri(path)
    return fs.LocalFileSystem(), runtime.normalise_root(path)


def parse_retention(value: str) -> dt.timedelta | None:
    """A Delta interval as a timedelta: ``interval 2 days``, ``1 week 12 hours``, ``interval 30 seconds``
    (``interval`` optional, units singular or plural, as Delta accepts them); None when it is not one."""
    text = value.strip().lower().removeprefix("interval").strip()
    terms = RETENTION_TERM.findall(text)
    if not terms or RETENTION_TERM.sub("", text).strip():
        return None
    return sum((dt.timedelta(**{f"{unit}s": int(n)}) for n, unit in terms), dt.timedelta())


def _retention(spark: SparkSession, lake_root: str, names: list[str]) -> dt.timedelta:
    """The longest ``delta.deletedFileRetentionDuration`` of the tables, each its own (Delta's default of 7
    days where it sets none): when every file the erasure removed can be vacuumed."""
    longest = dt.timedelta()
    for name in names:
        value = _properties(spark, lake.path_of(lake_root, TABLES[name])).get(RETENTION_KEY)
        retention = DEFAULT_RETENTION if value is None else parse_retention(value)
        if retention is None:
            log.warning("%s: %s=%r is not an interval this job reads; assuming Delta's default of 7 days",
                        name, RETENTION_KEY, value)
            retention = DEFAULT_RETENTION
        longest = max(longest, retention)
    return longest


def _staging_leftovers(lake_root: str) -> int:
    """Ingest staging folders left by killed runs (raw records, outside any table: removed by hand)."""
    folder = Path(lake_root) / "_staging"
    return 0 if runtime.is_remote(lake_root) or not folder.is_dir() else sum(1 for _ in folder.iterdir())


def _to_args(ns, common: runtime.JobArgs) -> ForgetArgs:
    args = runtime.dataclass_from(ForgetArgs, ns, common, users=tuple(ns.users or ()))
    user_ids(args)   # a missing file or no ids: exit 2 before Spark starts
    return args


def main(argv: list[str] | None = None) -> int:
    parser = runtime.job_parser("forget", "erase customers: their rows in every table, old files, and lineage by hash")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", nargs="+", metavar="ID", help="user ids to erase")
    who.add_argument("--users-file", metavar="FILE", help="a text file with one user id a line")
    parser.add_argument("--vacuum-now", action="store_true",
                        help="VACUUM with retention 0 now (every older version of the erased tables is lost)")
    return runtime.run_job("forget", parser, _to_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
