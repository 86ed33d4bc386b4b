"""Lake-level run locks: at most one run at a time per (lake, job, run date), so an Airflow retry that
overlaps a manual run, or a backfill beside the nightly, cannot write the same night's tables twice over.

    with lock.RunLock(lake, "nightly-2024-01-31", run_id, wait_s=600):
        ...   # the run

:func:`jobs.runtime.run_job` takes the lock of every job that writes a run date's tables (the nightly
flow, and each stage it runs, each under its own name); a second run waits up to ``--wait SECONDS``, then
exits 1 with one line naming the holder (run id, host, pid, since).

The lock is a lease file, ``<lake>/_locks/<resource>.lock``, holding who took it (JSON). Taking it is an
atomic create-if-absent (``O_CREAT | O_EXCL``: of two runs, exactly one creates the file); the holder
renews the lease every ``lease_s / 4`` by touching the file (its mtime is the last heartbeat); it deletes
the file when the run ends, however it ends. A lease is stale when its holder's process is gone (same
host and boot: the pid is not running, or runs another program) or its heartbeat is older than
``lease_s`` (another host, a frozen machine): the next run then takes it over, through a takeover marker
that is itself created if absent, so of two runs that find the same stale lease only one removes it. A
holder whose lease was taken over (it was frozen past its lease) finds out at its next heartbeat and is
interrupted, as by Ctrl-C: tables stay at their last commit. The four storage steps are the
:class:`LeaseStore` protocol: :class:`LocalStore` here for local and NFS lakes, ``S3Store``
(jobs/lock_s3.py) for ``s3://``/``s3a://`` lakes and ``AzureStore`` (jobs/lock_azure.py) for
``abfss://``/``abfs://``/``wasbs://`` lakes, where each step is one conditional request (``PUT
If-None-Match: *``, ``PUT``/``DELETE If-Match: <etag>``). docs/operations.md ("Run locks") explains the
choice of a lease object over a Delta-table lease, and why gs:// and hdfs:// lakes still run unlocked.
"""
from __future__ import annotations

import _thread
import datetime as dt
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from jobs.runtime import WarmstartError, is_remote

log = logging.getLogger("warmstart.lock")

# Two minutes: a heartbeat every 30 s survives a long GC pause or a slow disk many times over, and a run
# whose machine died is taken over by the next try (an Airflow retry comes after 5 minutes).
LEASE_S = float(os.environ.get("WARMSTART_LOCK_LEASE_S", "120"))
POLL_S = 2.0        # how often a waiting run looks again


class LockHeld(WarmstartError):
    """Another live run holds the lock (exit 1: the run did nothing; try again later or with --wait)."""

    exit_code = 1


class LockStoreError(WarmstartError):
    """An object store's bucket or container could not be reached or refused a request (credentials,
    permissions, no such bucket)."""

    exit_code = 1


@dataclass(frozen=True)
class Holder:
    """What a lease file says about the run that holds it."""

    resource: str
    token: str                  # unique per acquisition: a takeover or a release acts on this one only
    run_id: str
    host: str
    pid: int
    since: str                  # ISO time the lease was taken (UTC)
    lease_s: float
    boot_id: str = ""           # the pid check is only trusted on the same host *and* boot
    pid_started: str = ""       # the process's start time in clock ticks (/proc/<pid>/stat): a reused pid differs

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, since {self.since})"


_FIELDS = set(Holder.__dataclass_fields__)


class LeaseStore(Protocol):
    """The four storage operations a lease needs. On an object store each is one conditional request
    (renew and delete after a GET that checks the token and reads the ETag): jobs/lock_s3.py,
    jobs/lock_azure.py."""

    def create(self, path: str, data: bytes) -> bool:
        """Write ``path`` only if it does not exist; False if it did (S3: PUT If-None-Match: *)."""

    def read(self, path: str) -> tuple[bytes, float] | None:
        """(content, time of the last heartbeat as this machine's epoch seconds), or None if absent (S3:
        GET; ``time.time()`` minus the age the server gives, its Date minus the object's LastModified)."""

    def renew(self, path: str, token: str) -> bool:
        """Refresh the heartbeat of the lease ``token`` holds; False if the file is gone or another's
        (S3: PUT If-Match: <etag read with the token>)."""

    def delete(self, path: str, token: str | None) -> bool:
        """Delete ``path`` if it still holds ``token`` (None: still unreadable); False otherwise (S3:
        DELETE If-Match: <etag>)."""


