"""The run lock on Azure lakes (jobs/lock_azure.py), against Azurite's Blob service on loopback (npm
package ``azurite``, installed by ``make setup`` under .tools/), which honours ``If-None-Match: *`` and
``If-Match`` on Put Blob and ``If-Match`` on Delete Blob. No real account is reached.

Every scenario of tests/test_lock.py runs on this store too: its ``leases`` fixture gives
:class:`AzureLeases` here for the ``[azure]`` cases, and its ``object_store`` tests (each request
conditional on the ETag the last read saw, the heartbeat's age on the server's clock) run here too. This
file holds what only Azure has: the lake path to account/container/blob mapping and the one-line
failures (no SDK, no container, another account)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import free_port, toy_lock_job
from jobs import lock, lock_azure, runtime

REPO = Path(__file__).resolve().parent.parent
AZURITE = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
RESOURCE = "nightly-2024-01-31"
# Azurite's one account and its published key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# Loaded into Azurite's node process (--require): its clock, JavaScript's Date, which Azurite stamps
# Last-Modified and the Date header with, runs ahead of the real one by the seconds in a file the tests
# move forward. Azurite's API cannot set Last-Modified (nor can Azure's); letting time pass on the
# server is how a lease there grows old, as the S3 tests set LastModified in moto's backend.
SERVER_CLOCK_JS = """
const fs = require("fs");
const offsetFile = process.env.AZURITE_CLOCK_OFFSET_FILE;
const RealDate = Date;
function offsetMs() {
  try { return Number(fs.readFileSync(offsetFile, "utf8")) * 1000 || 0; } catch (e) { return 0; }
}
class ServerDate extends RealDate {
  constructor(...args) { if (args.length === 0) { super(RealDate.now() + offsetMs()); } else { super(...args); } }
  static now() { return RealDate.now() + offsetMs(); }
}
globalThis.Date = ServerDate;
"""


class Azurite:
    """Azurite's Blob service: its endpoint, and its clock's lead over the real one."""

    def __init__(self, endpoint: str, offset_file: Path):
        self.endpoint, self.offset_file = endpoint, offset_file

    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={self.endpoint}/{ACCOUNT};")

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the server's clock (every blob's Last-Modified grows that much older)."""
        self.offset_file.write_text(str(float(self.offset_file.read_text()) + seconds))


class AzureLeases:
    """A lake in a fresh container of Azurite, and its lease blobs as the tests look at and arrange them
    (the Azure side of tests/test_lock.py's ``LocalLeases``)."""

    # Last-Modified and Date have whole seconds, so a lease read just after a heartbeat can look a second
    # old: a lease must be a few seconds long (the default is 120 s).
    short_lease_s = 2.5

    def __init__(self, azurite: Azurite, container: str):
        from azure.storage.blob import BlobServiceClient

        self.azurite = azurite
        self.container = BlobServiceClient.from_connection_string(azurite.connection_string()) \
            .get_container_client(container)
        self.lake = f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/lake"

    def path(self, resource: str = RESOURCE) -> str:
        return lock.lock_path(self.lake, resource)

    def read(self, path: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container.download_blob(lock_azure.azure_location(path).blob).readall()
        except ResourceNotFoundError:
            return None

    def write(self, path: str, body: bytes) -> None:
        """An unconditional Put Blob, as another run's lease would be found."""
        self.container.upload_blob(lock_azure.azure_location(path).blob, body, overwrite=True)

    def age(self, path: str, seconds: float) -> None:
        """Make the lease's last heartbeat ``seconds`` old on the server's clock: that much time passes on
        Azurite's clock (this container's other leases age too; the tests that age one hold no other)."""
        self.azurite.advance(seconds)

    def names(self) -> list[str]:
        return sorted(b.name.rsplit("/", 1)[1] for b in self.container.list_blobs(name_starts_with="lake/_locks/"))


def _wait_for_port(port: int, server: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"Azurite exited with {server.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"Azurite did not listen on port {port} within {timeout_s:.0f}s")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """Azurite's Blob service on a free loopback port with a fresh data folder, for the whole test run (each
    test gets its own container)."""
    if not AZURITE.exists():
        pytest.skip(f"Azurite not installed at {AZURITE}: run `make setup`")
    root = tmp_path_factory.mktemp("azurite")
    (root / "clock.js").write_text(SERVER_CLOCK_JS)
    offset_file = root / "clock-offset-s"
    offset_file.write_text("0")
    port = free_port()
    env = {**os.environ, "NODE_OPTIONS": f"--require {root / 'clock.js'}", "AZURITE_CLOCK_OFFSET_FILE": str(offset_file)}
    server = subprocess.Popen([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                               str(root / "data"), "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, server)
        yield Azurite(f"http://127.0.0.1:{port}", offset_file)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def azure_leases(azurite, monkeypatch) -> AzureLeases:
    """A fresh container; the store's environment points at Azurite (subprocesses too)."""
    pytest.importorskip("azure.storage.blob")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string())
    leases = AzureLeases(azurite, f"lake-{uuid.uuid4().hex[:12]}")
    leases.container.create_container()
    return leases


def test_lake_paths_map_to_account_container_and_blob():
    where = lock_azure.azure_location("abfss://lake@acct.dfs.core.windows.net/prod/_locks/n.lock")
    assert where == ("acct", "lake", "prod/_locks/n.lock", "core.windows.net")
    assert lock_azure.azure_location("wasbs://lake@acct.blob.core.chinacloudapi.cn/_locks/n.lock") == \
        ("acct", "lake", "_locks/n.lock", "core.chinacloudapi.cn")
    assert lock_azure.azure_location("abfs://lake@acct.dfs.core.windows.net/n.lock").container == "lake"
    for bad in ("s3a://lake/_locks/n.lock", "abfss://acct.dfs.core.windows.net/n.lock",
                "abfss://lake@acct.dfs.core.windows.net", "abfss://lake@acct.queue.core.windows.net/n.lock"):
        with pytest.raises(runtime.UsageError, match="not an Azure storage path"):
            lock_azure.azure_location(bad)


def test_run_lock_picks_the_azure_store_from_the_scheme():
    for scheme in ("abfss", "abfs", "wasbs", "wasb"):
        taken = lock.run_lock(f"{scheme}://lake@{ACCOUNT}.dfs.core.windows.net/prod", RESOURCE, "run-1")
        assert isinstance(taken.store, lock_azure.AzureStore), scheme       # gs://, hdfs://: tests/test_lock_s3.py


def test_an_azure_lake_without_the_sdk_ends_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)     # import azure.storage.blob raises ImportError
    assert toy_lock_job(f"abfss://lake@{ACCOUNT}.dfs.core.windows.net/prod", tmp_path, monkeypatch) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "warmstart toy: run locks on Azure lakes need azure-storage-blob: pip install 'warmstart[azure]'"]


def test_a_connection_string_for_another_account_ends_with_one_line(azure_leases, tmp_path, monkeypatch, capsys):
    assert toy_lock_job("abfss://lake@prodlake.dfs.core.windows.net/prod", tmp_path, monkeypatch) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"warmstart toy: AZURE_STORAGE_CONNECTION_STRING is for account {ACCOUNT}, the lake's is prodlake"]


def test_a_missing_container_ends_with_one_line(azure_leases, tmp_path, monkeypatch, capsys):
    lake = f"abfss://no-such-container@{ACCOUNT}.dfs.core.windows.net/prod"
    assert toy_lock_job(lake, tmp_path, monkeypatch) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"warmstart toy: run lock {lake}/_locks/toy-2024-01-31.lock: upload_blob failed: ContainerNotFound"]
