"""The run lock's lease store on S3 (and S3-compatible stores: MinIO, Ceph RGW, ...): each step of
:class:`jobs.lock.LeaseStore` is one conditional request, so two runs on two machines that share only
the bucket are kept apart as two runs on one machine are by ``O_EXCL``.

- take: ``PUT If-None-Match: *`` (412 when another run holds the lease);
- read: ``GET``: the body, the ETag, and the heartbeat's age as the *server* measures it (its ``Date``
  header minus the object's ``LastModified``, both its own clock), so that host clocks never enter;
- heartbeat: ``GET``, then ``PUT If-Match: <that ETag>`` of the same body, only while the body holds the
  holder's token (412: taken over in between);
- release and takeover: ``GET``, then ``DELETE If-Match: <that ETag>`` (S3 general-purpose buckets since
  September 2025), so a lease taken anew between the read and the delete is never deleted.

:func:`jobs.lock.run_lock` picks this store for ``s3://`` and ``s3a://`` lakes. The endpoint and
credentials are boto3's usual ones (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, an
instance role, ...). boto3 is the optional extra ``warmstart[s3]``, imported only here.
"""
from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

from jobs.lock import LockStoreError, ObjectLeaseStore, _token
from jobs.runtime import UsageError

SCHEMES = ("s3", "s3a")

# What S3 answers when a request's condition does not hold: 412 (the ETag differs, or the key exists for
# If-None-Match), 409 (a concurrent conditional write to the same key won), 404 (the key is gone).
_CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"}


class _Lease(NamedTuple):
    body: bytes
    etag: str
    renewed: float          # the last heartbeat, as this machine's epoch seconds (from the server's age)


def s3_location(path: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key`` or ``s3a://bucket/key``."""
    scheme, _, rest = path.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme.lower() not in SCHEMES or not bucket or not key:
        raise UsageError(f"not an S3 object path: {path}")
    return bucket, key


def s3_client() -> Any:
    """An S3 client from boto3's environment; one clear line where boto3 is missing."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise UsageError("run locks on S3 lakes need boto3: pip install 'warmstart[s3]'") from None
    # One hung request must not outlast the lease (120 s): botocore's 60 s read timeout, retried, could.
    return boto3.session.Session().client("s3", config=Config(connect_timeout=10, read_timeout=20))


class S3Store(ObjectLeaseStore):
    """Lease objects in an S3 bucket, every write conditional on what the last read saw."""

    def __init__(self, client: Any = None):
        self.client = client if client is not None else s3_client()

    def _put_if_absent(self, path: str, data: bytes) -> bool:
        bucket, key = s3_location(path)
        return self._request("put_object", path, Bucket=bucket, Key=key, Body=data, IfNoneMatch="*") is not None

    def renew(self, path: str, token: str) -> bool:
        bucket, key = s3_location(path)
        # A 412 after a read that showed our token is a takeover in between, or our own retried PUT that
        # landed under a new ETag (SSE-KMS ETags are not the body's MD5): the second read tells which.
        for _ in range(2):
            found = self._get(path)
            if found is None or _token(found.body) != token:
                return False
            if self._request("put_object", path, Bucket=bucket, Key=key, Body=found.body,
                             IfMatch=found.etag) is not None:
                return True
        return False

    def delete(self, path: str, token: str | None) -> bool:
        bucket, key = s3_location(path)
        found = self._get(path)
        if found is None or _token(found.body) != token:
            return False
        return self._request("delete_object", path, Bucket=bucket, Key=key, IfMatch=found.etag) is not None

    def _get(self, path: str) -> _Lease | None:
        bucket, key = s3_location(path)
        response = self._request("get_object", path, Bucket=bucket, Key=key)
        if response is None:
            return None
        body = response["Body"].read()
        served = response["ResponseMetadata"]["HTTPHeaders"].get("date")
        # Both times on the server's clock where it sends its Date (S3 always does): the age is then exact
        # to the second whatever this host's clock says; without it, this host's clock it is.
        now = parsedate_to_datetime(served).timestamp() if served else time.time()
        age = now - response["LastModified"].timestamp()
        return _Lease(body, response["ETag"], time.time() - age)

    def _request(self, method: str, path: str, **params: Any) -> dict | None:
        """One S3 request: its response, or None when its condition failed (see _CONDITION_FAILED); any
        other failure as one line naming the lease."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**params)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _CONDITION_FAILED:
                return None
            raise LockStoreError(f"run lock {path}: {method} failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise LockStoreError(f"run lock {path}: {method} failed: {exc}") from exc
