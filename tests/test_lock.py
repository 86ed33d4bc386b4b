"""The lake-level run lock (jobs/lock.py): a second run is refused naming the holder, or waits for it;
a lease whose holder is dead (a SIGKILLed process, a pid that is gone) or silent past its lease (another
host) is taken over, by exactly one of the runs that find it; the heartbeat keeps a long run's lease;
a holder whose lease was taken over finds out; and `run_job` puts it together (exit 1, one line)."""
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
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs import lock, runtime

REPO = Path(__file__).resolve().parent.parent
RESOURCE = "nightly-2024-01-31"


def _lease_file(lake: Path, **holder) -> Path:
    """A lease file as another run would have left it."""
    fields = dict(resource=RESOURCE, token="t-other", run_id="nightly-2024-01-31-20240201T020000Z-abc123",
                  host="worker-7", pid=4242, since="2024-02-01T02:00:00Z", lease_s=60.0)
    fields.update(holder)
    path = Path(lock.lock_path(str(lake), RESOURCE))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_is_refused_with_one_line_naming_the_holder(tmp_path):
    with lock.RunLock(str(tmp_path), RESOURCE, "run-1") as first:
        assert first.held and Path(first.path).is_file()
        held = json.loads(Path(first.path).read_text())
        assert (held["run_id"], held["pid"], held["host"]) == ("run-1", os.getpid(), socket.gethostname())
        with pytest.raises(lock.LockHeld) as refused:
            lock.RunLock(str(tmp_path), RESOURCE, "run-2").acquire()
        assert refused.value.exit_code == 1
        assert str(refused.value) == (f"{RESOURCE} is locked by run run-1 (host {socket.gethostname()}, pid "
                                      f"{os.getpid()}, since {held['since']}); rerun with --wait SECONDS to wait for it")
        # another run date, or another job, is another lock
        with lock.RunLock(str(tmp_path), "nightly-2024-02-01", "run-3"), lock.RunLock(str(tmp_path), "score-2024-01-31", "run-4"):
            pass
    assert not Path(first.path).exists()                         # released
    with lock.RunLock(str(tmp_path), RESOURCE, "run-2"):        # and free for the next run
        pass


def test_a_waiting_run_gets_the_lock_when_the_holder_ends_or_gives_up(tmp_path):
    first = lock.RunLock(str(tmp_path), RESOURCE, "run-1").acquire()
    threading.Timer(0.6, first.release).start()
    started = time.monotonic()
    with lock.RunLock(str(tmp_path), RESOURCE, "run-2", wait_s=20, poll_s=0.1) as second:
        waited = time.monotonic() - started
        assert json.loads(Path(second.path).read_text())["run_id"] == "run-2"
        assert 0.5 < waited < 10
        started = time.monotonic()
        with pytest.raises(lock.LockHeld, match=r"locked by run run-2 .*; it did not finish within --wait 0.5s"):
            lock.RunLock(str(tmp_path), RESOURCE, "run-3", wait_s=0.5, poll_s=0.1).acquire()
        assert time.monotonic() - started >= 0.5


def test_a_lease_whose_process_is_gone_is_taken_over_at_once(tmp_path, caplog):
    me = lock.RunLock(str(tmp_path), RESOURCE, "probe")
    pid = _dead_pid()
    _lease_file(tmp_path, host=me.me.host, boot_id=me.me.boot_id, pid=pid, lease_s=3600)   # same machine, fresh lease
    with lock.RunLock(str(tmp_path), RESOURCE, "run-2") as taken:
        assert json.loads(Path(taken.path).read_text())["run_id"] == "run-2"
    assert f"took over {RESOURCE} from run nightly-2024-01-31-20240201T020000Z-abc123 (host {me.me.host}, pid {pid}" \
        in caplog.text and f"its process {pid} on {me.me.host} is gone" in caplog.text
    # a live pid of another program (a pid reused since) counts as gone too: its start time differs
    _lease_file(tmp_path, host=me.me.host, boot_id=me.me.boot_id, pid=os.getppid(), pid_started="1", lease_s=3600)
    with lock.RunLock(str(tmp_path), RESOURCE, "run-3"):
        pass
    # the same pid on another host says nothing about that host's process: its lease still stands
    _lease_file(tmp_path, host="worker-7", pid=pid, lease_s=3600)
    with pytest.raises(lock.LockHeld, match="host worker-7, pid"):
        lock.RunLock(str(tmp_path), RESOURCE, "run-4").acquire()


