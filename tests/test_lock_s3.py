"""The run lock on S3 lakes (jobs/lock_s3.py), against moto's S3 server on loopback, which honours
``If-None-Match: *`` and ``If-Match`` on PUT and ``If-Match`` on DELETE (moto >= 5.1.22; older ones
ignore the DELETE condition). No real bucket is reached.

Every scenario of tests/test_lock.py (refused, waits, stale takeover, the race for a stale lease, the
heartbeat, a taken-over holder, a SIGKILLed holder, run_job) runs on every store: its ``leases``
fixture gives :class:`S3Leases` here for the ``[s3]`` cases, and its ``object_store`` tests (each
request conditional on the ETag the last read saw, the heartbeat's age on the server's clock) run on S3
and Azure. This file holds what only S3 has: the bucket/key mapping and the one-line failures (no boto3,
no bucket)."""
from __future__ import annotations

import datetime as dt
import sys
import uuid

import pytest

from conftest import toy_lock_job
from jobs import lock, lock_s3, runtime

RESOURCE = "nightly-2024-01-31"


class S3Leases:
    """A lake in a fresh bucket of the moto server, and its lease objects as the tests look at and arrange
    them (the S3 side of tests/test_lock.py's ``LocalLeases``)."""

    # LastModified and Date have whole seconds, so a lease read just after a heartbeat can look a second
    # old: a lease must be a few seconds long (the default is 120 s).
    short_lease_s = 2.5

    def __init__(self, client, bucket: str):
        self.client, self.bucket = client, bucket
        self.lake = f"s3a://{bucket}/lake"

    def path(self, resource: str = RESOURCE) -> str:
        return lock.lock_path(self.lake, resource)

    def read(self, path: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=lock_s3.s3_location(path)[1])["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def write(self, path: str, body: bytes) -> None:
        """An unconditional PUT, as another run's lease would be found."""
        self.client.put_object(Bucket=self.bucket, Key=lock_s3.s3_location(path)[1], Body=body)

    def age(self, path: str, seconds: float) -> None:
        """Make the lease's last heartbeat ``seconds`` old on the server's clock. The S3 API cannot set
        LastModified, so this sets it in moto's in-memory backend (as ``os.utime`` does for a file)."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.core.utils import utcnow
        from moto.s3.models import s3_backends

        key = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(self.bucket, lock_s3.s3_location(path)[1])
        key.last_modified = utcnow() - dt.timedelta(seconds=seconds)

    def names(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix="lake/_locks/").get("Contents", [])
        return sorted(item["Key"].rsplit("/", 1)[1] for item in listed)


def _one_request_at_a_time(server_class):
    """moto's threaded server, its requests handled one at a time. moto checks a PUT's If-None-Match /
    If-Match and then writes, without a lock between the two (moto/s3/responses.py), so two concurrent
    conditional creates of one key can both succeed under load, as the eight racing runs of
    tests/test_lock.py showed once in CI; S3's conditional writes are atomic. Serialising the app (not
    the connections: boto3 keeps them alive) restores that."""
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class Server(server_class):
        def _server_entry(self) -> None:      # moto's own, with the app wrapped
            app, guard = DomainDispatcherApplication(create_backend_app), threading.Lock()

            def serialised(environ, start_response):
                with guard:
                    return list(app(environ, start_response))

            self._server = make_server(self._ip_address, self._port, serialised, True,
                                       request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return Server


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's S3 on a free loopback port, for the whole test run (each test gets its own bucket)."""
    threaded = pytest.importorskip("moto.server").ThreadedMotoServer
    server = _one_request_at_a_time(threaded)(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_leases(moto_endpoint, monkeypatch) -> S3Leases:
    """A fresh bucket; boto3's usual environment points at moto, as it would at MinIO (subprocesses too)."""
    boto3 = pytest.importorskip("boto3")
    for name, value in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.session.Session().client("s3")
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Leases(client, bucket)


def test_lake_paths_map_to_bucket_and_key():
    assert lock_s3.s3_location("s3a://lakes/prod/_locks/n.lock") == ("lakes", "prod/_locks/n.lock")
    assert lock_s3.s3_location("s3://lakes/_locks/n.lock") == ("lakes", "_locks/n.lock")
    for bad in ("gs://lakes/_locks/n.lock", "s3a://lakes", "s3a:///_locks/n.lock"):
        with pytest.raises(runtime.UsageError, match="not an S3 object path"):
            lock_s3.s3_location(bad)


def test_run_lock_picks_the_store_from_the_scheme(s3_leases, tmp_path, caplog):
    assert isinstance(lock.run_lock(str(tmp_path), RESOURCE, "run-1").store, lock.LocalStore)
    for lake in (s3_leases.lake, s3_leases.lake.replace("s3a://", "s3://")):
        assert isinstance(lock.run_lock(lake, RESOURCE, "run-1").store, lock_s3.S3Store)
    for lake in ("gs://lakes/prod", "hdfs://namenode/lakes/prod"):    # abfss:// and the like: test_lock_azure.py
        assert lock.run_lock(lake, RESOURCE, "run-1") is None
        assert f"run locks are not implemented for {lake.split(':')[0]} lakes yet" in caplog.text


def test_an_s3_lake_without_boto3_ends_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "boto3", None)                   # import boto3 raises ImportError
    assert toy_lock_job("s3a://lakes/prod", tmp_path, monkeypatch) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "warmstart toy: run locks on S3 lakes need boto3: pip install 'warmstart[s3]'"]


def test_a_missing_bucket_ends_with_one_line(s3_leases, tmp_path, monkeypatch, capsys):
    assert toy_lock_job("s3a://no-such-bucket-here/prod", tmp_path, monkeypatch) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "warmstart toy: run lock s3a://no-such-bucket-here/prod/_locks/toy-2024-01-31.lock: put_object failed: "
        "NoSuchBucket"]
