"""A real Ray cluster on loopback (``ray start --head`` with the dashboard's job server, 2 CPUs, a small
object store, its own temp dir): ``ray job submit`` the training job with the checkout as working_dir,
check the model version it registers, resubmit and check nothing changed. The head is always stopped.

The head runs as ``ray start --head --block`` and is stopped through its own process group, which is
what ``ray stop`` does on a dedicated node; ``ray stop`` itself would also stop every other Ray on this
shared machine."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import free_port

REPO = Path(__file__).resolve().parent.parent
AS_OF = "2024-03-01"
# A small model so that the job takes seconds (same knobs as tests/test_train.py).
TINY = ["train.model.dim=32", "train.model.num_layers=1", "train.model.num_heads=2", "train.model.max_seq_len=20",
        "train.model.dropout=0.0", "train.loop.batch_size=32", "train.loop.epochs=2", "train.loop.lr=0.005",
        "train.cpus_per_worker=0.5", "train.validation_days=3"]   # the generated baskets end on 2024-02-29
pytestmark = pytest.mark.slow


# Ray's token authentication, explicit: the head and every client (ray job submit, Airflow's task) share
# this token through the environment, as a deployment shares it through a secret.
RAY_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}


def _venv_env() -> dict[str, str]:
    """The environment of the warmstart virtualenv: its bin first (ray, python), no network, no telemetry."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", **RAY_AUTH}


def start_ray_head(log: Path) -> tuple[subprocess.Popen, str]:
    """``ray start --head --block`` on 127.0.0.1; returns (process, dashboard address)."""
    temp = Path("/tmp") / f"ray-orch-{uuid.uuid4().hex[:6]}"   # short: Ray's socket paths have a length limit
    _TEMP_DIRS.append(temp)
    dashboard = free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
           "--num-cpus", "2", "--num-gpus", "0", "--object-store-memory", str(300 * 1024 * 1024),
           "--temp-dir", str(temp), "--disable-usage-stats",
           "--ray-client-server-port", str(free_port()), "--min-worker-port", "0", "--max-worker-port", "0",
           # the agents' fixed default ports (52365, ...) clash with any other Ray on this shared machine,
           # and a head without its job agent answers `ray job submit` with "No available agent"
           "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
           "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
    # Ray's OOM killer judges the whole machine's memory, which other test processes (Spark JVMs) share:
    # off for this small test head, else it kills the job's actors when the machine is busy.
    env = {**_venv_env(), "RAY_memory_monitor_refresh_ms": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=5):
                return proc, address
        except urllib.error.HTTPError:   # 401 without the token: the server is up
            return proc, address
        except OSError:
            pass
        time.sleep(1.0)
    stop_ray_head(proc)
    raise TimeoutError(f"the Ray dashboard at {address} did not come up:\n{log.read_text()[-2000:]}")


def stop_ray_head(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)   # ray start --block stops the node's processes on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # anything of this node still in its process group
    except ProcessLookupError:
        pass
    while _TEMP_DIRS:
        shutil.rmtree(_TEMP_DIRS.pop(), ignore_errors=True)


_TEMP_DIRS: list[Path] = []


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    proc, address = start_ray_head(tmp_path_factory.mktemp("ray") / "head.log")
    try:
        yield address
    finally:
        stop_ray_head(proc)


def write_training_inputs(spark, lake: str) -> dict[str, int]:
    """features/user_sequences (as of AS_OF) and bronze/items from the training tests' generator."""
    import datetime as dt

    from features.tables import ITEMS, USER_SEQUENCES
    from jobs import lake as lakeio
    from training.synthetic_sequences import generate

    seqs, items, _ = generate(users=80, categories=4, items_per_category=6, baskets_per_user=4,
                              as_of=dt.date.fromisoformat(AS_OF), max_len=20)

    def rows(frame, table):
        return [tuple(v.to_pydatetime() if hasattr(v, "to_pydatetime") else v for v in (r[c] for c in table.columns))
                for r in frame.to_dict("records")]

    seq_version = lakeio.replace_partition(spark, lake, USER_SEQUENCES,
                                           spark.createDataFrame(rows(seqs, USER_SEQUENCES), USER_SEQUENCES.schema),
                                           AS_OF)
    lakeio.merge_upsert(spark, lake, ITEMS, spark.createDataFrame(rows(items, ITEMS), ITEMS.schema))
    return {USER_SEQUENCES.name: seq_version, ITEMS.name: lakeio.version(spark, lake, ITEMS)}


def submit_training(address: str, lake: str, models: str, summary: Path, submission_id: str) -> subprocess.CompletedProcess:
    """The ray job submit line of docs/operations.md (working_dir = the checkout)."""
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "job", "submit", "--address", address, "--working-dir", str(REPO), "--submission-id", submission_id,
           "--runtime-env-json", json.dumps({"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                                          "TOKENIZERS_PARALLELISM": "false"}}),
           "--", "python", "jobs/train.py", "--run-date", AS_OF, "--lake", lake, "--ray-address", "auto",
           "--workers", "1", "--summary-json", str(summary), f"paths.models={models}", *TINY]
    return subprocess.run(cmd, env=_venv_env(), capture_output=True, text=True, timeout=540)


def test_ray_job_submit_trains_and_registers_a_model(spark, lake, tmp_path, ray_head):
    from training import registry

    versions = write_training_inputs(spark, lake)
    models = str(tmp_path / "models")
    first = submit_training(ray_head, lake, models, tmp_path / "first.json", f"orch-train-{uuid.uuid4().hex[:6]}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "succeeded" in (first.stdout + first.stderr).lower()

    summary = json.loads((tmp_path / "first.json").read_text())
    version = summary["version"]
    assert version.startswith("20240301-") and summary["reused"] is False and summary["workers"] == 1
    assert registry.latest_version(models) == version
    folder = registry.version_dir(models, registry.DEFAULT_NAME, version)
    assert sorted(p.name for p in folder.iterdir()) == sorted(registry.FILES)
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["inputs"] == versions
    model = registry.load_model(models)
    assert (model.version, len(model.item_ids) >= 24) == (version, True)

    # resubmitting the same run date reuses the registered version and changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    second = submit_training(ray_head, lake, models, tmp_path / "second.json", f"orch-train-{uuid.uuid4().hex[:6]}")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    again = json.loads((tmp_path / "second.json").read_text())
    assert (again["version"], again["reused"]) == (version, True)
    assert registry.list_versions(models) == [version]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_failed_job_makes_ray_job_submit_fail(lake, tmp_path, ray_head):
    """No user_sequences in the lake: the job exits 2, and `ray job submit` (what Airflow's train task
    runs) exits non-zero, so the task fails instead of passing silently."""
    result = submit_training(ray_head, lake, str(tmp_path / "models"), tmp_path / "s.json",
                             f"orch-fail-{uuid.uuid4().hex[:6]}")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    # the job's own exit code and message, not a submission the cluster refused
    assert "failed with exit code 2" in out and "features/user_sequences does not exist" in out
    assert not (tmp_path / "models").exists()
