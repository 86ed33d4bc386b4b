"""The lake-level run lock (jobs/lock.py): a second run is refused naming the holder, or waits for it;
a lease whose holder is dead (a SIGKILLed process, a pid that is gone) or silent past its lease (another
host) is taken over, by exactly one of the runs that find it; the heartbeat keeps a long run's lease;
a holder whose lease was taken over finds out; and `run_job` puts it together (exit 1, one line).

Each scenario that touches a lease runs on every store: ``[local]`` lease files, ``[s3]`` lease objects
on moto's S3 (tests/test_lock_s3.py, which also has what only S3 has), ``[azure]`` lease blobs on
Azurite (tests/test_lock_azure.py, likewise)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs import lock, runtime
from test_lock_azure import azure_leases, azurite  # noqa: F401 - fixtures, for the [azure] cases of `leases`
from test_lock_s3 import moto_endpoint, s3_leases  # noqa: F401 - fixtures, for the [s3] cases of `leases`

REPO = Path(__file__).resolve().parent.parent
RESOURCE = "nightly-2024-01-31"


class LocalLeases:
    """A lake on the local disk, and its lease files as the tests look at and arrange them (the local
    side of tests/test_lock_s3.py's ``S3Leases`` and tests/test_lock_azure.py's ``AzureLeases``)."""

    short_lease_s = 0.4             # the mtime has sub-second resolution

    def __init__(self, root: Path):
        self.lake = str(root.resolve())         # as run_job's normalise_root gives it

    def path(self, resource: str = RESOURCE) -> str:
        return lock.lock_path(self.lake, resource)

    def read(self, path: str) -> bytes | None:
        return Path(path).read_bytes() if Path(path).is_file() else None

    def write(self, path: str, body: bytes) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(body)

    def age(self, path: str, seconds: float) -> None:
        """Make the lease's last heartbeat ``seconds`` old."""
        old = time.time() - seconds
        os.utime(path, (old, old))

    def names(self) -> list[str]:
        locks = Path(self.lake) / "_locks"
        return sorted(p.name for p in locks.iterdir()) if locks.is_dir() else []


@pytest.fixture(params=["local", "s3", "azure"])
def leases(request, tmp_path):
    """The lake and its leases, on the local disk, on (moto's) S3 or on (Azurite's) Azure Blob Storage."""
    if request.param == "local":
        return LocalLeases(tmp_path / "lake")
    return request.getfixturevalue(f"{request.param}_leases")


def _run_lock(leases, run_id: str, resource: str = RESOURCE, **options) -> lock.RunLock:
    """A run's lock on ``leases``' lake, with the store ``run_lock`` picks for its scheme."""
    return lock.RunLock(leases.lake, resource, run_id, store=lock.lease_store(leases.lake), **options)


def _holder(leases, resource: str = RESOURCE) -> dict | None:
    """Who the lease says holds it, or None when there is no lease."""
    body = leases.read(leases.path(resource))
    return None if body is None else json.loads(body)


def _lease_file(leases, **holder) -> str:
    """A lease as another run would have left it."""
    fields = dict(resource=RESOURCE, token="t-other", run_id="nightly-2024-01-31-20240201T020000Z-abc123",
                  host="worker-7", pid=4242, since="2024-02-01T02:00:00Z", lease_s=60.0)
    fields.update(holder)
    leases.write(leases.path(), json.dumps(fields).encode())
    return leases.path()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_is_refused_with_one_line_naming_the_holder(leases):
    with _run_lock(leases, "run-1") as first:
        held = _holder(leases)
        assert first.held and (held["run_id"], held["pid"], held["host"]) == ("run-1", os.getpid(), socket.gethostname())
        with pytest.raises(lock.LockHeld) as refused:
            _run_lock(leases, "run-2").acquire()
        assert refused.value.exit_code == 1
        assert str(refused.value) == (f"{RESOURCE} is locked by run run-1 (host {socket.gethostname()}, pid "
                                      f"{os.getpid()}, since {held['since']}); rerun with --wait SECONDS to wait for it")
        # another run date, or another job, is another lock
        with _run_lock(leases, "run-3", "nightly-2024-02-01"), _run_lock(leases, "run-4", "score-2024-01-31"):
            pass
    assert _holder(leases) is None                              # released
    with _run_lock(leases, "run-2"):                            # and free for the next run
        pass