class ObjectLeaseStore:
    """What the object stores' lease steps share (jobs/lock_s3.py, jobs/lock_azure.py): each subclass gives
    ``_put_if_absent`` (one conditional PUT; False when the object exists) and ``_get`` (body, ETag and
    last heartbeat, or None), plus ``renew`` and ``delete``."""

    def create(self, path: str, data: bytes) -> bool:
        if self._put_if_absent(path, data):
            return True
        # The SDK retries a PUT whose answer was lost; if the first try landed, the retry is refused on our own
        # lease. Its body holds our unique token, so an equal body is ours.
        found = self._get(path)
        return found is not None and found.body == data

    def read(self, path: str) -> tuple[bytes, float] | None:
        found = self._get(path)
        return None if found is None else (found.body, found.renewed)

    def _put_if_absent(self, path: str, data: bytes) -> bool:
        raise NotImplementedError

    def _get(self, path: str):
        raise NotImplementedError


class LocalStore:
    """Lease files on a local or shared POSIX filesystem (NFS v3+ honours O_EXCL)."""

    def create(self, path: str, data: bytes) -> bool:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def read(self, path: str) -> tuple[bytes, float] | None:
        try:
            with open(path, "rb") as f:
                return f.read(), os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None

    def renew(self, path: str, token: str) -> bool:
        if not self._holds(path, token):
            return False
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def delete(self, path: str, token: str | None) -> bool:
        # Between the check and the unlink only the stale holder itself could release and a third run
        # take the lock: a window of microseconds after minutes of staleness (an object store closes
        # it with DELETE If-Match).
        if not self._holds(path, token):
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    def _holds(self, path: str, token: str | None) -> bool:
        found = self.read(path)
        return found is not None and _token(found[0]) == token


def _token(data: bytes) -> str | None:
    try:
        return json.loads(data)["token"]
    except (ValueError, KeyError, TypeError):
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_started(pid: int) -> str:
    """The process's start time (field 22 of /proc/<pid>/stat), "" where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, started: str = "") -> bool:
    """Whether ``pid`` runs on this machine, and is the same process when its start time is known."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                    # another user's process: it exists
    return not started or not _pid_started(pid) or _pid_started(pid) == started


def resource_name(job: str, run_date: object = None, *, table: str | None = None,
                  dates: tuple[object, object] | None = None) -> str:
    """The lock's name: the job, the table for a per-table job (gates run side by side), the run date
    (or a backfill's range, or ``undated``)."""
    parts = [job]
    if table:
        parts.append(table)
    if run_date is not None:
        parts.append(str(run_date))
    elif dates and any(dates):
        parts.append(f"{dates[0] or ''}..{dates[1] or ''}")
    else:
        parts.append("undated")
    return re.sub(r"[^\w.\-]+", "_", "-".join(parts))


def lock_path(lake: str, resource: str) -> str:
    return f"{lake.rstrip('/')}/_locks/{resource}.lock"