def test_a_lease_past_its_expiry_is_taken_over(tmp_path, caplog):
    path = _lease_file(tmp_path, lease_s=60)                    # another host: only the lease can tell
    with pytest.raises(lock.LockHeld):
        lock.RunLock(str(tmp_path), RESOURCE, "run-2").acquire()
    old = time.time() - 61
    os.utime(path, (old, old))                                  # no heartbeat for 61 s
    with lock.RunLock(str(tmp_path), RESOURCE, "run-2"):
        pass
    assert re.search(r"took over .* no heartbeat for 6\ds \(lease 60s\)", caplog.text)
    assert not list(path.parent.glob("*.takeover-*"))           # the takeover marker is gone too


def test_a_half_written_lease_counts_as_held_until_it_is_old(tmp_path):
    path = Path(lock.lock_path(str(tmp_path), RESOURCE))
    path.parent.mkdir(parents=True)
    path.write_text('{"resource": "nigh')                        # a run died between create and write
    with pytest.raises(lock.LockHeld, match="locked by a run whose lease file is being written"):
        lock.RunLock(str(tmp_path), RESOURCE, "run-2", lease_s=60).acquire()
    old = time.time() - 61
    os.utime(path, (old, old))
    with lock.RunLock(str(tmp_path), RESOURCE, "run-2", lease_s=60):
        pass


def test_runs_racing_for_a_stale_lease_hold_it_one_at_a_time(tmp_path):
    """Eight runs find the same expired lease at once: one takes it over, the others wait their turn;
    never two inside at the same time."""
    path = _lease_file(tmp_path, lease_s=1)
    old = time.time() - 5
    os.utime(path, (old, old))
    inside, most, order = [0], [0], []
    guard = threading.Lock()

    def run(i: int) -> None:
        with lock.RunLock(str(tmp_path), RESOURCE, f"run-{i}", wait_s=60, poll_s=0.02):
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
    assert list(path.parent.iterdir()) == []                     # every lease and marker released


def test_the_heartbeat_keeps_a_long_run_and_a_taken_over_holder_finds_out(tmp_path):
    with lock.RunLock(str(tmp_path), RESOURCE, "run-1", lease_s=0.4, interrupt_on_loss=False) as first:
        time.sleep(1.2)                                           # three leases long: heartbeats kept it fresh
        with pytest.raises(lock.LockHeld):
            lock.RunLock(str(tmp_path), RESOURCE, "run-2", lease_s=0.4).acquire()
        # run-1 froze past its lease and run-2 took over (as a takeover does: the file now holds run-2)
        _lease_file(tmp_path, run_id="run-2", token="t-2", lease_s=60)
        deadline = time.monotonic() + 5
        while not first.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.lost
    assert json.loads(Path(first.path).read_text())["run_id"] == "run-2"   # leaving, run-1 kept its hands off


def test_a_killed_holder_is_taken_over_by_the_next_run(tmp_path):
    """A real holder in another process, SIGKILLed: no release ran, the file stays; the next run takes
    over at once (the pid is gone), without waiting out the lease."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jobs import lock; "
                               f"lock.RunLock({str(tmp_path)!r}, {RESOURCE!r}, 'killed-run', lease_s=3600).acquire(); "
                               "print('held', flush=True); time.sleep(600)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(lock.LockHeld, match=f"run killed-run .*pid {holder.pid}"):
        lock.RunLock(str(tmp_path), RESOURCE, "run-2").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert Path(lock.lock_path(str(tmp_path), RESOURCE)).is_file()
    with lock.RunLock(str(tmp_path), RESOURCE, "run-2") as taken:
        assert json.loads(Path(taken.path).read_text())["run_id"] == "run-2"


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


def test_run_job_refuses_a_second_run_with_exit_1_and_waits_with_wait(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WARMSTART_LOG_DIR", str(tmp_path / "logs"))
    lake = str(tmp_path / "lake")
    argv = ["--lake", lake, "--run-date", "2024-01-31"]
    held = lock.RunLock(lake, "toy-2024-01-31", "toy-2024-01-31-20240201T020000Z-abc123").acquire()
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
    assert not Path(lock.lock_path(lake, "toy-2024-01-31")).exists()   # run_job released its own


def test_a_crashed_run_still_releases_its_lock(tmp_path, monkeypatch):
    """A job that raises still releases: the next run is not refused."""
    monkeypatch.setenv("WARMSTART_LOG_DIR", str(tmp_path / "logs"))
    argv = ["--lake", str(tmp_path / "lake"), "--run-date", "2024-01-31"]

    def boom(args):
        raise RuntimeError("boom")

    assert _job(argv, boom) == 1
    assert _job(argv) == 0