def test_a_waiting_run_gets_the_lock_when_the_holder_ends_or_gives_up(leases):
    first = _run_lock(leases, "run-1").acquire()
    threading.Timer(0.6, first.release).start()
    started = time.monotonic()
    with _run_lock(leases, "run-2", wait_s=20, poll_s=0.1):
        waited = time.monotonic() - started
        assert _holder(leases)["run_id"] == "run-2"
        assert 0.5 < waited < 10
        started = time.monotonic()
        with pytest.raises(lock.LockHeld, match=r"locked by run run-2 .*; it did not finish within --wait 0.5s"):
            _run_lock(leases, "run-3", wait_s=0.5, poll_s=0.1).acquire()
        assert time.monotonic() - started >= 0.5


def test_a_lease_whose_process_is_gone_is_taken_over_at_once(leases, caplog):
    me = _run_lock(leases, "probe")
    pid = _dead_pid()
    _lease_file(leases, host=me.me.host, boot_id=me.me.boot_id, pid=pid, lease_s=3600)   # same machine, fresh lease
    with _run_lock(leases, "run-2"):
        assert _holder(leases)["run_id"] == "run-2"
    assert f"took over {RESOURCE} from run nightly-2024-01-31-20240201T020000Z-abc123 (host {me.me.host}, pid {pid}" \
        in caplog.text and f"its process {pid} on {me.me.host} is gone" in caplog.text
    # a live pid of another program (a pid reused since) counts as gone too: its start time differs
    _lease_file(leases, host=me.me.host, boot_id=me.me.boot_id, pid=os.getppid(), pid_started="1", lease_s=3600)
    with _run_lock(leases, "run-3"):
        pass
    # the same pid on another host says nothing about that host's process: its lease still stands
    _lease_file(leases, host="worker-7", pid=pid, lease_s=3600)
    with pytest.raises(lock.LockHeld, match="host worker-7, pid"):
        _run_lock(leases, "run-4").acquire()


def test_a_lease_past_its_expiry_is_taken_over(leases, caplog):
    path = _lease_file(leases, lease_s=60)                      # another host: only the lease can tell
    with pytest.raises(lock.LockHeld):
        _run_lock(leases, "run-2").acquire()
    leases.age(path, 61)                                        # no heartbeat for 61 s
    with _run_lock(leases, "run-2"):
        pass
    assert re.search(r"took over .* no heartbeat for 6\ds \(lease 60s\)", caplog.text)
    assert leases.names() == []                                 # the takeover marker is gone too


def test_a_half_written_lease_counts_as_held_until_it_is_old(leases):
    leases.write(leases.path(), b'{"resource": "nigh')          # a run died between create and write
    with pytest.raises(lock.LockHeld, match="locked by a run whose lease file is being written"):
        _run_lock(leases, "run-2", lease_s=60).acquire()
    leases.age(leases.path(), 61)
    with _run_lock(leases, "run-2", lease_s=60):
        pass


def test_runs_racing_for_a_stale_lease_hold_it_one_at_a_time(leases):
    """Eight runs find the same expired lease at once: one takes it over, the others wait their turn;
    never two inside at the same time."""
    path = _lease_file(leases, lease_s=1)
    leases.age(path, 5)
    inside, most, order = [0], [0], []
    guard = threading.Lock()

    def run(i: int) -> None:
        with _run_lock(leases, f"run-{i}", wait_s=60, poll_s=0.02):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with guard:
                inside[0] -= 1
                order.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(order) == list(range(8)) and most[0] == 1
    assert leases.names() == []                                 # every lease and marker released


def test_the_heartbeat_keeps_a_long_run_and_a_taken_over_holder_finds_out(leases):
    lease_s = leases.short_lease_s
    with _run_lock(leases, "run-1", lease_s=lease_s, interrupt_on_loss=False) as first:
        time.sleep(3 * lease_s)                                 # three leases long: heartbeats kept it fresh
        with pytest.raises(lock.LockHeld):
            _run_lock(leases, "run-2", lease_s=lease_s).acquire()
        # run-1 froze past its lease and run-2 took over (as a takeover does: the lease now holds run-2)
        _lease_file(leases, run_id="run-2", token="t-2", lease_s=60)
        deadline = time.monotonic() + 5 + lease_s
        while not first.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.lost
    assert _holder(leases)["run_id"] == "run-2"                 # leaving, run-1 kept its hands off