class RunLock:
    """The lease on ``resource`` under ``lake`` for ``run_id``; a context manager."""

    def __init__(self, lake: str, resource: str, run_id: str, *, wait_s: float = 0.0, lease_s: float | None = None,
                 poll_s: float = POLL_S, store: LeaseStore | None = None, interrupt_on_loss: bool = True):
        self.lake, self.resource, self.run_id = lake, resource, run_id
        self.path = lock_path(lake, resource)
        self.wait_s, self.poll_s = max(0.0, wait_s), poll_s
        self.lease_s = lease_s if lease_s is not None else LEASE_S
        self.store: LeaseStore = store or LocalStore()
        self.interrupt_on_loss = interrupt_on_loss
        self.me = Holder(resource=resource, token=uuid.uuid4().hex, run_id=run_id, host=socket.gethostname(),
                         pid=os.getpid(), since="", lease_s=self.lease_s, boot_id=_boot_id(),
                         pid_started=_pid_started(os.getpid()))
        self.held = False
        self.lost = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- taking and giving back ------------------------------------------------------------------------
    def acquire(self) -> RunLock:
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            since = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
            mine = Holder(**{**asdict(self.me), "since": since})
            if self.store.create(self.path, json.dumps(asdict(mine)).encode()):
                self.me, self.held = mine, True
                self._start_heartbeat()
                return self
            found = self.store.read(self.path)
            if found is None:
                continue                        # released between our create and read: try again at once
            holder, why = self._judge(*found)
            if why is not None:
                self._take_over(holder, why)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                who = holder.describe() if holder else "a run whose lease file is being written"
                hint = f"it did not finish within --wait {self.wait_s:g}s" if self.wait_s else \
                    "rerun with --wait SECONDS to wait for it"
                raise LockHeld(f"{self.resource} is locked by {who}; {hint}")
            if not told:
                log.warning("%s is locked by %s; waiting up to %.0fs", self.resource,
                            holder.describe() if holder else "another run", left)
                told = True
            time.sleep(min(left, self.poll_s * random.uniform(0.5, 1.5)))

    def release(self) -> None:
        """Give the lease back. A store that fails here (an object store out of reach) must not turn a
        finished run into a failed one, nor hide the error a failed run is leaving with: the lease then
        expires by itself, ``lease_s`` after its last heartbeat."""
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)
        if self.held and not self.lost:
            try:
                self.store.delete(self.path, self.me.token)
            except Exception as exc:  # noqa: BLE001 - whatever the store raises, the lease expires anyway
                log.warning("could not release the run lock %s (%s): it expires %.0fs after its last heartbeat",
                            self.resource, exc, self.lease_s)
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- staleness and takeover ------------------------------------------------------------------------
    def _judge(self, data: bytes, renewed: float) -> tuple[Holder | None, str | None]:
        """(the holder, why its lease is stale or None while it is live)."""
        age = time.time() - renewed
        try:
            holder = Holder(**{k: v for k, v in json.loads(data).items() if k in _FIELDS})
        except (ValueError, TypeError, AttributeError):
            # A lease file caught half written (create, then write) or damaged: live while fresh.
            return None, (f"its lease file is unreadable and {age:.0f}s old" if age > self.lease_s else None)
        if holder.host == self.me.host and holder.boot_id == self.me.boot_id and holder.pid != os.getpid() \
                and not process_alive(holder.pid, holder.pid_started):
            return holder, f"its process {holder.pid} on {holder.host} is gone"
        lease = holder.lease_s or self.lease_s
        if age > lease:
            return holder, f"no heartbeat for {age:.0f}s (lease {lease:.0f}s)"
        return holder, None

    def _take_over(self, holder: Holder | None, why: str) -> None:
        """Remove a stale lease. Only the run that creates the takeover marker named after the stale
        lease's token removes it, and only while the lease file still holds that token."""
        stale_token = holder.token if holder else None
        marker = f"{self.path}.takeover-{stale_token or 'unreadable'}"
        if self.store.create(marker, json.dumps(asdict(self.me)).encode()):
            try:
                if self.store.delete(self.path, stale_token):
                    log.warning("took over %s from %s: %s", self.resource,
                                holder.describe() if holder else "an unreadable lease", why)
            finally:
                self.store.delete(marker, self.me.token)
            return
        found = self.store.read(marker)     # another run is taking it over; a marker left by a crash expires
        if found is not None and time.time() - found[1] > self.lease_s:
            self.store.delete(marker, _token(found[0]))
        time.sleep(self.poll_s * random.uniform(0.05, 0.2))

    # -- heartbeat -------------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-{self.resource}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        """Renew every ``lease / 4``. A store that fails (an object store's network blip) is retried at the
        next beat; the run stops when the lease is another's, or could not be renewed for a whole lease
        (by then another run may rightly have taken it over)."""
        renewed = time.monotonic()
        while not self._stop.wait(self.lease_s / 4):
            try:
                if self.store.renew(self.path, self.me.token):
                    renewed = time.monotonic()
                    continue
                why = f"another run took it over (this one was frozen past its {self.lease_s:.0f}s lease)"
            except Exception as exc:  # noqa: BLE001 - whatever the store raises, the next beat tries again
                if time.monotonic() - renewed < self.lease_s:
                    log.warning("could not renew the run lock %s (will retry): %s", self.resource, exc)
                    continue
                why = f"it could not be renewed for {self.lease_s:.0f}s: {exc}"
            self.lost = True
            log.error("lost the run lock %s: %s; stopping", self.resource, why)
            if self.interrupt_on_loss:
                _thread.interrupt_main()
            return


def lease_store(lake: str) -> LeaseStore | None:
    """The lease store for ``lake``'s scheme: local paths get lease files, ``s3://`` and ``s3a://``
    conditional requests on S3 (jobs/lock_s3.py), ``abfss://``, ``abfs://``, ``wasbs://`` and ``wasb://``
    on Azure Blob Storage (jobs/lock_azure.py); None for the schemes that have no store yet."""
    if not is_remote(lake):
        return LocalStore()
    scheme = lake.split("://", 1)[0].lower()
    if scheme in ("s3", "s3a"):
        from jobs.lock_s3 import S3Store

        return S3Store()
    if scheme in ("abfss", "abfs", "wasbs", "wasb"):
        from jobs.lock_azure import AzureStore

        return AzureStore()
    return None


def run_lock(lake: str, resource: str, run_id: str, wait_s: float = 0.0) -> RunLock | None:
    """The lock a job takes, or None where the lake's scheme has no lease store yet (``gs://``,
    ``hdfs://``: docs/operations.md says why, and which conditional requests theirs would use)."""
    store = lease_store(lake)
    if store is None:
        log.warning("run locks are not implemented for %s lakes yet: this run is not protected from a "
                    "concurrent one (docs/operations.md, Run locks)", lake.split("://", 1)[0])
        return None
    return RunLock(lake, resource, run_id, wait_s=wait_s, store=store)