def test_a_killed_holder_is_taken_over_by_the_next_run(leases):
    """A real holder in another process, SIGKILLed: no release ran, the lease stays; the next run takes
    over at once (the pid is gone), without waiting out the lease."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jobs import lock; "
                               f"lock.RunLock({leases.lake!r}, {RESOURCE!r}, 'killed-run', lease_s=3600, "
                               f"store=lock.lease_store({leases.lake!r})).acquire(); "
                               "print('held', flush=True); time.sleep(600)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(lock.LockHeld, match=f"run killed-run .*pid {holder.pid}"):
        _run_lock(leases, "run-2").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert _holder(leases)["run_id"] == "killed-run"
    with _run_lock(leases, "run-2"):
        assert _holder(leases)["run_id"] == "run-2"


class _FlakyStore(lock.LocalStore):
    """A store whose next ``failures`` renewals or deletes fail, as an object store's network blip would."""

    def __init__(self):
        self.failures = 0
        self.renewed = threading.Event()

    def renew(self, path: str, token: str) -> bool:
        if self.failures:
            self.failures -= 1
            raise OSError("connection reset")
        self.renewed.set()
        return super().renew(path, token)

    def delete(self, path: str, token: str | None) -> bool:
        if self.failures:
            self.failures -= 1
            raise OSError("connection reset")
        return super().delete(path, token)


def test_a_heartbeat_that_fails_retries_and_gives_up_only_after_a_lease(tmp_path, caplog):
    store = _FlakyStore()
    with lock.RunLock(str(tmp_path), RESOURCE, "run-1", lease_s=2.0, store=store, interrupt_on_loss=False) as held:
        store.renewed.clear()
        store.failures = 2                                      # two beats fail (a second), the third renews
        assert store.renewed.wait(timeout=30) and store.failures == 0
        assert not held.lost and "could not renew the run lock" in caplog.text
        store.failures = 10 ** 6                                # from now on every beat fails
        deadline = time.monotonic() + 30
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.lost
    assert "could not be renewed for 2s: connection reset" in caplog.text


def test_a_release_that_fails_leaves_the_run_as_it_ended_and_the_lease_to_expire(tmp_path, caplog):
    store = _FlakyStore()
    with pytest.raises(RuntimeError, match="the run's own error"):
        with lock.RunLock(str(tmp_path), RESOURCE, "run-1", lease_s=60, store=store):
            store.failures = 1                                  # the release's delete fails
            raise RuntimeError("the run's own error")
    assert f"could not release the run lock {RESOURCE} (connection reset): it expires 60s after" in caplog.text
    assert json.loads(Path(lock.lock_path(str(tmp_path), RESOURCE)).read_text())["run_id"] == "run-1"


def test_resource_names():
    assert lock.resource_name("nightly", "2024-01-31") == "nightly-2024-01-31"
    assert lock.resource_name("validate", "2024-01-31", table="bronze/events") == "validate-bronze_events-2024-01-31"
    assert lock.resource_name("features", None, dates=("2024-01-01", "2024-01-31")) == "features-2024-01-01..2024-01-31"
    assert lock.resource_name("features") == "features-undated"


@dataclass(frozen=True)
class _Args(runtime.JobArgs):
    run_date: object = None


def _job(argv: list[str], body=lambda args: None) -> int:
    parser = runtime.job_parser("toy", "a toy job")
    parser.add_argument("--run-date", type=runtime.parse_date, required=True)

    def run(args):
        body(args)
        return {"run_id": args.run_id}

    return runtime.run_job("toy", parser, lambda ns, common: runtime.dataclass_from(_Args, ns, common), run, argv,
                           needs_spark=False, lock=True)


def test_run_job_refuses_a_second_run_with_exit_1_and_waits_with_wait(leases, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WARMSTART_LOG_DIR", str(tmp_path / "logs"))
    argv = ["--lake", leases.lake, "--run-date", "2024-01-31"]
    held = _run_lock(leases, "toy-2024-01-31-20240201T020000Z-abc123", "toy-2024-01-31").acquire()
    try:
        assert _job(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("warmstart toy: toy-2024-01-31 is locked by run toy-2024-01-31-20240201T020000Z-abc123 "
                                  f"(host {socket.gethostname()}, pid {os.getpid()}, since ")
        assert len(err[-1]) < 200
        threading.Timer(0.5, held.release).start()
        seen = []
        assert _job([*argv, "--wait", "30"], body=lambda args: seen.append(args.wait_s)) == 0
        assert seen == [30.0]
    finally:
        held.release()
    assert leases.names() == []                                 # run_job released its own


def test_a_crashed_run_still_releases_its_lock(leases, tmp_path, monkeypatch):
    """A job that raises still releases: the next run is not refused."""
    monkeypatch.setenv("WARMSTART_LOG_DIR", str(tmp_path / "logs"))
    argv = ["--lake", leases.lake, "--run-date", "2024-01-31"]

    def boom(args):
        raise RuntimeError("boom")

    assert _job(argv, boom) == 1
    assert leases.names() == []
    assert _job(argv) == 0


# What the object stores share: each step one conditional request on what the last read saw, and the
# heartbeat's age on the server's clock (each store's own failures are in its test file).

@dataclass(frozen=True)
class ObjectStore:
    leases: object          # S3Leases or AzureLeases
    module: object          # jobs.lock_s3 or jobs.lock_azure
    store: type             # its LeaseStore class


@pytest.fixture(params=["s3", "azure"])
def object_store(request):
    from jobs import lock_azure, lock_s3

    module, store = {"s3": (lock_s3, lock_s3.S3Store), "azure": (lock_azure, lock_azure.AzureStore)}[request.param]
    return ObjectStore(request.getfixturevalue(f"{request.param}_leases"), module, store)


def _lease(token: str, run_id: str = "run-1") -> bytes:
    return json.dumps({"resource": RESOURCE, "token": token, "run_id": run_id, "host": "worker-7", "pid": 4242,
                       "since": "2024-02-01T02:00:00Z", "lease_s": 60.0}).encode()


def test_each_step_is_a_conditional_request(object_store):
    leases, store = object_store.leases, object_store.store()
    path = leases.path()
    assert store.create(path, _lease("t-1")) is True
    assert store.create(path, _lease("t-2")) is False                 # If-None-Match: * refused it
    assert leases.read(path) == _lease("t-1")
    assert store.renew(path, "t-2") is False and store.delete(path, "t-2") is False   # not t-2's lease
    assert store.renew(path, "t-1") is True and leases.read(path) == _lease("t-1")
    assert store.delete(path, "t-1") is True and leases.read(path) is None
    assert store.read(path) is None
    assert store.renew(path, "t-1") is False and store.delete(path, "t-1") is False   # gone


def test_a_lease_replaced_between_the_read_and_the_write_is_left_alone(object_store):
    """Another run re-takes the lease between the read and the conditional write or delete: the ETag the
    read saw no longer matches, the store answers 412, and the new lease stays as it is."""
    leases = object_store.leases
    path = leases.path()

    class RacedStore(object_store.store):
        def _get(self, lease_path):
            seen = super()._get(lease_path)
            if seen is not None and json.loads(seen.body)["token"] == "t-1":
                leases.write(path, _lease("t-3", run_id="run-3"))         # in between: released and re-taken
            return seen

    store = RacedStore()
    for step in (store.renew, store.delete):
        leases.write(path, _lease("t-1"))
        assert step(path, "t-1") is False
        assert leases.read(path) == _lease("t-3", run_id="run-3")


def test_a_create_whose_first_try_landed_is_ours(object_store):
    """The SDK retries a PUT whose answer was lost; the retry's refusal is on the lease the first try wrote."""
    path = object_store.leases.path()
    object_store.leases.write(path, _lease("t-1"))
    assert object_store.store().create(path, _lease("t-1")) is True
    assert object_store.store().create(path, _lease("t-9")) is False


def test_the_heartbeat_age_is_the_servers_whatever_this_hosts_clock_says(object_store, monkeypatch):
    leases = object_store.leases
    path = leases.path()
    leases.write(path, _lease("t-1"))
    leases.age(path, 61)
    real_time = time.time
    aged_at = real_time()
    for skew in (-3600, 0, 3600):                     # this host's clock an hour behind, right, an hour ahead
        monkeypatch.setattr(object_store.module, "time", types.SimpleNamespace(time=lambda: real_time() + skew))
        body, renewed = object_store.store().read(path)
        assert body == _lease("t-1")
        # what RunLock computes: the server's age, 61 s plus up to a second of its whole-second times, plus
        # the time this loop has taken (on a loaded machine S3 once gave 63.0)
        assert 61 <= real_time() + skew - renewed < 63 + (real_time() - aged_at), skew
